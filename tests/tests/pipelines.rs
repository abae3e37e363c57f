//! End-to-end pipelines with real guests built from `examples/guests`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::config::PipelineConfig;
use plumber::config::ReadStandard;
use plumber::pipeline::{Pipeline, PipelineError};
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, Namespace, SharedState, SledState, StateBackend};
use plumber::step::{StepError, WasmPipe};
use plumber::streams::{
    channel_sink, channel_source, ArraySource, FilePosition, FileSink, FileSource,
};
use plumber::ErrorChain;
use plumber::Event;
use plumber_tests::{cache_dir, guest, workspace_root};
use tokio::sync::mpsc;

const NAMES: [&str; 7] = ["Ada", "grace", "ALAN", "ada", "Grace", "ada", "Barbara"];

fn runtime() -> Runtime {
    Runtime::new(Some(cache_dir())).expect("runtime")
}

/// The committed state of one pipe, as text.
async fn pipe_state(
    state: &dyn StateBackend,
    pipeline: &str,
    pipe: &str,
) -> BTreeMap<String, String> {
    let namespace = Namespace::for_pipe(pipeline, pipe);
    state
        .scan_prefix(namespace.prefix())
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k[namespace.prefix().len()..]).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn strings(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.value_lossy().into_owned())
        .collect()
}

async fn drain(receiver: &mut mpsc::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    events
}

fn names_pipeline(name: &str, state: SharedState) -> plumber::pipeline::PipelineBuilder {
    Pipeline::builder(name)
        .state(state)
        .runtime(runtime())
        .from(ArraySource::from_strings(NAMES))
        .then(WasmPipe::new("upper", guest("upper")))
        .then(WasmPipe::new("lower", guest("lower")))
        .then(
            WasmPipe::new("count", guest("count")).config(serde_json::json!({ "separator": ": " })),
        )
}

#[tokio::test]
async fn names_example_prints_exact_counts_and_keeps_them_in_state() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (sink, mut out) = channel_sink(100);
    let report = names_pipeline("names", state.clone())
        .batch_size(3)
        .to(sink)
        .run()
        .await
        .expect("run");
    assert_eq!(
        strings(&drain(&mut out).await),
        [
            "ada: 1",
            "grace: 1",
            "alan: 1",
            "ada: 2",
            "grace: 2",
            "ada: 3",
            "barbara: 1"
        ]
    );
    assert_eq!((report.events_in, report.events_out), (7, 7));
    assert_eq!(
        report.last_checkpoint.expect("checkpoint").position,
        Position::Offset(7)
    );
    let counts = pipe_state(&*state, "names", "count").await;
    let expected: BTreeMap<String, String> = [
        ("ada", "3"),
        ("alan", "1"),
        ("barbara", "1"),
        ("grace", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(counts, expected);
    // The stateless pipes wrote nothing.
    assert!(pipe_state(&*state, "names", "upper").await.is_empty());
}

#[tokio::test]
async fn pipelines_sharing_a_backend_keep_their_own_keys() {
    let state: SharedState = Arc::new(MemoryState::new());
    for name in ["first", "second"] {
        let (sink, _out) = channel_sink(100);
        names_pipeline(name, state.clone())
            .to(sink)
            .run()
            .await
            .expect("run");
    }
    // A second run of "first" resumes after the end: its counts do not double.
    let (sink, _out) = channel_sink(100);
    let report = names_pipeline("first", state.clone())
        .to(sink)
        .run()
        .await
        .expect("rerun");
    assert_eq!(report.events_in, 0);
    for name in ["first", "second"] {
        assert_eq!(
            pipe_state(&*state, name, "count")
                .await
                .get("ada")
                .map(String::as_str),
            Some("3")
        );
    }
}

#[tokio::test]
async fn json_config_runs_the_names_example_into_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let config = serde_json::json!({
        "name": "names",
        "state": { "type": "sled", "path": dir.path().join("state") },
        "checkpoint": { "interval_ms": 50 },
        "from": { "type": "array", "values": NAMES },
        "pipeline": [
            { "name": "upper", "type": "wasm", "module": guest("upper") },
            { "name": "lower", "type": "wasm", "module": guest("lower") },
            { "name": "count", "type": "wasm", "module": guest("count"), "config": { "separator": "=" } }
        ],
        "to": { "type": "file", "path": out }
    });
    let config = PipelineConfig::parse(&config.to_string(), "inline", dir.path()).expect("config");
    let state = config.open_state().await.expect("state");
    config
        .builder(state.clone())
        .await
        .expect("open")
        .runtime(runtime())
        .run()
        .await
        .expect("run");
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "ada=1\ngrace=1\nalan=1\nada=2\ngrace=2\nada=3\nbarbara=1\n"
    );
    assert_eq!(
        pipe_state(&*state, "names", "count")
            .await
            .get("grace")
            .map(String::as_str),
        Some("2")
    );
}

