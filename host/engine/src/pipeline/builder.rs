//! The fluent builder, and a run from start to report: admission, step
//! instantiation, restore, the stages, the source driver, and the outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::driver::{Driven, DriverSetup, DriverSignals, Resume, SourceDriver};
use super::error::PipelineError;
use super::graph::{GraphNode, GraphParts, GraphSink, NodeSpec};
use super::graph_run::{run_graph, GraphSetup, ReadyNode};
use super::handle::PipelineHandle;
use super::instantiate::{instantiate_steps, StepContext, StepSpec};
use super::outbox::{Outbox, OutboxBound, Publish};
use super::route::Router;
use super::stage::{run_sink, AfterCommit, Output, StageLink, StageRunner};
use super::status::{LiveStatus, Phase, StageStats};
use super::task::OwnedTask;
use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::dead_letter::DeadLetters;
use crate::histogram::HistogramSnapshot;
use crate::runtime::Runtime;
use crate::state::{
    checkpoint_scope, MemoryState, Namespace, PendingBound, SharedState, WriteMode, DEFAULT_TENANT,
};
use crate::step::Step;
use crate::streams::{Sink, Source, StreamError};
use crate::tenant::{TenantLease, Tenants};
use crate::window::WindowOptions;
use crate::ErrorChain;

/// What a finished run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Events read from the source in this run.
    pub events_in: u64,
    /// Events written to the sink in this run.
    pub events_out: u64,
    /// Checkpoints committed in this run.
    pub checkpoints: u64,
    /// The last committed checkpoint, if any (from this run or an earlier one).
    pub last_checkpoint: Option<CheckpointRecord>,
    /// The checkpoint this run resumed from.
    pub resumed_from: Option<CheckpointRecord>,
    /// How long the checkpoints of this run held the source back (barrier
    /// sent to commit done), as a histogram (bounded, unlike a list).
    pub checkpoint_pause: HistogramSnapshot,
}

/// The entry point: `Pipeline::builder(name)`.
pub struct Pipeline;

impl Pipeline {
    /// Starts building the pipeline `name` (the name keys its checkpoints and state).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        let (sender, receiver) = watch::channel(false);
        let (committed_tx, committed_rx) = watch::channel(0u64);
        PipelineBuilder {
            name: name.into(),
            tenant: DEFAULT_TENANT.to_owned(),
            tenants: None,
            committed: (committed_tx, committed_rx),
            status: Arc::new(LiveStatus::default()),
            state: None,
            checkpoint: CheckpointPolicy::every(Duration::from_secs(1)),
            delivery: Delivery::ExactlyOnce,
            publish: Publish::BeforeCommit,
            source: None,
            steps: Vec::new(),
            sink: None,
            graph: GraphParts::default(),
            dead_letter: None,
            runtime: None,
            batch_size: 1024,
            channel_capacity: 8,
            shutdown: (Arc::new(sender), receiver),
            checkpoint_requests: Arc::new(Notify::new()),
        }
    }
}

/// Collects a pipeline's parts; [`PipelineBuilder::run`] starts it.
pub struct PipelineBuilder {
    name: String,
    tenant: String,
    tenants: Option<Arc<Tenants>>,
    committed: (watch::Sender<u64>, watch::Receiver<u64>),
    status: Arc<LiveStatus>,
    state: Option<SharedState>,
    checkpoint: CheckpointPolicy,
    delivery: Delivery,
    publish: Publish,
    source: Option<Box<dyn Source>>,
    steps: Vec<StepSpec>,
    sink: Option<Box<dyn Sink>>,
    /// A graph's parts (empty for a line).
    graph: GraphParts,
    dead_letter: Option<Box<dyn Sink>>,
    runtime: Option<Runtime>,
    batch_size: usize,
    channel_capacity: usize,
    shutdown: (Arc<watch::Sender<bool>>, watch::Receiver<bool>),
    checkpoint_requests: Arc<Notify>,
}

impl PipelineBuilder {
    /// The tenant the pipeline belongs to (default `default`): the first
    /// part of all its state keys and of its checkpoint records. The name
    /// is checked by [`crate::tenant::check_tenant_name`] when it runs.
    #[must_use]
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The host's tenant registry: the pipeline counts against its tenant's
    /// quotas (pipelines and state bytes) while it runs.
    #[must_use]
    pub fn tenants(mut self, tenants: Arc<Tenants>) -> Self {
        self.tenants = Some(tenants);
        self
    }

