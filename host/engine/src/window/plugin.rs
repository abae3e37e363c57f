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
    /// Its sandbox limits (memory, time per call, ...).
    pub limits: PipeLimits,
}

impl TriggerSpec {
    /// A trigger from `module` with `config` and the default limits.
    pub fn new(module: impl Into<PathBuf>, config: &serde_json::Value) -> Self {
        TriggerSpec {
            module: module.into(),
            config_json: config.to_string(),
            limits: PipeLimits::default(),
        }
    }
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
}

/// Why a trigger call failed, for the window's error.
pub(crate) fn call_failure(error: &CallError) -> String {
    match error {
        CallError::Guest(error) => format!("returned an error: {}", error.message),
        CallError::Trap(message) => format!("trapped: {message}"),
        CallError::Limit { kind, message } => format!("went past its {kind} limit: {message}"),
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
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let pre = runtime.prepare(path, &bytes, &Capabilities::default())?;
        let pre = bindings::TriggerPre::new(pre).map_err(|source| LoadError::WrongWorld {
            path: path.to_path_buf(),
            source: source.context("expected a component of the plumber:pipe trigger world"),
        })?;
        let name = format!("{window}/trigger");
        let settings = InstanceSettings {
            tenant: tenant.into(),
            pipe: name.as_str().into(),
            limits: Arc::new(spec.limits.clone()),
            capabilities: Capabilities::default(),
            config_json: spec.config_json.clone(),
            packed: false,
        };
        // The trigger world imports no state: this view is never written.
        let namespace = Namespace::for_tenant_pipe(tenant, pipeline, &name);
        let state = PipeState::new(shared.clone(), namespace, WriteMode::Checkpointed);
        let log_budget = LogBudget::new(tenant, &name);
        let mut store =
            new_store(runtime, &settings, state, &log_budget).map_err(|failed| failed.0)?;
        begin_call(&mut store);
        let exports =
            pre.instantiate_async(&mut store)
                .await
                .map_err(|source| LoadError::Instantiate {
                    pipe: name.clone(),
                    source,
                })?;
        let options = match exports.call_init(&mut store, &spec.config_json).await {
            Ok(Ok(options)) => options,
            Ok(Err(error)) => {
                return Err(LoadError::Init {
                    pipe: name,
                    message: error.message,
                })
            }
            Err(trap) => {
                return Err(LoadError::Init {
                    pipe: name,
                    message: call_failure(&trap_error(&store, &trap)),
                })
            }
        };
        Ok(TriggerInstance {
            store,
            exports,
            fire_at_end: options.fire_at_end,
            module: path.to_path_buf(),
        })
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
    /// of answers other than the number of calls.
    pub(crate) async fn on_events(
        &mut self,
        calls: &[TriggerCall],
    ) -> Result<Vec<TriggerAnswer>, String> {
        begin_call(&mut self.store);
        let result = self.exports.call_on_events(&mut self.store, calls).await;
        self.answers(result, calls.len())
    }

    /// Tells about the timers of `calls` that came due: one answer each.
    ///
    /// # Errors
    ///
    /// As [`TriggerInstance::on_events`].
    pub(crate) async fn on_timer(
        &mut self,
        calls: &[TimerCall],
    ) -> Result<Vec<TriggerAnswer>, String> {
        begin_call(&mut self.store);
        let result = self.exports.call_on_timer(&mut self.store, calls).await;
        self.answers(result, calls.len())
    }

    fn answers(
        &mut self,
        result: wasmtime::Result<Result<Vec<TriggerAnswer>, crate::PipeError>>,
        asked: usize,
    ) -> Result<Vec<TriggerAnswer>, String> {
        let answers = match result {
            Ok(Ok(answers)) => answers,
            Ok(Err(error)) => return Err(call_failure(&CallError::Guest(error))),
            Err(trap) => return Err(call_failure(&trap_error(&self.store, &trap))),
        };
        if answers.len() != asked {
            return Err(format!(
                "answered {} times for {asked} calls (expected one answer per call)",
                answers.len()
            ));
        }
        Ok(answers)
    }
}
