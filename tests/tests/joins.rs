//! Joins end to end: the `"type": "join"` config refused with the JSON path
//! of the bad field, and a windowed join feeding a real WASM pipe
//! (`window-count`) through `plumber run`, killed with SIGKILL several
//! times and restarted, whose exactly-once output equals a reference
//! computed here from the input (grouping every event by key and window,
//! the watermark followed event by event).

use harness::kills;
use plumber_tests as harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plumber::config::{standard_registry, ConfigError, PipelineConfig};
use serde_json::{json, Value};

fn config_with(step: Value) -> String {
    json!({
        "name": "j",
        "state": {"type": "memory"},
        "from": {"type": "array", "values": ["a"]},
        "pipeline": [
            {"name": "upper", "type": "wasm", "module": "u.wasm"},
            step
        ],
        "to": {"type": "discard"}
    })
    .to_string()
}

fn parse(step: Value) -> Result<PipelineConfig, ConfigError> {
    PipelineConfig::parse_with(
        &standard_registry(),
        &config_with(step),
        "j.json",
        Path::new("/base"),
    )
}

fn error_of(step: Value) -> (String, String) {
    match parse(step) {
        Err(ConfigError::Invalid { path, message, .. }) => (path, message),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("the config was accepted"),
    }
}

fn tumbling() -> Value {
    json!({"name": "j", "type": "join", "join": "window", "left": "bids",
           "right": "auctions", "window": "tumbling", "size_ms": 1000, "key_by": "key"})
}

fn with(mut step: Value, field: &str, value: Value) -> Value {
    step[field] = value;
    step
}

#[test]
fn a_join_config_is_read_strictly_with_paths() {
    let accepted = parse(tumbling());
    assert!(accepted.is_ok(), "{:?}", accepted.err());
    let interval = json!({"name": "i", "type": "join", "join": "interval", "left": "a",
                          "right": "b", "lower_ms": 0, "upper_ms": 10});
    assert!(parse(interval.clone()).is_ok());
    let lookup = json!({"name": "l", "type": "join", "join": "lookup_table", "left": "orders",
                        "right": "prices", "how": "left"});
    assert!(parse(lookup.clone()).is_ok());
    let cases = [
        (
            with(tumbling(), "colour", json!(1)),
            "pipeline[1].colour",
            "unknown field",
        ),
        (
            with(tumbling(), "right", json!("bids")),
            "pipeline[1].right",
            "same input",
        ),
        (
            with(tumbling(), "left", json!("")),
            "pipeline[1].left",
            "name of an input",
        ),
        (
            with(tumbling(), "slide_ms", json!(10)),
            "pipeline[1].slide_ms",
            "sliding windows only",
        ),
        (
            with(tumbling(), "lower_ms", json!(10)),
            "pipeline[1].lower_ms",
            "interval joins only",
        ),
        (
            with(tumbling(), "size_ms", Value::Null),
            "pipeline[1].size_ms",
            "needs `size_ms`",
        ),
        (
            with(tumbling(), "window", Value::Null),
            "pipeline[1].window",
            "needs `window`",
        ),
        (
            with(tumbling(), "window", json!("hopping")),
            "pipeline[1].window",
            "unknown variant",
        ),
        (
            with(tumbling(), "how", json!("outer")),
            "pipeline[1].how",
            "unknown variant",
        ),
        (
            with(tumbling(), "time", json!("processing")),
            "pipeline[1].time",
            "event time only",
        ),
        (
            with(tumbling(), "max_buffered_events", json!(0)),
            "pipeline[1].max_buffered_events",
            "at least 1",
        ),
        (
            with(tumbling(), "on_overflow", json!("release")),
            "pipeline[1].on_overflow",
            "unknown variant",
        ),
        (
            with(tumbling(), "late", json!("dead_letter")),
            "pipeline[1].late",
            "no `dead_letter`",
        ),
        (
            with(interval.clone(), "how", json!("left")),
            "pipeline[1].how",
            "window and lookup joins only",
        ),
        (
            with(interval, "upper_ms", Value::Null),
            "pipeline[1].upper_ms",
            "needs `upper_ms`",
        ),
        (
            with(lookup.clone(), "late", json!("drop")),
            "pipeline[1].late",
            "window and interval joins only",
        ),
        (
            with(lookup.clone(), "size_ms", json!(10)),
            "pipeline[1].size_ms",
            "window joins only",
        ),
        (
            with(lookup, "idle_timeout_ms", json!(10)),
            "pipeline[1].idle_timeout_ms",
            "window and interval joins only",
        ),
    ];
    for (step, path, message) in cases {
        let (at, said) = error_of(step);
        assert_eq!(at, path, "{said}");
        assert!(said.contains(message), "{path}: {said}");
    }
}

const KEYS: u64 = 5;
const SIZE_MS: u64 = 1_000;
const DISORDER_MS: u64 = 300;
const LAG_MS: u64 = 500;
const BASE_MS: u64 = 1_800_000_000_000;

