//! Pipelines: the fluent builder and the engine that runs it.
//!
//! ```no_run
//! # async fn example() -> Result<(), plumber_engine::pipeline::PipelineError> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use plumber_engine::checkpoint::CheckpointPolicy;
//! use plumber_engine::pipeline::Pipeline;
//! use plumber_engine::state::MemoryState;
//! use plumber_engine::step::WasmPipe;
//! use plumber_engine::streams::{ArraySource, StdoutSink};
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
//!
//! The engine's parts, one file each: `builder` (the fluent
//! [`PipelineBuilder`] and a run from start to [`RunReport`]), `status`
//! ([`LiveStatus`]), `handle` ([`PipelineHandle`]), `stage` (a step's task
//! and the sink's, and the messages between stages), `driver` (the source
//! driver: reading, barriers, commits), `instantiate` (one build per kind
//! of [`StepSpec`]), `outbox` (publishing after the commit, [`Publish`])
//! and `error` ([`PipelineError`]).

mod builder;
mod driver;
mod error;
mod graph;
mod graph_run;
mod handle;
mod instantiate;
mod outbox;
mod route;
mod stage;
mod status;
mod task;
#[cfg(test)]
mod tests;

pub use builder::{Pipeline, PipelineBuilder, RunReport};
pub use error::PipelineError;
pub use graph::{GraphError, GraphPlace, GraphShape, GraphStepShape, INPUT_HEADER};
pub use handle::{HandleError, PipelineHandle};
pub use instantiate::{CommandPipe, ExecPipe, StepSpec};
pub use outbox::Publish;
pub use route::{RoutePredicate, Router};
pub use status::{CheckpointEntry, LiveStatus, Phase, StageStats, CHECKPOINT_HISTORY};
