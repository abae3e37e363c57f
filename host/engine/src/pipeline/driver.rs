//! The source driver: reads the source, sends batches to the first stage,
//! injects checkpoint barriers, and commits checkpoints once the sink has
//! answered a barrier with every stage's writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use super::error::PipelineError;
use super::stage::{Barrier, Message, Output};
use super::status::LiveStatus;
use super::task::OwnedTask;
use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::state::SharedState;
use crate::streams::{CommitListener, Source, StreamError};
use crate::{Batch, Event};

/// What a read of the source gave: a batch, the position after it and the
/// source's watermark then; the end (`None`); or an error.
pub(super) type ReadResult = Result<Option<ReadBatch>, StreamError>;

/// A batch read (perhaps empty, when only the source's watermark moved),
/// the position after its last event, and the source's watermark after it.
pub(super) type ReadBatch = (Vec<Event>, Position, Option<u64>);

/// At-most-once commits the position once for a group of batches the
/// source already has ready: at most this many batches...
const GROUP_MAX_BATCHES: usize = 1000;
/// ...and at most this many events (or one batch, if bigger). After a
/// crash, a committed group's unprocessed events are skipped: this bounds
/// how many a crash can skip beyond what is in flight between stages.
const GROUP_MAX_EVENTS: usize = 1024;
/// At the end of a run that publishes after the commit, at most this many
/// checkpoints more delete the outbox of the last (each may seal output a
/// window's timer released meanwhile, which the next deletes).
const MAX_CLEARING_CHECKPOINTS: usize = 3;

/// Where the driver starts: the epoch of its first checkpoint, the
/// position the source was sought to, and the last committed record.
pub(super) struct Resume {
    /// The epoch the next checkpoint closes.
    pub(super) epoch: u64,
    /// The source's position (in its current form, if it migrated one).
    pub(super) position: Position,
    /// The last committed checkpoint (checkpoint 0 on a first run).
    pub(super) last_checkpoint: Option<CheckpointRecord>,
    /// The fencing token every commit carries.
    pub(super) fence: u64,
    /// Whether the committed state holds an outbox that the next
    /// checkpoint deletes (the restart wrote it again).
    pub(super) outbox_uncleared: bool,
}

/// The signals between the driver and the rest of the pipeline.
pub(super) struct DriverSignals {
    /// Requests for a checkpoint: on demand (handle, signal, swap), a
    /// window's close, a write set past its bound.
    pub(super) requests: Arc<Notify>,
    /// Set by a step that released output on its own since the last barrier.
    pub(super) released: Arc<AtomicBool>,
    /// Told the epoch of each committed checkpoint (`checkpoint_now`).
    pub(super) committed: watch::Sender<u64>,
}

/// Everything the driver is built from.
pub(super) struct DriverSetup {
    /// The pipeline's name, for errors and logs.
    pub(super) pipeline: String,
    /// The name its checkpoints are kept under (tenant and pipeline).
    pub(super) scope: String,
    /// When to checkpoint.
    pub(super) policy: CheckpointPolicy,
    /// When positions are committed: ahead of processing (at-most-once)
    /// or at checkpoints.
    pub(super) delivery: Delivery,
    /// The most events asked of the source at once.
    pub(super) batch_size: usize,
    /// Where checkpoints are committed.
    pub(super) state: SharedState,
    /// Where the driver starts.
    pub(super) resume: Resume,
    /// Its counters are updated here.
    pub(super) status: Arc<LiveStatus>,
}

/// What a driver did, once its run has ended.
#[derive(Debug)]
pub(super) struct Driven {
    /// Events read from the source.
    pub(super) events_in: u64,
    /// Checkpoints committed (not counting commits ahead of at-most-once).
    pub(super) checkpoints: u64,
    /// The last committed checkpoint.
    pub(super) last_checkpoint: Option<CheckpointRecord>,
}

/// Why a checkpoint is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CheckpointCause {
    /// By the policy (interval, count): skipped when nothing was read.
    Due,
    /// At the end of the run.
    Last,
    /// On demand: always.
    Forced,
}

/// Reads the source, injects barriers, and commits checkpoints.
pub(super) struct SourceDriver {
    pipeline: String,
    /// The name its checkpoints are kept under (tenant and pipeline).
    scope: String,
    status: Arc<LiveStatus>,
    state: SharedState,
    policy: CheckpointPolicy,
    delivery: Delivery,
    batch_size: usize,
    fence: u64,
    /// The epoch the next checkpoint (or commit ahead) closes.
    epoch: u64,
    /// The position after the last batch sent on.
    position: Position,
    events_in: u64,
    events_since_checkpoint: u64,
    checkpoints: u64,
    last_checkpoint: Option<CheckpointRecord>,
    requests: Arc<Notify>,
    released: Arc<AtomicBool>,
    committed: watch::Sender<u64>,
    commit_listener: Option<Box<dyn CommitListener>>,
    /// Whether the last commit stored an outbox (output published after
    /// the commit) that a checkpoint still has to delete.
    outbox_uncleared: bool,
    /// The last watermark sent to the steps.
    watermark: Option<u64>,
    /// Whether the position moved since the last checkpoint (also past
    /// messages that are not events, such as a shuffle's watermarks).
    moved: bool,
}

