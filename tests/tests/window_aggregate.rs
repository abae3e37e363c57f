//! Windows that aggregate in a plugin (docs/windows.md, "Aggregating
//! windows"): the window keeps an accumulator of the `aggregate-report`
//! guest per key and window (per pane for sliding windows) instead of the
//! events, and releases what its `emit` answers: one line per window,
//! `<key>,<start>,<end>,<events>,<first>,<last>`, the line the
//! `trigger-report` pipe writes after a buffering window.
//!
//! Each test checks the aggregated window against a reference computed
//! here and against the same window buffering, followed by
//! `trigger-report`, through `plumber test`; then a window that could not
//! buffer its input, SIGKILLs of `plumber run` mid-stream, failing
//! aggregators, refused configs, and the Python aggregator against the
//! same reference.

use plumber_tests as harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::windows::Fire as _;
use harness::windows::{
    self, event, numbered, output_per_key, per_key, report, sliding, tumbling, Dir, Line,
};
use serde_json::{json, Value};

/// One released window, as `trigger-report` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fire {
    key: String,
    start: u64,
    end: u64,
    count: usize,
    first: String,
    last: String,
}

impl Fire {
    /// A window of `events` (value, timestamp), first and last by time
    /// (ties: by arrival).
    fn of(key: &str, start: u64, end: u64, events: &[(String, u64)]) -> Fire {
        let min = events.iter().map(|e| e.1).min().unwrap();
        let max = events.iter().map(|e| e.1).max().unwrap();
        Fire {
            key: key.to_owned(),
            start,
            end,
            count: events.len(),
            first: events.iter().find(|e| e.1 == min).unwrap().0.clone(),
            last: events.iter().rev().find(|e| e.1 == max).unwrap().0.clone(),
        }
    }
}

impl windows::Fire for Fire {
    fn key(&self) -> &str {
        &self.key
    }

    fn line(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.key, self.start, self.end, self.count, self.first, self.last
        )
    }

    /// What the sink gets: keyed by the window's key (none unkeyed).
    fn expected_event(&self) -> Value {
        let mut event = json!({ "value": self.line(), "timestamp": self.end });
        if !self.key.is_empty() {
            event["key"] = json!(self.key);
        }
        event
    }
}

fn events_of(lines: &[Line]) -> Vec<(String, String, u64)> {
    lines
        .iter()
        .filter_map(|line| match line {
            Line::Event {
                key,
                value,
                timestamp,
            } => Some((key.clone(), value.clone(), *timestamp)),
            Line::Watermark(_) => None,
        })
        .collect()
}

/// The reference of keyed event-time sliding windows of `size` every
/// `slide` (tumbling: `slide == size`) over events in time order, with no
/// lateness: every window holding events fires once, in (end, start, key)
/// order (the order the engine promises per key).
fn sliding_reference(lines: &[Line], size: u64, slide: u64) -> Vec<Fire> {
    let mut windows: BTreeMap<(u64, u64, String), Vec<(String, u64)>> = BTreeMap::new();
    for (key, value, t) in events_of(lines) {
        let mut start = t - t % slide;
        loop {
            if start + size > t {
                windows
                    .entry((start + size, start, key.clone()))
                    .or_default()
                    .push((value.clone(), t));
            }
            if start < slide {
                break;
            }
            start -= slide;
            if start + size <= t {
                break;
            }
        }
    }
    windows
        .into_iter()
        .map(|((end, start, key), events)| Fire::of(&key, start, end, &events))
        .collect()
}

/// The reference of keyed event-time sessions of `gap` over events that
/// come out of order, but never so late that they are dropped: per key,
/// the events sorted by time, a session where two neighbours are at most
/// `gap` apart; each fires once, in (end, start, key) order.
fn session_reference(lines: &[Line], gap: u64) -> Vec<Fire> {
    let mut keys: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (key, value, t) in events_of(lines) {
        keys.entry(key).or_default().push((value, t));
    }
    let mut fires = Vec::new();
    for (key, mut events) in keys {
        events.sort_by_key(|e| e.1);
        let mut session: Vec<(String, u64)> = Vec::new();
        for event in events {
            if session.last().is_some_and(|last| event.1 > last.1 + gap) {
                let start = session[0].1;
                let end = session.last().unwrap().1 + gap;
                fires.push(Fire::of(&key, start, end, &session));
                session.clear();
            }
            session.push(event);
        }
        if !session.is_empty() {
            let start = session[0].1;
            let end = session.last().unwrap().1 + gap;
            fires.push(Fire::of(&key, start, end, &session));
        }
    }
    fires.sort_by(|a, b| (a.end, a.start, &a.key).cmp(&(b.end, b.start, &b.key)));
    fires
}

