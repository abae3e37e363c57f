//! The source driver on its own: a scripted source in, test stages
//! answering barriers out, checkpoints committed to the memory backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::{ended, settle, written, AtBarrier, Log, ScriptedSource, Seen, TestStage, Then};
use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::pipeline::driver::{Driven, DriverSetup, DriverSignals, Resume, SourceDriver};
use crate::pipeline::error::PipelineError;
use crate::pipeline::stage::Output;
use crate::pipeline::status::LiveStatus;
use crate::state::{MemoryState, SharedState};

const SCOPE: &str = "default/driven";

/// A driver's surroundings: its state, status and signals, and the log.
struct Rig {
    state: SharedState,
    status: Arc<LiveStatus>,
    requests: Arc<Notify>,
    released: Arc<AtomicBool>,
    committed: watch::Receiver<u64>,
    shutdown: watch::Sender<bool>,
    log: Log,
}

impl Rig {
    fn new() -> Self {
        Rig {
            state: Arc::new(MemoryState::new()),
            status: Arc::new(LiveStatus::default()),
            requests: Arc::new(Notify::new()),
            released: Arc::new(AtomicBool::new(false)),
            committed: watch::channel(0).1,
            shutdown: watch::channel(false).0,
            log: Log::default(),
        }
    }

    /// Starts a driver of a first run (epoch 1, from the start) reading
    /// `source` and sending to `output`.
    fn drive(
        &mut self,
        policy: CheckpointPolicy,
        delivery: Delivery,
        source: ScriptedSource,
        output: Output,
    ) -> JoinHandle<Result<Driven, PipelineError>> {
        let (committed_tx, committed_rx) = watch::channel(0);
        self.committed = committed_rx;
        let driver = SourceDriver::new(
            DriverSetup {
                pipeline: "driven".to_owned(),
                scope: SCOPE.to_owned(),
                policy,
                delivery,
                batch_size: 4,
                state: self.state.clone(),
                resume: Resume {
                    epoch: 1,
                    position: Position::Start,
                    last_checkpoint: None,
                    fence: 0,
                    outbox_uncleared: false,
                },
                status: self.status.clone(),
            },
            DriverSignals {
                requests: self.requests.clone(),
                released: self.released.clone(),
                committed: committed_tx,
            },
        );
        tokio::spawn(driver.run(Box::new(source), output, self.shutdown.subscribe()))
    }

    /// The last committed checkpoint.
    async fn last(&self) -> Option<CheckpointRecord> {
        self.state.last_checkpoint(SCOPE).await.unwrap()
    }
}

/// A record's epoch and offset.
fn at(record: &CheckpointRecord) -> (u64, u64) {
    (record.epoch, record.position.offset().unwrap())
}

/// A checkpoint by count goes through the stages right after the epoch's
/// last batch and before the next epoch's first, and the end of a finite
/// source comes before the final checkpoint's barrier.
#[tokio::test(start_paused = true)]
async fn a_barrier_follows_the_last_batch_of_its_epoch() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    let stage = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(input));
    let source = ScriptedSource::new(&[1, 1, 1], Then::End, &rig.log);
    let policy = CheckpointPolicy::at_end_only().and_every_events(2);
    let driven = rig.drive(policy, Delivery::AtLeastOnce, source, output);

    let driven = ended(driven).await.expect("the source ends cleanly");
    ended(stage).await.unwrap();
    assert_eq!(
        rig.log.all(),
        [
            Seen::Batch("sink", 1),
            Seen::Batch("sink", 2),
            Seen::Barrier("sink"),
            Seen::Committed(2),
            Seen::Batch("sink", 3),
            Seen::End("sink"),
            Seen::Barrier("sink"),
            Seen::Committed(3),
        ]
    );
    assert_eq!((driven.events_in, driven.checkpoints), (3, 2));
    assert_eq!(at(&rig.last().await.unwrap()), (2, 3));
    assert_eq!(*rig.committed.borrow(), 2);
}

