//! Publishing after the commit (`"publish": "after_commit"`): the epoch's
//! output is held in its checkpoint (the outbox) and written once the
//! checkpoint has committed, so that a pipe whose replay differs from the
//! lost run (a processing-time window) still puts every input in the
//! output exactly once. Against a real JetStream server and real guests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use async_trait::async_trait;

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::config::{ConfigError, PipelineConfig, ReadStandard};
use plumber::pipeline::{Pipeline, PipelineError, Publish};
use plumber::state::{Namespace, SharedState};
use plumber::step::NativeStep;
use plumber::streams::nats::JetStreamSink;
use plumber::streams::{ArraySource, Sink, StreamError};
use plumber::Batch;
use plumber_tests as harness;
use plumber_tests::NatsServer;

async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        ..stream::Config::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// The stream's messages in order: (value, its `Nats-Msg-Id`).
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<(String, String)> {
    let stream = js.get_stream(name).await.expect("get stream");
    let state = stream.get_info().await.expect("stream info").state;
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("message {sequence} of {name}: {e}"));
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default();
        messages.push((String::from_utf8_lossy(&message.payload).into_owned(), id));
    }
    messages
}

fn read_config(json: &serde_json::Value) -> Result<PipelineConfig, (String, String)> {
    match PipelineConfig::parse(&json.to_string(), "outbox.json", Path::new("/tmp")) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid { path, message, .. }) => Err((path, message)),
        Err(other) => Err((String::new(), other.to_string())),
    }
}

/// `publish` is read strictly: its two values, the default, and a refusal
/// at its path of a value it does not know and of at-most-once delivery.
#[test]
fn the_publish_field_is_refused_at_its_path_when_misused() {
    let config = |extra: serde_json::Value| {
        let mut config = serde_json::json!({
            "name": "p",
            "state": {"type": "memory"},
            "from": {"type": "array", "values": ["a"]},
            "to": {"type": "discard"}
        });
        for (key, value) in extra.as_object().unwrap() {
            config[key] = value.clone();
        }
        config
    };
    let read = read_config(&config(serde_json::json!({}))).expect("no publish");
    assert_eq!(read.publish, Publish::BeforeCommit);
    let read = read_config(&config(serde_json::json!({"publish": "after_commit"}))).unwrap();
    assert_eq!(read.publish, Publish::AfterCommit);
    let read = read_config(&config(serde_json::json!({
        "publish": "after_commit", "delivery": "at_least_once"
    })))
    .unwrap();
    assert_eq!(read.publish, Publish::AfterCommit);

    let (path, message) = read_config(&config(serde_json::json!({
        "publish": "after_commit", "delivery": "at_most_once"
    })))
    .expect_err("at-most-once");
    assert_eq!(path, "publish", "{message}");
    assert!(
        message.contains("at_most_once") && message.contains("before_commit"),
        "{message}"
    );
    let (path, message) =
        read_config(&config(serde_json::json!({"publish": "later"}))).expect_err("unknown");
    assert_eq!(path, "publish", "{message}");
    assert!(message.contains("after_commit"), "{message}");
    // A sink section has no such field: it is the pipeline's.
    let mut in_to = config(serde_json::json!({}));
    in_to["to"]["publish"] = "after_commit".into();
    let (path, _) = read_config(&in_to).expect_err("not a sink field");
    assert_eq!(path, "to.publish");
}

/// A JetStream sink whose first flush after a write fails once the
/// messages are stored (`fail_flushes` times): a run that dies after
/// publishing its committed outbox and before a checkpoint deleted it.
/// Counts the server's duplicate acks.
struct FlakySink {
    inner: Box<dyn Sink>,
    fail_flushes: usize,
    wrote: bool,
    duplicates: Arc<AtomicU64>,
}

