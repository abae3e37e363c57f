//! The config's tests: strict reading, exact paths, every section, with
//! every connector of the standard registry.

use std::path::Path;

use plumber::config::*;
use plumber::runtime::PipeLimits;
use plumber::state::{SledState, SledStateConfig};
use plumber::step::OnError;
use plumber::window::{EventTime, WindowKind};

fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
    PipelineConfig::parse(text, "test.json", Path::new("/base"))
}

fn path_of(error: ConfigError) -> String {
    match error {
        ConfigError::Invalid { path, .. } => path,
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn minimal_config_gets_defaults_and_resolved_paths() {
    let config = parse(
        r#"{"name":"p","from":{"type":"array","values":["a"]},
            "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"}],
            "to":{"type":"stdout"}}"#,
    )
    .unwrap();
    assert_eq!(config.batch_size, 1024);
    assert_eq!(config.checkpoint.interval_ms, Some(1000));
    assert!(
        matches!(config.state.downcast_ref::<SledStateConfig>(), Some(SledStateConfig { path, cache_bytes }) if path == Path::new("/base/p.state") && *cache_bytes == SledState::CACHE_BYTES)
    );
    let StepConfig::Wasm(pipe) = &config.pipeline[0] else {
        panic!("a wasm step")
    };
    assert_eq!(pipe.module, Path::new("/base/u.wasm"));
    assert_eq!(pipe.config, serde_json::json!({}));
}

fn with_step(step: &str) -> Result<PipelineConfig, ConfigError> {
    parse(&format!(
        r#"{{"name":"p","from":{{"type":"array","values":[]}},"pipeline":[{{"type":"wasm","name":"u","module":"u.wasm"}},{step}],"to":{{"type":"stdout"}}}}"#
    ))
}

#[test]
fn sandbox_fields_read_and_bad_ones_name_their_path() {
    let config = with_step(
        r#"{"type":"wasm","name":"w","module":"w.wasm","grants":["clocks"],"env":["TZ"],
            "read_only_dir":{"host":"data","guest":"/data"},
            "limits":{"call_timeout_ms":250},"on_error":{"retry":{"attempts":2,"then":"skip"}},
            "watch_module_ms":500}"#,
    )
    .unwrap();
    let StepConfig::Wasm(pipe) = &config.pipeline[1] else {
        panic!("not a pipe");
    };
    assert_eq!(pipe.limits.as_ref().unwrap().call_timeout_ms, 250);
    assert_eq!(
        pipe.limits.as_ref().unwrap().memory_bytes,
        PipeLimits::default().memory_bytes
    );
    assert_eq!(
        pipe.on_error,
        OnError::Retry {
            attempts: 2,
            backoff_ms: 100,
            then: plumber::step::Exhausted::Skip
        }
    );
    assert_eq!(
        pipe.read_only_dir.as_ref().unwrap().host,
        Path::new("/base/data")
    );
    assert_eq!(pipe.capabilities().env, vec!["TZ".to_owned()]);

    // Checks of ours and serde's own errors name the field.
    let cases = [
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"call_timeout_ms":0}}"#,
            "pipeline[1].limits.call_timeout_ms",
            "positive",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"memory_bytes":1000}}"#,
            "pipeline[1].limits.memory_bytes",
            "at least 1048576",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"cpu":1}}"#,
            "pipeline[1].limits.cpu",
            "unknown field `cpu`",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","on_error":"dead_letter"}"#,
            "pipeline[1].on_error",
            "no `dead_letter`",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","on_error":"ignore"}"#,
            "pipeline[1].on_error",
            "unknown variant `ignore`",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","read_only_dir":{"host":"d","guest":"data"}}"#,
            "pipeline[1].read_only_dir.guest",
            "absolute guest path",
        ),
        (
            r#"{"type":"wasm","name":"w","module":"w.wasm","grants":["sockets"]}"#,
            "pipeline[1].grants[0]",
            "unknown variant `sockets`",
        ),
    ];
    for (step, path, text) in cases {
        let error = with_step(step).unwrap_err();
        let message = error.to_string();
        assert_eq!(path_of(error), path, "{step}");
        assert!(message.contains(text), "{step}: {message}");
    }
    let tenant = parse(
        r#"{"name":"p","tenant":"a/b","from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#,
    )
    .unwrap_err();
    assert_eq!(path_of(tenant), "tenant");
}

