//! `plumber test`: the real binary runs real guests on a replay of events
//! with controlled time and compares the output with expected JSON lines.
//! Expected lines are computed here by plain reference code.

use plumber_tests as harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::{json, Value};

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn config(&self, steps: Value) -> PathBuf {
        // A source, sink and state that would fail if they were opened:
        // `plumber test` replaces them.
        let config = json!({
            "name": "under-test",
            "state": { "type": "sled", "path": self.dir.path().join("no-such-dir/state") },
            "from": { "type": "file", "path": self.dir.path().join("no-such-input.txt") },
            "pipeline": steps,
            "to": { "type": "file", "path": self.dir.path().join("no-such-dir/out.txt") }
        });
        self.write(
            "pipeline.json",
            &serde_json::to_string_pretty(&config).unwrap(),
        )
    }

    fn test(&self, config: &Path, input: &Path, expect: &Path, extra: &[&str]) -> Output {
        harness::windows::plumber_test(config, input, expect, extra)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn lines(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

fn wordcount_steps() -> Value {
    json!([{ "name": "count", "type": "wasm", "module": harness::guest("wordcount") }])
}

/// Word counts so far: `<word> <count>` keyed by the word, for each word
/// of each line in order, with the line's timestamp.
fn running_counts(input: &[(&str, Option<u64>)]) -> Vec<Value> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for (line, timestamp) in input {
        for word in line.split_whitespace() {
            let count = counts.entry(word).or_default();
            *count += 1;
            let mut event = json!({ "value": format!("{word} {count}"), "key": word });
            if let Some(ts) = timestamp {
                event["timestamp"] = json!(ts);
            }
            out.push(event);
        }
    }
    out
}

fn event_lines(input: &[(&str, Option<u64>)]) -> Vec<Value> {
    input
        .iter()
        .map(|(value, timestamp)| match timestamp {
            Some(ts) => json!({ "value": value, "timestamp": ts }),
            None => json!({ "value": value }),
        })
        .collect()
}

const WORDS: [(&str, Option<u64>); 4] = [
    ("to be or not to be", Some(1)),
    ("that is the question", Some(2)),
    ("be quick", None),
    ("to the end", Some(4)),
];

#[test]
fn a_matching_output_passes() {
    let case = Case::new();
    let config = case.config(wordcount_steps());
    let input = case.write("events.jsonl", &lines(&event_lines(&WORDS)));
    let mut expected = running_counts(&WORDS);
    // Per-key order: another interleaving of the keys passes too (a
    // stable sort by key keeps each key's order).
    expected.sort_by_key(|e| e["key"].as_str().unwrap().to_owned());
    let expect = case.write("out.jsonl", &lines(&expected));
    let output = case.test(&config, &input, &expect, &[]);
    assert!(
        output.status.success(),
        "stdout: {}\nstderr: {}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(
        text(&output.stdout).starts_with("ok: 4 events in, 15 out"),
        "{}",
        text(&output.stdout)
    );
    // In total order the same lines do not match.
    let total = case.test(&config, &input, &expect, &["--order", "total"]);
    assert_eq!(total.status.code(), Some(1), "{}", text(&total.stderr));
}

#[test]
fn a_mismatch_prints_a_diff_and_exits_1() {
    let case = Case::new();
    let config = case.config(wordcount_steps());
    let input = case.write("events.jsonl", &lines(&event_lines(&WORDS)));
    let mut expected = running_counts(&WORDS);
    // Line 3 ("or 1") wrong, and one line (the last) missing from the expectation.
    let wrong = expected[2].clone();
    expected[2]["value"] = json!("or 7");
    let dropped = expected.pop().unwrap();
    let expect = case.write("out.jsonl", &lines(&expected));
    let output = case.test(&config, &input, &expect, &[]);
    let stdout = text(&output.stdout);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    let expect_name = expect.display().to_string();
    // The canonical form: value, key, timestamp.
    let canonical = |e: &Value| {
        format!(
            "{{\"value\":{},\"key\":{},\"timestamp\":{}}}",
            e["value"], e["key"], e["timestamp"]
        )
    };
    let wanted_diff = format!(
        "key \"or\":\n  - {expect_name}:3  {{\"value\":\"or 7\",\"key\":\"or\",\"timestamp\":1}}\n  + (output)  {}\n",
        canonical(&wrong)
    );
    assert!(stdout.contains(&wanted_diff), "{stdout}");
    assert!(
        stdout.contains(&format!("  + (output)  {}\n", canonical(&dropped))),
        "{stdout}"
    );
    assert!(
        stderr.contains("the output differs from")
            && stderr.contains("14 expected, 15 produced: 1 missing (-), 2 not expected (+)"),
        "{stderr}"
    );
}

#[test]
fn bad_lines_are_refused_with_file_line_and_what_is_wrong() {
    let case = Case::new();
    let config = case.config(wordcount_steps());
    let expect = case.write("out.jsonl", "");
    let cases: [(&str, &str); 5] = [
        (
            "{\"value\":\"a\"}\n\n{\"value\":\"b\",\"colour\":\"red\"}\n",
            ":3: unknown field `colour`",
        ),
        ("{\"value\":\"a\"}\n{\"value\": \"b\"\n", ":2: not JSON"),
        ("{\"key\":\"a\"}\n", ":1: missing field `value`"),
        (
            "{\"watermark\":10}\n{\"watermark\":5}\n",
            ":2: watermark 5 goes back from the earlier 10",
        ),
        (
            "{\"watermark\":\"soon\"}\n",
            ":1: `watermark` must be a whole number",
        ),
    ];
    for (input_text, wanted) in cases {
        let input = case.write("events.jsonl", input_text);
        let output = case.test(&config, &input, &expect, &[]);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{input_text:?}: {stderr}");
        assert!(
            stderr.contains(&format!("{}{wanted}", input.display())),
            "{input_text:?}: {stderr}"
        );
    }
    let input = case.write("events.jsonl", "{\"value\":\"a\"}\n");
    let expect = case.write(
        "out.jsonl",
        "{\"value\":\"a 1\",\"key\":\"a\"}\n{\"watermark\":3}\n",
    );
    let output = case.test(&config, &input, &expect, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2: a watermark line belongs in the input",
            expect.display()
        )),
        "{stderr}"
    );
}

