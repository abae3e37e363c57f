//! The stateful hot path stays exact: `add-many` (whose keys the host reads
//! in place from guest memory into one buffer per call) with many distinct
//! keys and with keys repeated within a batch, its errors, and the bounds
//! that keep a count's memory set by configuration (sled's page cache).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::config::{ConfigError, PipelineConfig, ReadStandard};
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::{
    MemoryState, Namespace, RedbState, RedbStateConfig, SharedState, SledState, SledStateConfig,
    StateBackend,
};
use plumber::step::WasmPipe;
use plumber::streams::{channel_sink, ArraySource};
use plumber_tests::{cache_dir, guest, RedisServer};

/// Lines of five words: four words seen nowhere else (`a<i>` … `d<i>`,
/// 100,000 distinct keys over 25,000 lines) and, within the line and the
/// batch, repeats: `a<i>` a second time and a hot word shared by many lines.
fn lines() -> Vec<String> {
    (0..25_000)
        .map(|i| format!("a{i} b{i} a{i} hot{} c{i} d{i} a{i}", i % 13))
        .collect()
}

/// Word counts of `lines` and each word's running count in input order,
/// computed directly.
fn reference(lines: &[String]) -> (Vec<(String, String)>, BTreeMap<String, i64>) {
    reference_from(BTreeMap::new(), lines)
}

/// [`reference`] from counts already stored.
fn reference_from(
    mut counts: BTreeMap<String, i64>,
    lines: &[String],
) -> (Vec<(String, String)>, BTreeMap<String, i64>) {
    let mut events = Vec::new();
    for line in lines {
        for word in line.split(' ') {
            let count = counts.entry(word.to_owned()).or_default();
            *count += 1;
            events.push((word.to_owned(), format!("{word} {count}")));
        }
    }
    (events, counts)
}

/// Runs the `wordcount` guest (count mode) over `lines` exactly-once with
/// checkpoints during the run, and returns its output (key, value) and
/// its committed counts.
async fn count(
    name: &str,
    state: SharedState,
    lines: &[String],
    packed: bool,
) -> (Vec<(String, String)>, BTreeMap<String, i64>) {
    let (sink, mut receiver) = channel_sink(lines.len() * 8);
    let report = Pipeline::builder(name)
        .state(state.clone())
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(5)))
        .batch_size(1024)
        .runtime(Runtime::new(Some(cache_dir())).expect("runtime"))
        .from(ArraySource::from_strings(lines.iter().cloned()))
        .then(
            WasmPipe::new("wordcount", guest("wordcount"))
                .config(serde_json::json!({"mode": "count"}))
                .packed(packed),
        )
        .to(sink)
        .run()
        .await
        .expect("run");
    assert_eq!(report.events_in, lines.len() as u64);
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push((
            String::from_utf8(event.key.expect("keyed by the word")).expect("UTF-8"),
            String::from_utf8(event.value).expect("UTF-8"),
        ));
    }
    let namespace = Namespace::for_pipe(name, "wordcount");
    let stored = state
        .scan_prefix(namespace.prefix())
        .await
        .expect("scan")
        .into_iter()
        .map(|(key, value)| {
            (
                String::from_utf8(key[namespace.prefix().len()..].to_vec()).expect("UTF-8"),
                String::from_utf8(value)
                    .expect("UTF-8")
                    .parse()
                    .expect("an integer"),
            )
        })
        .collect();
    (events, stored)
}

#[tokio::test]
async fn add_many_counts_100k_distinct_and_repeated_keys_exactly_on_memory() {
    let lines = lines();
    let (expected_events, expected_counts) = reference(&lines);
    assert_eq!(expected_counts.len(), 100_013);
    for packed in [true, false] {
        let name = format!("hotpath-memory-{packed}");
        let (events, stored) = count(&name, Arc::new(MemoryState::new()), &lines, packed).await;
        assert_eq!(events.len(), expected_events.len(), "packed {packed}");
        assert!(events == expected_events, "packed {packed}: output differs");
        assert!(stored == expected_counts, "packed {packed}: state differs");
    }
}