#[test]
fn every_window_type_reads_from_config() {
    let cases = [
        (
            r#"{"type":"window","name":"w","window":"count","events":3,"key_by":"key"}"#,
            WindowKind::Count { events: 3 },
        ),
        (
            r#"{"type":"window","name":"w","window":"tumbling","size_ms":10000}"#,
            WindowKind::Tumbling {
                size_ms: 10_000,
                time: plumber::window::TimeMode::Processing,
            },
        ),
        (
            r#"{"type":"window","name":"w","window":"sliding","size_ms":10000,"slide_ms":5000,"time":"event","max_out_of_orderness_ms":2000,"allowed_lateness_ms":1000,"idle_timeout_ms":3000}"#,
            WindowKind::Sliding {
                size_ms: 10_000,
                slide_ms: 5_000,
                time: plumber::window::TimeMode::Event(EventTime {
                    max_out_of_orderness_ms: 2_000,
                    allowed_lateness_ms: 1_000,
                    idle_timeout_ms: Some(3_000),
                }),
            },
        ),
        (
            r#"{"type":"window","name":"w","window":"session","gap_ms":500}"#,
            WindowKind::Session {
                gap_ms: 500,
                time: plumber::window::TimeMode::Processing,
            },
        ),
        (
            r#"{"type":"window","name":"w","window":"signal","on":{"header":"flush","unix_signal":"SIGUSR1"}}"#,
            WindowKind::Signal {
                triggers: plumber::window::SignalTriggers {
                    unix_signal: true,
                    header: Some("flush".into()),
                    key: None,
                },
            },
        ),
    ];
    for (step, kind) in cases {
        let config = with_step(step).unwrap_or_else(|e| panic!("{step}: {e}"));
        let StepConfig::Window(window) = &config.pipeline[1] else {
            panic!("a window step")
        };
        assert_eq!(window.build().unwrap().kind(), &kind, "{step}");
    }
}

#[test]
fn bad_windows_are_refused_with_the_json_path() {
    let cases = [
        (
            r#"{"type":"window","name":"w","window":"count","events":0}"#,
            "pipeline[1].events",
            "at least 1",
        ),
        (
            r#"{"type":"window","name":"w","window":"count"}"#,
            "pipeline[1].events",
            "needs `events`",
        ),
        (
            r#"{"type":"window","name":"w","window":"sliding","size_ms":1000,"slide_ms":2000}"#,
            "pipeline[1].slide_ms",
            "larger than the size",
        ),
        (
            r#"{"type":"window","name":"w","window":"tumbling","size_ms":1000,"gap_ms":5}"#,
            "pipeline[1].gap_ms",
            "session windows only",
        ),
        (
            r#"{"type":"window","name":"w","window":"tumbling","size_ms":1000,"allowed_lateness_ms":5}"#,
            "pipeline[1].allowed_lateness_ms",
            "\"time\": \"event\"",
        ),
        (
            r#"{"type":"window","name":"w","window":"signal"}"#,
            "pipeline[1].on",
            "needs a trigger",
        ),
        (
            r#"{"type":"window","name":"w","window":"signal","on":{"unix_signal":"SIGHUP"}}"#,
            "pipeline[1].on.unix_signal",
            "SIGUSR1",
        ),
        (
            r#"{"type":"window","name":"w","window":"tumbling","size_ms":10,"time":"event","late":"dead_letter"}"#,
            "pipeline[1].late",
            "no `dead_letter`",
        ),
        (
            r#"{"type":"window","name":"u","window":"count","events":1}"#,
            "pipeline[1].name",
            "used twice",
        ),
    ];
    for (step, path, message) in cases {
        match with_step(step) {
            Err(ConfigError::Invalid {
                path: p,
                message: m,
                ..
            }) => {
                assert_eq!(p, path, "{step}: {m}");
                assert!(m.contains(message), "{step}: {m}");
            }
            other => panic!("{step}: expected an error, got {other:?}"),
        }
    }
    let typo = with_step(r#"{"type":"window","name":"w","window":"count","events":1,"size":3}"#)
        .unwrap_err();
    assert!(typo.to_string().contains("unknown field `size`"), "{typo}");
    let pipe_typo =
        with_step(r#"{"type":"wasm","name":"v","module":"v.wasm","grant":[]}"#).unwrap_err();
    assert!(
        pipe_typo.to_string().contains("unknown field `grant`"),
        "{pipe_typo}"
    );
}

#[test]
fn errors_name_the_json_path() {
    let wrong_type = parse(
        r#"{"name":"p","from":{"type":"array","values":["a"]},
            "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"},{"name":"v","type":"wasm","module":7}],
            "to":{"type":"stdout"}}"#,
    )
    .unwrap_err();
    let text = wrong_type.to_string();
    assert_eq!(path_of(wrong_type), "pipeline[1].module", "{text}");

    let zero = parse(
        r#"{"name":"p","checkpoint":{"interval_ms":0},"from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#,
    )
    .unwrap_err();
    assert_eq!(path_of(zero), "checkpoint.interval_ms");

    let unknown_sink =
        parse(r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"printer"}}"#)
            .unwrap_err();
    let text = unknown_sink.to_string();
    assert!(
        text.contains("`to.type`") && text.contains("printer"),
        "{text}"
    );

    let typo = parse(
        r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"stdout"},"batchsize":3}"#,
    )
    .unwrap_err();
    assert!(typo.to_string().contains("batchsize"), "{typo}");

    let twice = parse(
        r#"{"name":"p","from":{"type":"array","values":[]},
            "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"},{"name":"u","type":"wasm","module":"v.wasm"}],
            "to":{"type":"stdout"}}"#,
    )
    .unwrap_err();
    assert_eq!(path_of(twice), "pipeline[1].name");

    let missing = parse(r#"{"name":"p","to":{"type":"stdout"}}"#).unwrap_err();
    assert!(
        missing.to_string().contains("missing field `from`"),
        "{missing}"
    );
}

