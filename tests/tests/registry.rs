//! A connector defined outside the plumber crate: one module (its config
//! type, its checks, what it opens) and one registration line, then a
//! pipeline run from JSON through it.

use plumber::config::{ConfigError, PipelineConfig, Registry};

/// The whole connector: `{"type": "countdown", "from": 3, "key": "k"}`,
/// the events `3`, `2`, `1` (with the key, if given). It opens an
/// [`ArraySource`](plumber::streams::ArraySource): what is under test is
/// the config side, how a type from another crate is read, checked and
/// opened.
mod countdown {
    use async_trait::async_trait;
    use plumber::config::{ConnectorSpec, FieldError, OpenContext, SourceSpec};
    use plumber::streams::{ArraySource, Source, StreamError};
    use plumber::Event;

    /// No `#[serde(deny_unknown_fields)]`, on purpose: the registry refuses
    /// unknown fields whatever the connector's serde attributes say.
    #[derive(Debug, serde::Deserialize)]
    pub struct CountdownConfig {
        /// The first number, counted down to 1.
        pub from: u32,
        /// The events' key (default none).
        #[serde(default)]
        pub key: Option<String>,
    }

    impl ConnectorSpec for CountdownConfig {
        fn check(&self) -> Result<(), FieldError> {
            if self.from == 0 {
                return Err(FieldError::new("from", "expected a number of at least 1"));
            }
            Ok(())
        }
    }

    #[async_trait]
    impl SourceSpec for CountdownConfig {
        async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
            let events = (1..=self.from)
                .rev()
                .map(|n| match &self.key {
                    Some(key) => Event::new(n.to_string()).with_key(key.as_bytes()),
                    None => Event::new(n.to_string()),
                })
                .collect();
            Ok(Box::new(ArraySource::new(events)))
        }
    }
}

/// The engine's connectors and the countdown: the one line a new connector adds.
fn registry() -> Registry {
    let mut registry = Registry::builtin();
    registry.source::<countdown::CountdownConfig>("countdown");
    registry
}

fn parse(registry: &Registry, config: serde_json::Value) -> Result<PipelineConfig, ConfigError> {
    PipelineConfig::parse_with(
        registry,
        &config.to_string(),
        "test.json",
        std::path::Path::new("/"),
    )
}

fn path_and_message(error: ConfigError) -> (String, String) {
    let message = error.to_string();
    match error {
        ConfigError::Invalid { path, .. } => (path, message),
        other => panic!("not an invalid field: {other}"),
    }
}

#[tokio::test]
async fn a_connector_from_another_crate_runs_a_pipeline_from_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let config = parse(
        &registry(),
        serde_json::json!({
            "name": "countdown",
            "state": {"type": "memory"},
            "from": {"type": "countdown", "from": 5, "key": "k"},
            "pipeline": [
                {"type": "window", "name": "pairs", "window": "count", "events": 2, "key_by": "key"}
            ],
            "to": {"type": "file", "path": out}
        }),
    )
    .unwrap();
    let from = config.from.as_ref().expect("a line's source");
    assert_eq!(from.type_name(), "countdown");
    assert_eq!(
        from.downcast_ref::<countdown::CountdownConfig>()
            .map(|countdown| countdown.from),
        Some(5)
    );
    let state = config.open_state().await.unwrap();
    let report = config.builder(state).await.unwrap().run().await.unwrap();
    assert_eq!(report.events_in, 5);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "5\n4\n3\n2\n1\n");

    // Its own check runs on every read, and names its field.
    let error = parse(
        &registry(),
        serde_json::json!({
            "name": "p", "state": {"type": "memory"},
            "from": {"type": "countdown", "from": 0}, "to": {"type": "stdout"}
        }),
    )
    .unwrap_err();
    let (path, message) = path_and_message(error);
    assert_eq!(path, "from.from", "{message}");
    assert!(message.contains("at least 1"), "{message}");
}

#[test]
fn unknown_fields_are_refused_even_where_the_connector_allows_them() {
    let section = serde_json::json!({"from": 3, "form": 4});
    // serde alone reads it, dropping `form`...
    serde_json::from_value::<countdown::CountdownConfig>(section).unwrap();
    // ...the registry does not.
    let error = parse(
        &registry(),
        serde_json::json!({
            "name": "p", "state": {"type": "memory"},
            "from": {"type": "countdown", "from": 3, "form": 4}, "to": {"type": "stdout"}
        }),
    )
    .unwrap_err();
    let (path, message) = path_and_message(error);
    assert_eq!(path, "from.form", "{message}");
    assert!(
        message.contains("unknown field `form`, expected `from` or `key`"),
        "{message}"
    );
}

#[test]
fn an_unknown_type_names_the_types_the_registry_knows() {
    let config = |from: serde_json::Value, to: serde_json::Value| serde_json::json!({"name": "p", "state": {"type": "memory"}, "from": from, "to": to});
    let stdout = serde_json::json!({"type": "stdout"});
    let cases = [
        (
            registry(),
            config(
                serde_json::json!({"type": "nats", "subject": "in"}),
                stdout.clone(),
            ),
            "from.type",
            "unknown variant `nats`: not a source type of this build of plumber; known: \
             `array`, `countdown`, `file`",
        ),
        (
            registry(),
            config(
                serde_json::json!({"type": "countdown", "from": 1}),
                serde_json::json!({"type": "http", "url": "http://127.0.0.1:1/"}),
            ),
            "to.type",
            "unknown variant `http`: not a sink type of this build of plumber; known: \
             `discard`, `file`, `stdout`",
        ),
        (
            plumber::config::standard_registry(),
            config(serde_json::json!({"type": "kafka"}), stdout.clone()),
            "from.type",
            "known: `array`, `file`, `http`, `jetstream`, `nats`, `sql`",
        ),
        (
            plumber::config::standard_registry(),
            serde_json::json!({"name": "p", "state": {"type": "rocksdb"},
                               "from": {"type": "array", "values": []}, "to": stdout}),
            "state.type",
            "unknown variant `rocksdb`: not a state backend type of this build of plumber; \
             known: `memory`, `redb`, `redis`, `sled`",
        ),
        (
            // The engine alone has no default state: a config says which.
            Registry::builtin(),
            serde_json::json!({"name": "p", "from": {"type": "array", "values": []}, "to": stdout}),
            "state",
            "no default state backend; known: `memory`",
        ),
    ];
    for (registry, config, at, wanted) in cases {
        let (path, message) = path_and_message(parse(&registry, config).unwrap_err());
        assert_eq!(path, at, "{message}");
        assert!(message.contains(wanted), "{message}");
    }
    // With the standard registry a config without `state` gets sled.
    let config = parse(
        &plumber::config::standard_registry(),
        serde_json::json!({"name": "p", "from": {"type": "array", "values": []}, "to": stdout}),
    )
    .unwrap();
    assert_eq!(config.state.type_name(), "sled");
}
