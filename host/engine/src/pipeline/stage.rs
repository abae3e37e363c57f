//! The stages after the source: one task per step and one for the sink,
//! joined by bounded channels that carry batches, barriers and the end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch, Notify};

use super::error::PipelineError;
use super::outbox::Outbox;
use super::status::{LiveStatus, StageStats};
use crate::checkpoint::CheckpointPolicy;
use crate::dead_letter::DeadLetters;
use crate::state::WriteSet;
use crate::step::{Step, StepError};
use crate::streams::{Sink, StreamError};
use crate::Batch;

/// What flows between stages.
pub(super) enum Message {
    /// A batch of events, with its share of the channel's room.
    Data(Batch, Room),
    /// A checkpoint barrier: every stage adds its pending writes as it
    /// passes; the sink flushes and sends the writes back to the source driver.
    Barrier(Barrier),
    /// The source's watermark moved (ms since the Unix epoch); it follows
    /// the batches read before it.
    Watermark(u64),
    /// The finite source has ended: steps push what they still hold.
    End,
}

/// A batch's share of a channel's room, given back when it is received.
pub(super) type Room = Option<tokio::sync::OwnedSemaphorePermit>;

/// The sending end of a channel between stages. Channels are bounded in
/// batches and, because one batch can be a whole window, in events too: a
/// batch takes one unit of room per event (a batch larger than the room
/// waits for the channel to be empty), so what waits between two stages
/// stays under `capacity × batch_size` events.
#[derive(Clone)]
pub(super) struct Output {
    sender: mpsc::Sender<Message>,
    room: Arc<tokio::sync::Semaphore>,
    max_room: u32,
}

/// The receiving end has gone: the stage after this one stopped.
pub(super) type SendError = mpsc::error::SendError<Message>;

impl Output {
    /// A channel of `capacity` batches and `capacity × batch_size` events.
    pub(super) fn channel(capacity: usize, batch_size: usize) -> (Output, mpsc::Receiver<Message>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let max_room =
            u32::try_from(capacity.saturating_mul(batch_size).max(1)).unwrap_or(u32::MAX);
        let room = Arc::new(tokio::sync::Semaphore::new(max_room as usize));
        (
            Output {
                sender,
                room,
                max_room,
            },
            receiver,
        )
    }

    /// Sends a batch once the channel has room for its events.
    pub(super) async fn send_batch(&self, batch: Batch) -> Result<(), SendError> {
        let units = u32::try_from(batch.events.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_room);
        // The semaphore is never closed, so this cannot fail; sending
        // without room would only loosen the bound.
        let room = self.room.clone().acquire_many_owned(units).await.ok();
        self.sender.send(Message::Data(batch, room)).await
    }

    /// Sends a barrier or the end (they take no room).
    pub(super) async fn send(&self, message: Message) -> Result<(), SendError> {
        self.sender.send(message).await
    }

    /// Sends every batch of `produced`, emptying it.
    async fn send_all(&self, produced: &mut Vec<Batch>) -> Result<(), SendError> {
        for batch in produced.drain(..) {
            self.send_batch(batch).await?;
        }
        Ok(())
    }
}

/// A checkpoint barrier on its way to the sink.
pub(super) struct Barrier {
    /// The epoch its checkpoint closes.
    pub(super) epoch: u64,
    /// The write sets of the stages it has passed.
    pub(super) writes: Vec<WriteSet>,
    /// Where the sink answers.
    pub(super) reply: ReplyTo,
}

/// Where a barrier's sink answers the driver.
pub(super) enum ReplyTo {
    /// A line: its one sink answers once.
    Once(oneshot::Sender<BarrierReply>),
    /// A graph: each sink answers on one channel shared by the barriers of
    /// the epoch, with its index among the graph's sinks.
    Shared(mpsc::UnboundedSender<(usize, BarrierReply)>),
}