/// The words `split` emits for a line, computed natively.
fn words(line: &str) -> impl Iterator<Item = String> + '_ {
    line.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
}

#[tokio::test]
async fn word_count_over_a_file_with_sled_state() {
    let text_path = workspace_root().join("examples/data/words.txt");
    let text = std::fs::read_to_string(&text_path).unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_lines = Vec::new();
    for word in text.lines().flat_map(words) {
        let count = expected.entry(word.clone()).or_default();
        *count += 1;
        expected_lines.push(format!("{word}\t{count}"));
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("counts.txt");
    {
        let state: SharedState = Arc::new(SledState::open(dir.path().join("state")).unwrap());
        let report = Pipeline::builder("wordcount")
            .state(state)
            .runtime(runtime())
            .batch_size(2)
            .checkpoint(CheckpointPolicy::at_end_only().and_every_events(3))
            .from(FileSource::new(&text_path))
            .then(WasmPipe::new("split", guest("split")))
            .then(
                WasmPipe::new("count", guest("count"))
                    .config(serde_json::json!({ "separator": "\t" })),
            )
            .to(FileSink::new(&out))
            .run()
            .await
            .expect("run");
        assert!(report.checkpoints >= 3, "{report:?}");
        let position = report.last_checkpoint.unwrap().position;
        assert_eq!(
            position.decode::<FilePosition>().unwrap().offset,
            text.len() as u64
        );
    }
    let output = std::fs::read_to_string(&out).unwrap();
    assert_eq!(output.lines().collect::<Vec<_>>(), expected_lines);
    // Reopen the database: the counts are durable.
    let state = SledState::open(dir.path().join("state")).unwrap();
    let stored = pipe_state(&state, "wordcount", "count").await;
    let expected: BTreeMap<String, String> = expected
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    assert_eq!(stored, expected);
}

/// Lines `key-<i % keys>`; the count pipe keys by value.
fn keyed_lines(count: usize, keys: usize) -> String {
    (0..count).map(|i| format!("key-{}\n", i % keys)).collect()
}

/// What an uninterrupted run of `count` over [`keyed_lines`] emits.
fn expected_counts(count: usize, keys: usize) -> Vec<String> {
    let mut seen = vec![0u64; keys];
    (0..count)
        .map(|i| {
            seen[i % keys] += 1;
            format!("key-{} {}", i % keys, seen[i % keys])
        })
        .collect()
}

fn counting_pipeline(file: &Path, state: SharedState) -> plumber::pipeline::PipelineBuilder {
    Pipeline::builder("resume")
        .state(state)
        .runtime(runtime())
        .batch_size(50)
        .channel_capacity(2)
        .checkpoint(CheckpointPolicy::at_end_only().and_every_events(500))
        .from(FileSource::new(file))
        .then(WasmPipe::new("count", guest("count")))
}

#[tokio::test]
async fn a_pipeline_stopped_midway_resumes_from_its_checkpoint() {
    const EVENTS: usize = 20_000;
    const KEYS: usize = 7;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, keyed_lines(EVENTS, KEYS)).unwrap();
    let state_dir = dir.path().join("state");

    // First run: stop it once 1000 events came out.
    let mut first = Vec::new();
    {
        let state: SharedState = Arc::new(SledState::open(&state_dir).unwrap());
        let (sink, mut out) = channel_sink(64);
        let builder = counting_pipeline(&input, state).to(sink);
        let shutdown = builder.handle();
        let running = tokio::spawn(builder.run());
        while first.len() < 1000 {
            first.push(out.recv().await.expect("output"));
        }
        shutdown.shutdown();
        // Everything in flight still reaches the sink before the final checkpoint.
        while let Some(event) = out.recv().await {
            first.push(event);
        }
        let report = running.await.unwrap().expect("first run");
        assert_eq!(report.events_out, first.len() as u64);
        assert!(
            report.events_in < EVENTS as u64,
            "stopped before the end: {report:?}"
        );
    }

    // Second run on the same directory: resumes, and the two outputs add up
    // to one uninterrupted run, with nothing twice and nothing missing.
    let state: SharedState = Arc::new(SledState::open(&state_dir).unwrap());
    let (sink, mut out) = channel_sink(EVENTS);
    let report = counting_pipeline(&input, state.clone())
        .to(sink)
        .run()
        .await
        .expect("second run");
    let resumed = report.resumed_from.expect("resumed from a checkpoint");
    assert!(resumed.position.decode::<FilePosition>().unwrap().offset > 0);
    let mut all = strings(&first);
    all.extend(strings(&drain(&mut out).await));
    assert_eq!(all, expected_counts(EVENTS, KEYS));
    let stored = pipe_state(&*state, "resume", "count").await;
    assert_eq!(stored.len(), KEYS);
    assert!(stored
        .values()
        .all(|v| v.parse::<usize>().unwrap() >= EVENTS / KEYS));
    assert_eq!(
        stored
            .values()
            .map(|v| v.parse::<usize>().unwrap())
            .sum::<usize>(),
        EVENTS
    );
}