#[async_trait]
impl Sink for FlakySink {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.wrote = true;
        self.inner.write(batch).await
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush().await?;
        self.duplicates
            .store(self.inner.duplicates(), Ordering::SeqCst);
        if self.fail_flushes > 0 && std::mem::take(&mut self.wrote) {
            self.fail_flushes -= 1;
            return Err(StreamError::Io {
                stream: self.describe(),
                action: "flushing",
                source: std::io::Error::other("stopped after the publish"),
            });
        }
        Ok(())
    }

    fn duplicates(&self) -> u64 {
        self.inner.duplicates()
    }

    async fn position(&mut self) -> Result<Option<u64>, StreamError> {
        self.inner.position().await
    }

    async fn recover(&mut self, position: Option<u64>) -> Result<(), StreamError> {
        self.inner.recover(position).await
    }
}

/// The committed outbox is in the state after a commit; a restart
/// publishes it again with the same message ids, which the stream reports
/// as duplicates and drops; the next checkpoint deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_republishes_the_committed_outbox_with_the_same_ids() {
    restart_republishes(Arc::new(plumber::state::MemoryState::new())).await;
    let redis = harness::RedisServer::start();
    let state = plumber::state::RedisState::connect(&redis.url(), Default::default())
        .await
        .expect("redis");
    restart_republishes(Arc::new(state)).await;
}

/// The test above on `state`.
async fn restart_republishes(state: SharedState) {
    let server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    create_stream(&js, "OUT", &["out"]).await;
    let run = |fail_flushes: usize, duplicates: Arc<AtomicU64>| {
        let state = state.clone();
        let url = url.clone();
        async move {
            let sink = FlakySink {
                inner: Box::new(
                    JetStreamSink::connect(&url, "out", "ids")
                        .await
                        .expect("connect the sink"),
                ),
                fail_flushes,
                wrote: false,
                duplicates,
            };
            Pipeline::builder("ids")
                .state(state)
                .checkpoint(CheckpointPolicy::at_end_only().and_every_events(2))
                .batch_size(1)
                .publish(Publish::AfterCommit)
                .from(ArraySource::from_strings((0..6).map(|n| format!("v{n}"))))
                .then(NativeStep::map("same", |event| event))
                .to(sink)
                .run()
                .await
        }
    };

    // The first epoch commits, its outbox is published, the flush after it
    // fails: the outbox stays in the committed state.
    let error = run(1, Arc::default()).await.expect_err("the flush fails");
    assert!(
        matches!(
            &error,
            PipelineError::Stream {
                source: StreamError::Io {
                    action: "flushing",
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    let record = state
        .last_checkpoint("default/ids")
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!((record.epoch, record.position), (1, Position::Offset(2)));
    let namespace = Namespace::for_outbox("default", "ids");
    let outbox = state.scan_prefix(namespace.prefix()).await.unwrap();
    let keys: Vec<String> = outbox
        .iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[namespace.prefix().len()..]).into_owned())
        .collect();
    assert_eq!(keys, ["00000000000000000001/000000", "head"]);
    let head: serde_json::Value = serde_json::from_slice(&outbox[1].1).unwrap();
    assert_eq!(
        head,
        serde_json::json!({"epoch": 1, "chunks": 1, "events": 2})
    );
    let stored = stream_messages(&js, "OUT").await;
    assert_eq!(
        stored,
        [
            ("v0".to_owned(), "ids:o1:0".to_owned()),
            ("v1".to_owned(), "ids:o1:1".to_owned())
        ]
    );

    // The restart publishes epoch 1's outbox again first: same ids, dropped.
    let duplicates = Arc::new(AtomicU64::new(0));
    let report = run(0, duplicates.clone())
        .await
        .expect("the restart runs to the end");
    assert_eq!(report.events_in, 4);
    let duplicates = duplicates.load(Ordering::SeqCst);
    eprintln!("duplicates reported by the server on the restart: {duplicates}");
    assert_eq!(duplicates, 2, "the republished outbox's two messages");
    let stored = stream_messages(&js, "OUT").await;
    let values: Vec<&str> = stored.iter().map(|(value, _)| value.as_str()).collect();
    assert_eq!(values, ["v0", "v1", "v2", "v3", "v4", "v5"]);
    for (value, id) in &stored {
        assert!(id.starts_with("ids:o"), "{value}: {id}");
    }
    assert!(
        state
            .scan_prefix(namespace.prefix())
            .await
            .unwrap()
            .is_empty(),
        "the last outbox is deleted by the checkpoint after it"
    );
}

/// A file sink gets the republished outbox exactly once too: the restart
/// truncates the file to the checkpoint's length (before the outbox was
/// written), then writes the outbox again.
#[tokio::test]
async fn a_file_sink_gets_the_republished_outbox_exactly_once() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("out.txt");
    let state: SharedState = Arc::new(plumber::state::MemoryState::new());
    let run = |fail_flushes: usize| {
        let sink = FlakySink {
            inner: Box::new(plumber::streams::FileSink::new(&path)),
            fail_flushes,
            wrote: false,
            duplicates: Arc::default(),
        };
        Pipeline::builder("lines")
            .state(state.clone())
            .checkpoint(CheckpointPolicy::at_end_only().and_every_events(2))
            .batch_size(1)
            .publish(Publish::AfterCommit)
            .from(ArraySource::from_strings((0..6).map(|n| format!("v{n}"))))
            .to(sink)
            .run()
    };
    run(1).await.expect_err("the flush after the outbox fails");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "v0\nv1\n");
    run(0).await.expect("the restart");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "v0\nv1\nv2\nv3\nv4\nv5\n"
    );
}

