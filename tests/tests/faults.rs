//! Backend faults: a Redis server that restarts mid-stream, and one that
//! stays down.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::pipeline::{Pipeline, PipelineBuilder, PipelineError};
use plumber::runtime::Runtime;
use plumber::state::{Namespace, RedisOptions, RedisState, SharedState, StateError};
use plumber::step::WasmPipe;
use plumber::streams::{channel_sink, FileSource};
use plumber_tests::{cache_dir, guest, RedisServer};

const KEYS: u64 = 5;

async fn redis(server: &RedisServer, reconnect_timeout: Duration) -> SharedState {
    redis_with_chunks(server, reconnect_timeout, RedisOptions::COMMIT_CHUNK_KEYS).await
}

/// Commits of more than `chunk` writes are staged in chunks.
async fn redis_with_chunks(
    server: &RedisServer,
    reconnect_timeout: Duration,
    chunk: usize,
) -> SharedState {
    let options = RedisOptions {
        reconnect_timeout,
        commit_chunk_keys: chunk,
        ..RedisOptions::default()
    };
    Arc::new(
        RedisState::connect(&server.url(), options)
            .await
            .expect("connect"),
    )
}

fn pipeline(input: &std::path::Path, state: SharedState) -> PipelineBuilder {
    Pipeline::builder("faults")
        .state(state)
        .delivery(Delivery::ExactlyOnce)
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(20)))
        .batch_size(10)
        .channel_capacity(1)
        .from(FileSource::new(input))
        .then(
            WasmPipe::new("counter", guest("key-counter"))
                .config(serde_json::json!({ "keys": KEYS })),
        )
}

fn ids(dir: &std::path::Path, events: u64) -> std::path::PathBuf {
    let input = dir.join("ids.txt");
    std::fs::write(
        &input,
        (0..events).map(|id| format!("{id}\n")).collect::<String>(),
    )
    .unwrap();
    input
}

#[tokio::test]
async fn a_redis_restart_mid_stream_loses_nothing_and_stays_exact() {
    restart_mid_stream(RedisOptions::COMMIT_CHUNK_KEYS).await;
}

/// The same with every commit staged in chunks of two writes: a restart
/// that cuts a commit between its chunks leaves nothing of it, and the
/// retry commits it whole.
#[tokio::test]
async fn a_redis_restart_mid_stream_with_chunked_commits_stays_exact() {
    restart_mid_stream(2).await;
}

async fn restart_mid_stream(chunk: usize) {
    const EVENTS: u64 = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let input = ids(dir.path(), EVENTS);
    let mut server = RedisServer::start();
    let state = redis_with_chunks(&server, Duration::from_secs(30), chunk).await;
    let (sink, mut out) = channel_sink(1);
    let running = tokio::spawn(pipeline(&input, state.clone()).to(sink).run());

    let mut lines = Vec::new();
    while lines.len() < 500 {
        lines.push(out.recv().await.expect("output").value_lossy().into_owned());
    }
    // The pipeline is held back by the sink; take Redis away under it.
    server.stop();
    server.restart_after(Duration::from_millis(1500));
    let stopped = Instant::now();
    while let Some(event) = out.recv().await {
        lines.push(event.value_lossy().into_owned());
    }
    let report = running
        .await
        .unwrap()
        .expect("the pipeline rode out the restart");
    assert!(
        stopped.elapsed() >= Duration::from_secs(1),
        "the outage was not felt"
    );
    assert!(report.checkpoints >= 1);

    // Every id once, each key's counts 1..n in order.
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for line in &lines {
        let parts: Vec<u64> = line.split(' ').map(|p| p.parse().unwrap()).collect();
        assert!(seen.insert(parts[0]), "id {} twice", parts[0]);
        let previous = last.insert(parts[1], parts[2]).unwrap_or(0);
        assert_eq!(parts[2], previous + 1, "{line}");
    }
    assert_eq!(seen.len() as u64, EVENTS);
    let namespace = Namespace::for_pipe("faults", "counter");
    for key in 0..KEYS {
        let stored = state.get(&namespace.key(&format!("k{key}"))).await.unwrap();
        assert_eq!(
            stored,
            Some((EVENTS / KEYS).to_string().into_bytes()),
            "key {key}"
        );
    }
}