    /// The state backend (default: an in-memory map).
    #[must_use]
    pub fn state(mut self, state: SharedState) -> Self {
        self.state = Some(state);
        self
    }

    /// When to checkpoint (default: every second, and at the end).
    #[must_use]
    pub fn checkpoint(mut self, policy: CheckpointPolicy) -> Self {
        self.checkpoint = policy;
        self
    }

    /// The delivery guarantee (default: exactly-once effect on state).
    #[must_use]
    pub fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// When the sink gets the output of an epoch (default: written during
    /// the epoch, flushed before its checkpoint commits). With
    /// [`Publish::AfterCommit`] it is held in the checkpoint and written
    /// once the checkpoint has committed; not with at-most-once delivery
    /// (the run is refused).
    #[must_use]
    pub fn publish(mut self, publish: Publish) -> Self {
        self.publish = publish;
        self
    }

    /// Where events come from.
    #[must_use]
    pub fn from(mut self, source: impl Source + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Where events come from, already boxed (configs).
    #[must_use]
    pub fn from_boxed(mut self, source: Box<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// Where events go to, already boxed (configs).
    #[must_use]
    pub fn to_boxed(mut self, sink: Box<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The dead-letter sink, already boxed (configs).
    #[must_use]
    pub fn dead_letter_boxed(mut self, sink: Box<dyn Sink>) -> Self {
        self.dead_letter = Some(sink);
        self
    }

    /// Adds a step after the ones already added.
    #[must_use]
    pub fn then(mut self, step: impl Into<StepSpec>) -> Self {
        self.steps.push(step.into());
        self
    }

    /// Where events go to.
    #[must_use]
    pub fn to(mut self, sink: impl Sink + 'static) -> Self {
        self.sink = Some(Box::new(sink));
        self
    }

    /// A graph's source called `name` (docs/graphs.md): steps and sinks
    /// read it by that name. A pipeline is either a line (`from`, `then`,
    /// `to`) or a graph (`source`, `then_from`, `route_from`, `to_from`).
    #[must_use]
    pub fn source(self, name: impl Into<String>, source: impl Source + 'static) -> Self {
        self.source_boxed(name, Box::new(source))
    }

    /// A graph's source, already boxed (configs).
    #[must_use]
    pub fn source_boxed(mut self, name: impl Into<String>, source: Box<dyn Source>) -> Self {
        self.graph.sources.push((name.into(), source));
        self
    }

    /// A graph's step reading the outputs `inputs` (sources, steps,
    /// `<router>.<route>`); its output is named by its name. With several
    /// inputs it reads their union, each event tagged with its input's
    /// name in the header [`super::INPUT_HEADER`].
    #[must_use]
    pub fn then_from<I, S>(mut self, inputs: I, step: impl Into<StepSpec>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.graph.nodes.push(GraphNode {
            inputs: inputs.into_iter().map(Into::into).collect(),
            spec: NodeSpec::Step(step.into()),
        });
        self
    }

    /// A graph's router reading `inputs`: its outputs are
    /// `<router>.<route>` for each of its routes.
    #[must_use]
    pub fn route_from<I, S>(mut self, inputs: I, router: Router) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.graph.nodes.push(GraphNode {
            inputs: inputs.into_iter().map(Into::into).collect(),
            spec: NodeSpec::Route(router),
        });
        self
    }

    /// A graph's sink called `name`, writing what the outputs `inputs` send.
    #[must_use]
    pub fn to_from<I, S>(
        self,
        name: impl Into<String>,
        inputs: I,
        sink: impl Sink + 'static,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.to_from_boxed(name, inputs, Box::new(sink))
    }

    /// A graph's sink, already boxed (configs).
    #[must_use]
    pub fn to_from_boxed<I, S>(
        mut self,
        name: impl Into<String>,
        inputs: I,
        sink: Box<dyn Sink>,
    ) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.graph.sinks.push(GraphSink {
            name: name.into(),
            inputs: inputs.into_iter().map(Into::into).collect(),
            sink,
        });
        self
    }

    /// Where events that cannot go on are sent (late events of a window
    /// whose late policy is `dead_letter`), with headers saying why.
    #[must_use]
    pub fn dead_letter(mut self, sink: impl Sink + 'static) -> Self {
        self.dead_letter = Some(Box::new(sink));
        self
    }

    /// The WebAssembly runtime to load pipes with (default: one with the
    /// default compile cache).
    #[must_use]
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The most events a source puts in one batch (default 1024).
    #[must_use]
    pub fn batch_size(mut self, events: usize) -> Self {
        self.batch_size = events.max(1);
        self
    }

    /// How many batches may wait between two stages (default 8).
    #[must_use]
    pub fn channel_capacity(mut self, batches: usize) -> Self {
        self.channel_capacity = batches.max(1);
        self
    }

    /// A handle that stops the pipeline or asks for a checkpoint from elsewhere.
    pub fn handle(&self) -> PipelineHandle {
        PipelineHandle::new(
            self.shutdown.0.clone(),
            self.checkpoint_requests.clone(),
            self.committed.1.clone(),
            self.status.clone(),
        )
    }

    /// Loads the pipes, restores the last checkpoint and runs until the
    /// source ends or a shutdown is requested; either way a final
    /// checkpoint is committed.
    ///
    /// # Errors
    ///
    /// A part is missing or fails to load, or a stage fails; then nothing
    /// after the last committed checkpoint is committed.
    pub async fn run(self) -> Result<RunReport, PipelineError> {
        let status = self.status.clone();
        let result = self.run_inner().await;
        match &result {
            Ok(_) => status.set_phase(Phase::Stopped),
            Err(error) => status.failed(ErrorChain(error).to_string()),
        }
        result
    }

    async fn run_inner(self) -> Result<RunReport, PipelineError> {
        if !self.graph.is_empty() {
            return self.run_graph().await;
        }
        let name = self.name;
        let status = self.status;
        let (mut source, mut sink) = required_ends(&name, &self.tenant, self.source, self.sink)?;
        if self.publish == Publish::AfterCommit && self.delivery == Delivery::AtMostOnce {
            return Err(PipelineError::Incomplete {
                pipeline: name,
                message: "publishing after the commit needs checkpoints that commit the output \
                          with the source position; at-most-once commits positions before \
                          processing: use at-least-once or exactly-once delivery, or publish \
                          before the commit"
                    .to_owned(),
            });
        }
        let state: SharedState = self.state.unwrap_or_else(|| Arc::new(MemoryState::new()));
        let lease = admit(&name, &self.tenant, self.tenants.as_deref(), &state).await?;
        // The steps get the letters' sender now; the sink's task starts once
        // the sink is brought back to the checkpoint.
        let mut dead_letter_sink = self.dead_letter;
        let (dead_letters, dead_letter_inbox) = match dead_letter_sink {
            Some(_) => {
                let (letters, inbox) = crate::dead_letter::channel();
                (Some(letters), Some(inbox))
            }
            None => (None, None),
        };
        let context = StepContext {
            tenant: &self.tenant,
            pipeline: &name,
            state: &state,
            dead_letters: dead_letters.as_ref(),
            mode: write_mode(self.delivery),
            lease: lease.as_ref(),
            multi_tenant: self.tenant != DEFAULT_TENANT
                || self.tenants.as_ref().is_some_and(|t| t.is_multi_tenant()),
            status: &status,
            checkpoint_requests: &self.checkpoint_requests,
            pending_bound: PendingBound {
                keys: self.checkpoint.max_pending_keys,
                bytes: self.checkpoint.max_pending_bytes,
            },
            window_options: WindowOptions {
                upstream_watermarks: source.reports_watermarks(),
                controlled_time: source.controls_time(),
                ..window_options(self.delivery, &self.checkpoint, &self.checkpoint_requests)
            },
        };
        let steps = instantiate_steps(&context, self.steps, self.runtime).await?;

        // Checkpoint records are kept per tenant and pipeline.
        let scope = checkpoint_scope(&self.tenant, &name);
        let restored = RestoredEnds {
            source: &mut source,
            sink: &mut sink,
            dead_letter: dead_letter_sink.as_mut(),
        };
        let (mut resume, resumed_from) =
            restore(&name, &scope, &state, self.delivery, restored).await?;
        let dead_letter_task = start_dead_letters(
            dead_letter_inbox,
            dead_letter_sink,
            status.dead_letter_recorder(),
        );
        let after_commit = match self.publish {
            Publish::BeforeCommit => None,
            Publish::AfterCommit => {
                let bound = OutboxBound {
                    requests: self.checkpoint_requests.clone(),
                    max_events: self.checkpoint.max_pending_keys,
                    max_bytes: self.checkpoint.max_pending_bytes,
                };
                let outbox = Outbox::new(&name, Namespace::for_outbox(&self.tenant, &name), bound);
                let outbox = republish(&name, outbox, &state, sink.as_mut()).await?;
                resume.outbox_uncleared = outbox.has_uncleared();
                Some(AfterCommit {
                    outbox,
                    committed: self.committed.1.clone(),
                })
            }
        };
        let link = StageLink::new(self.checkpoint_requests.clone(), &self.checkpoint);
        let sizes = (self.channel_capacity, self.batch_size);
        let ends = (sink, after_commit);
        let (first, stages) =
            Stages::spawn(&name, steps, ends, dead_letters, &status, &link, sizes);
        status.set_phase(Phase::Running);

        let driver = SourceDriver::new(
            DriverSetup {
                pipeline: name.clone(),
                scope,
                policy: self.checkpoint,
                delivery: self.delivery,
                batch_size: self.batch_size,
                state,
                resume,
                status: status.clone(),
            },
            DriverSignals {
                requests: self.checkpoint_requests,
                released: link.released,
                committed: self.committed.0,
            },
        );
        let driven = driver.run(source, first, self.shutdown.1).await;
        // The tenant's place is held until every stage has stopped.
        let _lease = lease;
        let (driven, events_out) = stages.join(&name, driven, dead_letter_task).await?;
        Ok(RunReport {
            events_in: driven.events_in,
            events_out,
            checkpoints: driven.checkpoints,
            last_checkpoint: driven.last_checkpoint,
            resumed_from,
            checkpoint_pause: status.checkpoint_pause.snapshot(),
        })
    }
}

impl PipelineBuilder {
    /// Runs a graph: checks it, loads its steps, restores its last
    /// checkpoint and runs it (graph_run.rs).
    async fn run_graph(mut self) -> Result<RunReport, PipelineError> {
        let name = self.name.clone();
        let incomplete = |message: String| PipelineError::Incomplete {
            pipeline: name.clone(),
            message,
        };
        crate::tenant::check_tenant_name(&self.tenant).map_err(incomplete)?;
        if self.source.is_some() || self.sink.is_some() || !self.steps.is_empty() {
            return Err(incomplete(
                "a pipeline is a line (`from`, `then`, `to`) or a graph (`source`, `then_from`, \
                 `route_from`, `to_from`), not both"
                    .to_owned(),
            ));
        }
        if self.delivery == Delivery::AtMostOnce {
            return Err(incomplete(
                "a graph runs at-least-once or exactly-once: at-most-once would commit each \
                 source's position ahead of processing, which a graph does not do"
                    .to_owned(),
            ));
        }
        if self.publish == Publish::AfterCommit {
            return Err(incomplete(
                "a graph publishes before the commit: publishing after the commit is for a \
                 line's one sink"
                    .to_owned(),
            ));
        }
        let graph = std::mem::take(&mut self.graph);
        let wiring = graph
            .shape()
            .wiring()
            .map_err(|error| incomplete(format!("{error}")))?;
        let status = self.status.clone();
        let state: SharedState = self.state.unwrap_or_else(|| Arc::new(MemoryState::new()));
        let lease = admit(&name, &self.tenant, self.tenants.as_deref(), &state).await?;
        // The graph starts the dead-letter task once the sink is back at
        // the checkpoint.
        let (dead_letters, dead_letter_end) = match self.dead_letter {
            Some(sink) => {
                let (letters, inbox) = crate::dead_letter::channel();
                (Some(letters), Some((inbox, sink)))
            }
            None => (None, None),
        };
        let upstream_watermarks = graph
            .sources
            .iter()
            .all(|(_, source)| source.reports_watermarks());
        let context = StepContext {
            tenant: &self.tenant,
            pipeline: &name,
            state: &state,
            dead_letters: dead_letters.as_ref(),
            mode: write_mode(self.delivery),
            lease: lease.as_ref(),
            multi_tenant: self.tenant != DEFAULT_TENANT
                || self.tenants.as_ref().is_some_and(|t| t.is_multi_tenant()),
            status: &status,
            checkpoint_requests: &self.checkpoint_requests,
            pending_bound: PendingBound {
                keys: self.checkpoint.max_pending_keys,
                bytes: self.checkpoint.max_pending_bytes,
            },
            window_options: WindowOptions {
                upstream_watermarks,
                ..window_options(self.delivery, &self.checkpoint, &self.checkpoint_requests)
            },
        };
        // Steps load in order; routers need nothing loaded.
        let mut inputs = Vec::with_capacity(graph.nodes.len());
        let mut specs = Vec::new();
        let mut routers = Vec::new();
        for node in graph.nodes {
            match node.spec {
                NodeSpec::Step(spec) => {
                    specs.push(spec);
                    routers.push(None);
                }
                NodeSpec::Route(router) => routers.push(Some(router)),
            }
            inputs.push(node.inputs);
        }
        let mut steps = instantiate_steps(&context, specs, self.runtime)
            .await?
            .into_iter();
        let mut nodes = Vec::with_capacity(inputs.len());
        for (inputs, router) in inputs.into_iter().zip(routers) {
            let node = match router {
                Some(router) => ReadyNode::Route(router),
                None => match steps.next() {
                    Some(step) => ReadyNode::Step(step),
                    None => return Err(incomplete("a step was not created".to_owned())),
                },
            };
            nodes.push((inputs, node));
        }
        let link = StageLink::new(self.checkpoint_requests.clone(), &self.checkpoint);
        let setup = GraphSetup {
            pipeline: name.clone(),
            scope: checkpoint_scope(&self.tenant, &name),
            policy: self.checkpoint,
            delivery: self.delivery,
            batch_size: self.batch_size,
            capacity: self.channel_capacity,
            state,
            status: status.clone(),
            link,
            requests: self.checkpoint_requests,
            committed: self.committed.0,
            shutdown: self.shutdown.1,
            dead_letters,
        };
        let ran = run_graph(
            setup,
            wiring,
            graph.sources,
            nodes,
            graph.sinks,
            dead_letter_end,
        )
        .await;
        let _lease = lease;
        let mut outcome = Outcome::default();
        let ran = match ran {
            Ok(ran) => Some(ran),
            Err(error) => {
                outcome.note(Err(error));
                None
            }
        };
        if let Some(error) = outcome.first_error {
            return Err(error);
        }
        let Some((driven, events_out, resumed_from)) = ran else {
            return Err(incomplete("the graph stopped without a reason".to_owned()));
        };
        Ok(RunReport {
            events_in: driven.events_in,
            events_out,
            checkpoints: driven.checkpoints,
            last_checkpoint: driven.last_checkpoint,
            resumed_from,
            checkpoint_pause: status.checkpoint_pause.snapshot(),
        })
    }
}

/// A pipeline's two ends.
type Ends = (Box<dyn Source>, Box<dyn Sink>);

/// The source and the sink, once the tenant's name is checked.
fn required_ends(
    pipeline: &str,
    tenant: &str,
    source: Option<Box<dyn Source>>,
    sink: Option<Box<dyn Sink>>,
) -> Result<Ends, PipelineError> {
    let incomplete = |message: String| PipelineError::Incomplete {
        pipeline: pipeline.to_owned(),
        message,
    };
    crate::tenant::check_tenant_name(tenant).map_err(incomplete)?;
    let source = source.ok_or_else(|| incomplete("no source: call `from`".to_owned()))?;
    let sink = sink.ok_or_else(|| incomplete("no sink: call `to`".to_owned()))?;
    Ok((source, sink))
}

/// The tenant's place among its quotas, when the host has a registry.
async fn admit(
    pipeline: &str,
    tenant: &str,
    tenants: Option<&Tenants>,
    state: &SharedState,
) -> Result<Option<TenantLease>, PipelineError> {
    let Some(tenants) = tenants else {
        return Ok(None);
    };
    match tenants.admit(tenant, state).await {
        Ok(lease) => Ok(Some(lease)),
        Err(source) => Err(PipelineError::Quota {
            pipeline: pipeline.to_owned(),
            source,
        }),
    }
}

/// Exactly-once keeps a write set for the checkpoint; the others write through.
fn write_mode(delivery: Delivery) -> WriteMode {
    match delivery {
        Delivery::ExactlyOnce => WriteMode::Checkpointed,
        Delivery::AtLeastOnce | Delivery::AtMostOnce => WriteMode::WriteThrough,
    }
}

fn window_options(
    delivery: Delivery,
    policy: &CheckpointPolicy,
    requests: &Arc<Notify>,
) -> WindowOptions {
    WindowOptions {
        // Under at-most-once a window's saved buffer may hold events
        // already released after it was saved: start empty instead.
        restore: delivery != Delivery::AtMostOnce,
        checkpoint_on_close: policy.on_window_close.then(|| requests.clone()),
        upstream_watermarks: false,
        controlled_time: false,
    }
}

/// The ends of a linear pipeline that a restart brings back.
struct RestoredEnds<'a> {
    source: &'a mut Box<dyn Source>,
    sink: &'a mut Box<dyn Sink>,
    dead_letter: Option<&'a mut Box<dyn Sink>>,
}

