//! What the console shows, as the engine reports it: the JSON of
//! `GET /console/api/…` and the data the server-rendered pages are made of.

use plumber_engine::dead_letter::DeadLetterEntry;
use plumber_engine::pipeline::CheckpointEntry;
use plumber_engine::swap::SwapEntry;

use crate::admin::PipelineStatus;

/// One pipeline on the overview.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipelineLive {
    /// The pipeline's name.
    pub name: String,
    /// The tenant it runs for.
    pub tenant: String,
    /// `"starting"`, `"running"`, `"stopped"` or `"failed"`.
    pub state: String,
    /// Milliseconds since it was started in this process, if known.
    pub uptime_ms: Option<u64>,
    /// Events read from the source.
    pub events_in: u64,
    /// Events written to the sink.
    pub events_out: u64,
    /// What the source says is still waiting (messages or bytes), if it
    /// says.
    pub lag: Option<i64>,
    /// Epoch of the last committed checkpoint, if any.
    pub last_checkpoint_epoch: Option<u64>,
    /// Milliseconds since the last committed checkpoint, if any.
    pub last_checkpoint_age_ms: Option<u64>,
    /// How long the last checkpoint held the source back, microseconds.
    pub last_checkpoint_micros: Option<u64>,
    /// Failed calls into its pipes (guest errors, traps, limits).
    pub errors: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Events in per second over the last minutes, oldest first: one
    /// figure per sample the server took (every 2 s), for the sparkline a
    /// page draws from its first paint on. Empty where nothing samples.
    #[serde(default)]
    pub rates_in: Vec<u64>,
}

impl PipelineLive {
    /// What the admin API's status says, where nothing more is known.
    #[must_use]
    pub fn from_status(status: &PipelineStatus) -> PipelineLive {
        PipelineLive {
            name: status.name.clone(),
            tenant: status.tenant.clone(),
            state: status.state.clone(),
            uptime_ms: None,
            events_in: status.events_in,
            events_out: status.events_out,
            lag: None,
            last_checkpoint_epoch: status.last_checkpoint_epoch,
            last_checkpoint_age_ms: status.last_checkpoint_age_ms,
            last_checkpoint_micros: None,
            errors: 0,
            error: status.error.clone(),
            rates_in: Vec::new(),
        }
    }
}

/// The overview: every pipeline, and when it was read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Overview {
    /// When the counters were read, milliseconds since the Unix epoch
    /// (rates are differences over this clock).
    pub at_ms: u64,
    /// Every pipeline, in the order they were started.
    pub pipelines: Vec<PipelineLive>,
}

/// One stage of a pipeline (a step: WASM pipe, window, join, …).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StageView {
    /// The step's name.
    pub name: String,
    /// Its kind: `wasm`, `window`, `join`, `lookup`, `route`, `command`,
    /// `exec`, or `native` (a Rust step of the embedding host).
    pub kind: String,
    /// The outputs it reads, in a graph (its `from`); empty in a line,
    /// where it reads the stage before it.
    pub inputs: Vec<String>,
    /// Events in.
    pub events_in: u64,
    /// Events out.
    pub events_out: u64,
    /// Events held in its buffers (a window's; sampled at checkpoints).
    pub buffered: u64,
    /// Failed calls into the pipe (WASM pipes).
    pub errors: u64,
    /// Events sent to the dead-letter sink by `on_error` (WASM pipes).
    pub dead_lettered: u64,
    /// Guest log lines dropped for going past the log rate (WASM pipes).
    pub log_dropped: u64,
}

/// One WASM pipe, its module and its swap history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipeView {
    /// The pipe's name.
    pub name: String,
    /// Where its module was loaded from (`<upload>` for an upload).
    pub module: String,
    /// The module's version.
    pub version: String,
    /// Its recent swap attempts, oldest first.
    pub swaps: Vec<SwapEntry>,
}

/// Everything the pipeline page shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipelineDetail {
    /// What the overview shows of it.
    #[serde(flatten)]
    pub live: PipelineLive,
    /// Its stages, source to sink.
    pub stages: Vec<StageView>,
    /// Its recent committed checkpoints, oldest first.
    pub checkpoints: Vec<CheckpointEntry>,
    /// Its WASM pipes.
    pub pipes: Vec<PipeView>,
    /// The last events written to its dead-letter sink, oldest first
    /// (shortened; the headers say why, where and when).
    pub dead_letters: Vec<DeadLetterEntry>,
    /// Its pipes' last log lines, oldest first.
    pub log: Vec<LogLineView>,
}

/// A line a pipe wrote to the host's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogLineView {
    /// The step (pipe) that wrote it.
    pub step: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// A `log` call's level (`"info"`, `"warn"`, …) or the stream
    /// (`"stdout"`, `"stderr"`).
    pub source: String,
    /// The line, its first 512 bytes.
    pub text: String,
}

/// One tenant: its quotas and what it uses.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TenantView {
    /// The tenant's name.
    pub tenant: String,
    /// Pipelines running now.
    pub pipelines: u64,
    /// Its pipeline quota, if any.
    pub max_pipelines: Option<u64>,
    /// Bytes of state charged now (measured when it has a state quota).
    pub state_bytes: i64,
    /// Its state quota, if any.
    pub max_state_bytes: Option<u64>,
    /// Events read by its pipelines.
    pub events_in: u64,
    /// Events written by its pipelines.
    pub events_out: u64,
    /// Failed calls into its pipes.
    pub errors: u64,
}

/// A pipeline asked to stop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StopRequested {
    /// The pipeline.
    pub pipeline: String,
    /// Its state when asked (it drains: a final checkpoint, then it
    /// stops).
    pub state: String,
}
