//! Aggregators written in a plugin: a component of the `aggregator` world
//! (`wit/aggregate.wit`) that folds a window's events into an accumulator
//! as they come (`add`), combines accumulators (`merge`: a sliding window's
//! panes, merged sessions) and turns a window's accumulator into the
//! events it releases (`emit`). The window keeps one accumulator per key
//! and window (per key and pane for sliding windows) instead of the
//! events; the accumulators are bytes the aggregator owns, saved with the
//! window at every checkpoint.
//!
//! Every call is batched: one `add` crossing per input batch (more only
//! when a window fires within the batch), one `merge` and one `emit` per
//! group of windows that fire together.

use std::path::{Path, PathBuf};

use wasmtime::Store;

use crate::runtime::{
    begin_call, new_store, trap_error, CallError, HostCtx, LoadError, LogBudget, PipeLimits,
    Runtime,
};
use crate::state::{Namespace, PipeState, SharedState, WriteMode};
use crate::Event;

use super::plugin::{call_failure, WindowGuest};

/// Host bindings of the `aggregator` world; the types and the log it
/// shares with the pipe worlds are those of [`crate::runtime::bindings`].
mod bindings {
    wasmtime::component::bindgen!({
        world: "aggregator",
        path: "../../wit",
        imports: { default: async },
        exports: { default: async },
        with: {
            "plumber:pipe/types": crate::runtime::bindings::plumber::pipe::types,
            "plumber:pipe/log": crate::runtime::bindings::plumber::pipe::log,
        },
    });
}

pub(crate) use bindings::plumber::pipe::aggregate_types::{
    AddCall, EmitCall, MergeCall, WindowBounds,
};

/// A window's aggregator, as configured: the component and what it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateSpec {
    /// The component (`.wasm`) of the `aggregator` world.
    pub module: PathBuf,
    /// Passed to the aggregator's `init` as JSON text.
    pub config_json: String,
    /// Its sandbox limits (memory, time per call, ...).
    pub limits: PipeLimits,
}

impl AggregateSpec {
    /// An aggregator from `module` with `config` and the default limits.
    pub fn new(module: impl Into<PathBuf>, config: &serde_json::Value) -> Self {
        AggregateSpec {
            module: module.into(),
            config_json: config.to_string(),
            limits: PipeLimits::default(),
        }
    }
}

/// How a window holds an accumulator among its buffers: as one event whose
/// value is the accumulator's bytes and whose timestamp counts the events
/// folded into it (a count window needs the count). A window's buffer so
/// holds one such event, or several partial ones after sessions merged
/// (combined, in order, before the next `add` or `emit`), and is saved in
/// the format buffers always had.
pub(crate) fn accumulator_event(bytes: Vec<u8>, events: u64) -> Event {
    Event {
        key: None,
        value: bytes,
        timestamp: Some(events),
        headers: Vec::new(),
    }
}

/// The events folded into the accumulator event `event`.
pub(crate) fn folded(event: &Event) -> u64 {
    event.timestamp.unwrap_or(0)
}

/// A live aggregator instance.
pub(crate) struct AggregateInstance {
    store: Store<HostCtx>,
    exports: bindings::Aggregator,
    module: PathBuf,
}

impl AggregateInstance {
    /// Loads, checks and starts the aggregator of window `window`, and
    /// calls its `init`. Loaded like a pipe (the compile cache, the import
    /// check, the sandbox limits) and granted nothing beyond what every
    /// pipe has.
    ///
    /// # Errors
    ///
    /// The module cannot be read or is not an `aggregator` component, or
    /// its `init` refused the config, trapped or went past a limit.
    pub(crate) async fn start(
        runtime: &Runtime,
        spec: &AggregateSpec,
        tenant: &str,
        pipeline: &str,
        window: &str,
        shared: &SharedState,
    ) -> Result<Self, LoadError> {
        let path = spec.module.as_path();
        let guest = WindowGuest {
            module: path,
            world: "aggregator",
            tenant,
            name: format!("{window}/aggregate"),
            limits: &spec.limits,
            config_json: &spec.config_json,
        };
        let (pre, settings) = guest.load(runtime, bindings::AggregatorPre::new)?;
        let name = settings.pipe.to_string();
        // The aggregator world imports no state: this view is never written.
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
        match exports.call_init(&mut store, &spec.config_json).await {
            Ok(Ok(())) => {}
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
        }
        Ok(AggregateInstance {
            store,
            exports,
            module: path.to_path_buf(),
        })
    }

    /// The module's path, for errors.
    pub(crate) fn module(&self) -> &Path {
        &self.module
    }

    /// Folds events into accumulators: one new accumulator per call, in order.
    ///
    /// # Errors
    ///
    /// The aggregator failed, trapped, went past a limit, or answered a
    /// number of accumulators other than the number of calls.
    pub(crate) async fn add(&mut self, calls: &[AddCall]) -> Result<Vec<Vec<u8>>, String> {
        begin_call(&mut self.store);
        let result = self.exports.call_add(&mut self.store, calls).await;
        self.answers(result, calls.len())
    }

    /// Combines accumulators: one per call, in order.
    ///
    /// # Errors
    ///
    /// As [`AggregateInstance::add`].
    pub(crate) async fn merge(&mut self, calls: &[MergeCall]) -> Result<Vec<Vec<u8>>, String> {
        begin_call(&mut self.store);
        let result = self.exports.call_merge(&mut self.store, calls).await;
        self.answers(result, calls.len())
    }

    /// What fired windows release: one list of events per call, in order.
    ///
    /// # Errors
    ///
    /// As [`AggregateInstance::add`].
    pub(crate) async fn emit(&mut self, calls: &[EmitCall]) -> Result<Vec<Vec<Event>>, String> {
        begin_call(&mut self.store);
        let result = self.exports.call_emit(&mut self.store, calls).await;
        self.answers(result, calls.len())
    }

    fn answers<T>(
        &mut self,
        result: wasmtime::Result<Result<Vec<T>, crate::PipeError>>,
        asked: usize,
    ) -> Result<Vec<T>, String> {
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
