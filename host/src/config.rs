//! The JSON config of the `plumber` binary.
//!
//! ```json
//! {
//!   "name": "names",
//!   "state": { "type": "sled", "path": "names.state" },
//!   "checkpoint": { "interval_ms": 1000 },
//!   "from": { "type": "array", "values": ["Ada", "Bob", "ada"] },
//!   "pipeline": [
//!     { "name": "upper", "type": "wasm", "module": "upper.wasm" },
//!     { "name": "count", "type": "wasm", "module": "count.wasm", "config": { "separator": ": " } }
//!   ],
//!   "to": { "type": "stdout" }
//! }
//! ```
//!
//! Relative paths are relative to the config file's directory. Every error
//! names the JSON path of the field at fault and what was expected there.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::{CheckpointPolicy, Delivery};
use crate::pipeline::{Pipeline, PipelineBuilder};
use crate::runtime::{Capabilities, Grant, PipeLimits, ReadOnlyDir};
use crate::state::{MemoryState, RedisOptions, RedisState, SharedState, SledState, StateError};
use crate::step::OnError;
use crate::step::WasmPipe;
use crate::streams::http::{HttpSink, HttpSource};
use crate::streams::nats::{
    JetStreamConsumerOptions, JetStreamSink, JetStreamSource, NatsSink, NatsSource,
};
use crate::streams::sql::{ColumnSource, SqlSink, SqlSinkMode, SqlSource};
use crate::streams::{
    ArraySource, DiscardSink, FileSink, FileSource, LineFormat, Sink, Source, StdoutSink,
    StreamError,
};
use crate::window::{EventTime, LatePolicy, Overflow, Window, WindowKind, WindowSpecError};

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{file}`: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A field is missing, has the wrong type, or has a bad value.
    #[error("{file}: at `{path}`: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// The JSON path of the field, e.g. `pipeline[1].module`.
        path: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

/// A whole pipeline config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// The pipeline's name: it keys its checkpoints and state.
    pub name: String,
    /// The tenant it belongs to (default `default`): the first part of its
    /// state keys and checkpoint records.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The state backend (default: sled in `<name>.state` beside the config).
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// When to checkpoint (default: every 1000 ms, and at the end).
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// `at_most_once`, `at_least_once` or `exactly_once` (default).
    #[serde(default)]
    pub delivery: Delivery,
    /// The most events in one batch (default 1024).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The source.
    pub from: SourceConfig,
    /// The steps, in order.
    #[serde(default)]
    pub pipeline: Vec<StepConfig>,
    /// The sink.
    pub to: SinkConfig,
    /// Where events that cannot go on are sent (late window events with
    /// `"late": "dead_letter"`), with headers saying why.
    #[serde(default)]
    pub dead_letter: Option<SinkConfig>,
}

fn file_sink(path: &Path, rotate_bytes: Option<u64>) -> FileSink {
    let sink = FileSink::new(path);
    match rotate_bytes {
        Some(bytes) => sink.rotate_at(bytes),
        None => sink,
    }
}

impl SinkConfig {
    /// Opens the sink (connecting where it has to); `pipeline` names its output.
    ///
    /// # Errors
    ///
    /// A connection failed.
    pub async fn open(&self, pipeline: &str) -> Result<Box<dyn Sink>, StreamError> {
        Ok(match self {
            SinkConfig::Stdout {} => Box::new(StdoutSink::new()),
            SinkConfig::File { path, rotate_bytes } => Box::new(file_sink(path, *rotate_bytes)),
            SinkConfig::Discard {} => Box::new(DiscardSink::new()),
            SinkConfig::Http {
                url,
                timeout_ms,
                max_retries,
                max_buffered,
            } => {
                let mut sink = HttpSink::new(url);
                if let Some(ms) = timeout_ms {
                    sink = sink.timeout(Duration::from_millis(*ms));
                }
                if let Some(retries) = max_retries {
                    sink = sink.max_retries(*retries);
                }
                if let Some(events) = max_buffered {
                    sink = sink.max_buffered(*events);
                }
                Box::new(sink)
            }
            SinkConfig::Nats {
                url,
                subject,
                subject_from_header,
                reconnect_timeout_ms,
            } => {
                let mut sink = NatsSink::connect(url, subject).await?;
                if let Some(header) = subject_from_header {
                    sink = sink.subject_from_header(header);
                }
                if let Some(ms) = reconnect_timeout_ms {
                    sink = sink.reconnect_timeout(Duration::from_millis(*ms));
                }
                Box::new(sink)
            }
            SinkConfig::Sql {
                url,
                table,
                mode,
                key_columns,
                columns,
                epoch_column,
                reconnect_timeout_ms,
            } => {
                let mode = match mode {
                    SqlModeConfig::Insert => SqlSinkMode::Insert,
                    SqlModeConfig::Upsert => SqlSinkMode::Upsert {
                        key_columns: key_columns.clone(),
                    },
                };
                let upsert = matches!(mode, SqlSinkMode::Upsert { .. });
                let mut sink = SqlSink::connect(url, table, mode).await?;
                if let Some(columns) = columns {
                    sink = sink.mapping(columns.clone().into_iter().collect())?;
                }
                // An upsert is idempotent by key and takes no epoch column.
                sink = sink.epoch_column(if upsert { None } else { epoch_column.clone() })?;
                if let Some(ms) = reconnect_timeout_ms {
                    sink = sink.reconnect_timeout(Duration::from_millis(*ms));
                }
                Box::new(sink)
            }
            SinkConfig::Jetstream {
                url,
                subject,
                reconnect_timeout_ms,
            } => {
                let mut sink = JetStreamSink::connect(url, subject, pipeline).await?;
                if let Some(ms) = reconnect_timeout_ms {
                    sink = sink.reconnect_timeout(Duration::from_millis(*ms));
                }
                Box::new(sink)
            }
        })
    }
}

impl SourceConfig {
    /// Opens the source (binding or connecting where it has to).
    ///
    /// # Errors
    ///
    /// A bind or connection failed.
    pub async fn open(&self) -> Result<Box<dyn Source>, StreamError> {
        Ok(match self {
            SourceConfig::Array { values } => Box::new(ArraySource::from_strings(values.clone())),
            SourceConfig::File {
                path,
                format,
                follow_ms,
            } => {
                let mut source = FileSource::new(path).format(*format);
                if let Some(ms) = follow_ms {
                    source = source.follow(Duration::from_millis((*ms).max(1)));
                }
                Box::new(source)
            }
            SourceConfig::Http {
                listen,
                path,
                capacity,
                max_batch,
            } => {
                let mut source = HttpSource::bind(*listen, path, capacity.unwrap_or(64)).await?;
                if let Some(events) = max_batch {
                    source = source.max_batch(*events);
                }
                Box::new(source)
            }
            SourceConfig::Sql {
                url,
                table,
                position_column,
                value_column,
                key_column,
                poll_interval_ms,
                reconnect_timeout_ms,
            } => {
                let mut source = SqlSource::connect(
                    url,
                    table,
                    position_column,
                    value_column,
                    key_column.clone(),
                    Duration::from_millis(poll_interval_ms.unwrap_or(1000).max(1)),
                )
                .await?;
                if let Some(ms) = reconnect_timeout_ms {
                    source = source.reconnect_timeout(Duration::from_millis(*ms));
                }
                Box::new(source)
            }
            SourceConfig::Nats {
                url,
                subject,
                queue_group,
            } => Box::new(NatsSource::connect(url, subject, queue_group.clone()).await?),
            SourceConfig::Jetstream {
                url,
                stream,
                consumer,
                filter_subject,
                ack_wait_ms,
                max_ack_pending,
                reconnect_timeout_ms,
            } => {
                let mut options = JetStreamConsumerOptions::default();
                if let Some(ms) = ack_wait_ms {
                    options.ack_wait = Duration::from_millis(*ms);
                }
                if let Some(max) = max_ack_pending {
                    options.max_ack_pending = *max;
                }
                let mut source = JetStreamSource::connect_with(
                    url,
                    stream,
                    consumer,
                    filter_subject.clone(),
                    options,
                )
                .await?;
                if let Some(ms) = reconnect_timeout_ms {
                    source = source.reconnect_timeout(Duration::from_millis(*ms));
                }
                Box::new(source)
            }
        })
    }
}

fn default_batch_size() -> usize {
    1024
}

/// `"state"`: where pipe state and checkpoints live.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StateConfig {
    /// In the process's memory; durable only with `snapshot`: each
    /// checkpoint then writes the whole map to that file (atomically replaced).
    #[serde(rename = "memory")]
    Memory {
        /// The snapshot file.
        #[serde(default)]
        snapshot: Option<PathBuf>,
    },
    /// An embedded sled database directory.
    Sled {
        /// The directory.
        path: PathBuf,
    },
    /// A Redis server.
    Redis {
        /// e.g. `redis://127.0.0.1:6379/`.
        url: String,
        /// Put in front of every key (default `plumber:`).
        #[serde(default)]
        key_prefix: Option<String>,
        /// How long to keep retrying a lost connection before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
}

