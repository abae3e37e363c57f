//! Publishing after the commit: the outbox is committed with the
//! checkpoint, written to the sink only once that commit has landed,
//! written again (same ids) by a restart, and deleted by the next
//! checkpoint.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::ended;
use crate::checkpoint::{CheckpointPolicy, Delivery, Position};
use crate::pipeline::{Pipeline, PipelineError, Publish};
use crate::state::{MemoryState, Namespace, SharedState};
use crate::step::NativeStep;
use crate::streams::{ArraySource, Sink, StreamError, OUTBOX_ID_HEADER};
use crate::Batch;

/// An event as a [`WatchingSink`] saw it written.
#[derive(Debug, Clone)]
struct Written {
    /// Its value (the source's offset of the event it came from).
    value: u64,
    /// Its outbox id, if it has one.
    id: Option<String>,
    /// The source offset of the last committed checkpoint when it was written.
    committed: u64,
}

/// A sink that records each event written with the committed checkpoint's
/// position at that moment; it fails its first `fail_writes` writes.
#[derive(Clone)]
struct WatchingSink {
    state: SharedState,
    scope: String,
    written: Arc<Mutex<Vec<Written>>>,
    /// The events of each `write` call, by value.
    writes: Arc<Mutex<Vec<Vec<u64>>>>,
    fail_writes: usize,
}

impl WatchingSink {
    fn new(state: &SharedState, pipeline: &str) -> Self {
        WatchingSink {
            state: state.clone(),
            scope: format!("default/{pipeline}"),
            written: Arc::default(),
            writes: Arc::default(),
            fail_writes: 0,
        }
    }

    fn written(&self) -> Vec<Written> {
        self.written.lock().unwrap().clone()
    }
}

#[async_trait]
impl Sink for WatchingSink {
    fn describe(&self) -> String {
        "watching sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Err(StreamError::Io {
                stream: self.describe(),
                action: "writing",
                source: std::io::Error::other("the sink is down"),
            });
        }
        let record = self.state.last_checkpoint(&self.scope).await.unwrap();
        let committed = match record.map(|record| record.position) {
            Some(Position::Offset(offset)) => offset,
            _ => 0,
        };
        let mut values = Vec::new();
        for event in &batch.events {
            let value: u64 = event.value_lossy().parse().unwrap();
            let id = event
                .headers
                .iter()
                .find(|(name, _)| name == OUTBOX_ID_HEADER)
                .map(|(_, value)| value.clone());
            values.push(value);
            self.written.lock().unwrap().push(Written {
                value,
                id,
                committed,
            });
        }
        self.writes.lock().unwrap().push(values);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

fn numbers(count: u64) -> ArraySource {
    ArraySource::from_strings((0..count).map(|n| n.to_string()))
}

/// The committed keys of `pipeline`'s outbox.
async fn outbox_keys(state: &SharedState, pipeline: &str) -> Vec<String> {
    let namespace = Namespace::for_outbox("default", pipeline);
    let entries = state.scan_prefix(namespace.prefix()).await.unwrap();
    entries
        .into_iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[namespace.prefix().len()..]).into_owned())
        .collect()
}

async fn run_numbers(
    pipeline: &str,
    state: &SharedState,
    sink: WatchingSink,
    publish: Publish,
    count: u64,
) -> Result<crate::pipeline::RunReport, PipelineError> {
    let builder = Pipeline::builder(pipeline)
        .state(state.clone())
        .checkpoint(CheckpointPolicy::at_end_only().and_every_events(2))
        .batch_size(1)
        .publish(publish)
        .from(numbers(count))
        .then(NativeStep::map("same", |event| event))
        .to(sink);
    ended(tokio::spawn(builder.run())).await
}