#[tokio::test]
async fn a_crashed_run_leaves_state_that_counts_every_event_once() {
    const EVENTS: usize = 20_000;
    const KEYS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, keyed_lines(EVENTS, KEYS)).unwrap();
    let state: SharedState = Arc::new(SledState::open(dir.path().join("state")).unwrap());

    // "Crash": drop the run in the middle, with no final checkpoint.
    let (sink, mut out) = channel_sink(64);
    let running = tokio::spawn(counting_pipeline(&input, state.clone()).to(sink).run());
    for _ in 0..3000 {
        out.recv().await.expect("output");
    }
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    drop(out);

    let committed = state
        .last_checkpoint("default/resume")
        .await
        .unwrap()
        .expect("a checkpoint before the crash");
    let (sink, mut out) = channel_sink(EVENTS);
    let report = counting_pipeline(&input, state.clone())
        .to(sink)
        .run()
        .await
        .expect("recovery run");
    assert_eq!(report.resumed_from.as_ref(), Some(&committed));
    // The recovery replays from the checkpoint: its output is exactly the
    // uninterrupted run's output after the committed position.
    let offset = committed.position.decode::<FilePosition>().unwrap().offset;
    let skipped = usize::try_from(offset).unwrap() / "key-0\n".len();
    assert_eq!(
        strings(&drain(&mut out).await),
        expected_counts(EVENTS, KEYS)[skipped..]
    );
    let stored = pipe_state(&*state, "resume", "count").await;
    for value in stored.values() {
        assert_eq!(value, &(EVENTS / KEYS).to_string());
    }
}

#[tokio::test]
async fn a_trapping_guest_fails_the_pipeline_with_its_name() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (sink, _out) = channel_sink(100);
    let error = Pipeline::builder("faults")
        .state(state.clone())
        .runtime(runtime())
        .from(ArraySource::from_strings(["ada", "trap"]))
        .then(WasmPipe::new("count", guest("count")))
        .then(WasmPipe::new("faulty", guest("faulty")))
        .to(sink)
        .run()
        .await
        .expect_err("the guest traps");
    let text = ErrorChain(&error).to_string();
    match error {
        PipelineError::Step {
            source: StepError::Trap { step, .. },
            ..
        } => assert_eq!(step, "faulty"),
        other => panic!("expected a trap, got {other}"),
    }
    assert!(text.contains("faulty") && text.contains("trap"), "{text}");
    // Nothing of the failed epoch was committed.
    assert!(pipe_state(&*state, "faults", "count").await.is_empty());
    // Only checkpoint 0, taken at start before any event.
    let committed = state
        .last_checkpoint("default/faults")
        .await
        .unwrap()
        .expect("checkpoint 0");
    assert_eq!((committed.epoch, committed.position), (0, Position::Start));
}

#[tokio::test]
async fn a_guest_error_names_the_pipe_and_the_event() {
    let (sink, _out) = channel_sink(100);
    let error = Pipeline::builder("faults")
        .runtime(runtime())
        .from(ArraySource::from_strings(["ok", "fail", "ok"]))
        .then(WasmPipe::new("faulty", guest("faulty")))
        .to(sink)
        .run()
        .await
        .expect_err("the guest fails");
    match &error {
        PipelineError::Step {
            source:
                StepError::Guest {
                    step,
                    message,
                    event_index,
                    ..
                },
            ..
        } => {
            assert_eq!(step, "faulty");
            assert_eq!(message, "asked to fail");
            assert_eq!(*event_index, Some(1));
        }
        other => panic!("expected a guest error, got {other}"),
    }
}

#[tokio::test]
async fn a_full_sink_holds_back_the_source() {
    let (sender, source) = channel_source(1);
    let (sink, out) = channel_sink(1);
    let running = tokio::spawn(
        Pipeline::builder("backpressure")
            .runtime(runtime())
            .batch_size(1)
            .channel_capacity(1)
            .from(source)
            .then(WasmPipe::new("upper", guest("upper")))
            .to(sink)
            .run(),
    );
    // Nobody reads `out`: the pipeline can take in only what its bounded
    // channels hold, then the sender must wait.
    let mut accepted = 0;
    for i in 0..10_000 {
        let send = sender.send(Event::new(format!("event {i}")));
        if tokio::time::timeout(Duration::from_millis(200), send)
            .await
            .is_err()
        {
            break;
        }
        accepted += 1;
    }
    assert!(
        accepted < 50,
        "accepted {accepted} events with a blocked sink"
    );
    drop(out);
    drop(sender);
    let _ = running.await;
}

