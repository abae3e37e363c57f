//! The engine between source and sink: when checkpoints are taken (output
//! a window releases on its own, the bound on pending writes) and how
//! at-most-once commits positions ahead of processing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plumber::checkpoint::{
    CheckpointPolicy, Delivery, Position, DEFAULT_MAX_PENDING_BYTES, DEFAULT_MAX_PENDING_KEYS,
};
use plumber::config::PipelineConfig;
use plumber::config::ReadStandard;
use plumber::pipeline::{Pipeline, PipelineError};
use plumber::runtime::LimitKind;
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, Namespace, SharedState};
use plumber::step::{OnError, StepError, WasmPipe};
use plumber::streams::{channel_source, ArraySource, FileSink};
use plumber::window::Window;
use plumber::Event;
use plumber_tests::{cache_dir, guest, run_collect};

fn runtime() -> Runtime {
    Runtime::new(Some(cache_dir())).expect("runtime")
}

fn lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// Waits until `path` has `want` lines or `deadline` passes; says which.
async fn lines_by(path: &std::path::Path, want: usize, deadline: Instant) -> bool {
    loop {
        if lines(path) >= want {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until a checkpoint covers the first `events` events of a channel
/// source (so they have passed every step).
async fn committed_through(state: &SharedState, pipeline: &str, events: u64) {
    let scope = plumber::state::checkpoint_scope("default", pipeline);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let committed = state.last_checkpoint(&scope).await.unwrap();
        if committed.is_some_and(|c| c.position == Position::Offset(events)) {
            return;
        }
        assert!(Instant::now() < deadline, "no checkpoint covers the events");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

const INTERVAL: Duration = Duration::from_millis(300);

/// A signal window released while the source is quiet: its output reaches
/// the file within two checkpoint intervals, with no new input; then the
/// idle pipeline takes no more checkpoints.
#[tokio::test]
async fn a_window_released_while_the_source_is_quiet_is_flushed_by_the_next_interval() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let window = Window::signal("flush");
    let trigger = window.handle();
    let (sender, source) = channel_source(16);
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = Pipeline::builder("quiet-signal")
        .state(state.clone())
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::every(INTERVAL))
        .from(source)
        .then(window)
        .to(FileSink::new(&out));
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());
    for name in ["ada", "bob", "cy"] {
        sender.send(Event::new(name)).await.unwrap();
    }
    // The events are in the window's buffer, committed; nothing is output.
    committed_through(&state, "quiet-signal", 3).await;
    assert_eq!(lines(&out), 0);

    trigger.trigger();
    let released = Instant::now();
    assert!(
        lines_by(&out, 3, released + 2 * INTERVAL).await,
        "the released window was not in the file {:?} after the trigger (interval {INTERVAL:?})",
        released.elapsed()
    );

    // Nothing moves any more: no checkpoint is taken for nothing.
    tokio::time::sleep(INTERVAL / 2).await;
    let idle = handle.status().checkpoints.load(Ordering::Relaxed);
    tokio::time::sleep(4 * INTERVAL).await;
    assert_eq!(handle.status().checkpoints.load(Ordering::Relaxed), idle);
    drop(sender);
    running.await.unwrap().expect("run");
}

/// The same with a processing-time window, released by its own timer.
#[tokio::test]
async fn a_window_closed_by_its_timer_is_flushed_by_the_next_interval() {
    const SIZE_MS: u64 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let (sender, source) = channel_source(16);
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = Pipeline::builder("quiet-timer")
        .state(state.clone())
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::every(INTERVAL))
        .from(source)
        .then(Window::tumbling("second", Duration::from_millis(SIZE_MS)))
        .to(FileSink::new(&out));
    let running = tokio::spawn(builder.run());
    let now_ms = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    // Send just after a window starts, so that a checkpoint for the events
    // passes before the window closes (and cannot flush its output).
    while now_ms() % SIZE_MS > 50 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for name in ["ada", "bob"] {
        sender.send(Event::new(name)).await.unwrap();
    }
    committed_through(&state, "quiet-timer", 2).await;
    // The events arrived before now, so their window ends by the next boundary.
    let closes_ms = (now_ms() / SIZE_MS + 1) * SIZE_MS;
    let closes = Instant::now() + Duration::from_millis(closes_ms.saturating_sub(now_ms()));
    assert!(
        lines_by(&out, 2, closes + 2 * INTERVAL).await,
        "the window's output was not in the file two intervals after it closed"
    );
    drop(sender);
    running.await.unwrap().expect("run");
}

