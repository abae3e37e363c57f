//! Whole runs through the builder, with native steps and test sinks: the
//! restore at start, the stage runner's write bound, and which error a
//! failed run reports.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;

use super::{ended, settle, Log, ScriptedSource, Seen, Then};
use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::pipeline::{Pipeline, PipelineError};
use crate::state::{MemoryState, PendingWrites, SharedState, WriteSet};
use crate::step::{NativeStep, Step, StepError};
use crate::streams::{DiscardSink, Sink, StreamError};
use crate::Batch;

/// A sink whose flush fails: the first barrier cannot be answered.
struct UnflushableSink;

#[async_trait]
impl Sink for UnflushableSink {
    fn describe(&self) -> String {
        "unflushable sink".to_owned()
    }

    async fn write(&mut self, _batch: Batch) -> Result<(), StreamError> {
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Err(StreamError::Io {
            stream: self.describe(),
            action: "flushing",
            source: std::io::Error::other("the disk is gone"),
        })
    }
}

/// The sink's own error is the run's, not the driver's lost barrier; and
/// nothing after checkpoint 0 is committed.
#[tokio::test(start_paused = true)]
async fn a_sink_failing_at_a_barrier_fails_the_run_without_a_commit() {
    let state: SharedState = Arc::new(MemoryState::new());
    let log = Log::default();
    let builder = Pipeline::builder("unflushed")
        .state(state.clone())
        .checkpoint(CheckpointPolicy::at_end_only().and_every_events(2))
        .from(ScriptedSource::new(&[1, 1, 1], Then::Wait, &log))
        .then(NativeStep::map("same", |event| event))
        .to(UnflushableSink);
    let error = ended(tokio::spawn(builder.run()))
        .await
        .expect_err("the flush fails");
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
    let record = state.last_checkpoint("default/unflushed").await.unwrap();
    assert_eq!(record.map(|record| record.epoch), Some(0));
    assert_eq!(log.commits(), Vec::<u64>::new());
}

/// A sink whose writes fail.
struct UnwritableSink;

#[async_trait]
impl Sink for UnwritableSink {
    fn describe(&self) -> String {
        "unwritable sink".to_owned()
    }

    async fn write(&mut self, _batch: Batch) -> Result<(), StreamError> {
        Err(StreamError::Io {
            stream: self.describe(),
            action: "writing",
            source: std::io::Error::other("the disk is full"),
        })
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

/// When the sink fails, the step before it loses its neighbour first (it
/// is joined first); the run reports the sink's error, not the step's.
#[tokio::test(start_paused = true)]
async fn a_run_reports_the_real_error_not_a_lost_neighbour() {
    let log = Log::default();
    let builder = Pipeline::builder("unwritten")
        .from(ScriptedSource::new(&[1; 40], Then::Wait, &log))
        .then(NativeStep::map("same", |event| event))
        .to(UnwritableSink);
    let handle = builder.handle();
    let error = ended(tokio::spawn(builder.run()))
        .await
        .expect_err("the write fails");
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
    // The step went on after the sink stopped: it lost its neighbour.
    let stages = handle.status().stages();
    let sent = stages[0].events_out.load(Ordering::Relaxed);
    let passed = handle.status().events_out.load(Ordering::Relaxed);
    assert!(sent > passed, "{sent} sent, {passed} written");
}

/// A step that writes one key per event, keeping them for the checkpoint.
#[derive(Default)]
pub(super) struct WritingStep {
    writes: WriteSet,
}

#[async_trait]
impl Step for WritingStep {
    fn name(&self) -> &str {
        "writer"
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        for event in &batch.events {
            let key = format!("written/{}", event.value_lossy()).into_bytes();
            self.writes.insert(key, Some(b"1".to_vec()));
        }
        out.push(batch);
        Ok(())
    }

    fn take_writes(&mut self) -> WriteSet {
        std::mem::take(&mut self.writes)
    }

    fn pending_writes(&mut self) -> PendingWrites {
        PendingWrites {
            keys: self.writes.len(),
            bytes: self.writes.len(),
        }
    }
}

/// A step whose pending writes reach the bound asks for one checkpoint in
/// that epoch; its writes are committed with it.
#[tokio::test(start_paused = true)]
async fn a_step_past_its_write_bound_asks_for_a_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    let log = Log::default();
    let policy = CheckpointPolicy {
        max_pending_keys: Some(2),
        ..CheckpointPolicy::at_end_only()
    };
    let builder = Pipeline::builder("bounded")
        .state(state.clone())
        .checkpoint(policy)
        .delivery(Delivery::ExactlyOnce)
        .from(ScriptedSource::new(&[1, 1, 1], Then::Wait, &log))
        .then(crate::pipeline::StepSpec::Ready(Box::new(
            WritingStep::default(),
        )))
        .to(DiscardSink::new());
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    // The source waits after three events; by then the bound has asked
    // for a checkpoint (after the second or the third event).
    settle().await;
    let commits = log.commits();
    assert!(commits == [2] || commits == [3], "{commits:?}");
    let stats = handle.status().stages();
    assert_eq!(stats[0].write_set_checkpoints.load(Ordering::Relaxed), 1);
    // Its writes up to the barrier: one key per event.
    let peak = stats[0].pending_keys_peak.load(Ordering::Relaxed);
    assert_eq!(peak, commits[0], "{commits:?}");
    for n in 0..2 {
        let key = format!("written/{n}").into_bytes();
        assert!(state.get(&key).await.unwrap().is_some(), "written/{n}");
    }

    handle.shutdown();
    let report = ended(running).await.expect("runs");
    // The one asked for, and the final one.
    assert_eq!(report.checkpoints, 2);
    assert!(state.get(b"written/2").await.unwrap().is_some());
}

/// A first run commits checkpoint 0 and reads from the start; a later run
/// seeks to the last checkpoint's position and goes on with the next epoch.
#[tokio::test]
async fn a_run_resumes_from_the_last_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    let log = Log::default();
    let report = Pipeline::builder("resumed")
        .state(state.clone())
        .from(ScriptedSource::new(&[2], Then::End, &log))
        .to(DiscardSink::new())
        .run()
        .await
        .expect("first run");
    assert_eq!(report.resumed_from, None);
    let last = report.last_checkpoint.expect("a final checkpoint");
    assert_eq!(
        (last.epoch, last.position.clone()),
        (1, Position::Offset(2))
    );
    assert_eq!(log.all(), [Seen::Seek(0), Seen::Committed(2)]);