impl Barrier {
    /// A barrier of the checkpoint closing `epoch`, with no writes yet,
    /// and the receiver of its reply.
    pub(super) fn new(epoch: u64) -> (Barrier, oneshot::Receiver<BarrierReply>) {
        let (reply, replied) = oneshot::channel();
        let barrier = Barrier {
            epoch,
            writes: Vec::new(),
            reply: ReplyTo::Once(reply),
        };
        (barrier, replied)
    }

    /// A graph's barrier of the checkpoint closing `epoch`, whose sinks
    /// answer on `replies`.
    pub(super) fn shared(
        epoch: u64,
        replies: mpsc::UnboundedSender<(usize, BarrierReply)>,
    ) -> Barrier {
        Barrier {
            epoch,
            writes: Vec::new(),
            reply: ReplyTo::Shared(replies),
        }
    }

    /// Another barrier of the same checkpoint for one more consumer of a
    /// graph's output, without writes (they travel on with one copy only,
    /// so that each is committed once); `None` for a line's barrier.
    pub(super) fn fork(&self) -> Option<Barrier> {
        match &self.reply {
            ReplyTo::Once(_) => None,
            ReplyTo::Shared(replies) => Some(Barrier::shared(self.epoch, replies.clone())),
        }
    }

    /// Answers the driver: sink `sink` (its index in a graph) has flushed
    /// what came before the barrier. The driver may be gone if it failed;
    /// its error is reported.
    pub(super) fn answer(self, sink: usize, reply: BarrierReply) {
        match self.reply {
            ReplyTo::Once(sender) => {
                let _ = sender.send(reply);
            }
            ReplyTo::Shared(sender) => {
                let _ = sender.send((sink, reply));
            }
        }
    }
}

/// What comes back to the source driver when a barrier reaches the sink.
pub(super) struct BarrierReply {
    /// Every stage's writes of the epoch, in pipeline order.
    pub(super) writes: Vec<WriteSet>,
    /// The sink's position after its flush.
    pub(super) sink_position: Option<u64>,
    /// The dead-letter sink's position after the epoch's letters.
    pub(super) dead_letter_position: Option<u64>,
    /// Events the sink's outbox sealed into this checkpoint, to be written
    /// once it has committed (0 when publishing before the commit).
    pub(super) outbox_events: u64,
}

/// What the stages share with the source driver.
#[derive(Clone)]
pub(super) struct StageLink {
    /// Set when a step released output on its own (a window's timer, a
    /// signal, an idle timeout): the next due checkpoint is then needed even
    /// if the source read nothing, or that output would wait unflushed in
    /// the sink until the next input.
    pub(super) released: Arc<AtomicBool>,
    /// Asks the source driver for a checkpoint.
    pub(super) requests: Arc<Notify>,
    /// A step's pending writes past these force a checkpoint.
    pub(super) max_pending_keys: Option<u64>,
    pub(super) max_pending_bytes: Option<u64>,
}

impl StageLink {
    /// A link that asks `requests` for checkpoints by `policy`'s bounds.
    pub(super) fn new(requests: Arc<Notify>, policy: &CheckpointPolicy) -> Self {
        StageLink {
            released: Arc::new(AtomicBool::new(false)),
            requests,
            max_pending_keys: policy.max_pending_keys,
            max_pending_bytes: policy.max_pending_bytes,
        }
    }

    /// Records what `step` holds for the next checkpoint and asks for one
    /// (once per epoch) when it is past a bound.
    pub(super) fn check_pending(
        &self,
        step: &mut dyn Step,
        stats: &StageStats,
        requested: &mut bool,
    ) {
        let pending = step.pending_writes();
        if pending.keys == 0 {
            return;
        }
        let (keys, bytes) = (pending.keys as u64, pending.bytes as u64);
        stats.pending_keys_peak.fetch_max(keys, Ordering::Relaxed);
        stats.pending_bytes_peak.fetch_max(bytes, Ordering::Relaxed);
        let over = self.max_pending_keys.is_some_and(|max| keys >= max)
            || self.max_pending_bytes.is_some_and(|max| bytes >= max);
        if over && !*requested {
            *requested = true;
            stats.write_set_checkpoints.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(step = %stats.name, keys, bytes, "pending writes reached their bound: checkpoint requested");
            self.requests.notify_one();
        }
    }
}

