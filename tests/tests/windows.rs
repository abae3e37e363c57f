//! Windows end to end: the windowed word-count example (a file of
//! timestamped events, a split pipe, an event-time tumbling window, an
//! aggregating pipe), and keyed windows restarted on real backends.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::CheckpointPolicy;
use plumber::config::PipelineConfig;
use plumber::config::ReadStandard;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::{RedisOptions, RedisState, SharedState, SledState};
use plumber::streams::{batch_channel_sink, channel_source};
use plumber::window::{EventTime, Window};
use plumber::Event;
use plumber_tests::{cache_dir, guest, workspace_root, RedisServer};

/// Per-window word counts computed natively from the example's data, in
/// the order the aggregating pipe writes them.
fn expected_lines(data: &str) -> Vec<String> {
    let mut windows: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for line in data.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let timestamp = event["timestamp"].as_u64().unwrap();
        let start = timestamp - timestamp % 10_000;
        for word in event["value"].as_str().unwrap().split_whitespace() {
            let word = word
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            *windows.entry(start).or_default().entry(word).or_default() += 1;
        }
    }
    let mut lines = Vec::new();
    for (start, counts) in windows {
        let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        for (word, count) in ranked {
            lines.push(format!("{start}-{}\t{word}\t{count}", start + 10_000));
        }
    }
    lines
}

#[tokio::test]
async fn windowed_word_count_example_counts_each_window_exactly() {
    let examples = workspace_root().join("examples");
    let data = std::fs::read_to_string(examples.join("data/timed-words.jsonl")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts.txt");
    let late = dir.path().join("late.txt");

    // The example's own config, with its state and outputs moved to a temporary directory.
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("windowed-wordcount.json")).unwrap(),
    )
    .unwrap();
    config["state"] = serde_json::json!({ "type": "sled", "path": dir.path().join("state") });
    config["to"] = serde_json::json!({ "type": "file", "path": out });
    config["dead_letter"] = serde_json::json!({ "type": "file", "path": late });
    config["pipeline"][0]["module"] = serde_json::json!(guest("split"));
    config["pipeline"][2]["module"] = serde_json::json!(guest("window-count"));
    let config = PipelineConfig::parse(&config.to_string(), "windowed-wordcount.json", &examples)
        .expect("config");
    let state = config.open_state().await.unwrap();
    let report = config
        .builder(state)
        .await
        .expect("open")
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .run()
        .await
        .expect("run");
    assert_eq!(report.events_in, data.lines().count() as u64);

    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(written.lines().collect::<Vec<_>>(), expected_lines(&data));
    // The data is out of order by less than the allowed 2 s: nothing is late.
    assert!(!late.exists() || std::fs::read_to_string(&late).unwrap().is_empty());
}

/// Keys a state backend must keep apart byte for byte: glob characters
/// (Redis scans by pattern), a slash, bytes that are not UTF-8.
fn awkward_keys() -> Vec<Vec<u8>> {
    vec![
        b"a*".to_vec(),
        b"[x]".to_vec(),
        vec![0xff, 0x00, b'?'],
        b"key/with/slash".to_vec(),
    ]
}

fn session_window() -> Window {
    Window::session("sessions", Duration::from_millis(1_000))
        .event_time(EventTime::default())
        .keyed()
}

fn event(key: &[u8], timestamp: u64) -> Event {
    Event::new(format!("{timestamp}"))
        .with_key(key.to_vec())
        .with_timestamp(timestamp)
}

/// Runs the session window over `events` with a checkpoint after every
/// event; stops once the last is checkpointed (`stop`) or when the input
/// ends; returns the releases as (start, end, key, values).
async fn run_sessions(
    state: SharedState,
    events: Vec<Event>,
    stop: bool,
) -> Vec<(u64, u64, Option<Vec<u8>>, Vec<String>)> {
    let (input, source) = channel_source(64);
    let (sink, mut output) = batch_channel_sink(64);
    let builder = Pipeline::builder("windows-restart")
        .state(state.clone())
        .checkpoint(CheckpointPolicy::at_end_only().and_every_events(1))
        .batch_size(1)
        .from(source)
        .then(session_window())
        .to(sink);
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());
    let before = state
        .last_checkpoint("default/windows-restart")
        .await
        .unwrap()
        .map_or(0, |c| c.position.offset().expect("an offset"));
    let count = events.len() as u64;
    for event in events {
        input.send(event).await.unwrap();
    }
    if stop {
        while state
            .last_checkpoint("default/windows-restart")
            .await
            .unwrap()
            .map_or(0, |c| c.position.offset().expect("an offset"))
            < before + count
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle.shutdown();
    } else {
        drop(input);
    }
    running.await.unwrap().expect("run");
    let mut released = Vec::new();
    while let Some(batch) = output.recv().await {
        let info = batch.window.expect("window info");
        let values = batch
            .events
            .iter()
            .map(|e| e.value_lossy().into_owned())
            .collect();
        released.push((info.start, info.end, info.key, values));
    }
    released
}

/// A keyed session window stopped half-way continues on restart from the
/// per-key entries it saved, on sled and on a real Redis server: the
/// sessions merge across the restart, keys come back byte for byte.
#[tokio::test]
async fn keyed_sessions_continue_across_a_restart_on_sled_and_redis() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let backends: Vec<(&str, SharedState)> = vec![
        ("sled", Arc::new(SledState::open(dir.path()).unwrap())),
        (
            "redis",
            Arc::new(
                RedisState::connect(&redis.url(), RedisOptions::default())
                    .await
                    .unwrap(),
            ),
        ),
    ];
    for (backend, state) in backends {
        // First run: two events per key, one session each, then a stop.
        let first: Vec<Event> = awkward_keys()
            .iter()
            .flat_map(|k| [event(k, 1_000), event(k, 1_500)])
            .collect();
        assert_eq!(
            run_sessions(state.clone(), first, true).await,
            vec![],
            "{backend}"
        );
        // Second run: an event that extends each session, then one far
        // later that moves the watermark past them all.
        let mut second: Vec<Event> = awkward_keys().iter().map(|k| event(k, 2_000)).collect();
        second.push(event(b"z", 10_000));
        let released = run_sessions(state.clone(), second, false).await;
        let mut expected: Vec<_> = awkward_keys()
            .into_iter()
            .map(|k| {
                let values = vec!["1000".to_owned(), "1500".to_owned(), "2000".to_owned()];
                (1_000, 3_000, Some(k), values)
            })
            .collect();
        expected.sort_by(|a, b| a.2.cmp(&b.2));
        expected.push((
            10_000,
            11_000,
            Some(b"z".to_vec()),
            vec!["10000".to_owned()],
        ));
        assert_eq!(released, expected, "{backend}");
    }
}
