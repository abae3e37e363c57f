//! Windows whose firing a trigger component decides (docs/windows.md,
//! "Triggers"): the example triggers of `examples/guests/trigger-*`, each
//! checked against a reference computed here (a plain simulation of the
//! window and the trigger's rule), through `plumber test` (watermark lines)
//! and through `plumber run`, also when `plumber run` is SIGKILLed
//! mid-stream and restarted; the Python `trigger-early-py` against the
//! same reference; and the refusals of a bad trigger.
//!
//! After the window, the `trigger-report` pipe turns every batch the
//! window releases into `<key>,<start>,<end>,<events>,<first>,<last>`, so
//! the output lists every fire.

use plumber_tests as harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harness::windows::Fire as _;
use harness::windows::{
    self, event, input_jsonl, numbered, output_per_key, per_key, report, sliding, tumbling, Dir,
    Line,
};
use serde_json::{json, Value};

/// One fire as `trigger-report` writes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Fire {
    key: String,
    start: u64,
    end: u64,
    values: Vec<String>,
}

impl windows::Fire for Fire {
    fn key(&self) -> &str {
        &self.key
    }

    fn line(&self) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.key,
            self.start,
            self.end,
            self.values.len(),
            self.values.first().map_or("", String::as_str),
            self.values.last().map_or("", String::as_str)
        )
    }

    fn expected_event(&self) -> Value {
        json!({ "value": self.line(), "key": self.key, "timestamp": self.end })
    }
}

/// What the reference trigger decides for an event that joined a window
/// (the window's values, this event's included).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Decide {
    Continue,
    Fire,
    FireAndPurge,
}

/// A reference of keyed event-time windows (no out-of-orderness, no
/// lateness, events in time order): tumbling windows of `size` when
/// `gap` is `None`, sessions of `gap` otherwise. `rule` decides per event;
/// windows fire natively when the watermark reaches their end and, with
/// `at_input_end`, at the end of the input, in (end, start, key) order.
fn reference(
    lines: &[Line],
    size: u64,
    gap: Option<u64>,
    rule: &dyn Fn(&[String]) -> Decide,
    at_input_end: bool,
) -> Vec<Fire> {
    // (key, start) -> (end, values)
    let mut open: BTreeMap<(String, u64), (u64, Vec<String>)> = BTreeMap::new();
    let mut fires = Vec::new();
    let fire_until = |open: &mut BTreeMap<(String, u64), (u64, Vec<String>)>,
                      fires: &mut Vec<Fire>,
                      watermark: u64| {
        let mut due: Vec<(u64, u64, String)> = open
            .iter()
            .filter(|(_, (end, _))| *end <= watermark)
            .map(|((key, start), (end, _))| (*end, *start, key.clone()))
            .collect();
        due.sort();
        for (end, start, key) in due {
            let (_, values) = open.remove(&(key.clone(), start)).unwrap();
            fires.push(Fire {
                key,
                start,
                end,
                values,
            });
        }
    };
    for line in lines {
        match line {
            Line::Watermark(watermark) => fire_until(&mut open, &mut fires, *watermark),
            Line::Event {
                key,
                value,
                timestamp,
            } => {
                let t = *timestamp;
                let start = match gap {
                    None => t - t % size,
                    Some(gap) => {
                        // The key's open session that this event touches.
                        let touching = open
                            .iter()
                            .find(|((k, _), (end, _))| k == key && *end >= t)
                            .map(|((_, start), _)| *start);
                        match touching {
                            Some(start) => {
                                let entry = open.get_mut(&(key.clone(), start)).unwrap();
                                entry.0 = entry.0.max(t + gap);
                                start
                            }
                            None => {
                                open.insert((key.clone(), t), (t + gap, Vec::new()));
                                t
                            }
                        }
                    }
                };
                let end = start + gap.unwrap_or(size);
                let entry = open
                    .entry((key.clone(), start))
                    .or_insert_with(|| (end, Vec::new()));
                entry.1.push(value.clone());
                let decision = rule(&entry.1);
                // The native fires the event's watermark brings come
                // before the trigger's answer about it.
                fire_until(&mut open, &mut fires, t);
                let Some((end, values)) = open.get(&(key.clone(), start)).cloned() else {
                    continue;
                };
                let fire = Fire {
                    key: key.clone(),
                    start,
                    end,
                    values,
                };
                match decision {
                    Decide::Continue => {}
                    Decide::Fire => fires.push(fire),
                    Decide::FireAndPurge => {
                        open.remove(&(key.clone(), start));
                        fires.push(fire);
                    }
                }
            }
        }
    }
    if at_input_end {
        fire_until(&mut open, &mut fires, u64::MAX);
    }
    fires
}