/// Starts the dead-letter sink's task, if the pipeline has one.
fn start_dead_letters(
    inbox: Option<crate::dead_letter::DeadLetterInbox>,
    sink: Option<Box<dyn Sink>>,
    recent: Arc<crate::recent::Recent<crate::dead_letter::DeadLetterEntry>>,
) -> Option<OwnedTask<Result<u64, StreamError>>> {
    match (inbox, sink) {
        (Some(inbox), Some(sink)) => Some(OwnedTask::from(crate::dead_letter::start(
            inbox, sink, recent,
        ))),
        _ => None,
    }
}

/// Claims the pipeline's checkpoints and finds where to start: after the
/// last checkpoint (the sink and the dead-letter sink brought back to it
/// under exactly-once), or from the start with checkpoint 0 committed.
/// Seeks the source there. Returns where the driver starts and the
/// checkpoint resumed from.
async fn restore(
    pipeline: &str,
    scope: &str,
    state: &SharedState,
    delivery: Delivery,
    ends: RestoredEnds<'_>,
) -> Result<(Resume, Option<CheckpointRecord>), PipelineError> {
    let RestoredEnds {
        source,
        sink,
        mut dead_letter,
    } = ends;
    let state_error = |source| PipelineError::State {
        pipeline: pipeline.to_owned(),
        source,
    };
    let stream_error = |source| PipelineError::Stream {
        pipeline: pipeline.to_owned(),
        source,
    };
    let fence = state.claim(scope).await.map_err(state_error)?;
    let resumed_from = state.last_checkpoint(scope).await.map_err(state_error)?;
    let (epoch, position) = match &resumed_from {
        Some(record) => {
            tracing::info!(pipeline, epoch = record.epoch, position = ?record.position,
                "resuming from the last checkpoint");
            if delivery == Delivery::ExactlyOnce {
                // Output past the checkpoint belongs to replayed events: drop it.
                sink.recover(record.sink_position)
                    .await
                    .map_err(stream_error)?;
                // So do their dead letters, which the replay sends again.
                if let Some(dead_letter) = dead_letter.as_mut() {
                    dead_letter
                        .recover(record.dead_letter_position)
                        .await
                        .map_err(stream_error)?;
                }
            }
            (record.epoch + 1, record.position.clone())
        }
        None => {
            // Checkpoint 0 records where the sink starts, so that a crash
            // before the first real checkpoint can be recovered exactly too.
            let mut record = CheckpointRecord::new(scope, 0, Position::Start);
            record.sink_position = sink.position().await.map_err(stream_error)?;
            if let Some(dead_letter) = dead_letter.as_mut() {
                record.dead_letter_position = dead_letter.position().await.map_err(stream_error)?;
            }
            record.fence = fence;
            state.commit(&record, &[]).await.map_err(state_error)?;
            (1, Position::Start)
        }
    };
    source.seek(&position).await.map_err(stream_error)?;
    // A position of an earlier form is committed in the source's current one.
    let position = source.migrated_position().unwrap_or(position);
    let resume = Resume {
        epoch,
        position,
        last_checkpoint: resumed_from.clone(),
        fence,
        outbox_uncleared: false,
    };
    Ok((resume, resumed_from))
}

