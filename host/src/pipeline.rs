//! Pipelines: the fluent builder and the engine that runs it.
//!
//! ```no_run
//! # async fn example() -> Result<(), plumber::pipeline::PipelineError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use plumber::checkpoint::CheckpointPolicy;
//! use plumber::pipeline::Pipeline;
//! use plumber::state::MemoryState;
//! use plumber::step::WasmPipe;
//! use plumber::streams::{ArraySource, StdoutSink};
//!
//! let report = Pipeline::builder("names")
//!     .state(Arc::new(MemoryState::new()))
//!     .checkpoint(CheckpointPolicy::every(Duration::from_secs(1)))
//!     .from(ArraySource::from_strings(["ada", "bob", "ada"]))
//!     .then(WasmPipe::new("upper", "upper.wasm"))
//!     .then(WasmPipe::new("count", "count.wasm"))
//!     .to(StdoutSink::new())
//!     .run()
//!     .await?;
//! println!("{} events in", report.events_in);
//! # Ok(()) }
//! ```
//!
//! Each stage runs as its own tokio task; stages are joined by bounded
//! channels that carry whole batches, so a slow stage holds back the ones
//! before it (backpressure) and no event crosses a channel alone.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;

use crate::checkpoint::{CheckpointPolicy, CheckpointRecord, Delivery, Position};
use crate::dead_letter::DeadLetters;
use crate::histogram::{Histogram, HistogramSnapshot};
use crate::runtime::{InstanceSettings, LoadError, Runtime};
use crate::state::{
    checkpoint_scope, MemoryState, Namespace, PendingBound, PipeState, SharedState, StateError,
    WriteMode, WriteSet, DEFAULT_TENANT,
};
use crate::step::{NativeStep, Step, StepCounters, StepError, WasmPipe, WasmStep};
use crate::streams::{Sink, Source, StreamError};
use crate::swap::{ModuleInfo, ModuleSource, PipeSlot, SwapError, Swapped};
use crate::tenant::{QuotaError, TenantLease, Tenants};
use crate::window::{Window, WindowOptions, WindowStep};
use crate::Batch;

/// Why a pipeline could not be built or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The builder is missing something.
    #[error("pipeline `{pipeline}`: {message}")]
    Incomplete {
        /// The pipeline.
        pipeline: String,
        /// What is missing.
        message: String,
    },
    /// A pipe's component could not be loaded or initialised.
    #[error("pipeline `{pipeline}`, pipe `{pipe}`: {source}")]
    Load {
        /// The pipeline.
        pipeline: String,
        /// The pipe.
        pipe: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// A step failed on a batch.
    #[error("pipeline `{pipeline}`: {source}")]
    Step {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: StepError,
    },
    /// The source or the sink failed.
    #[error("pipeline `{pipeline}`: {source}")]
    Stream {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: StreamError,
    },
    /// The state backend failed.
    #[error("pipeline `{pipeline}`: {source}")]
    State {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: StateError,
    },
    /// A stage ended because a neighbour stopped (the neighbour's own error
    /// is the one reported).
    #[error("pipeline `{pipeline}`: stage `{stage}` lost its neighbour")]
    Disconnected {
        /// The pipeline.
        pipeline: String,
        /// The stage that noticed.
        stage: String,
    },
    /// A stage's task panicked or was cancelled.
    #[error("pipeline `{pipeline}`: stage task failed: {message}")]
    Task {
        /// The pipeline.
        pipeline: String,
        /// What the runtime said.
        message: String,
    },
    /// The tenant may not start this pipeline.
    #[error("pipeline `{pipeline}`: {source}")]
    Quota {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: QuotaError,
    },
}

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

/// A command pipe: a WASI preview 1 command module speaking the line
/// protocol of [`crate::command`], sandboxed.
#[derive(Debug, Clone)]
pub struct CommandPipe {
    /// The step's name.
    pub name: String,
    /// The core module (`.wasm`) with a `_start`.
    pub module: std::path::PathBuf,
    /// Its arguments after `argv[0]`.
    pub args: Vec<String>,
    /// Memory cap and time per batch (the other limits do not apply).
    pub limits: crate::runtime::PipeLimits,
}

/// An executable of the host speaking the line protocol, unsandboxed.
#[derive(Debug, Clone)]
pub struct ExecPipe {
    /// The step's name.
    pub name: String,
    /// The program.
    pub path: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// How long one batch may take.
    pub timeout: Duration,
    /// The explicit permission to run outside the sandbox.
    pub allow_unsandboxed: bool,
}

/// A step to be created when the pipeline starts.
pub enum StepSpec {
    /// A WASM pipe, loaded and instantiated at start.
    Wasm(WasmPipe),
    /// A WASI command module, started at start.
    Command(CommandPipe),
    /// A host executable, started at start (when allowed).
    Exec(ExecPipe),
    /// A window, restored from the last checkpoint at start.
    Window(Window),
    /// A step that already exists.
    Ready(Box<dyn Step>),
}

impl From<WasmPipe> for StepSpec {
    fn from(pipe: WasmPipe) -> Self {
        StepSpec::Wasm(pipe)
    }
}

impl From<CommandPipe> for StepSpec {
    fn from(pipe: CommandPipe) -> Self {
        StepSpec::Command(pipe)
    }
}

impl From<ExecPipe> for StepSpec {
    fn from(pipe: ExecPipe) -> Self {
        StepSpec::Exec(pipe)
    }
}