#[tokio::test]
async fn redis_down_past_the_timeout_stops_the_pipeline_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let input = ids(dir.path(), 3_000);
    let server = RedisServer::start();
    let state = redis(&server, Duration::from_millis(500)).await;
    let (sink, mut out) = channel_sink(1);
    let running = tokio::spawn(pipeline(&input, state).to(sink).run());
    for _ in 0..100 {
        out.recv().await.expect("output");
    }
    server.stop();
    let stopped = Instant::now();
    // Keep reading so that nothing but the backend holds the pipeline back.
    let drain = tokio::spawn(async move { while out.recv().await.is_some() {} });
    let error = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the pipeline gave up instead of spinning")
        .unwrap()
        .expect_err("Redis is gone");
    drain.await.unwrap();
    assert!(stopped.elapsed() < Duration::from_secs(30));
    match &error {
        PipelineError::State {
            source: StateError::Unavailable { address, .. },
            ..
        } => assert_eq!(address, &server.address()),
        other => panic!("expected the backend to be unavailable, got: {other}"),
    }
}

/// A process paused past its lease (a zombie) goes on with its batch when it
/// resumes: once a newer process has claimed the pipeline and committed
/// beyond the zombie's position, the zombie's next state read must stop it
/// (a fenced read), not hand it the newer state to compute outputs with
/// (they would be published before its commit is refused), and not become
/// an event error that the pipe's policy would dead-letter.
#[tokio::test]
async fn a_read_after_a_newer_process_claimed_the_pipeline_stops_it() {
    const EVENTS: u64 = 3_000;
    const MANY_KEYS: u64 = 1_000;
    // The value the new owner committed for every key the zombie has not
    // read yet: a count derived from it would be far above 1.
    const NEWER: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let input = ids(dir.path(), EVENTS);
    let server = RedisServer::start();
    let state = redis(&server, Duration::from_secs(10)).await;
    let (sink, mut out) = channel_sink(1);
    let (dead, mut letters) = channel_sink(EVENTS as usize);
    let builder = Pipeline::builder("faults")
        .state(state)
        .delivery(Delivery::ExactlyOnce)
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(20)))
        .batch_size(10)
        .channel_capacity(1)
        .from(FileSource::new(&input))
        .then(
            WasmPipe::new("counter", guest("key-counter"))
                .config(serde_json::json!({ "keys": MANY_KEYS }))
                .on_error(plumber::step::OnError::DeadLetter),
        )
        .dead_letter(dead)
        .to(sink);
    let running = tokio::spawn(builder.run());

    let mut lines = Vec::new();
    while lines.len() < 100 {
        lines.push(out.recv().await.expect("output").value_lossy().into_owned());
    }
    // Held back by the sink. A newer process claims the pipeline and
    // commits every key at NEWER.
    let newer = redis(&server, Duration::from_secs(10)).await;
    // (Its checkpoints are the default tenant's.)
    let fence = newer.claim("default/faults").await.unwrap();
    let namespace = Namespace::for_pipe("faults", "counter");
    let writes: plumber::state::WriteSet = (0..MANY_KEYS)
        .map(|key| {
            (
                namespace.key(&format!("k{key}")),
                Some(NEWER.to_string().into_bytes()),
            )
        })
        .collect();
    let mut record = plumber::checkpoint::CheckpointRecord::new(
        "default/faults",
        1_000,
        plumber::checkpoint::Position::Offset(EVENTS),
    );
    record.fence = fence;
    newer.commit(&record, &[writes]).await.unwrap();

    while let Some(event) = out.recv().await {
        lines.push(event.value_lossy().into_owned());
    }
    let error = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the pipeline stopped")
        .unwrap()
        .expect_err("a newer process owns the pipeline");
    match &error {
        PipelineError::State {
            source: StateError::Fenced { ours, newer, .. },
            ..
        } => assert_eq!(*newer, fence, "ours {ours}"),
        other => panic!("expected the pipeline fenced, got: {other:#?}"),
    }
    // Every output was computed from the zombie's own state: counts go
    // 1, 2, ... per key, none from the newer owner's values.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for line in &lines {
        let parts: Vec<u64> = line.split(' ').map(|p| p.parse().unwrap()).collect();
        let previous = last.insert(parts[1], parts[2]).unwrap_or(0);
        assert_eq!(
            parts[2],
            previous + 1,
            "computed from the newer state: {line}"
        );
    }
    assert!((lines.len() as u64) < EVENTS, "the zombie ran to the end");
    // The refused read was not blamed on its event.
    let mut dead_lettered = Vec::new();
    while let Ok(letter) = letters.try_recv() {
        dead_lettered.push(letter.value_lossy().into_owned());
    }
    assert!(dead_lettered.is_empty(), "dead-lettered: {dead_lettered:?}");
}
