//! Window tests on tokio's paused clock: time moves only when the test
//! sleeps (or every task waits on a timer), so every bound is exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::sleep;

use super::*;
use crate::checkpoint::{CheckpointPolicy, Position};
use crate::pipeline::{Pipeline, PipelineBuilder, PipelineError, RunReport};
use crate::state::{MemoryState, Namespace, SharedState, WriteSet};
use crate::streams::{batch_channel_sink, channel_sink, channel_source, ArraySource};
use crate::{ErrorChain, Event};

type Released = Vec<(u64, u64, Option<String>, Vec<String>)>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A batch as (start, end, key, values).
fn describe(batch: &Batch) -> (u64, u64, Option<String>, Vec<String>) {
    let info = batch.window.as_ref().expect("window info");
    (
        info.start,
        info.end,
        info.key.as_deref().map(text),
        batch.events.iter().map(|e| text(&e.value)).collect(),
    )
}

fn at(value: &str, timestamp: u64) -> Event {
    Event::new(value).with_timestamp(timestamp)
}

fn values(list: &[&str]) -> Vec<String> {
    list.iter().map(|v| (*v).to_owned()).collect()
}

/// A pipeline: channel source -> window -> batch channel sink, checkpoint at end only.
struct Harness {
    input: mpsc::Sender<Event>,
    output: mpsc::Receiver<Batch>,
    running: tokio::task::JoinHandle<Result<RunReport, PipelineError>>,
}

impl Harness {
    fn start(window: Window) -> Self {
        Harness::start_with(window, Arc::new(MemoryState::new()), |b| b)
    }

    fn start_with(
        window: Window,
        state: SharedState,
        configure: impl FnOnce(PipelineBuilder) -> PipelineBuilder,
    ) -> Self {
        let (input, source) = channel_source(64);
        let (sink, output) = batch_channel_sink(64);
        let builder = Pipeline::builder("windows")
            .state(state)
            .checkpoint(CheckpointPolicy::at_end_only())
            .batch_size(16)
            .from(source)
            .then(window)
            .to(sink);
        let running = tokio::spawn(configure(builder).run());
        Harness {
            input,
            output,
            running,
        }
    }