#[tokio::test]
async fn add_many_counts_100k_distinct_and_repeated_keys_exactly_on_sled() {
    let lines = lines();
    let (expected_events, expected_counts) = reference(&lines);
    let dir = tempfile::tempdir().expect("tempdir");
    // A small page cache: pages leave it and are read back during the run.
    let state: SharedState =
        Arc::new(SledState::open_with_cache(dir.path(), 1024 * 1024).expect("sled"));
    let (events, stored) = count("hotpath-sled", state, &lines, true).await;
    assert!(events == expected_events, "output differs");
    assert!(stored == expected_counts, "state differs");
}

/// The same on redb, whose page cache is far smaller than the data here:
/// 100k distinct keys over many checkpoints, read back from the file.
#[tokio::test]
async fn add_many_counts_100k_distinct_and_repeated_keys_exactly_on_redb() {
    let lines = lines();
    let (expected_events, expected_counts) = reference(&lines);
    let dir = tempfile::tempdir().expect("tempdir");
    let state: SharedState = Arc::new(
        RedbState::open_with_cache(dir.path().join("hotpath.redb"), 1024 * 1024).expect("redb"),
    );
    let (events, stored) = count("hotpath-redb", state, &lines, true).await;
    assert!(events == expected_events, "output differs");
    assert!(stored == expected_counts, "state differs");
}

#[tokio::test]
async fn add_many_on_a_stored_value_that_is_not_an_integer_fails_naming_the_key() {
    let state = Arc::new(MemoryState::new());
    let namespace = Namespace::for_pipe("hotpath-invalid", "wordcount");
    state
        .set(&namespace.key("mire"), b"not a number")
        .await
        .expect("set");
    let (sink, _receiver) = channel_sink(64);
    let error = Pipeline::builder("hotpath-invalid")
        .state(state.clone())
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::at_end_only())
        .runtime(Runtime::new(Some(cache_dir())).expect("runtime"))
        .from(ArraySource::from_strings(["kalo kalo", "tup mire kalo"]))
        .then(WasmPipe::new("wordcount", guest("wordcount")))
        .to(sink)
        .run()
        .await
        .expect_err("a count on a value that is not an integer fails");
    let text = plumber::ErrorChain(&error).to_string();
    assert!(text.contains("value at `mire` is not an integer"), "{text}");
    // Nothing of the failed call was committed.
    let stored = state.scan_prefix(namespace.prefix()).await.expect("scan");
    assert_eq!(
        stored,
        [(namespace.key("mire"), b"not a number".to_vec())],
        "only the value set before the run"
    );
}

fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
    PipelineConfig::parse(text, "test.json", Path::new("/base"))
}

fn with_state(state: &str) -> String {
    format!(
        r#"{{"name":"p","from":{{"type":"array","values":["a"]}},
            "pipeline":[{{"name":"u","type":"wasm","module":"u.wasm"}}],
            "to":{{"type":"stdout"}},"state":{state}}}"#
    )
}

