//! Steps: what a pipeline runs between its source and its sink.
//!
//! A [`Step`] takes a batch and pushes the batches it produces. WASM pipes
//! ([`WasmStep`]) are the user's logic; [`NativeStep`] runs a Rust closure
//! in the same place (library use, and the baseline of `plumber bench`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::runtime::{CallError, Grant, PipeInstance};
use crate::state::WriteSet;
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

    /// Hands over the state writes made since the last checkpoint.
    fn take_writes(&mut self) -> WriteSet {
        WriteSet::new()
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
}

/// How to make a WASM pipe: the `.wasm`, its config and its grants.
#[derive(Debug, Clone)]
pub struct WasmPipe {
    pub(crate) name: String,
    pub(crate) module: PathBuf,
    pub(crate) config: serde_json::Value,
    pub(crate) grants: Vec<Grant>,
}

impl WasmPipe {
    /// The pipe `name` from the component at `module`, with config `{}`.
    pub fn new(name: impl Into<String>, module: impl Into<PathBuf>) -> Self {
        WasmPipe {
            name: name.into(),
            module: module.into(),
            config: serde_json::Value::Object(Default::default()),
            grants: Vec::new(),
        }
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
        self.grants.push(grant);
        self
    }
}

/// A running WASM pipe.
pub struct WasmStep {
    name: String,
    instance: PipeInstance,
}

impl WasmStep {
    /// Wraps an instance created by [`crate::runtime::PipeComponent::instantiate`].
    pub fn new(name: impl Into<String>, instance: PipeInstance) -> Self {
        WasmStep {
            name: name.into(),
            instance,
        }
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
    fn name(&self) -> &str {
        &self.name
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        match self.instance.process(&batch).await {
            Ok(events) => {
                if !events.is_empty() {
                    out.push(Batch {
                        events,
                        window: batch.window,
                    });
                }
                Ok(())
            }
            Err(CallError::Guest(error)) => Err(StepError::Guest {
                step: self.name.clone(),
                message: error.message,
                retryable: error.retryable,
                event_index: error.event_index,
                batch_len: batch.events.len(),
            }),
            Err(CallError::Trap(message)) => Err(StepError::Trap {
                step: self.name.clone(),
                batch_len: batch.events.len(),
                first_event: describe(batch.events.first()),
                message,
            }),
        }
    }

    fn take_writes(&mut self) -> WriteSet {
        self.instance.state_mut().take_writes()
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