/// A minimal valid config with `value` put at `at` (a JSON path such as
/// `pipeline[0].limits`; missing objects and arrays are created).
fn config_with(at: &str, value: serde_json::Value) -> serde_json::Value {
    let mut config = serde_json::json!({
        "name": "p",
        "from": {"type": "array", "values": []},
        "to": {"type": "stdout"}
    });
    let mut slot = &mut config;
    for part in at.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        if !slot.is_object() {
            *slot = serde_json::json!({});
        }
        slot = slot
            .as_object_mut()
            .unwrap()
            .entry(key.to_owned())
            .or_insert(serde_json::Value::Null);
        if let Some(index) = index {
            if !slot.is_array() {
                *slot = serde_json::json!([]);
            }
            let array = slot.as_array_mut().unwrap();
            while array.len() <= index {
                array.push(serde_json::Value::Null);
            }
            slot = &mut array[index];
        }
    }
    *slot = value;
    config
}

fn parse_value(config: &serde_json::Value) -> Result<PipelineConfig, ConfigError> {
    parse(&config.to_string())
}

/// Every kind of section, valid as it stands: where it goes, and its JSON.
fn every_section() -> Vec<(&'static str, serde_json::Value)> {
    use serde_json::json;
    let wasm = json!({"type": "wasm", "name": "w", "module": "w.wasm"});
    vec![
        ("from", json!({"type": "array", "values": []})),
        ("from", json!({"type": "file", "path": "in.txt"})),
        ("from", json!({"type": "http", "listen": "127.0.0.1:8080"})),
        (
            "from",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t",
                   "position_column": "id", "value_column": "v"}),
        ),
        ("from", json!({"type": "nats", "subject": "in"})),
        (
            "from",
            json!({"type": "jetstream", "stream": "IN", "consumer": "c"}),
        ),
        ("to", json!({"type": "stdout"})),
        ("to", json!({"type": "file", "path": "out.txt"})),
        ("to", json!({"type": "discard"})),
        (
            "to",
            json!({"type": "http", "url": "http://127.0.0.1:9/in"}),
        ),
        (
            "to",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t"}),
        ),
        ("to", json!({"type": "nats", "subject": "out"})),
        ("to", json!({"type": "jetstream", "subject": "out"})),
        ("dead_letter", json!({"type": "file", "path": "dead.txt"})),
        ("dead_letter", json!({"type": "stdout"})),
        ("state", json!({"type": "memory"})),
        ("state", json!({"type": "sled", "path": "s"})),
        ("state", json!({"type": "redb", "path": "s.redb"})),
        (
            "state",
            json!({"type": "redis", "url": "redis://127.0.0.1/"}),
        ),
        ("checkpoint", json!({"interval_ms": 10})),
        ("pipeline[0]", wasm.clone()),
        (
            "pipeline[0]",
            json!({"type": "command", "name": "c", "module": "c.wasm"}),
        ),
        (
            "pipeline[0]",
            json!({"type": "exec", "name": "e", "path": "true", "allow_unsandboxed": true}),
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "count", "events": 2}),
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "tumbling", "size_ms": 10}),
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "sliding", "size_ms": 10, "slide_ms": 5}),
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "session", "gap_ms": 10}),
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "signal", "on": {"header": "h"}}),
        ),
        ("pipeline[0].on", json!({"header": "h"})),
        ("pipeline[0].limits", json!({"call_timeout_ms": 5})),
        (
            "pipeline[0].read_only_dir",
            json!({"host": "d", "guest": "/d"}),
        ),
        (
            "pipeline[0].on_error.retry",
            json!({"attempts": 1, "then": "skip"}),
        ),
    ]
}