    async fn send(&self, event: Event) {
        self.input.send(event).await.expect("pipeline is running");
        // Let the event reach the window before time moves on.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The next released window; fails if none comes within an hour (of
    /// paused time: at once when nothing else is pending).
    async fn next(&mut self) -> (u64, u64, Option<String>, Vec<String>) {
        let batch = tokio::time::timeout(Duration::from_secs(3_600), self.output.recv())
            .await
            .expect("a window released within an hour")
            .expect("a released window");
        describe(&batch)
    }

    fn try_next(&mut self) -> Option<(u64, u64, Option<String>, Vec<String>)> {
        self.output.try_recv().ok().map(|b| describe(&b))
    }

    /// Ends the source and returns what the end released.
    async fn finish(mut self) -> Released {
        drop(self.input);
        let mut rest = Vec::new();
        while let Some(batch) = self.output.recv().await {
            rest.push(describe(&batch));
        }
        self.running.await.expect("join").expect("run");
        rest
    }
}

fn clock() -> WindowClock {
    WindowClock::starting_at(0)
}

#[tokio::test(start_paused = true)]
async fn count_window_releases_every_n_and_the_rest_at_the_end() {
    let mut h = Harness::start(Window::count("w", 3).clock(clock()));
    for v in ["a", "b", "c", "d", "e", "f", "g"] {
        h.send(Event::new(v)).await;
    }
    assert_eq!(h.next().await, (0, 1, None, values(&["a", "b", "c"])));
    assert_eq!(h.next().await, (0, 1, None, values(&["d", "e", "f"])));
    assert_eq!(h.finish().await, vec![(0, 1, None, values(&["g"]))]);
}

#[tokio::test(start_paused = true)]
async fn keyed_count_window_fires_per_key() {
    let mut h = Harness::start(Window::count("w", 2).keyed().clock(clock()));
    for (v, k) in [("1", "a"), ("2", "b"), ("3", "a"), ("4", "b"), ("5", "a")] {
        h.send(Event::new(v).with_key(k)).await;
    }
    assert_eq!(
        h.next().await,
        (0, 1, Some("a".into()), values(&["1", "3"]))
    );
    assert_eq!(
        h.next().await,
        (0, 1, Some("b".into()), values(&["2", "4"]))
    );
    assert_eq!(
        h.finish().await,
        vec![(0, 1, Some("a".into()), values(&["5"]))]
    );
}

#[tokio::test(start_paused = true)]
async fn tumbling_processing_time_fires_at_the_end_of_each_window() {
    let mut h = Harness::start(Window::tumbling("w", Duration::from_secs(10)).clock(clock()));
    sleep(Duration::from_secs(1)).await;
    h.send(Event::new("a")).await;
    sleep(Duration::from_secs(3)).await;
    h.send(Event::new("b")).await;
    // Nothing before the window's end...
    sleep(Duration::from_millis(5_990)).await;
    assert_eq!(h.try_next(), None);
    // ...and the window at its end, without another event to push it.
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a", "b"])));
    assert_eq!(tokio::time::Instant::now().elapsed(), Duration::ZERO);
    // An empty window emits nothing: the next batch is the third window's.
    sleep(Duration::from_secs(15)).await;
    h.send(Event::new("c")).await;
    assert_eq!(h.next().await, (20_000, 30_000, None, values(&["c"])));
    assert_eq!(h.finish().await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn sliding_processing_time_puts_an_event_in_every_window_that_covers_it() {
    let mut h = Harness::start(
        Window::sliding("w", Duration::from_secs(10), Duration::from_secs(5)).clock(clock()),
    );
    sleep(Duration::from_secs(1)).await;
    h.send(Event::new("a")).await;
    sleep(Duration::from_secs(6)).await;
    h.send(Event::new("b")).await;
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a", "b"])));
    assert_eq!(h.next().await, (5_000, 15_000, None, values(&["b"])));
    assert_eq!(h.finish().await, vec![]);
}

fn event_time(out_of_orderness: u64, lateness: u64) -> EventTime {
    EventTime {
        max_out_of_orderness_ms: out_of_orderness,
        allowed_lateness_ms: lateness,
        idle_timeout_ms: None,
    }
}

#[tokio::test(start_paused = true)]
async fn event_time_tumbling_with_out_of_order_and_late_events() {
    let window = Window::tumbling("w", Duration::from_secs(10))
        .event_time(event_time(2_000, 5_000))
        .clock(clock());
    let handle = window.handle();
    let mut h = Harness::start(window);
    h.send(at("a", 1_000)).await;
    h.send(at("b", 9_500)).await; // out of order relative to nothing yet
    h.send(at("c", 12_000)).await; // watermark 10 000: [0, 10 000) fires
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a", "b"])));
    h.send(at("d", 3_000)).await; // late, within the allowed lateness: fires again, whole
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a", "b", "d"])));
    h.send(at("e", 19_000)).await; // watermark 17 000: [0, 10 000) is closed for good
    h.send(at("f", 4_000)).await; // too late: dropped and counted
    assert_eq!(h.try_next(), None);
    h.send(at("g", 11_000)).await; // out of order but its window is open
    assert_eq!(handle.late_dropped(), 1);
    assert_eq!(
        h.finish().await,
        vec![(10_000, 20_000, None, values(&["c", "e", "g"]))]
    );
}

#[tokio::test(start_paused = true)]
async fn event_time_sliding_windows() {
    let window = Window::sliding("w", Duration::from_secs(10), Duration::from_secs(5))
        .event_time(event_time(0, 0))
        .clock(clock());
    let mut h = Harness::start(window);
    h.send(at("a", 6_000)).await;
    h.send(at("b", 11_000)).await; // watermark 11 000: [0, 10 000) fires
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a"])));
    h.send(at("c", 16_000)).await; // [5 000, 15 000) fires
    assert_eq!(h.next().await, (5_000, 15_000, None, values(&["a", "b"])));
    assert_eq!(
        h.finish().await,
        vec![
            (10_000, 20_000, None, values(&["b", "c"])),
            (15_000, 25_000, None, values(&["c"]))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_source_does_not_hold_event_time_windows_open() {
    let window = Window::tumbling("w", Duration::from_secs(10))
        .event_time(EventTime {
            max_out_of_orderness_ms: 1_000,
            allowed_lateness_ms: 0,
            idle_timeout_ms: Some(2_000),
        })
        .clock(clock());
    let mut h = Harness::start(window);
    h.send(at("a", 5_000)).await; // watermark 4 000
                                  // No more events: after the idle timeout the watermark moves with
                                  // processing time, and reaches 10 000 six seconds after the last event.
    let started = tokio::time::Instant::now();
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a"])));
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    assert_eq!(h.finish().await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn session_window_closes_after_the_gap() {
    let mut h = Harness::start(
        Window::session("w", Duration::from_secs(5))
            .keyed()
            .clock(clock()),
    );
    h.send(Event::new("1").with_key("a")).await;
    sleep(Duration::from_secs(2)).await;
    h.send(Event::new("2").with_key("a")).await;
    h.send(Event::new("x").with_key("b")).await;
    sleep(Duration::from_secs(2)).await;
    h.send(Event::new("3").with_key("a")).await;
    // b's session ends at 2 000 + 5 000, a's at 4 000 + 5 000.
    assert_eq!(
        h.next().await,
        (2_000, 7_000, Some("b".into()), values(&["x"]))
    );
    assert_eq!(
        h.next().await,
        (0, 9_000, Some("a".into()), values(&["1", "2", "3"]))
    );
    sleep(Duration::from_secs(20)).await;
    h.send(Event::new("4").with_key("a")).await;
    assert_eq!(
        h.finish().await,
        vec![(29_000, 34_000, Some("a".into()), values(&["4"]))]
    );
}

#[tokio::test(start_paused = true)]
async fn event_time_sessions_merge_when_an_event_bridges_them() {
    let window = Window::session("w", Duration::from_secs(5))
        .event_time(event_time(0, 0))
        .clock(clock());
    let mut h = Harness::start(window);
    h.send(at("a", 1_000)).await;
    h.send(at("c", 8_000)).await; // a's session [1 000, 6 000) is still open: watermark 8 000 > 6 000 closes it
    assert_eq!(h.next().await, (1_000, 6_000, None, values(&["a"])));
    h.send(at("d", 9_000)).await;
    h.send(at("b", 6_000)).await; // joins [8 000, 14 000): starts it earlier
    assert_eq!(
        h.finish().await,
        vec![(6_000, 14_000, None, values(&["b", "c", "d"]))]
    );
}

#[tokio::test(start_paused = true)]
async fn signal_window_released_by_a_control_event_header_or_key() {
    let mut h = Harness::start(
        Window::signal("w")
            .on_header("flush")
            .on_key("FLUSH")
            .clock(clock()),
    );
    h.send(Event::new("a")).await;
    h.send(Event::new("b")).await;
    sleep(Duration::from_secs(3)).await;
    let mut control = Event::new("ignored");
    control.headers.push(("flush".into(), "1".into()));
    h.send(control).await;
    assert_eq!(h.next().await, (0, 3_000, None, values(&["a", "b"])));
    h.send(Event::new("c")).await;
    h.send(Event::new("").with_key("FLUSH")).await;
    assert_eq!(h.next().await, (3_000, 3_000, None, values(&["c"])));
    assert_eq!(h.finish().await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn signal_window_released_by_its_handle() {
    let window = Window::signal("w").keyed().clock(clock());
    let handle = window.handle();
    let mut h = Harness::start(window);
    h.send(Event::new("1").with_key("b")).await;
    h.send(Event::new("2").with_key("a")).await;
    sleep(Duration::from_secs(1)).await;
    handle.trigger();
    // Both keys' buffers opened at 0 and were released at 1 000, in key order.
    assert_eq!(h.next().await, (0, 1_000, Some("a".into()), values(&["2"])));
    assert_eq!(h.next().await, (0, 1_000, Some("b".into()), values(&["1"])));
    assert_eq!(h.finish().await, vec![]);
}

#[tokio::test]
async fn signal_window_released_by_sigusr1() {
    let mut h = Harness::start(Window::signal("w").on_unix_signal());
    h.send(Event::new("a")).await;
    h.send(Event::new("b")).await;
    // The handler is installed when the window is created, before the
    // source is read: an event through means it is in place.
    let status = std::process::Command::new("kill")
        .args(["-USR1", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let (_, _, _, released) = tokio::time::timeout(Duration::from_secs(10), h.next())
        .await
        .expect("released");
    assert_eq!(released, values(&["a", "b"]));
    h.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_full_buffer_fails_with_the_window_name_or_releases_early() {
    let mut h = Harness::start(
        Window::count("w", 10)
            .max_events(10)
            .max_bytes(5)
            .clock(clock()),
    );
    h.send(Event::new("abc")).await;
    h.send(Event::new("def")).await;
    drop(h.input);
    assert!(h.output.recv().await.is_none());
    let error = h.running.await.unwrap().expect_err("the buffer is full");
    let text = ErrorChain(&error).to_string();
    assert!(
        text.contains("window `w`") || text.contains("step `w`"),
        "{text}"
    );
    assert!(text.contains("max_bytes = 5"), "{text}");

    let mut h = Harness::start(
        Window::tumbling("w", Duration::from_secs(10))
            .max_events(2)
            .on_overflow(Overflow::Release)
            .clock(clock()),
    );
    for v in ["a", "b", "c"] {
        h.send(Event::new(v)).await;
    }
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a", "b"])));
    assert_eq!(h.next().await, (0, 10_000, None, values(&["c"])));
    assert_eq!(h.finish().await, vec![]);
}

#[tokio::test(start_paused = true)]
async fn late_events_can_go_to_the_dead_letter_sink() {
    let (dead, mut dead_out) = channel_sink(16);
    let window = Window::tumbling("w", Duration::from_secs(10))
        .event_time(event_time(0, 0))
        .late(LatePolicy::DeadLetter)
        .clock(clock());
    let handle = window.handle();
    let mut h = Harness::start_with(window, Arc::new(MemoryState::new()), |b| {
        b.dead_letter(dead)
    });
    h.send(at("a", 1_000)).await;
    h.send(at("b", 15_000)).await;
    assert_eq!(h.next().await, (0, 10_000, None, values(&["a"])));
    h.send(at("late", 2_000)).await;
    let letter = dead_out.recv().await.expect("dead letter");
    assert_eq!(letter.value, b"late");
    assert_eq!(letter.timestamp, Some(2_000));
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header(crate::dead_letter::REASON_HEADER).as_deref(),
        Some("late event")
    );
    assert_eq!(
        header(crate::dead_letter::STEP_HEADER).as_deref(),
        Some("w")
    );
    assert_eq!(handle.late_dead_lettered(), 1);
    assert_eq!(
        h.finish().await,
        vec![(10_000, 20_000, None, values(&["b"]))]
    );
}

#[tokio::test]
async fn a_dead_letter_policy_without_a_sink_is_refused() {
    let (sink, _out) = batch_channel_sink(1);
    let error = Pipeline::builder("p")
        .from(ArraySource::from_strings(["a"]))
        .then(Window::count("w", 1).late(LatePolicy::DeadLetter))
        .to(sink)
        .run()
        .await
        .expect_err("no dead-letter sink");
    assert!(
        ErrorChain(&error)
            .to_string()
            .contains("no dead-letter sink"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_restart_continues_a_half_filled_window() {
    let state: SharedState = Arc::new(MemoryState::new());
    // First run: three events of a window of five, then a clean stop.
    {
        let (input, source) = channel_source(8);
        let (sink, mut output) = batch_channel_sink(8);
        let builder = Pipeline::builder("restart")
            .state(state.clone())
            .checkpoint(CheckpointPolicy::at_end_only().and_every_events(1))
            .batch_size(1)
            .from(source)
            .then(Window::count("w", 5).clock(clock()))
            .to(sink);
        let shutdown = builder.handle();
        let running = tokio::spawn(builder.run());
        for v in ["1", "2", "3"] {
            input.send(Event::new(v)).await.unwrap();
        }
        while state
            .last_checkpoint("default/restart")
            .await
            .unwrap()
            .map(|c| c.position)
            != Some(Position::Offset(3))
        {
            sleep(Duration::from_millis(1)).await;
        }
        shutdown.shutdown();
        let report = running.await.unwrap().expect("first run");
        assert_eq!(report.events_out, 0);
        assert!(output.try_recv().is_err(), "nothing released yet");
    }
    // Second run: the buffer comes back; two more events fill the window.
    let (input, source) = channel_source(8);
    let (sink, mut output) = batch_channel_sink(8);
    let running = tokio::spawn(
        Pipeline::builder("restart")
            .state(state.clone())
            .checkpoint(CheckpointPolicy::at_end_only())
            .from(source)
            .then(Window::count("w", 5).clock(clock()))
            .to(sink)
            .run(),
    );
    for v in ["4", "5"] {
        input.send(Event::new(v)).await.unwrap();
    }
    let batch = output.recv().await.expect("the window fills");
    assert_eq!(describe(&batch).3, values(&["1", "2", "3", "4", "5"]));
    drop(input);
    assert!(output.recv().await.is_none(), "nothing else released");
    running.await.unwrap().expect("second run");
}

#[test]
fn bad_settings_name_the_field() {
    let slide = Window::sliding("w", Duration::from_secs(10), Duration::from_secs(20)).validate();
    assert_eq!(slide.as_ref().map_err(|e| e.field), Err("slide_ms"));
    assert!(slide.unwrap_err().message.contains("larger than the size"));
    assert_eq!(
        Window::count("w", 0).validate().map_err(|e| e.field),
        Err("events")
    );
    assert_eq!(
        Window::session("w", Duration::ZERO)
            .validate()
            .map_err(|e| e.field),
        Err("gap_ms")
    );
    assert_eq!(
        Window::count("w", 10)
            .max_events(5)
            .validate()
            .map_err(|e| e.field),
        Err("max_events")
    );
    assert!(Window::tumbling("w", Duration::from_secs(1))
        .validate()
        .is_ok());
}

/// An event of key `key` at `timestamp`, whose value says both (`a@1000`).
fn keyed_at(key: &str, timestamp: u64) -> Event {
    Event::new(format!("{key}@{timestamp}"))
        .with_key(key)
        .with_timestamp(timestamp)
}

/// A keyed event-time session window with no out-of-orderness.
fn session(gap_ms: u64, lateness_ms: u64) -> Window {
    Window::session("w", Duration::from_millis(gap_ms))
        .event_time(event_time(0, lateness_ms))
        .keyed()
        .clock(clock())
}

fn release(
    start: u64,
    end: u64,
    key: &str,
    events: &[&str],
) -> (u64, u64, Option<String>, Vec<String>) {
    (start, end, Some(key.to_owned()), values(events))
}

/// Issue 12, item 4, the sequence of the issue: a session that fired and is
/// retained for lateness, then extended by a merge past the watermark, fires
/// again only once the watermark passes its new end (Flink's rules).
#[tokio::test(start_paused = true)]
async fn a_fired_session_extended_by_a_merge_waits_for_its_new_end() {
    let mut h = Harness::start(session(3_000, 10_000));
    h.send(keyed_at("a", 1_000)).await;
    h.send(keyed_at("b", 4_000)).await; // watermark 4 000
    assert_eq!(h.next().await, release(1_000, 4_000, "a", &["a@1000"]));
    h.send(keyed_at("a", 3_900)).await; // [1 000, 6 900): not complete
    h.send(keyed_at("a", 6_000)).await; // [1 000, 9 000): not complete
    h.send(keyed_at("b", 8_000)).await; // watermark 8 000
    assert_eq!(h.next().await, release(4_000, 7_000, "b", &["b@4000"]));
    h.send(keyed_at("b", 20_000)).await; // watermark 20 000
    assert_eq!(
        h.next().await,
        release(1_000, 9_000, "a", &["a@1000", "a@3900", "a@6000"])
    );
    assert_eq!(h.next().await, release(8_000, 11_000, "b", &["b@8000"]));
    assert_eq!(
        h.finish().await,
        vec![release(20_000, 23_000, "b", &["b@20000"])]
    );
}

/// Issue 12, item 5, the sequence of the issue: an event whose own session
/// would be past its lateness merges into a retained session first, and the
/// merged session (complete, within lateness) fires at once with both events.
#[tokio::test(start_paused = true)]
async fn session_lateness_is_judged_on_the_merged_session() {
    let (dead, mut dead_out) = channel_sink(16);
    let window = session(3_000, 10).late(LatePolicy::DeadLetter);
    let handle = window.handle();
    let mut h = Harness::start_with(window, Arc::new(MemoryState::new()), |b| {
        b.dead_letter(dead)
    });
    h.send(keyed_at("a", 11_600)).await;
    h.send(keyed_at("b", 14_600)).await; // watermark 14 600
    assert_eq!(h.next().await, release(11_600, 14_600, "a", &["a@11600"]));
    h.send(keyed_at("a", 10_000)).await; // own session [10 000, 13 000) is past its lateness
    assert_eq!(
        h.next().await,
        release(10_000, 14_600, "a", &["a@10000", "a@11600"])
    );
    assert_eq!(
        h.finish().await,
        vec![release(14_600, 17_600, "b", &["b@14600"])]
    );
    assert_eq!(handle.late_dead_lettered(), 0);
    assert!(dead_out.try_recv().is_err(), "nothing was dead-lettered");
}

/// A fired session and one that has not fired yet, bridged by a late
/// event: the merged session is not complete, so it waits for its end.
#[tokio::test(start_paused = true)]
async fn a_fired_and_an_unfired_session_merged_fire_at_the_merged_end() {
    let mut h = Harness::start(session(3_000, 10_000));
    h.send(keyed_at("a", 1_000)).await;
    h.send(keyed_at("b", 4_000)).await; // watermark 4 000: a [1 000, 4 000) fires
    assert_eq!(h.next().await, release(1_000, 4_000, "a", &["a@1000"]));
    h.send(keyed_at("a", 5_000)).await; // a second session of a: [5 000, 8 000)
    h.send(keyed_at("a", 3_000)).await; // bridges both: [1 000, 8 000)
    h.send(keyed_at("b", 8_000)).await; // watermark 8 000
    assert_eq!(h.next().await, release(4_000, 7_000, "b", &["b@4000"]));
    assert_eq!(
        h.next().await,
        release(1_000, 8_000, "a", &["a@1000", "a@3000", "a@5000"])
    );
    assert_eq!(
        h.finish().await,
        vec![release(8_000, 11_000, "b", &["b@8000"])]
    );
}

/// A late event that bridges two retained (fired) sessions makes one
/// complete session, which fires at once with everything.
#[tokio::test(start_paused = true)]
async fn a_late_event_bridging_two_retained_sessions_fires_the_merged_one_at_once() {
    let mut h = Harness::start(session(1_000, 10_000));
    h.send(keyed_at("a", 1_000)).await;
    h.send(keyed_at("a", 3_000)).await;
    h.send(keyed_at("b", 5_000)).await; // watermark 5 000: both sessions of a fire
    assert_eq!(h.next().await, release(1_000, 2_000, "a", &["a@1000"]));
    assert_eq!(h.next().await, release(3_000, 4_000, "a", &["a@3000"]));
    h.send(keyed_at("a", 2_000)).await; // [2 000, 3 000) touches both
    assert_eq!(
        h.next().await,
        release(1_000, 4_000, "a", &["a@1000", "a@2000", "a@3000"])
    );
    assert_eq!(
        h.finish().await,
        vec![release(5_000, 6_000, "b", &["b@5000"])]
    );
}

/// Lateness at its boundary: a retained session accepts a merge while the
/// watermark is below its end plus the lateness, and is gone once it
/// reaches it, so a late event then goes to the late policy.
#[tokio::test(start_paused = true)]
async fn a_retained_session_accepts_merges_until_exactly_its_lateness() {
    let (dead, mut dead_out) = channel_sink(16);
    let window = session(3_000, 10).late(LatePolicy::DeadLetter);
    let handle = window.handle();
    let mut h = Harness::start_with(window, Arc::new(MemoryState::new()), |b| {
        b.dead_letter(dead)
    });
    h.send(keyed_at("a", 11_600)).await;
    h.send(keyed_at("b", 14_600)).await; // a [11 600, 14 600) fires, kept until 14 610
    assert_eq!(h.next().await, release(11_600, 14_600, "a", &["a@11600"]));
    h.send(keyed_at("b", 14_609)).await; // watermark 14 609: still kept
    h.send(keyed_at("a", 10_000)).await;
    assert_eq!(
        h.next().await,
        release(10_000, 14_600, "a", &["a@10000", "a@11600"])
    );
    h.send(keyed_at("b", 14_610)).await; // watermark 14 610: a's session is closed for good
    h.send(keyed_at("a", 10_001)).await; // nothing left to merge with: late
    let letter = dead_out.recv().await.expect("a dead letter");
    assert_eq!(letter.value, b"a@10001");
    assert_eq!(handle.late_dead_lettered(), 1);
    assert_eq!(
        h.finish().await,
        vec![release(
            14_600,
            17_610,
            "b",
            &["b@14600", "b@14609", "b@14610"]
        )]
    );
}

/// A window step on its own, driven the way the pipeline drives it.
async fn standalone(spec: Window, state: &SharedState) -> WindowStep {
    WindowStep::restore(
        spec,
        "default",
        "p",
        state,
        None,
        &WindowOptions {
            restore: true,
            checkpoint_on_close: None,
            upstream_watermarks: false,
            controlled_time: false,
        },
    )
    .await
    .expect("window")
}

/// Feeds `events` in batches of `batch`, asking for the timer after each
/// batch as the pipeline does; returns the releases.
async fn drive(step: &mut WindowStep, events: Vec<Event>, batch: usize) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let chunk: Vec<Event> = events.by_ref().take(batch).collect();
        step.process(Batch::new(chunk), &mut out)
            .await
            .expect("process");
        let _ = step.timer();
    }
    out
}

/// Issue 12, item 2: the work of firing (and of finding the next timer) per
/// event does not grow with the number of open keys. Counted, not timed:
/// the figures are in `plumber bench --scenario windows`.
#[tokio::test(start_paused = true)]
async fn firing_work_does_not_grow_with_the_open_keys() {
    const KEYS: u64 = 3_000;
    for time in ["event", "processing"] {
        let state: SharedState = Arc::new(MemoryState::new());
        let spec = Window::tumbling("w", Duration::from_secs(60))
            .keyed()
            .clock(clock());
        let spec = if time == "event" {
            spec.event_time(event_time(0, 0))
        } else {
            spec
        };
        let mut step = standalone(spec, &state).await;
        let events: Vec<Event> = (0..KEYS)
            .map(|i| keyed_at(&format!("k{i:05}"), i * 60_000 / KEYS))
            .collect();
        assert!(drive(&mut step, events, 64).await.is_empty(), "{time}");
        // The window's end: every key fires, in key order.
        let released = if time == "event" {
            drive(&mut step, vec![keyed_at("last", 60_000)], 64).await
        } else {
            sleep(Duration::from_secs(60)).await;
            let mut out = Vec::new();
            step.wake(&mut out).await.expect("wake");
            out
        };
        assert_eq!(released.len() as u64, KEYS, "{time}");
        assert_eq!(describe(&released[0]).2.as_deref(), Some("k00000"));
        let visited = step.work.visited.get();
        assert!(
            visited <= 4 * (KEYS + 1),
            "{time} time: {visited} windows looked at for {KEYS} keys"
        );
    }
}

/// Issue 12, item 3: merging an event into a session moves a bounded number
/// of events, not the whole session. One key, events that arrive in order
/// and out of order: each block of 8 comes as 0 2 1 3 5 4 7 6, 600 ms apart
/// with a 1 000 ms gap, so 2, 5 and 7 open sessions of their own that 1, 4
/// and 6 then bridge.
#[tokio::test(start_paused = true)]
async fn session_merging_work_does_not_grow_with_the_session() {
    const EVENTS: u64 = 4_000;
    let state: SharedState = Arc::new(MemoryState::new());
    let spec = Window::session("w", Duration::from_millis(1_000))
        .event_time(event_time(5_000, 0))
        .clock(clock());
    let mut step = standalone(spec, &state).await;
    let order = [0, 2, 1, 3, 5, 4, 7, 6];
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| at(&i.to_string(), (i - i % 8 + order[(i % 8) as usize]) * 600))
        .collect();
    assert!(drive(&mut step, events, 64).await.is_empty());
    let mut out = Vec::new();
    step.finish(&mut out).await.expect("finish");
    assert_eq!(out.len(), 1, "one session");
    let (start, end, _, released) = describe(&out[0]);
    assert_eq!((start, end), (0, (EVENTS - 1) * 600 + 1_000));
    let in_time_order: Vec<String> = (0..EVENTS).map(|i| i.to_string()).collect();
    let timestamps: Vec<u64> = out[0].events.iter().map(|e| e.timestamp.unwrap()).collect();
    assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "in time order");
    assert_eq!(released.len(), in_time_order.len());
    let moved = step.work.moved.get();
    assert!(
        moved <= 2 * EVENTS,
        "{moved} events moved to merge {EVENTS} events into one session"
    );
}

/// Applies a checkpoint's writes to `state` (what a commit does).
async fn apply(state: &SharedState, writes: WriteSet) {
    for (key, value) in writes {
        match value {
            Some(value) => state.set(&key, &value).await.expect("set"),
            None => state.delete(&key).await.expect("delete"),
        }
    }
}

/// The part of each written key after the window's namespace.
fn entry_names(writes: &WriteSet) -> Vec<String> {
    let prefix = Namespace::for_window("default", "p", "w").prefix().to_vec();
    let mut names: Vec<String> = writes
        .keys()
        .map(|k| text(k.strip_prefix(prefix.as_slice()).expect("in the namespace")))
        .collect();
    names.sort();
    names
}

/// A checkpoint writes the keys whose windows changed since the last one
/// (and deletes those that closed), not every open buffer.
#[tokio::test(start_paused = true)]
async fn a_checkpoint_writes_only_the_keys_that_changed() {
    let state: SharedState = Arc::new(MemoryState::new());
    let spec = Window::tumbling("w", Duration::from_secs(60))
        .event_time(event_time(0, 0))
        .keyed()
        .clock(clock());
    let mut step = standalone(spec, &state).await;
    let events: Vec<Event> = (0..1_000)
        .map(|i| keyed_at(&format!("k{i:04}"), i))
        .collect();
    drive(&mut step, events, 64).await;
    let first = step.take_writes();
    assert_eq!(first.len(), 1_001, "every key once, and the watermark");
    apply(&state, first).await;

    drive(&mut step, vec![keyed_at("k0005", 2_000)], 64).await;
    let second = step.take_writes();
    assert_eq!(entry_names(&second), ["key/k0005", "meta"]);
    let bytes: usize = second.values().flatten().map(Vec::len).sum();
    assert!(bytes < 200, "{bytes} bytes written for one event");
    assert!(step.take_writes().is_empty(), "nothing changed since");

    // The window fires: its keys' entries go.
    let released = drive(&mut step, vec![keyed_at("z", 60_000)], 64).await;
    assert_eq!(released.len(), 1_000);
    let third = step.take_writes();
    let deleted = third.values().filter(|v| v.is_none()).count();
    assert_eq!(deleted, 1_000);
    assert_eq!(entry_names(&third).len(), 1_002, "deletions, key z, meta");
}

/// Window buffers saved by the version before per-key entries (one
/// `buffers` entry, these bytes): a keyed event-time tumbling window of
/// 10 s with 10 s of lateness after `a@1000 b@2000 a@12000` (with a header)
/// and a keyless `n@13000`, and 3 late events dropped.
const LEGACY_SNAPSHOT: &str = "030001904ea09c010100076e40313330303001c8650007000101610200904e010101610661403130303001e807000701904ea09c0101010161076140313230303001e05d01016801760a000101620100904e010101620662403230303001d00f00070101c86501c86503";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A snapshot in the earlier single-entry format restores, and the next
/// checkpoint replaces it by per-key entries.
#[tokio::test(start_paused = true)]
async fn buffers_saved_in_the_earlier_format_restore() {
    let state: SharedState = Arc::new(MemoryState::new());
    let namespace = Namespace::for_window("default", "p", "w");
    state
        .set(&namespace.key("buffers"), &hex(LEGACY_SNAPSHOT))
        .await
        .unwrap();
    let spec = || {
        Window::tumbling("w", Duration::from_secs(10))
            .event_time(event_time(0, 10_000))
            .keyed()
            .clock(clock())
    };
    let window = spec();
    let handle = window.handle();
    let mut step = standalone(window, &state).await;
    assert_eq!(step.buffered_events(), Some(4));
    assert_eq!(handle.late_dropped(), 3);

    let writes = step.take_writes();
    assert_eq!(
        entry_names(&writes),
        ["buffers", "key/a", "key/b", "meta", "nokey"]
    );
    assert_eq!(writes[&namespace.key("buffers")], None);
    apply(&state, writes).await;

    // From the new entries, the same windows: b's fired one is still
    // within its lateness, a's and the keyless one are open.
    let window = spec();
    let handle = window.handle();
    let mut step = standalone(window, &state).await;
    assert_eq!(handle.late_dropped(), 3);
    let out = drive(&mut step, vec![keyed_at("b", 4_000)], 64).await;
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![release(0, 10_000, "b", &["b@2000", "b@4000"])]
    );
    let out = drive(&mut step, vec![keyed_at("x", 25_000)], 64).await;
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![
            (10_000, 20_000, None, values(&["n@13000"])),
            release(10_000, 20_000, "a", &["a@12000"]),
        ]
    );
    assert_eq!(
        out[1].events[0].headers,
        vec![("h".to_owned(), "v".to_owned())]
    );
    let mut out = Vec::new();
    step.finish(&mut out).await.unwrap();
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![release(20_000, 30_000, "x", &["x@25000"])]
    );
}

/// Pseudo-random keyed events with out-of-order and late timestamps.
fn scrambled_events(count: u64, seed: u64) -> Vec<Event> {
    let mut rng = seed;
    let mut next = |bound: u64| {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) % bound
    };
    (0..count)
        .map(|i| {
            let key = ["a", "b", "c", "d"][next(4) as usize];
            // Mostly forward, sometimes far back (late, or past lateness).
            let back = if next(5) == 0 { next(9_000) } else { next(700) };
            let time = (i * 250 + 10_000).saturating_sub(back);
            let mut event = keyed_at(key, time);
            event.value = format!("{key}@{time}#{i}").into_bytes();
            event
        })
        .collect()
}

/// A window restarted from its checkpoints every few events releases
/// exactly what one that never stopped releases, for every kind of time
/// window, keyed, with lateness and out-of-order events.
#[tokio::test(start_paused = true)]
async fn a_window_restored_from_its_checkpoints_releases_what_an_unbroken_one_does() {
    type MakeWindow = fn() -> Window;
    let kinds: [(&str, MakeWindow); 3] = [
        ("tumbling", || Window::tumbling("w", Duration::from_secs(2))),
        ("sliding", || {
            Window::sliding("w", Duration::from_secs(3), Duration::from_secs(1))
        }),
        ("session", || {
            Window::session("w", Duration::from_millis(400))
        }),
    ];
    for (name, kind) in kinds {
        let spec = || {
            kind()
                .event_time(event_time(300, 1_500))
                .keyed()
                .clock(clock())
        };
        let events = scrambled_events(600, 7);
        let unbroken_state: SharedState = Arc::new(MemoryState::new());
        let unbroken_window = spec();
        let unbroken_handle = unbroken_window.handle();
        let mut unbroken = standalone(unbroken_window, &unbroken_state).await;
        let mut expected = drive(&mut unbroken, events.clone(), 8).await;
        unbroken.finish(&mut expected).await.unwrap();

        let state: SharedState = Arc::new(MemoryState::new());
        let mut released = Vec::new();
        for chunk in events.chunks(37) {
            let mut step = standalone(spec(), &state).await;
            released.extend(drive(&mut step, chunk.to_vec(), 8).await);
            apply(&state, step.take_writes()).await;
        }
        let last_window = spec();
        let last_handle = last_window.handle();
        let mut step = standalone(last_window, &state).await;
        step.finish(&mut released).await.unwrap();
        let describe_all = |batches: &[Batch]| batches.iter().map(describe).collect::<Vec<_>>();
        assert!(expected.len() > 50, "{name}: {} releases", expected.len());
        assert_eq!(describe_all(&released), describe_all(&expected), "{name}");
        assert!(
            unbroken_handle.late_dropped() > 0,
            "{name}: some events are too late"
        );
        assert_eq!(
            last_handle.late_dropped(),
            unbroken_handle.late_dropped(),
            "{name}"
        );
    }
}

// Watermarks from the source (a stage after a shuffle)

/// A finite source that reports a watermark after each of its batches, as
/// a stage reading a shuffle stream does.
struct WatermarkedSource {
    /// Each batch and the watermark after it.
    reads: std::collections::VecDeque<(Vec<Event>, Option<u64>)>,
    watermark: Option<u64>,
    read: u64,
}

#[async_trait]
impl crate::streams::Source for WatermarkedSource {
    fn describe(&self) -> String {
        "watermarked test source".to_owned()
    }

    async fn seek(&mut self, _position: &Position) -> Result<(), crate::streams::StreamError> {
        Ok(())
    }

    async fn next_batch(
        &mut self,
        _max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, crate::streams::StreamError> {
        let Some((events, watermark)) = self.reads.pop_front() else {
            return Ok(None);
        };
        self.watermark = watermark;
        self.read += 1;
        Ok(Some((events, Position::Offset(self.read))))
    }

    fn reports_watermarks(&self) -> bool {
        true
    }

    fn watermark(&self) -> Option<u64> {
        self.watermark
    }
}

/// Two upstream partitions as one source: the fast one's timestamps run
/// 10 s ahead of the slow one's. The window's watermark follows the
/// source's (the minimum over the upstreams, less the out-of-orderness),
/// not the highest timestamp seen: the slow partition's events are not
/// late, and each window fires only once the source's watermark has
/// passed its end, in the order the source said so. An empty batch (only
/// the watermark moved) fires windows too.
#[tokio::test]
async fn a_window_after_a_watermarked_source_takes_its_watermark_from_the_source() {
    let reads = vec![
        // The fast upstream at 10 s, the slow one at 0 s: the watermark is
        // the slow one's.
        (vec![at("fast-a", 10_000), at("slow-a", 100)], Some(100)),
        (vec![at("slow-b", 900), at("fast-b", 10_500)], Some(900)),
        // Only the watermark moves: [0, 1000) closes (out-of-orderness
        // 200 ms: at 1200).
        (vec![], Some(1_200)),
        (vec![at("slow-c", 1_500)], Some(1_500)),
        // A watermark that goes back (an upstream came back from idle)
        // does not move the window's back.
        (vec![at("slow-d", 1_600)], Some(1_000)),
        (vec![], Some(11_300)),
    ];
    let (sink, mut output) = batch_channel_sink(64);
    let window = Window::tumbling("w", Duration::from_secs(1)).event_time(EventTime {
        max_out_of_orderness_ms: 200,
        allowed_lateness_ms: 0,
        // Not used after a watermarked source: its own idle advance would
        // run ahead of the slow upstream.
        idle_timeout_ms: Some(1),
    });
    let handle = window.handle();
    let report = Pipeline::builder("watermarked")
        .checkpoint(CheckpointPolicy::at_end_only())
        .from(WatermarkedSource {
            reads: reads.into(),
            watermark: None,
            read: 0,
        })
        .then(window)
        .to(sink)
        .run()
        .await
        .expect("run");
    assert_eq!(report.events_in, 6);
    let mut released = Vec::new();
    while let Ok(batch) = output.try_recv() {
        released.push(describe(&batch));
    }
    assert_eq!(
        released,
        vec![
            (0, 1_000, None, values(&["slow-a", "slow-b"])),
            (1_000, 2_000, None, values(&["slow-c", "slow-d"])),
            (10_000, 11_000, None, values(&["fast-a", "fast-b"])),
        ]
    );
    assert_eq!(handle.late_dropped(), 0);
}

/// The same window fed the same events by a source without watermarks:
/// the watermark follows the highest timestamp seen, and the slow
/// upstream's events are late (what a stage after a shuffle did before).
#[tokio::test]
async fn without_the_sources_watermark_the_slow_upstreams_events_are_late() {
    let (sink, mut output) = batch_channel_sink(64);
    let window = Window::tumbling("w", Duration::from_secs(1)).event_time(event_time(200, 0));
    let handle = window.handle();
    Pipeline::builder("seen")
        .checkpoint(CheckpointPolicy::at_end_only())
        .batch_size(2)
        .from(ArraySource::new(vec![
            at("fast-a", 10_000),
            at("slow-a", 100),
            at("slow-b", 900),
            at("fast-b", 10_500),
        ]))
        .then(window)
        .to(sink)
        .run()
        .await
        .expect("run");
    let mut released = Vec::new();
    while let Ok(batch) = output.try_recv() {
        released.push(describe(&batch));
    }
    assert_eq!(
        released,
        vec![(10_000, 11_000, None, values(&["fast-a", "fast-b"]))]
    );
    assert_eq!(handle.late_dropped(), 2);
}

/// A restored window keeps its committed watermark: a source whose
/// watermark starts lower again (it rebuilds its upstreams' after a
/// restart) neither moves it back nor fires anything early.
#[tokio::test]
async fn a_restored_windows_watermark_does_not_go_back_with_the_source() {
    let state: SharedState = Arc::new(MemoryState::new());
    let spec = || Window::tumbling("w", Duration::from_secs(1)).event_time(event_time(0, 0));
    let options = WindowOptions {
        restore: true,
        checkpoint_on_close: None,
        upstream_watermarks: true,
        controlled_time: false,
    };
    let mut step = WindowStep::restore(spec(), "default", "p", &state, None, &options)
        .await
        .expect("window");
    let mut out = Vec::new();
    step.process(Batch::new(vec![at("a", 500), at("b", 5_500)]), &mut out)
        .await
        .unwrap();
    assert!(out.is_empty(), "fired before any watermark: {out:?}");
    step.watermark(2_000, &mut out).await.unwrap();
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![(0, 1_000, None, values(&["a"]))]
    );
    out.clear();
    assert!(
        step.timer().is_none(),
        "no idle timer after a watermarked source"
    );
    let writes = step.take_writes();
    state
        .commit(
            &crate::checkpoint::CheckpointRecord::new("s", 1, Position::Offset(1)),
            &[writes],
        )
        .await
        .unwrap();

    let mut restored = WindowStep::restore(spec(), "default", "p", &state, None, &options)
        .await
        .expect("window");
    restored.watermark(1_000, &mut out).await.unwrap();
    assert!(out.is_empty(), "{out:?}");
    // An event of the closed window is late; one of [5000, 6000) waits.
    restored
        .process(
            Batch::new(vec![at("late", 1_500), at("c", 5_600)]),
            &mut out,
        )
        .await
        .unwrap();
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(restored.spec.handle().late_dropped(), 1);
    restored.watermark(6_000, &mut out).await.unwrap();
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![(5_000, 6_000, None, values(&["b", "c"]))]
    );
}

/// Under controlled time (`plumber test`) the source's watermark is the
/// time: a processing-time window stamps events with it and fires when it
/// passes the window's end, never on a timer; an event-time window's
/// watermark moves up to it, beside what its timestamps say.
#[tokio::test]
async fn controlled_time_moves_processing_time_and_the_watermark() {
    let state: SharedState = Arc::new(MemoryState::new());
    let options = WindowOptions {
        restore: false,
        checkpoint_on_close: None,
        upstream_watermarks: false,
        controlled_time: true,
    };
    let mut processing = WindowStep::restore(
        Window::tumbling("p", Duration::from_secs(1)),
        "default",
        "p",
        &state,
        None,
        &options,
    )
    .await
    .expect("window");
    let mut out = Vec::new();
    processing
        .process(Batch::new(vec![Event::new("a"), Event::new("b")]), &mut out)
        .await
        .unwrap();
    assert!(
        processing.timer().is_none(),
        "no timer under controlled time"
    );
    processing.watermark(999, &mut out).await.unwrap();
    assert!(out.is_empty(), "fired before its end: {out:?}");
    processing.watermark(1_000, &mut out).await.unwrap();
    processing
        .process(Batch::new(vec![Event::new("c")]), &mut out)
        .await
        .unwrap();
    processing.watermark(2_500, &mut out).await.unwrap();
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![
            (0, 1_000, None, values(&["a", "b"])),
            (1_000, 2_000, None, values(&["c"]))
        ]
    );

    let mut event = WindowStep::restore(
        Window::tumbling("e", Duration::from_secs(1)).event_time(event_time(0, 0)),
        "default",
        "e",
        &state,
        None,
        &options,
    )
    .await
    .expect("window");
    let mut out = Vec::new();
    event
        .process(Batch::new(vec![at("x", 100), at("y", 200)]), &mut out)
        .await
        .unwrap();
    event.watermark(1_000, &mut out).await.unwrap();
    // Late now: its window fired at the controlled watermark.
    event
        .process(Batch::new(vec![at("late", 300)]), &mut out)
        .await
        .unwrap();
    // The timestamps still move the watermark, as without control.
    event
        .process(Batch::new(vec![at("z", 1_500), at("w", 2_100)]), &mut out)
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(describe).collect::<Vec<_>>(),
        vec![
            (0, 1_000, None, values(&["x", "y"])),
            (1_000, 2_000, None, values(&["z"]))
        ]
    );
}
