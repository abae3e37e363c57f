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
//!
//! | file | what |
//! | --- | --- |
//! | `mod.rs` | the pipeline config: reading, checking, opening |
//! | [`registry`] | the connector registry: `"type"` → config type, and the traits a connector's config implements |
//! | [`step`] | the steps of `"pipeline"` (a window's fields are [`crate::window::WindowConfig`]'s) |
//! | `strict.rs` | strict reading: unknown fields, objects only, exact paths, bounded quotes |
//! | [`validate`] | `plumber validate` (and what `plumber run` checks first) |
//! | [`setup`] | `plumber setup` |
//! | `host.rs` | the host config (`plumber run --host`) |
//! | [`cluster`] | `"cluster"`: a pipeline partitioned over workers |
//!
//! Each source, sink and state backend keeps its config type beside its
//! implementation (`streams/file/config.rs`, `state/sled_backend/config.rs`,
//! …), with its own checks and how it opens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::{CheckpointPolicy, Delivery};
use crate::pipeline::{Pipeline, PipelineBuilder, Publish};
use crate::state::{SharedState, StateError};
use crate::streams::StreamError;

pub mod cluster;
mod host;
pub mod registry;
pub mod setup;
pub mod step;
pub(crate) mod strict;
pub mod validate;

pub use cluster::ClusterConfig;
pub use host::{AdminConfig, HostConfig, DEFAULT_ADMIN_LISTEN};
pub use registry::{
    ConnectorSpec, OpenContext, OutputGuarantee, Registry, SinkConfig, SinkSpec, SourceConfig,
    SourceSpec, StateConfig, StateSpec,
};
pub use step::{
    CommandStepConfig, ExecStepConfig, RepartitionStepConfig, StepConfig, WasmStepConfig,
};
pub use strict::{cap_quoted, excerpt, MAX_QUOTED_CHARS};
pub use validate::Checks;

use strict::{object_only, Tagged};

object_only!(PipelineFields, CheckpointConfig);

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config `{file}`")]
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

/// A field of a config section that cannot work, named relative to the
/// section (`path`, `columns.x`, `subjects[0]`; empty for the section
/// itself): what connectors and steps report, and the config turns into a
/// full JSON path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at `{field}`: {message}")]
pub struct FieldError {
    /// The field's path within the section.
    pub field: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl FieldError {
    /// `field` (relative to its section) is wrong because of `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The field's full JSON path, for a section at `at` (`to`, `pipeline[1]`).
    pub fn path_in(&self, at: &str) -> String {
        strict::join(at, &self.field)
    }
}

/// Reads config text as a `T`; `origin` names it in errors.
fn read_json<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    strict::parse(text).map_err(|(path, message)| ConfigError::Invalid {
        file: origin.to_owned(),
        path: if path.is_empty() {
            "(top level)".to_owned()
        } else {
            path
        },
        message,
    })
}

/// A whole pipeline config.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// `name`: the pipeline's name; it keys its checkpoints and state.
    pub name: String,
    /// `tenant`: the tenant it belongs to (default `default`): the first
    /// part of its state keys and checkpoint records.
    pub tenant: Option<String>,
    /// `state`: the state backend (default: the registry's default state,
    /// if it has one; with the `plumber` crate's standard registry, sled in
    /// `<name>.state` beside the config).
    pub state: StateConfig,
    /// `checkpoint`: when to checkpoint (default: every 1000 ms, and at the end).
    pub checkpoint: CheckpointConfig,
    /// `delivery`: `at_most_once`, `at_least_once` or `exactly_once` (default).
    pub delivery: Delivery,
    /// `publish`: when `to` gets an epoch's output: `before_commit`
    /// (default: during the epoch, flushed before its checkpoint commits)
    /// or `after_commit` (held in the checkpoint, written once it has
    /// committed; not with `at_most_once`).
    pub publish: Publish,
    /// `batch_size`: the most events in one batch (default 1024).
    pub batch_size: usize,
    /// `from`: the source.
    pub from: SourceConfig,
    /// `pipeline`: the steps, in order (default none).
    pub pipeline: Vec<StepConfig>,
    /// `to`: the sink.
    pub to: SinkConfig,
    /// `dead_letter`: where events that cannot go on are sent (late window
    /// events with `"late": "dead_letter"`, events a pipe failed on under
    /// `on_error`), with headers saying why (default none).
    pub dead_letter: Option<SinkConfig>,
    /// `cluster`: the pipeline is partitioned over the workers of a NATS
    /// JetStream cluster (`plumber worker`); `plumber run` refuses it
    /// (default none).
    pub cluster: Option<ClusterConfig>,
}

