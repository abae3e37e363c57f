//! Running a graph: one driver reads every source and commits the
//! checkpoints; a task per step and per sink; a bounded channel per edge.
//! A step or sink with several inputs aligns the barriers of a checkpoint:
//! it reads no more of an input whose barrier it holds until every input's
//! barrier has come, then passes one barrier on (docs/graphs.md).

use std::collections::{BTreeMap, HashMap};
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::{mpsc, watch, Notify};

use super::builder::{task_failed, Outcome};
use super::driver::{tick, Driven, ReadBatch, Reads};
use super::error::PipelineError;
use super::graph::{GraphSink, Reader, Wiring, INPUT_HEADER};
use super::route::Router;
use super::stage::{
    flush_at_barrier, notified, sleep_until, Barrier, BarrierReply, Message, Output, StageLink,
};
use super::status::{LiveStatus, StageStats};
use super::task::OwnedTask;
use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::dead_letter::{DeadLetterInbox, DeadLetters};
use crate::state::SharedState;
use crate::step::{Step, StepError};
use crate::streams::{CommitListener, Sink, Source, StreamError};
use crate::{Batch, Event};

/// A step of a graph, ready to run.
pub(super) enum ReadyNode {
    /// A step with one output.
    Step(Box<dyn Step>),
    /// A router, one output per route.
    Route(Router),
}

impl ReadyNode {
    fn name(&self) -> &str {
        match self {
            ReadyNode::Step(step) => step.name(),
            ReadyNode::Route(router) => router.name(),
        }
    }
}

/// What a graph runs with, besides its parts.
pub(super) struct GraphSetup {
    /// The pipeline's name.
    pub(super) pipeline: String,
    /// The name its checkpoints are kept under (tenant and pipeline).
    pub(super) scope: String,
    /// When to checkpoint.
    pub(super) policy: CheckpointPolicy,
    /// At-least-once or exactly-once (a graph refuses at-most-once).
    pub(super) delivery: Delivery,
    /// The most events asked of a source at once.
    pub(super) batch_size: usize,
    /// Batches one channel holds.
    pub(super) capacity: usize,
    /// Where checkpoints are committed.
    pub(super) state: SharedState,
    /// Live counters.
    pub(super) status: Arc<LiveStatus>,
    /// What the stages share with the driver.
    pub(super) link: StageLink,
    /// Requests for a checkpoint.
    pub(super) requests: Arc<Notify>,
    /// Told the epoch of each committed checkpoint.
    pub(super) committed: watch::Sender<u64>,
    /// Turns true when a shutdown is requested.
    pub(super) shutdown: watch::Receiver<bool>,
    /// The dead-letter sink's queue, flushed by every sink at a barrier.
    pub(super) dead_letters: Option<DeadLetters>,
}

/// What a graph's run did: the driver's account, the events the sinks
/// wrote, and the checkpoint it resumed from.
pub(super) type GraphOutcome = (Driven, u64, Option<CheckpointRecord>);