/// Publishing after the commit, on a start: writes what the committed
/// outbox still holds (the last run may have stopped before writing it, or
/// part of it) to the sink again, with the ids it was given, before any
/// new input is read; the first checkpoint deletes it.
async fn republish(
    pipeline: &str,
    mut outbox: Outbox,
    state: &SharedState,
    sink: &mut dyn Sink,
) -> Result<Outbox, PipelineError> {
    let events = outbox
        .restore(state)
        .await
        .map_err(|source| PipelineError::State {
            pipeline: pipeline.to_owned(),
            source,
        })?;
    if events.is_empty() {
        return Ok(outbox);
    }
    let count = events.len();
    let stream_error = |source| PipelineError::Stream {
        pipeline: pipeline.to_owned(),
        source,
    };
    sink.write(crate::Batch::new(events))
        .await
        .map_err(stream_error)?;
    sink.flush().await.map_err(stream_error)?;
    tracing::info!(
        pipeline,
        events = count,
        duplicates = sink.duplicates(),
        "the committed outbox was published again"
    );
    Ok(outbox)
}

/// The tasks of a pipeline's stages: one per step, and the sink's.
struct Stages {
    steps: Vec<OwnedTask<Result<u64, PipelineError>>>,
    sink: OwnedTask<Result<u64, PipelineError>>,
}