/// The fields of a pipeline config as read, before its connector sections
/// are looked up in a registry (the fields are [`PipelineConfig`]'s).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
struct PipelineFields {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    state: Option<Tagged>,
    #[serde(default)]
    checkpoint: CheckpointConfig,
    #[serde(default)]
    delivery: Delivery,
    #[serde(default)]
    publish: Publish,
    #[serde(default = "default_batch_size")]
    batch_size: usize,
    from: Tagged,
    #[serde(default)]
    pipeline: Vec<StepConfig>,
    to: Tagged,
    #[serde(default)]
    dead_letter: Option<Tagged>,
    #[serde(default)]
    cluster: Option<ClusterConfig>,
}

fn default_batch_size() -> usize {
    1024
}

/// `"checkpoint"`: checkpoint strategies (several may be set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct CheckpointConfig {
    /// Checkpoint every this many milliseconds (default 1000; `null`: never
    /// by time).
    #[serde(default = "default_interval_ms")]
    pub interval_ms: Option<u64>,
    /// Checkpoint every this many source events (default: never by count).
    #[serde(default)]
    pub every_events: Option<u64>,
    /// Checkpoint whenever a window releases (default false).
    #[serde(default)]
    pub on_window_close: bool,
    /// Checkpoint when the process receives SIGUSR2 (`plumber run` only;
    /// default false).
    #[serde(default)]
    pub on_signal: bool,
    /// Force a checkpoint once a pipe holds this many keys written since
    /// the last one (default 100,000; `null`: no bound).
    #[serde(default = "default_max_pending_keys")]
    pub max_pending_keys: Option<u64>,
    /// Force a checkpoint once a pipe holds this many bytes of keys and
    /// values written since the last one (default 64 MiB; `null`: no
    /// bound).
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

impl PipelineConfig {
    /// Reads and checks the config file at `file` with the connectors of
    /// `registry`, resolving relative paths against its directory.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not JSON of this shape, or a value is bad;
    /// the error names the JSON path. A section's `type` that `registry`
    /// does not know is an error naming the types it knows.
    pub fn load_with(registry: &Registry, file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Self::parse_with(registry, &text, &file.display().to_string(), base)
    }