/// Runs one step: batches in, batches out; at a barrier it adds its
/// writes; its timer or trigger releases output on its own.
pub(super) struct StageRunner {
    pipeline: String,
    step: Box<dyn Step>,
    output: Output,
    stats: Arc<StageStats>,
    link: StageLink,
    /// The step's output of one call, sent on before the next.
    produced: Vec<Batch>,
    /// Whether this step asked for a checkpoint since the last barrier.
    requested: bool,
}

/// What a step's loop does next.
enum Next {
    /// Handle a message from upstream.
    Message(Message),
    /// Its timer is due or its trigger fired: release what is due.
    Wake,
}

impl StageRunner {
    /// A runner of `step` that sends to `output`.
    pub(super) fn new(
        pipeline: String,
        step: Box<dyn Step>,
        output: Output,
        stats: Arc<StageStats>,
        link: StageLink,
    ) -> Self {
        StageRunner {
            pipeline,
            step,
            output,
            stats,
            link,
            produced: Vec::new(),
            requested: false,
        }
    }

    /// Runs until upstream closes its channel.
    ///
    /// # Errors
    ///
    /// The step failed, or the next stage has gone.
    pub(super) async fn run(
        mut self,
        mut input: mpsc::Receiver<Message>,
    ) -> Result<u64, PipelineError> {
        let trigger = self.step.trigger();
        loop {
            let timer = self.step.timer();
            let next = tokio::select! {
                message = input.recv() => match message {
                    Some(message) => Next::Message(message),
                    None => break,
                },
                () = sleep_until(timer), if timer.is_some() => Next::Wake,
                () = notified(trigger.as_deref()), if trigger.is_some() => Next::Wake,
            };
            match next {
                Next::Wake => self.wake().await?,
                Next::Message(Message::Data(batch, room)) => {
                    drop(room);
                    self.process(batch).await?;
                }
                Next::Message(Message::Barrier(barrier)) => self.barrier(barrier).await?,
                Next::Message(Message::Watermark(watermark)) => {
                    self.watermark(watermark).await?;
                }
                Next::Message(Message::End) => self.end().await?,
            }
        }
        Ok(0)
    }

    async fn wake(&mut self) -> Result<(), PipelineError> {
        let woken = self.step.wake(&mut self.produced).await;
        woken.map_err(|source| self.step_error(source))?;
        if !self.produced.is_empty() {
            self.link.released.store(true, Ordering::Release);
        }
        self.send_produced().await
    }

    async fn process(&mut self, batch: Batch) -> Result<(), PipelineError> {
        let events = batch.events.len() as u64;
        self.stats.events_in.fetch_add(events, Ordering::Relaxed);
        let processed = self.step.process(batch, &mut self.produced).await;
        processed.map_err(|source| self.step_error(source))?;
        self.link
            .check_pending(self.step.as_mut(), &self.stats, &mut self.requested);
        let out: usize = self.produced.iter().map(|b| b.events.len()).sum();
        self.stats
            .events_out
            .fetch_add(out as u64, Ordering::Relaxed);
        self.send_produced().await
    }

    /// Lets the step release what the watermark closes, then passes the
    /// watermark on after that output.
    async fn watermark(&mut self, watermark: u64) -> Result<(), PipelineError> {
        let released = self.step.watermark(watermark, &mut self.produced).await;
        released.map_err(|source| self.step_error(source))?;
        if !self.produced.is_empty() {
            self.link.released.store(true, Ordering::Release);
        }
        let out: usize = self.produced.iter().map(|b| b.events.len()).sum();
        self.stats
            .events_out
            .fetch_add(out as u64, Ordering::Relaxed);
        self.send_produced().await?;
        self.output
            .send(Message::Watermark(watermark))
            .await
            .map_err(|_| self.disconnected())
    }