#[tokio::test]
async fn time_based_checkpoints_commit_while_the_pipeline_runs() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (sender, source) = channel_source(16);
    let (sink, mut out) = channel_sink(16);
    let running = tokio::spawn(
        Pipeline::builder("ticking")
            .state(state.clone())
            .runtime(runtime())
            .checkpoint(CheckpointPolicy::every(Duration::from_millis(20)))
            .from(source)
            .then(WasmPipe::new("count", guest("count")))
            .to(sink)
            .run(),
    );
    for name in ["ada", "bob", "ada"] {
        sender.send(Event::new(name)).await.unwrap();
    }
    for _ in 0..3 {
        out.recv().await.expect("output");
    }
    // The source stays open; only the interval can commit these events.
    let mut committed = None;
    for _ in 0..500 {
        committed = state.last_checkpoint("default/ticking").await.unwrap();
        if committed
            .as_ref()
            .is_some_and(|c| c.position == Position::Offset(3))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        committed.expect("an interval checkpoint").position,
        Position::Offset(3)
    );
    assert_eq!(
        pipe_state(&*state, "ticking", "count")
            .await
            .get("ada")
            .map(String::as_str),
        Some("2")
    );
    drop(sender);
    let report = running.await.unwrap().expect("run");
    assert_eq!(report.events_out, 3);
}

/// Waits (up to 5 s) until the pipeline's last checkpoint is at `position`.
async fn committed_at(state: &SharedState, pipeline: &str, position: Position) -> bool {
    for _ in 0..500 {
        let committed = state
            .last_checkpoint(&plumber::state::checkpoint_scope("default", pipeline))
            .await
            .unwrap();
        if committed.is_some_and(|c| c.position == position) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn checkpoints_on_demand_by_call_and_by_sigusr2() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (sender, source) = channel_source(16);
    let (sink, mut out) = channel_sink(16);
    let builder = Pipeline::builder("on-demand")
        .state(state.clone())
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::at_end_only())
        .from(source)
        .then(WasmPipe::new("count", guest("count")))
        .to(sink);
    let handle = builder.handle();
    handle.checkpoint_on_sigusr2().expect("signal handler");
    let running = tokio::spawn(builder.run());
    sender.send(Event::new("ada")).await.unwrap();
    out.recv().await.expect("output");
    // Only checkpoint 0 so far: no interval, no count.
    assert_eq!(
        state
            .last_checkpoint("default/on-demand")
            .await
            .unwrap()
            .map(|c| c.epoch),
        Some(0)
    );
    handle.checkpoint();
    assert!(
        committed_at(&state, "on-demand", Position::Offset(1)).await,
        "the call took no checkpoint"
    );

    sender.send(Event::new("bob")).await.unwrap();
    out.recv().await.expect("output");
    let status = std::process::Command::new("kill")
        .args(["-USR2", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        committed_at(&state, "on-demand", Position::Offset(2)).await,
        "SIGUSR2 took no checkpoint"
    );
    drop(sender);
    running.await.unwrap().expect("run");
}

#[tokio::test]
async fn a_window_closing_takes_a_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (sender, source) = channel_source(16);
    let (sink, mut out) = channel_sink(16);
    let running = tokio::spawn(
        Pipeline::builder("on-close")
            .state(state.clone())
            .runtime(runtime())
            .checkpoint(CheckpointPolicy::at_end_only().and_on_window_close())
            .from(source)
            .then(plumber::window::Window::count("pairs", 2))
            .then(WasmPipe::new("count", guest("count")))
            .to(sink)
            .run(),
    );
    sender.send(Event::new("ada")).await.unwrap();
    // One event: the window is open, nothing to checkpoint for it yet.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        state
            .last_checkpoint("default/on-close")
            .await
            .unwrap()
            .map(|c| c.epoch),
        Some(0)
    );
    sender.send(Event::new("ada")).await.unwrap();
    out.recv().await.expect("output");
    assert!(
        committed_at(&state, "on-close", Position::Offset(2)).await,
        "the window's release took no checkpoint"
    );
    assert_eq!(
        pipe_state(&*state, "on-close", "count")
            .await
            .get("ada")
            .map(String::as_str),
        Some("2")
    );
    drop(sender);
    running.await.unwrap().expect("run");
}