#[test]
fn sleds_page_cache_is_configured_with_a_default_and_a_floor() {
    let sled = |config: &PipelineConfig| {
        config
            .state
            .downcast_ref::<SledStateConfig>()
            .expect("sled")
            .cache_bytes
    };
    let default = parse(&with_state(r#"{"type":"sled","path":"s"}"#)).expect("default");
    assert_eq!(sled(&default), 32 * 1024 * 1024);
    assert_eq!(SledState::CACHE_BYTES, 32 * 1024 * 1024);
    let set = parse(&with_state(
        r#"{"type":"sled","path":"s","cache_bytes":4194304}"#,
    ))
    .expect("set");
    assert_eq!(sled(&set), 4 * 1024 * 1024);
    match parse(&with_state(
        r#"{"type":"sled","path":"s","cache_bytes":1000}"#,
    )) {
        Err(ConfigError::Invalid { path, message, .. }) => {
            assert_eq!(path, "state.cache_bytes");
            assert!(message.contains("too small"), "{message}");
        }
        other => panic!("expected a refusal at state.cache_bytes, got {other:?}"),
    }
    match parse(&with_state(
        r#"{"type":"sled","path":"s","cache_bytes":"32M"}"#,
    )) {
        Err(ConfigError::Invalid { path, .. }) => assert_eq!(path, "state.cache_bytes"),
        other => panic!("expected a refusal at state.cache_bytes, got {other:?}"),
    }
}

#[test]
fn redbs_page_cache_is_configured_with_a_default_and_a_floor() {
    let redb = |config: &PipelineConfig| {
        config
            .state
            .downcast_ref::<RedbStateConfig>()
            .expect("redb")
            .clone()
    };
    let default = parse(&with_state(r#"{"type":"redb","path":"s.redb"}"#)).expect("default");
    assert_eq!(
        redb(&default),
        RedbStateConfig {
            path: Path::new("/base/s.redb").to_path_buf(),
            cache_bytes: 32 * 1024 * 1024
        }
    );
    assert_eq!(RedbState::CACHE_BYTES, 32 * 1024 * 1024);
    let set = parse(&with_state(
        r#"{"type":"redb","path":"s.redb","cache_bytes":4194304}"#,
    ))
    .expect("set");
    assert_eq!(redb(&set).cache_bytes, 4 * 1024 * 1024);
    for (bad, says) in [
        (r#""cache_bytes":1000"#, "too small"),
        (r#""cache_bytes":"32M""#, "invalid type"),
        (r#""cache":1048576"#, "unknown field `cache`"),
    ] {
        match parse(&with_state(&format!(
            r#"{{"type":"redb","path":"s.redb",{bad}}}"#
        ))) {
            Err(ConfigError::Invalid { path, message, .. }) => {
                let expected = if bad.contains("cache_bytes") {
                    "state.cache_bytes"
                } else {
                    "state.cache"
                };
                assert_eq!(path, expected, "{bad}");
                assert!(message.contains(says), "{bad}: {message}");
            }
            other => panic!("{bad}: expected a refusal, got {other:?}"),
        }
    }
}

/// On Redis the keys an `add-many` call has not written yet are read in one
/// `MGET`: counts already committed (some hot words, one of the new keys)
/// carry on exactly, and keys repeated in the call are read once.
#[tokio::test]
async fn add_many_counts_exactly_on_redis_from_committed_values() {
    let server = RedisServer::start();
    let options = plumber::state::RedisOptions {
        key_prefix: "hotpath:".to_owned(),
        ..plumber::state::RedisOptions::default()
    };
    let redis = plumber::state::RedisState::connect(&server.url(), options)
        .await
        .expect("connect");
    let state: SharedState = Arc::new(redis);
    let namespace = Namespace::for_pipe("hotpath-redis", "wordcount");
    let mut initial = BTreeMap::new();
    for (key, count) in [("hot0", 1000), ("hot7", -5), ("a5", 7), ("d24999", 41)] {
        state
            .set(&namespace.key(key), count.to_string().as_bytes())
            .await
            .expect("set");
        initial.insert(key.to_owned(), count);
    }
    let lines: Vec<String> = lines().into_iter().take(10_000).collect();
    let lines: Vec<String> = lines
        .into_iter()
        .chain(["d24999 a5 hot7".to_owned()])
        .collect();
    let (expected_events, expected_counts) = reference_from(initial, &lines);
    let (events, stored) = count("hotpath-redis", state, &lines, true).await;
    assert_eq!(events.len(), expected_events.len());
    assert!(events == expected_events, "output differs");
    assert!(stored == expected_counts, "state differs");
    // The new keys were read a batch at a time, not one `GET` each.
    let (gets, mgets) = (
        command_calls(server.port(), "get"),
        command_calls(server.port(), "mget"),
    );
    assert!(mgets >= 1, "no MGET");
    assert!(
        gets < 100,
        "{gets} GETs for {} distinct keys",
        expected_counts.len()
    );
}

/// How many times the Redis server at `port` ran `command`
/// (`INFO commandstats`).
fn command_calls(port: u16, command: &str) -> u64 {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "commandstats"])
        .output()
        .expect("redis-cli");
    let text = String::from_utf8_lossy(&output.stdout);
    let prefix = format!("cmdstat_{command}:calls=");
    text.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().expect("a call count"))
}