/// The rest of the pipeline a nested section needs.
fn around(at: &str, config: &mut serde_json::Value) {
    if !at.starts_with("pipeline[0].") {
        return;
    }
    let step = &mut config["pipeline"][0];
    match at {
        "pipeline[0].on" => {
            let on = step["on"].clone();
            *step =
                serde_json::json!({"type": "window", "name": "w", "window": "signal", "on": on});
        }
        "pipeline[0].limits" | "pipeline[0].read_only_dir" | "pipeline[0].on_error.retry" => {
            for (field, value) in [("type", "wasm"), ("name", "w"), ("module", "w.wasm")] {
                step[field] = serde_json::json!(value);
            }
        }
        _ => {}
    }
}

#[test]
fn every_section_as_written_is_accepted() {
    for (at, section) in every_section() {
        let mut config = config_with(at, section);
        around(at, &mut config);
        if let Err(error) = parse_value(&config) {
            panic!("{at}: {config}: {error}");
        }
    }
}

#[test]
fn unknown_fields_are_refused_in_every_section_naming_field_and_path() {
    for (at, mut section) in every_section() {
        section["bogus_field"] = serde_json::json!(1);
        let mut config = config_with(at, section);
        around(at, &mut config);
        let error = match parse_value(&config) {
            Ok(_) => panic!("{at}: an unknown field was accepted: {config}"),
            Err(error) => error,
        };
        let message = error.to_string();
        assert!(
            message.contains("unknown field `bogus_field`"),
            "{at}: {message}"
        );
        assert_eq!(path_of(error), format!("{at}.bogus_field"), "{message}");
    }
    // The top level, and a typo that gets the right name suggested.
    let mut config = config_with("name", serde_json::json!("p"));
    config["bogus_field"] = serde_json::json!(1);
    assert_eq!(path_of(parse_value(&config).unwrap_err()), "bogus_field");
    let config = config_with(
        "to",
        serde_json::json!({"type": "file", "path": "o", "rotate_byte": 10}),
    );
    let message = parse_value(&config).unwrap_err().to_string();
    assert!(
        message.contains("at `to.rotate_byte`: unknown field `rotate_byte`")
            && message.contains("`rotate_bytes`"),
        "{message}"
    );
}

#[test]
fn unknown_fields_of_the_host_config_name_field_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.json");
    for (text, path) in [
        (r#"{"pipelines": [], "bogus_field": 1}"#, "bogus_field"),
        (
            r#"{"admin": {"listen": "127.0.0.1:1", "bogus_field": 1}}"#,
            "admin.bogus_field",
        ),
        (
            r#"{"tenants": {"acme": {"max_pipelines": 1, "bogus_field": 1}}}"#,
            "tenants.acme.bogus_field",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let error = HostConfig::load(&file).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("unknown field `bogus_field`"), "{message}");
        assert_eq!(path_of(error), path, "{message}");
    }
}

