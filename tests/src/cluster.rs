//! The scale-out tests' harness (`tests/tests/cluster*.rs`): clustered
//! pipeline configs, `plumber worker` processes and their ownership logs,
//! the oracle pipeline (events with message ids through a key counter on a
//! 3-node NATS cluster and Redis) and its exactly-once check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use async_nats::jetstream;
use plumber_cluster::partition::partition_of;
use plumber_cluster::ClusterPipeline;

use crate as harness;

/// Debian's nats-server 2.9, which drops stream subject transforms;
/// `.ci/run` installs it (`apt-get install nats-server`).
pub const OLD_NATS_SERVER: &str = "/usr/sbin/nats-server";

pub fn plumber(args: &[&str]) -> Output {
    Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber")
}

/// As [`plumber`], for a command expected to exit by itself (a refusal):
/// one still running after `limit` is killed and the test fails, rather
/// than waiting for ever on a worker that started when it should not have.
pub fn plumber_exiting_within(args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run plumber");
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().expect("wait for plumber").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("plumber's output");
            panic!(
                "`plumber {}` still ran after {limit:?} (killed):\n{}",
                args.join(" "),
                text(&output)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().expect("plumber's output")
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A clustered pipeline config: `partitions` partitions of stream `IN`
/// (`in.<key>`) on `urls`, counting keys into Redis at `redis`.
pub fn cluster_config(urls: &[String], partitions: u32, redis: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "keys",
        "state": { "type": "redis", "url": redis },
        "cluster": { "url": urls, "partitions": partitions },
        "from": {
            "type": "jetstream", "url": urls[0], "stream": "IN", "consumer": "keys",
            "subjects": ["in.*"]
        },
        "pipeline": [
            { "name": "count", "type": "wasm", "module": harness::guest("key-counter"),
              "config": { "keys": 1000 } }
        ],
        "to": { "type": "jetstream", "url": urls[0], "subject": "out" }
    })
}

pub fn write_config(dir: &Path, name: &str, config: &serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(config).unwrap()).unwrap();
    path
}

/// Publishes `x` to `in.<key>` for each key, waiting for the acks in
/// chunks (the client bounds the acks in flight).
pub async fn publish_keys(context: &jetstream::Context, keys: &[String]) {
    for chunk in keys.chunks(500) {
        let mut acks = Vec::with_capacity(chunk.len());
        for key in chunk {
            acks.push(
                context
                    .publish(format!("in.{key}"), "x".into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

pub fn old_nats_server() -> PathBuf {
    let path = PathBuf::from(OLD_NATS_SERVER);
    assert!(
        path.is_file(),
        "{OLD_NATS_SERVER} (Debian's nats-server 2.9) is missing: the version gate is tested \
         against it; install it with `apt-get install nats-server` (.ci/run does)"
    );
    path
}

// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Workers: issue test 3 (three workers, 64 partitions, no faults)

/// Events in the oracle runs: 100,000 in CI, 1,000,000 with PLUMBER_SOAK=1.
pub fn oracle_events() -> u64 {
    if std::env::var("PLUMBER_SOAK").is_ok_and(|v| v == "1") {
        1_000_000
    } else {
        100_000
    }
}

/// Keys of the oracle runs: event `id` has key `id % oracle_keys()`, so
/// each key's count goes 1..=events/keys. A tenth of [`oracle_events`]:
/// 10,000 in CI, the 100,000 with PLUMBER_SOAK=1; each key counts
/// to 10, so "counts exactly 1..n" checks order and loss within a key.
pub fn oracle_keys() -> u64 {
    // Read once: the oracle's loops ask for every event.
    static KEYS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KEYS.get_or_init(|| oracle_events() / 10)
}

/// A `plumber worker` process, its log in a file; killed on drop.
pub struct WorkerProcess {
    pub id: String,
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl WorkerProcess {
    pub fn start(config: &Path, id: &str, dir: &Path) -> WorkerProcess {
        Self::spawn(config, id, dir, &[], &[])
    }

    /// `plumber worker CONFIG --id ID` with `extra` arguments and `env`
    /// added, its log in `<dir>/<id>.log`.
    fn spawn(
        config: &Path,
        id: &str,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> WorkerProcess {
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(harness::plumber_binary())
            .arg("--cache-dir")
            .arg(harness::cache_dir())
            .args(["worker", config.to_str().unwrap(), "--id", id])
            .args(extra)
            // PLUMBER_WORKER_LOG (a RUST_LOG filter) to see more when
            // looking into a failure.
            .env(
                "RUST_LOG",
                std::env::var("PLUMBER_WORKER_LOG")
                    .unwrap_or_else(|_| "warn,plumber_cluster=info".to_owned()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(name, value)| (name, value)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start plumber worker");
        WorkerProcess {
            id: id.to_owned(),
            child,
            log,
        }
    }

    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// SIGTERM, then the exit status within 60 s.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(std::time::Duration::from_secs(60))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // PLUMBER_WORKER_LOG_DIR keeps the logs (the test's directory goes).
        if let Ok(dir) = std::env::var("PLUMBER_WORKER_LOG_DIR") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&self.log, Path::new(&dir).join(format!("{}.log", self.id)));
        }
    }
}

/// One ownership change a worker logged.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub worker: String,
    pub partition: u32,
    pub revision: u64,
    pub at_us: u64,
    pub started: bool,
}

/// The `partition started` / `partition stopped` lines of a worker log.
pub fn ownership_changes(log: &str) -> Vec<Ownership> {
    let mut changes = Vec::new();
    for line in log.lines() {
        let started = line.contains("partition started");
        if !started && !line.contains("partition stopped") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|token| token.strip_prefix(&format!("{name}=")))
                .map(|value| value.trim_matches('"').to_owned())
        };
        changes.push(Ownership {
            worker: field("worker").unwrap(),
            partition: field("partition").unwrap().parse().unwrap(),
            revision: field("revision").unwrap().parse().unwrap(),
            at_us: field("at_us").unwrap().parse().unwrap(),
            started,
        });
    }
    changes
}

/// Checks that no two workers ran a partition at once: per partition, the
/// intervals from `started` to `stopped` (each lease revision's) do not
/// overlap, and a later owner's lease has a larger revision. Returns how
/// many intervals there were.
pub fn assert_one_owner_at_a_time(changes: &[Ownership], partitions: u32) -> usize {
    assert_one_owner_at_a_time_killed(changes, partitions, &[])
}

/// As [`assert_one_owner_at_a_time`], where the workers of `killed` were
/// killed at the given time (µs): their partitions stopped then.
pub fn assert_one_owner_at_a_time_killed(
    changes: &[Ownership],
    partitions: u32,
    killed: &[(&str, u64)],
) -> usize {
    let mut intervals = 0;
    for partition in 0..partitions {
        let mut spans: Vec<(u64, u64, u64, String)> = Vec::new();
        for start in changes
            .iter()
            .filter(|c| c.partition == partition && c.started)
        {
            let stop = changes
                .iter()
                .filter(|c| {
                    c.partition == partition
                        && !c.started
                        && c.worker == start.worker
                        && c.at_us >= start.at_us
                })
                .map(|c| c.at_us)
                .min()
                .or_else(|| {
                    killed
                        .iter()
                        .find(|(worker, _)| *worker == start.worker)
                        .map(|(_, at)| *at)
                })
                .unwrap_or(u64::MAX);
            spans.push((start.at_us, stop, start.revision, start.worker.clone()));
        }
        spans.sort();
        for pair in spans.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "partition {partition} had two owners at once: {pair:?}"
            );
            assert!(
                pair[0].2 < pair[1].2,
                "partition {partition}: a later owner has a smaller lease revision: {pair:?}"
            );
        }
        assert!(!spans.is_empty(), "partition {partition} never ran");
        intervals += spans.len();
    }
    intervals
}

/// Publishes events `ids` to `in.<id % oracle_keys()>`, value the id, with
/// message id `e<id>`.
pub async fn publish_events(context: &jetstream::Context, ids: std::ops::Range<u64>) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for id in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("e{id}").as_str());
            acks.push(
                context
                    .publish_with_headers(
                        format!("in.{}", id % oracle_keys()),
                        headers,
                        id.to_string().into(),
                    )
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// Creates the output stream `OUT` (subject `out`, R3, a 10 minute
/// duplicate window).
pub async fn create_output_stream(context: &jetstream::Context) {
    context
        .create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out".into()],
            num_replicas: 3,
            duplicate_window: plumber_cluster::init::DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// Waits until `OUT` holds `expected` messages (or fails after `limit`).
/// Every worker's log, each headed by its id (for failure messages).
pub fn logs_of(workers: &[WorkerProcess]) -> String {
    workers
        .iter()
        .map(|w| format!("--- {}\n{}", w.id, w.log_text()))
        .collect()
}

/// Workers `w1`, `w2` and `w3` of the oracle pipeline.
pub fn start_three_workers(setup: &OracleSetup) -> Vec<WorkerProcess> {
    ["w1", "w2", "w3"]
        .iter()
        .map(|id| WorkerProcess::start(&setup.path, id, setup.dir.path()))
        .collect()
}

/// Three workers, the first half of the events published in the background
/// (the second half is published after the fault: every partition then has
/// events to process, and commit, after its take-over), and a fifth of the
/// output waited for: the workers are mid-stream. Returns the workers and
/// the publisher of the first half.
pub async fn three_workers_mid_stream(
    setup: &OracleSetup,
    events: u64,
) -> (Vec<WorkerProcess>, tokio::task::JoinHandle<()>) {
    let workers = start_three_workers(setup);
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, 0..events / 2).await })
    };
    wait_for_output(
        &setup.context,
        events / 5,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    (workers, publisher)
}