impl SourceDriver {
    /// A driver ready to run from `setup.resume`.
    pub(super) fn new(setup: DriverSetup, signals: DriverSignals) -> Self {
        SourceDriver {
            pipeline: setup.pipeline,
            scope: setup.scope,
            status: setup.status,
            state: setup.state,
            policy: setup.policy,
            delivery: setup.delivery,
            batch_size: setup.batch_size,
            fence: setup.resume.fence,
            epoch: setup.resume.epoch,
            position: setup.resume.position,
            events_in: 0,
            events_since_checkpoint: 0,
            checkpoints: 0,
            last_checkpoint: setup.resume.last_checkpoint,
            requests: signals.requests,
            released: signals.released,
            committed: signals.committed,
            commit_listener: None,
            outbox_uncleared: setup.resume.outbox_uncleared,
            watermark: None,
            moved: false,
        }
    }

    /// Runs until the source ends or `shutdown` turns true, then commits
    /// a final checkpoint.
    ///
    /// # Errors
    ///
    /// The source, the state backend or a commit listener failed, or a
    /// stage has gone (a barrier unanswered); nothing more is committed.
    pub(super) async fn run(
        mut self,
        mut source: Box<dyn Source>,
        output: Output,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Driven, PipelineError> {
        self.commit_listener = source.commit_listener();
        let mut reads = Reads::spawn(source, self.delivery, self.batch_size, &self.status);
        let result = self.drive(&mut reads, &output, &mut shutdown).await;
        reads.stop();
        result?;
        Ok(Driven {
            events_in: self.events_in,
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint,
        })
    }

    async fn drive(
        &mut self,
        reads: &mut Reads,
        output: &Output,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let mut ticker = self.policy.interval.map(|interval| {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(pipeline = %self.pipeline, "shutdown requested");
                        return self.finish(output).await;
                    }
                }
                _ = tick(&mut ticker) => {
                    self.checkpoint(output, CheckpointCause::Due).await?;
                }
                () = self.requests.notified() => {
                    // On demand (a signal, the admin API, a module swap):
                    // a barrier goes through even when nothing was read.
                    self.checkpoint(output, CheckpointCause::Forced).await?;
                }
                read = reads.next() => match read {
                    Some(Ok(Some(batch))) => self.forward(batch, reads, output).await?,
                    Some(Ok(None)) | None => {
                        output.send(Message::End).await.map_err(|_| self.disconnected())?;
                        return self.finish(output).await;
                    }
                    Some(Err(source)) => {
                        return Err(PipelineError::Stream { pipeline: self.pipeline.clone(), source });
                    }
                }
            }
        }
    }

    /// The last checkpoint of a run; publishing after the commit, then
    /// the checkpoint that deletes its outbox (its output is written once
    /// the last commit has landed), so that a restart does not write it
    /// again.
    async fn finish(&mut self, output: &Output) -> Result<(), PipelineError> {
        self.checkpoint(output, CheckpointCause::Last).await?;
        for _ in 0..MAX_CLEARING_CHECKPOINTS {
            if !self.outbox_uncleared {
                break;
            }
            self.checkpoint(output, CheckpointCause::Forced).await?;
        }
        Ok(())
    }

    /// Sends a batch read (under at-most-once, with the batches already
    /// ready behind it, committed first) and checkpoints when the count
    /// policy says so.
    async fn forward(
        &mut self,
        first: ReadBatch,
        reads: &mut Reads,
        output: &Output,
    ) -> Result<(), PipelineError> {
        let mut group = vec![first];
        if self.delivery == Delivery::AtMostOnce {
            reads.gather_ready(&mut group);
            // Commit the position first: after a crash these events are
            // skipped, never applied twice.
            self.commit_ahead(&group).await?;
        }
        for (events, position, watermark) in group {
            let count = events.len() as u64;
            // An empty batch: only the source's watermark (or position) moved.
            if count > 0 {
                output
                    .send_batch(Batch::new(events))
                    .await
                    .map_err(|_| self.disconnected())?;
            }
            // After the batch, in the same channel: a window sees every
            // event read before a watermark before the watermark.
            if let Some(watermark) = watermark.filter(|w| self.watermark < Some(*w)) {
                self.watermark = Some(watermark);
                output
                    .send(Message::Watermark(watermark))
                    .await
                    .map_err(|_| self.disconnected())?;
            }
            if self.delivery != Delivery::AtMostOnce {
                // (At-most-once moved it to the group's end already: a
                // checkpoint never records less than was committed ahead.)
                self.position = position;
            }
            self.moved = true;
            self.events_in += count;
            self.status.events_in.fetch_add(count, Ordering::Relaxed);
            self.events_since_checkpoint += count;
        }
        if self
            .policy
            .every_events
            .is_some_and(|every| self.events_since_checkpoint >= every)
        {
            self.checkpoint(output, CheckpointCause::Due).await?;
        }
        Ok(())
    }

    /// At-most-once: commits the position after the last batch of `group`
    /// before any of it is processed.
    async fn commit_ahead(&mut self, group: &[ReadBatch]) -> Result<(), PipelineError> {
        let Some((_, position, _)) = group.last() else {
            return Ok(());
        };
        let mut record = CheckpointRecord::new(&self.scope, self.epoch, position.clone());
        record.fence = self.fence;
        record.sink_position = self.last_checkpoint.as_ref().and_then(|c| c.sink_position);
        record.dead_letter_position = self
            .last_checkpoint
            .as_ref()
            .and_then(|c| c.dead_letter_position);
        let commit_started = tokio::time::Instant::now();
        self.state
            .commit(&record, &[])
            .await
            .map_err(|source| self.commit_failed(source))?;
        self.status
            .commit_time
            .record_duration(commit_started.elapsed());
        self.status.committed(self.epoch, Duration::ZERO);
        self.status.position_commits.fetch_add(1, Ordering::Relaxed);
        self.epoch += 1;
        self.position = position.clone();
        self.last_checkpoint = Some(record);
        self.notify_committed().await
    }

    /// The error of a refused or failed commit; a commit refused by the
    /// fence (a newer owner claimed the pipeline) is logged as such here,
    /// where it happens, before anything can cancel the task.
    fn commit_failed(&self, source: crate::state::StateError) -> PipelineError {
        if let crate::state::StateError::Fenced { ours, newer, .. } = &source {
            tracing::error!(
                pipeline = %self.pipeline, epoch = self.epoch, fence = ours, newer_fence = newer,
                "commit refused by the fence: a newer owner claimed the pipeline"
            );
        }
        PipelineError::State {
            pipeline: self.pipeline.clone(),
            source,
        }
    }

    fn disconnected(&self) -> PipelineError {
        PipelineError::Disconnected {
            pipeline: self.pipeline.clone(),
            stage: "source".to_owned(),
        }
    }

    /// Whether a checkpoint for `why` has anything to save. Nothing read
    /// and nothing released since the last checkpoint: nothing to save (an
    /// idle pipeline writes nothing), except at the end of a run that read
    /// something, where steps may have written while finishing, or when
    /// asked for one. Output a step released on its own (a window's timer)
    /// is flushed by the next due checkpoint. An outbox committed by the
    /// last checkpoint (and written since) is deleted by the next.
    fn needed(&self, why: CheckpointCause) -> bool {
        let released = self.released.swap(false, Ordering::AcqRel);
        match why {
            CheckpointCause::Due => {
                self.events_since_checkpoint > 0 || self.moved || released || self.outbox_uncleared
            }
            CheckpointCause::Last => {
                self.events_since_checkpoint > 0
                    || self.events_in > 0
                    || released
                    || self.outbox_uncleared
            }
            CheckpointCause::Forced => true,
        }
    }

    /// Sends a barrier, waits until it has passed every stage and the sink
    /// has flushed, then commits the writes and the position atomically.
    async fn checkpoint(
        &mut self,
        output: &Output,
        why: CheckpointCause,
    ) -> Result<(), PipelineError> {
        if !self.needed(why) {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let (barrier, replied) = Barrier::new(self.epoch);
        output
            .send(Message::Barrier(barrier))
            .await
            .map_err(|_| self.disconnected())?;
        let reply = replied.await.map_err(|_| self.disconnected())?;
        let mut record = CheckpointRecord::new(&self.scope, self.epoch, self.position.clone());
        record.sink_position = reply.sink_position;
        record.dead_letter_position = reply.dead_letter_position;
        record.fence = self.fence;
        crate::fault::hold_before_commit(&self.pipeline, self.epoch).await;
        let commit_started = tokio::time::Instant::now();
        self.state
            .commit(&record, &reply.writes)
            .await
            .map_err(|source| self.commit_failed(source))?;
        let commit_took = commit_started.elapsed();
        self.status.commit_time.record_duration(commit_took);
        tracing::debug!(pipeline = %self.pipeline, epoch = self.epoch, position = ?self.position, "checkpoint committed");
        self.status
            .checkpoint_pause
            .record_duration(started.elapsed());
        self.status.committed(self.epoch, started.elapsed());
        let keys = reply.writes.iter().map(|writes| writes.len()).sum();
        self.status
            .record_checkpoint(self.epoch, started.elapsed(), commit_took, keys);
        self.status.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.committed.send_replace(self.epoch);
        self.epoch += 1;
        self.checkpoints += 1;
        self.events_since_checkpoint = 0;
        self.moved = false;
        self.last_checkpoint = Some(record);
        self.outbox_uncleared = reply.outbox_events > 0;
        self.notify_committed().await
    }

    /// Tells the source's commit listener that the last checkpoint is committed.
    async fn notify_committed(&mut self) -> Result<(), PipelineError> {
        let (Some(listener), Some(record)) =
            (self.commit_listener.as_mut(), self.last_checkpoint.as_ref())
        else {
            return Ok(());
        };
        listener
            .committed(&record.position)
            .await
            .map_err(|source| PipelineError::Stream {
                pipeline: self.pipeline.clone(),
                source,
            })
    }
}