/// `"checkpoint"`: checkpoint strategies (several may be set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Checkpoint every this many milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: Option<u64>,
    /// Checkpoint every this many source events.
    #[serde(default)]
    pub every_events: Option<u64>,
    /// Checkpoint whenever a window releases.
    #[serde(default)]
    pub on_window_close: bool,
    /// Checkpoint when the process receives SIGUSR2 (`plumber run` only).
    #[serde(default)]
    pub on_signal: bool,
    /// Force a checkpoint once a pipe holds this many keys written since
    /// the last one (`null`: no bound).
    #[serde(default = "default_max_pending_keys")]
    pub max_pending_keys: Option<u64>,
    /// Force a checkpoint once a pipe holds this many bytes of keys and
    /// values written since the last one (`null`: no bound).
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: Option<u64>,
}

fn default_interval_ms() -> Option<u64> {
    Some(1000)
}

fn default_max_pending_keys() -> Option<u64> {
    Some(crate::checkpoint::DEFAULT_MAX_PENDING_KEYS)
}

fn default_max_pending_bytes() -> Option<u64> {
    Some(crate::checkpoint::DEFAULT_MAX_PENDING_BYTES)
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: default_interval_ms(),
            every_events: None,
            on_window_close: false,
            on_signal: false,
            max_pending_keys: default_max_pending_keys(),
            max_pending_bytes: default_max_pending_bytes(),
        }
    }
}

/// `"from"`: the source.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SourceConfig {
    /// Fixed values, one event each.
    Array {
        /// The events' values.
        values: Vec<String>,
    },
    /// A newline-delimited file.
    File {
        /// The file.
        path: PathBuf,
        /// `lines` (default: each line is a value) or `json` (each line an
        /// event object: `value`, and optionally `key`, `timestamp`, `headers`).
        #[serde(default)]
        format: LineFormat,
        /// Follow the file as it grows and across rotations, polling every
        /// this many ms (the source then never ends).
        #[serde(default)]
        follow_ms: Option<u64>,
    },
    /// An HTTP endpoint that accepts POSTed events (answered 202 once committed).
    Http {
        /// Address to listen on, e.g. `127.0.0.1:8080`.
        listen: std::net::SocketAddr,
        /// The path events are POSTed to (default `/events`).
        #[serde(default = "default_http_path")]
        path: String,
        /// Requests that may wait for the pipeline before it answers 503 (default 64).
        #[serde(default)]
        capacity: Option<usize>,
        /// Most events in one request (429 past it).
        #[serde(default)]
        max_batch: Option<usize>,
    },
    /// Rows of an SQL table (SQLite or PostgreSQL), read incrementally by a
    /// monotonic integer column (the position).
    Sql {
        /// `sqlite://file.db` or `postgres://user@host/db`.
        url: String,
        /// The table.
        table: String,
        /// The monotonic integer column.
        position_column: String,
        /// The column that becomes the event's value.
        value_column: String,
        /// The column that becomes the event's key.
        #[serde(default)]
        key_column: Option<String>,
        /// How often to look for new rows (default 1000).
        #[serde(default)]
        poll_interval_ms: Option<u64>,
        /// How long to keep retrying a lost database before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
    /// Core NATS: what is published while the pipeline runs (at-most-once).
    Nats {
        /// Server URL (default `nats://127.0.0.1:4222`).
        #[serde(default = "default_nats_url")]
        url: String,
        /// Subject (wildcards allowed).
        subject: String,
        /// Queue group, to share the subject between workers.
        #[serde(default)]
        queue_group: Option<String>,
    },
    /// A JetStream durable pull consumer; messages are acked once a
    /// checkpoint covers them, and the position is the stream sequence.
    Jetstream {
        /// Server URL (default `nats://127.0.0.1:4222`).
        #[serde(default = "default_nats_url")]
        url: String,
        /// The stream.
        stream: String,
        /// The durable consumer (created if missing).
        consumer: String,
        /// Only this subject of the stream.
        #[serde(default)]
        filter_subject: Option<String>,
        /// Redelivery wait for unacked messages (default 30 000).
        #[serde(default)]
        ack_wait_ms: Option<u64>,
        /// Most unacked messages in flight (default 100 000).
        #[serde(default)]
        max_ack_pending: Option<i64>,
        /// How long to keep retrying a lost server before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
}

/// `mode` of an SQL sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlModeConfig {
    /// Plain inserts.
    #[default]
    Insert,
    /// Insert or update by key.
    Upsert,
}