pub async fn wait_for_output(
    context: &jetstream::Context,
    expected: u64,
    limit: std::time::Duration,
    logs: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut stream = context.get_stream("OUT").await.unwrap();
        let messages = stream.info().await.unwrap().state.messages;
        if messages >= expected {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {messages} of {expected} outputs after {limit:?}:\n{}",
            logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The counters task `task` of `pipeline` has committed: the counting
/// guest's state (`k<key>` → its count), as (key, count).
pub async fn committed_counts(pipeline: &ClusterPipeline, task: u32) -> Vec<(u64, i64)> {
    let config = pipeline.partition_config(task).unwrap();
    let state = config.open_state().await.unwrap();
    let namespace = plumber::state::Namespace::for_tenant_pipe(
        plumber::state::DEFAULT_TENANT,
        &config.name,
        "count",
    );
    let prefix = namespace.prefix();
    state
        .scan_prefix(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, value)| {
            let key = std::str::from_utf8(&key[prefix.len()..]).unwrap();
            let key: u64 = key.strip_prefix('k').unwrap().parse().unwrap();
            let value: i64 = String::from_utf8(value).unwrap().parse().unwrap();
            (key, value)
        })
        .collect()
}

/// The oracle: every id in `0..events` exactly once in `OUT`, each key's
/// counts exactly 1..n in id order, and the committed Redis state of all
/// partitions equal to the truth (each key in its own partition only).
pub async fn assert_oracle(context: &jetstream::Context, pipeline: &ClusterPipeline, events: u64) {
    // The output.
    let output = read_stream_messages(context, "OUT").await;
    // Per id: the first message's description (stream sequence and
    // message id), to say which two messages a duplicate is.
    let mut seen: Vec<Option<String>> = vec![None; events as usize];
    let mut twice = Vec::new();
    let mut wrong = Vec::new();
    for message in &output {
        let text = &message.payload;
        let parts: Vec<u64> = text.split(' ').map(|p| p.parse().unwrap()).collect();
        let (id, key, count) = (parts[0], parts[1], parts[2]);
        assert_eq!(key, id % oracle_keys(), "{text}");
        let described = format!(
            "[{text:?} at stream sequence {}, stored at {} µs, Nats-Msg-Id {:?}]",
            message.sequence, message.stored_us, message.id
        );
        match &seen[id as usize] {
            Some(first) => twice.push(format!("id {id}: {first} and {described}")),
            None => seen[id as usize] = Some(described),
        }
        // The id's rank among its key's ids, from 1.
        if count != id / oracle_keys() + 1 {
            wrong.push(text.clone());
        }
    }
    assert!(
        twice.is_empty(),
        "{} ids are in the output twice: {twice:?}",
        twice.len()
    );
    let missing = seen.iter().filter(|s| s.is_none()).count();
    assert_eq!(missing, 0, "{missing} ids missing from the output");
    assert!(
        wrong.is_empty(),
        "{} wrong counts, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    assert_eq!(output.len() as u64, events, "extra outputs");

    // The committed state.
    let mut counts: BTreeMap<u64, (i64, u32)> = BTreeMap::new();
    for partition in 0..pipeline.names.partitions {
        for (key, value) in committed_counts(pipeline, partition).await {
            assert_eq!(
                partition_of(key.to_string().as_bytes(), pipeline.names.partitions),
                partition,
                "key {key} counted in partition {partition}"
            );
            assert!(
                counts.insert(key, (value, partition)).is_none(),
                "key {key} in two partitions"
            );
        }
    }
    assert_eq!(counts.len() as u64, oracle_keys().min(events));
    let per_key = events / oracle_keys();
    for (key, (value, _)) in &counts {
        assert_eq!(*value as u64, per_key, "key {key}");
    }
}

/// A 3-node cluster and Redis with the 64-partition key-counting pipeline
/// initialised and its output stream created.
pub struct OracleSetup {
    /// One such run at a time: each has four NATS and Redis servers and
    /// three or four workers, too much for two cores twice over.
    _alone: tokio::sync::MutexGuard<'static, ()>,
    pub cluster: harness::NatsCluster,
    pub redis: harness::RedisServer,
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub pipeline: ClusterPipeline,
    pub context: jetstream::Context,
}

/// Serialises the oracle runs (see [`OracleSetup`]).
pub static ORACLE_RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn oracle_setup(partitions: u32) -> OracleSetup {
    oracle_setup_with(partitions, |_| {}).await
}

/// A 3-node cluster and Redis, the config `make_config(NATS URLs, Redis
/// URL)` written to `file` and initialised, its output stream created
/// first, by name (`cluster init` then finds it, and would create one for
/// `out` if there were none).
pub async fn setup_from(
    file: &str,
    make_config: impl FnOnce(&[String], &str) -> serde_json::Value,
) -> OracleSetup {
    let alone = ORACLE_RUNS.lock().await;
    let cluster = harness::NatsCluster::start();
    cluster.ready().await;
    let redis = harness::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = make_config(&cluster.urls(), &redis.url());
    let path = write_config(dir.path(), file, &config);
    let pipeline = ClusterPipeline::load(&path).unwrap();
    let context = jetstream::new(async_nats::connect(cluster.urls()).await.unwrap());
    create_output_stream(&context).await;
    plumber_cluster::init::init(&pipeline).await.unwrap();
    OracleSetup {
        _alone: alone,
        cluster,
        redis,
        dir,
        path,
        pipeline,
        context,
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// In a two-stage pipeline of `partitions` partitions a stage (tasks
/// `partitions..` are stage 2's): the index of the worker holding the most
/// stage-2 tasks now, all the tasks it holds, and its stage-2 tasks.
///
/// # Panics
///
/// When no worker holds a stage-2 task (with the workers' logs).
pub fn stage_2_victim(workers: &[WorkerProcess], partitions: u32) -> (usize, Vec<u32>, Vec<u32>) {
    let now: Vec<Ownership> = workers
        .iter()
        .flat_map(|w| ownership_changes(&w.log_text()))
        .collect();
    let (victim, held) = workers
        .iter()
        .enumerate()
        .map(|(index, worker)| (index, held_at_end(&now, &worker.id)))
        .max_by_key(|(_, held)| held.iter().filter(|task| **task >= partitions).count())
        .unwrap();
    let stage_2: Vec<u32> = held
        .iter()
        .copied()
        .filter(|task| *task >= partitions)
        .collect();
    assert!(
        !stage_2.is_empty(),
        "no worker owns a stage-2 task:\n{}",
        logs_of(workers)
    );
    (victim, held, stage_2)
}

/// The partitions `worker` holds at the end of its log (started, not
/// stopped).
pub fn held_at_end(changes: &[Ownership], worker: &str) -> Vec<u32> {
    let mut held = std::collections::BTreeSet::new();
    let mut mine: Vec<&Ownership> = changes.iter().filter(|c| c.worker == worker).collect();
    mine.sort_by_key(|c| c.at_us);
    for change in mine {
        if change.started {
            held.insert(change.partition);
        } else {
            held.remove(&change.partition);
        }
    }
    held.into_iter().collect()
}

/// The first `partition started` of `partition` by a worker other than
/// `not` at or after `after_us`.
pub fn first_start_after(
    changes: &[Ownership],
    partition: u32,
    not: &str,
    after_us: u64,
) -> Option<u64> {
    changes
        .iter()
        .filter(|c| c.started && c.partition == partition && c.worker != not && c.at_us >= after_us)
        .map(|c| c.at_us)
        .min()
}

/// The fence of each partition's last checkpoint (0 for none).
pub async fn commit_fences(pipeline: &ClusterPipeline, partitions: &[u32]) -> BTreeMap<u32, u64> {
    last_checkpoints(pipeline, partitions)
        .await
        .into_iter()
        .map(|(partition, record)| (partition, record.map_or(0, |r| r.fence)))
        .collect()
}

/// Each partition's last checkpoint record, read from the state backend.
pub async fn last_checkpoints(
    pipeline: &ClusterPipeline,
    partitions: &[u32],
) -> BTreeMap<u32, Option<plumber::checkpoint::CheckpointRecord>> {
    let mut records = BTreeMap::new();
    for partition in partitions {
        let config = pipeline.partition_config(*partition).unwrap();
        let state = config.open_state().await.unwrap();
        let scope = plumber::state::checkpoint_scope(plumber::state::DEFAULT_TENANT, &config.name);
        records.insert(*partition, state.last_checkpoint(&scope).await.unwrap());
    }
    records
}

/// Waits until each of `partitions` has a checkpoint committed by a new
/// owner (a fence above `fences`' and a commit time after `after_ms`, ms
/// since the epoch), reading the checkpoint records from the state
/// backend; returns how long after `after_ms` the last of them committed,
/// and which partition that was.
pub async fn wait_for_commits_after(
    pipeline: &ClusterPipeline,
    fences: &BTreeMap<u32, u64>,
    after_ms: u64,
    limit: std::time::Duration,
) -> (std::time::Duration, u32) {
    let mut states = Vec::new();
    for (partition, fence) in fences {
        let config = pipeline.partition_config(*partition).unwrap();
        let state = config.open_state().await.unwrap();
        let scope = plumber::state::checkpoint_scope(plumber::state::DEFAULT_TENANT, &config.name);
        states.push((*partition, *fence, state, scope));
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut latest = (0, 0);
        let mut waiting = Vec::new();
        for (partition, fence, state, scope) in &states {
            match state.last_checkpoint(scope).await.unwrap() {
                Some(record) if record.fence > *fence && record.committed_at_ms > after_ms => {
                    latest = latest.max((record.committed_at_ms - after_ms, *partition));
                }
                _ => waiting.push(*partition),
            }
        }
        if waiting.is_empty() {
            return (std::time::Duration::from_millis(latest.0), latest.1);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "partitions {waiting:?} did not commit again under a new owner within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// Two stages through a `repartition` step (tests/tests/cluster_repartition.rs)

/// Input keys of the two-stage oracle: event `id` is published to
/// `in.<id % INPUT_KEYS>`, so the input partition of an event says nothing
/// of the key it is counted by (`id % oracle_keys()`), and every key's events
/// come through many input partitions.
pub const INPUT_KEYS: u64 = 9_973;

/// The key an event of the two-stage oracle is shuffled by: `u<id % oracle_keys()>`.
pub fn shuffle_key(id: u64) -> String {
    format!("u{}", id % oracle_keys())
}

/// A clustered pipeline of two stages: stage 1 reads `in.*` (keyed by
/// `id % INPUT_KEYS`) and only shuffles, by the event's key (set by the
/// publisher in the `plumber-key` header: [`shuffle_key`]), through the
/// stream `SHUF`; stage 2 counts keys (`id % oracle_keys()`) into Redis and
/// publishes to `out`.
pub fn two_stage_config(urls: &[String], partitions: u32, redis: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "users",
        "state": { "type": "redis", "url": redis },
        "cluster": { "url": urls, "partitions": partitions },
        "checkpoint": { "interval_ms": 2000 },
        "from": {
            "type": "jetstream", "url": urls[0], "stream": "IN", "consumer": "users",
            "subjects": ["in.*"]
        },
        "pipeline": [
            { "name": "by_user", "type": "repartition", "key_by": "key", "stream": "SHUF" },
            { "name": "count", "type": "wasm", "module": harness::guest("key-counter"),
              "config": { "keys": oracle_keys() } }
        ],
        "to": { "type": "jetstream", "url": urls[0], "subject": "out" }
    })
}

/// A 3-node cluster and Redis with the two-stage pipeline of
/// `partitions` partitions (2 × `partitions` tasks) initialised, and its
/// output stream created.
pub async fn two_stage_setup(partitions: u32) -> OracleSetup {
    let alone = ORACLE_RUNS.lock().await;
    let cluster = harness::NatsCluster::start();
    cluster.ready().await;
    let redis = harness::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = two_stage_config(&cluster.urls(), partitions, &redis.url());
    let path = write_config(dir.path(), "users.json", &config);
    let pipeline = ClusterPipeline::load(&path).unwrap();
    // The output stream first, by name (`cluster init` would make one).
    let context = jetstream::new(async_nats::connect(cluster.urls()).await.unwrap());
    create_output_stream(&context).await;
    let report = plumber_cluster::init::init(&pipeline).await.unwrap();
    assert!(
        report
            .lines
            .iter()
            .any(|line| line.contains("stream `SHUF`")),
        "{:?}",
        report.lines
    );
    OracleSetup {
        _alone: alone,
        cluster,
        redis,
        dir,
        path,
        pipeline,
        context,
    }
}

/// Publishes events `ids` to `in.<id % INPUT_KEYS>`, value the id, key
/// [`shuffle_key`] (the `plumber-key` header), message id `e<id>`.
pub async fn publish_keyed_events(context: &jetstream::Context, ids: std::ops::Range<u64>) {
    publish_keyed_events_paced(context, ids, std::time::Duration::ZERO).await;
}

/// As [`publish_keyed_events`], waiting `pause` after each thousand.
pub async fn publish_keyed_events_paced(
    context: &jetstream::Context,
    ids: std::ops::Range<u64>,
    pause: std::time::Duration,
) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(1000) {
        tokio::time::sleep(pause).await;
        let mut acks = Vec::with_capacity(chunk.len());
        for id in chunk {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("e{id}").as_str());
            headers.insert("plumber-key", shuffle_key(*id).as_str());
            acks.push(
                context
                    .publish_with_headers(
                        format!("in.{}", id % INPUT_KEYS),
                        headers,
                        id.to_string().into(),
                    )
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// One message of a stream, as [`read_stream_messages`] reads it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: String,
    /// The `plumber-key` header.
    pub key: Option<String>,
    /// The `Nats-Msg-Id` header.
    pub id: Option<String>,
    /// When the server stored it, µs since the epoch.
    pub stored_us: u64,
}

/// Every message of stream `stream`, reading again (up to 60 s) when the
/// server does not answer a request (a 503 from a loaded cluster).
pub async fn read_stream_messages(
    context: &jetstream::Context,
    stream: &str,
) -> Vec<StoredMessage> {
    read_stream_messages_patiently(context, stream).await
}

/// The sequence of the last message stream `stream` stored (0 for none).
pub async fn stream_last_sequence(context: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = context.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// How many messages stream `stream` holds.
pub async fn stream_messages(context: &jetstream::Context, stream: &str) -> u64 {
    let mut stream = context.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// The committed position (input stream sequence) and fence of each of
/// `tasks`' last checkpoint.
pub async fn committed_positions(
    pipeline: &ClusterPipeline,
    tasks: &[u32],
) -> BTreeMap<u32, (u64, u64)> {
    let mut positions = BTreeMap::new();
    for task in tasks {
        let config = pipeline.partition_config(*task).unwrap();
        let state = config.open_state().await.unwrap();
        let scope = plumber::state::checkpoint_scope(plumber::state::DEFAULT_TENANT, &config.name);
        if let Some(record) = state.last_checkpoint(&scope).await.unwrap() {
            if let plumber::checkpoint::Position::Offset(sequence) = record.position {
                positions.insert(*task, (sequence, record.fence));
            }
        }
    }
    positions
}

/// Every message of stream `stream`: (stream sequence, subject, payload,
/// the `plumber-key` header).
pub async fn read_stream(
    context: &jetstream::Context,
    stream: &str,
) -> Vec<(u64, String, String, Option<String>)> {
    read_stream_messages(context, stream)
        .await
        .into_iter()
        .map(|m| (m.sequence, m.subject, m.payload, m.key))
        .collect()
}

/// The two-stage oracle:
///
/// - across the boundary: the shuffle stream `SHUF` holds every id in
///   `0..events` exactly once (stage 1's replays were dropped by their
///   message ids), each under the partition of its key's token as the
///   server and plumber compute it;
/// - the output: every id exactly once in `OUT`; for each key, the counts
///   are exactly 1..n, and in the order of the key's events in the shuffle
///   stream (stage 2 applied each exactly once, in stream order, replays
///   included);
/// - the committed Redis state of every stage-2 task equals the truth,
///   each key in the stage-2 partition of its shuffle key only.
pub async fn assert_two_stage_oracle(
    context: &jetstream::Context,
    pipeline: &ClusterPipeline,
    events: u64,
) {
    let partitions = pipeline.names.partitions;
    // Across the boundary.
    let shuffled = read_stream(context, "SHUF").await;
    let mut shuffle_sequence = vec![None; events as usize];
    for (sequence, subject, payload, key) in &shuffled {
        let id: u64 = payload.parse().unwrap();
        assert!(
            shuffle_sequence[id as usize].replace(*sequence).is_none(),
            "id {id} crossed the shuffle twice"
        );
        let token = plumber::shuffle::subject_token(shuffle_key(id).as_bytes());
        let partition = partition_of(token.as_bytes(), partitions);
        assert_eq!(
            subject,
            &format!("SHUF-p.{partition}.{token}"),
            "id {id} filed under another partition"
        );
        assert_eq!(key.as_deref(), Some(shuffle_key(id).as_str()), "id {id}");
    }
    let missing = shuffle_sequence.iter().filter(|s| s.is_none()).count();
    assert_eq!(missing, 0, "{missing} ids never crossed the shuffle");
    assert_eq!(shuffled.len() as u64, events, "extra shuffle messages");

    // The output.
    let output = read_stream(context, "OUT").await;
    let mut seen = vec![false; events as usize];
    let mut per_key: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for (_, _, text, _) in &output {
        let parts: Vec<u64> = text.split(' ').map(|p| p.parse().unwrap()).collect();
        let (id, key, count) = (parts[0], parts[1], parts[2]);
        assert_eq!(key, id % oracle_keys(), "{text}");
        assert!(!seen[id as usize], "id {id} is in the output twice");
        seen[id as usize] = true;
        per_key
            .entry(key)
            .or_default()
            .push((shuffle_sequence[id as usize].unwrap(), count));
    }
    let missing = seen.iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} ids missing from the output");
    assert_eq!(output.len() as u64, events, "extra outputs");
    let mut wrong = Vec::new();
    for (key, mut counts) in per_key {
        counts.sort_unstable();
        let in_order: Vec<u64> = counts.iter().map(|(_, count)| *count).collect();
        let expected: Vec<u64> = (1..=in_order.len() as u64).collect();
        if in_order != expected {
            wrong.push((key, in_order));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} keys whose counts are not 1..n in shuffle order, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );

    // The committed state of stage 2.
    let mut counts: BTreeMap<u64, i64> = BTreeMap::new();
    for partition in 0..partitions {
        for (key, value) in committed_counts(pipeline, partitions + partition).await {
            let token = plumber::shuffle::subject_token(shuffle_key(key).as_bytes());
            assert_eq!(
                partition_of(token.as_bytes(), partitions),
                partition,
                "key {key} counted in stage-2 partition {partition}"
            );
            assert!(
                counts.insert(key, value).is_none(),
                "key {key} in two partitions"
            );
        }
    }
    assert_eq!(counts.len() as u64, oracle_keys().min(events));
    let per_key = events / oracle_keys();
    for (key, value) in &counts {
        assert_eq!(*value as u64, per_key, "key {key}");
    }
}

// Observability (tests/tests/cluster_observe.rs): workers with an admin
// server, their metrics and `GET /cluster`.

impl WorkerProcess {
    /// As [`WorkerProcess::start`], with more arguments for `plumber worker`.
    pub fn start_with(config: &Path, id: &str, dir: &Path, extra: &[&str]) -> WorkerProcess {
        Self::spawn(config, id, dir, extra, &[])
    }

    /// A worker with its admin server on a free loopback port.
    pub fn start_with_admin(config: &Path, id: &str, dir: &Path) -> WorkerProcess {
        Self::start_with(config, id, dir, &["--admin", "127.0.0.1:0"])
    }

    /// The admin server's base URL, from the line the worker prints when it
    /// listens (waited for up to 60 s).
    pub fn admin_url(&self) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let log = self.log_text();
            // Only a whole line: the worker may be writing it as we read.
            if let Some(url) = log
                .split_inclusive('\n')
                .filter_map(|line| line.strip_suffix('\n'))
                .find_map(|line| line.strip_prefix("admin server listening on "))
            {
                return url.trim().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {} printed no admin address within 60 s:\n{log}",
                self.id
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The worker's `GET /metrics`.
    pub async fn metrics(&self) -> Metrics {
        let url = format!("{}/metrics", self.admin_url());
        let response = reqwest::get(&url).await.unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        Metrics(response.text().await.unwrap())
    }

    /// The worker's `GET /cluster` once it has joined (`None` before: the
    /// server answers 503 until then); any other failure fails the test.
    pub async fn cluster_view_once_joined(&self) -> Option<serde_json::Value> {
        let url = format!("{}/cluster", self.admin_url());
        let response = reqwest::get(&url).await.ok()?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        assert!(status.is_success(), "{url}: {status} {body}");
        Some(serde_json::from_str(&body).unwrap())
    }

    /// The worker's `GET /cluster`.
    pub async fn cluster_view(&self) -> serde_json::Value {
        let url = format!("{}/cluster", self.admin_url());
        let response = reqwest::get(&url).await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until the process exits (up to `limit`) and returns its status.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "worker {} still runs after {limit:?}:\n{}",
                self.id,
                self.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The `output_duplicates` of the worker's `worker left` line (it
    /// writes it as it stops cleanly).
    pub fn duplicates_at_exit(&self) -> u64 {
        let log = self.log_text();
        let line = log
            .lines()
            .find(|line| line.contains("worker left"))
            .unwrap_or_else(|| panic!("worker {} did not log `worker left`:\n{log}", self.id));
        line.split_whitespace()
            .find_map(|token| token.strip_prefix("output_duplicates="))
            .unwrap_or_else(|| panic!("no output_duplicates in {line:?}"))
            .parse()
            .unwrap()
    }
}

/// A Prometheus text scrape.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the series `name{labels}` (labels as Prometheus prints
    /// them, sorted by name, e.g. `worker="w1"`; empty for none), if any.
    pub fn value(&self, name: &str, labels: &str) -> Option<f64> {
        let series = if labels.is_empty() {
            name.to_owned()
        } else {
            format!("{name}{{{labels}}}")
        };
        self.0.lines().find_map(|line| {
            let rest = line.strip_prefix(&series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
    }

    /// As [`Metrics::value`], failing when the series is missing.
    pub fn get(&self, name: &str, labels: &str) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in\n{}", self.0))
    }

    /// Every series of family `name` (its lines, without HELP and TYPE).
    pub fn series(&self, name: &str) -> Vec<&str> {
        self.0
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Faults (tests/tests/cluster_faults.rs): NATS nodes killed, zombie workers.

/// As [`oracle_setup`], with the pipeline config changed by `edit` before
/// `cluster init` (which sizes the lease bucket's TTL from it).
pub async fn oracle_setup_with(
    partitions: u32,
    edit: impl FnOnce(&mut serde_json::Value),
) -> OracleSetup {
    setup_from("keys.json", |urls, redis| {
        let mut config = cluster_config(urls, partitions, redis);
        config["pipeline"][0]["config"]["keys"] = oracle_keys().into();
        config["checkpoint"] = serde_json::json!({ "interval_ms": 500 });
        edit(&mut config);
        config
    })
    .await
}

impl WorkerProcess {
    /// As [`WorkerProcess::start`], with environment variables added (a
    /// fault point).
    pub fn start_with_env(config: &Path, id: &str, dir: &Path, env: &[(&str, String)]) -> Self {
        Self::spawn(config, id, dir, &[], env)
    }
}

/// The node (index into [`harness::NatsCluster::urls`]) leading JetStream
/// stream `stream`: its info's `cluster.leader` is the server name, `n<i>`.
pub async fn stream_leader(context: &jetstream::Context, stream: &str) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        // A request to a stream whose leader just died may go unanswered.
        let leader = match context.get_stream(stream).await {
            Ok(mut handle) => match handle.info().await {
                Ok(info) => info.cluster.as_ref().and_then(|c| c.leader.clone()),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if let Some(node) = leader
            .as_deref()
            .and_then(|name| name.strip_prefix('n'))
            .and_then(|index| index.parse().ok())
        {
            return node;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "stream {stream} has no leader after 30 s ({leader:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// As [`publish_events`], riding out a NATS node's death: a chunk whose
/// publish or ack fails is published again (its message ids make the
/// stream drop what it stored already). Returns how many chunks were
/// published again.
pub async fn publish_events_retrying(
    context: &jetstream::Context,
    ids: std::ops::Range<u64>,
) -> u32 {
    let ids: Vec<u64> = ids.collect();
    let mut retried = 0;
    for chunk in ids.chunks(1000) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            match publish_chunk(context, chunk).await {
                Ok(()) => break,
                Err(error) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "publishing events {}.. failed for 120 s: {error}",
                        chunk[0]
                    );
                    retried += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
    retried
}

async fn publish_chunk(context: &jetstream::Context, chunk: &[u64]) -> Result<(), String> {
    let mut acks = Vec::with_capacity(chunk.len());
    for id in chunk {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("e{id}").as_str());
        acks.push(
            context
                .publish_with_headers(
                    format!("in.{}", id % oracle_keys()),
                    headers,
                    id.to_string().into(),
                )
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Watches the output stream's message count (every 100 ms) until told to
/// stop: when it grew, for the longest stall in output progress.
pub struct OutputProgress {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(u64, u64)>>,
}

impl OutputProgress {
    pub fn start(context: &jetstream::Context) -> OutputProgress {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (context, stop) = (context.clone(), stop.clone());
            tokio::spawn(async move {
                let mut growth = Vec::new();
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    // A node restarting may not answer: try again.
                    let count = match context.get_stream("OUT").await {
                        Ok(mut stream) => stream.info().await.ok().map(|i| i.state.messages),
                        Err(_) => None,
                    };
                    if let Some(count) = count.filter(|count| *count > last) {
                        growth.push((now_us(), count));
                        last = count;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                growth
            })
        };
        OutputProgress { stop, task }
    }

    /// Stops watching; each growth of the output seen: (µs since the
    /// epoch, messages in the output stream), in time order.
    pub async fn growth(self) -> Vec<(u64, u64)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }

    /// Stops watching; the longest time between two growths of the output
    /// after `after_us`, and when that stall began (µs since the epoch).
    pub async fn longest_stall_after(self, after_us: u64) -> (std::time::Duration, u64) {
        let growth = self.growth().await;
        let mut longest = (0, 0);
        let mut previous = growth
            .iter()
            .filter(|(at, _)| *at <= after_us)
            .map(|(at, _)| *at)
            .max()
            .unwrap_or(after_us);
        for (at, _) in growth.iter().filter(|(at, _)| *at > after_us) {
            longest = longest.max((at - previous, previous));
            previous = *at;
        }
        (std::time::Duration::from_micros(longest.0), longest.1)
    }
}

/// The log lines of `log` that contain `text`.
pub fn lines_with<'a>(log: &'a str, text: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(text)).collect()
}

/// The value of `name=` in a log line (quotes trimmed).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|token| token.strip_prefix(&format!("{name}=")))
        .map(|value| value.trim_matches('"').to_owned())
}

/// Moves the leadership of JetStream stream `stream` to `node` by asking
/// its leader to step down until `node` is elected (up to 30 tries).
pub async fn make_leader(context: &jetstream::Context, stream: &str, node: usize) {
    for _ in 0..30 {
        if stream_leader(context, stream).await == node {
            return;
        }
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
        let _ = context.client().request(subject, "".into()).await;
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    panic!("node n{node} did not become the leader of {stream} in 30 step-downs");
}

// ---------------------------------------------------------------------------
// Event-time windows after a shuffle (tests/tests/cluster_watermarks.rs)

/// How many shuffle keys the windowed two-stage pipeline's events have
/// ([`timed_events`]).
pub const WINDOWED_KEYS: u64 = 20;

/// The event time of the windowed runs' first event (ms, a whole second).
pub const EVENT_TIME_BASE: u64 = 1_700_000_000_000;

/// How far the end markers are past [`EVENT_TIME_BASE`]: ten hours, so
/// their own windows never close and every other window does.
pub const END_MARKER_OFFSET: u64 = 36_000_000;

/// A clustered pipeline of two stages: stage 1 reads `in.*` and shuffles
/// by the event's key through `SHUF`; stage 2 counts each key's events in
/// event-time tumbling windows of one second (`max_out_of_orderness_ms`
/// 500) with the `window-count` guest and publishes one
/// `<start>-<end>\t<key>\t<count>` per window and key to `out`.
pub fn windowed_two_stage_config(
    urls: &[String],
    partitions: u32,
    redis: &str,
    idle_timeout_ms: Option<u64>,
) -> serde_json::Value {
    let mut repartition = serde_json::json!({ "name": "by_key", "type": "repartition", "key_by": "key", "stream": "SHUF" });
    if let Some(idle) = idle_timeout_ms {
        repartition["idle_timeout_ms"] = idle.into();
    }
    serde_json::json!({
        "name": "win",
        "state": { "type": "redis", "url": redis },
        "cluster": { "url": urls, "partitions": partitions },
        "checkpoint": { "interval_ms": 500 },
        "from": {
            "type": "jetstream", "url": urls.join(","), "stream": "IN", "consumer": "win",
            "subjects": ["in.*"]
        },
        "pipeline": [
            repartition,
            { "name": "per_second", "type": "window", "window": "tumbling", "size_ms": 1000,
              "time": "event", "max_out_of_orderness_ms": 500, "key_by": "key" },
            { "name": "count", "type": "wasm", "module": harness::guest("window-count") }
        ],
        "to": { "type": "jetstream", "url": urls.join(","), "subject": "out" }
    })
}

/// A 3-node cluster and Redis with [`windowed_two_stage_config`]
/// initialised and its output stream created.
pub async fn windowed_setup(partitions: u32, idle_timeout_ms: Option<u64>) -> OracleSetup {
    setup_from("win.json", |urls, redis| {
        windowed_two_stage_config(urls, partitions, redis, idle_timeout_ms)
    })
    .await
}

/// One event of a windowed run: published to `in.<input key>` (which
/// picks its stage-1 partition), with its shuffle key, event time and
/// message id.
#[derive(Debug, Clone)]
pub struct TimedEvent {
    pub id: String,
    pub input_key: String,
    pub key: String,
    pub timestamp: u64,
}

/// Input keys that the input stream files under each of `partitions`
/// partitions: `i<n>`, a few per partition.
pub fn input_keys_by_partition(partitions: u32) -> Vec<Vec<String>> {
    let mut keys = vec![Vec::new(); partitions as usize];
    for n in 0.. {
        let key = format!("i{n}");
        let partition = partition_of(key.as_bytes(), partitions) as usize;
        if keys[partition].len() < 8 {
            keys[partition].push(key);
        }
        if keys.iter().all(|k| k.len() == 8) {
            return keys;
        }
    }
    keys
}

/// A shuffle key `end<n>` that the shuffle stream files under `partition`.
pub fn end_key_of(partition: u32, partitions: u32) -> String {
    (0..)
        .map(|n| format!("end{n}"))
        .find(|key| {
            let token = plumber::shuffle::subject_token(key.as_bytes());
            partition_of(token.as_bytes(), partitions) == partition
        })
        .unwrap()
}

/// Events `ids` of a windowed run: event `id` goes to stage-1 partition
/// `id % partitions` (through one of its input keys), has shuffle key
/// `k<(id / partitions) % WINDOWED_KEYS>` and event time `EVENT_TIME_BASE + 10 ms × id`,
/// less `lag_ms` when its stage-1 partition is one of `lagging`.
pub fn timed_events(
    ids: std::ops::Range<u64>,
    partitions: u32,
    lagging: &[u32],
    lag_ms: u64,
) -> Vec<TimedEvent> {
    let keys = input_keys_by_partition(partitions);
    ids.map(|id| {
        let partition = (id % u64::from(partitions)) as u32;
        let inputs = &keys[partition as usize];
        let lag = if lagging.contains(&partition) {
            lag_ms
        } else {
            0
        };
        TimedEvent {
            id: format!("e{id}"),
            input_key: inputs[(id / u64::from(partitions)) as usize % inputs.len()].clone(),
            // Independent of the partition: each key's events come from
            // every upstream partition.
            key: format!("k{}", (id / u64::from(partitions)) % WINDOWED_KEYS),
            timestamp: EVENT_TIME_BASE + 10 * id - lag,
        }
    })
    .collect()
}

/// End markers: from each stage-1 partition of `from`, one event to every
/// stage-2 partition, ten hours on in event time. Every upstream's
/// watermark then passes every window of the run's events (and every
/// stage-2 partition sees a timestamp that far on), while the markers'
/// own windows never close.
pub fn end_markers(from: &[u32], partitions: u32) -> Vec<TimedEvent> {
    let keys = input_keys_by_partition(partitions);
    let mut markers = Vec::new();
    for upstream in from {
        for downstream in 0..partitions {
            markers.push(TimedEvent {
                id: format!("end-{upstream}-{downstream}"),
                input_key: keys[*upstream as usize][0].clone(),
                key: end_key_of(downstream, partitions),
                timestamp: EVENT_TIME_BASE + END_MARKER_OFFSET,
            });
        }
    }
    markers
}

/// Publishes `events` in order, value = the shuffle key, waiting for the
/// acks a chunk of `chunk` at a time and `pause` after each chunk.
pub async fn publish_timed(
    context: &jetstream::Context,
    events: &[TimedEvent],
    chunk: usize,
    pause: std::time::Duration,
) {
    for part in events.chunks(chunk.max(1)) {
        let mut acks = Vec::with_capacity(part.len());
        for event in part {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            headers.insert("plumber-key", event.key.as_str());
            headers.insert("plumber-timestamp", event.timestamp.to_string().as_str());
            acks.push(
                context
                    .publish_with_headers(
                        format!("in.{}", event.input_key),
                        headers,
                        event.key.clone().into(),
                    )
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
        tokio::time::sleep(pause).await;
    }
}

/// Each (window start, key) and its count, as one-second tumbling windows
/// of `events` count them (end markers left out: their windows never
/// close).
pub fn window_counts(events: &[TimedEvent]) -> BTreeMap<(u64, String), u64> {
    let mut counts = BTreeMap::new();
    for event in events
        .iter()
        .filter(|e| e.timestamp < EVENT_TIME_BASE + END_MARKER_OFFSET)
    {
        let start = event.timestamp - event.timestamp % 1000;
        *counts.entry((start, event.key.clone())).or_default() += 1;
    }
    counts
}

/// The windows in `OUT`: (start, key) → count, failing on a line that is
/// not `<start>-<end>\t<key>\t<count>` or a window released twice.
pub async fn output_window_counts(context: &jetstream::Context) -> BTreeMap<(u64, String), u64> {
    let mut counts = BTreeMap::new();
    for message in read_stream_messages_patiently(context, "OUT").await {
        let parts: Vec<&str> = message.payload.split('\t').collect();
        assert_eq!(parts.len(), 3, "{:?}", message.payload);
        let (start, end) = parts[0].split_once('-').unwrap();
        let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
        assert_eq!(end, start + 1000, "{:?}", message.payload);
        let count: u64 = parts[2].parse().unwrap();
        let previous = counts.insert((start, parts[1].to_owned()), count);
        assert!(
            previous.is_none(),
            "window {start} of key {} released twice ({previous:?}, then {count})",
            parts[1]
        );
    }
    counts
}

/// Waits until `OUT` holds `expected` messages and then 2 s more without a
/// change, or `limit` has passed; returns how many it holds.
pub async fn wait_for_settled_output(
    context: &jetstream::Context,
    expected: u64,
    limit: std::time::Duration,
) -> u64 {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let count = stream_messages_patiently(context, "OUT").await;
        if count >= expected || std::time::Instant::now() >= deadline {
            // Anything more (a window released twice) would come soon.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            return stream_messages_patiently(context, "OUT").await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Checks the windows in `OUT` equal `expected`: every window of every
/// key, each once, with its exact count; on failure says how many windows
/// are missing, extra or short (late events dropped) and shows a few.
pub async fn assert_window_counts(
    context: &jetstream::Context,
    expected: &BTreeMap<(u64, String), u64>,
    logs: impl Fn() -> String,
) {
    let got = output_window_counts(context).await;
    if &got == expected {
        return;
    }
    let missing: Vec<_> = expected.keys().filter(|w| !got.contains_key(*w)).collect();
    let extra: Vec<_> = got.keys().filter(|w| !expected.contains_key(*w)).collect();
    let wrong: Vec<_> = expected
        .iter()
        .filter_map(|(w, count)| got.get(w).filter(|g| *g != count).map(|g| (w, *count, *g)))
        .collect();
    let expected_events: u64 = expected.values().sum();
    let counted: u64 = got.values().sum();
    panic!(
        "the windows differ from the reference: {} windows expected, {} released; {} missing \
         (e.g. {:?}), {} extra (e.g. {:?}), {} with another count (window, expected, got: e.g. \
         {:?}); {expected_events} events expected in windows, {counted} counted\n{}",
        expected.len(),
        got.len(),
        missing.len(),
        &missing[..missing.len().min(3)],
        extra.len(),
        &extra[..extra.len().min(3)],
        wrong.len(),
        &wrong[..wrong.len().min(3)],
        logs()
    );
}

/// As [`read_stream_messages`], reading again (up to 60 s) when the
/// server does not answer a request (a 503 under load): for the windowed
/// tests' polling loops, which read streams many times.
pub async fn read_stream_messages_patiently(
    context: &jetstream::Context,
    stream: &str,
) -> Vec<StoredMessage> {
    read_stream_messages_from(context, stream, 1).await
}

/// As [`read_stream_messages_patiently`], from stream sequence `first` on.
pub async fn read_stream_messages_from(
    context: &jetstream::Context,
    stream: &str,
    first: u64,
) -> Vec<StoredMessage> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match try_read_stream_messages(context, stream, first).await {
            Ok(messages) => return messages,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "reading stream {stream} failed for 60 s: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

async fn try_read_stream_messages(
    context: &jetstream::Context,
    stream: &str,
    first: u64,
) -> Result<Vec<StoredMessage>, String> {
    let mut stream = context
        .get_stream(stream)
        .await
        .map_err(|e| e.to_string())?;
    // Read up to the last message stored now: a fetch that comes back
    // empty before it (a loaded server, a consumer on a replica still
    // catching up after a restart) is not the end.
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let deliver_policy = if first > 1 {
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: first,
        }
    } else {
        jetstream::consumer::DeliverPolicy::All
    };
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            ack_policy: jetstream::consumer::AckPolicy::None,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = Vec::new();
    loop {
        // No more than are left to read: a fetch asking for more may wait
        // for them until it expires.
        let reached = messages
            .last()
            .map_or(first.saturating_sub(1), |m: &StoredMessage| m.sequence);
        if reached >= last {
            return Ok(messages);
        }
        let left = usize::try_from(last - reached).unwrap_or(usize::MAX);
        let mut batch = consumer
            .fetch()
            .max_messages(left.min(5000))
            .expires(std::time::Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let before = messages.len();
        while let Some(message) = futures_util::StreamExt::next(&mut batch).await {
            let message = message.map_err(|e| e.to_string())?;
            let info = message.info().map_err(|e| e.to_string())?;
            let (sequence, stored_us) = (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1000) as u64,
            );
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(name))
                    .map(|value| value.as_str().to_owned())
            };
            messages.push(StoredMessage {
                sequence,
                subject: message.subject.to_string(),
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
                key: header("plumber-key"),
                id: header("Nats-Msg-Id"),
                stored_us,
            });
        }
        if messages.len() == before && std::time::Instant::now() >= deadline {
            return Err(format!(
                "read up to sequence {reached} of {last} in 60 s: fetches came back empty"
            ));
        }
    }
}

/// As [`stream_messages`], asking again (up to 60 s) when the server does
/// not answer.
pub async fn stream_messages_patiently(context: &jetstream::Context, stream: &str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let count = match context.get_stream(stream).await {
            Ok(mut handle) => handle
                .info()
                .await
                .map(|info| info.state.messages)
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match count {
            Ok(count) => return count,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the info of stream {stream} failed for 60 s: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}