/// Nothing is committed while a barrier is on its way; the commit, once
/// the sink has answered, carries the writes of every stage it passed.
#[tokio::test(start_paused = true)]
async fn a_checkpoint_commits_only_after_every_stage_replied() {
    let mut rig = Rig::new();
    let (first, input) = Output::channel(8, 4);
    let (to_sink, sink_input) = Output::channel(8, 4);
    let (open, gate) = oneshot::channel();
    let step = TestStage::step("step", &rig.log, to_sink, AtBarrier::HoldFirst(gate));
    let step = tokio::spawn(step.run(input));
    let sink = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(sink_input));
    let source = ScriptedSource::new(&[2], Then::Wait, &rig.log);
    let driven = rig.drive(
        CheckpointPolicy::at_end_only(),
        Delivery::ExactlyOnce,
        source,
        first,
    );

    settle().await;
    rig.requests.notify_one();
    settle().await;
    // The step holds the barrier: the sink has not seen it, nothing is committed.
    assert_eq!(
        rig.log.all(),
        [
            Seen::Batch("step", 2),
            Seen::Batch("sink", 2),
            Seen::Barrier("step")
        ]
    );
    assert_eq!(rig.last().await, None);
    assert_eq!(rig.status.checkpoints.load(Ordering::Relaxed), 0);

    open.send(()).unwrap();
    settle().await;
    assert_eq!(
        rig.log.all()[3..],
        [Seen::Barrier("sink"), Seen::Committed(2)]
    );
    assert_eq!(at(&rig.last().await.unwrap()), (1, 2));
    assert!(written(rig.state.as_ref(), "step", 1).await);
    assert!(written(rig.state.as_ref(), "sink", 1).await);
    assert_eq!(*rig.committed.borrow(), 1);

    rig.shutdown.send_replace(true);
    let driven = ended(driven).await.expect("a clean stop");
    assert_eq!(driven.checkpoints, 2);
    ended(step).await.unwrap();
    ended(sink).await.unwrap();
}

/// Under at-most-once every batch's position is committed before any
/// stage sees the batch.
#[tokio::test(start_paused = true)]
async fn at_most_once_commits_the_position_before_the_batch() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    let stage = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(input));
    let source = ScriptedSource::new(&[4, 4, 1, 3, 2], Then::End, &rig.log);
    let driven = rig.drive(
        CheckpointPolicy::at_end_only(),
        Delivery::AtMostOnce,
        source,
        output,
    );
    ended(driven).await.expect("the source ends cleanly");
    ended(stage).await.unwrap();

    let log = rig.log.all();
    let mut committed = 0;
    let mut batches = 0;
    for seen in &log {
        match *seen {
            Seen::Committed(offset) => {
                assert!(offset >= committed, "commits go forward: {log:?}");
                committed = offset;
            }
            Seen::Batch(_, end) => {
                assert!(end <= committed, "a batch before its commit: {log:?}");
                batches += 1;
            }
            _ => {}
        }
    }
    assert_eq!(batches, 5, "{log:?}");
    let ahead = rig.status.position_commits.load(Ordering::Relaxed);
    assert!((1..=5).contains(&ahead), "{ahead} commits ahead");
    // The final checkpoint records the end, after the commits ahead.
    assert_eq!(at(&rig.last().await.unwrap()), (ahead + 1, 14));
}

/// A shutdown asked for while a checkpoint is in flight waits for it: that
/// checkpoint is committed, then a final one, and the driver stops.
#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_checkpoint_commits_it_and_a_final_one() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    let (open, gate) = oneshot::channel();
    let stage = TestStage::sink("sink", &rig.log, AtBarrier::HoldFirst(gate));
    let stage = tokio::spawn(stage.run(input));
    let source = ScriptedSource::new(&[3], Then::Wait, &rig.log);
    let policy = CheckpointPolicy::every(Duration::from_secs(1));
    let driven = rig.drive(policy, Delivery::AtLeastOnce, source, output);

    // The interval's checkpoint is due after a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        rig.log.all(),
        [Seen::Batch("sink", 3), Seen::Barrier("sink")]
    );
    rig.shutdown.send_replace(true);
    settle().await;
    assert_eq!(rig.last().await, None, "the barrier is still held");

    open.send(()).unwrap();
    let driven = ended(driven).await.expect("a clean stop");
    assert_eq!(
        rig.log.all()[2..],
        [
            Seen::Committed(3),
            Seen::Barrier("sink"),
            Seen::Committed(3)
        ]
    );
    assert_eq!(driven.checkpoints, 2);
    assert_eq!(at(&rig.last().await.unwrap()), (2, 3));
    assert!(written(rig.state.as_ref(), "sink", 2).await);
    // The driver has gone: the stage's input closes.
    ended(stage).await.unwrap();
}

/// A stage that fails while a barrier is in flight fails the driver, and
/// nothing of the epoch is committed.
#[tokio::test(start_paused = true)]
async fn a_stage_failing_mid_barrier_fails_the_run_without_a_commit() {
    let mut rig = Rig::new();
    let (first, input) = Output::channel(8, 4);
    let (to_sink, sink_input) = Output::channel(8, 4);
    let step = tokio::spawn(TestStage::step("step", &rig.log, to_sink, AtBarrier::Fail).run(input));
    let sink = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(sink_input));
    let source = ScriptedSource::new(&[1, 1], Then::Wait, &rig.log);
    let policy = CheckpointPolicy::at_end_only().and_every_events(2);
    let driven = rig.drive(policy, Delivery::ExactlyOnce, source, first);

    let error = ended(driven).await.expect_err("the barrier was lost");
    assert!(
        matches!(&error, PipelineError::Disconnected { stage, .. } if stage == "source"),
        "{error}"
    );
    assert_eq!(ended(step).await, Err("step failed".to_owned()));
    ended(sink).await.unwrap();
    assert_eq!(rig.log.commits(), Vec::<u64>::new());
    assert_eq!(rig.last().await, None);
    assert!(!written(rig.state.as_ref(), "sink", 1).await);
    assert_eq!(rig.status.checkpoints.load(Ordering::Relaxed), 0);
    assert_eq!(*rig.committed.borrow(), 0, "no epoch announced");
}