impl From<Window> for StepSpec {
    fn from(window: Window) -> Self {
        StepSpec::Window(window)
    }
}

impl From<NativeStep> for StepSpec {
    fn from(step: NativeStep) -> Self {
        StepSpec::Ready(Box::new(step))
    }
}

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading pipes and restoring the last checkpoint.
    Starting,
    /// Processing.
    Running,
    /// Ended cleanly.
    Stopped,
    /// Ended with an error.
    Failed,
}

impl Phase {
    /// Its name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// Counters of one stage, updated as batches pass.
#[derive(Debug)]
pub struct StageStats {
    /// The step's name.
    pub name: String,
    /// Events in.
    pub events_in: AtomicU64,
    /// Events out.
    pub events_out: AtomicU64,
    /// Events held (a window's buffers).
    pub buffered: AtomicU64,
    /// A WASM step's own counters.
    pub counters: Option<Arc<StepCounters>>,
    /// The most keys the step has held for a checkpoint at once.
    pub pending_keys_peak: AtomicU64,
    /// The most bytes of keys and values it has held for a checkpoint at once.
    pub pending_bytes_peak: AtomicU64,
    /// Checkpoints it asked for because its pending writes reached a bound
    /// ([`CheckpointPolicy::max_pending_keys`], `max_pending_bytes`).
    pub write_set_checkpoints: AtomicU64,
}

/// What a running pipeline is doing, readable while it runs.
#[derive(Debug)]
pub struct LiveStatus {
    phase: AtomicU8,
    /// Events read from the source in this run.
    pub events_in: AtomicU64,
    /// Events written to the sink in this run.
    pub events_out: AtomicU64,
    /// Checkpoints committed in this run.
    pub checkpoints: AtomicU64,
    /// At-most-once: commits of the source position ahead of processing
    /// (one per group of ready batches).
    pub position_commits: AtomicU64,
    /// Epoch of the last committed checkpoint (`u64::MAX`: none).
    last_epoch: AtomicU64,
    /// When it was committed, ms since the Unix epoch.
    last_commit_ms: AtomicU64,
    /// How long its barrier took, microseconds.
    pub last_checkpoint_micros: AtomicU64,
    /// How long each checkpoint held the source back (barrier sent to
    /// commit done).
    pub checkpoint_pause: Histogram,
    /// How long the backend's atomic commits took (checkpoints, and the
    /// position commits of at-most-once).
    pub commit_time: Histogram,
    /// What the source says is still waiting (-1: it does not say).
    pub source_lag: AtomicI64,
    error: Mutex<Option<String>>,
    stages: Mutex<Vec<Arc<StageStats>>>,
    pipes: Mutex<Vec<Arc<PipeSlot>>>,
}

impl Default for LiveStatus {
    fn default() -> Self {
        LiveStatus {
            phase: AtomicU8::new(0),
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            position_commits: AtomicU64::new(0),
            last_epoch: AtomicU64::new(u64::MAX),
            last_commit_ms: AtomicU64::new(0),
            last_checkpoint_micros: AtomicU64::new(0),
            checkpoint_pause: Histogram::durations(),
            commit_time: Histogram::durations(),
            source_lag: AtomicI64::new(-1),
            error: Mutex::new(None),
            stages: Mutex::new(Vec::new()),
            pipes: Mutex::new(Vec::new()),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LiveStatus {
    /// The phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Stopped,
            _ => Phase::Failed,
        }
    }

    fn set_phase(&self, phase: Phase) {
        let value = match phase {
            Phase::Starting => 0,
            Phase::Running => 1,
            Phase::Stopped => 2,
            Phase::Failed => 3,
        };
        self.phase.store(value, Ordering::Release);
    }

    /// The error a failed run ended with.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last committed checkpoint's epoch and its age.
    pub fn last_checkpoint(&self) -> Option<(u64, Duration)> {
        let epoch = self.last_epoch.load(Ordering::Acquire);
        (epoch != u64::MAX).then(|| {
            let at = self.last_commit_ms.load(Ordering::Acquire);
            (epoch, Duration::from_millis(now_ms().saturating_sub(at)))
        })
    }

    fn committed(&self, epoch: u64, took: Duration) {
        self.last_commit_ms.store(now_ms(), Ordering::Release);
        self.last_epoch.store(epoch, Ordering::Release);
        self.last_checkpoint_micros.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Every stage's counters, in pipeline order.
    pub fn stages(&self) -> Vec<Arc<StageStats>> {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The swap points of the WASM pipes.
    pub fn pipes(&self) -> Vec<Arc<PipeSlot>> {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Controls a running pipeline from elsewhere: a clean stop, a checkpoint
/// on demand, a module swap, and its live status.
#[derive(Clone)]
pub struct PipelineHandle {
    shutdown: Arc<watch::Sender<bool>>,
    checkpoint: Arc<Notify>,
    committed: watch::Receiver<u64>,
    status: Arc<LiveStatus>,
}

/// Why a handle call failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The pipeline has no WASM pipe of that name.
    #[error("the pipeline has no WASM pipe `{0}`")]
    UnknownPipe(String),
    /// The pipeline is not running.
    #[error("the pipeline is not running")]
    NotRunning,
    /// The swap was refused or could not happen.
    #[error(transparent)]
    Swap(#[from] SwapError),
}

impl PipelineHandle {
    /// Requests a clean stop: a final checkpoint, then `run` returns.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Requests a checkpoint after the batch in flight.
    pub fn checkpoint(&self) {
        self.checkpoint.notify_one();
    }

    /// Requests a checkpoint and waits until one is committed; returns its epoch.
    ///
    /// # Errors
    ///
    /// The pipeline stopped first.
    pub async fn checkpoint_now(&self) -> Result<u64, HandleError> {
        let mut committed = self.committed.clone();
        committed.borrow_and_update();
        self.checkpoint();
        committed
            .changed()
            .await
            .map_err(|_| HandleError::NotRunning)?;
        let epoch = *committed.borrow();
        Ok(epoch)
    }

    /// Replaces the module of WASM pipe `pipe`: the new module is checked
    /// off the hot path, then switched in at the next checkpoint barrier
    /// (requested here). Returns once it runs.
    ///
    /// # Errors
    ///
    /// No such pipe, the pipeline is not running, or the module was refused
    /// (the old one keeps running).
    pub async fn swap_module(
        &self,
        pipe: &str,
        source: ModuleSource,
    ) -> Result<Swapped, HandleError> {
        let slot = self
            .status
            .pipes()
            .into_iter()
            .find(|slot| slot.pipe() == pipe)
            .ok_or_else(|| match self.status.phase() {
                Phase::Running => HandleError::UnknownPipe(pipe.to_owned()),
                _ => HandleError::NotRunning,
            })?;
        let answer = slot.prepare(source).await?;
        self.checkpoint();
        match answer.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SwapError::Stopped {
                pipe: pipe.to_owned(),
            }
            .into()),
        }
    }

    /// The module each WASM pipe runs now.
    pub fn modules(&self) -> Vec<(String, ModuleInfo)> {
        self.status
            .pipes()
            .iter()
            .map(|slot| (slot.pipe().to_owned(), slot.current()))
            .collect()
    }

    /// The live status.
    pub fn status(&self) -> &Arc<LiveStatus> {
        &self.status
    }

    /// Requests a checkpoint whenever the process receives SIGUSR2.
    ///
    /// # Errors
    ///
    /// The signal handler cannot be installed (or this is not Unix).
    pub fn checkpoint_on_sigusr2(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut signals = signal(SignalKind::user_defined2())?;
            let handle = self.clone();
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::info!("SIGUSR2: checkpoint requested");
                    handle.checkpoint();
                }
            });
            Ok(())
        }
        #[cfg(not(unix))]
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "Unix signals are not available on this platform",
            ))
        }
    }
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
            source: None,
            steps: Vec::new(),
            sink: None,
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
    source: Option<Box<dyn Source>>,
    steps: Vec<StepSpec>,
    sink: Option<Box<dyn Sink>>,
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
        PipelineHandle {
            shutdown: self.shutdown.0.clone(),
            checkpoint: self.checkpoint_requests.clone(),
            committed: self.committed.1.clone(),
            status: self.status.clone(),
        }
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
            Err(error) => {
                *status.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
                status.set_phase(Phase::Failed);
            }
        }
        result
    }

    async fn run_inner(self) -> Result<RunReport, PipelineError> {
        let name = self.name;
        let tenant = self.tenant;
        let status = self.status;
        if let Err(message) = crate::tenant::check_tenant_name(&tenant) {
            return Err(PipelineError::Incomplete {
                pipeline: name,
                message,
            });
        }
        // Checkpoint records are kept per tenant and pipeline.
        let scope = checkpoint_scope(&tenant, &name);
        let incomplete = |message: &str| PipelineError::Incomplete {
            pipeline: name.clone(),
            message: message.to_owned(),
        };
        let mut source = self
            .source
            .ok_or_else(|| incomplete("no source: call `from`"))?;
        let sink = self.sink.ok_or_else(|| incomplete("no sink: call `to`"))?;
        let state: SharedState = self.state.unwrap_or_else(|| Arc::new(MemoryState::new()));
        let lease = match &self.tenants {
            Some(tenants) => Some(tenants.admit(&tenant, &state).await.map_err(|source| {
                PipelineError::Quota {
                    pipeline: name.clone(),
                    source,
                }
            })?),
            None => None,
        };

        let (dead_letters, dead_letter_task) = match self.dead_letter {
            Some(sink) => {
                let (letters, task) = crate::dead_letter::spawn(sink);
                (Some(letters), Some(task))
            }
            None => (None, None),
        };
        let mode = match self.delivery {
            Delivery::ExactlyOnce => WriteMode::Checkpointed,
            Delivery::AtLeastOnce | Delivery::AtMostOnce => WriteMode::WriteThrough,
        };
        let context = StepContext {
            tenant: &tenant,
            pipeline: &name,
            state: &state,
            dead_letters: dead_letters.as_ref(),
            mode,
            lease: lease.as_ref(),
            multi_tenant: tenant != DEFAULT_TENANT
                || self.tenants.as_ref().is_some_and(|t| t.is_multi_tenant()),
            status: &status,
            checkpoint_requests: &self.checkpoint_requests,
            pending_bound: PendingBound {
                keys: self.checkpoint.max_pending_keys,
                bytes: self.checkpoint.max_pending_bytes,
            },
        };
        let steps = instantiate_steps(
            &context,
            self.steps,
            self.runtime,
            WindowOptions {
                // Under at-most-once a window's saved buffer may hold events
                // already released after it was saved: start empty instead.
                restore: self.delivery != Delivery::AtMostOnce,
                checkpoint_on_close: self
                    .checkpoint
                    .on_window_close
                    .then(|| self.checkpoint_requests.clone()),
            },
        )
        .await?;

        let state_error = |source| PipelineError::State {
            pipeline: name.clone(),
            source,
        };
        let fence = state.claim(&scope).await.map_err(state_error)?;
        let mut sink = sink;
        let resumed_from = state.last_checkpoint(&scope).await.map_err(state_error)?;
        let stream_error = |source| PipelineError::Stream {
            pipeline: name.clone(),
            source,
        };
        let (epoch, position) = match &resumed_from {
            Some(record) => {
                tracing::info!(pipeline = %name, epoch = record.epoch, position = ?record.position,
                    "resuming from the last checkpoint");
                if self.delivery == Delivery::ExactlyOnce {
                    // Output past the checkpoint belongs to replayed events: drop it.
                    sink.recover(record.sink_position)
                        .await
                        .map_err(stream_error)?;
                }
                (record.epoch + 1, record.position.clone())
            }
            None => {
                // Checkpoint 0 records where the sink starts, so that a crash
                // before the first real checkpoint can be recovered exactly too.
                let mut record = CheckpointRecord::new(&scope, 0, Position::Start);
                record.sink_position = sink.position().await.map_err(stream_error)?;
                record.fence = fence;
                state.commit(&record, &[]).await.map_err(state_error)?;
                (1, Position::Start)
            }
        };
        source
            .seek(&position)
            .await
            .map_err(|source| PipelineError::Stream {
                pipeline: name.clone(),
                source,
            })?;
        // A position of an earlier form is committed in the source's current one.
        let position = source.migrated_position().unwrap_or(position);

        // source driver -> step 0 -> ... -> step n-1 -> sink
        let (first_tx, mut next_rx) = Output::channel(self.channel_capacity, self.batch_size);
        let link = StageLink {
            released: Arc::new(AtomicBool::new(false)),
            requests: self.checkpoint_requests.clone(),
            max_pending_keys: self.checkpoint.max_pending_keys,
            max_pending_bytes: self.checkpoint.max_pending_bytes,
        };
        let mut tasks: Vec<JoinHandle<Result<u64, PipelineError>>> = Vec::new();
        for step in steps {
            let (tx, rx) = Output::channel(self.channel_capacity, self.batch_size);
            let stats = Arc::new(StageStats {
                name: step.name().to_owned(),
                events_in: AtomicU64::new(0),
                events_out: AtomicU64::new(0),
                buffered: AtomicU64::new(0),
                counters: step.counters(),
                pending_keys_peak: AtomicU64::new(0),
                pending_bytes_peak: AtomicU64::new(0),
                write_set_checkpoints: AtomicU64::new(0),
            });
            status
                .stages
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(stats.clone());
            tasks.push(tokio::spawn(run_step(
                name.clone(),
                step,
                next_rx,
                tx,
                stats,
                link.clone(),
            )));
            next_rx = rx;
        }
        let sink_task = tokio::spawn(run_sink(
            name.clone(),
            sink,
            next_rx,
            dead_letters,
            status.clone(),
        ));
        status.set_phase(Phase::Running);

        let commit_listener = source.commit_listener();
        let driver = SourceDriver {
            pipeline: name.clone(),
            scope: scope.clone(),
            status: status.clone(),
            committed: self.committed.0,
            state: state.clone(),
            policy: self.checkpoint,
            epoch,
            position,
            events_in: 0,
            events_since_checkpoint: 0,
            checkpoints: 0,
            last_checkpoint: resumed_from.clone(),
            batch_size: self.batch_size,
            delivery: self.delivery,
            fence,
            requests: self.checkpoint_requests.clone(),
            released: link.released.clone(),
            commit_listener,
        };
        let driven = driver.run(source, first_tx, self.shutdown.1).await;
        // The tenant's place is held until every stage has stopped.
        let _lease = lease;

        // Collect every stage's outcome; report the first real error.
        let mut first_error: Option<PipelineError> = None;
        let mut note = |result: Result<u64, PipelineError>| -> u64 {
            match result {
                Ok(count) => count,
                Err(error) => {
                    let replace = match &first_error {
                        None => true,
                        Some(PipelineError::Disconnected { .. }) => {
                            !matches!(error, PipelineError::Disconnected { .. })
                        }
                        Some(_) => false,
                    };
                    if replace {
                        first_error = Some(error);
                    }
                    0
                }
            }
        };
        let joined = |r: Result<Result<u64, PipelineError>, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| {
                Err(PipelineError::Task {
                    pipeline: name.clone(),
                    message: e.to_string(),
                })
            })
        };
        for task in tasks {
            note(joined(task.await));
        }
        let events_out = note(joined(sink_task.await));
        if let Some(task) = dead_letter_task {
            let result = match task.await {
                Ok(result) => result.map_err(|source| PipelineError::Stream {
                    pipeline: name.clone(),
                    source,
                }),
                Err(e) => Err(PipelineError::Task {
                    pipeline: name.clone(),
                    message: e.to_string(),
                }),
            };
            note(result);
        }
        let driver = match driven {
            Ok(driver) => Some(driver),
            Err(error) => {
                note(Err(error));
                None
            }
        };
        if let Some(error) = first_error {
            return Err(error);
        }
        let Some(driver) = driver else {
            return Err(PipelineError::Task {
                pipeline: name,
                message: "the source driver stopped without a reason".to_owned(),
            });
        };
        Ok(RunReport {
            events_in: driver.events_in,
            events_out,
            checkpoints: driver.checkpoints,
            last_checkpoint: driver.last_checkpoint,
            resumed_from,
            checkpoint_pause: status.checkpoint_pause.snapshot(),
        })
    }
}