/// A reference of keyed event-time sliding windows of `size` starting
/// every `slide` (no out-of-orderness, no lateness, events in time order):
/// an event joins every window that covers it, and `rule` decides per
/// window it joined, in the order of their starts (tumbling windows are
/// `slide == size`). Native fires as in [`reference`].
fn reference_sliding(
    lines: &[Line],
    size: u64,
    slide: u64,
    rule: &dyn Fn(&[String]) -> Decide,
    at_input_end: bool,
) -> Vec<Fire> {
    // (key, start) -> values; every window's end is start + size.
    let mut open: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
    let mut fires = Vec::new();
    let fire_until =
        |open: &mut BTreeMap<(String, u64), Vec<String>>, fires: &mut Vec<Fire>, watermark: u64| {
            let mut due: Vec<(u64, u64, String)> = open
                .keys()
                .filter(|(_, start)| start + size <= watermark)
                .map(|(key, start)| (start + size, *start, key.clone()))
                .collect();
            due.sort();
            for (end, start, key) in due {
                let values = open.remove(&(key.clone(), start)).unwrap();
                fires.push(Fire {
                    key,
                    start,
                    end,
                    values,
                });
            }
        };
    for line in lines {
        match line {
            Line::Watermark(watermark) => fire_until(&mut open, &mut fires, *watermark),
            Line::Event {
                key,
                value,
                timestamp,
            } => {
                let t = *timestamp;
                let last = t - t % slide;
                let starts: Vec<u64> = (0..=last / slide)
                    .map(|i| i * slide)
                    .filter(|start| start + size > t)
                    .collect();
                let mut decisions = Vec::new();
                for start in &starts {
                    let values = open.entry((key.clone(), *start)).or_default();
                    values.push(value.clone());
                    decisions.push(rule(values));
                }
                fire_until(&mut open, &mut fires, t);
                for (start, decision) in starts.into_iter().zip(decisions) {
                    let Some(values) = open.get(&(key.clone(), start)).cloned() else {
                        continue;
                    };
                    let fire = Fire {
                        key: key.clone(),
                        start,
                        end: start + size,
                        values,
                    };
                    match decision {
                        Decide::Continue => {}
                        Decide::Fire => fires.push(fire),
                        Decide::FireAndPurge => {
                            open.remove(&(key.clone(), start));
                            fires.push(fire);
                        }
                    }
                }
            }
        }
    }
    if at_input_end {
        fire_until(&mut open, &mut fires, u64::MAX);
    }
    fires
}

fn window_step(window: Value, trigger: &str, config: Value) -> Value {
    let mut window = window;
    window["trigger"] = json!({ "module": harness::guest(trigger), "config": config });
    window
}

fn session(gap: u64) -> Value {
    json!({ "type": "window", "name": "w", "window": "session", "gap_ms": gap,
            "time": "event", "key_by": "key" })
}

/// The name of this file's pipelines.
const NAME: &str = "triggers";

/// Runs `window` + `trigger-report` on `lines` through `plumber test`
/// and checks the output against `expected` (per key, in order).
fn check_with_plumber_test(window: Value, lines: &[Line], expected: &[Fire]) {
    windows::check(NAME, vec![window, report()], lines, expected);
}

/// `every`: fire each time the window's count reaches a multiple.
fn early(every: usize) -> impl Fn(&[String]) -> Decide {
    move |values| {
        if values.len() % every == 0 {
            Decide::Fire
        } else {
            Decide::Continue
        }
    }
}