fn default_epoch_column() -> Option<String> {
    Some(crate::streams::sql::DEFAULT_EPOCH_COLUMN.to_owned())
}

/// Settings shared by the NATS connectors.
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

fn default_http_path() -> String {
    "/events".to_owned()
}

/// One entry of `"pipeline"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepConfig {
    /// A WebAssembly component pipe.
    Wasm(WasmStepConfig),
    /// A native window.
    Window(WindowConfig),
    /// A WASI preview 1 command module speaking the line protocol.
    Command(CommandStepConfig),
    /// A host executable speaking the line protocol (unsandboxed).
    Exec(ExecStepConfig),
}

impl StepConfig {
    /// The step's name.
    pub fn name(&self) -> &str {
        match self {
            StepConfig::Wasm(pipe) => &pipe.name,
            StepConfig::Window(window) => &window.name,
            StepConfig::Command(command) => &command.name,
            StepConfig::Exec(exec) => &exec.name,
        }
    }
}

/// `{"type": "command", ...}`: a WASI preview 1 command module (e.g. Go's
/// `GOOS=wasip1` build) that reads one event per line on stdin and writes
/// one line per event on stdout; sandboxed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandStepConfig {
    /// The step's name.
    pub name: String,
    /// The core module file.
    pub module: PathBuf,
    /// Arguments after `argv[0]`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `memory_bytes` and `call_timeout_ms` (per batch) apply.
    #[serde(default)]
    pub limits: Option<PipeLimits>,
}

/// `{"type": "exec", ...}`: a host executable with the same line protocol,
/// NOT sandboxed: refused unless `"allow_unsandboxed": true`, and never in
/// a multi-tenant host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecStepConfig {
    /// The step's name.
    pub name: String,
    /// The program (a path, or a name looked up on PATH).
    pub path: PathBuf,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// How long one batch may take, ms (default 10 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Must be `true`: the program runs with the host's rights.
    #[serde(default)]
    pub allow_unsandboxed: bool,
}

/// `{"type": "wasm", ...}`: a pipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WasmStepConfig {
    /// The pipe's name (unique in the pipeline; it keys the pipe's state).
    pub name: String,
    /// The component file.
    pub module: PathBuf,
    /// Passed to the guest's `init` as JSON text.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Optional WASI capabilities: `"clocks"`, `"random"`.
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Host environment variables the guest may read (only these).
    #[serde(default)]
    pub env: Vec<String>,
    /// One host directory the guest may read, never write:
    /// `{"host": "data", "guest": "/data"}`.
    #[serde(default)]
    pub read_only_dir: Option<ReadOnlyDir>,
    /// Limits of one call (defaults: see [`PipeLimits`]).
    #[serde(default)]
    pub limits: Option<PipeLimits>,
    /// What to do with an event the pipe fails on: `"fail"` (default),
    /// `"skip"`, `"dead_letter"`, or
    /// `{"retry": {"attempts": 3, "backoff_ms": 100, "then": "dead_letter"}}`.
    #[serde(default)]
    pub on_error: OnError,
    /// Swap the module in whenever its file changes, checking every this
    /// many milliseconds (default: off).
    #[serde(default)]
    pub watch_module_ms: Option<u64>,
}

impl WasmStepConfig {
    /// The pipe as the builder takes it.
    pub fn to_pipe(&self) -> WasmPipe {
        let mut pipe = WasmPipe::new(&self.name, &self.module)
            .config(self.config.clone())
            .limits(self.limits.clone().unwrap_or_default())
            .on_error(self.on_error);
        for grant in &self.grants {
            pipe = pipe.grant(*grant);
        }
        for name in &self.env {
            pipe = pipe.env(name);
        }
        if let Some(dir) = &self.read_only_dir {
            pipe = pipe.read_only_dir(&dir.host, &dir.guest);
        }
        if let Some(ms) = self.watch_module_ms {
            pipe = pipe.watch_module(Duration::from_millis(ms));
        }
        pipe
    }

    /// The capabilities the pipe is granted.
    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            grants: self.grants.clone(),
            env: self.env.clone(),
            read_only_dir: self.read_only_dir.clone(),
        }
    }
}

/// `{"type": "window", ...}`: a window. Which fields apply depends on `window`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// `count`, `tumbling`, `sliding`, `session` or `signal`.
    pub window: WindowType,
    /// count: events per window.
    pub events: Option<usize>,
    /// tumbling, sliding: window length in ms.
    pub size_ms: Option<u64>,
    /// sliding: distance between window starts in ms.
    pub slide_ms: Option<u64>,
    /// session: the gap that closes a session, in ms.
    pub gap_ms: Option<u64>,
    /// tumbling, sliding, session: `processing` (default) or `event`.
    #[serde(default)]
    pub time: TimeDomain,
    /// event time: how far the watermark trails the highest timestamp (default 0).
    pub max_out_of_orderness_ms: Option<u64>,
    /// event time: how long after its end a window accepts late events (default 0).
    pub allowed_lateness_ms: Option<u64>,
    /// event time: after this long without events the watermark follows processing time.
    pub idle_timeout_ms: Option<u64>,
    /// `"key"`: one buffer per event key.
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer.
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer.
    pub max_bytes: Option<usize>,
    /// `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
    /// event time: `drop` (default, counted) or `dead_letter`.
    #[serde(default)]
    pub late: LateConfig,
    /// signal: what releases the buffers.
    pub on: Option<SignalOn>,
}