impl Stages {
    /// Starts source driver -> step 0 -> ... -> step n-1 -> sink, each
    /// channel `sizes.0` batches of `sizes.1` events; returns the first
    /// channel's sending end, for the source driver.
    fn spawn(
        pipeline: &str,
        steps: Vec<Box<dyn Step>>,
        (sink, after_commit): (Box<dyn Sink>, Option<AfterCommit>),
        dead_letters: Option<DeadLetters>,
        status: &Arc<LiveStatus>,
        link: &StageLink,
        (capacity, batch_size): (usize, usize),
    ) -> (Output, Stages) {
        let (first, mut next_rx) = Output::channel(capacity, batch_size);
        let mut tasks = Vec::with_capacity(steps.len());
        for step in steps {
            let (output, input) = Output::channel(capacity, batch_size);
            let stats = Arc::new(
                StageStats::new(step.name(), step.counters()).described(step.kind(), Vec::new()),
            );
            status.add_stage(stats.clone());
            let runner = StageRunner::new(pipeline.to_owned(), step, output, stats, link.clone());
            tasks.push(OwnedTask::spawn(crate::dead_letter::in_stage(
                runner.run(next_rx),
            )));
            next_rx = input;
        }
        let sink = OwnedTask::spawn(run_sink(
            pipeline.to_owned(),
            sink,
            next_rx,
            dead_letters,
            status.clone(),
            after_commit,
        ));
        let stages = Stages { steps: tasks, sink };
        (first, stages)
    }