    /// Parses and checks config text with the connectors of `registry`;
    /// `origin` names it in errors and relative paths are resolved against
    /// `base`.
    ///
    /// # Errors
    ///
    /// As [`PipelineConfig::load_with`].
    pub fn parse_with(
        registry: &Registry,
        text: &str,
        origin: &str,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let fields: PipelineFields = read_json(text, origin)?;
        // The registry's messages quote values already cut short.
        let invalid = |path: &str, message: &str| ConfigError::Invalid {
            file: origin.to_owned(),
            path: path.to_owned(),
            message: message.to_owned(),
        };
        let in_section = |at: &str, (inner, message): (String, String)| {
            invalid(&strict::join(at, &inner), &message)
        };
        let state = match fields.state {
            Some(section) => registry
                .read_state(section, base)
                .map_err(|error| in_section("state", error))?,
            None => registry
                .default_state_for(&fields.name, base)
                .ok_or_else(|| {
                    invalid(
                        "state",
                        &format!(
                            "missing field `state`: this build of plumber has no default state \
                             backend; known: {}",
                            quoted(&registry.state_types())
                        ),
                    )
                })?,
        };
        let from = registry
            .read_source(fields.from, base)
            .map_err(|error| in_section("from", error))?;
        let to = registry
            .read_sink(fields.to, base)
            .map_err(|error| in_section("to", error))?;
        let dead_letter = match fields.dead_letter {
            Some(section) => Some(
                registry
                    .read_sink(section, base)
                    .map_err(|error| in_section("dead_letter", error))?,
            ),
            None => None,
        };
        let mut config = PipelineConfig {
            name: fields.name,
            tenant: fields.tenant,
            state,
            checkpoint: fields.checkpoint,
            delivery: fields.delivery,
            publish: fields.publish,
            batch_size: fields.batch_size,
            from,
            pipeline: fields.pipeline,
            to,
            dead_letter,
            cluster: fields.cluster,
        };
        config.check(origin)?;
        for step in &mut config.pipeline {
            step.resolve_paths(base);
        }
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        // Messages quote values from the config: cut long ones.
        let invalid = |path: &str, message: String| ConfigError::Invalid {
            file: origin.to_owned(),
            path: path.to_owned(),
            message: cap_quoted(&message),
        };
        let in_section = |at: &str, error: FieldError| invalid(&error.path_in(at), error.message);
        if self.name.trim().is_empty() {
            return Err(invalid("name", "expected a non-empty pipeline name".into()));
        }
        if let Some(tenant) = &self.tenant {
            crate::tenant::check_tenant_name(tenant)
                .map_err(|message| invalid("tenant", message))?;
        }
        if self.publish == Publish::AfterCommit && self.delivery == Delivery::AtMostOnce {
            return Err(invalid(
                "publish",
                "`after_commit` holds each epoch's output in its checkpoint, committed with the \
                 source position, but `at_most_once` delivery commits positions before \
                 processing: use `at_least_once` or `exactly_once` delivery, or publish \
                 `before_commit`"
                    .into(),
            ));
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
        self.state
            .check()
            .map_err(|error| in_section("state", error))?;
        self.from
            .check()
            .map_err(|error| in_section("from", error))?;
        for (at, sink) in self.sinks() {
            sink.check().map_err(|error| in_section(at, error))?;
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .check()
                .map_err(|error| in_section("cluster", error))?;
            // A partition moves between workers with its position and state.
            if self.from.type_name() != "jetstream" {
                return Err(invalid(
                    "from.type",
                    format!(
                        "a pipeline with `cluster` reads a partitioned JetStream stream: expected \
                         `jetstream`, got `{}`",
                        self.from.type_name()
                    ),
                ));
            }
            if !matches!(self.state.type_name(), "redis" | "sled") {
                return Err(invalid(
                    "state.type",
                    format!(
                        "a pipeline with `cluster` keeps its state where the next owner of a \
                         partition finds it: expected `redis` (or `sled` for a single worker), \
                         got `{}`",
                        self.state.type_name()
                    ),
                ));
            }
        }
        let mut repartitions = self
            .pipeline
            .iter()
            .enumerate()
            .filter(|(_, step)| matches!(step, StepConfig::Repartition(_)))
            .map(|(index, _)| index);
        if let Some(first) = repartitions.next() {
            if self.cluster.is_none() {
                return Err(invalid(
                    &format!("pipeline[{first}].type"),
                    "a `repartition` step shuffles events between the partitions of a clustered \
                     pipeline: it needs the config's `cluster` section (and `plumber worker`)"
                        .into(),
                ));
            }
            if let Some(second) = repartitions.next() {
                return Err(invalid(
                    &format!("pipeline[{second}].type"),
                    "a pipeline has at most one `repartition` step (two stages)".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (index, step) in self.pipeline.iter().enumerate() {
            let at = format!("pipeline[{index}]");
            let name = step.name();
            if name.trim().is_empty() {
                return Err(invalid(
                    &format!("{at}.name"),
                    "expected a non-empty step name".into(),
                ));
            }
            if !names.insert(name) {
                return Err(invalid(
                    &format!("{at}.name"),
                    format!("step name `{name}` is used twice; names key each step's state and must be unique"),
                ));
            }
            step.check(self.dead_letter.is_some())
                .map_err(|error| in_section(&at, error))?;
        }
        Ok(())
    }

    /// The sinks: `("to", to)`, then `("dead_letter", …)` if there is one.
    pub fn sinks(&self) -> impl Iterator<Item = (&'static str, &SinkConfig)> {
        std::iter::once(("to", &self.to))
            .chain(self.dead_letter.as_ref().map(|sink| ("dead_letter", sink)))
    }

    /// The JSON path of the `module` field of the pipe called `name`.
    pub fn module_field(&self, name: &str) -> Option<String> {
        self.step_field(name, "module")
    }

    /// The JSON path of `field` of the pipe called `name`.
    pub fn step_field(&self, name: &str, field: &str) -> Option<String> {
        self.pipeline
            .iter()
            .position(|step| matches!(step, StepConfig::Wasm(pipe) if pipe.name == name))
            .map(|index| format!("pipeline[{index}].{field}"))
    }

    /// Opens the state backend this config names.
    ///
    /// # Errors
    ///
    /// The backend cannot be opened.
    pub async fn open_state(&self) -> Result<SharedState, StateError> {
        self.state.open().await
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
        // Only in a clustered config, which `plumber worker` splits into
        // stages without the step.
        if let Some(StepConfig::Repartition(repartition)) = self
            .pipeline
            .iter()
            .find(|step| matches!(step, StepConfig::Repartition(_)))
        {
            return Err(StreamError::Io {
                stream: format!("repartition step `{}`", repartition.name),
                action: "open",
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a repartition step runs only in the stages `plumber worker` makes of a \
                     clustered pipeline",
                ),
            });
        }
        let context = OpenContext::new(&self.name);
        let mut builder = Pipeline::builder(&self.name)
            .tenant(
                self.tenant
                    .as_deref()
                    .unwrap_or(crate::state::DEFAULT_TENANT),
            )
            .state(state)
            .checkpoint(policy)
            .delivery(self.delivery)
            .publish(self.publish)
            .batch_size(self.batch_size)
            .from_boxed(self.from.open(&context).await?);
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
                StepConfig::Window(window) => match window.build() {
                    Ok(window) => builder.then(window),
                    Err(_) => builder,
                },
                // `check` has validated every join when the config was read.
                StepConfig::Join(join) => match join.build() {
                    Ok(join) => builder.then(join),
                    Err(_) => builder,
                },
                // Refused above.
                StepConfig::Repartition(_) => builder,
            };
        }
        if let Some(sink) = &self.dead_letter {
            builder = builder.dead_letter_boxed(sink.open(&context).await?);
        }
        Ok(builder.to_boxed(self.to.open(&context).await?))
    }
}

/// `` `a`, `b` `` (or `none`).
fn quoted(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    quoted.join(", ")
}
