//! State migration at a hot swap: `migrate-v1` keeps counts as decimal
//! text (state version `1`), `migrate-v2` as 8-byte little-endian integers
//! (version `2`) and converts version 1's state in `migrate`, `migrate-v3`
//! declares version `3` without `migrate`. Counts must continue across a
//! swap (never reset), a failed migration must leave the old module and the
//! state as they were, and a SIGKILL during a migration must leave either
//! the old state and version or the new ones.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumber::admin::{AdminOptions, AdminServer};
use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::pipeline::{HandleError, Pipeline, PipelineBuilder, PipelineHandle};
use plumber::runtime::limits::PipeLimits;
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, Namespace, RedisOptions, RedisState, SharedState, SledState};
use plumber::step::WasmPipe;
use plumber::streams::{channel_sink, channel_source};
use plumber::supervisor::Supervisor;
use plumber::swap::{ModuleSource, SwapError};
use plumber::tenant::Tenants;
use plumber::Event;
use plumber_tests::{cache_dir, guest, ChannelRun};

/// A running pipeline fed through a channel, with everything it wrote and
/// the counts every key should have reached (the reference).
struct Running {
    run: ChannelRun,
    expected: HashMap<String, u64>,
}

impl Running {
    fn start(builder: PipelineBuilder) -> (Self, tokio::task::JoinHandle<()>) {
        let (run, task) = ChannelRun::start(builder, 1024);
        let running = Running {
            run,
            expected: HashMap::new(),
        };
        (running, task)
    }

    /// Sends one event per key (without waiting for output).
    async fn send(&mut self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            *self.expected.entry(key.clone()).or_default() += 1;
            self.run.send(Event::new(key)).await;
        }
    }

    async fn feed(&mut self, keys: impl IntoIterator<Item = String>) {
        self.send(keys).await;
        self.run.settle(Duration::from_secs(120)).await;
    }

    fn output(&self) -> Vec<String> {
        self.run.output()
    }

    /// Ends the run (its input closed, the pipeline finished), checks that
    /// every key counted 1, 2, 3, … to its expected count, and returns the
    /// expected counts.
    async fn finish(self, task: tokio::task::JoinHandle<()>) -> HashMap<String, u64> {
        let output = self.output();
        let Running { run, expected } = self;
        drop(run);
        task.await.unwrap();
        check_counts_continue(&output, &expected);
        expected
    }
}

fn key(i: usize) -> String {
    format!("k{i:06}")
}

fn pipeline(name: &str, state: SharedState, pipe: WasmPipe) -> PipelineBuilder {
    Pipeline::builder(name)
        .state(state)
        .delivery(Delivery::ExactlyOnce)
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(50)))
        .batch_size(512)
        .then(pipe)
}

/// Checks that the output lines `<key> <count>` count each key 1, 2, 3, …
/// in order (nothing lost, repeated or reset across swaps) and that every
/// key reached its expected count.
fn check_counts_continue(output: &[String], expected: &HashMap<String, u64>) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for line in output {
        let (key, n) = line.rsplit_once(' ').expect("`<key> <count>`");
        let n: u64 = n.parse().expect("a count");
        let count = seen.entry(key).or_default();
        *count += 1;
        assert_eq!(n, *count, "{key}: count {n} where {} was due", *count);
    }
    assert_eq!(seen.len(), expected.len());
    for (key, n) in expected {
        assert_eq!(seen.get(key.as_str()), Some(n), "{key}");
    }
}

/// The pipe's committed keys and values.
async fn committed(state: &SharedState, pipeline: &str) -> BTreeMap<String, Vec<u8>> {
    let namespace = Namespace::for_pipe(pipeline, "count");
    state
        .scan_prefix(namespace.prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k[namespace.prefix().len()..]).into_owned(),
                v,
            )
        })
        .collect()
}

/// The committed state version of the pipe.
async fn committed_version(state: &SharedState, pipeline: &str) -> Option<String> {
    let key = Namespace::for_pipe(pipeline, "count").state_version_key();
    state
        .get(&key)
        .await
        .unwrap()
        .map(|v| String::from_utf8(v).unwrap())
}