/// One line of a replay for the window tests.
#[derive(Clone, Copy)]
enum Line {
    Event(&'static str, Option<u64>),
    Watermark(u64),
}

fn replay(input: &[Line]) -> String {
    input
        .iter()
        .map(|line| match line {
            Line::Event(value, Some(ts)) => {
                format!("{}\n", json!({"value": value, "timestamp": ts}))
            }
            Line::Event(value, None) => format!("{}\n", json!({ "value": value })),
            Line::Watermark(w) => format!("{}\n", json!({ "watermark": w })),
        })
        .collect()
}

/// A tumbling window of `size` ms then the word count in window mode, by
/// reference: each event goes to the window of its time (its timestamp
/// in event time; the last watermark line, from 0, in processing time);
/// in event time the watermark is the highest timestamp less
/// `out_of_orderness` or the last watermark line, whichever is higher, and
/// an event whose window ended by the watermark is dropped (late). Output:
/// per window in end order, each word with its count in word order,
/// stamped with the window's end.
fn tumbling_reference(input: &[Line], size: u64, event_time: Option<u64>) -> Vec<Value> {
    let mut windows: BTreeMap<u64, BTreeMap<&str, u64>> = BTreeMap::new();
    let (mut watermark, mut now, mut max_ts) = (0u64, 0u64, None::<u64>);
    for line in input {
        match *line {
            Line::Watermark(w) => {
                watermark = watermark.max(w);
                now = w;
            }
            Line::Event(value, ts) => {
                let time = match event_time {
                    Some(_) => ts.unwrap(),
                    None => now,
                };
                let end = time - time % size + size;
                if event_time.is_some() && end <= watermark {
                    continue;
                }
                for word in value.split_whitespace() {
                    *windows.entry(end).or_default().entry(word).or_default() += 1;
                }
                if let (Some(ooo), Some(ts)) = (event_time, ts) {
                    max_ts = Some(max_ts.map_or(ts, |m| m.max(ts)));
                    watermark = watermark.max(max_ts.unwrap().saturating_sub(ooo));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (end, counts) in windows {
        for (word, count) in counts {
            out.push(json!({ "value": format!("{word} {count}"), "key": word, "timestamp": end }));
        }
    }
    out
}

fn tumbling_steps(time: &str) -> Value {
    let mut window = json!({ "name": "per-second", "type": "window", "window": "tumbling",
        "size_ms": 1000, "time": time });
    if time == "event" {
        window["max_out_of_orderness_ms"] = json!(100);
    }
    json!([
        window,
        { "name": "count", "type": "wasm", "module": harness::guest("wordcount"),
          "config": { "mode": "window" } }
    ])
}

fn passes(case: &Case, config: &Path, input: &[Line], expected: &[Value]) -> Output {
    let input = case.write("events.jsonl", &replay(input));
    let expect = case.write("out.jsonl", &lines(expected));
    case.test(config, &input, &expect, &["--order", "total"])
}

#[test]
fn an_event_time_window_fires_at_the_controlled_watermark() {
    let case = Case::new();
    let config = case.config(tumbling_steps("event"));
    let with_mark = [
        Line::Event("a b", Some(100)),
        Line::Event("b", Some(850)),
        Line::Watermark(1000),
        // Late: [0, 1000) fired at the watermark line (without the line
        // the timestamps hold the watermark at 750 and it would count).
        Line::Event("a", Some(950)),
        Line::Event("c", Some(1200)),
        Line::Event("c d", Some(2500)),
    ];
    let expected = tumbling_reference(&with_mark, 1000, Some(100));
    assert_eq!(
        expected[0],
        json!({"value": "a 1", "key": "a", "timestamp": 1000})
    );
    let output = passes(&case, &config, &with_mark, &expected);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );

    // Without the mark the same events give the other answer, which the
    // reference also computes; the first expectation then fails.
    let without: Vec<Line> = with_mark
        .iter()
        .copied()
        .filter(|l| !matches!(l, Line::Watermark(_)))
        .collect();
    let unmarked = tumbling_reference(&without, 1000, Some(100));
    assert_ne!(unmarked, expected);
    let output = passes(&case, &config, &without, &unmarked);
    assert!(output.status.success(), "{}", text(&output.stdout));
    let output = passes(&case, &config, &without, &expected);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
}

#[test]
fn a_processing_time_window_fires_as_the_controlled_clock_passes_its_end() {
    let case = Case::new();
    let config = case.config(tumbling_steps("processing"));
    let input = [
        Line::Event("x y", None),
        Line::Event("x", None),
        Line::Watermark(1000),
        Line::Event("y", None),
        Line::Watermark(2500),
        Line::Event("z", None),
        Line::Event("x", None),
    ];
    let expected = tumbling_reference(&input, 1000, None);
    // Three windows: [0,1000), [1000,2000), [2000,3000).
    assert_eq!(
        expected
            .iter()
            .map(|e| e["timestamp"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1000, 1000, 2000, 3000, 3000]
    );
    let output = passes(&case, &config, &input, &expected);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn a_session_window_closes_at_the_controlled_watermark() {
    let case = Case::new();
    let config = case.config(json!([
        { "name": "sessions", "type": "window", "window": "session", "gap_ms": 500,
          "time": "event", "key_by": "key" },
        { "name": "count", "type": "wasm", "module": harness::guest("window-count") }
    ]));
    let event =
        |key: &str, value: &str, ts: u64| json!({"key": key, "value": value, "timestamp": ts});
    let input = [
        event("u1", "click", 0),
        event("u1", "click", 300),
        event("u2", "view", 400),
        json!({ "watermark": 1000 }),
        // u1's session [0, 800) closed at the mark: this opens a new one.
        event("u1", "click", 700),
        event("u2", "view", 950),
    ];
    // By reference: u1 {0,300} -> [0,800) and u2 {400} -> [400,900),
    // both closed by the mark at 1000 (without the mark u1's 700 would
    // have merged into [0,1200)); then u1 {700} -> [700,1200) and u2
    // {950} -> [950,1450), fired at the end of the input. In end order.
    let line = |start: u64, end: u64, value: &str, count: u64| json!({"value": format!("{start}-{end}\t{value}\t{count}"), "timestamp": end});
    let expected = [
        line(0, 800, "click", 2),
        line(400, 900, "view", 1),
        line(700, 1200, "click", 1),
        line(950, 1450, "view", 1),
    ];
    let input_path = case.write("events.jsonl", &lines(&input));
    let expect = case.write("out.jsonl", &lines(&expected));
    let output = case.test(&config, &input_path, &expect, &["--order", "total"]);
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn a_graph_config_is_refused() {
    let case = Case::new();
    let config = json!({
        "name": "g",
        "sources": { "a": { "type": "array", "values": ["x"] } },
        "pipeline": [
            { "name": "up", "type": "wasm", "module": harness::guest("upper"), "from": ["a"] }
        ],
        "sinks": { "out": { "type": "stdout", "from": ["up"] } }
    });
    let config = case.write("graph.json", &config.to_string());
    let input = case.write("events.jsonl", "{\"value\":\"a\"}\n");
    let expect = case.write("out.jsonl", "");
    let output = case.test(&config, &input, &expect, &[]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("only a line's `from` and `to` can be replaced"),
        "{stderr}"
    );
}