/// Runs a checked graph until its sources end or a shutdown, then joins
/// every task.
///
/// # Errors
///
/// Restoring failed, or a source, step, sink or commit failed.
pub(super) async fn run_graph(
    setup: GraphSetup,
    wiring: Wiring,
    mut sources: Vec<(String, Box<dyn Source>)>,
    nodes: Vec<(Vec<String>, ReadyNode)>,
    mut sinks: Vec<GraphSink>,
    dead_letter: Option<(DeadLetterInbox, Box<dyn Sink>)>,
) -> Result<GraphOutcome, PipelineError> {
    let pipeline = setup.pipeline.clone();
    let (dead_letter_inbox, mut dead_letter_sink) = dead_letter.unzip();
    let resume = restore(&setup, &mut sources, &mut sinks, dead_letter_sink.as_mut()).await?;
    // Started once the sink is back at the checkpoint, before any step runs.
    let dead_letter_task = match (dead_letter_inbox, dead_letter_sink) {
        (Some(inbox), Some(sink)) => Some(OwnedTask::from(crate::dead_letter::start(
            inbox,
            sink,
            setup.status.dead_letter_recorder(),
        ))),
        _ => None,
    };

    // One channel per edge: the producer's side by output name, the
    // reader's by its input.
    let mut outputs: HashMap<String, Vec<Output>> = HashMap::new();
    let mut node_inputs: Vec<Vec<Option<Input>>> = nodes
        .iter()
        .map(|(inputs, _)| inputs.iter().map(|_| None).collect())
        .collect();
    let mut sink_inputs: Vec<Vec<Option<Input>>> = sinks
        .iter()
        .map(|sink| sink.inputs.iter().map(|_| None).collect())
        .collect();
    for (name, readers) in &wiring.readers {
        for reader in readers {
            let (output, receiver) = Output::channel(setup.capacity, setup.batch_size);
            outputs.entry(name.clone()).or_default().push(output);
            let input = Input::new(name, receiver);
            let slot = match *reader {
                Reader::Node { node, input } => node_inputs
                    .get_mut(node)
                    .and_then(|inputs| inputs.get_mut(input)),
                Reader::Sink { sink, input } => sink_inputs
                    .get_mut(sink)
                    .and_then(|inputs| inputs.get_mut(input)),
            };
            if let Some(slot) = slot {
                *slot = Some(input);
            }
        }
    }
    let mut take_outputs = |name: &str| outputs.remove(name).unwrap_or_default();

    let mut node_tasks = Vec::with_capacity(nodes.len());
    for ((from, node), inputs) in nodes.into_iter().zip(node_inputs) {
        let ports = match &node {
            ReadyNode::Step(step) => vec![take_outputs(step.name())],
            ReadyNode::Route(router) => router
                .route_names()
                .iter()
                .map(|route| take_outputs(&format!("{}.{route}", router.name())))
                .collect(),
        };
        let (counters, kind) = match &node {
            ReadyNode::Step(step) => (step.counters(), step.kind()),
            ReadyNode::Route(_) => (None, "route"),
        };
        let stats = Arc::new(StageStats::new(node.name(), counters).described(kind, from));
        setup.status.add_stage(stats.clone());
        let runner = NodeRunner {
            pipeline: pipeline.clone(),
            inputs: Inputs::new(inputs.into_iter().flatten().collect()),
            node,
            ports,
            stats,
            link: setup.link.clone(),
            produced: Vec::new(),
            routed: Vec::new(),
            requested: false,
            watermark: None,
        };
        node_tasks.push(OwnedTask::spawn(crate::dead_letter::in_stage(runner.run())));
    }
    let mut sink_tasks = Vec::with_capacity(sinks.len());
    let mut sink_names = Vec::with_capacity(sinks.len());
    for (index, (sink, inputs)) in sinks.into_iter().zip(sink_inputs).enumerate() {
        sink_names.push(sink.name.clone());
        let runner = SinkRunner {
            pipeline: pipeline.clone(),
            index,
            sink: sink.sink,
            inputs: Inputs::new(inputs.into_iter().flatten().collect()),
            dead_letters: setup.dead_letters.clone(),
            status: setup.status.clone(),
        };
        sink_tasks.push(OwnedTask::spawn(runner.run()));
    }
    let mut slots = Vec::with_capacity(sources.len());
    let mut boxed = Vec::with_capacity(sources.len());
    for ((name, source), position) in sources.into_iter().zip(resume.positions) {
        slots.push(SourceSlot {
            outputs: take_outputs(&name),
            name,
            position,
            ended: false,
            watermark: None,
            listener: None,
        });
        boxed.push(source);
    }
    setup.status.set_phase(super::status::Phase::Running);
    let driver = GraphDriver {
        pipeline: pipeline.clone(),
        scope: setup.scope,
        status: setup.status,
        state: setup.state,
        policy: setup.policy,
        batch_size: setup.batch_size,
        fence: resume.fence,
        epoch: resume.epoch,
        sources: slots,
        sinks: sink_names,
        events_in: 0,
        events_since_checkpoint: 0,
        checkpoints: 0,
        last_checkpoint: resume.last_checkpoint.clone(),
        requests: setup.requests,
        released: setup.link.released.clone(),
        committed: setup.committed,
        moved: false,
    };
    let driven = driver.run(boxed, setup.shutdown).await;

    let mut outcome = Outcome::default();
    let joined = |r: Result<Result<u64, PipelineError>, tokio::task::JoinError>| {
        r.unwrap_or_else(|e| Err(task_failed(&pipeline, &e)))
    };
    for task in node_tasks {
        outcome.note(joined(task.await));
    }
    let mut events_out = 0;
    for task in sink_tasks {
        events_out += outcome.note(joined(task.await));
    }
    // Its task ends once every sender has gone.
    drop(setup.dead_letters);
    if let Some(task) = dead_letter_task {
        let written = match task.await {
            Ok(written) => written.map_err(|source| PipelineError::Stream {
                pipeline: pipeline.clone(),
                source,
            }),
            Err(e) => Err(task_failed(&pipeline, &e)),
        };
        outcome.note(written);
    }
    let driven = match driven {
        Ok(driven) => Some(driven),
        Err(error) => {
            outcome.note(Err(error));
            None
        }
    };
    if let Some(error) = outcome.first_error {
        return Err(error);
    }
    match driven {
        Some(driven) => Ok((driven, events_out, resume.last_checkpoint)),
        None => Err(PipelineError::Task {
            pipeline,
            message: "the source driver stopped without a reason".to_owned(),
        }),
    }
}

