//! Steps: what a pipeline runs between its source and its sink.
//!
//! A [`Step`] takes a batch and pushes the batches it produces. WASM pipes
//! ([`WasmStep`]) are the user's logic; [`NativeStep`] runs a Rust closure
//! in the same place (library use, and the baseline of `plumber bench`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::sync::Notify;

use crate::dead_letter::DeadLetters;
use crate::histogram::Histogram;
use crate::recent::Recent;
use crate::retry::RetryPolicy;
use crate::runtime::{
    CallError, Capabilities, Grant, GuestLogLine, LimitKind, LoadError, PipeInstance, PipeLimits,
    ReadOnlyDir, RECENT_LOG_LINES,
};
use crate::state::{PendingWrites, WriteSet};
use crate::swap::PipeSlot;
use crate::ErrorChain;
use crate::{Batch, Event};

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The guest returned a `pipe-error`.
    #[error("pipe `{step}` returned an error for a batch of {batch_len} events{}: {message}",
        .event_index.map(|i| format!(" (at event {i} of the batch)")).unwrap_or_default())]
    Guest {
        /// The pipe's name.
        step: String,
        /// The guest's message.
        message: String,
        /// Whether the guest said a retry may pass.
        retryable: bool,
        /// The failing event's index in the batch, when the guest said.
        event_index: Option<u32>,
        /// Events in the batch.
        batch_len: usize,
    },
    /// The guest trapped.
    #[error("pipe `{step}` trapped while processing a batch of {batch_len} events (first event: {first_event}): {message}")]
    Trap {
        /// The pipe's name.
        step: String,
        /// Events in the batch.
        batch_len: usize,
        /// A short rendering of the batch's first event.
        first_event: String,
        /// The trap and its WebAssembly backtrace.
        message: String,
    },
    /// The guest went past one of its limits.
    #[error("pipe `{step}` went past its {kind} limit on a batch of {batch_len} events (first event: {first_event}): {message}")]
    Limit {
        /// The pipe's name.
        step: String,
        /// Which limit.
        kind: LimitKind,
        /// Events in the batch.
        batch_len: usize,
        /// A short rendering of the batch's first event.
        first_event: String,
        /// What happened.
        message: String,
    },
    /// An instance could not be created again after a trap.
    #[error("pipe `{step}` could not be restarted after a failure")]
    Restart {
        /// The pipe's name.
        step: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// The dead-letter sink is needed but has stopped or is not configured.
    #[error("pipe `{step}`: cannot dead-letter a failed event: {message}")]
    DeadLetter {
        /// The pipe's name.
        step: String,
        /// Why.
        message: String,
    },
    /// The state backend failed under a pipe's state call (unreachable, or
    /// the pipeline claimed by a newer process).
    #[error("pipe `{step}`: the state backend failed: {source}")]
    State {
        /// The pipe's name.
        step: String,
        /// Why.
        #[source]
        source: crate::state::StateError,
    },
    /// A native step failed.
    #[error("step `{step}` failed: {message}")]
    Native {
        /// The step's name.
        step: String,
        /// Its message.
        message: String,
    },
}

/// One stage of a pipeline.
#[async_trait]
pub trait Step: Send {
    /// The step's name (for logs and errors).
    fn name(&self) -> &str;

    /// Processes one batch, pushing any output batches onto `out`.
    ///
    /// # Errors
    ///
    /// The step failed on this batch; the pipeline stops without committing
    /// anything of the current epoch.
    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError>;

    /// Processes one batch of a graph's step with several inputs: `input`
    /// is the index of the input it came from, in the order the step names
    /// them (`from`); every event also carries the input's name in the
    /// header `plumber-input`. A step that treats its inputs apart (a join)
    /// overrides this; by default the batch goes to [`Step::process`].
    ///
    /// # Errors
    ///
    /// As [`Step::process`].
    async fn process_input(
        &mut self,
        input: usize,
        batch: Batch,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        let _ = input;
        self.process(batch, out).await
    }

    /// Hands over the state writes made since the last checkpoint.
    fn take_writes(&mut self) -> WriteSet {
        WriteSet::default()
    }

    /// How much the step holds for the next checkpoint (keys and bytes of
    /// its write set), checked after each batch against the policy's bounds.
    fn pending_writes(&mut self) -> PendingWrites {
        PendingWrites::default()
    }