fn aggregated(window: Value) -> Value {
    with_aggregate(window, &harness::guest("aggregate-report"), json!({}))
}

fn with_aggregate(window: Value, module: &Path, config: Value) -> Value {
    let mut window = window;
    window["aggregate"] = json!({ "module": module, "config": config });
    window
}

fn session(gap: u64, out_of_orderness: u64) -> Value {
    json!({ "type": "window", "name": "w", "window": "session", "gap_ms": gap,
            "time": "event", "key_by": "key", "max_out_of_orderness_ms": out_of_orderness })
}

/// The name of this file's pipelines.
const NAME: &str = "aggregates";

/// Runs `steps` on `lines` through `plumber test` and checks the output
/// against `expected` (per key, in order).
fn check(steps: Vec<Value>, lines: &[Line], expected: &[Fire]) {
    windows::check(NAME, steps, lines, expected);
}

/// The window aggregating, and the window buffering followed by
/// `trigger-report`, both give `expected`.
fn check_both_ways(window: Value, lines: &[Line], expected: &[Fire]) {
    check(vec![aggregated(window.clone())], lines, expected);
    check(vec![window, report()], lines, expected);
}

#[test]
fn tumbling_windows_aggregate_as_they_buffer() {
    let mut lines = numbered(3000, 5, 3);
    // Watermarks between batches fire windows mid-stream.
    lines.insert(1000, Line::Watermark(2500));
    lines.insert(2200, Line::Watermark(6100));
    let expected = sliding_reference(&lines, 1000, 1000);
    assert!(expected.len() >= 45, "{}", expected.len());
    check_both_ways(tumbling(1000), &lines, &expected);
}

#[test]
fn sliding_windows_aggregate_panes_as_they_buffer() {
    // Panes of gcd(1000, 300) = 100 ms; each event is in 3 or 4 windows.
    let mut lines = numbered(4000, 3, 2);
    lines.insert(1500, Line::Watermark(2900));
    let expected = sliding_reference(&lines, 1000, 300);
    assert!(expected.iter().any(|f| f.count > 100));
    check_both_ways(sliding(1000, 300), &lines, &expected);
}

#[test]
fn unkeyed_sliding_windows_aggregate_as_they_buffer() {
    let lines: Vec<Line> = numbered(2000, 1, 5)
        .into_iter()
        .map(|line| match line {
            Line::Event {
                value, timestamp, ..
            } => event("", value, timestamp),
            other => other,
        })
        .collect();
    let mut window = sliding(2000, 500);
    window.as_object_mut().unwrap().remove("key_by");
    let expected = sliding_reference(&lines, 2000, 500);
    check_both_ways(window, &lines, &expected);
}

/// Bursts per key whose events come out of order (by less than the
/// out-of-orderness), so that late events bridge and merge sessions.
fn session_input() -> Vec<Line> {
    let mut lines = Vec::new();
    let mut rng = harness::kills::Lcg(5);
    let mut t = 0;
    for burst in 0..60u64 {
        let mut events = Vec::new();
        for i in 0..(4 + burst % 6) {
            t += 7 + rng.next_in(0, 40);
            let key = format!("u{}", (burst + i) % 4);
            events.push(event(&key, format!("b{burst}-{i}"), t));
        }
        // Reverse each burst in runs of 8 (two events of each key): a
        // key's events come out of order by less than 400 ms.
        for run in events.chunks_mut(8) {
            run.reverse();
        }
        lines.extend(events);
        if burst % 5 == 0 {
            t += 300;
        }
    }
    lines
}

#[test]
fn sessions_merge_their_accumulators_as_buffered_sessions_merge() {
    let lines = session_input();
    let expected = session_reference(&lines, 150);
    // Long sessions and short ones, and a key's events out of order.
    assert!(expected.iter().any(|f| f.count >= 6), "{expected:?}");
    assert!(expected.len() > 20, "{}", expected.len());
    let times = |key: &str| -> Vec<u64> {
        events_of(&lines)
            .into_iter()
            .filter(|e| e.0 == key)
            .map(|e| e.2)
            .collect()
    };
    assert!(times("u0").windows(2).any(|w| w[1] < w[0]));
    check_both_ways(session(150, 500), &lines, &expected);
}

