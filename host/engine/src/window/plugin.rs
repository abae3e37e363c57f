//! Triggers written in a plugin: a component of the `trigger` world
//! (`wit/trigger.wit`) that decides when a window fires. The window keeps
//! its buffers, watermark, lateness, timers and checkpoints; the trigger
//! is asked about each event that joined a window (batched: one call
//! carries at most one event per key, so every summary it sees is exact)
//! and about each timer it asked for, and answers continue, fire or
//! fire-and-purge.
//!
//! The trigger keeps what it needs across calls in a per-window blob the
//! host stores with the window (saved with the window's buffers at every
//! checkpoint), not in its own memory: an instance may be created again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wasmtime::component::InstancePre;
use wasmtime::Store;

use crate::runtime::{
    begin_call, new_store, trap_error, CallError, Capabilities, HostCtx, InstanceSettings,
    LoadError, LogBudget, PipeLimits, Runtime,
};
use crate::state::{Namespace, PipeState, SharedState, WriteMode};

/// Host bindings of the `trigger` world; the types and the log it shares
/// with the pipe worlds are those of [`crate::runtime::bindings`].
mod bindings {
    wasmtime::component::bindgen!({
        world: "trigger",
        path: "../../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "plumber:pipe/types": crate::runtime::bindings::plumber::pipe::types,
            "plumber:pipe/log": crate::runtime::bindings::plumber::pipe::log,
        },
    });
}

pub(crate) use bindings::plumber::pipe::trigger_types::{
    Decision, TimeDomain as WitTimeDomain, TimerCall, TimerRequest, TriggerAnswer, TriggerCall,
    WindowSummary,
};

/// A window's trigger, as configured: the component and what it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerSpec {
    /// The component (`.wasm`) of the `trigger` world.
    pub module: PathBuf,
    /// Passed to the trigger's `init` as JSON text.
    pub config_json: String,
    /// Its sandbox limits (memory, time per call, ...); `max_value_bytes`
    /// also bounds the trigger state a window keeps.
    pub limits: PipeLimits,
    /// What a failed call (an error, a trap, a limit, a malformed answer)
    /// does.
    pub on_error: TriggerOnError,
}

impl TriggerSpec {
    /// A trigger from `module` with `config` and the default limits.
    pub fn new(module: impl Into<PathBuf>, config: &serde_json::Value) -> Self {
        TriggerSpec {
            module: module.into(),
            config_json: config.to_string(),
            limits: PipeLimits::default(),
            on_error: TriggerOnError::Fail,
        }
    }

    /// What a failed call does (default: fail).
    #[must_use]
    pub fn on_error(mut self, policy: TriggerOnError) -> Self {
        self.on_error = policy;
        self
    }
}

/// What a failed trigger call does (`trigger.on_error`). A trigger decides
/// about events that are already in their window, so there is no event to
/// drop or dead-letter: the only choices are to stop, or to go on as if the
/// trigger had answered `continue` (state and timers as they were).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerOnError {
    /// Stop the pipeline with the error (nothing after the last checkpoint
    /// is committed).
    #[default]
    Fail,
    /// Log and count it, and take the failed call's answer as `continue`
    /// with the window's trigger state and timers unchanged.
    Skip,
}

/// What a window keeps for its trigger: the blob of the trigger's last
/// answer and the timers it asked for. Saved with the window.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TriggerSlot {
    pub(crate) state: Option<Vec<u8>>,
    pub(crate) event_timer: Option<u64>,
    pub(crate) processing_timer: Option<u64>,
}

impl TriggerSlot {
    pub(crate) fn is_empty(&self) -> bool {
        self.state.is_none() && self.event_timer.is_none() && self.processing_timer.is_none()
    }
}

/// A live trigger instance.
pub(crate) struct TriggerInstance {
    store: Store<HostCtx>,
    exports: bindings::Trigger,
    /// Whether the window still fires natively at its end.
    pub(crate) fire_at_end: bool,
    module: PathBuf,
    /// What creating the instance again needs (after a trap or a limit).
    maker: Maker,
    /// The most bytes of trigger state one window keeps.
    max_state_bytes: u64,
}

/// Everything an instance is made of, kept to make it again.
struct Maker {
    runtime: Runtime,
    pre: bindings::TriggerPre<HostCtx>,
    settings: InstanceSettings,
    shared: SharedState,
    namespace: Namespace,
    log_budget: Arc<LogBudget>,
}