/// A pipe writing a new key per event, with no checkpoint due for a
/// minute: the bound on pending keys forces checkpoints, and what the pipe
/// holds stays within the bound plus what the batches in flight write.
#[tokio::test]
async fn pending_writes_past_their_bound_force_a_checkpoint() {
    const EVENTS: usize = 20_000;
    const BOUND: u64 = 1_000;
    const BATCH: usize = 100;
    const CAPACITY: usize = 8;
    let values: Vec<String> = (0..EVENTS).map(|i| format!("key-{i}")).collect();
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = Pipeline::builder("bounded")
        .state(state.clone())
        .runtime(runtime())
        .checkpoint(
            CheckpointPolicy::every(Duration::from_secs(60)).with_max_pending(Some(BOUND), None),
        )
        .batch_size(BATCH)
        .channel_capacity(CAPACITY)
        .from(ArraySource::from_strings(values.iter().map(String::as_str)))
        .then(WasmPipe::new("count", guest("count")));
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    let report = result.expect("run");
    assert_eq!(out.len(), EVENTS);
    let stages = handle.status().stages();
    let forced = stages[0].write_set_checkpoints.load(Ordering::Relaxed);
    let peak = stages[0].pending_keys_peak.load(Ordering::Relaxed);
    println!(
        "{EVENTS} new keys, bound {BOUND}: {} checkpoints ({forced} forced by the bound), \
         at most {peak} keys pending",
        report.checkpoints
    );
    // Without the bound: one checkpoint, at the end, with 20,000 keys pending.
    let at_least = EVENTS as u64 / (BOUND + ((CAPACITY + 2) * BATCH) as u64);
    assert!(forced >= at_least, "{forced} forced checkpoints");
    assert!(report.checkpoints > forced, "{report:?}");
    assert!(
        peak <= BOUND + ((CAPACITY + 2) * BATCH) as u64,
        "{peak} keys pending at once"
    );
    // Every key counted once, through all those checkpoints.
    let namespace = Namespace::for_pipe("bounded", "count");
    let stored = state.scan_prefix(namespace.prefix()).await.unwrap();
    assert_eq!(stored.len(), EVENTS);
    assert!(stored.iter().all(|(_, value)| value == b"1"));
}

/// A checkpoint cannot pass within a call, so one call may not write more
/// than the bound: past it, its writes are refused (a `pending_writes`
/// limit), and the error policy applies; run one by one, the events fit.
#[tokio::test]
async fn one_call_writing_past_the_bound_meets_a_limit() {
    const EVENTS: usize = 300;
    let values: Vec<String> = (0..EVENTS).map(|i| format!("key-{i}")).collect();
    let builder = |name: &str, state: SharedState, policy: OnError| {
        Pipeline::builder(name)
            .state(state)
            .runtime(runtime())
            .checkpoint(
                CheckpointPolicy::every(Duration::from_secs(60)).with_max_pending(Some(100), None),
            )
            .batch_size(EVENTS)
            .from(ArraySource::from_strings(values.iter().map(String::as_str)))
            .then(WasmPipe::new("count", guest("count")).on_error(policy))
    };
    let (result, _) =
        run_collect(builder("over", Arc::new(MemoryState::new()), OnError::Fail)).await;
    match result {
        Err(PipelineError::Step {
            source: StepError::Limit { kind, message, .. },
            ..
        }) => {
            assert_eq!(kind, LimitKind::PendingWrites);
            assert!(message.contains("checkpoint.max_pending_keys"), "{message}");
        }
        other => panic!("expected the pending-writes limit, got {other:?}"),
    }

    let state: SharedState = Arc::new(MemoryState::new());
    let skipping = builder("over-skip", state.clone(), OnError::Skip);
    let handle = skipping.handle();
    let (result, out) = run_collect(skipping).await;
    result.expect("runs");
    assert_eq!(out.len(), EVENTS, "one by one, every event fits");
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(counters.limits[7].load(Ordering::Relaxed), 1);
    assert_eq!(counters.skipped.load(Ordering::Relaxed), 0);
    let namespace = Namespace::for_pipe("over-skip", "count");
    assert_eq!(
        state.scan_prefix(namespace.prefix()).await.unwrap().len(),
        EVENTS
    );
}