/// The input of the early-trigger tests: three keys, windows of 1 s
/// holding ~33 events of each key, watermark lines between some of them
/// and a last one past every window.
fn early_input() -> Vec<Line> {
    let mut lines = numbered(1000, 3, 10);
    lines.insert(400, Line::Watermark(3500));
    lines.insert(700, Line::Watermark(6000));
    lines.push(Line::Watermark(20_000));
    lines
}

#[test]
fn early_trigger_fires_every_n_events_and_at_the_watermark() {
    let lines = early_input();
    let expected = reference(&lines, 1000, None, &early(10), true);
    // Early fires happened (33 or 34 events per key and window).
    assert!(expected.iter().filter(|f| f.values.len() == 10).count() > 20);
    check_with_plumber_test(
        window_step(tumbling(1000), "trigger-early", json!({ "every": 10 })),
        &lines,
        &expected,
    );
}

#[test]
fn early_trigger_through_its_timer_and_state_gives_the_same_fires() {
    // `"at_end": "timer"`: the native fire at the end is off; the trigger
    // asks once per window (remembered in the window's trigger state) for
    // an event-time timer at the end and fires from `on-timer`.
    let lines = early_input();
    let expected = reference(&lines, 1000, None, &early(10), true);
    check_with_plumber_test(
        window_step(
            tumbling(1000),
            "trigger-early",
            json!({ "every": 10, "at_end": "timer" }),
        ),
        &lines,
        &expected,
    );
}

#[test]
fn without_its_timer_a_trigger_that_turned_the_end_fire_off_fires_only_early() {
    // The timer-mode trigger keeps the native fire off; with no watermark
    // past the windows, their timers never come due and the end of the
    // input releases nothing: only the early fires come out.
    // Windows ending by 2000 have their timers come due (events at 2000+),
    // the last one's never does.
    let lines = numbered(300, 3, 10);
    let expected = reference(&lines, 1000, None, &early(10), false);
    assert!(expected
        .iter()
        .any(|f| f.end == 2000 && f.values.len() % 10 != 0));
    assert!(expected
        .iter()
        .all(|f| f.end < 3000 || f.values.len() % 10 == 0));
    check_with_plumber_test(
        window_step(
            tumbling(1000),
            "trigger-early",
            json!({ "every": 10, "at_end": "timer" }),
        ),
        &lines,
        &expected,
    );
}

#[test]
fn threshold_trigger_fires_when_a_field_exceeds_the_threshold() {
    // Amounts cycle through 0..=120; above 100 fires the window so far.
    let mut lines: Vec<Line> = (0..600u64)
        .map(|i| {
            let amount = (i * 37) % 121;
            event(
                &format!("k{}", i % 4),
                json!({ "amount": amount, "i": i }).to_string(),
                i * 7,
            )
        })
        .collect();
    lines.insert(300, Line::Watermark(2100));
    let rule = |values: &[String]| {
        let last: Value = serde_json::from_str(values.last().unwrap()).unwrap();
        if last["amount"].as_f64().unwrap() > 100.0 {
            Decide::Fire
        } else {
            Decide::Continue
        }
    };
    let expected = reference(&lines, 500, None, &rule, true);
    assert!(expected.len() > per_key(&expected).len() * 5);
    check_with_plumber_test(
        window_step(
            tumbling(500),
            "trigger-threshold",
            json!({ "field": "amount", "threshold": 100 }),
        ),
        &lines,
        &expected,
    );
}