#[test]
fn field_mistakes_name_the_exact_path() {
    use serde_json::json;
    let wasm = |extra: serde_json::Value| {
        let mut step = json!({"type": "wasm", "name": "w", "module": "w.wasm"});
        for (key, value) in extra.as_object().unwrap() {
            step[key] = value.clone();
        }
        step
    };
    let window = |extra: serde_json::Value| {
        let mut step = json!({"type": "window", "name": "w", "window": "tumbling", "size_ms": 10});
        for (key, value) in extra.as_object().unwrap() {
            step[key] = value.clone();
        }
        step
    };
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        // (where, what, the path named, a part of the message)
        (
            "pipeline[0]",
            wasm(json!({"module": 7})),
            "pipeline[0].module",
            "invalid type",
        ),
        (
            "pipeline[0]",
            json!({"type": "wasm", "name": "w"}),
            "pipeline[0].module",
            "missing field `module`",
        ),
        (
            "pipeline[0]",
            json!({"type": "wasm", "module": "w.wasm"}),
            "pipeline[0].name",
            "missing field `name`",
        ),
        (
            "pipeline[0]",
            json!({"name": "w", "module": "w.wasm"}),
            "pipeline[0].type",
            "missing field `type`",
        ),
        (
            "pipeline[0]",
            json!({"type": "lambda", "name": "w"}),
            "pipeline[0].type",
            "unknown variant `lambda`",
        ),
        (
            "pipeline[0]",
            json!({"type": 5, "name": "w"}),
            "pipeline[0].type",
            "invalid type",
        ),
        (
            "pipeline[0]",
            wasm(json!({"grants": ["sockets"]})),
            "pipeline[0].grants[0]",
            "unknown variant `sockets`",
        ),
        (
            "pipeline[0]",
            wasm(json!({"grants": "clocks"})),
            "pipeline[0].grants",
            "invalid type",
        ),
        (
            "pipeline[0]",
            wasm(json!({"env": [1]})),
            "pipeline[0].env[0]",
            "invalid type",
        ),
        (
            "pipeline[0]",
            wasm(json!({"on_error": "ignore"})),
            "pipeline[0].on_error",
            "unknown variant `ignore`",
        ),
        (
            "pipeline[0]",
            wasm(json!({"on_error": {"retry": {"attempts": "x"}}})),
            "pipeline[0].on_error.retry.attempts",
            "invalid type",
        ),
        (
            "pipeline[0]",
            wasm(json!({"on_error": {"retry": {}}})),
            "pipeline[0].on_error.retry.attempts",
            "missing field `attempts`",
        ),
        (
            "pipeline[0]",
            wasm(json!({"limits": {"call_timeout_ms": 0}})),
            "pipeline[0].limits.call_timeout_ms",
            "positive",
        ),
        (
            "pipeline[0]",
            wasm(json!({"limits": {"memory_bytes": "big"}})),
            "pipeline[0].limits.memory_bytes",
            "invalid type",
        ),
        (
            "pipeline[0]",
            wasm(json!({"limits": [1, 2]})),
            "pipeline[0].limits",
            "expected a JSON object",
        ),
        (
            "pipeline[0]",
            wasm(json!({"read_only_dir": {"host": "d", "guest": "d"}})),
            "pipeline[0].read_only_dir.guest",
            "absolute",
        ),
        (
            "pipeline[0]",
            wasm(json!({"read_only_dir": {"guest": "/d"}})),
            "pipeline[0].read_only_dir.host",
            "missing field `host`",
        ),
        (
            "pipeline[0]",
            wasm(json!({"watch_module_ms": 0})),
            "pipeline[0].watch_module_ms",
            "positive",
        ),
        (
            "pipeline[0]",
            wasm(json!({"watch_module_ms": -5})),
            "pipeline[0].watch_module_ms",
            "invalid value",
        ),
        (
            "pipeline[0]",
            wasm(json!({"name": ""})),
            "pipeline[0].name",
            "non-empty",
        ),
        (
            "pipeline[0]",
            window(json!({"size_ms": "10s"})),
            "pipeline[0].size_ms",
            "invalid type",
        ),
        (
            "pipeline[0]",
            window(json!({"window": "hopping"})),
            "pipeline[0].window",
            "unknown variant `hopping`",
        ),
        (
            "pipeline[0]",
            window(json!({"time": "wall"})),
            "pipeline[0].time",
            "unknown variant `wall`",
        ),
        (
            "pipeline[0]",
            window(json!({"key_by": "value"})),
            "pipeline[0].key_by",
            "unknown variant `value`",
        ),
        (
            "pipeline[0]",
            window(json!({"size_ms": null, "events": 3})),
            "pipeline[0].events",
            "count windows only",
        ),
        (
            "pipeline[0]",
            window(json!({"size_ms": null})),
            "pipeline[0].size_ms",
            "needs `size_ms`",
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "signal", "on": {"unix_signal": "SIGHUP"}}),
            "pipeline[0].on.unix_signal",
            "SIGUSR1",
        ),
        (
            "pipeline[0]",
            json!({"type": "window", "name": "w", "window": "signal", "on": {"header": 1}}),
            "pipeline[0].on.header",
            "invalid type",
        ),
        (
            "pipeline[0]",
            json!({"type": "command", "name": "c", "module": "c.wasm", "args": "x"}),
            "pipeline[0].args",
            "invalid type",
        ),
        (
            "pipeline[0]",
            json!({"type": "exec", "name": "e", "path": "true"}),
            "pipeline[0].allow_unsandboxed",
            "outside the sandbox",
        ),
        (
            "pipeline[0]",
            json!({"type": "exec", "name": "e", "path": "true", "allow_unsandboxed": true, "timeout_ms": 0}),
            "pipeline[0].timeout_ms",
            "positive",
        ),
        (
            "from",
            json!({"type": "file"}),
            "from.path",
            "missing field `path`",
        ),
        (
            "from",
            json!({"type": "file", "path": "x", "follow_ms": "1s"}),
            "from.follow_ms",
            "invalid type",
        ),
        (
            "from",
            json!({"type": "file", "path": "x", "format": "csv"}),
            "from.format",
            "unknown variant `csv`",
        ),
        (
            "from",
            json!({"type": "file", "path": "x", "on_missing_file": "skip"}),
            "from.on_missing_file",
            "unknown variant `skip`, expected `fail` or `start`",
        ),
        (
            "from",
            json!({"type": "http", "listen": "localhost"}),
            "from.listen",
            "invalid",
        ),
        (
            "from",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "position_column": "id"}),
            "from.value_column",
            "missing field `value_column`",
        ),
        (
            "from",
            json!({"type": "jetstream", "stream": "IN", "consumer": "c", "max_ack_pending": "many"}),
            "from.max_ack_pending",
            "invalid type",
        ),
        (
            "from",
            json!({"values": []}),
            "from.type",
            "missing field `type`",
        ),
        (
            "from",
            json!({"type": "kafka"}),
            "from.type",
            "unknown variant `kafka`",
        ),
        ("from", json!([1, 2]), "from", "expected a JSON object"),
        (
            "to",
            json!({"type": "file", "path": "o", "rotate_bytes": -1}),
            "to.rotate_bytes",
            "invalid value",
        ),
        (
            "to",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "mode": "merge"}),
            "to.mode",
            "unknown variant `merge`",
        ),
        (
            "to",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "columns": {"c": "bogus"}}),
            "to.columns.c",
            "not a column source",
        ),
        (
            "to",
            json!({"type": "http"}),
            "to.url",
            "missing field `url`",
        ),
        (
            "to",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "mode": "upsert"}),
            "to.key_columns",
            "needs `key_columns`",
        ),
        (
            "to",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "key_columns": ["k"]}),
            "to.key_columns",
            "upsert",
        ),
        (
            "dead_letter",
            json!({"type": "sql", "url": "sqlite://x.db", "table": "t", "mode": "upsert",
                   "key_columns": ["k"], "epoch_column": "e"}),
            "dead_letter.epoch_column",
            "takes no epoch column",
        ),
        (
            "to",
            json!({"type": "nats", "subject": 5}),
            "to.subject",
            "invalid type",
        ),
        (
            "dead_letter",
            json!({"type": "file", "path": 1}),
            "dead_letter.path",
            "invalid type",
        ),
        (
            "state",
            json!({"type": "sled"}),
            "state.path",
            "missing field `path`",
        ),
        (
            "state",
            json!({"type": "redb"}),
            "state.path",
            "missing field `path`",
        ),
        (
            "state",
            json!({"type": "redb", "path": "s.redb", "cache_bytes": 4096}),
            "state.cache_bytes",
            "too small for redb's page cache",
        ),
        (
            "state",
            json!({"type": "redis", "url": 5}),
            "state.url",
            "invalid type",
        ),
        (
            "state",
            json!({"type": "redis", "url": "redis://h/", "reconnect_timeout_ms": "x"}),
            "state.reconnect_timeout_ms",
            "invalid type",
        ),
        (
            "checkpoint",
            json!({"interval_ms": "1s"}),
            "checkpoint.interval_ms",
            "invalid type",
        ),
        (
            "checkpoint",
            json!({"interval_ms": 0}),
            "checkpoint.interval_ms",
            "positive",
        ),
        (
            "checkpoint",
            json!({"every_events": 0}),
            "checkpoint.every_events",
            "positive",
        ),
        (
            "checkpoint",
            json!([1, 2]),
            "checkpoint",
            "expected a JSON object",
        ),
        (
            "checkpoint",
            json!({"on_signal": "yes"}),
            "checkpoint.on_signal",
            "invalid type",
        ),
        ("batch_size", json!(0), "batch_size", "at least 1"),
        ("batch_size", json!("many"), "batch_size", "invalid type"),
        (
            "delivery",
            json!("twice"),
            "delivery",
            "unknown variant `twice`",
        ),
        ("tenant", json!("a/b"), "tenant", ""),
        ("name", json!(""), "name", "non-empty"),
        ("name", json!(3), "name", "invalid type"),
    ];
    let mut wrong = Vec::new();
    for (at, value, path, text) in &cases {
        let config = config_with(at, value.clone());
        match parse_value(&config) {
            Ok(_) => wrong.push(format!("{at} = {value}: accepted")),
            Err(error) => {
                let message = error.to_string();
                let got = path_of(error);
                if got != *path || !message.contains(text) {
                    wrong.push(format!(
                        "{at} = {value}: wanted `{path}` and \"{text}\", got `{got}`: {message}"
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} mistakes named wrongly:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_text_must_be_one_json_object() {
    let good = r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#;
    // A byte-order mark is skipped.
    parse(&format!("\u{feff}{good}")).expect("a config after a BOM");
    // Anything after the object is refused.
    for junk in [" x", "}", " {}", "\n[1]"] {
        let error = parse(&format!("{good}{junk}")).unwrap_err().to_string();
        assert!(error.contains("trailing"), "{junk:?}: {error}");
    }
    // Whitespace after it is fine.
    parse(&format!("{good}\n\n")).expect("trailing whitespace");
    // The whole config as an array of its fields is not an object.
    let error = parse(r#"["p", null, null, {"type":"array","values":[]}]"#).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("expected a JSON object"), "{message}");
    // A field given twice.
    let twice =
        r#"{"name":"p","name":"q","from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#;
    let message = parse(twice).unwrap_err().to_string();
    assert!(message.contains("duplicate field `name`"), "{message}");
    let twice = r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"file","path":"a","path":"b"}}"#;
    let error = parse(twice).unwrap_err();
    let message = error.to_string();
    assert!(message.contains("duplicate field `path`"), "{message}");
    assert_eq!(path_of(error), "to.path");
}

#[test]
fn errors_quote_at_most_a_bounded_excerpt_of_a_value() {
    let huge = "x".repeat(10 << 20);
    for config in [
        config_with("batch_size", serde_json::json!(huge)),
        config_with("from", serde_json::json!({"type": huge})),
        config_with("to", {
            let mut sink = serde_json::json!({"type": "file", "path": "o"});
            sink[huge.as_str()] = serde_json::json!(1);
            sink
        }),
        config_with(
            "pipeline[0]",
            serde_json::json!({"type": "wasm", "name": "w", "module": "w.wasm",
                               "read_only_dir": {"host": "d", "guest": huge}}),
        ),
    ] {
        let message = parse_value(&config).unwrap_err().to_string();
        assert!(message.len() < 2_000, "{} bytes", message.len());
        assert!(
            message.contains(&format!("… ({} bytes)", 10 << 20)),
            "{message}"
        );
    }
}

/// Each kind of window reads exactly its own fields: a field of another
/// kind is an unknown field at its path, the message naming the kinds it
/// applies to.
#[test]
fn a_field_of_another_window_kind_is_refused_with_its_path() {
    use serde_json::json;
    let kinds = [
        json!({"window": "count", "events": 2}),
        json!({"window": "tumbling", "size_ms": 10}),
        json!({"window": "sliding", "size_ms": 10, "slide_ms": 5}),
        json!({"window": "session", "gap_ms": 10}),
        json!({"window": "signal", "on": {"header": "h"}}),
    ];
    let value_of = |field: &str| match field {
        "on" => json!({"key": "k"}),
        _ => json!(1),
    };
    let fields: std::collections::BTreeSet<&str> = [
        "events",
        "size_ms",
        "slide_ms",
        "gap_ms",
        "on",
        "max_out_of_orderness_ms",
        "allowed_lateness_ms",
        "idle_timeout_ms",
    ]
    .into();
    let mut refused = 0;
    for kind in &kinds {
        for field in &fields {
            let mut step = kind.clone();
            step["type"] = json!("window");
            step["name"] = json!("w");
            if step.get(*field).is_some() {
                continue;
            }
            let takes_it = with_window_field(&kind["window"], field);
            step[*field] = value_of(field);
            let config = config_with("pipeline[0]", step.clone());
            match parse_value(&config) {
                Ok(_) => panic!("{step}: accepted"),
                // Event-time fields on a time window are fields of its
                // kind, refused in processing time by its build.
                Err(error) if takes_it => {
                    let message = error.to_string();
                    assert_eq!(path_of(error), format!("pipeline[0].{field}"), "{message}");
                    assert!(message.contains("\"time\": \"event\""), "{step}: {message}");
                }
                Err(error) => {
                    let message = error.to_string();
                    assert_eq!(path_of(error), format!("pipeline[0].{field}"), "{message}");
                    assert!(
                        message.contains(&format!("unknown field `{field}`"))
                            && message.contains(&format!("`{field}` applies to")),
                        "{step}: {message}"
                    );
                    refused += 1;
                }
            }
        }
    }
    // count and signal: 7 foreign fields each; tumbling 4, sliding 3, session 4.
    assert_eq!(refused, 25);

    // What each message says about where the field belongs.
    for (step, wanted) in [
        (
            json!({"window": "tumbling", "size_ms": 10, "slide_ms": 5}),
            "`slide_ms` applies to sliding windows only",
        ),
        (
            json!({"window": "session", "gap_ms": 10, "size_ms": 5}),
            "`size_ms` applies to tumbling and sliding windows only",
        ),
        (
            json!({"window": "count", "events": 2, "allowed_lateness_ms": 5}),
            "`allowed_lateness_ms` applies to tumbling, sliding and session windows with \
             \"time\": \"event\" only",
        ),
        (
            json!({"window": "count", "events": 2, "on": {"key": "k"}}),
            "`on` applies to signal windows only",
        ),
        (
            json!({"window": "signal", "on": {"key": "k"}, "events": 2}),
            "`events` applies to count windows only",
        ),
    ] {
        let mut step = step;
        step["type"] = json!("window");
        step["name"] = json!("w");
        let message = parse_value(&config_with("pipeline[0]", step.clone()))
            .unwrap_err()
            .to_string();
        assert!(message.contains(wanted), "{step}: {message}");
    }

    // `null` for a field of another kind means "not set", as it always did.
    let step = json!({"type": "window", "name": "w", "window": "count", "events": 2,
                      "size_ms": null, "on": null, "idle_timeout_ms": null});
    let config = parse_value(&config_with("pipeline[0]", step)).expect("nulls are unset fields");
    let StepConfig::Window(window) = &config.pipeline[0] else {
        panic!("a window step")
    };
    assert_eq!(
        window.build().unwrap().kind(),
        &WindowKind::Count { events: 2 }
    );
}

/// Whether the window kind `kind` has `field` among its own (the
/// event-time fields, on time windows).
fn with_window_field(kind: &serde_json::Value, field: &str) -> bool {
    let time_window = matches!(kind.as_str(), Some("tumbling" | "sliding" | "session"));
    time_window
        && matches!(
            field,
            "max_out_of_orderness_ms" | "allowed_lateness_ms" | "idle_timeout_ms"
        )
}