/// The kinds of window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowType {
    /// Every N events.
    Count,
    /// Fixed windows.
    Tumbling,
    /// Overlapping windows.
    Sliding,
    /// Bursts separated by a gap.
    Session,
    /// Released by triggers.
    Signal,
}

/// Which time a time window uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeDomain {
    /// The host's clock.
    #[default]
    Processing,
    /// The events' timestamps.
    Event,
}

/// What a keyed window keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// The event's key.
    Key,
}

/// `on_overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowConfig {
    /// Fail the pipeline.
    #[default]
    Fail,
    /// Release early.
    Release,
}

/// `late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateConfig {
    /// Drop and count.
    #[default]
    Drop,
    /// Send to `dead_letter`.
    DeadLetter,
}

/// `on`: the triggers of a signal window.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalOn {
    /// `"SIGUSR1"`: the only signal a window listens to.
    pub unix_signal: Option<String>,
    /// A control event carrying this header releases the buffers.
    pub header: Option<String>,
    /// A control event with this key releases the buffers.
    pub key: Option<String>,
}

impl WindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// A field is missing for this kind of window, set where it does not
    /// apply, or has a value that cannot work; the error names the field.
    pub fn to_window(&self) -> Result<Window, WindowSpecError> {
        let error = |field: &'static str, message: String| WindowSpecError { field, message };
        let kind = self.window;
        let needs = |field: &'static str, value: Option<u64>| {
            value.ok_or_else(|| {
                error(
                    field,
                    format!("a {kind:?} window needs `{field}`").to_lowercase(),
                )
            })
        };
        let only = |field: &'static str, set: bool, applies: bool, to: &str| {
            if set && !applies {
                Err(error(field, format!("`{field}` applies to {to} only")))
            } else {
                Ok(())
            }
        };
        let time_window = matches!(
            kind,
            WindowType::Tumbling | WindowType::Sliding | WindowType::Session
        );
        only(
            "events",
            self.events.is_some(),
            kind == WindowType::Count,
            "count windows",
        )?;
        only(
            "size_ms",
            self.size_ms.is_some(),
            matches!(kind, WindowType::Tumbling | WindowType::Sliding),
            "tumbling and sliding windows",
        )?;
        only(
            "slide_ms",
            self.slide_ms.is_some(),
            kind == WindowType::Sliding,
            "sliding windows",
        )?;
        only(
            "gap_ms",
            self.gap_ms.is_some(),
            kind == WindowType::Session,
            "session windows",
        )?;
        only(
            "on",
            self.on.is_some(),
            kind == WindowType::Signal,
            "signal windows",
        )?;
        only(
            "time",
            self.time == TimeDomain::Event,
            time_window,
            "tumbling, sliding and session windows",
        )?;
        let event_time = self.time == TimeDomain::Event;
        let event_only = "windows with \"time\": \"event\"";
        only(
            "max_out_of_orderness_ms",
            self.max_out_of_orderness_ms.is_some(),
            event_time,
            event_only,
        )?;
        only(
            "allowed_lateness_ms",
            self.allowed_lateness_ms.is_some(),
            event_time,
            event_only,
        )?;
        only(
            "idle_timeout_ms",
            self.idle_timeout_ms.is_some(),
            event_time,
            event_only,
        )?;
        only(
            "late",
            self.late != LateConfig::Drop,
            event_time,
            event_only,
        )?;
        if self.idle_timeout_ms == Some(0) {
            return Err(error(
                "idle_timeout_ms",
                "expected a positive timeout in ms".to_owned(),
            ));
        }
        let name = self.name.clone();
        let mut window = match kind {
            WindowType::Count => Window::count(
                name,
                usize::try_from(needs("events", self.events.map(|e| e as u64))?)
                    .unwrap_or(usize::MAX),
            ),
            WindowType::Tumbling => {
                Window::tumbling(name, Duration::from_millis(needs("size_ms", self.size_ms)?))
            }
            WindowType::Sliding => Window::sliding(
                name,
                Duration::from_millis(needs("size_ms", self.size_ms)?),
                Duration::from_millis(needs("slide_ms", self.slide_ms)?),
            ),
            WindowType::Session => {
                Window::session(name, Duration::from_millis(needs("gap_ms", self.gap_ms)?))
            }
            WindowType::Signal => {
                let on = self.on.clone().unwrap_or_default();
                let mut window = Window::signal(name);
                match on.unix_signal.as_deref() {
                    None => {}
                    Some("SIGUSR1") => window = window.on_unix_signal(),
                    Some(other) => {
                        return Err(error(
                            "on",
                            format!("unix_signal `{other}` is not supported; expected \"SIGUSR1\""),
                        ))
                    }
                }
                if let Some(header) = on.header {
                    window = window.on_header(header);
                }
                if let Some(key) = on.key {
                    window = window.on_key(key.into_bytes());
                }
                if !matches!(&window.kind, WindowKind::Signal { triggers } if triggers.unix_signal || triggers.header.is_some() || triggers.key.is_some())
                {
                    return Err(error(
                        "on",
                        "a signal window needs a trigger: `unix_signal`, `header` or `key`"
                            .to_owned(),
                    ));
                }
                window
            }
        };
        if event_time {
            window = window.event_time(EventTime {
                max_out_of_orderness_ms: self.max_out_of_orderness_ms.unwrap_or(0),
                allowed_lateness_ms: self.allowed_lateness_ms.unwrap_or(0),
                idle_timeout_ms: self.idle_timeout_ms,
            });
        }
        if self.key_by == Some(KeyBy::Key) {
            window = window.keyed();
        }
        if let Some(max) = self.max_events {
            window = window.max_events(max);
        }
        if let Some(max) = self.max_bytes {
            window = window.max_bytes(max);
        }
        window = window.on_overflow(match self.on_overflow {
            OverflowConfig::Fail => Overflow::Fail,
            OverflowConfig::Release => Overflow::Release,
        });
        window = window.late(match self.late {
            LateConfig::Drop => LatePolicy::Drop,
            LateConfig::DeadLetter => LatePolicy::DeadLetter,
        });
        window.validate()?;
        Ok(window)
    }
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// `"to"`: the sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Standard output, a line per event.
    Stdout {},
    /// A file, a line per event, appended.
    File {
        /// The file.
        path: PathBuf,
        /// Rotate the file (to `<path>.1`, `.2`, …) once it reaches this many bytes.
        #[serde(default)]
        rotate_bytes: Option<u64>,
    },
    /// Drops events (for pipelines run for their state, and benchmarks).
    Discard {},
    /// POSTs each checkpoint's events as one JSON array, with retries.
    Http {
        /// Where to POST.
        url: String,
        /// Per-request timeout (default 10 000).
        #[serde(default)]
        timeout_ms: Option<u64>,
        /// Retries after the first attempt (default 5).
        #[serde(default)]
        max_retries: Option<u32>,
        /// POST early once this many events are buffered (default 10 000).
        #[serde(default)]
        max_buffered: Option<usize>,
    },
    /// Rows into an SQL table, one transaction per checkpoint.
    Sql {
        /// `sqlite://file.db` or `postgres://user@host/db`.
        url: String,
        /// The table.
        table: String,
        /// `insert` (default; exactly-once through `epoch_column`) or
        /// `upsert` (idempotent by `key_columns`).
        #[serde(default)]
        mode: SqlModeConfig,
        /// The upsert's conflict target.
        #[serde(default)]
        key_columns: Vec<String>,
        /// Column → source (`value`, `key`, `timestamp`, `header:<name>`,
        /// `json:<field>`); default: the value is a JSON object of columns.
        #[serde(default)]
        columns: Option<std::collections::BTreeMap<String, ColumnSource>>,
        /// The insert's epoch column (default `plumber_epoch`; `null`: none,
        /// and inserts are at-least-once).
        #[serde(default = "default_epoch_column")]
        epoch_column: Option<String>,
        /// How long to keep retrying a lost database before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
    /// Core NATS publish (at-least-once at best).
    Nats {
        /// Server URL (default `nats://127.0.0.1:4222`).
        #[serde(default = "default_nats_url")]
        url: String,
        /// Subject.
        subject: String,
        /// Take each event's subject from this header when it has it.
        #[serde(default)]
        subject_from_header: Option<String>,
        /// How long to keep retrying a lost server before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
    /// JetStream publish with `Nats-Msg-Id` from the pipeline and the
    /// source sequence: exactly-once within the stream's duplicate window.
    Jetstream {
        /// Server URL (default `nats://127.0.0.1:4222`).
        #[serde(default = "default_nats_url")]
        url: String,
        /// Subject (captured by a stream).
        subject: String,
        /// How long to keep retrying a lost server before failing (default 30 000).
        #[serde(default)]
        reconnect_timeout_ms: Option<u64>,
    },
}

impl PipelineConfig {
    /// Reads and checks the config file at `file`, resolving relative paths
    /// against its directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not JSON of this shape, or a value is bad;
    /// the error names the JSON path.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &file.display().to_string(), base)
    }

    /// Parses and checks config text; `origin` names it in errors and
    /// relative paths are resolved against `base`.
    ///
    /// # Errors
    ///
    /// As [`PipelineConfig::load`].
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let deserializer = &mut serde_json::Deserializer::from_str(text);
        let mut config: PipelineConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                ConfigError::Invalid {
                    file: origin.to_owned(),
                    path: if path == "." {
                        "(top level)".to_owned()
                    } else {
                        path
                    },
                    // serde_json's text ends with "at line L column C", which helps find typos.
                    message: inner.to_string(),
                }
            })?;
        config.check(origin)?;
        config.resolve_paths(base);
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: String| ConfigError::Invalid {
            file: origin.to_owned(),
            path: path.to_owned(),
            message,
        };
        if self.name.trim().is_empty() {
            return Err(invalid("name", "expected a non-empty pipeline name".into()));
        }
        if let Some(tenant) = &self.tenant {
            crate::tenant::check_tenant_name(tenant)
                .map_err(|message| invalid("tenant", message))?;
        }
        if self.batch_size == 0 {
            return Err(invalid(
                "batch_size",
                "expected a batch size of at least 1".into(),
            ));
        }
        if self.checkpoint.interval_ms == Some(0) {
            return Err(invalid(
                "checkpoint.interval_ms",
                "expected a positive interval in milliseconds (or null for none)".into(),
            ));
        }
        if self.checkpoint.every_events == Some(0) {
            return Err(invalid(
                "checkpoint.every_events",
                "expected a positive event count (or null for none)".into(),
            ));
        }
        for (field, bound) in [
            (
                "checkpoint.max_pending_keys",
                self.checkpoint.max_pending_keys,
            ),
            (
                "checkpoint.max_pending_bytes",
                self.checkpoint.max_pending_bytes,
            ),
        ] {
            if bound == Some(0) {
                return Err(invalid(
                    field,
                    "expected a positive bound (or null for none)".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (index, step) in self.pipeline.iter().enumerate() {
            let name = step.name();
            if name.trim().is_empty() {
                return Err(invalid(
                    &format!("pipeline[{index}].name"),
                    "expected a non-empty step name".into(),
                ));
            }
            if !names.insert(name) {
                return Err(invalid(
                    &format!("pipeline[{index}].name"),
                    format!("step name `{name}` is used twice; names key each step's state and must be unique"),
                ));
            }
            match step {
                StepConfig::Wasm(pipe) if pipe.module.as_os_str().is_empty() => {
                    return Err(invalid(
                        &format!("pipeline[{index}].module"),
                        "expected the path of a .wasm component".into(),
                    ));
                }
                StepConfig::Wasm(pipe) => {
                    if let Some((field, message)) =
                        pipe.limits.as_ref().and_then(PipeLimits::invalid_field)
                    {
                        return Err(invalid(
                            &format!("pipeline[{index}].limits.{field}"),
                            message.into(),
                        ));
                    }
                    if pipe.on_error.uses_dead_letter() && self.dead_letter.is_none() {
                        return Err(invalid(
                            &format!("pipeline[{index}].on_error"),
                            "failed events go to the dead-letter sink, but the config has no `dead_letter`".into(),
                        ));
                    }
                    if pipe.watch_module_ms == Some(0) {
                        return Err(invalid(
                            &format!("pipeline[{index}].watch_module_ms"),
                            "expected a positive interval in milliseconds".into(),
                        ));
                    }
                    if let Some(dir) = &pipe.read_only_dir {
                        if !dir.guest.starts_with('/') {
                            return Err(invalid(
                                &format!("pipeline[{index}].read_only_dir.guest"),
                                format!(
                                    "expected an absolute guest path such as `/data`, not `{}`",
                                    dir.guest
                                ),
                            ));
                        }
                    }
                }
                StepConfig::Command(command) => {
                    if let Some((field, message)) =
                        command.limits.as_ref().and_then(PipeLimits::invalid_field)
                    {
                        return Err(invalid(
                            &format!("pipeline[{index}].limits.{field}"),
                            message.into(),
                        ));
                    }
                }
                StepConfig::Exec(exec) => {
                    if !exec.allow_unsandboxed {
                        return Err(invalid(
                            &format!("pipeline[{index}].allow_unsandboxed"),
                            format!(
                                "`{}` would run outside the sandbox with the host's rights; \
                                 set \"allow_unsandboxed\": true to allow it (never in a multi-tenant host)",
                                exec.path.display()
                            ),
                        ));
                    }
                    if exec.timeout_ms == Some(0) {
                        return Err(invalid(
                            &format!("pipeline[{index}].timeout_ms"),
                            "expected a positive number of milliseconds".into(),
                        ));
                    }
                }
                StepConfig::Window(window) => {
                    let spec = window.to_window().map_err(|e| {
                        invalid(&format!("pipeline[{index}].{}", e.field), e.message)
                    })?;
                    if spec.late == LatePolicy::DeadLetter && self.dead_letter.is_none() {
                        return Err(invalid(
                            &format!("pipeline[{index}].late"),
                            "late events go to the dead-letter sink, but the config has no `dead_letter`".into(),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        match &mut self.state {
            Some(StateConfig::Sled { path }) => resolve(path),
            Some(StateConfig::Redis { .. }) => {}
            Some(StateConfig::Memory { snapshot }) => {
                if let Some(path) = snapshot {
                    resolve(path);
                }
            }
            None => {
                self.state = Some(StateConfig::Sled {
                    path: base.join(format!("{}.state", self.name)),
                })
            }
        }
        if let SourceConfig::File { path, .. } = &mut self.from {
            resolve(path);
        }
        for step in &mut self.pipeline {
            match step {
                StepConfig::Wasm(pipe) => {
                    resolve(&mut pipe.module);
                    if let Some(dir) = &mut pipe.read_only_dir {
                        resolve(&mut dir.host);
                    }
                }
                StepConfig::Command(command) => resolve(&mut command.module),
                // A bare program name is looked up on PATH; a path with a
                // directory part is relative to the config.
                StepConfig::Exec(exec) if exec.path.components().count() > 1 => {
                    resolve(&mut exec.path)
                }
                StepConfig::Exec(_) | StepConfig::Window(_) => {}
            }
        }
        for sink in std::iter::once(&mut self.to).chain(self.dead_letter.as_mut()) {
            if let SinkConfig::File { path, .. } = sink {
                resolve(path);
            }
        }
    }

    /// The JSON path of the `module` field of the pipe called `name`.
    pub fn module_field(&self, name: &str) -> Option<String> {
        self.pipeline
            .iter()
            .position(|step| matches!(step, StepConfig::Wasm(pipe) if pipe.name == name))
            .map(|index| format!("pipeline[{index}].module"))
    }

    /// Opens the state backend this config names.
    ///
    /// # Errors
    ///
    /// The backend cannot be opened.
    pub async fn open_state(&self) -> Result<SharedState, StateError> {
        Ok(match &self.state {
            Some(StateConfig::Sled { path }) => Arc::new(SledState::open(path)?),
            Some(StateConfig::Redis {
                url,
                key_prefix,
                reconnect_timeout_ms,
            }) => {
                let mut options = RedisOptions::default();
                if let Some(prefix) = key_prefix {
                    options.key_prefix = prefix.clone();
                }
                if let Some(ms) = reconnect_timeout_ms {
                    options.reconnect_timeout = Duration::from_millis(*ms);
                }
                Arc::new(RedisState::connect(url, options).await?)
            }
            Some(StateConfig::Memory {
                snapshot: Some(path),
            }) => Arc::new(MemoryState::with_snapshot(path)?),
            Some(StateConfig::Memory { snapshot: None }) | None => Arc::new(MemoryState::new()),
        })
    }

    /// A builder for this pipeline on `state`, with its source and sinks
    /// opened.
    ///
    /// # Errors
    ///
    /// The source or a sink could not be opened (bind or connection failed).
    pub async fn builder(&self, state: SharedState) -> Result<PipelineBuilder, StreamError> {
        let policy = CheckpointPolicy {
            interval: self.checkpoint.interval_ms.map(Duration::from_millis),
            every_events: self.checkpoint.every_events,
            on_window_close: self.checkpoint.on_window_close,
            max_pending_keys: self.checkpoint.max_pending_keys,
            max_pending_bytes: self.checkpoint.max_pending_bytes,
        };
        let mut builder = Pipeline::builder(&self.name)
            .tenant(
                self.tenant
                    .as_deref()
                    .unwrap_or(crate::state::DEFAULT_TENANT),
            )
            .state(state)
            .checkpoint(policy)
            .delivery(self.delivery)
            .batch_size(self.batch_size)
            .from_boxed(self.from.open().await?);
        for step in &self.pipeline {
            builder = match step {
                StepConfig::Wasm(pipe) => builder.then(pipe.to_pipe()),
                StepConfig::Command(command) => builder.then(crate::pipeline::CommandPipe {
                    name: command.name.clone(),
                    module: command.module.clone(),
                    args: command.args.clone(),
                    limits: command.limits.clone().unwrap_or_default(),
                }),
                StepConfig::Exec(exec) => builder.then(crate::pipeline::ExecPipe {
                    name: exec.name.clone(),
                    path: exec.path.clone(),
                    args: exec.args.clone(),
                    timeout: Duration::from_millis(exec.timeout_ms.unwrap_or(10_000)),
                    allow_unsandboxed: exec.allow_unsandboxed,
                }),
                // `check` has validated every window when the config was read.
                StepConfig::Window(window) => match window.to_window() {
                    Ok(window) => builder.then(window),
                    Err(_) => builder,
                },
            };
        }
        if let Some(sink) = &self.dead_letter {
            builder = builder.dead_letter_boxed(sink.open(&self.name).await?);
        }
        Ok(builder.to_boxed(self.to.open(&self.name).await?))
    }
}

/// The config of a host running many pipelines (`plumber run --host`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Pipeline config files to run (relative: against this file's directory).
    #[serde(default)]
    pub pipelines: Vec<PathBuf>,
    /// The admin and metrics server (default: off).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Quotas per tenant; tenants not listed are unlimited.
    #[serde(default)]
    pub tenants: std::collections::HashMap<String, crate::tenant::TenantQuota>,
    /// Milliseconds between status lines on stderr when it is a terminal
    /// (default 5000; 0: never).
    #[serde(default)]
    pub status_interval_ms: Option<u64>,
}

/// `"admin"`: where the admin server listens and its token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on (default `127.0.0.1:9464`). A non-loopback
    /// address needs a token.
    #[serde(default = "default_admin_listen")]
    pub listen: std::net::SocketAddr,
    /// The environment variable holding the bearer token the mutating
    /// calls need (a token is not written in the file itself).
    #[serde(default)]
    pub token_env: Option<String>,
}

fn default_admin_listen() -> std::net::SocketAddr {
    crate::admin::DEFAULT_LISTEN
}

impl HostConfig {
    /// Reads and checks a host config, resolving relative pipeline paths
    /// against its directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or a field is bad (the error names its JSON path).
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let origin = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let deserializer = &mut serde_json::Deserializer::from_str(&text);
        let mut config: HostConfig =
            serde_path_to_error::deserialize(deserializer).map_err(|error| {
                let path = error.path().to_string();
                ConfigError::Invalid {
                    file: origin.clone(),
                    path: if path == "." {
                        "(top level)".to_owned()
                    } else {
                        path
                    },
                    message: error.into_inner().to_string(),
                }
            })?;
        for tenant in config.tenants.keys() {
            crate::tenant::check_tenant_name(tenant).map_err(|message| ConfigError::Invalid {
                file: origin.clone(),
                path: format!("tenants.{tenant}"),
                message,
            })?;
        }
        if let Some(AdminConfig {
            token_env: Some(name),
            ..
        }) = &config.admin
        {
            if std::env::var(name).map_or(true, |token| token.trim().is_empty()) {
                return Err(ConfigError::Invalid {
                    file: origin,
                    path: "admin.token_env".to_owned(),
                    message: format!("the environment variable `{name}` is not set or empty"),
                });
            }
        }
        let base = file.parent().unwrap_or(Path::new("."));
        for path in &mut config.pipelines {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, "test.json", Path::new("/base"))
    }

    fn path_of(error: ConfigError) -> String {
        match error {
            ConfigError::Invalid { path, .. } => path,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let config = parse(
            r#"{"name":"p","from":{"type":"array","values":["a"]},
                "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"}],
                "to":{"type":"stdout"}}"#,
        )
        .unwrap();
        assert_eq!(config.batch_size, 1024);
        assert_eq!(config.checkpoint.interval_ms, Some(1000));
        assert!(
            matches!(&config.state, Some(StateConfig::Sled { path }) if path == Path::new("/base/p.state"))
        );
        let StepConfig::Wasm(pipe) = &config.pipeline[0] else {
            panic!("a wasm step")
        };
        assert_eq!(pipe.module, Path::new("/base/u.wasm"));
        assert_eq!(pipe.config, serde_json::json!({}));
    }

    fn with_step(step: &str) -> Result<PipelineConfig, ConfigError> {
        parse(&format!(
            r#"{{"name":"p","from":{{"type":"array","values":[]}},"pipeline":[{{"type":"wasm","name":"u","module":"u.wasm"}},{step}],"to":{{"type":"stdout"}}}}"#
        ))
    }

    #[test]
    fn sandbox_fields_read_and_bad_ones_name_their_path() {
        let config = with_step(
            r#"{"type":"wasm","name":"w","module":"w.wasm","grants":["clocks"],"env":["TZ"],
                "read_only_dir":{"host":"data","guest":"/data"},
                "limits":{"call_timeout_ms":250},"on_error":{"retry":{"attempts":2,"then":"skip"}},
                "watch_module_ms":500}"#,
        )
        .unwrap();
        let StepConfig::Wasm(pipe) = &config.pipeline[1] else {
            panic!("not a pipe");
        };
        assert_eq!(pipe.limits.as_ref().unwrap().call_timeout_ms, 250);
        assert_eq!(
            pipe.limits.as_ref().unwrap().memory_bytes,
            PipeLimits::default().memory_bytes
        );
        assert_eq!(
            pipe.on_error,
            OnError::Retry {
                attempts: 2,
                backoff_ms: 100,
                then: crate::step::Exhausted::Skip
            }
        );
        assert_eq!(
            pipe.read_only_dir.as_ref().unwrap().host,
            Path::new("/base/data")
        );
        assert_eq!(pipe.capabilities().env, vec!["TZ".to_owned()]);

        // Checks of ours name the field; serde's own errors inside a step
        // (whose `type` tag makes serde buffer it) name the step and say
        // which field or value in the message.
        let cases = [
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"call_timeout_ms":0}}"#,
                "pipeline[1].limits.call_timeout_ms",
                "positive",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"memory_bytes":1000}}"#,
                "pipeline[1].limits.memory_bytes",
                "at least 1048576",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","limits":{"cpu":1}}"#,
                "pipeline[1]",
                "unknown field `cpu`",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","on_error":"dead_letter"}"#,
                "pipeline[1].on_error",
                "no `dead_letter`",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","on_error":"ignore"}"#,
                "pipeline[1]",
                "unknown variant `ignore`",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","read_only_dir":{"host":"d","guest":"data"}}"#,
                "pipeline[1].read_only_dir.guest",
                "absolute guest path",
            ),
            (
                r#"{"type":"wasm","name":"w","module":"w.wasm","grants":["sockets"]}"#,
                "pipeline[1]",
                "unknown variant `sockets`",
            ),
        ];
        for (step, path, text) in cases {
            let error = with_step(step).unwrap_err();
            let message = error.to_string();
            assert_eq!(path_of(error), path, "{step}");
            assert!(message.contains(text), "{step}: {message}");
        }
        let tenant = parse(
            r#"{"name":"p","tenant":"a/b","from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#,
        )
        .unwrap_err();
        assert_eq!(path_of(tenant), "tenant");
    }

    #[test]
    fn every_window_type_reads_from_config() {
        let cases = [
            (
                r#"{"type":"window","name":"w","window":"count","events":3,"key_by":"key"}"#,
                WindowKind::Count { events: 3 },
            ),
            (
                r#"{"type":"window","name":"w","window":"tumbling","size_ms":10000}"#,
                WindowKind::Tumbling {
                    size_ms: 10_000,
                    time: crate::window::TimeMode::Processing,
                },
            ),
            (
                r#"{"type":"window","name":"w","window":"sliding","size_ms":10000,"slide_ms":5000,"time":"event","max_out_of_orderness_ms":2000,"allowed_lateness_ms":1000,"idle_timeout_ms":3000}"#,
                WindowKind::Sliding {
                    size_ms: 10_000,
                    slide_ms: 5_000,
                    time: crate::window::TimeMode::Event(EventTime {
                        max_out_of_orderness_ms: 2_000,
                        allowed_lateness_ms: 1_000,
                        idle_timeout_ms: Some(3_000),
                    }),
                },
            ),
            (
                r#"{"type":"window","name":"w","window":"session","gap_ms":500}"#,
                WindowKind::Session {
                    gap_ms: 500,
                    time: crate::window::TimeMode::Processing,
                },
            ),
            (
                r#"{"type":"window","name":"w","window":"signal","on":{"header":"flush","unix_signal":"SIGUSR1"}}"#,
                WindowKind::Signal {
                    triggers: crate::window::SignalTriggers {
                        unix_signal: true,
                        header: Some("flush".into()),
                        key: None,
                    },
                },
            ),
        ];
        for (step, kind) in cases {
            let config = with_step(step).unwrap_or_else(|e| panic!("{step}: {e}"));
            let StepConfig::Window(window) = &config.pipeline[1] else {
                panic!("a window step")
            };
            assert_eq!(window.to_window().unwrap().kind, kind, "{step}");
        }
    }

    #[test]
    fn bad_windows_are_refused_with_the_json_path() {
        let cases = [
            (
                r#"{"type":"window","name":"w","window":"count","events":0}"#,
                "pipeline[1].events",
                "at least 1",
            ),
            (
                r#"{"type":"window","name":"w","window":"count"}"#,
                "pipeline[1].events",
                "needs `events`",
            ),
            (
                r#"{"type":"window","name":"w","window":"sliding","size_ms":1000,"slide_ms":2000}"#,
                "pipeline[1].slide_ms",
                "larger than the size",
            ),
            (
                r#"{"type":"window","name":"w","window":"tumbling","size_ms":1000,"gap_ms":5}"#,
                "pipeline[1].gap_ms",
                "session windows only",
            ),
            (
                r#"{"type":"window","name":"w","window":"tumbling","size_ms":1000,"allowed_lateness_ms":5}"#,
                "pipeline[1].allowed_lateness_ms",
                "\"time\": \"event\"",
            ),
            (
                r#"{"type":"window","name":"w","window":"signal"}"#,
                "pipeline[1].on",
                "needs a trigger",
            ),
            (
                r#"{"type":"window","name":"w","window":"signal","on":{"unix_signal":"SIGHUP"}}"#,
                "pipeline[1].on",
                "SIGUSR1",
            ),
            (
                r#"{"type":"window","name":"w","window":"tumbling","size_ms":10,"time":"event","late":"dead_letter"}"#,
                "pipeline[1].late",
                "no `dead_letter`",
            ),
            (
                r#"{"type":"window","name":"u","window":"count","events":1}"#,
                "pipeline[1].name",
                "used twice",
            ),
        ];
        for (step, path, message) in cases {
            match with_step(step) {
                Err(ConfigError::Invalid {
                    path: p,
                    message: m,
                    ..
                }) => {
                    assert_eq!(p, path, "{step}: {m}");
                    assert!(m.contains(message), "{step}: {m}");
                }
                other => panic!("{step}: expected an error, got {other:?}"),
            }
        }
        let typo =
            with_step(r#"{"type":"window","name":"w","window":"count","events":1,"size":3}"#)
                .unwrap_err();
        assert!(typo.to_string().contains("unknown field `size`"), "{typo}");
        let pipe_typo =
            with_step(r#"{"type":"wasm","name":"v","module":"v.wasm","grant":[]}"#).unwrap_err();
        assert!(
            pipe_typo.to_string().contains("unknown field `grant`"),
            "{pipe_typo}"
        );
    }

    #[test]
    fn errors_name_the_json_path() {
        let wrong_type = parse(
            r#"{"name":"p","from":{"type":"array","values":["a"]},
                "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"},{"name":"v","type":"wasm","module":7}],
                "to":{"type":"stdout"}}"#,
        )
        .unwrap_err();
        let text = wrong_type.to_string();
        assert!(text.contains("pipeline[1]"), "{text}");

        let zero = parse(
            r#"{"name":"p","checkpoint":{"interval_ms":0},"from":{"type":"array","values":[]},"to":{"type":"stdout"}}"#,
        )
        .unwrap_err();
        assert_eq!(path_of(zero), "checkpoint.interval_ms");

        let unknown_sink =
            parse(r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"printer"}}"#)
                .unwrap_err();
        let text = unknown_sink.to_string();
        assert!(
            text.contains("`to.type`") && text.contains("printer"),
            "{text}"
        );

        let typo = parse(r#"{"name":"p","from":{"type":"array","values":[]},"to":{"type":"stdout"},"batchsize":3}"#)
            .unwrap_err();
        assert!(typo.to_string().contains("batchsize"), "{typo}");

        let twice = parse(
            r#"{"name":"p","from":{"type":"array","values":[]},
                "pipeline":[{"name":"u","type":"wasm","module":"u.wasm"},{"name":"u","type":"wasm","module":"v.wasm"}],
                "to":{"type":"stdout"}}"#,
        )
        .unwrap_err();
        assert_eq!(path_of(twice), "pipeline[1].name");

        let missing = parse(r#"{"name":"p","to":{"type":"stdout"}}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `from`"),
            "{missing}"
        );
    }
}