#[test]
fn session_end_trigger_closes_a_session_on_its_end_event() {
    // Per key, bursts of events 10 ms apart; some bursts end with "end"
    // (the session closes at once and the next event starts a new one),
    // others close after the 100 ms gap.
    let mut lines = Vec::new();
    let mut t = 0;
    for burst in 0..40u64 {
        for i in 0..(3 + burst % 5) {
            let key = format!("u{}", (burst + i) % 3);
            lines.push(event(&key, format!("b{burst}-{i}"), t));
            t += 10;
        }
        if burst % 3 == 0 {
            lines.push(event(&format!("u{}", burst % 3), "end", t));
            t += 10;
        }
        if burst % 4 == 0 {
            t += 150;
        }
        if burst == 20 {
            lines.push(Line::Watermark(t));
        }
    }
    let rule = |values: &[String]| {
        if values.last().map(String::as_str) == Some("end") {
            Decide::FireAndPurge
        } else {
            Decide::Continue
        }
    };
    let expected = reference(&lines, 0, Some(100), &rule, true);
    assert!(expected.iter().any(|f| f.values.last().unwrap() == "end"));
    assert!(expected.iter().any(|f| f.values.last().unwrap() != "end"));
    check_with_plumber_test(
        window_step(session(100), "trigger-session-end", json!({})),
        &lines,
        &expected,
    );
}

/// A `plumber run` pipeline reading `lines` (JSON events) through `window`
/// and `trigger-report` to a file, exactly once on sled.
fn run_config(dir: &Dir, window: Value, lines: &[Line]) -> (PathBuf, PathBuf) {
    windows::run_config(dir, NAME, vec![window, report()], lines)
}

#[test]
fn plumber_run_fires_as_the_reference() {
    let lines = numbered(2000, 5, 5);
    let expected = reference(&lines, 1000, None, &early(7), true);
    let dir = Dir::new();
    let (config, out) = run_config(
        &dir,
        window_step(tumbling(1000), "trigger-early", json!({ "every": 7 })),
        &lines,
    );
    windows::run_to_end(&config);
    assert_eq!(output_per_key(&out), per_key(&expected));
}

/// SIGKILLs `plumber run` of `window` + `trigger-report` several times
/// mid-stream: every fire the trigger decided comes out exactly once, as
/// in the reference.
fn exact_under_sigkill(window: Value, lines: &[Line], expected: &[Fire], seed: u64) {
    windows::exact_under_sigkill(NAME, vec![window, report()], lines, expected, seed);
}

#[test]
fn early_fires_are_exact_under_sigkill() {
    let lines = numbered(12_000, 7, 2);
    let expected = reference(&lines, 1000, None, &early(9), true);
    exact_under_sigkill(
        window_step(tumbling(1000), "trigger-early", json!({ "every": 9 })),
        &lines,
        &expected,
        7,
    );
}

#[test]
fn early_fires_through_timers_are_exact_under_sigkill() {
    // The timers and the trigger state are checkpointed with the windows.
    // (The last windows' timers never come due: the native fire is off,
    // so they release nothing at the end of the input.)
    let lines = numbered(12_000, 7, 2);
    let expected = reference(&lines, 1000, None, &early(9), false);
    exact_under_sigkill(
        window_step(
            tumbling(1000),
            "trigger-early",
            json!({ "every": 9, "at_end": "timer" }),
        ),
        &lines,
        &expected,
        11,
    );
}

#[test]
fn session_ends_are_exact_under_sigkill() {
    let mut lines = Vec::new();
    let mut t = 0;
    for i in 0..12_000u64 {
        let key = format!("u{}", i % 11);
        let value = if i % 13 == 0 {
            "end".to_owned()
        } else {
            i.to_string()
        };
        lines.push(event(&key, value, t));
        t += if i % 50 == 0 { 200 } else { 3 };
    }
    let rule = |values: &[String]| {
        if values.last().map(String::as_str) == Some("end") {
            Decide::FireAndPurge
        } else {
            Decide::Continue
        }
    };
    let expected = reference(&lines, 0, Some(100), &rule, true);
    exact_under_sigkill(
        window_step(session(100), "trigger-session-end", json!({})),
        &lines,
        &expected,
        23,
    );
}

fn refused(window: Value) -> String {
    windows::refused(NAME, vec![window, report()])
}