/// Each event reaches the sink only once the checkpoint covering its input
/// has committed, with the id its epoch gave it; the default writes
/// before the commit (the contrast, so the check is not vacuous); the
/// last outbox (event 4, sealed by the final checkpoint) is deleted by a
/// checkpoint after it.
#[tokio::test]
async fn output_published_after_the_commit_is_written_only_once_committed() {
    let state: SharedState = Arc::new(MemoryState::new());
    let sink = WatchingSink::new(&state, "after");
    let report = run_numbers("after", &state, sink.clone(), Publish::AfterCommit, 5)
        .await
        .expect("the run");
    let written = sink.written();
    assert_eq!(
        written.iter().map(|w| w.value).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>()
    );
    for event in &written {
        assert!(
            event.committed > event.value,
            "event {} was written while only offset {} was committed",
            event.value,
            event.committed
        );
        let id = event.id.as_deref().expect("an outbox id");
        let (epoch, n) = id
            .strip_prefix("after:o")
            .and_then(|rest| rest.split_once(':'))
            .unwrap_or_else(|| panic!("id {id}"));
        assert!(
            epoch.parse::<u64>().unwrap() >= 1 && n.parse::<u64>().is_ok(),
            "{id}"
        );
    }
    let mut ids: Vec<_> = written.iter().filter_map(|w| w.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(report.events_out, 5);
    // The last outbox was deleted by the checkpoint after it.
    assert_eq!(outbox_keys(&state, "after").await, Vec::<String>::new());
    let last = report.last_checkpoint.expect("a last checkpoint");
    assert_eq!(last.position, Position::Offset(5));

    let state: SharedState = Arc::new(MemoryState::new());
    let sink = WatchingSink::new(&state, "before");
    run_numbers("before", &state, sink.clone(), Publish::BeforeCommit, 5)
        .await
        .expect("the run");
    let early = sink
        .written()
        .into_iter()
        .filter(|event| event.committed <= event.value)
        .count();
    assert!(
        early > 0,
        "publishing before the commit wrote every event after its commit"
    );
    assert!(sink.written().iter().all(|event| event.id.is_none()));
}

/// A run whose sink fails after the commit leaves the epoch's output in the
/// committed outbox; the restart writes it first, with the same ids,
/// before any new input, and the next checkpoint deletes it.
#[tokio::test]
async fn a_restart_publishes_the_committed_outbox_again_with_its_ids() {
    let state: SharedState = Arc::new(MemoryState::new());
    let mut failing = WatchingSink::new(&state, "restarted");
    failing.fail_writes = 1;
    let error = run_numbers("restarted", &state, failing, Publish::AfterCommit, 6)
        .await
        .expect_err("the sink fails");
    assert!(
        matches!(
            &error,
            PipelineError::Stream {
                source: StreamError::Io {
                    action: "writing",
                    ..
                },
                ..
            }
        ),
        "{error:?}"
    );
    // The first epoch (events 0 and 1) committed with its outbox.
    let record = state
        .last_checkpoint("default/restarted")
        .await
        .unwrap()
        .expect("checkpoint 1");
    assert_eq!((record.epoch, record.position), (1, Position::Offset(2)));
    let namespace = Namespace::for_outbox("default", "restarted");
    let head = state
        .get(&namespace.key("head"))
        .await
        .unwrap()
        .expect("the outbox's head is committed");
    let head: serde_json::Value = serde_json::from_slice(&head).unwrap();
    assert_eq!(
        head,
        serde_json::json!({"epoch": 1, "chunks": 1, "events": 2})
    );
    assert_eq!(
        outbox_keys(&state, "restarted").await,
        ["00000000000000000001/000000", "head"]
    );

    let sink = WatchingSink::new(&state, "restarted");
    let report = run_numbers("restarted", &state, sink.clone(), Publish::AfterCommit, 6)
        .await
        .expect("the restart");
    let writes = sink.writes.lock().unwrap().clone();
    assert_eq!(writes.first(), Some(&vec![0, 1]), "{writes:?}");
    let written = sink.written();
    let republished: Vec<_> = written[..2].iter().map(|w| w.id.clone().unwrap()).collect();
    assert_eq!(republished, ["restarted:o1:0", "restarted:o1:1"]);
    // Before any new input: nothing past the checkpoint was committed yet.
    assert!(written[..2].iter().all(|w| w.committed == 2));
    assert_eq!(
        written.iter().map(|w| w.value).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    assert!(written[2..]
        .iter()
        .all(|w| !w.id.as_deref().unwrap().starts_with("restarted:o1:")));
    assert_eq!(report.events_in, 4);
    assert_eq!(outbox_keys(&state, "restarted").await, Vec::<String>::new());
}

/// Held output past `checkpoint.max_pending_keys` asks for a checkpoint,
/// so the outbox (and what the sink holds in memory) stays bounded
/// without an interval.
#[tokio::test]
async fn held_output_past_its_bound_asks_for_a_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    let sink = WatchingSink::new(&state, "bounded");
    let mut policy = CheckpointPolicy::at_end_only();
    policy.max_pending_keys = Some(3);
    let report = Pipeline::builder("bounded")
        .state(state.clone())
        .checkpoint(policy)
        .batch_size(1)
        .channel_capacity(1)
        .publish(Publish::AfterCommit)
        .from(numbers(12))
        .to(sink.clone())
        .run()
        .await
        .expect("the run");
    eprintln!("checkpoints: {}", report.checkpoints);
    // Without the bound: the last checkpoint and the one deleting its outbox.
    assert!(
        report.checkpoints >= 3,
        "{} checkpoints",
        report.checkpoints
    );
    assert_eq!(sink.written().len(), 12);
}

/// At-most-once commits positions before processing: there is no
/// checkpoint to hold the output in, and the run is refused.
#[tokio::test]
async fn publishing_after_the_commit_is_refused_at_most_once() {
    let state: SharedState = Arc::new(MemoryState::new());
    let error = Pipeline::builder("refused")
        .state(state.clone())
        .delivery(Delivery::AtMostOnce)
        .publish(Publish::AfterCommit)
        .from(numbers(2))
        .to(WatchingSink::new(&state, "refused"))
        .run()
        .await
        .expect_err("refused");
    let text = error.to_string();
    assert!(
        matches!(error, PipelineError::Incomplete { .. }) && text.contains("at-most-once"),
        "{text}"
    );
}

/// A pipeline that goes quiet after publishing deletes its outbox at the
/// next interval checkpoint, so that a crash while it is idle does not
/// publish that output again.
#[tokio::test(start_paused = true)]
async fn a_quiet_pipeline_deletes_its_written_outbox_at_the_next_interval() {
    let state: SharedState = Arc::new(MemoryState::new());
    let log = super::Log::default();
    let sink = WatchingSink::new(&state, "quiet");
    let builder = Pipeline::builder("quiet")
        .state(state.clone())
        .checkpoint(CheckpointPolicy::every(std::time::Duration::from_millis(
            100,
        )))
        .publish(Publish::AfterCommit)
        .from(super::ScriptedSource::new(&[2], super::Then::Wait, &log))
        .to(sink.clone());
    let handle = builder.handle();
    let run = tokio::spawn(builder.run());
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(sink.written().len(), 2);
    // Deleted while the pipeline runs, not by the final checkpoint.
    assert_eq!(outbox_keys(&state, "quiet").await, Vec::<String>::new());
    handle.shutdown();
    ended(run).await.expect("the run");
}
