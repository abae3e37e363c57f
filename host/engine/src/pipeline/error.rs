//! Why a pipeline could not start or stopped with an error.

use crate::command::CommandError;
use crate::runtime::LoadError;
use crate::state::StateError;
use crate::step::StepError;
use crate::streams::StreamError;
use crate::tenant::QuotaError;

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
    #[error("pipeline `{pipeline}`, pipe `{pipe}`")]
    Load {
        /// The pipeline.
        pipeline: String,
        /// The pipe.
        pipe: String,
        /// Why.
        #[source]
        source: LoadError,
    },
    /// A command step (a WASI command module or a host executable) could
    /// not start.
    #[error("{}", command_context(pipeline, step, source))]
    Command {
        /// The pipeline.
        pipeline: String,
        /// The step, by its name in the pipeline.
        step: String,
        /// Why.
        #[source]
        source: CommandError,
    },
    /// A step failed on a batch.
    #[error("pipeline `{pipeline}`")]
    Step {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: StepError,
    },
    /// The source or the sink failed.
    #[error("pipeline `{pipeline}`")]
    Stream {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: StreamError,
    },
    /// The state backend failed.
    #[error("pipeline `{pipeline}`")]
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
    #[error("pipeline `{pipeline}`")]
    Quota {
        /// The pipeline.
        pipeline: String,
        /// Why.
        #[source]
        source: QuotaError,
    },
}

/// The text of [`PipelineError::Command`] before its source's: the step is
/// named once, here when the command's own error does not name it.
impl PipelineError {
    /// The pipeline error of step `source` failing: a failure of the state
    /// backend under a pipe's call is the backend's ([`PipelineError::State`]),
    /// as it would be at a commit; anything else is the step's.
    pub(crate) fn of_step(pipeline: &str, source: StepError) -> PipelineError {
        match source {
            StepError::State { source, .. } => PipelineError::State {
                pipeline: pipeline.to_owned(),
                source,
            },
            source => PipelineError::Step {
                pipeline: pipeline.to_owned(),
                source,
            },
        }
    }
}

fn command_context(pipeline: &str, step: &str, source: &CommandError) -> String {
    match source {
        CommandError::Module { .. } => format!("pipeline `{pipeline}`, step `{step}`"),
        CommandError::Refused { .. } | CommandError::Spawn { .. } => {
            format!("pipeline `{pipeline}`")
        }
    }
}