#[test]
fn count_windows_aggregate_as_they_buffer() {
    // Processing time: `plumber test` holds it at 0 without watermark lines.
    let lines = numbered(1000, 3, 1);
    let mut keys: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut expected = Vec::new();
    for (key, value, t) in events_of(&lines) {
        let window = keys.entry(key.clone()).or_default();
        window.push((value, t));
        if window.len() == 7 {
            expected.push(Fire::of(&key, 0, 1, window));
            window.clear();
        }
    }
    for (key, window) in keys {
        if !window.is_empty() {
            expected.push(Fire::of(&key, 0, 1, &window));
        }
    }
    let window =
        json!({ "type": "window", "name": "w", "window": "count", "events": 7, "key_by": "key" });
    check_both_ways(window, &lines, &expected);
}

#[test]
fn a_late_event_within_the_lateness_fires_the_window_again() {
    let mut window = tumbling(1000);
    window["allowed_lateness_ms"] = json!(500);
    let lines = vec![
        event("k", "a", 100),
        event("k", "b", 200),
        // The watermark passes 1000: [0, 1000) fires with a and b.
        event("k", "c", 1100),
        // Late, within the lateness: [0, 1000) fires again with c too.
        event("k", "d", 300),
        // The watermark passes 1500: [0, 1000) is closed for good.
        event("k", "e", 1600),
        // Too late: dropped.
        event("k", "f", 400),
    ];
    let at = |events: &[(&str, u64)]| -> Vec<(String, u64)> {
        events.iter().map(|(v, t)| ((*v).to_owned(), *t)).collect()
    };
    let expected = vec![
        Fire::of("k", 0, 1000, &at(&[("a", 100), ("b", 200)])),
        Fire::of("k", 0, 1000, &at(&[("a", 100), ("b", 200), ("d", 300)])),
        Fire::of("k", 1000, 2000, &at(&[("c", 1100), ("e", 1600)])),
    ];
    assert_eq!(expected[1].line(), "k,0,1000,3,a,d");
    check_both_ways(window, &lines, &expected);
}

#[test]
fn a_window_too_big_to_buffer_runs_on_its_accumulators() {
    // 1,000,000 events into 4 keys' windows of 250,000 events each: a
    // buffering window bounded to 1000 events (and 200 bytes) fails; the
    // aggregating one holds an accumulator of a few dozen bytes per key.
    let n = 1_000_000u64;
    let lines = numbered(n, 4, 1);
    let mut window = tumbling(10_000_000);
    window["max_events"] = json!(1000);
    window["max_bytes"] = json!(200);
    window["on_overflow"] = json!("fail");
    let expected: Vec<Fire> = (0..4u64)
        .map(|k| Fire {
            key: format!("k{k}"),
            start: 0,
            end: 10_000_000,
            count: (n / 4) as usize,
            first: k.to_string(),
            last: (n - 4 + k).to_string(),
        })
        .collect();
    check(vec![aggregated(window.clone())], &lines, &expected);

    let stderr = windows::failing(NAME, vec![window, report()], &lines[..20_000]);
    assert!(stderr.contains("is full"), "{stderr}");
}

#[test]
fn max_bytes_bounds_an_accumulator() {
    let mut window = tumbling(1000);
    window["max_bytes"] = json!(100);
    let long = "x".repeat(80);
    let lines = vec![event("k", "short", 1), event("k", long, 2)];
    let stderr = windows::failing(NAME, vec![aggregated(window)], &lines);
    assert!(stderr.contains("max_bytes = 100"), "{stderr}");
    assert!(stderr.contains("window [0, 1000)"), "{stderr}");
}

#[test]
fn plumber_run_aggregates_as_the_reference() {
    let lines = numbered(3000, 5, 2);
    let expected = sliding_reference(&lines, 1000, 250);
    let dir = Dir::new();
    let steps = vec![aggregated(sliding(1000, 250))];
    let (config, out) = windows::run_config(&dir, NAME, steps, &lines);
    windows::run_to_end(&config);
    assert_eq!(output_per_key(&out), per_key(&expected));
}

/// SIGKILLs `plumber run` of `window` several times mid-stream: every
/// window comes out exactly once, as in the reference (accumulators and
/// panes are saved with each checkpoint, atomically with the source
/// position).
fn exact_under_sigkill(window: Value, lines: &[Line], expected: &[Fire], seed: u64) {
    windows::exact_under_sigkill(NAME, vec![window], lines, expected, seed);
}

#[test]
fn sliding_panes_are_exact_under_sigkill() {
    let lines = numbered(12_000, 7, 2);
    let expected = sliding_reference(&lines, 1000, 400);
    exact_under_sigkill(aggregated(sliding(1000, 400)), &lines, &expected, 3);
}