    async fn barrier(&mut self, mut barrier: Barrier) -> Result<(), PipelineError> {
        // A module swap (and its state migration) first: its writes are
        // committed with this barrier's checkpoint.
        self.step.at_barrier().await;
        barrier.writes.push(self.step.take_writes());
        self.requested = false;
        crate::dead_letter::passed_barrier(barrier.epoch);
        // Sampled at barriers: counting a window's buffers is not free.
        if let Some(held) = self.step.buffered_events() {
            self.stats.buffered.store(held as u64, Ordering::Relaxed);
        }
        self.output
            .send(Message::Barrier(barrier))
            .await
            .map_err(|_| self.disconnected())
    }

    async fn end(&mut self) -> Result<(), PipelineError> {
        let finished = self.step.finish(&mut self.produced).await;
        finished.map_err(|source| self.step_error(source))?;
        self.send_produced().await?;
        self.output
            .send(Message::End)
            .await
            .map_err(|_| self.disconnected())
    }

    async fn send_produced(&mut self) -> Result<(), PipelineError> {
        let sent = self.output.send_all(&mut self.produced).await;
        sent.map_err(|_| self.disconnected())
    }

    fn step_error(&self, source: StepError) -> PipelineError {
        PipelineError::of_step(&self.pipeline, source)
    }

    fn disconnected(&self) -> PipelineError {
        PipelineError::Disconnected {
            pipeline: self.pipeline.clone(),
            stage: self.step.name().to_owned(),
        }
    }
}

pub(super) async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