/// Where a graph starts.
struct GraphResume {
    epoch: u64,
    /// Each source's position, in the order of the sources.
    positions: Vec<Position>,
    last_checkpoint: Option<CheckpointRecord>,
    fence: u64,
}

/// Claims the graph's checkpoints and finds where each source starts:
/// after the last checkpoint (every sink brought back to its position
/// under exactly-once), or from the start with checkpoint 0 committed.
/// Seeks each source there.
async fn restore(
    setup: &GraphSetup,
    sources: &mut [(String, Box<dyn Source>)],
    sinks: &mut [GraphSink],
    mut dead_letter: Option<&mut Box<dyn Sink>>,
) -> Result<GraphResume, PipelineError> {
    let pipeline = setup.pipeline.as_str();
    let state_error = |source| PipelineError::State {
        pipeline: pipeline.to_owned(),
        source,
    };
    let stream_error = |source| PipelineError::Stream {
        pipeline: pipeline.to_owned(),
        source,
    };
    let state = &setup.state;
    let fence = state.claim(&setup.scope).await.map_err(state_error)?;
    let last = state
        .last_checkpoint(&setup.scope)
        .await
        .map_err(state_error)?;
    let (epoch, mut positions) = match &last {
        Some(record) => {
            let Position::Graph {
                sources: positions,
                sinks: sink_positions,
            } = &record.position
            else {
                return Err(PipelineError::Incomplete {
                    pipeline: pipeline.to_owned(),
                    message: format!(
                        "its last checkpoint holds {} of a linear pipeline, where a graph keeps \
                         one position per source: a pipeline cannot become a graph with its \
                         checkpoints; remove its state (its checkpoint with it) or run the \
                         graph under another name",
                        record.position.kind_description()
                    ),
                });
            };
            tracing::info!(pipeline, epoch = record.epoch, position = %record.position,
                "resuming the graph from the last checkpoint");
            if setup.delivery == Delivery::ExactlyOnce {
                for sink in sinks.iter_mut() {
                    // A sink added since has nothing to take back.
                    if let Some(position) = sink_positions.get(&sink.name) {
                        sink.sink
                            .recover(Some(*position))
                            .await
                            .map_err(stream_error)?;
                    }
                }
                if let Some(dead_letter) = dead_letter.as_mut() {
                    dead_letter
                        .recover(record.dead_letter_position)
                        .await
                        .map_err(stream_error)?;
                }
            }
            (record.epoch + 1, positions.clone())
        }
        None => {
            // Checkpoint 0 records where every sink starts.
            let mut sink_positions = BTreeMap::new();
            for sink in sinks.iter_mut() {
                if let Some(position) = sink.sink.position().await.map_err(stream_error)? {
                    sink_positions.insert(sink.name.clone(), position);
                }
            }
            let position = Position::Graph {
                sources: sources
                    .iter()
                    .map(|(name, _)| (name.clone(), Position::Start))
                    .collect(),
                sinks: sink_positions,
            };
            let mut record = CheckpointRecord::new(&setup.scope, 0, position);
            record.fence = fence;
            if let Some(dead_letter) = dead_letter.as_mut() {
                record.dead_letter_position = dead_letter.position().await.map_err(stream_error)?;
            }
            state.commit(&record, &[]).await.map_err(state_error)?;
            (1, BTreeMap::new())
        }
    };
    let mut ordered = Vec::with_capacity(sources.len());
    for (name, source) in sources.iter_mut() {
        // A source added since starts at its start.
        let position = positions.remove(name).unwrap_or(Position::Start);
        source.seek(&position).await.map_err(stream_error)?;
        ordered.push(source.migrated_position().unwrap_or(position));
    }
    Ok(GraphResume {
        epoch,
        positions: ordered,
        last_checkpoint: last,
        fence,
    })
}

/// One source of a graph, as its driver sees it.
struct SourceSlot {
    name: String,
    /// A channel to each reader of the source.
    outputs: Vec<Output>,
    /// The position after the last batch sent on.
    position: Position,
    ended: bool,
    /// The last watermark sent on.
    watermark: Option<u64>,
    listener: Option<Box<dyn CommitListener>>,
}

/// Why a checkpoint is taken (as the linear driver's).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    Due,
    Last,
    Forced,
}