#[test]
fn a_bad_trigger_is_refused_at_start() {
    // Not a trigger component: a pipe.
    let stderr = refused(window_step(tumbling(1000), "trigger-report", json!({})));
    assert!(stderr.contains("w/trigger"), "{stderr}");
    assert!(stderr.contains("trigger world"), "{stderr}");
    // A missing file.
    let mut window = tumbling(1000);
    window["trigger"] = json!({ "module": "/no/such/trigger.wasm" });
    let stderr = refused(window);
    assert!(stderr.contains("/no/such/trigger.wasm"), "{stderr}");
    // A config its init refuses.
    let stderr = refused(window_step(
        tumbling(1000),
        "trigger-early",
        json!({ "every": 0 }),
    ));
    assert!(stderr.contains("`every` must be at least 1"), "{stderr}");
    // An unknown field of the section, with its path.
    let mut window = window_step(tumbling(1000), "trigger-early", json!({}));
    window["trigger"]["modul"] = json!("x.wasm");
    let stderr = refused(window);
    assert!(stderr.contains("pipeline[0].trigger.modul"), "{stderr}");
    // A window kind without time.
    let count = json!({ "type": "window", "name": "w", "window": "count", "events": 3,
                        "trigger": { "module": "x.wasm" } });
    let stderr = refused(count);
    assert!(stderr.contains("pipeline[0].trigger"), "{stderr}");
    assert!(stderr.contains("tumbling, sliding and session"), "{stderr}");
}

#[test]
fn a_trigger_that_fails_on_an_event_stops_the_pipeline_naming_window_and_event() {
    let window = window_step(
        tumbling(1000),
        "trigger-threshold",
        json!({ "field": "amount", "threshold": 1 }),
    );
    let lines = vec![
        event("k", json!({ "amount": 0 }).to_string(), 5),
        event("bad-key", "not json", 17),
    ];
    let stderr = windows::failing(NAME, vec![window, report()], &lines);
    assert!(stderr.contains("window `w`"), "{stderr}");
    assert!(stderr.contains("bad-key"), "{stderr}");
    assert!(stderr.contains("17"), "{stderr}");
    assert!(stderr.contains("has no numeric `amount`"), "{stderr}");
}

/// `examples/guests/trigger-early-py` built by its `build.sh`
/// (componentize-py) into `dir`.
fn python_trigger_early(dir: &Dir) -> PathBuf {
    windows::build_python_guest(dir, "trigger-early-py", "trigger_early_py.wasm", "trigger")
}

#[test]
fn the_python_early_trigger_fires_as_the_reference_in_both_modes() {
    let build = Dir::new();
    let module = python_trigger_early(&build);
    let lines = early_input();
    let expected = reference(&lines, 1000, None, &early(10), true);
    for at_end in ["native", "timer"] {
        let mut window = tumbling(1000);
        window["trigger"] =
            json!({ "module": module, "config": { "every": 10, "at_end": at_end } });
        check_with_plumber_test(window, &lines, &expected);
    }
}

#[test]
fn the_sliding_reference_of_tumbling_windows_is_the_tumbling_one() {
    // The sliding reference with slide == size is the tumbling reference:
    // a check of the reference itself.
    let lines = early_input();
    assert_eq!(
        reference_sliding(&lines, 1000, 1000, &early(10), true),
        reference(&lines, 1000, None, &early(10), true)
    );
}

#[test]
fn sliding_windows_fire_early_and_at_the_watermark() {
    // Windows of 1 s every 250 ms: each event is in four windows, each
    // asked about and fired early on its own count.
    let lines = early_input();
    let expected = reference_sliding(&lines, 1000, 250, &early(10), true);
    assert!(expected.iter().filter(|f| f.values.len() == 10).count() > 80);
    assert!(expected.iter().any(|f| f.start % 1000 == 250));
    for at_end in ["native", "timer"] {
        check_with_plumber_test(
            window_step(
                sliding(1000, 250),
                "trigger-early",
                json!({ "every": 10, "at_end": at_end }),
            ),
            &lines,
            &expected,
        );
    }
}

#[test]
fn sliding_windows_with_a_trigger_are_exact_under_sigkill() {
    let lines = numbered(8000, 5, 2);
    let expected = reference_sliding(&lines, 1000, 500, &early(7), true);
    exact_under_sigkill(
        window_step(sliding(1000, 500), "trigger-early", json!({ "every": 7 })),
        &lines,
        &expected,
        31,
    );
}