/// What every step of one pipeline is created with.
struct StepContext<'a> {
    tenant: &'a str,
    pipeline: &'a str,
    state: &'a SharedState,
    dead_letters: Option<&'a DeadLetters>,
    mode: WriteMode,
    lease: Option<&'a TenantLease>,
    multi_tenant: bool,
    status: &'a Arc<LiveStatus>,
    checkpoint_requests: &'a Arc<Notify>,
    /// What one call of a pipe may add to its write set.
    pending_bound: PendingBound,
}

async fn instantiate_steps(
    context: &StepContext<'_>,
    specs: Vec<StepSpec>,
    runtime: Option<Runtime>,
    window_options: WindowOptions,
) -> Result<Vec<Box<dyn Step>>, PipelineError> {
    let pipeline = context.pipeline;
    let mut runtime = runtime;
    let mut steps: Vec<Box<dyn Step>> = Vec::with_capacity(specs.len());
    for spec in specs {
        let command_error = |source: crate::command::CommandError| PipelineError::Step {
            pipeline: pipeline.to_owned(),
            source: StepError::Native {
                step: "command".to_owned(),
                message: source.to_string(),
            },
        };
        match spec {
            StepSpec::Ready(step) => steps.push(step),
            StepSpec::Command(pipe) => steps.push(Box::new(
                crate::command::WasiCommandStep::start(
                    &shared_runtime(&mut runtime).map_err(|source| PipelineError::Load {
                        pipeline: pipeline.to_owned(),
                        pipe: pipe.name.clone(),
                        source,
                    })?,
                    context.tenant,
                    &pipe.name,
                    &pipe.module,
                    &pipe.args,
                    &pipe.limits,
                )
                .map_err(command_error)?,
            )),
            StepSpec::Exec(pipe) => {
                let allowed = if !pipe.allow_unsandboxed {
                    Err(format!(
                        "`{}` would run outside the sandbox; set \"allow_unsandboxed\": true on the step to allow it",
                        pipe.path.display()
                    ))
                } else if context.multi_tenant {
                    Err("unsandboxed executables never run in a multi-tenant host".to_owned())
                } else {
                    Ok(())
                };
                steps.push(Box::new(
                    crate::command::ExecStep::start(
                        &pipe.name,
                        &pipe.path,
                        &pipe.args,
                        pipe.timeout,
                        allowed,
                    )
                    .map_err(command_error)?,
                ));
            }
            StepSpec::Window(window) => {
                let step = WindowStep::restore(
                    window,
                    context.tenant,
                    pipeline,
                    context.state,
                    context.dead_letters.cloned(),
                    &window_options,
                )
                .await
                .map_err(|source| PipelineError::Step {
                    pipeline: pipeline.to_owned(),
                    source,
                })?;
                steps.push(Box::new(step));
            }
            StepSpec::Wasm(pipe) => {
                let load_error = |source| PipelineError::Load {
                    pipeline: pipeline.to_owned(),
                    pipe: pipe.name.clone(),
                    source,
                };
                let rt = shared_runtime(&mut runtime).map_err(load_error)?;
                let component = rt
                    .load(&pipe.module, &pipe.capabilities)
                    .map_err(load_error)?;
                let namespace = Namespace::for_tenant_pipe(context.tenant, pipeline, &pipe.name);
                let state = PipeState::new(context.state.clone(), namespace.clone(), context.mode)
                    .with_quota(context.lease.and_then(TenantLease::state_quota))
                    .with_call_bound(context.pending_bound);
                let settings = Arc::new(InstanceSettings {
                    tenant: context.tenant.into(),
                    pipe: pipe.name.as_str().into(),
                    limits: Arc::new(pipe.limits.clone()),
                    capabilities: pipe.capabilities.clone(),
                    config_json: pipe.config.to_string(),
                    packed: pipe.packed,
                });
                let instance = component
                    .instantiate(&rt, settings, state)
                    .await
                    .map_err(load_error)?;
                let slot = Arc::new(PipeSlot::new(&instance, context.state.clone(), namespace));
                context
                    .status
                    .pipes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(slot.clone());
                if let Some(every) = pipe.watch_module {
                    let requests = context.checkpoint_requests.clone();
                    crate::swap::watch_module(slot.clone(), every, move || requests.notify_one());
                }
                steps.push(Box::new(
                    WasmStep::new(pipe.name.clone(), instance)
                        .with_policy(pipe.on_error, context.dead_letters.cloned())
                        .with_slot(slot),
                ));
            }
        }
    }
    Ok(steps)
}