#[test]
fn sessions_are_exact_under_sigkill() {
    let mut lines = Vec::new();
    let mut t = 0;
    for i in 0..12_000u64 {
        lines.push(event(&format!("u{}", i % 11), i.to_string(), t));
        t += if i % 50 == 0 { 200 } else { 3 };
    }
    let expected = session_reference(&lines, 100);
    exact_under_sigkill(aggregated(session(100, 0)), &lines, &expected, 19);
}

fn refused(steps: Vec<Value>) -> String {
    windows::refused(NAME, steps)
}

#[test]
fn a_bad_aggregate_is_refused_at_start_with_its_path() {
    // Not an aggregator component: a pipe.
    let window = with_aggregate(tumbling(1000), &harness::guest("trigger-report"), json!({}));
    let stderr = refused(vec![window]);
    assert!(stderr.contains("w/aggregate"), "{stderr}");
    assert!(stderr.contains("aggregator world"), "{stderr}");
    // A missing file.
    let window = with_aggregate(tumbling(1000), Path::new("/no/such/agg.wasm"), json!({}));
    let stderr = refused(vec![window]);
    assert!(stderr.contains("/no/such/agg.wasm"), "{stderr}");
    // A config its init refuses.
    let window = with_aggregate(
        tumbling(1000),
        &harness::guest("aggregate-report"),
        json!({ "bogus": 1 }),
    );
    let stderr = refused(vec![window]);
    assert!(stderr.contains("bad config"), "{stderr}");
    // An unknown field of the section, with its path.
    let mut window = aggregated(tumbling(1000));
    window["aggregate"]["modul"] = json!("x.wasm");
    let stderr = refused(vec![window]);
    assert!(stderr.contains("pipeline[0].aggregate.modul"), "{stderr}");
    // A signal window takes none.
    let signal = json!({ "type": "window", "name": "w", "window": "signal",
                         "on": { "header": "flush" }, "aggregate": { "module": "x.wasm" } });
    let stderr = refused(vec![signal]);
    assert!(stderr.contains("pipeline[0].aggregate"), "{stderr}");
    // Not with a trigger.
    let mut window = aggregated(tumbling(1000));
    window["trigger"] = json!({ "module": harness::guest("trigger-early") });
    let stderr = refused(vec![window]);
    assert!(stderr.contains("pipeline[0].aggregate"), "{stderr}");
    assert!(stderr.contains("not both"), "{stderr}");
    // No early release.
    let mut window = aggregated(tumbling(1000));
    window["on_overflow"] = json!("release");
    let stderr = refused(vec![window]);
    assert!(stderr.contains("pipeline[0].on_overflow"), "{stderr}");
}

fn failing(config: Value, lines: &[Line]) -> String {
    let window = with_aggregate(tumbling(1000), &harness::guest("aggregate-report"), config);
    windows::failing(NAME, vec![window], lines)
}

#[test]
fn a_failing_aggregator_stops_the_pipeline_naming_window_and_module() {
    let lines = vec![event("k", "fine", 5), event("bad-key", "poison", 17)];
    let stderr = failing(json!({ "fail_on": "poison" }), &lines);
    assert!(stderr.contains("window `w`"), "{stderr}");
    assert!(stderr.contains("aggregate_report.wasm"), "{stderr}");
    assert!(stderr.contains("refused the event `poison`"), "{stderr}");
    assert!(stderr.contains("asked to add"), "{stderr}");

    let lines = vec![event("k", "fine", 5), event("k", "boom", 7)];
    let stderr = failing(json!({ "trap_on": "boom" }), &lines);
    assert!(stderr.contains("window `w`"), "{stderr}");
    assert!(stderr.contains("aggregate_report.wasm"), "{stderr}");
    assert!(stderr.contains("trapped"), "{stderr}");
}

/// `examples/guests/aggregate-report-py` built by its `build.sh`
/// (componentize-py) into `dir`.
fn python_aggregate_report(dir: &Dir) -> PathBuf {
    windows::build_python_guest(
        dir,
        "aggregate-report-py",
        "aggregate_report_py.wasm",
        "aggregator",
    )
}

#[test]
fn the_python_aggregator_reports_as_the_rust_one() {
    let build = Dir::new();
    let module = python_aggregate_report(&build);
    let python = |window: Value| with_aggregate(window, &module, json!({}));

    let mut lines = numbered(1500, 4, 3);
    lines.insert(700, Line::Watermark(2000));
    check(
        vec![python(sliding(1000, 250))],
        &lines,
        &sliding_reference(&lines, 1000, 250),
    );
    check(
        vec![python(tumbling(1000))],
        &lines,
        &sliding_reference(&lines, 1000, 1000),
    );
    let lines = session_input();
    check(
        vec![python(session(150, 500))],
        &lines,
        &session_reference(&lines, 150),
    );
}