/// The source's reads, taken in their own task so that waiting for input
/// never holds back a due checkpoint or a shutdown.
pub(super) struct Reads {
    receiver: mpsc::Receiver<ReadResult>,
    /// A read taken while grouping that ends the group (the end of the
    /// source, an error, a batch too big for it): handled next.
    set_aside: Option<ReadResult>,
    /// Aborted with the pipeline: a reader left running would go on
    /// pulling for nobody.
    _reader: OwnedTask<()>,
}

impl Reads {
    /// Starts reading `source` ahead of the driver: two batches, and under
    /// at-most-once enough small ones to make a group.
    pub(super) fn spawn(
        mut source: Box<dyn Source>,
        delivery: Delivery,
        batch_size: usize,
        status: &Arc<LiveStatus>,
    ) -> Reads {
        let ahead = match delivery {
            Delivery::AtMostOnce => GROUP_MAX_EVENTS
                .div_ceil(batch_size.max(1))
                .clamp(2, GROUP_MAX_BATCHES),
            Delivery::AtLeastOnce | Delivery::ExactlyOnce => 2,
        };
        let (sender, receiver) = mpsc::channel::<ReadResult>(ahead);
        let status = status.clone();
        let reader = OwnedTask::spawn(async move {
            loop {
                let result = source.next_batch(batch_size).await.map(|read| {
                    read.map(|(events, position)| (events, position, source.watermark()))
                });
                if let Some(lag) = source.lag() {
                    let lag = i64::try_from(lag).unwrap_or(i64::MAX);
                    status.source_lag.store(lag, Ordering::Relaxed);
                }
                let last = !matches!(result, Ok(Some(_)));
                if sender.send(result).await.is_err() || last {
                    break;
                }
            }
        });
        Reads {
            receiver,
            set_aside: None,
            _reader: reader,
        }
    }