/// The pipeline's runtime, created with the default cache on first need.
fn shared_runtime(runtime: &mut Option<Runtime>) -> Result<Runtime, LoadError> {
    match runtime {
        Some(rt) => Ok(rt.clone()),
        None => {
            let rt = Runtime::with_default_cache()?;
            *runtime = Some(rt.clone());
            Ok(rt)
        }
    }
}

/// What flows between stages.
enum Message {
    /// A batch of events, with its share of the channel's room.
    Data(Batch, Room),
    /// A checkpoint barrier: every stage adds its pending writes as it
    /// passes; the sink flushes and sends the writes back to the source driver.
    Barrier(Barrier),
    /// The finite source has ended: steps push what they still hold.
    End,
}

/// A batch's share of a channel's room, given back when it is received.
type Room = Option<tokio::sync::OwnedSemaphorePermit>;

/// The sending end of a channel between stages. Channels are bounded in
/// batches and, because one batch can be a whole window, in events too: a
/// batch takes one unit of room per event (a batch larger than the room
/// waits for the channel to be empty), so what waits between two stages
/// stays under `capacity × batch_size` events.
#[derive(Clone)]
struct Output {
    sender: mpsc::Sender<Message>,
    room: Arc<tokio::sync::Semaphore>,
    max_room: u32,
}