/// A sink whose first flush waits for `gate`: it holds its pipeline's
/// first checkpoint between the barrier and the commit.
struct GatedSink {
    inner: Box<dyn Sink>,
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
    held: Option<tokio::sync::oneshot::Sender<()>>,
}

#[async_trait]
impl Sink for GatedSink {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.inner.write(batch).await
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        self.inner.flush().await?;
        if let Some(held) = self.held.take() {
            let _ = held.send(());
        }
        if let Some(gate) = self.gate.take() {
            let _ = gate.await;
        }
        Ok(())
    }
}

/// A zombie: pipeline `fenced` (the old owner) holds its first checkpoint
/// between barrier and commit; meanwhile a new owner claims the same state
/// scope in Redis (a newer fence), replays the input — differently, as a
/// non-deterministic pipe would — and publishes its output. Released, the
/// zombie's commit is refused by the fence. Returns the values in the
/// output stream and the zombie's error.
async fn zombie_against_new_owner(publish: Publish) -> (Vec<String>, PipelineError) {
    use plumber::state::{RedisOptions, RedisState};
    let redis = harness::RedisServer::start();
    let nats = NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
    create_stream(&js, "OUT", &["out"]).await;
    let state = || async {
        let state: SharedState = Arc::new(
            RedisState::connect(&redis.url(), RedisOptions::default())
                .await
                .expect("redis"),
        );
        state
    };
    let pipeline = |state: SharedState, sink: Box<dyn Sink>, values: &'static str| {
        Pipeline::builder("fenced")
            .state(state)
            .checkpoint(CheckpointPolicy::at_end_only().and_every_events(2))
            .batch_size(1)
            .publish(publish)
            .from(ArraySource::from_strings(
                (0..4).map(move |n| format!("{values}{n}")),
            ))
            .to_boxed(sink)
    };
    let sink = || async {
        Box::new(
            JetStreamSink::connect(&nats.url(), "out", "fenced")
                .await
                .expect("the sink"),
        ) as Box<dyn Sink>
    };

    let (release, gate) = tokio::sync::oneshot::channel();
    let (held_tx, held) = tokio::sync::oneshot::channel();
    let gated = GatedSink {
        inner: sink().await,
        gate: Some(gate),
        held: Some(held_tx),
    };
    let zombie = tokio::spawn(pipeline(state().await, Box::new(gated), "zombie-").run());
    tokio::time::timeout(Duration::from_secs(30), held)
        .await
        .expect("the zombie reached its first barrier")
        .expect("held");
    // The new owner claims the scope, resumes from checkpoint 0 and runs.
    let report = pipeline(state().await, sink().await, "owner-")
        .run()
        .await
        .expect("the new owner's run");
    assert_eq!(report.events_in, 4);
    let _ = release.send(());
    let error = tokio::time::timeout(Duration::from_secs(30), zombie)
        .await
        .expect("the zombie ended")
        .expect("no panic")
        .expect_err("the zombie's commit is refused");
    let values = stream_messages(&js, "OUT")
        .await
        .into_iter()
        .map(|(value, _)| value)
        .collect();
    (values, error)
}