    /// The next read: the one set aside while grouping, or the reader's
    /// next (`None`: the reader has gone).
    async fn next(&mut self) -> Option<ReadResult> {
        match self.set_aside.take() {
            Some(read) => Some(read),
            None => self.receiver.recv().await,
        }
    }

    /// Polls for the next read, as [`Reads::next`] (`None`: the reader
    /// has gone): a graph's driver polls the reads of all its sources.
    pub(super) fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<ReadResult>> {
        match self.set_aside.take() {
            Some(read) => std::task::Poll::Ready(Some(read)),
            None => self.receiver.poll_recv(cx),
        }
    }

    /// Adds to `group` the batches the reader already has ready, up to the
    /// group's bounds, without waiting for more. A read that ends the
    /// group early is set aside for [`Reads::next`].
    fn gather_ready(&mut self, group: &mut Vec<ReadBatch>) {
        let mut events: usize = group.iter().map(|(events, _, _)| events.len()).sum();
        while group.len() < GROUP_MAX_BATCHES && events < GROUP_MAX_EVENTS {
            match self.receiver.try_recv() {
                Ok(Ok(Some((batch, position, watermark)))) => {
                    if events + batch.len() > GROUP_MAX_EVENTS {
                        // Too big for this group: it starts the next one.
                        self.set_aside = Some(Ok(Some((batch, position, watermark))));
                        return;
                    }
                    events += batch.len();
                    group.push((batch, position, watermark));
                }
                Ok(other) => {
                    self.set_aside = Some(other);
                    return;
                }
                // Nothing ready (or the reader is gone: the next read says so).
                Err(_) => return,
            }
        }
    }

    /// Stops the reader (the source is dropped with it).
    fn stop(self) {
        drop(self);
    }
}

pub(super) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