    /// Called once when a finite source has ended: push anything still held.
    ///
    /// # Errors
    ///
    /// The step failed while flushing.
    async fn finish(&mut self, _out: &mut Vec<Batch>) -> Result<(), StepError> {
        Ok(())
    }

    /// When the step wants [`Step::wake`] called even if no batch arrives
    /// (a time window's end, an idle timeout).
    fn timer(&self) -> Option<tokio::time::Instant> {
        None
    }

    /// A notification that also calls [`Step::wake`] (a signal trigger).
    fn trigger(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Called when the timer is due or the trigger fired: push what is due.
    ///
    /// # Errors
    ///
    /// The step failed while releasing.
    async fn wake(&mut self, _out: &mut Vec<Batch>) -> Result<(), StepError> {
        Ok(())
    }

    /// The source's watermark moved to `watermark` (ms since the Unix
    /// epoch), after every event read before it: an event-time window
    /// fires what it closes (pushed onto `out`); other steps ignore it, and
    /// the pipeline passes it on to the next step.
    ///
    /// # Errors
    ///
    /// The step failed while releasing.
    async fn watermark(&mut self, _watermark: u64, _out: &mut Vec<Batch>) -> Result<(), StepError> {
        Ok(())
    }

    /// Called at each checkpoint barrier before [`Step::take_writes`]: the
    /// one point where a pipe may switch modules (what the switch writes,
    /// a state migration, is committed with that barrier's checkpoint).
    async fn at_barrier(&mut self) {}

    /// Counters of this step, for metrics.
    fn counters(&self) -> Option<Arc<StepCounters>> {
        None
    }

    /// What kind of step it is, as the console marks it: `wasm`, `window`,
    /// `join`, `lookup`, `command`, `exec`, or `native` (a Rust step of the
    /// embedding host).
    fn kind(&self) -> &'static str {
        "native"
    }

    /// Events the step holds (a window's buffers), for metrics.
    fn buffered_events(&self) -> Option<usize> {
        None
    }
}

/// What a WASM step did, readable from elsewhere (metrics, status).
#[derive(Debug)]
pub struct StepCounters {
    /// Calls into the guest (batches, and the parts of failed batches run again).
    pub calls: AtomicU64,
    /// Events skipped by `on_error: skip`.
    pub skipped: AtomicU64,
    /// Events sent to the dead-letter sink by the error policy.
    pub dead_lettered: AtomicU64,
    /// Retries made by `on_error: retry`.
    pub retries: AtomicU64,
    /// Instances created again after a trap or limit.
    pub restarts: AtomicU64,
    /// Failures by kind: guest error, trap, and each limit.
    pub guest_errors: AtomicU64,
    /// Traps.
    pub traps: AtomicU64,
    /// Limit failures, indexed like [`LIMIT_KINDS`].
    pub limits: [AtomicU64; 8],
    /// Nanoseconds spent in the guest.
    pub guest_nanos: AtomicU64,
    /// Largest linear memory of the instance, bytes.
    pub memory_bytes: AtomicU64,
    /// Guest log lines dropped for going past the log rate.
    pub log_dropped: AtomicU64,
    /// Time inside the guest per call.
    pub call_time: Histogram,
    /// Events per batch into the pipe.
    pub batch_size: Histogram,
    /// The pipe's last log lines that went to the host's log.
    pub recent_log: Arc<Recent<GuestLogLine>>,
}

impl Default for StepCounters {
    fn default() -> Self {
        StepCounters {
            calls: AtomicU64::default(),
            skipped: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            retries: AtomicU64::default(),
            restarts: AtomicU64::default(),
            guest_errors: AtomicU64::default(),
            traps: AtomicU64::default(),
            limits: Default::default(),
            guest_nanos: AtomicU64::default(),
            memory_bytes: AtomicU64::default(),
            log_dropped: AtomicU64::default(),
            call_time: Histogram::durations(),
            batch_size: Histogram::sizes(),
            recent_log: Arc::new(Recent::new(RECENT_LOG_LINES)),
        }
    }
}

/// Every limit kind, in the order of [`StepCounters::limits`].
pub const LIMIT_KINDS: [LimitKind; 8] = [
    LimitKind::Time,
    LimitKind::Memory,
    LimitKind::OutputEvents,
    LimitKind::OutputBytes,
    LimitKind::StateKey,
    LimitKind::StateValue,
    LimitKind::StateQuota,
    LimitKind::PendingWrites,
];