    let later = Log::default();
    let report = Pipeline::builder("resumed")
        .state(state.clone())
        .from(ScriptedSource::new(&[3], Then::End, &later))
        .to(DiscardSink::new())
        .run()
        .await
        .expect("second run");
    assert_eq!(report.resumed_from, Some(last));
    assert_eq!(later.all(), [Seen::Seek(2), Seen::Committed(5)]);
    let record: CheckpointRecord = report.last_checkpoint.unwrap();
    assert_eq!((record.epoch, record.position), (2, Position::Offset(5)));
    assert_eq!(report.events_in, 3);
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A source that hands out one event, then takes an hour for its next
/// batch (a pull that the server does not answer).
struct StuckSource {
    handed_out: bool,
    _dropped: DropFlag,
}

#[async_trait]
impl crate::streams::Source for StuckSource {
    fn describe(&self) -> String {
        "stuck source".to_owned()
    }

    async fn seek(&mut self, _position: &Position) -> Result<(), StreamError> {
        Ok(())
    }

    async fn next_batch(
        &mut self,
        _max: usize,
    ) -> Result<Option<(Vec<crate::Event>, Position)>, StreamError> {
        if !self.handed_out {
            self.handed_out = true;
            return Ok(Some((vec![crate::Event::new("one")], Position::Offset(1))));
        }
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        Ok(Some((Vec::new(), Position::Offset(1))))
    }
}

/// A sink whose write takes an hour (a publish that is never
/// acknowledged).
struct StuckSink {
    writing: Arc<std::sync::atomic::AtomicBool>,
    _dropped: DropFlag,
}

#[async_trait]
impl Sink for StuckSink {
    fn describe(&self) -> String {
        "stuck sink".to_owned()
    }

    async fn write(&mut self, _batch: Batch) -> Result<(), StreamError> {
        self.writing.store(true, Ordering::SeqCst);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

/// Aborting a run (a cluster worker whose lease of the partition is lost)
/// stops the stage tasks it spawned: the source's reader and the sink do
/// not go on reading and writing for nobody (they are dropped at once, in
/// the middle of a read and a write that would take an hour).
#[tokio::test]
async fn an_aborted_run_stops_its_reader_and_its_sink() {
    let source_dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sink_dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let builder = Pipeline::builder("aborted")
        .from(StuckSource {
            handed_out: false,
            _dropped: DropFlag(source_dropped.clone()),
        })
        .then(NativeStep::map("same", |event| event))
        .to(StuckSink {
            writing: writing.clone(),
            _dropped: DropFlag(sink_dropped.clone()),
        });
    let run = tokio::spawn(builder.run());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !writing.load(Ordering::SeqCst) {
        assert!(std::time::Instant::now() < deadline, "the sink never wrote");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    run.abort();
    assert!(run.await.unwrap_err().is_cancelled());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !(source_dropped.load(Ordering::SeqCst) && sink_dropped.load(Ordering::SeqCst)) {
        assert!(
            std::time::Instant::now() < deadline,
            "30 s after the abort: source dropped {}, sink dropped {}",
            source_dropped.load(Ordering::SeqCst),
            sink_dropped.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
