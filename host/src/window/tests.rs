//! Window tests on tokio's paused clock: time moves only when the test
//! sleeps (or every task waits on a timer), so every bound is exact.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::sleep;

use super::*;
use crate::checkpoint::{CheckpointPolicy, Position};
use crate::pipeline::{Pipeline, PipelineBuilder, PipelineError, RunReport};
use crate::state::{MemoryState, SharedState};
use crate::streams::{batch_channel_sink, channel_sink, channel_source, ArraySource};
use crate::Event;

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

    async fn next(&mut self) -> (u64, u64, Option<String>, Vec<String>) {
        describe(&self.output.recv().await.expect("a released window"))
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
    let text = error.to_string();
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
    assert!(error.to_string().contains("no dead-letter sink"), "{error}");
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