/// Interval checkpoints are taken only when something happened: input,
/// or output a step released on its own (a quiet source's window timer).
#[tokio::test(start_paused = true)]
async fn an_interval_checkpoint_needs_input_or_released_output() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    let stage = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(input));
    let source = ScriptedSource::new(&[2], Then::Wait, &rig.log);
    let policy = CheckpointPolicy::every(Duration::from_secs(1));
    let driven = rig.drive(policy, Delivery::ExactlyOnce, source, output);

    tokio::time::sleep(Duration::from_millis(5500)).await;
    assert_eq!(rig.log.commits(), [2], "one checkpoint for the input");

    rig.released.store(true, Ordering::Release);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.log.commits(), [2, 2], "one for the released output");
    assert_eq!(at(&rig.last().await.unwrap()), (2, 2));
    assert!(written(rig.state.as_ref(), "sink", 2).await);

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.log.commits(), [2, 2], "then quiet again");
    rig.shutdown.send_replace(true);
    // The run read something: its end is checkpointed.
    assert_eq!(ended(driven).await.unwrap().checkpoints, 3);
    ended(stage).await.unwrap();
}

/// A checkpoint asked for goes through even when nothing was read; a
/// driver that read nothing stops without a final one.
#[tokio::test(start_paused = true)]
async fn a_requested_checkpoint_goes_through_on_an_idle_source() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    let stage = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(input));
    let source = ScriptedSource::new(&[], Then::Wait, &rig.log);
    let policy = CheckpointPolicy::every(Duration::from_secs(1));
    let driven = rig.drive(policy, Delivery::ExactlyOnce, source, output);

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.last().await, None, "nothing due on an idle source");
    rig.requests.notify_one();
    settle().await;
    assert_eq!(
        rig.last().await.map(|record| record.epoch),
        Some(1),
        "asked for"
    );
    assert_eq!(rig.last().await.unwrap().position, Position::Start);
    rig.shutdown.send_replace(true);
    assert_eq!(ended(driven).await.unwrap().checkpoints, 1);
    ended(stage).await.unwrap();
}

/// A first stage that has gone fails the driver without a commit.
#[tokio::test(start_paused = true)]
async fn a_closed_first_stage_fails_the_driver() {
    let mut rig = Rig::new();
    let (output, input) = Output::channel(8, 4);
    drop(input);
    let source = ScriptedSource::new(&[1], Then::End, &rig.log);
    let driven = rig.drive(
        CheckpointPolicy::at_end_only(),
        Delivery::AtLeastOnce,
        source,
        output,
    );
    let error = ended(driven).await.expect_err("no stage to send to");
    assert!(
        matches!(&error, PipelineError::Disconnected { stage, .. } if stage == "source"),
        "{error}"
    );
    assert_eq!(rig.last().await, None);
}

/// Each committed checkpoint is in the status' history, oldest first, with
/// the keys its commit wrote (one per stage the barrier passed).
#[tokio::test(start_paused = true)]
async fn committed_checkpoints_are_kept_in_the_history() {
    let mut rig = Rig::new();
    let (first, input) = Output::channel(8, 4);
    let (to_sink, sink_input) = Output::channel(8, 4);
    let step = TestStage::step("step", &rig.log, to_sink, AtBarrier::Pass);
    let step = tokio::spawn(step.run(input));
    let sink = tokio::spawn(TestStage::sink("sink", &rig.log, AtBarrier::Pass).run(sink_input));
    let source = ScriptedSource::new(&[1, 1, 1], Then::End, &rig.log);
    let policy = CheckpointPolicy::at_end_only().and_every_events(2);
    let driven = rig.drive(policy, Delivery::AtLeastOnce, source, first);
    let driven = ended(driven).await.expect("the source ends cleanly");
    ended(step).await.unwrap();
    ended(sink).await.unwrap();

    let history = rig.status.checkpoint_history();
    let epochs: Vec<u64> = history.iter().map(|entry| entry.epoch).collect();
    assert_eq!(epochs, (1..=driven.checkpoints).collect::<Vec<_>>());
    for entry in &history {
        // Two stages, one key each per barrier.
        assert_eq!(entry.keys, 2, "{entry:?}");
        assert!(entry.commit_micros <= entry.pause_micros, "{entry:?}");
        assert!(entry.at_ms > 0, "{entry:?}");
    }
}