impl StepCounters {
    fn count(&self, error: &CallError) {
        let counter = match error {
            CallError::Guest(_) => &self.guest_errors,
            CallError::Trap(_) => &self.traps,
            CallError::Limit { kind, .. } => {
                let index = LIMIT_KINDS.iter().position(|k| k == kind).unwrap_or(0);
                &self.limits[index]
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a pipe does with an event (or a window's batch) it fails on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum OnError {
    /// Stop the pipeline with the error (nothing after the last checkpoint
    /// is committed).
    #[default]
    Fail,
    /// Drop the event, count it and log it.
    Skip,
    /// Send the event to the pipeline's dead-letter sink with the error,
    /// the pipe and the time.
    DeadLetter,
    /// Try again, with exponential backoff and jitter (the one
    /// [`RetryPolicy`](crate::retry::RetryPolicy)), then do `then`.
    Retry {
        /// Tries after the first failure.
        attempts: u32,
        /// Wait before the first retry (plus up to as much again of
        /// jitter), doubled at each next one.
        #[serde(default = "default_backoff_ms")]
        backoff_ms: u64,
        /// What to do once the retries are used up.
        #[serde(default = "default_exhausted")]
        then: Exhausted,
    },
}

/// What `on_error: retry` does after its last retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// Stop the pipeline.
    Fail,
    /// Drop the event and count it.
    Skip,
    /// Send it to the dead-letter sink.
    DeadLetter,
}

fn default_backoff_ms() -> u64 {
    100
}

fn default_exhausted() -> Exhausted {
    Exhausted::DeadLetter
}

impl OnError {
    /// Whether the policy sends events to the dead-letter sink.
    pub fn uses_dead_letter(&self) -> bool {
        matches!(
            self,
            OnError::DeadLetter
                | OnError::Retry {
                    then: Exhausted::DeadLetter,
                    ..
                }
        )
    }
}

/// How to make a WASM pipe: the `.wasm`, its config and its grants.
#[derive(Debug, Clone)]
pub struct WasmPipe {
    pub(crate) name: String,
    pub(crate) module: PathBuf,
    pub(crate) config: serde_json::Value,
    pub(crate) capabilities: Capabilities,
    pub(crate) limits: PipeLimits,
    pub(crate) on_error: OnError,
    pub(crate) watch_module: Option<Duration>,
    pub(crate) packed: bool,
}

impl WasmPipe {
    /// The pipe `name` from the component at `module`, with config `{}`.
    pub fn new(name: impl Into<String>, module: impl Into<PathBuf>) -> Self {
        WasmPipe {
            name: name.into(),
            module: module.into(),
            config: serde_json::Value::Object(Default::default()),
            capabilities: Capabilities::default(),
            limits: PipeLimits::default(),
            on_error: OnError::Fail,
            watch_module: None,
            packed: true,
        }
    }

    /// Whether batches cross as one packed buffer when the component
    /// exports `process-packed` (the default), or always through the
    /// canonical-ABI `process` (for comparisons).
    #[must_use]
    pub fn packed(mut self, packed: bool) -> Self {
        self.packed = packed;
        self
    }

    /// The config object passed to the guest's `init`.
    #[must_use]
    pub fn config(mut self, config: serde_json::Value) -> Self {
        self.config = config;
        self
    }

    /// Grants an optional WASI capability.
    #[must_use]
    pub fn grant(mut self, grant: Grant) -> Self {
        self.capabilities.grants.push(grant);
        self
    }

    /// Passes the host's environment variable `name` to the guest (when set).
    #[must_use]
    pub fn env(mut self, name: impl Into<String>) -> Self {
        self.capabilities.env.push(name.into());
        self
    }

    /// Lets the guest read (never write) the host directory `host` as `guest`.
    #[must_use]
    pub fn read_only_dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.capabilities.read_only_dir = Some(ReadOnlyDir {
            host: host.into(),
            guest: guest.into(),
        });
        self
    }

    /// The pipe's limits (default: [`PipeLimits::default`]).
    #[must_use]
    pub fn limits(mut self, limits: PipeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// What to do with an event the pipe fails on (default: fail).
    #[must_use]
    pub fn on_error(mut self, policy: OnError) -> Self {
        self.on_error = policy;
        self
    }

    /// Swaps the module in whenever its file changes (checked every `every`).
    #[must_use]
    pub fn watch_module(mut self, every: Duration) -> Self {
        self.watch_module = Some(every);
        self
    }

    /// The pipe's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A running WASM pipe with its error policy.
pub struct WasmStep {
    name: String,
    instance: PipeInstance,
    policy: OnError,
    dead_letters: Option<DeadLetters>,
    slot: Option<Arc<PipeSlot>>,
    counters: Arc<StepCounters>,
}

impl WasmStep {
    /// Wraps an instance created by [`crate::runtime::PipeComponent::instantiate`].
    pub fn new(name: impl Into<String>, instance: PipeInstance) -> Self {
        let recent_log = instance.recent_log();
        WasmStep {
            name: name.into(),
            instance,
            policy: OnError::Fail,
            dead_letters: None,
            slot: None,
            counters: Arc::new(StepCounters {
                recent_log,
                ..StepCounters::default()
            }),
        }
    }

    /// Sets the error policy and where dead letters go.
    #[must_use]
    pub fn with_policy(mut self, policy: OnError, dead_letters: Option<DeadLetters>) -> Self {
        self.policy = policy;
        self.dead_letters = dead_letters;
        self
    }

    /// Lets the module be swapped through `slot` at barriers.
    #[must_use]
    pub fn with_slot(mut self, slot: Arc<PipeSlot>) -> Self {
        self.slot = Some(slot);
        self
    }

    fn step_error(&self, error: CallError, unit: &Batch) -> StepError {
        let step = self.name.clone();
        let batch_len = unit.events.len();
        match error {
            CallError::Guest(error) => StepError::Guest {
                step,
                message: error.message,
                retryable: error.retryable,
                event_index: error.event_index,
                batch_len,
            },
            CallError::Trap(message) => StepError::Trap {
                step,
                batch_len,
                first_event: describe(unit.events.first()),
                message,
            },
            CallError::Limit { kind, message } => StepError::Limit {
                step,
                kind,
                batch_len,
                first_event: describe(unit.events.first()),
                message,
            },
        }
    }

    /// One call; after a failure that leaves the instance unusable, a new
    /// instance is created (pending writes of earlier calls are kept).
    async fn call(&mut self, unit: &Batch) -> Result<Result<Vec<Event>, CallError>, StepError> {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let guest_before = self.instance.guest_time();
        let result = self.instance.process(unit).await;
        if let Some(source) = self.instance.take_backend_failure() {
            // Not the batch's fault: nothing it produced goes on, and no
            // error policy applies (a fenced read means a newer process
            // owns the pipeline; dead-lettering would lose the events).
            return Err(StepError::State {
                step: self.name.clone(),
                source,
            });
        }
        let guest_after = self.instance.guest_time();
        self.counters
            .call_time
            .record_duration(guest_after.saturating_sub(guest_before));
        self.counters.guest_nanos.store(
            u64::try_from(guest_after.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.counters
            .memory_bytes
            .fetch_max(self.instance.memory_bytes() as u64, Ordering::Relaxed);
        self.counters
            .log_dropped
            .store(self.instance.log_lines_dropped(), Ordering::Relaxed);
        if let Err(error) = &result {
            self.counters.count(error);
            if error.needs_new_instance() {
                self.counters.restarts.fetch_add(1, Ordering::Relaxed);
                self.instance
                    .recreate()
                    .await
                    .map_err(|source| StepError::Restart {
                        step: self.name.clone(),
                        source,
                    })?;
            }
        }
        Ok(result)
    }

    /// Runs one unit (an event, or a window's whole batch) under the policy,
    /// appending its output to `output`.
    /// `failed` is the unit's first failure when it was already tried.
    async fn run_unit(
        &mut self,
        unit: Batch,
        mut failed: Option<CallError>,
        output: &mut Vec<Event>,
    ) -> Result<(), StepError> {
        let mut retries_done = 0u32;
        let mut delays = None;
        loop {
            let error = match failed.take() {
                Some(error) => error,
                None => match self.call(&unit).await? {
                    Ok(events) => {
                        output.extend(events);
                        return Ok(());
                    }
                    Err(error) => error,
                },
            };
            let final_action = match self.policy {
                OnError::Fail => Exhausted::Fail,
                OnError::Skip => Exhausted::Skip,
                OnError::DeadLetter => Exhausted::DeadLetter,
                OnError::Retry {
                    attempts,
                    backoff_ms,
                    then,
                } => {
                    let retryable = !matches!(&error, CallError::Guest(e) if !e.retryable);
                    let wait = if retryable {
                        delays
                            .get_or_insert_with(|| {
                                RetryPolicy::on_error(attempts, backoff_ms).delays()
                            })
                            .next()
                    } else {
                        None
                    };
                    if let Some(wait) = wait {
                        tracing::debug!(pipe = %self.name, retry = retries_done + 1, ?wait, "retrying a failed event");
                        tokio::time::sleep(wait).await;
                        retries_done += 1;
                        self.counters.retries.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    then
                }
            };
            let error = self.step_error(error, &unit);
            return match final_action {
                Exhausted::Fail => Err(error),
                Exhausted::Skip => {
                    tracing::warn!(pipe = %self.name, events = unit.events.len(), error = %ErrorChain(&error), "skipping events the pipe failed on");
                    self.counters
                        .skipped
                        .fetch_add(unit.events.len() as u64, Ordering::Relaxed);
                    Ok(())
                }
                Exhausted::DeadLetter => self.dead_letter(unit, &error).await,
            };
        }
    }

    /// Runs the events of a source batch whose call failed with `error`,
    /// so that the policy meets only the events the failure belongs to:
    /// the whole batch when the failure is the batch's (a time, memory or
    /// output limit: running its events one by one would cost a limit per
    /// event, e.g. `call_timeout_ms` each), the events around the one a
    /// guest error names run again as batches, and each event alone when
    /// only that can tell which failed (a trap, a state limit, an error
    /// naming no event). Output keeps the events' order.
    async fn run_failed(
        &mut self,
        events: Vec<Event>,
        error: CallError,
        output: &mut Vec<Event>,
    ) -> Result<(), StepError> {
        // Parts still to run, the next one last, with their failure when
        // already tried. Every split makes parts smaller, so this ends.
        let mut parts: Vec<(Vec<Event>, Option<CallError>)> = vec![(events, Some(error))];
        while let Some((events, failed)) = parts.pop() {
            if events.is_empty() {
                continue;
            }
            let part = Batch::new(events);
            let error = match failed {
                Some(error) => error,
                None => match self.call(&part).await? {
                    Ok(produced) => {
                        output.extend(produced);
                        self.instance.recycle(part.events);
                        continue;
                    }
                    Err(error) => error,
                },
            };
            let mut events = part.events;
            if events.len() == 1 {
                self.run_unit(Batch::new(events), Some(error), output)
                    .await?;
                continue;
            }
            match blame(&error, events.len()) {
                Blame::Batch => {
                    self.run_unit(Batch::new(events), Some(error), output)
                        .await?;
                }
                Blame::Event(index) => {
                    let after = events.split_off(index + 1);
                    let named = events.split_off(index);
                    parts.push((after, None));
                    parts.push((named, None));
                    parts.push((events, None));
                }
                Blame::Unknown => {
                    parts.extend(events.into_iter().rev().map(|event| (vec![event], None)));
                }
            }
        }
        Ok(())
    }

    // `&mut self`: a `&WasmStep` is not `Send` (its store is not `Sync`).
    async fn dead_letter(&mut self, unit: Batch, error: &StepError) -> Result<(), StepError> {
        let Some(dead_letters) = &self.dead_letters else {
            return Err(StepError::DeadLetter {
                step: self.name.clone(),
                message: format!(
                    "the pipeline has no dead-letter sink (the failure: {})",
                    ErrorChain(error)
                ),
            });
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let reason = error_reason(error);
        let message = ErrorChain(error).to_string();
        let count = unit.events.len() as u64;
        for event in unit.events {
            dead_letters
                .send_failed(event, &self.name, reason, &message, now_ms)
                .await
                .map_err(|e| StepError::DeadLetter {
                    step: self.name.clone(),
                    message: e.to_string(),
                })?;
        }
        self.counters
            .dead_lettered
            .fetch_add(count, Ordering::Relaxed);
        Ok(())
    }
}

/// Which events of a failed batch a failure belongs to.
enum Blame {
    /// The batch as a whole: a time or memory limit (the batch's work as a
    /// whole ran out of it) or an output limit (the batch's answer).
    Batch,
    /// The event at this index: the guest said so.
    Event(usize),
    /// Some event, which only running them one by one can tell.
    Unknown,
}

fn blame(error: &CallError, batch_len: usize) -> Blame {
    match error {
        CallError::Limit { kind, .. } => match kind {
            LimitKind::Time
            | LimitKind::Memory
            | LimitKind::OutputEvents
            | LimitKind::OutputBytes => Blame::Batch,
            // Events alone write less: running them one by one finds
            // those that are too much on their own.
            LimitKind::StateKey
            | LimitKind::StateValue
            | LimitKind::StateQuota
            | LimitKind::PendingWrites => Blame::Unknown,
        },
        CallError::Guest(error) => match error.event_index.map(usize::try_from) {
            Some(Ok(index)) if index < batch_len => Blame::Event(index),
            _ => Blame::Unknown,
        },
        CallError::Trap(_) => Blame::Unknown,
    }
}

/// The dead-letter reason of a policy failure.
fn error_reason(error: &StepError) -> &'static str {
    match error {
        StepError::Guest { .. } => "error",
        StepError::Trap { .. } => "trap",
        StepError::Limit { kind, .. } => match kind {
            LimitKind::Time => "limit:time",
            LimitKind::Memory => "limit:memory",
            LimitKind::OutputEvents => "limit:output_events",
            LimitKind::OutputBytes => "limit:output_bytes",
            LimitKind::StateKey => "limit:state_key",
            LimitKind::StateValue => "limit:state_value",
            LimitKind::StateQuota => "limit:state_quota",
            LimitKind::PendingWrites => "limit:pending_writes",
        },
        _ => "error",
    }
}

fn describe(event: Option<&Event>) -> String {
    match event {
        None => "none".to_owned(),
        Some(event) => {
            let value = event.value_lossy();
            let shown: String = value.chars().take(64).collect();
            let ellipsis = if shown.len() < value.len() { "…" } else { "" };
            format!("{shown:?}{ellipsis}")
        }
    }
}

#[async_trait]
impl Step for WasmStep {
    fn kind(&self) -> &'static str {
        "wasm"
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        self.counters.batch_size.record(batch.events.len() as u64);
        let error = match self.call(&batch).await? {
            Ok(events) => {
                if !events.is_empty() {
                    out.push(Batch {
                        events,
                        window: batch.window,
                    });
                }
                self.instance.recycle(batch.events);
                return Ok(());
            }
            Err(error) => error,
        };
        if self.policy == OnError::Fail {
            return Err(self.step_error(error, &batch));
        }
        // The failed call was undone. A window's batch is one unit (its
        // pipe aggregates it); a source batch is split only as far as the
        // failure can be pinned on its events.
        let window = batch.window.clone();
        let mut events = Vec::new();
        if window.is_some() {
            self.run_unit(batch, Some(error), &mut events).await?;
        } else {
            self.run_failed(batch.events, error, &mut events).await?;
        }
        if !events.is_empty() {
            out.push(Batch { events, window });
        }
        Ok(())
    }

    fn take_writes(&mut self) -> WriteSet {
        self.instance.state_mut().take_writes()
    }

    fn pending_writes(&mut self) -> PendingWrites {
        self.instance.state_mut().pending()
    }

    async fn at_barrier(&mut self) {
        if let Some(slot) = &self.slot {
            slot.apply(&mut self.instance).await;
        }
    }

    fn counters(&self) -> Option<Arc<StepCounters>> {
        Some(self.counters.clone())
    }
}

type BatchFn = Box<dyn FnMut(Batch) -> Result<Vec<Event>, String> + Send>;

/// A step written in Rust and run in the host.
pub struct NativeStep {
    name: String,
    function: BatchFn,
}

impl NativeStep {
    /// A step that maps every event through `f`.
    pub fn map(
        name: impl Into<String>,
        mut f: impl FnMut(Event) -> Event + Send + 'static,
    ) -> Self {
        NativeStep::batch(name, move |batch| {
            Ok(batch.events.into_iter().map(&mut f).collect())
        })
    }

    /// A step that turns each batch into the events to pass on.
    pub fn batch(
        name: impl Into<String>,
        f: impl FnMut(Batch) -> Result<Vec<Event>, String> + Send + 'static,
    ) -> Self {
        NativeStep {
            name: name.into(),
            function: Box::new(f),
        }
    }
}

#[async_trait]
impl Step for NativeStep {
    fn name(&self) -> &str {
        &self.name
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let window = batch.window.clone();
        let events = (self.function)(batch).map_err(|message| StepError::Native {
            step: self.name.clone(),
            message,
        })?;
        if !events.is_empty() {
            out.push(Batch { events, window });
        }
        Ok(())
    }
}