pub(super) async fn notified(notify: Option<&Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// A sink that publishes after the commit: its outbox, and the epochs
/// the source driver has committed.
pub(super) struct AfterCommit {
    /// The held and sealed output.
    pub(super) outbox: Outbox,
    /// The epoch of each committed checkpoint (the driver's).
    pub(super) committed: watch::Receiver<u64>,
}

/// What the sink's loop does next.
enum SinkNext {
    /// Handle a message from upstream (`None`: upstream has closed).
    Message(Option<Message>),
    /// The sealed output's checkpoint has committed (`false`: the driver
    /// has gone without committing it).
    Committed(bool),
}

/// Runs the sink: writes batches (or, publishing after the commit, holds
/// them in the outbox); at a barrier flushes (the dead letters too) and
/// answers the source driver with the writes and its position; publishing
/// after the commit, writes the sealed output once its checkpoint has
/// committed. Returns the events written.
///
/// # Errors
///
/// The sink or the dead-letter sink failed.
pub(super) async fn run_sink(
    pipeline: String,
    mut sink: Box<dyn Sink>,
    mut input: mpsc::Receiver<Message>,
    dead_letters: Option<DeadLetters>,
    status: Arc<LiveStatus>,
    mut after_commit: Option<AfterCommit>,
) -> Result<u64, PipelineError> {
    let stream_error = |source| PipelineError::Stream {
        pipeline: pipeline.clone(),
        source,
    };
    let mut events_out = 0u64;
    // Whether the driver has gone: nothing more will commit.
    let mut driver_gone = false;
    loop {
        let waiting = match &after_commit {
            Some(after) if !driver_gone => after.outbox.sealed_epoch(),
            _ => None,
        };
        let next = match (after_commit.as_mut(), waiting) {
            (Some(after), Some(epoch)) => {
                tokio::select! {
                    biased;
                    committed = after.committed.wait_for(|committed| *committed >= epoch) => {
                        SinkNext::Committed(committed.is_ok())
                    }
                    message = input.recv() => SinkNext::Message(message),
                }
            }
            _ => SinkNext::Message(input.recv().await),
        };
        let message = match next {
            SinkNext::Committed(true) => {
                if let Some(after) = after_commit.as_mut() {
                    let written = after.outbox.publish(sink.as_mut()).await;
                    let written = written.map_err(stream_error)?;
                    events_out += written;
                    status.events_out.fetch_add(written, Ordering::Relaxed);
                }
                continue;
            }
            SinkNext::Committed(false) => {
                driver_gone = true;
                continue;
            }
            SinkNext::Message(None) => break,
            SinkNext::Message(Some(message)) => message,
        };
        match message {
            Message::Data(batch, room) => {
                drop(room);
                if let Some(after) = after_commit.as_mut() {
                    after.outbox.hold(batch);
                    continue;
                }
                events_out += batch.events.len() as u64;
                status
                    .events_out
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                sink.write(batch).await.map_err(stream_error)?;
            }
            Message::Barrier(mut barrier) => {
                let mut outbox_events = 0;
                if let Some(after) = after_commit.as_mut() {
                    // The driver sends a barrier only after the last
                    // checkpoint committed: its output goes out first, so
                    // that the sink's position covers it.
                    if let Some(epoch) = after.outbox.sealed_epoch() {
                        let committed = *after.committed.borrow();
                        if committed < epoch {
                            return Err(PipelineError::Task {
                                pipeline: pipeline.clone(),
                                message: format!(
                                    "the barrier of epoch {} came before the commit of epoch \
                                     {epoch}, whose output is held",
                                    barrier.epoch
                                ),
                            });
                        }
                        let written = after.outbox.publish(sink.as_mut()).await;
                        let written = written.map_err(stream_error)?;
                        events_out += written;
                        status.events_out.fetch_add(written, Ordering::Relaxed);
                    }
                }
                let flushed = flush_at_barrier(
                    &pipeline,
                    sink.as_mut(),
                    dead_letters.as_ref(),
                    barrier.epoch,
                )
                .await?;
                if let Some(after) = after_commit.as_mut() {
                    let (writes, sealed) = after.outbox.seal(barrier.epoch);
                    barrier.writes.push(writes);
                    outbox_events = sealed;
                }
                status
                    .sink_duplicates
                    .store(sink.duplicates(), Ordering::Relaxed);
                let writes = std::mem::take(&mut barrier.writes);
                barrier.answer(
                    0,
                    BarrierReply {
                        writes,
                        sink_position: flushed.sink,
                        dead_letter_position: flushed.dead_letter,
                        outbox_events,
                    },
                );
            }
            Message::Watermark(_) | Message::End => {}
        }
    }
    // The last checkpoint's output, if it committed and is not out yet.
    if let Some(after) = after_commit.as_mut() {
        if let Some(epoch) = after.outbox.sealed_epoch() {
            if *after.committed.borrow() >= epoch {
                let written = after.outbox.publish(sink.as_mut()).await;
                let written = written.map_err(stream_error)?;
                events_out += written;
                status.events_out.fetch_add(written, Ordering::Relaxed);
            }
        }
    }
    status
        .sink_duplicates
        .store(sink.duplicates(), Ordering::Relaxed);
    Ok(events_out)
}

/// Where a sink and the dead-letter sink are after a barrier's flush.
pub(super) struct Flushed {
    /// The sink's position.
    pub(super) sink: Option<u64>,
    /// The dead-letter sink's position.
    pub(super) dead_letter: Option<u64>,
}

/// Makes the sink's output and the dead letters of the checkpoint closing
/// `epoch` durable; returns both sinks' positions.
pub(super) async fn flush_at_barrier(
    pipeline: &str,
    sink: &mut dyn Sink,
    dead_letters: Option<&DeadLetters>,
    epoch: u64,
) -> Result<Flushed, PipelineError> {
    let stream_error = |source: StreamError| PipelineError::Stream {
        pipeline: pipeline.to_owned(),
        source,
    };
    sink.flush().await.map_err(stream_error)?;
    let dead_letter = match dead_letters {
        Some(dead_letters) => match dead_letters.flush(epoch).await {
            Ok(flushed) => flushed.map_err(stream_error)?,
            Err(_) => {
                return Err(PipelineError::Disconnected {
                    pipeline: pipeline.to_owned(),
                    stage: "dead-letter sink".to_owned(),
                })
            }
        },
        None => None,
    };
    Ok(Flushed {
        sink: sink.position().await.map_err(stream_error)?,
        dead_letter,
    })
}