fn processing_tumbling(size: u64) -> Value {
    json!({ "type": "window", "name": "w", "window": "tumbling", "size_ms": size,
            "time": "processing", "key_by": "key" })
}

/// Input for processing-time windows under `plumber test`: a watermark
/// line every 70 events sets processing time 250 ms further; each event
/// carries the processing time it counts at as its timestamp, so that the
/// event-time reference describes the processing-time window.
fn processing_input(events: u64) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut now = 0;
    for i in 0..events {
        if i % 70 == 0 && i > 0 {
            now += 250;
            lines.push(Line::Watermark(now));
        }
        lines.push(event(&format!("k{}", i % 3), i.to_string(), now));
    }
    lines
}

#[test]
fn processing_time_windows_fire_early_and_at_their_end_under_controlled_time() {
    let lines = processing_input(1050);
    let expected = reference(&lines, 1000, None, &early(10), true);
    assert!(expected.iter().filter(|f| f.values.len() % 10 == 0).count() > 50);
    assert!(expected.iter().any(|f| f.values.len() % 10 != 0));
    check_with_plumber_test(
        window_step(
            processing_tumbling(1000),
            "trigger-early",
            json!({ "every": 10 }),
        ),
        &lines,
        &expected,
    );
}

#[test]
fn processing_time_timers_fire_the_window_under_controlled_time() {
    // `"at_end": "processing_timer"`: the native fire is off and each
    // window asks for a processing-time timer at its end. The watermark
    // lines move processing time; the last one (3500) passes the ends of
    // the first three windows only: the fourth's timer never comes due,
    // and the end of the input releases nothing.
    let lines = processing_input(1050);
    let expected = reference(&lines, 1000, None, &early(10), false);
    assert!(expected
        .iter()
        .any(|f| f.end == 3000 && f.values.len() % 10 != 0));
    assert!(expected
        .iter()
        .all(|f| f.end < 4000 || f.values.len() % 10 == 0));
    check_with_plumber_test(
        window_step(
            processing_tumbling(1000),
            "trigger-early",
            json!({ "every": 10, "at_end": "processing_timer" }),
        ),
        &lines,
        &expected,
    );
}

/// A `plumber run` of `window` + `trigger-report` tailing `events` (a
/// file source with `follow_ms`: it never ends, and goes quiet after the
/// events): waits until the fires hold `events.len()` events in all (at
/// most 30 s), then SIGKILLs it and returns the fires per key.
fn run_on_a_quiet_source(window: Value, events: &[Line]) -> BTreeMap<String, Vec<String>> {
    let dir = Dir::new();
    let input = dir.write("in.jsonl", &input_jsonl(events));
    let out = dir.path("out.txt");
    let config = dir.config(
        "run.json",
        &json!({
            "name": "quiet",
            "delivery": "exactly_once",
            "state": { "type": "sled", "path": dir.path("state") },
            "checkpoint": { "interval_ms": 25 },
            "from": { "type": "file", "path": input, "format": "json", "follow_ms": 50 },
            "pipeline": [window, report()],
            "to": { "type": "file", "path": out }
        }),
    );
    let released = |out: &Path| -> usize {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        text.lines()
            .map(|line| line.split(',').nth(3).unwrap().parse::<usize>().unwrap())
            .sum()
    };
    let mut child = harness::kills::plumber_run(&config).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while released(&out) < events.len()
        && std::time::Instant::now() < deadline
        && child.try_wait().unwrap().is_none()
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A little longer: nothing more may come.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        running,
        "plumber run ended: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        released(&out),
        events.len(),
        "fires: {:?}\n{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        String::from_utf8_lossy(&output.stderr)
    );
    output_per_key(&out)
}