/// Version 1's encoding of every expected count.
fn as_text(expected: &HashMap<String, u64>) -> BTreeMap<String, Vec<u8>> {
    expected
        .iter()
        .map(|(k, n)| (k.clone(), n.to_string().into_bytes()))
        .collect()
}

/// Version 2's encoding of every expected count.
fn as_le(expected: &HashMap<String, u64>) -> BTreeMap<String, Vec<u8>> {
    expected
        .iter()
        .map(|(k, n)| (k.clone(), n.to_le_bytes().to_vec()))
        .collect()
}

/// v1 counts `keys` keys, v2 is swapped in while events keep coming, and
/// counts go on from where v1 left them.
async fn migrate_many_keys(state: SharedState, name: &str, keys: usize) {
    let builder = pipeline(
        name,
        state.clone(),
        WasmPipe::new("count", guest("migrate-v1")),
    );
    let handle = builder.handle();
    let (mut running, task) = Running::start(builder);
    running.feed((0..keys).map(key)).await;
    running.feed((0..keys).step_by(97).map(key)).await;
    assert_eq!(committed_version(&state, name).await.as_deref(), Some("1"));

    // Swap while events keep arriving.
    running.send((0..keys).step_by(13).map(key)).await;
    let swapped = handle
        .swap_module("count", ModuleSource::Path(guest("migrate-v2")))
        .await
        .expect("v2 accepted");
    let migration = swapped.migration.expect("a migration ran");
    println!(
        "{name}: migrated {} keys in {} migrate calls in {} ms",
        migration.keys,
        migration.calls,
        migration.took.as_millis()
    );
    assert_eq!((migration.from.as_str(), migration.to.as_str()), ("1", "2"));
    assert_eq!(migration.keys, keys);
    assert_eq!(migration.writes, keys);
    assert!(migration.calls >= keys / plumber::runtime::MIGRATE_BATCH_KEYS);
    running.feed((0..keys).step_by(7).map(key)).await;

    let expected = running.finish(task).await;
    assert_eq!(committed(&state, name).await, as_le(&expected));
    assert_eq!(committed_version(&state, name).await.as_deref(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_migrates_100k_keys_in_memory_and_counts_continue() {
    migrate_many_keys(Arc::new(MemoryState::new()), "mig-memory", 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_migrates_100k_keys_in_sled_and_counts_continue() {
    let dir = tempfile::tempdir().unwrap();
    let state: SharedState = Arc::new(SledState::open(dir.path().join("state")).unwrap());
    migrate_many_keys(state, "mig-sled", 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_migrates_100k_keys_in_redis_and_counts_continue() {
    let server = plumber_tests::RedisServer::start();
    let state: SharedState = Arc::new(
        RedisState::connect(&server.url(), RedisOptions::default())
            .await
            .expect("connect to Redis"),
    );
    migrate_many_keys(state, "mig-redis", 100_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_is_committed_by_the_checkpoint_of_the_switch() {
    // No checkpoint comes by itself: the only barrier after the events is
    // the one the swap asks for, so the migrated state must be in its commit.
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = Pipeline::builder("mig-commit")
        .state(state.clone())
        .delivery(Delivery::ExactlyOnce)
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_secs(3600)))
        .batch_size(64)
        .then(WasmPipe::new("count", guest("migrate-v1")));
    let handle = builder.handle();
    let (mut running, task) = Running::start(builder);
    running.feed((0..300).map(key)).await;
    running.feed((0..300).step_by(2).map(key)).await;
    handle
        .swap_module("count", ModuleSource::Path(guest("migrate-v2")))
        .await
        .expect("v2 accepted");
    let expected = running.expected.clone();
    // The swap answers at the barrier; its commit follows at once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while committed_version(&state, "mig-commit").await.as_deref() != Some("2") {
        assert!(
            Instant::now() < deadline,
            "the checkpoint of the switch did not commit the new state version"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(committed(&state, "mig-commit").await, as_le(&expected));
    drop(running);
    task.await.unwrap();
}

/// Starts v1 with `config` and `limits`, counts 2 000 keys, and returns
/// the running pipeline.
async fn v1_with(
    name: &str,
    state: &SharedState,
    config: serde_json::Value,
    limits: PipeLimits,
) -> (Running, tokio::task::JoinHandle<()>, PipelineHandle) {
    let builder = pipeline(
        name,
        state.clone(),
        WasmPipe::new("count", guest("migrate-v1"))
            .config(config)
            .limits(limits),
    );
    let handle = builder.handle();
    let (mut running, task) = Running::start(builder);
    running.feed((0..2000).map(key)).await;
    (running, task, handle)
}

async fn refused(handle: &PipelineHandle, module: &str) -> String {
    match handle
        .swap_module("count", ModuleSource::Path(guest(module)))
        .await
    {
        Err(HandleError::Swap(SwapError::Refused { message, .. })) => message,
        other => panic!("{module} not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_keeps_the_old_module_and_the_state_as_they_were() {
    let slow = PipeLimits {
        migrate_timeout_ms: 300,
        call_timeout_ms: 60_000,
        ..PipeLimits::default()
    };
    let cases = [
        (
            serde_json::json!({ "migrate_fail_on": "k001500" }),
            PipeLimits::default(),
            "refusing to migrate key `k001500`",
        ),
        (
            serde_json::json!({ "migrate_trap_on": "k000042" }),
            PipeLimits::default(),
            "trapped",
        ),
        (
            serde_json::json!({ "migrate_spin": 2_000_000 }),
            slow,
            "did not finish within its migrate_timeout_ms of 300 ms",
        ),
    ];
    for (index, (config, limits, reason)) in cases.into_iter().enumerate() {
        let name = format!("mig-fail-{index}");
        let state: SharedState = Arc::new(MemoryState::new());
        let (mut running, task, handle) = v1_with(&name, &state, config, limits).await;
        let v1_version = handle.modules()[0].1.version.clone();
        // Pending writes of the epoch at the swap must survive the failure.
        running.send((0..2000).step_by(3).map(key)).await;
        let message = refused(&handle, "migrate-v2").await;
        assert!(message.contains(reason), "{name}: {message}");
        assert_eq!(handle.modules()[0].1.version, v1_version, "{name}");
        running.feed((0..2000).step_by(5).map(key)).await;

        let expected = running.finish(task).await;
        assert_eq!(committed(&state, &name).await, as_text(&expected), "{name}");
        assert_eq!(committed_version(&state, &name).await.as_deref(), Some("1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_state_change_without_migrate_is_refused() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (mut running, task, handle) = v1_with(
        "mig-refuse",
        &state,
        serde_json::json!({}),
        PipeLimits::default(),
    )
    .await;
    let message = refused(&handle, "migrate-v3").await;
    assert!(
        message.contains(
            "the state is at version `1` and the module declares state version `3` but exports no `migrate`"
        ),
        "{message}"
    );
    running.feed((0..2000).step_by(2).map(key)).await;
    assert_eq!(
        committed_version(&state, "mig-refuse").await.as_deref(),
        Some("1")
    );

    let swapped = handle
        .swap_module("count", ModuleSource::Path(guest("migrate-v2")))
        .await
        .expect("v2 accepted");
    assert_eq!(swapped.migration.expect("migrated").keys, 2000);
    running.feed((0..2000).step_by(4).map(key)).await;
    // Back to v1 (it cannot read version 2), or to a module that declares
    // no version at all: both refused, v2 keeps counting.
    let back = refused(&handle, "migrate-v1").await;
    assert!(
        back.contains("the state is at version `2` and the module declares state version `1`"),
        "{back}"
    );
    let undeclared = refused(&handle, "swap-v1").await;
    assert!(
        undeclared.contains("the module declares no state version"),
        "{undeclared}"
    );
    assert_eq!(handle.modules()[0].1.version, swapped.version);
    running.feed((0..2000).step_by(8).map(key)).await;

    let expected = running.finish(task).await;
    assert_eq!(committed(&state, "mig-refuse").await, as_le(&expected));
    assert_eq!(
        committed_version(&state, "mig-refuse").await.as_deref(),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_0_1_0_guest_still_loads_and_its_state_is_carried_to_v2() {
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = pipeline(
        "mig-compat",
        state.clone(),
        WasmPipe::new("count", guest("compat-0-1-0")).config(serde_json::json!({"any": 1})),
    );
    let handle = builder.handle();
    let (mut running, task) = Running::start(builder);
    running.feed((0..500).map(key)).await;
    assert_eq!(committed_version(&state, "mig-compat").await, None);
    // The first module that declares a version: recorded, nothing migrated.
    let v1 = handle
        .swap_module("count", ModuleSource::Path(guest("migrate-v1")))
        .await
        .expect("v1 accepted");
    assert_eq!(v1.migration, None);
    running.feed((0..500).step_by(2).map(key)).await;
    let v2 = handle
        .swap_module("count", ModuleSource::Path(guest("migrate-v2")))
        .await
        .expect("v2 accepted");
    assert_eq!(v2.migration.expect("migrated").keys, 500);
    running.feed((0..500).step_by(3).map(key)).await;

    let expected = running.finish(task).await;
    assert_eq!(committed(&state, "mig-compat").await, as_le(&expected));
    assert_eq!(
        committed_version(&state, "mig-compat").await.as_deref(),
        Some("2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_422_with_the_reason_and_the_history_keeps_it() {
    let state: SharedState = Arc::new(MemoryState::new());
    let supervisor = Supervisor::new(Tenants::new(HashMap::new()));
    let (input, source) = channel_source(1024);
    let (sink, mut receiver) = channel_sink(1024);
    let builder = pipeline(
        "mig-admin",
        state.clone(),
        WasmPipe::new("count", guest("migrate-v1"))
            .config(serde_json::json!({ "migrate_fail_on": "k000007" })),
    )
    .from(source)
    .to(sink);
    let (_handle, task) = supervisor
        .start("mig-admin", "default", builder)
        .expect("start");
    let server = AdminServer::start(
        AdminOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
            module_dir: None,
        },
        supervisor.clone(),
    )
    .await
    .expect("admin server");
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("{base}/ready"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..20 {
        input.send(Event::new(key(i))).await.unwrap();
    }
    for _ in 0..20 {
        receiver.recv().await.expect("v1 output");
    }

    let response = client
        .post(format!("{base}/pipelines/mig-admin/pipes/count/module"))
        .header("Content-Type", "application/wasm")
        .body(std::fs::read(guest("migrate-v2")).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("refusing to migrate key `k000007`"), "{body}");
    assert!(body.contains("after 0 of 20 keys"), "{body}");

    let detail: serde_json::Value = client
        .get(format!("{base}/console/api/pipelines/mig-admin"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let detail_text = detail.to_string();
    assert!(
        detail_text.contains("refusing to migrate key `k000007`"),
        "{detail_text}"
    );

    // A second pipeline whose migration succeeds: 200, and the history
    // says what migrated.
    let (ok_input, ok_source) = channel_source(1024);
    let (ok_sink, mut ok_receiver) = channel_sink(1024);
    let ok_state: SharedState = Arc::new(MemoryState::new());
    let builder = pipeline(
        "mig-admin-ok",
        ok_state.clone(),
        WasmPipe::new("count", guest("migrate-v1")),
    )
    .from(ok_source)
    .to(ok_sink);
    let (_ok_handle, ok_task) = supervisor
        .start("mig-admin-ok", "default", builder)
        .expect("start");
    for i in 0..20 {
        ok_input.send(Event::new(key(i))).await.unwrap();
    }
    for _ in 0..20 {
        ok_receiver.recv().await.expect("v1 output");
    }
    let response = client
        .post(format!("{base}/pipelines/mig-admin-ok/pipes/count/module"))
        .header("Content-Type", "application/wasm")
        .body(std::fs::read(guest("migrate-v2")).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let detail: serde_json::Value = client
        .get(format!("{base}/console/api/pipelines/mig-admin-ok"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let migration = detail["pipes"][0]["swaps"][0]["migration"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        migration.starts_with(
            "state migrated from version `1` to `2`: 20 keys in 1 migrate calls, 20 writes"
        ),
        "{detail}"
    );
    ok_input.send(Event::new(key(3))).await.unwrap();
    let after = ok_receiver.recv().await.expect("v2 output");
    assert_eq!(String::from_utf8_lossy(&after.value), "k000003 2");
    drop(ok_input);
    ok_task.await.unwrap().unwrap();
    assert_eq!(
        committed(&ok_state, "mig-admin-ok")
            .await
            .get(&key(3))
            .cloned(),
        Some(2u64.to_le_bytes().to_vec())
    );

    // v1 still counts, from where it was.
    input.send(Event::new(key(7))).await.unwrap();
    let after = receiver.recv().await.expect("v1 output after the refusal");
    assert_eq!(String::from_utf8_lossy(&after.value), "k000007 2");
    drop(input);
    task.await.unwrap().unwrap();
    assert_eq!(
        committed(&state, "mig-admin").await.get(&key(7)).cloned(),
        Some(b"2".to_vec())
    );
    assert_eq!(
        committed_version(&state, "mig-admin").await.as_deref(),
        Some("1")
    );
}

/// Spawns `plumber run` with the migration's debug lines on stderr, and a
/// thread that passes each stderr line on.
fn spawn_logged(config: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut command = plumber_tests::kills::plumber_run(config);
    command.env("RUST_LOG", "warn,plumber_engine::runtime::migrate=debug");
    let mut child = command.spawn().expect("spawn plumber");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(strip_ansi(&line)).is_err() {
                return;
            }
        }
    });
    (child, received)
}

/// `line` without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

fn wait_for_lines(path: &Path, lines: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = std::fs::read_to_string(path)
            .map(|text| text.lines().count())
            .unwrap_or(0);
        if have >= lines {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "plumber ended early with {have} of {lines} lines"
        );
        assert!(Instant::now() < deadline, "{have} of {lines} lines");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pipe's committed state and version in the sled directory `dir`
/// (opened while no plumber runs).
fn sled_snapshot(dir: &Path) -> (BTreeMap<String, Vec<u8>>, Option<String>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let state: SharedState = Arc::new(SledState::open(dir).unwrap());
        let values = committed(&state, "mig-kill").await;
        let version = committed_version(&state, "mig-kill").await;
        (values, version)
    })
}

#[test]
fn a_sigkill_during_a_migration_leaves_old_state_or_new_state_never_a_mix() {
    const KEYS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("count.wasm");
    std::fs::copy(guest("migrate-v1"), &module).unwrap();
    let input = dir.path().join("in.txt");
    let out = dir.path().join("out.txt");
    let state_dir = dir.path().join("state");
    let mut events: Vec<String> = (0..KEYS).map(key).collect();
    events.extend((0..KEYS).step_by(3).map(key));
    std::fs::write(
        &input,
        events.iter().map(|k| format!("{k}\n")).collect::<String>(),
    )
    .unwrap();
    let config = serde_json::json!({
        "name": "mig-kill",
        "delivery": "exactly_once",
        "state": { "type": "sled", "path": state_dir },
        "checkpoint": { "interval_ms": 50 },
        "batch_size": 100,
        "from": { "type": "file", "path": input, "follow_ms": 20 },
        "pipeline": [
            { "name": "count", "type": "wasm", "module": module, "watch_module_ms": 50,
              // Busy work: about a second per batch of 1 024 keys.
              "config": { "migrate_spin": 300_000 },
              "limits": { "call_timeout_ms": 60_000, "migrate_timeout_ms": 120_000 } }
        ],
        "to": { "type": "file", "path": out }
    });
    let config_path = dir.path().join("mig-kill.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    // v1 counts everything, then the module file becomes v2 and the
    // watcher swaps it in; the process is killed after the first batch of
    // the migration.
    let (mut child, lines) = spawn_logged(&config_path);
    wait_for_lines(&out, events.len(), &mut child);
    let staged = dir.path().join("count.wasm.new");
    std::fs::copy(guest("migrate-v2"), &staged).unwrap();
    std::fs::rename(&staged, &module).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no migration batch logged");
        if line.contains("state migration batch done") {
            assert!(line.contains("done=1024"), "{line}");
            break;
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();

    let mut expected: HashMap<String, u64> = HashMap::new();
    for k in &events {
        *expected.entry(k.clone()).or_default() += 1;
    }
    let (values, version) = sled_snapshot(&state_dir);
    assert_eq!(version.as_deref(), Some("1"), "the old version");
    assert_eq!(values, as_text(&expected), "the old state, untouched");

    // The restart runs the configured module (now v2): it migrates at
    // start, and the next events count on from v1's counts.
    let (mut child, lines) = spawn_logged(&config_path);
    let more: Vec<String> = (0..KEYS).step_by(2).map(key).collect();
    let mut appended = std::fs::OpenOptions::new()
        .append(true)
        .open(&input)
        .unwrap();
    std::io::Write::write_all(
        &mut appended,
        more.iter()
            .map(|k| format!("{k}\n"))
            .collect::<String>()
            .as_bytes(),
    )
    .unwrap();
    events.extend(more.iter().cloned());
    for k in &more {
        *expected.entry(k.clone()).or_default() += 1;
    }
    wait_for_lines(&out, events.len(), &mut child);
    // Let the last events' checkpoint land, then kill again.
    std::thread::sleep(Duration::from_millis(500));
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let migrated_at_start = lines.try_iter().any(|l| l.contains("done=3000"));
    assert!(migrated_at_start, "the restart migrated all 3000 keys");

    let (values, version) = sled_snapshot(&state_dir);
    assert_eq!(version.as_deref(), Some("2"), "the new version");
    assert_eq!(values, as_le(&expected), "the new state, every key");
    let output: Vec<String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(output.len(), events.len());
    check_counts_continue(&output, &expected);
}

/// `examples/guests/migrate-v2-py` built by its script (componentize-py),
/// once per test process.
fn python_v2() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = plumber_tests::workspace_root();
            let out = root
                .join("target")
                .join("python-guests")
                .join("migrate_v2_py.wasm");
            let output = std::process::Command::new("bash")
                .arg(root.join("examples/guests/migrate-v2-py/build.sh"))
                .arg(&out)
                .output()
                .expect("run the Python build script");
            assert!(
                output.status.success(),
                "building migrate-v2-py failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
            out
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_v2_migrates_the_state_of_a_rust_v1() {
    const KEYS: usize = 10_000;
    let module = python_v2();
    // A migration that fails in Python: refused, v1 and its state stay.
    let failing: SharedState = Arc::new(MemoryState::new());
    let (mut running, task, handle) = v1_with(
        "mig-py-fail",
        &failing,
        serde_json::json!({ "migrate_fail_on": "k000999" }),
        PipeLimits::default(),
    )
    .await;
    let message = match handle
        .swap_module("count", ModuleSource::Path(module.clone()))
        .await
    {
        Err(HandleError::Swap(SwapError::Refused { message, .. })) => message,
        other => panic!("the failing Python migration was not refused: {other:?}"),
    };
    assert!(
        message.contains("refusing to migrate key `k000999`"),
        "{message}"
    );
    running.feed((0..2000).step_by(9).map(key)).await;
    let expected = running.finish(task).await;
    assert_eq!(committed(&failing, "mig-py-fail").await, as_text(&expected));

    let state: SharedState = Arc::new(MemoryState::new());
    let builder = pipeline(
        "mig-py",
        state.clone(),
        WasmPipe::new("count", guest("migrate-v1")),
    );
    let handle = builder.handle();
    let (mut running, task) = Running::start(builder);
    running.feed((0..KEYS).map(key)).await;
    running.send((0..KEYS).step_by(11).map(key)).await;
    let swapped = handle
        .swap_module("count", ModuleSource::Path(module))
        .await
        .expect("the Python v2 accepted");
    let migration = swapped.migration.expect("a migration ran");
    assert_eq!((migration.from.as_str(), migration.to.as_str()), ("1", "2"));
    assert_eq!(migration.keys, KEYS);
    running.feed((0..KEYS).step_by(3).map(key)).await;
    let expected = running.finish(task).await;
    assert_eq!(committed(&state, "mig-py").await, as_le(&expected));
    assert_eq!(
        committed_version(&state, "mig-py").await.as_deref(),
        Some("2")
    );
}