    /// Waits for every stage (and the dead-letter sink) to stop, and
    /// returns what the driver did and the events the sink wrote, or the
    /// first real error of any of them.
    async fn join(
        self,
        pipeline: &str,
        driven: Result<Driven, PipelineError>,
        dead_letter_task: Option<OwnedTask<Result<u64, StreamError>>>,
    ) -> Result<(Driven, u64), PipelineError> {
        let mut outcome = Outcome::default();
        let joined = |r: Result<Result<u64, PipelineError>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| Err(task_failed(pipeline, &e)))
        };
        for task in self.steps {
            outcome.note(joined(task.await));
        }
        let events_out = outcome.note(joined(self.sink.await));
        if let Some(task) = dead_letter_task {
            let result = match task.await {
                Ok(result) => result.map_err(|source| PipelineError::Stream {
                    pipeline: pipeline.to_owned(),
                    source,
                }),
                Err(e) => Err(task_failed(pipeline, &e)),
            };
            outcome.note(result);
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
            Some(driven) => Ok((driven, events_out)),
            None => Err(PipelineError::Task {
                pipeline: pipeline.to_owned(),
                message: "the source driver stopped without a reason".to_owned(),
            }),
        }
    }
}

pub(super) fn task_failed(pipeline: &str, error: &tokio::task::JoinError) -> PipelineError {
    PipelineError::Task {
        pipeline: pipeline.to_owned(),
        message: error.to_string(),
    }
}

/// The stages' outcomes, keeping the first real error: a stage that only
/// lost its neighbour reports less than the neighbour's own error.
#[derive(Default)]
pub(super) struct Outcome {
    pub(super) first_error: Option<PipelineError>,
}

impl Outcome {
    /// Notes a stage's result; returns its count, or 0 when it failed.
    pub(super) fn note(&mut self, result: Result<u64, PipelineError>) -> u64 {
        match result {
            Ok(count) => count,
            Err(error) => {
                let replace = match &self.first_error {
                    None => true,
                    Some(PipelineError::Disconnected { .. }) => {
                        !matches!(error, PipelineError::Disconnected { .. })
                    }
                    Some(_) => false,
                };
                if replace {
                    self.first_error = Some(error);
                }
                0
            }
        }
    }
}