#[test]
fn a_processing_time_timer_fires_on_a_quiet_source_with_plumber_run() {
    // The native fire is off: only the trigger's processing-time timer at
    // each window's end, on the real clock, can release the events, long
    // after the last one came.
    let events = numbered(30, 3, 1);
    let per_key = run_on_a_quiet_source(
        window_step(
            processing_tumbling(400),
            "trigger-early",
            json!({ "every": 1000, "at_end": "processing_timer" }),
        ),
        &events,
    );
    assert_eq!(per_key.len(), 3, "{per_key:?}");
    for (key, fires) in per_key {
        let mut total = 0;
        for fire in &fires {
            let fields: Vec<&str> = fire.split(',').collect();
            let (start, end): (u64, u64) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
            assert_eq!(end - start, 400, "{fire}");
            assert_eq!(start % 400, 0, "{fire}");
            total += fields[3].parse::<usize>().unwrap();
        }
        assert_eq!(total, 10, "{key}: {fires:?}");
    }
}

#[test]
fn the_idle_watermark_runs_an_event_time_timer_on_a_quiet_source() {
    // Event time, `idle_timeout_ms` 300: the events (at 0..290 ms) leave
    // the watermark at 290 and the source goes quiet; the idle watermark
    // then advances with processing time and reaches 1000, where each
    // window's event-time timer fires it (the native fire is off).
    let events = numbered(30, 3, 10);
    let mut window = window_step(
        tumbling(1000),
        "trigger-early",
        json!({ "every": 1000, "at_end": "timer" }),
    );
    window["idle_timeout_ms"] = json!(300);
    let per_key = run_on_a_quiet_source(window, &events);
    let expected = reference(&events, 1000, None, &early(1000), true);
    assert_eq!(per_key, self::per_key(&expected));
}

/// The values on which `trigger-faulty` misbehaves, by the start of a value.
const FAULTS: [&str; 7] = ["trap", "spin", "grow", "error", "past", "big", "short"];

/// `trigger-faulty` with `config`, limits tight enough for its faults to
/// hit them fast, and `on_error`.
fn faulty_window(window: Value, config: Value, on_error: &str) -> Value {
    let mut window = window;
    window["trigger"] = json!({
        "module": harness::guest("trigger-faulty"),
        "config": config,
        "limits": { "call_timeout_ms": 300, "memory_bytes": 33554432, "max_value_bytes": 1024 },
        "on_error": on_error
    });
    window
}

/// `trigger-faulty`'s rule with `faults`: fire every `every` events, and
/// a call about a fault value is taken as `continue` (`on_error: skip`).
fn faulty_rule(every: usize) -> impl Fn(&[String]) -> Decide {
    move |values| {
        let last = values.last().unwrap();
        if FAULTS.iter().any(|fault| last.starts_with(fault)) {
            Decide::Continue
        } else {
            early(every)(values)
        }
    }
}

/// `numbered(n, 3, 10)` with the value of event `at[i]` replaced by
/// `FAULTS[i]` and its index.
fn with_faults(n: u64, at: &[u64]) -> Vec<Line> {
    let mut lines = numbered(n, 3, 10);
    for (fault, index) in FAULTS.iter().zip(at) {
        if let Line::Event { value, .. } = &mut lines[*index as usize] {
            *value = format!("{fault}-{index}");
        }
    }
    lines
}