impl Maker {
    /// A new instance, its `init` called: the store, the exports and
    /// whether the window still fires natively at its end.
    async fn make(&self) -> Result<(Store<HostCtx>, bindings::Trigger, bool), LoadError> {
        let name = &*self.settings.pipe;
        // The trigger world imports no state: this view is never written.
        let state = PipeState::new(
            self.shared.clone(),
            self.namespace.clone(),
            WriteMode::Checkpointed,
        );
        let mut store = new_store(&self.runtime, &self.settings, state, &self.log_budget)
            .map_err(|failed| failed.0)?;
        begin_call(&mut store);
        let exports = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|source| LoadError::Instantiate {
                pipe: name.to_owned(),
                source,
            })?;
        let options = match exports
            .call_init(&mut store, &self.settings.config_json)
            .await
        {
            Ok(Ok(options)) => options,
            Ok(Err(error)) => {
                return Err(LoadError::Init {
                    pipe: name.to_owned(),
                    message: error.message,
                })
            }
            Err(trap) => {
                return Err(LoadError::Init {
                    pipe: name.to_owned(),
                    message: call_failure(&trap_error(&store, &trap)),
                })
            }
        };
        Ok((store, exports, options.fire_at_end))
    }
}

/// A window's guest component (its trigger or its aggregator), as the
/// window names and configures it.
pub(super) struct WindowGuest<'a> {
    /// The component file.
    pub(super) module: &'a Path,
    /// The `plumber:pipe` world it must be a component of.
    pub(super) world: &'static str,
    pub(super) tenant: &'a str,
    /// Its instance's name in logs and errors: `<window>/<role>`.
    pub(super) name: String,
    pub(super) limits: &'a PipeLimits,
    /// Passed to its `init`.
    pub(super) config_json: &'a str,
}

impl WindowGuest<'_> {
    /// Loads the component like a pipe (the compile cache, the import
    /// check), as a component of the world `typed` binds, with the settings
    /// of its instances: its limits and config, and nothing granted beyond
    /// what every pipe has.
    ///
    /// # Errors
    ///
    /// The module cannot be read, is not a component, imports what it is
    /// not granted, or is not a component of `self.world`.
    pub(super) fn load<P>(
        self,
        runtime: &Runtime,
        typed: impl FnOnce(InstancePre<HostCtx>) -> wasmtime::Result<P>,
    ) -> Result<(P, InstanceSettings), LoadError> {
        let path = self.module;
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let pre = runtime.prepare(path, &bytes, &Capabilities::default())?;
        let pre = typed(pre).map_err(|source| LoadError::WrongWorld {
            path: path.to_path_buf(),
            source: source.context(format!(
                "expected a component of the plumber:pipe {} world",
                self.world
            )),
        })?;
        let settings = InstanceSettings {
            tenant: self.tenant.into(),
            pipe: self.name.as_str().into(),
            limits: Arc::new(self.limits.clone()),
            capabilities: Capabilities::default(),
            config_json: self.config_json.to_owned(),
            packed: false,
        };
        Ok((pre, settings))
    }
}

/// Why a trigger call failed, for the window's error.
pub(crate) fn call_failure(error: &CallError) -> String {
    match error {
        CallError::Guest(error) => format!("returned an error: {}", error.message),
        CallError::Trap(message) => format!("trapped: {message}"),
        CallError::Limit { kind, message } => format!("went past its {kind} limit: {message}"),
    }
}

/// A failed trigger call.
#[derive(Debug)]
pub(crate) struct TriggerFailure {
    /// What went wrong.
    pub(crate) message: String,
    /// No error policy applies: the instance could not be created again.
    pub(crate) fatal: bool,
}

impl TriggerFailure {
    /// A failure the window's `on_error` decides about.
    pub(crate) fn new(message: String) -> Self {
        TriggerFailure {
            message,
            fatal: false,
        }
    }
}