/// A zombie's commit refused by the fence never publishes its outbox; the
/// default mode had published the same epoch's output before its commit
/// was refused (the contrast, so that the check can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombies_commit_refused_by_the_fence_never_publishes_its_outbox() {
    let (values, error) = zombie_against_new_owner(Publish::AfterCommit).await;
    assert!(
        matches!(
            &error,
            PipelineError::State {
                source: plumber::state::StateError::Fenced { .. },
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(values, ["owner-0", "owner-1", "owner-2", "owner-3"]);

    let (values, error) = zombie_against_new_owner(Publish::BeforeCommit).await;
    assert!(matches!(&error, PipelineError::State { .. }), "{error:?}");
    let zombie: Vec<&String> = values.iter().filter(|v| v.starts_with("zombie-")).collect();
    eprintln!("before_commit: the zombie's output in the stream: {zombie:?}");
    assert_eq!(zombie, ["zombie-0", "zombie-1"]);
}

/// Events of one value each, counted by the non-deterministic pipeline.
const VALUES: u64 = 5;

/// What a run of the killed pipeline put in its output.
struct Outcome {
    /// Events published to the input.
    events: u64,
    /// Per value, the sum of the window counts in the output.
    counted: BTreeMap<String, u64>,
    /// Output messages.
    messages: usize,
    /// Output messages whose id is an outbox id of the pipeline.
    outbox_ids: usize,
    /// Outbox keys left in the committed state after the clean stop.
    outbox_left: usize,
}

impl Outcome {
    fn total(&self) -> u64 {
        self.counted.values().sum()
    }

    /// Per value, how many events of it were published.
    fn expected(&self) -> BTreeMap<String, u64> {
        (0..VALUES)
            .map(|v| {
                let count = self.events / VALUES + u64::from(v < self.events % VALUES);
                (format!("v{v}"), count)
            })
            .collect()
    }
}

/// `plumber run` on JetStream `in.>` → a processing-time tumbling window
/// of 100 ms → `window-count` → JetStream `out`, SIGKILLed `kills` times
/// (3 s after each start) while a producer sends `events` events (values
/// `v0`..`v4`), then run to the end of the input and stopped with SIGINT.
/// The window groups events by when they arrive, so a replay after a
/// kill groups them differently from the lost run.
async fn run_killed_window_pipeline(publish: &str, events: u64, kills: u64) -> Outcome {
    let window_count = harness::guest("window-count");
    let server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out"]).await;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let config: PathBuf = dir.path().join("pipeline.json");
    let json = serde_json::json!({
        "name": "arrivals",
        "state": { "type": "sled", "path": dir.path().join("state") },
        "checkpoint": { "interval_ms": 500 },
        "publish": publish,
        "from": { "type": "jetstream", "url": url, "stream": "IN", "consumer": "arrivals",
                  "ack_wait_ms": 10000 },
        "pipeline": [
            { "name": "by-arrival", "type": "window", "window": "tumbling", "size_ms": 100,
              "time": "processing" },
            { "name": "count", "type": "wasm", "module": window_count }
        ],
        "to": { "type": "jetstream", "url": url, "subject": "out" }
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let plumber = harness::plumber_binary();
    let run = || {
        tokio::process::Command::new(&plumber)
            .arg("run")
            .arg(&config)
            .env("PLUMBER_CACHE_DIR", harness::cache_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn plumber run")
    };

    // Spread over the kills (3.5 s each) and 5 s more, so that the
    // producer still sends at the last kill.
    let spacing_us = (kills * 3_500 + 5_000) * 1_000 / events.max(1);
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            for id in 0..events {
                let due = started + Duration::from_micros(id * spacing_us);
                tokio::time::sleep_until(due).await;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.to_string().as_str());
                let value = format!("v{}", id % VALUES);
                js.publish_with_headers(format!("in.{}", id % 3), headers, value.into())
                    .await
                    .expect("publish")
                    .await
                    .expect("publish ack");
            }
        })
    };
    for _ in 0..kills {
        let mut child = run();
        tokio::time::sleep(Duration::from_secs(3)).await;
        if child.try_wait().expect("poll").is_some() {
            let output = child.wait_with_output().await.expect("wait");
            panic!(
                "plumber stopped by itself: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("wait");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !publisher.is_finished(),
        "the producer was done before the last kill"
    );

    let child = run();
    publisher.await.expect("the producer");
    // Until every event is counted (windows fire by their timer), or the
    // output stopped growing for 20 s; then a while more, for output that
    // should not come.
    let total = |messages: &[(String, String)]| -> u64 {
        messages
            .iter()
            .filter_map(|(value, _)| value.rsplit('\t').next()?.parse::<u64>().ok())
            .sum()
    };
    let (mut last_seen, mut last_growth) = (0, Instant::now());
    loop {
        let messages = stream_messages(&js, "OUT").await;
        let counted = total(&messages);
        if counted >= events {
            break;
        }
        if messages.len() > last_seen {
            (last_seen, last_growth) = (messages.len(), Instant::now());
        }
        assert!(
            last_growth.elapsed() < Duration::from_secs(20),
            "the output counts {counted} of {events} events after {kills} kills"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("plumber stopped after SIGINT")
        .expect("wait");
    assert!(
        output.status.success(),
        "plumber failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let messages = stream_messages(&js, "OUT").await;
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    for (value, _) in &messages {
        let fields: Vec<&str> = value.split('\t').collect();
        assert_eq!(fields.len(), 3, "not a window count: {value:?}");
        *counted.entry(fields[1].to_owned()).or_default() += fields[2].parse::<u64>().unwrap();
    }
    let outbox_ids = messages
        .iter()
        .filter(|(_, id)| {
            id.strip_prefix("arrivals:o")
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(epoch, n)| epoch.parse::<u64>().is_ok() && n.parse::<u64>().is_ok())
        })
        .count();
    let state = PipelineConfig::load(&config)
        .expect("the config")
        .open_state()
        .await
        .expect("the state");
    let namespace = Namespace::for_outbox("default", "arrivals");
    let outbox_left = state.scan_prefix(namespace.prefix()).await.unwrap().len();
    Outcome {
        events,
        counted,
        messages: messages.len(),
        outbox_ids,
        outbox_left,
    }
}

/// Killed again and again while the producer sends, the pipeline that
/// publishes after the commit counts every event exactly once: no window
/// of an epoch that never committed reached the output, though the replay
/// grouped its events into other windows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processing_time_window_publishing_after_the_commit_counts_every_event_once() {
    let outcome = run_killed_window_pipeline("after_commit", 12_000, 3).await;
    eprintln!(
        "after_commit: {} events, {} counted, {} output messages, {} outbox ids",
        outcome.events,
        outcome.total(),
        outcome.messages,
        outcome.outbox_ids
    );
    assert_eq!(outcome.counted, outcome.expected(), "counts per value");
    assert_eq!(
        outcome.outbox_ids, outcome.messages,
        "every id is an outbox id"
    );
    assert_eq!(
        outcome.outbox_left, 0,
        "the clean stop deleted the last outbox"
    );
}

/// The same kills with the default (publish before the commit): the lost
/// epochs' windows were published, and their events counted again in the
/// replay's windows. This is what `after_commit` is for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_kills_publishing_before_the_commit_count_events_twice() {
    let outcome = run_killed_window_pipeline("before_commit", 12_000, 3).await;
    eprintln!(
        "before_commit: {} events, {} counted ({} extra), {} output messages",
        outcome.events,
        outcome.total(),
        outcome.total().saturating_sub(outcome.events),
        outcome.messages
    );
    assert!(
        outcome.total() > outcome.events,
        "no event was counted twice: {:?}",
        outcome.counted
    );
    assert_eq!(outcome.outbox_ids, 0);
}

/// In a cluster: three `plumber worker`s run the 64-partition oracle
/// pipeline publishing after the commit; `w2` is SIGKILLed mid-stream
/// right after it published a committed outbox. Its partitions' new owners
/// publish the committed outboxes again (the stream drops what `w2` had
/// published: duplicates reported) and the oracle holds: every event id
/// once in the output, each key's counts 1..n, the committed state the
/// truth; every output message carries its task's outbox id.
#[tokio::test]
async fn a_killed_workers_partitions_publish_after_the_commit_exactly_once() {
    use plumber_tests::cluster::{
        assert_oracle, held_at_end, logs_of, oracle_events, oracle_setup_with, ownership_changes,
        publish_events, read_stream_messages, wait_for_output, WorkerProcess,
    };
    let events = oracle_events();
    let setup = oracle_setup_with(64, |config| {
        config["publish"] = "after_commit".into();
    })
    .await;
    // w2 says when it publishes an outbox; the others when they publish a
    // committed one again as they start a partition.
    let log_filter = |extra: &str| vec![("RUST_LOG", format!("warn,plumber_cluster=info,{extra}"))];
    let workers: Vec<WorkerProcess> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| {
            let env = if *id == "w2" {
                log_filter("plumber_engine::pipeline::outbox=debug")
            } else {
                log_filter("plumber_engine::pipeline::builder=info")
            };
            WorkerProcess::start_with_env(&setup.path, id, setup.dir.path(), &env)
        })
        .collect();
    let mut workers = workers;
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, 0..events / 2).await })
    };
    wait_for_output(&setup.context, events / 5, Duration::from_secs(300), || {
        logs_of(&workers)
    })
    .await;
    // Right after w2 published a committed outbox (before the checkpoint
    // that deletes it).
    let published = |log: &str| {
        log.lines()
            .filter(|line| line.contains("outbox published after its commit"))
            .count()
    };
    let seen = published(&workers[1].log_text());
    let deadline = Instant::now() + Duration::from_secs(60);
    while published(&workers[1].log_text()) == seen {
        assert!(
            Instant::now() < deadline,
            "w2 published no outbox:\n{}",
            workers[1].log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen_at = Instant::now();
    let orphans = held_at_end(&ownership_changes(&workers[1].log_text()), "w2");
    workers[1].signal(libc::SIGKILL);
    let kill_delay = seen_at.elapsed();
    let killed = Instant::now();
    assert!(
        !orphans.is_empty(),
        "w2 owned nothing:\n{}",
        logs_of(&workers)
    );
    publisher.await.unwrap();
    publish_events(&setup.context, events / 2..events).await;
    wait_for_output(&setup.context, events, Duration::from_secs(600), || {
        logs_of(&workers)
    })
    .await;
    eprintln!(
        "cluster after_commit: {events} events out {:.1} s after the kill of w2 ({} partitions)",
        killed.elapsed().as_secs_f64(),
        orphans.len()
    );
    assert_oracle(&setup.context, &setup.pipeline, events).await;
    let messages = read_stream_messages(&setup.context, "OUT").await;
    let not_outbox: Vec<_> = messages
        .iter()
        .filter(|message| {
            !message.id.as_deref().is_some_and(|id| {
                id.strip_prefix("keys#p")
                    .and_then(|rest| rest.split_once(":o"))
                    .is_some_and(|(partition, _)| partition.parse::<u32>().is_ok())
            })
        })
        .take(5)
        .collect();
    assert!(not_outbox.is_empty(), "not outbox ids: {not_outbox:?}");
    let republished: Vec<String> = [0, 2]
        .iter()
        .flat_map(|index| {
            workers[*index]
                .log_text()
                .lines()
                .filter(|line| line.contains("the committed outbox was published again"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    let mut duplicates = 0;
    for index in [0, 2] {
        let status = workers[index].terminate();
        assert!(status.success(), "{}", workers[index].log_text());
        duplicates += workers[index].duplicates_at_exit();
    }
    eprintln!(
        "cluster after_commit: {} of w2's partitions published a committed outbox again on \
         start (e.g. {:?}); the survivors were told of {duplicates} duplicates",
        republished.len(),
        republished.first()
    );
    assert!(
        !republished.is_empty() && duplicates > 0,
        "no outbox of w2 was published again by its partitions' new owners: {} republished, \
         {duplicates} duplicates reported, w2 killed {:?} after the test saw its publish line",
        republished.len(),
        kill_delay
    );
}

/// In a cluster, the zombie of the fault tests, publishing after the
/// commit: `w2` holds one partition's first commit between barrier and
/// commit (the fault point), is stopped (SIGSTOP) past its lease while the
/// others take its partitions over and commit under newer fences, then
/// continued. The held commit never lands (refused by the fence, or the
/// task aborted first), so `w2` never publishes that partition's outbox;
/// the oracle holds — which it would not if the zombie's epoch had been
/// published, since the new owner's first epoch has the same number and
/// so the same ids, and the stream would drop the new owner's messages.
#[tokio::test]
async fn a_zombie_workers_held_outbox_never_reaches_the_output() {
    use plumber_cluster::assign::assign;
    use plumber_cluster::lease::Leases;
    use plumber_cluster::membership::Member;
    use plumber_tests::cluster::{
        assert_oracle, commit_fences, held_at_end, lines_with, log_field, logs_of, now_us,
        oracle_events, oracle_setup_with, ownership_changes, publish_events, read_stream_messages,
        wait_for_commits_after, wait_for_output, WorkerProcess,
    };
    const TTL_MS: u64 = 3000;
    const HOLD_MS: u64 = 1500;
    let events = oracle_events();
    let half = events / 2;
    let setup = oracle_setup_with(64, |config| {
        config["cluster"]["lease_ttl_ms"] = TTL_MS.into();
        config["publish"] = "after_commit".into();
    })
    .await;
    let ids = ["w1", "w2", "w3"];
    let members: Vec<Member> = ids
        .iter()
        .map(|id| Member {
            id: (*id).to_owned(),
            max_partitions: None,
            draining: false,
        })
        .collect();
    let held = assign(64, &members)
        .into_iter()
        .find(|(_, owner)| owner == "w2")
        .map(|(partition, _)| partition)
        .unwrap();
    let held_task = setup.pipeline.names.task(held);
    let zombie_env = vec![
        (
            "PLUMBER_FAULT_HOLD_BEFORE_COMMIT",
            format!("{held_task}:{HOLD_MS}"),
        ),
        (
            "RUST_LOG",
            "warn,plumber_cluster=info,plumber_engine::pipeline::outbox=debug".to_owned(),
        ),
    ];
    let workers: Vec<WorkerProcess> = ids
        .iter()
        .map(|id| {
            let env = if *id == "w2" {
                zombie_env.as_slice()
            } else {
                &[]
            };
            WorkerProcess::start_with_env(&setup.path, id, setup.dir.path(), env)
        })
        .collect();
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, 0..half).await })
    };
    let zombie = &workers[1];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !zombie
        .log_text()
        .contains("fault point: holding the commit")
    {
        assert!(
            Instant::now() < deadline,
            "w2 never held the commit of {held_task}:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    zombie.signal(libc::SIGSTOP);
    let stopped_us = now_us();
    let zombie_log = zombie.log_text();
    assert!(
        !zombie_log.contains("fault point: commit released"),
        "the hold ended before w2 was stopped: the test was too slow to stop it"
    );
    let owned = held_at_end(&ownership_changes(&zombie_log), "w2");
    assert!(owned.contains(&held), "w2 does not own {held_task}");
    let fences = commit_fences(&setup.pipeline, &owned).await;

    // The others take its partitions over once its leases expire.
    let leases = Leases::open(
        &setup.context,
        &setup.pipeline.leases_bucket(),
        setup.pipeline.names.clone(),
        Duration::from_millis(TTL_MS),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let holders = leases.all().await.unwrap();
        let left = owned
            .iter()
            .filter(|p| holders.get(p).is_none_or(|h| h.owner == "w2"))
            .count();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} partitions of the stopped w2 not taken over:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    publisher.await.unwrap();
    publish_events(&setup.context, half..events).await;
    wait_for_commits_after(
        &setup.pipeline,
        &fences,
        stopped_us / 1000,
        Duration::from_secs(300),
    )
    .await;
    let new_owner_fence = commit_fences(&setup.pipeline, &[held]).await[&held];
    zombie.signal(libc::SIGCONT);
    wait_for_output(&setup.context, events, Duration::from_secs(600), || {
        logs_of(&workers)
    })
    .await;
    // Until w2 has stopped the held partition (and said why).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stopped = ownership_changes(&zombie.log_text()).iter().any(|change| {
            !change.started && change.partition == held && change.at_us >= stopped_us
        });
        if stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w2 did not stop {held_task} after SIGCONT:\n{}",
            zombie.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = zombie.log_text();
    let refused = lines_with(&log, "commit refused by the fence")
        .into_iter()
        .any(|line| log_field(line, "pipeline").as_deref() == Some(&*held_task));
    // The held epoch: w2 may take the partition again later, legitimately
    // (a new lease and fence), and publish later epochs of its own.
    let holding = lines_with(&log, "fault point: holding the commit");
    let held_epoch = log_field(holding[0], "epoch").expect("the held epoch");
    let published: Vec<&str> = lines_with(&log, "outbox published after its commit")
        .into_iter()
        .filter(|line| {
            log_field(line, "pipeline").as_deref() == Some(&*held_task)
                && log_field(line, "epoch") == Some(held_epoch.clone())
        })
        .collect();
    eprintln!(
        "cluster zombie after_commit: the held commit of {held_task} (epoch {held_epoch}) {}; w2 \
         published {} outboxes of that epoch; {} outboxes in all",
        if refused {
            "was refused by the fence"
        } else {
            "never reached the backend (task aborted first)"
        },
        published.len(),
        lines_with(&log, "outbox published after its commit").len()
    );
    assert!(
        published.is_empty(),
        "the zombie published the outbox of its held commit: {published:?}"
    );
    let now = commit_fences(&setup.pipeline, &[held]).await;
    assert!(
        now[&held] >= new_owner_fence,
        "the zombie's commit replaced the new owner's checkpoint"
    );
    // The oracle reads the output through a new consumer of the R3
    // stream, whose fetch a loaded cluster may answer with a 503 (no
    // responders, the consumer settling) just after the zombie resumed:
    // that read is tried again, once; any other failure is the test's.
    let context = setup.context.clone();
    let pipeline = setup.pipeline.clone();
    let oracle = move || {
        let (context, pipeline) = (context.clone(), pipeline.clone());
        tokio::spawn(async move { assert_oracle(&context, &pipeline, events).await })
    };
    if let Err(error) = oracle().await {
        let panic = error.into_panic();
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        if !text.contains("503") {
            std::panic::resume_unwind(panic);
        }
        eprintln!("cluster zombie after_commit: the oracle's read met a 503, read again: {text}");
        tokio::time::sleep(Duration::from_secs(2)).await;
        oracle().await.expect("the oracle");
    }
    let messages = read_stream_messages(&setup.context, "OUT").await;
    assert!(messages
        .iter()
        .all(|message| message.id.as_deref().is_some_and(|id| id.contains(":o"))));
}