#[test]
fn a_failing_trigger_stops_the_pipeline_naming_window_module_and_event() {
    // Each fault on its own, on an event that is not the first of its
    // call (k2's, asked with k1's and k0's): the error names that event.
    for (fault, expected) in [
        ("trap", "trapped"),
        ("spin", "went past its time limit"),
        ("grow", "went past its memory limit"),
        ("error", "returned an error: asked to fail"),
        (
            "past",
            "asked for a timer in the past: event time 0, not after 1190",
        ),
        (
            "big",
            "answered a trigger state of 2048 bytes, more than its limits.max_value_bytes (1024)",
        ),
        ("short", "answered 0 times for 1 calls"),
    ] {
        let dir = Dir::new();
        let window = faulty_window(tumbling(1000), json!({}), "fail");
        let config = dir.test_config(NAME, vec![window, report()]);
        let mut lines = numbered(150, 3, 10);
        lines[119] = event("k2", format!("{fault}-119"), 1190);
        let input = dir.write("in.jsonl", &input_jsonl(&lines));
        let expect = dir.write("expect.jsonl", "");
        let output = windows::plumber_test(&config, &input, &expect, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{fault}: {stderr}");
        for part in [
            "window `w`",
            "trigger_faulty.wasm",
            expected,
            "key Some(\"k2\") and timestamp Some(1190) in window [1000, 2000)",
        ] {
            assert!(stderr.contains(part), "{fault}: no {part:?} in {stderr}");
        }
    }
}

#[test]
fn a_failing_trigger_under_skip_is_created_again_and_the_rest_fires_as_the_reference() {
    // Every fault once (the trap, the time and memory limits leave the
    // instance unusable: it is created again); the calls that failed count
    // as `continue`, every other call is answered as usual.
    let mut lines = with_faults(600, &[100, 170, 250, 320, 401, 460, 530]);
    lines.insert(300, Line::Watermark(2500));
    lines.push(Line::Watermark(10_000));
    let expected = reference(&lines, 1000, None, &faulty_rule(5), true);
    assert!(expected.iter().filter(|f| f.values.len() % 5 == 0).count() > 80);
    let dir = Dir::new();
    let window = faulty_window(tumbling(1000), json!({ "every": 5 }), "skip");
    let config = dir.test_config(NAME, vec![window, report()]);
    let input = dir.write("in.jsonl", &input_jsonl(&lines));
    let expect: String = expected
        .iter()
        .map(|fire| fire.expected_event().to_string() + "\n")
        .collect();
    let expect = dir.write("expect.jsonl", &expect);
    let output = windows::plumber_test(&config, &input, &expect, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("trigger call skipped").count(),
        FAULTS.len(),
        "{stderr}"
    );
}

#[test]
fn after_a_trigger_trap_stopped_plumber_run_a_restart_gives_the_exact_output() {
    // The trigger traps on one event mid-stream (on_error: fail): the run
    // stops with nothing after its last checkpoint committed. The trigger
    // fixed (`faults: false`), a restart from that checkpoint gives every
    // fire exactly once.
    let mut lines = numbered(6000, 5, 2);
    if let Line::Event { value, .. } = &mut lines[3100] {
        *value = "trap-3100".to_owned();
    }
    let expected = reference(&lines, 1000, None, &early(7), true);
    let dir = Dir::new();
    let (config, out) = run_config(
        &dir,
        faulty_window(tumbling(1000), json!({ "every": 7 }), "fail"),
        &lines,
    );
    // A checkpoint every 500 events, whatever the speed: some are
    // committed before the trap.
    let mut run: Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    run["checkpoint"]["every_events"] = json!(500);
    let config = dir.config("run.json", &run);
    let output = harness::kills::plumber_run(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("trapped"), "{stderr}");
    assert!(stderr.contains("timestamp Some(6200)"), "{stderr}");
    let before = output_per_key(&out);
    assert!(!before.is_empty(), "nothing was committed before the trap");
    let (config, out) = run_config(
        &dir,
        faulty_window(
            tumbling(1000),
            json!({ "every": 7, "faults": false }),
            "fail",
        ),
        &lines,
    );
    windows::run_to_end(&config);
    assert_eq!(output_per_key(&out), per_key(&expected));
}

#[test]
fn skipped_trigger_failures_are_exact_under_sigkill() {
    // Faults that leave the instance unusable (traps) or answer nonsense,
    // many times, SIGKILLs between: each fire comes out exactly once.
    let mut lines = numbered(9000, 7, 2);
    for (i, line) in lines.iter_mut().enumerate() {
        if let Line::Event { value, .. } = line {
            if i % 97 == 5 {
                *value = format!("{}-{i}", ["trap", "error", "past", "big", "short"][i % 5]);
            }
        }
    }
    let expected = reference(&lines, 1000, None, &faulty_rule(9), true);
    exact_under_sigkill(
        faulty_window(tumbling(1000), json!({ "every": 9 }), "skip"),
        &lines,
        &expected,
        41,
    );
}