/// Reads every source of a graph, injects one barrier per source for each
/// checkpoint, and commits once every sink has answered.
struct GraphDriver {
    pipeline: String,
    scope: String,
    status: Arc<LiveStatus>,
    state: SharedState,
    policy: CheckpointPolicy,
    batch_size: usize,
    fence: u64,
    epoch: u64,
    sources: Vec<SourceSlot>,
    /// The sinks' names, by index.
    sinks: Vec<String>,
    events_in: u64,
    events_since_checkpoint: u64,
    checkpoints: u64,
    last_checkpoint: Option<CheckpointRecord>,
    requests: Arc<Notify>,
    released: Arc<AtomicBool>,
    committed: watch::Sender<u64>,
    moved: bool,
}

impl GraphDriver {
    async fn run(
        mut self,
        sources: Vec<Box<dyn Source>>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<Driven, PipelineError> {
        let mut reads: Vec<Option<Reads>> = Vec::with_capacity(sources.len());
        for (mut source, slot) in sources.into_iter().zip(self.sources.iter_mut()) {
            slot.listener = source.commit_listener();
            // Two batches ahead, as the linear driver reads at checkpoints.
            let read = Reads::spawn(source, Delivery::ExactlyOnce, self.batch_size, &self.status);
            reads.push(Some(read));
        }
        let result = self.drive(&mut reads, &mut shutdown).await;
        drop(reads);
        result?;
        Ok(Driven {
            events_in: self.events_in,
            checkpoints: self.checkpoints,
            last_checkpoint: self.last_checkpoint,
        })
    }

    async fn drive(
        &mut self,
        reads: &mut [Option<Reads>],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let mut ticker = self.policy.interval.map(|interval| {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        let mut start = 0;
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(pipeline = %self.pipeline, "shutdown requested");
                        return self.checkpoint(Cause::Last).await;
                    }
                }
                _ = tick(&mut ticker) => self.checkpoint(Cause::Due).await?,
                () = self.requests.notified() => self.checkpoint(Cause::Forced).await?,
                (index, read) = next_read(reads, &mut start) => match read {
                    Some(Ok(Some(batch))) => self.forward(index, batch).await?,
                    Some(Ok(None)) | None => {
                        if let Some(slot) = reads.get_mut(index) {
                            *slot = None;
                        }
                        self.end_source(index).await?;
                        if self.sources.iter().all(|source| source.ended) {
                            return self.checkpoint(Cause::Last).await;
                        }
                    }
                    Some(Err(source)) => {
                        return Err(PipelineError::Stream { pipeline: self.pipeline.clone(), source });
                    }
                }
            }
        }
    }

    /// Sends a batch of source `index` to each of its readers.
    async fn forward(
        &mut self,
        index: usize,
        (events, position, watermark): ReadBatch,
    ) -> Result<(), PipelineError> {
        let Some(source) = self.sources.get_mut(index) else {
            return Ok(());
        };
        let count = events.len() as u64;
        let mut sent = Ok(());
        if count > 0 {
            sent = send_batch(&source.outputs, Batch::new(events)).await;
        }
        if let Some(watermark) = watermark.filter(|w| source.watermark < Some(*w)) {
            source.watermark = Some(watermark);
            if sent.is_ok() {
                sent = send_each(&source.outputs, || Message::Watermark(watermark)).await;
            }
        }
        source.position = position;
        sent.map_err(|()| self.disconnected())?;
        self.moved = true;
        self.events_in += count;
        self.status.events_in.fetch_add(count, Ordering::Relaxed);
        self.events_since_checkpoint += count;
        if self
            .policy
            .every_events
            .is_some_and(|every| self.events_since_checkpoint >= every)
        {
            self.checkpoint(Cause::Due).await?;
        }
        Ok(())
    }

    /// Source `index` has ended: its readers are told.
    async fn end_source(&mut self, index: usize) -> Result<(), PipelineError> {
        let disconnected = self.disconnected();
        if let Some(source) = self.sources.get_mut(index) {
            source.ended = true;
            tracing::debug!(pipeline = %self.pipeline, source = %source.name, "source ended");
            send_each(&source.outputs, || Message::End)
                .await
                .map_err(|_| disconnected)?;
        }
        Ok(())
    }

    fn needed(&self, why: Cause) -> bool {
        let released = self.released.swap(false, Ordering::AcqRel);
        match why {
            Cause::Due => self.events_since_checkpoint > 0 || self.moved || released,
            Cause::Last => self.events_since_checkpoint > 0 || self.events_in > 0 || released,
            Cause::Forced => true,
        }
    }

    /// Sends a barrier to every reader of every source, waits until every
    /// sink has answered (each after its inputs' barriers aligned), then
    /// commits all writes with every source's and sink's position.
    async fn checkpoint(&mut self, why: Cause) -> Result<(), PipelineError> {
        if !self.needed(why) {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let (replies, mut replied) = mpsc::unbounded_channel();
        // (Cloned: a commit listener is not `Sync`, so no reference to a
        // source's slot is held across the sends.)
        let outputs: Vec<Output> = self
            .sources
            .iter()
            .flat_map(|source| source.outputs.iter().cloned())
            .collect();
        for output in &outputs {
            output
                .send(Message::Barrier(Barrier::shared(
                    self.epoch,
                    replies.clone(),
                )))
                .await
                .map_err(|_| self.disconnected())?;
        }
        drop(replies);
        let mut writes = Vec::new();
        let mut sink_positions = BTreeMap::new();
        // Each sink flushed the dead letters; the last flush holds them all.
        let mut dead_letter_position = None;
        for _ in 0..self.sinks.len() {
            let (sink, reply) = replied.recv().await.ok_or_else(|| self.disconnected())?;
            writes.extend(reply.writes);
            dead_letter_position = dead_letter_position.max(reply.dead_letter_position);
            if let (Some(name), Some(position)) = (self.sinks.get(sink), reply.sink_position) {
                sink_positions.insert(name.clone(), position);
            }
        }
        let position = Position::Graph {
            sources: self
                .sources
                .iter()
                .map(|source| (source.name.clone(), source.position.clone()))
                .collect(),
            sinks: sink_positions,
        };
        let mut record = CheckpointRecord::new(&self.scope, self.epoch, position);
        record.fence = self.fence;
        record.dead_letter_position = dead_letter_position;
        crate::fault::hold_before_commit(&self.pipeline, self.epoch).await;
        let commit_started = tokio::time::Instant::now();
        self.state
            .commit(&record, &writes)
            .await
            .map_err(|source| PipelineError::State {
                pipeline: self.pipeline.clone(),
                source,
            })?;
        let commit_took = commit_started.elapsed();
        self.status.commit_time.record_duration(commit_took);
        tracing::debug!(pipeline = %self.pipeline, epoch = self.epoch, position = %record.position, "graph checkpoint committed");
        self.status
            .checkpoint_pause
            .record_duration(started.elapsed());
        self.status.committed(self.epoch, started.elapsed());
        let keys = writes.iter().map(|writes| writes.len()).sum();
        self.status
            .record_checkpoint(self.epoch, started.elapsed(), commit_took, keys);
        self.status.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.committed.send_replace(self.epoch);
        self.epoch += 1;
        self.checkpoints += 1;
        self.events_since_checkpoint = 0;
        self.moved = false;
        self.last_checkpoint = Some(record);
        let pipeline = &self.pipeline;
        for source in &mut self.sources {
            if let Some(listener) = source.listener.as_mut() {
                let told = listener.committed(&source.position).await;
                told.map_err(|source| PipelineError::Stream {
                    pipeline: pipeline.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    fn disconnected(&self) -> PipelineError {
        PipelineError::Disconnected {
            pipeline: self.pipeline.clone(),
            stage: "source".to_owned(),
        }
    }
}

/// The next read of any source still reading, with the source's index
/// (`None` read: its reader has gone).
/// Polling starts at `start`, which moves past the source read, so that
/// no source starves another.
async fn next_read(
    reads: &mut [Option<Reads>],
    start: &mut usize,
) -> (usize, Option<Result<Option<ReadBatch>, StreamError>>) {
    poll_fn(|cx| {
        let count = reads.len();
        for offset in 0..count {
            let index = (*start + offset) % count;
            if let Some(Some(read)) = reads.get_mut(index) {
                if let Poll::Ready(next) = read.poll_next(cx) {
                    *start = (index + 1) % count;
                    return Poll::Ready((index, next));
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// Sends `batch` to each of `outputs`: a copy to all but the last.
async fn send_batch(outputs: &[Output], batch: Batch) -> Result<(), ()> {
    let Some((last, others)) = outputs.split_last() else {
        return Ok(());
    };
    for output in others {
        output.send_batch(batch.clone()).await.map_err(drop)?;
    }
    last.send_batch(batch).await.map_err(drop)
}

/// Sends the message `make` makes to each of `outputs`.
async fn send_each(outputs: &[Output], make: impl Fn() -> Message) -> Result<(), ()> {
    for output in outputs {
        output.send(make()).await.map_err(drop)?;
    }
    Ok(())
}

/// Sends `barrier` on to every output of every port: the barrier itself
/// (with the writes it carries) to one, a fork without writes to the rest.
async fn send_barrier(ports: &[Vec<Output>], barrier: Barrier) -> Result<(), String> {
    let outputs: Vec<&Output> = ports.iter().flatten().collect();
    let Some((last, others)) = outputs.split_last() else {
        return Ok(());
    };
    for output in others {
        let fork = barrier
            .fork()
            .ok_or_else(|| "a linear barrier reached a graph's step".to_owned())?;
        output
            .send(Message::Barrier(fork))
            .await
            .map_err(|_| String::new())?;
    }
    last.send(Message::Barrier(barrier))
        .await
        .map_err(|_| String::new())
}

/// One input of a step or sink: its channel, and the barrier it holds
/// while the others' come.
pub(super) struct Input {
    /// The name of the output it reads, for the input header.
    name: String,
    receiver: mpsc::Receiver<Message>,
    held: Option<Barrier>,
    ended: bool,
    watermark: Option<u64>,
}

impl Input {
    pub(super) fn new(name: &str, receiver: mpsc::Receiver<Message>) -> Self {
        Input {
            name: name.to_owned(),
            receiver,
            held: None,
            ended: false,
            watermark: None,
        }
    }
}

/// What the inputs of a step or sink gave.
pub(super) enum Received {
    /// A message of the input of this index.
    Message(usize, Message),
    /// An input's channel closed: the graph is stopping.
    Closed,
}

/// The inputs of a step or sink, read fairly, barriers aligned.
pub(super) struct Inputs {
    inputs: Vec<Input>,
    /// Where the next read starts.
    next: usize,
}

impl Inputs {
    pub(super) fn new(inputs: Vec<Input>) -> Self {
        Inputs { inputs, next: 0 }
    }

    fn len(&self) -> usize {
        self.inputs.len()
    }

    fn name(&self, index: usize) -> &str {
        self.inputs
            .get(index)
            .map_or("", |input| input.name.as_str())
    }

    /// The next message of an input that holds no barrier: an input whose
    /// barrier has come is not read until the others' have (alignment).
    pub(super) async fn recv(&mut self) -> Received {
        poll_fn(|cx| {
            let count = self.inputs.len();
            for offset in 0..count {
                let index = (self.next + offset) % count;
                let Some(input) = self.inputs.get_mut(index) else {
                    continue;
                };
                if input.held.is_some() {
                    continue;
                }
                match input.receiver.poll_recv(cx) {
                    Poll::Ready(Some(message)) => {
                        self.next = (index + 1) % count;
                        return Poll::Ready(Received::Message(index, message));
                    }
                    Poll::Ready(None) => return Poll::Ready(Received::Closed),
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Holds the barrier of input `index`; once every input holds one,
    /// returns them as one barrier carrying all their writes.
    ///
    /// # Errors
    ///
    /// The inputs' barriers are of different checkpoints.
    pub(super) fn align(
        &mut self,
        index: usize,
        barrier: Barrier,
    ) -> Result<Option<Barrier>, String> {
        if let Some(input) = self.inputs.get_mut(index) {
            input.held = Some(barrier);
        }
        if self.inputs.iter().any(|input| input.held.is_none()) {
            return Ok(None);
        }
        let mut held = self.inputs.iter_mut().filter_map(|input| input.held.take());
        let Some(mut merged) = held.next() else {
            return Ok(None);
        };
        for other in held {
            if other.epoch != merged.epoch {
                return Err(format!(
                    "barriers of epochs {} and {} met: inputs out of step",
                    merged.epoch, other.epoch
                ));
            }
            merged.writes.extend(other.writes);
        }
        Ok(Some(merged))
    }

    /// Input `index` has ended; whether every input has.
    fn end(&mut self, index: usize) -> bool {
        if let Some(input) = self.inputs.get_mut(index) {
            input.ended = true;
        }
        self.inputs.iter().all(|input| input.ended)
    }

    /// Input `index`'s watermark moved; the minimum over all inputs, once
    /// every input has one.
    fn watermark(&mut self, index: usize, watermark: u64) -> Option<u64> {
        if let Some(input) = self.inputs.get_mut(index) {
            input.watermark = input.watermark.max(Some(watermark));
        }
        self.inputs
            .iter()
            .map(|input| input.watermark)
            .min()
            .flatten()
    }
}

/// What a step's loop does next.
enum NodeNext {
    Received(Received),
    Wake,
}

/// Runs one step or router of a graph.
struct NodeRunner {
    pipeline: String,
    node: ReadyNode,
    inputs: Inputs,
    /// A step's one output, or a router's per route; each to every reader.
    ports: Vec<Vec<Output>>,
    stats: Arc<StageStats>,
    link: StageLink,
    produced: Vec<Batch>,
    /// A router's events per route of one batch.
    routed: Vec<Vec<Event>>,
    requested: bool,
    /// The last watermark passed on.
    watermark: Option<u64>,
}

impl NodeRunner {
    async fn run(mut self) -> Result<u64, PipelineError> {
        let trigger = match &self.node {
            ReadyNode::Step(step) => step.trigger(),
            ReadyNode::Route(_) => None,
        };
        loop {
            let timer = match &self.node {
                ReadyNode::Step(step) => step.timer(),
                ReadyNode::Route(_) => None,
            };
            let next = tokio::select! {
                received = self.inputs.recv() => NodeNext::Received(received),
                () = sleep_until(timer), if timer.is_some() => NodeNext::Wake,
                () = notified(trigger.as_deref()), if trigger.is_some() => NodeNext::Wake,
            };
            match next {
                NodeNext::Received(Received::Closed) => break,
                NodeNext::Wake => {
                    if let ReadyNode::Step(step) = &mut self.node {
                        let woken = step.wake(&mut self.produced).await;
                        woken.map_err(|source| self.step_error(source))?;
                        self.send_produced(true).await?;
                    }
                }
                NodeNext::Received(Received::Message(index, message)) => {
                    self.handle(index, message).await?;
                }
            }
        }
        Ok(0)
    }

    async fn handle(&mut self, index: usize, message: Message) -> Result<(), PipelineError> {
        match message {
            Message::Data(mut batch, room) => {
                drop(room);
                if self.inputs.len() > 1 {
                    // The union: each event says which input it came from.
                    let name = self.inputs.name(index);
                    for event in &mut batch.events {
                        event
                            .headers
                            .push((INPUT_HEADER.to_owned(), name.to_owned()));
                    }
                }
                self.process(index, batch).await
            }
            Message::Barrier(barrier) => {
                let aligned = self
                    .inputs
                    .align(index, barrier)
                    .map_err(|message| self.task_error(message))?;
                match aligned {
                    Some(barrier) => self.barrier(barrier).await,
                    None => Ok(()),
                }
            }
            Message::Watermark(watermark) => {
                let Some(least) = self.inputs.watermark(index, watermark) else {
                    return Ok(());
                };
                if self.watermark >= Some(least) {
                    return Ok(());
                }
                self.watermark = Some(least);
                if let ReadyNode::Step(step) = &mut self.node {
                    let released = step.watermark(least, &mut self.produced).await;
                    released.map_err(|source| self.step_error(source))?;
                    self.send_produced(true).await?;
                }
                self.send_all_ports(|| Message::Watermark(least)).await
            }
            Message::End => {
                if !self.inputs.end(index) {
                    return Ok(());
                }
                if let ReadyNode::Step(step) = &mut self.node {
                    let finished = step.finish(&mut self.produced).await;
                    finished.map_err(|source| self.step_error(source))?;
                    self.send_produced(false).await?;
                }
                self.send_all_ports(|| Message::End).await
            }
        }
    }

    /// Processes a batch of input `input` (a step with several inputs is
    /// told which one; a step with one gets [`Step::process`] as in a line).
    async fn process(&mut self, input: usize, batch: Batch) -> Result<(), PipelineError> {
        let events = batch.events.len() as u64;
        self.stats.events_in.fetch_add(events, Ordering::Relaxed);
        let several = self.inputs.len() > 1;
        match &mut self.node {
            ReadyNode::Step(step) => {
                let processed = if several {
                    step.process_input(input, batch, &mut self.produced).await
                } else {
                    step.process(batch, &mut self.produced).await
                };
                if let Err(source) = processed {
                    return Err(self.step_error(source));
                }
                if let ReadyNode::Step(step) = &mut self.node {
                    self.link
                        .check_pending(step.as_mut(), &self.stats, &mut self.requested);
                }
                self.send_produced(false).await
            }
            ReadyNode::Route(router) => {
                self.routed.resize_with(self.ports.len(), Vec::new);
                let window = batch.window.clone();
                router.split(batch, &mut self.routed);
                for (port, events) in self.ports.iter().zip(self.routed.iter_mut()) {
                    if events.is_empty() {
                        continue;
                    }
                    let batch = Batch {
                        events: std::mem::take(events),
                        window: window.clone(),
                    };
                    self.stats
                        .events_out
                        .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                    if send_batch(port, batch).await.is_err() {
                        return Err(self.disconnected());
                    }
                }
                Ok(())
            }
        }
    }

    async fn barrier(&mut self, mut barrier: Barrier) -> Result<(), PipelineError> {
        if let ReadyNode::Step(step) = &mut self.node {
            // A module swap first: its writes ride this barrier.
            step.at_barrier().await;
            barrier.writes.push(step.take_writes());
            self.requested = false;
            crate::dead_letter::passed_barrier(barrier.epoch);
            if let Some(held) = step.buffered_events() {
                self.stats.buffered.store(held as u64, Ordering::Relaxed);
            }
        }
        send_barrier(&self.ports, barrier)
            .await
            .map_err(|message| match message.is_empty() {
                true => self.disconnected(),
                false => self.task_error(message),
            })
    }

    /// Sends a step's output to its readers; `released`: output the step
    /// released on its own (a timer, a watermark), which a due checkpoint
    /// then flushes.
    async fn send_produced(&mut self, released: bool) -> Result<(), PipelineError> {
        if self.produced.is_empty() {
            return Ok(());
        }
        if released {
            self.link.released.store(true, Ordering::Release);
        }
        let out: usize = self.produced.iter().map(|b| b.events.len()).sum();
        self.stats
            .events_out
            .fetch_add(out as u64, Ordering::Relaxed);
        let Some(port) = self.ports.first() else {
            self.produced.clear();
            return Ok(());
        };
        for batch in self.produced.drain(..) {
            if send_batch(port, batch).await.is_err() {
                return Err(PipelineError::Disconnected {
                    pipeline: self.pipeline.clone(),
                    stage: self.node.name().to_owned(),
                });
            }
        }
        Ok(())
    }

    async fn send_all_ports(&mut self, make: impl Fn() -> Message) -> Result<(), PipelineError> {
        let mut sent = Ok(());
        for port in &self.ports {
            sent = send_each(port, &make).await;
            if sent.is_err() {
                break;
            }
        }
        sent.map_err(|()| self.disconnected())
    }

    fn step_error(&self, source: StepError) -> PipelineError {
        PipelineError::of_step(&self.pipeline, source)
    }

    fn task_error(&self, message: String) -> PipelineError {
        PipelineError::Task {
            pipeline: self.pipeline.clone(),
            message: format!("step `{}`: {message}", self.node.name()),
        }
    }

    fn disconnected(&self) -> PipelineError {
        PipelineError::Disconnected {
            pipeline: self.pipeline.clone(),
            stage: self.node.name().to_owned(),
        }
    }
}

/// Runs one sink of a graph: writes what its inputs send; once their
/// barriers have aligned, flushes (the dead letters too) and answers the
/// driver with the writes the barrier carries and its position.
struct SinkRunner {
    pipeline: String,
    /// Its index among the graph's sinks, in its answers.
    index: usize,
    sink: Box<dyn Sink>,
    inputs: Inputs,
    dead_letters: Option<DeadLetters>,
    status: Arc<LiveStatus>,
}

impl SinkRunner {
    async fn run(mut self) -> Result<u64, PipelineError> {
        let mut events_out = 0u64;
        loop {
            let (index, message) = match self.inputs.recv().await {
                Received::Closed => break,
                Received::Message(index, message) => (index, message),
            };
            match message {
                Message::Data(batch, room) => {
                    drop(room);
                    let count = batch.events.len() as u64;
                    events_out += count;
                    self.status.events_out.fetch_add(count, Ordering::Relaxed);
                    self.sink
                        .write(batch)
                        .await
                        .map_err(|source| PipelineError::Stream {
                            pipeline: self.pipeline.clone(),
                            source,
                        })?;
                }
                Message::Barrier(barrier) => {
                    let aligned = self.inputs.align(index, barrier).map_err(|message| {
                        PipelineError::Task {
                            pipeline: self.pipeline.clone(),
                            message,
                        }
                    })?;
                    let Some(mut barrier) = aligned else {
                        continue;
                    };
                    let flushed = flush_at_barrier(
                        &self.pipeline,
                        self.sink.as_mut(),
                        self.dead_letters.as_ref(),
                        barrier.epoch,
                    )
                    .await?;
                    let writes = std::mem::take(&mut barrier.writes);
                    barrier.answer(
                        self.index,
                        BarrierReply {
                            writes,
                            sink_position: flushed.sink,
                            dead_letter_position: flushed.dead_letter,
                            outbox_events: 0,
                        },
                    );
                }
                Message::Watermark(_) | Message::End => {}
            }
        }
        Ok(events_out)
    }
}
