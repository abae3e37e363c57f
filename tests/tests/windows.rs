//! The windowed word-count example, end to end: a file of timestamped
//! events, a split pipe, an event-time tumbling window, an aggregating pipe.

use std::collections::BTreeMap;

use plumber::config::PipelineConfig;
use plumber::runtime::Runtime;
use plumber_tests::{cache_dir, guest, workspace_root};

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