/// The bounds are set in the pipeline config, `null` turns one off, and
/// a bound of 0 is refused naming the field.
#[test]
fn the_bounds_on_pending_writes_are_read_from_the_config() {
    let parse = |checkpoint: serde_json::Value| {
        let config = serde_json::json!({
            "name": "p", "checkpoint": checkpoint,
            "from": { "type": "array", "values": [] }, "to": { "type": "discard" }
        });
        PipelineConfig::parse(&config.to_string(), "p.json", std::path::Path::new("."))
    };
    let defaults = parse(serde_json::json!({})).expect("defaults");
    assert_eq!(
        defaults.checkpoint.max_pending_keys,
        Some(DEFAULT_MAX_PENDING_KEYS)
    );
    assert_eq!(
        defaults.checkpoint.max_pending_bytes,
        Some(DEFAULT_MAX_PENDING_BYTES)
    );
    let set = parse(serde_json::json!({ "max_pending_keys": 1000, "max_pending_bytes": null }))
        .expect("set");
    assert_eq!(set.checkpoint.max_pending_keys, Some(1000));
    assert_eq!(set.checkpoint.max_pending_bytes, None);
    let zero = parse(serde_json::json!({ "max_pending_keys": 0 })).expect_err("0 refused");
    assert!(
        zero.to_string().contains("checkpoint.max_pending_keys"),
        "{zero}"
    );
}

/// At-most-once with one event per batch: the position is committed once
/// per group of batches the source has ready, not once per batch.
#[tokio::test]
async fn at_most_once_commits_the_position_ahead_for_a_group_of_batches() {
    const EVENTS: usize = 5_000;
    let values: Vec<String> = (0..EVENTS).map(|i| format!("key-{}", i % 10)).collect();
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = Pipeline::builder("grouped")
        .state(state.clone())
        .runtime(runtime())
        .delivery(Delivery::AtMostOnce)
        .checkpoint(CheckpointPolicy::every(Duration::from_secs(60)))
        .batch_size(1)
        .from(ArraySource::from_strings(values.iter().map(String::as_str)))
        .then(WasmPipe::new("count", guest("count")));
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    let report = result.expect("run");
    assert_eq!(out.len(), EVENTS);
    let commits = handle.status().position_commits.load(Ordering::Relaxed);
    println!("at-most-once, batch 1: {EVENTS} events, {commits} commits of the position ahead");
    assert!(
        commits >= 5,
        "{commits} commits: a group has at most 1,024 events"
    );
    assert!(commits <= EVENTS as u64 / 10, "{commits} commits");
    // Everything was processed once, and the last commit covers it all.
    let namespace = Namespace::for_pipe("grouped", "count");
    for (_, value) in state.scan_prefix(namespace.prefix()).await.unwrap() {
        assert_eq!(value, b"500");
    }
    assert_eq!(
        report.last_checkpoint.expect("committed").position,
        plumber::checkpoint::Position::Offset(EVENTS as u64)
    );
}