impl Output {
    fn channel(capacity: usize, batch_size: usize) -> (Output, mpsc::Receiver<Message>) {
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

    async fn send_batch(&self, batch: Batch) -> Result<(), mpsc::error::SendError<Message>> {
        let units = u32::try_from(batch.events.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_room);
        // The semaphore is never closed, so this cannot fail; sending
        // without room would only loosen the bound.
        let room = self.room.clone().acquire_many_owned(units).await.ok();
        self.sender.send(Message::Data(batch, room)).await
    }

    async fn send(&self, message: Message) -> Result<(), mpsc::error::SendError<Message>> {
        self.sender.send(message).await
    }
}

struct Barrier {
    writes: Vec<WriteSet>,
    reply: oneshot::Sender<BarrierReply>,
}

/// What comes back to the source driver when a barrier reaches the sink.
struct BarrierReply {
    writes: Vec<WriteSet>,
    sink_position: Option<u64>,
}

/// What the stages share with the source driver.
#[derive(Clone)]
struct StageLink {
    /// Set when a step released output on its own (a window's timer, a
    /// signal, an idle timeout): the next due checkpoint is then needed even
    /// if the source read nothing, or that output would wait unflushed in
    /// the sink until the next input.
    released: Arc<AtomicBool>,
    /// Asks the source driver for a checkpoint.
    requests: Arc<Notify>,
    /// A step's pending writes past these force a checkpoint.
    max_pending_keys: Option<u64>,
    max_pending_bytes: Option<u64>,
}

impl StageLink {
    /// Records what `step` holds for the next checkpoint and asks for one
    /// (once per epoch) when it is past a bound.
    fn check_pending(&self, step: &mut dyn Step, stats: &StageStats, requested: &mut bool) {
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

async fn run_step(
    pipeline: String,
    mut step: Box<dyn Step>,
    mut input: mpsc::Receiver<Message>,
    output: Output,
    stats: Arc<StageStats>,
    link: StageLink,
) -> Result<u64, PipelineError> {
    let stage = step.name().to_owned();
    let disconnected = || PipelineError::Disconnected {
        pipeline: pipeline.clone(),
        stage: stage.clone(),
    };
    let step_error = |source| PipelineError::Step {
        pipeline: pipeline.clone(),
        source,
    };
    let mut produced: Vec<Batch> = Vec::new();
    let trigger = step.trigger();
    // Whether this step asked for a checkpoint since the last barrier.
    let mut requested = false;
    loop {
        let timer = step.timer();
        let next = tokio::select! {
            message = input.recv() => match message {
                Some(message) => Next::Message(message),
                None => break,
            },
            () = sleep_until(timer), if timer.is_some() => Next::Wake,
            () = notified(trigger.as_deref()), if trigger.is_some() => Next::Wake,
        };
        let message = match next {
            Next::Message(message) => message,
            Next::Wake => {
                step.wake(&mut produced).await.map_err(step_error)?;
                if !produced.is_empty() {
                    link.released.store(true, Ordering::Release);
                }
                send_all(&output, &mut produced)
                    .await
                    .map_err(|_| disconnected())?;
                continue;
            }
        };
        match message {
            Message::Data(batch, room) => {
                drop(room);
                stats
                    .events_in
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                step.process(batch, &mut produced)
                    .await
                    .map_err(step_error)?;
                link.check_pending(step.as_mut(), &stats, &mut requested);
                let out: usize = produced.iter().map(|b| b.events.len()).sum();
                stats.events_out.fetch_add(out as u64, Ordering::Relaxed);
                send_all(&output, &mut produced)
                    .await
                    .map_err(|_| disconnected())?;
            }
            Message::Barrier(mut barrier) => {
                barrier.writes.push(step.take_writes());
                requested = false;
                step.at_barrier().await;
                // Sampled at barriers: counting a window's buffers is not free.
                if let Some(held) = step.buffered_events() {
                    stats.buffered.store(held as u64, Ordering::Relaxed);
                }
                output
                    .send(Message::Barrier(barrier))
                    .await
                    .map_err(|_| disconnected())?;
            }
            Message::End => {
                step.finish(&mut produced).await.map_err(step_error)?;
                send_all(&output, &mut produced)
                    .await
                    .map_err(|_| disconnected())?;
                output
                    .send(Message::End)
                    .await
                    .map_err(|_| disconnected())?;
            }
        }
    }
    Ok(0)
}

/// What a step's loop does next.
enum Next {
    /// Handle a message from upstream.
    Message(Message),
    /// Its timer is due or its trigger fired: release what is due.
    Wake,
}

async fn send_all(
    output: &Output,
    produced: &mut Vec<Batch>,
) -> Result<(), mpsc::error::SendError<Message>> {
    for batch in produced.drain(..) {
        output.send_batch(batch).await?;
    }
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn notified(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

async fn run_sink(
    pipeline: String,
    mut sink: Box<dyn Sink>,
    mut input: mpsc::Receiver<Message>,
    dead_letters: Option<DeadLetters>,
    status: Arc<LiveStatus>,
) -> Result<u64, PipelineError> {
    let stream_error = |source| PipelineError::Stream {
        pipeline: pipeline.clone(),
        source,
    };
    let mut events_out = 0u64;
    while let Some(message) = input.recv().await {
        match message {
            Message::Data(batch, room) => {
                drop(room);
                events_out += batch.events.len() as u64;
                status
                    .events_out
                    .fetch_add(batch.events.len() as u64, Ordering::Relaxed);
                sink.write(batch).await.map_err(stream_error)?;
            }
            Message::Barrier(barrier) => {
                sink.flush().await.map_err(stream_error)?;
                if let Some(dead_letters) = &dead_letters {
                    // Dead letters sent before the barrier are durable with the checkpoint.
                    match dead_letters.flush().await {
                        Ok(flushed) => flushed.map_err(stream_error)?,
                        Err(_) => {
                            return Err(PipelineError::Disconnected {
                                pipeline: pipeline.clone(),
                                stage: "dead-letter sink".to_owned(),
                            })
                        }
                    }
                }
                let sink_position = sink.position().await.map_err(stream_error)?;
                // The driver may be gone if it failed; its error is reported.
                let _ = barrier.reply.send(BarrierReply {
                    writes: barrier.writes,
                    sink_position,
                });
            }
            Message::End => {}
        }
    }
    Ok(events_out)
}

/// Reads the source, injects barriers, and commits checkpoints.
struct SourceDriver {
    pipeline: String,
    /// The name its checkpoints are kept under (tenant and pipeline).
    scope: String,
    status: Arc<LiveStatus>,
    committed: watch::Sender<u64>,
    state: SharedState,
    policy: CheckpointPolicy,
    epoch: u64,
    position: Position,
    events_in: u64,
    events_since_checkpoint: u64,
    checkpoints: u64,
    last_checkpoint: Option<CheckpointRecord>,
    batch_size: usize,
    delivery: Delivery,
    fence: u64,
    requests: Arc<Notify>,
    /// Set by a step that released output on its own since the last barrier.
    released: Arc<AtomicBool>,
    commit_listener: Option<Box<dyn crate::streams::CommitListener>>,
}

type ReadResult = Result<Option<(Vec<crate::Event>, Position)>, StreamError>;

/// At-most-once commits the position once for a group of batches the
/// source already has ready: at most this many batches...
const GROUP_MAX_BATCHES: usize = 1000;
/// ...and at most this many events (or one batch, if bigger). After a
/// crash, a committed group's unprocessed events are skipped: this bounds
/// how many a crash can skip beyond what is in flight between stages.
const GROUP_MAX_EVENTS: usize = 1024;

/// Batches read ahead of the driver: two, and under at-most-once enough
/// small ones to make a group.
fn read_ahead(delivery: Delivery, batch_size: usize) -> usize {
    match delivery {
        Delivery::AtMostOnce => GROUP_MAX_EVENTS
            .div_ceil(batch_size.max(1))
            .clamp(2, GROUP_MAX_BATCHES),
        Delivery::AtLeastOnce | Delivery::ExactlyOnce => 2,
    }
}

/// The next read: one set aside while grouping, or the reader's next.
async fn next_read(
    set_aside: &mut Option<ReadResult>,
    read_rx: &mut mpsc::Receiver<ReadResult>,
) -> Option<ReadResult> {
    match set_aside.take() {
        Some(read) => Some(read),
        None => read_rx.recv().await,
    }
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

impl SourceDriver {
    async fn run(
        mut self,
        mut source: Box<dyn Source>,
        output: Output,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<SourceDriver, PipelineError> {
        // Reading happens in its own task, so that waiting for input never
        // holds back a due checkpoint or a shutdown.
        let (read_tx, mut read_rx) =
            mpsc::channel::<ReadResult>(read_ahead(self.delivery, self.batch_size));
        let batch_size = self.batch_size;
        let status = self.status.clone();
        let reader = tokio::spawn(async move {
            loop {
                let result = source.next_batch(batch_size).await;
                if let Some(lag) = source.lag() {
                    let lag = i64::try_from(lag).unwrap_or(i64::MAX);
                    status.source_lag.store(lag, Ordering::Relaxed);
                }
                let last = !matches!(result, Ok(Some(_)));
                if read_tx.send(result).await.is_err() || last {
                    break;
                }
            }
        });
        let result = self.drive(&mut read_rx, &output, &mut shutdown).await;
        reader.abort();
        result.map(|()| self)
    }

    async fn drive(
        &mut self,
        read_rx: &mut mpsc::Receiver<ReadResult>,
        output: &Output,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), PipelineError> {
        let mut ticker = self.policy.interval.map(|interval| {
            let mut ticker =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker
        });
        // A read taken from the reader while grouping that ends the group
        // (the end of the source, an error): handled next.
        let mut set_aside: Option<ReadResult> = None;
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        tracing::info!(pipeline = %self.pipeline, "shutdown requested");
                        return self.checkpoint(output, CheckpointCause::Last).await;
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
                read = next_read(&mut set_aside, read_rx) => match read {
                    Some(Ok(Some((events, position)))) => {
                        let mut group = vec![(events, position)];
                        if self.delivery == Delivery::AtMostOnce {
                            set_aside = gather_ready(&mut group, read_rx);
                            // Commit the position first: after a crash these
                            // events are skipped, never applied twice.
                            self.commit_ahead(&group).await?;
                        }
                        for (events, position) in group {
                            let count = events.len() as u64;
                            output
                                .send_batch(Batch::new(events))
                                .await
                                .map_err(|_| self.disconnected())?;
                            if self.delivery != Delivery::AtMostOnce {
                                // (At-most-once moved it to the group's end
                                // already: a checkpoint never records less
                                // than was committed ahead.)
                                self.position = position;
                            }
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
                    }
                    Some(Ok(None)) | None => {
                        output.send(Message::End).await.map_err(|_| self.disconnected())?;
                        return self.checkpoint(output, CheckpointCause::Last).await;
                    }
                    Some(Err(source)) => {
                        return Err(PipelineError::Stream { pipeline: self.pipeline.clone(), source });
                    }
                }
            }
        }
    }

    /// At-most-once: commits the position after the last batch of `group`
    /// before any of it is processed.
    async fn commit_ahead(
        &mut self,
        group: &[(Vec<crate::Event>, Position)],
    ) -> Result<(), PipelineError> {
        let Some((_, position)) = group.last() else {
            return Ok(());
        };
        let mut record = CheckpointRecord::new(&self.scope, self.epoch, position.clone());
        record.fence = self.fence;
        record.sink_position = self.last_checkpoint.as_ref().and_then(|c| c.sink_position);
        let commit_started = tokio::time::Instant::now();
        self.state
            .commit(&record, &[])
            .await
            .map_err(|source| PipelineError::State {
                pipeline: self.pipeline.clone(),
                source,
            })?;
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

    fn disconnected(&self) -> PipelineError {
        PipelineError::Disconnected {
            pipeline: self.pipeline.clone(),
            stage: "source".to_owned(),
        }
    }

    /// Sends a barrier, waits until it has passed every stage and the sink
    /// has flushed, then commits the writes and the position atomically.
    async fn checkpoint(
        &mut self,
        output: &Output,
        why: CheckpointCause,
    ) -> Result<(), PipelineError> {
        // Nothing read and nothing released since the last checkpoint:
        // nothing to save (an idle pipeline writes nothing), except at the
        // end of a run that read something, where steps may have written
        // while finishing, or when asked for one. Output a step released on
        // its own (a window's timer) is flushed by the next due checkpoint.
        let released = self.released.swap(false, Ordering::AcqRel);
        let needed = match why {
            CheckpointCause::Due => self.events_since_checkpoint > 0 || released,
            CheckpointCause::Last => {
                self.events_since_checkpoint > 0 || self.events_in > 0 || released
            }
            CheckpointCause::Forced => true,
        };
        if !needed {
            return Ok(());
        }
        let started = tokio::time::Instant::now();
        let (reply, replied) = oneshot::channel();
        output
            .send(Message::Barrier(Barrier {
                writes: Vec::new(),
                reply,
            }))
            .await
            .map_err(|_| self.disconnected())?;
        let reply = replied.await.map_err(|_| self.disconnected())?;
        let mut record = CheckpointRecord::new(&self.scope, self.epoch, self.position.clone());
        record.sink_position = reply.sink_position;
        record.fence = self.fence;
        let commit_started = tokio::time::Instant::now();
        self.state
            .commit(&record, &reply.writes)
            .await
            .map_err(|source| PipelineError::State {
                pipeline: self.pipeline.clone(),
                source,
            })?;
        self.status
            .commit_time
            .record_duration(commit_started.elapsed());
        tracing::debug!(pipeline = %self.pipeline, epoch = self.epoch, position = ?self.position, "checkpoint committed");
        self.status
            .checkpoint_pause
            .record_duration(started.elapsed());
        self.status.committed(self.epoch, started.elapsed());
        self.status.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.committed.send_replace(self.epoch);
        self.epoch += 1;
        self.checkpoints += 1;
        self.events_since_checkpoint = 0;
        self.last_checkpoint = Some(record);
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

/// Adds to `group` the batches the reader already has ready, up to the
/// group's bounds, without waiting for more. Returns a read that ends the
/// group early (the end of the source, or an error), to be handled next.
fn gather_ready(
    group: &mut Vec<(Vec<crate::Event>, Position)>,
    read_rx: &mut mpsc::Receiver<ReadResult>,
) -> Option<ReadResult> {
    let mut events: usize = group.iter().map(|(events, _)| events.len()).sum();
    while group.len() < GROUP_MAX_BATCHES && events < GROUP_MAX_EVENTS {
        match read_rx.try_recv() {
            Ok(Ok(Some((batch, position)))) => {
                if events + batch.len() > GROUP_MAX_EVENTS {
                    // Too big for this group: it starts the next one.
                    return Some(Ok(Some((batch, position))));
                }
                events += batch.len();
                group.push((batch, position));
            }
            Ok(other) => return Some(other),
            // Nothing ready (or the reader is gone: the next read says so).
            Err(_) => break,
        }
    }
    None
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