impl TriggerInstance {
    /// Loads, checks and starts the trigger of window `window`, and calls
    /// its `init`. The component is loaded like a pipe (the compile cache,
    /// the import check, the sandbox limits); it is granted nothing beyond
    /// what every pipe has.
    ///
    /// # Errors
    ///
    /// The module cannot be read or is not a `trigger` component, or its
    /// `init` refused the config, trapped or went past a limit.
    pub(crate) async fn start(
        runtime: &Runtime,
        spec: &TriggerSpec,
        tenant: &str,
        pipeline: &str,
        window: &str,
        shared: &SharedState,
    ) -> Result<Self, LoadError> {
        let path = spec.module.as_path();
        let guest = WindowGuest {
            module: path,
            world: "trigger",
            tenant,
            name: format!("{window}/trigger"),
            limits: &spec.limits,
            config_json: &spec.config_json,
        };
        let (pre, settings) = guest.load(runtime, bindings::TriggerPre::new)?;
        let name = settings.pipe.to_string();
        let maker = Maker {
            runtime: runtime.clone(),
            pre,
            settings,
            shared: shared.clone(),
            namespace: Namespace::for_tenant_pipe(tenant, pipeline, &name),
            log_budget: LogBudget::new(tenant, &name),
        };
        let (store, exports, fire_at_end) = maker.make().await?;
        Ok(TriggerInstance {
            store,
            exports,
            fire_at_end,
            module: path.to_path_buf(),
            maker,
            max_state_bytes: spec.limits.max_value_bytes,
        })
    }

    /// The most bytes of trigger state a window keeps (the trigger's
    /// `limits.max_value_bytes`).
    pub(crate) fn max_state_bytes(&self) -> u64 {
        self.max_state_bytes
    }

    /// The module's path, for errors.
    pub(crate) fn module(&self) -> &Path {
        &self.module
    }

    /// Asks about `calls`: one answer each, in order.
    ///
    /// # Errors
    ///
    /// The trigger failed, trapped, went past a limit, or answered a number
    /// of answers other than the number of calls. After a trap or a limit
    /// the instance is created again (its state lives in the windows, so
    /// the new one is equivalent); when that fails, the failure is fatal.
    pub(crate) async fn on_events(
        &mut self,
        calls: &[TriggerCall],
    ) -> Result<Vec<TriggerAnswer>, TriggerFailure> {
        begin_call(&mut self.store);
        let result = self.exports.call_on_events(&mut self.store, calls).await;
        self.answers(result, calls.len()).await
    }

    /// Tells about the timers of `calls` that came due: one answer each.
    ///
    /// # Errors
    ///
    /// As [`TriggerInstance::on_events`].
    pub(crate) async fn on_timer(
        &mut self,
        calls: &[TimerCall],
    ) -> Result<Vec<TriggerAnswer>, TriggerFailure> {
        begin_call(&mut self.store);
        let result = self.exports.call_on_timer(&mut self.store, calls).await;
        self.answers(result, calls.len()).await
    }

    async fn answers(
        &mut self,
        result: wasmtime::Result<Result<Vec<TriggerAnswer>, crate::PipeError>>,
        asked: usize,
    ) -> Result<Vec<TriggerAnswer>, TriggerFailure> {
        let error = match result {
            Ok(Ok(answers)) if answers.len() == asked => return Ok(answers),
            Ok(Ok(answers)) => {
                return Err(TriggerFailure::new(format!(
                    "answered {} times for {asked} calls (expected one answer per call)",
                    answers.len()
                )))
            }
            Ok(Err(error)) => CallError::Guest(error),
            Err(trap) => trap_error(&self.store, &trap),
        };
        let mut failure = TriggerFailure::new(call_failure(&error));
        if error.needs_new_instance() {
            if let Err(source) = self.recreate().await {
                failure.message = format!(
                    "{}, and could not be created again: {}",
                    failure.message,
                    crate::ErrorChain(&source)
                );
                failure.fatal = true;
            }
        }
        Err(failure)
    }

    /// A fresh instance in place of one a trap or a limit left unusable.
    async fn recreate(&mut self) -> Result<(), LoadError> {
        let (store, exports, fire_at_end) = self.maker.make().await?;
        if fire_at_end != self.fire_at_end {
            return Err(LoadError::Init {
                pipe: self.maker.settings.pipe.to_string(),
                message: "its init answered another fire-at-end than at start".to_owned(),
            });
        }
        self.store = store;
        self.exports = exports;
        tracing::info!(trigger = %self.maker.settings.pipe, "trigger instance created again after a failure");
        Ok(())
    }
}