/// One input event: (input, key, timestamp, value).
type Input = (&'static str, String, u64, String);

/// `count` events of `bids` and `auctions`, 10 ms apart, up to
/// `DISORDER_MS` out of order, auctions `LAG_MS` behind, and one in thirty
/// far behind (late).
fn events(count: u64) -> Vec<Input> {
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut below = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    (0..count)
        .map(|n| {
            let bid = below(2) == 0;
            let input = if bid { "bids" } else { "auctions" };
            let now = BASE_MS + 10 * n - if bid { 0 } else { LAG_MS };
            let ts = if n > 100 && below(30) == 0 {
                now - 5 * SIZE_MS
            } else {
                now - below(DISORDER_MS + 1)
            };
            (
                input,
                format!("k{}", below(KEYS)),
                ts,
                format!("{input}-{n}"),
            )
        })
        .collect()
}

/// The lines `window-count` writes for the join's output, as the join's
/// documentation says it is: per key and tumbling window of events on
/// both sides, one line per event value (each value is unique, so its
/// count is 1). An event is late when its window's end is at or below the
/// watermark it meets: the minimum over the two inputs of the highest
/// timestamp less `DISORDER_MS`, once both have sent.
fn expected_lines(events: &[Input]) -> Vec<String> {
    let mut highest: BTreeMap<&str, u64> = BTreeMap::new();
    let mut watermark: Option<u64> = None;
    let mut windows: BTreeMap<(String, u64), [Vec<String>; 2]> = BTreeMap::new();
    for (input, key, ts, value) in events {
        let start = ts - ts % SIZE_MS;
        if watermark.is_some_and(|w| start + SIZE_MS <= w) {
            continue;
        }
        let side = usize::from(*input == "auctions");
        windows.entry((key.clone(), start)).or_default()[side].push(value.clone());
        let high = highest.entry(input).or_insert(*ts);
        *high = (*high).max(*ts);
        if highest.len() == 2 {
            let candidate = highest.values().min().unwrap() - DISORDER_MS;
            watermark = Some(watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }
    let mut lines = Vec::new();
    for ((_, start), [left, right]) in windows {
        if left.is_empty() || right.is_empty() {
            continue;
        }
        for value in left.iter().chain(&right) {
            lines.push(format!("{start}-{}\t{value}\t1", start + SIZE_MS));
        }
    }
    lines.sort();
    lines
}

struct Scenario {
    dir: tempfile::TempDir,
    config: PathBuf,
    out: PathBuf,
}

impl Scenario {
    fn new(events: &[Input]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        let lines: String = events
            .iter()
            .map(|(name, key, ts, value)| {
                let event = json!({"value": value, "key": key, "timestamp": ts,
                                   "headers": {"plumber-input": name}});
                format!("{event}\n")
            })
            .collect();
        std::fs::write(&input, lines).unwrap();
        let out = dir.path().join("out.txt");
        let config = json!({
            "name": "joins",
            "delivery": "exactly_once",
            "state": {"type": "sled", "path": dir.path().join("state")},
            "checkpoint": {"interval_ms": 25},
            "batch_size": 20,
            "from": {"type": "file", "path": input, "format": "json"},
            "pipeline": [
                {"name": "bids-auctions", "type": "join", "join": "window", "left": "bids",
                 "right": "auctions", "window": "tumbling", "size_ms": SIZE_MS,
                 "key_by": "key", "how": "inner", "max_out_of_orderness_ms": DISORDER_MS,
                 "max_buffered_events": 100_000},
                {"name": "count", "type": "wasm", "module": harness::guest("window-count")}
            ],
            "to": {"type": "file", "path": out}
        });
        let path = dir.path().join("joins.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        Scenario {
            dir,
            config: path,
            out,
        }
    }

    fn command(&self) -> Command {
        harness::kills::plumber_run(&self.config)
    }

    fn output_len(&self) -> u64 {
        kills::file_len(&self.out)
    }

    /// Kills `plumber run` each time its output has grown by `step` bytes
    /// (plus a few ms, so kills land in checkpoints too), `kills` times,
    /// then lets it finish. Returns the kills that hit a running process.
    fn run_with_kills(&self, kills: u64, step: u64) -> u64 {
        let mut landed = 0;
        for n in 0..kills {
            let target = self.output_len() + step;
            let extra = Duration::from_millis(7 * n);
            if kills::kill_once_grown(&mut self.command(), &self.out, target, extra) {
                landed += 1;
            }
        }
        let output = self.command().output().expect("run to the end");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        landed
    }

    fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        lines.sort();
        lines
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

#[test]
fn a_join_killed_and_restarted_gives_exactly_the_reference_output() {
    let input = events(30_000);
    let expected = expected_lines(&input);
    assert!(expected.len() > 10_000, "{}", expected.len());
    let scenario = Scenario::new(&input);
    let full: u64 = expected.iter().map(|line| line.len() as u64 + 1).sum();
    let landed = scenario.run_with_kills(4, full / 8);
    assert!(
        landed > 0,
        "no kill landed while the pipeline was running: the test proved nothing ({})",
        scenario.path().display()
    );
    let lines = scenario.lines();
    assert_eq!(lines.len(), expected.len(), "lines missing or repeated");
    assert_eq!(lines, expected);
}
