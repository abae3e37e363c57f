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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::{CheckpointPolicy, Delivery};
use crate::pipeline::{
    GraphPlace, GraphShape, GraphStepShape, Pipeline, PipelineBuilder, Publish, StepSpec,
};
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
    ConnectorSpec, LookupConfig, LookupSpec, OpenContext, OutputGuarantee, Registry, SinkConfig,
    SinkSpec, SourceConfig, SourceSpec, StateConfig, StateSpec,
};
pub use step::{
    CommandStepConfig, ExecStepConfig, LookupStepConfig, LookupTableSection, RepartitionStepConfig,
    RouteConfig, RouteStepConfig, StepConfig, WasmStepConfig,
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
    /// `from`: the source of a line (`None` in a graph, which has `sources`).
    pub from: Option<SourceConfig>,
    /// `pipeline`: the steps, in order (default none).
    pub pipeline: Vec<StepConfig>,
    /// `to`: the sink of a line (`None` in a graph, which has `sinks`).
    pub to: Option<SinkConfig>,
    /// A graph's sources, sinks and the inputs of its steps (`None` for a
    /// line): docs/graphs.md.
    pub graph: Option<GraphConfig>,
    /// `dead_letter`: where events that cannot go on are sent (late window
    /// events with `"late": "dead_letter"`, events a pipe failed on under
    /// `on_error`), with headers saying why (default none).
    pub dead_letter: Option<SinkConfig>,
    /// `cluster`: the pipeline is partitioned over the workers of a NATS
    /// JetStream cluster (`plumber worker`); `plumber run` refuses it
    /// (default none).
    pub cluster: Option<ClusterConfig>,
}

/// A graph's parts of a pipeline config (docs/graphs.md).
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// `sources`: the sources by name, in name order.
    pub sources: Vec<(String, SourceConfig)>,
    /// `pipeline[i].from`: the outputs each step reads, in `pipeline`'s order.
    pub inputs: Vec<Vec<String>>,
    /// `sinks`: the sinks by name, in name order.
    pub sinks: Vec<GraphSinkConfig>,
}

/// One entry of `sinks`.
#[derive(Debug, Clone)]
pub struct GraphSinkConfig {
    /// Its name (the key in `sinks`).
    pub name: String,
    /// `from`: the outputs it writes.
    pub from: Vec<String>,
    /// The sink itself (the entry's other fields).
    pub sink: SinkConfig,
}

/// An entry of `pipeline`: a step, and the inputs it names (a graph's).
struct StepEntry {
    from: Option<Vec<String>>,
    step: StepConfig,
}

impl<'de> Deserialize<'de> for StepEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (from, rest) = strict::take_inputs(deserializer)?;
        let step = strict::read_rest(rest)?;
        Ok(StepEntry { from, step })
    }
}

/// An entry of `sinks`: a sink section and its `from`.
struct SinkEntry {
    from: Option<Vec<String>>,
    sink: Tagged,
}

impl<'de> Deserialize<'de> for SinkEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (from, rest) = strict::take_inputs(deserializer)?;
        let sink = strict::read_rest(rest)?;
        Ok(SinkEntry { from, sink })
    }
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
    #[serde(default)]
    from: Option<Tagged>,
    #[serde(default)]
    sources: Option<BTreeMap<String, Tagged>>,
    #[serde(default)]
    pipeline: Vec<StepEntry>,
    #[serde(default)]
    to: Option<Tagged>,
    #[serde(default)]
    sinks: Option<BTreeMap<String, SinkEntry>>,
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
        let (from, to, graph, mut pipeline) = read_shape(registry, &fields, base, &invalid)?;
        // A lookup step's table is a connector section, read here.
        for (index, step) in pipeline.iter_mut().enumerate() {
            if let StepConfig::Lookup(lookup) = step {
                let at = format!("pipeline[{index}].table");
                let section: Tagged = serde_json::from_value(lookup.table.raw.clone())
                    .map_err(|error| invalid(&at, &cap_quoted(&error.to_string())))?;
                let table = registry
                    .read_lookup(section, base)
                    .map_err(|error| in_section(&at, error))?;
                lookup.table.resolved = Some(table);
            }
        }
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
            pipeline,
            to,
            graph,
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
        for (at, source) in self.sources() {
            source.check().map_err(|error| in_section(&at, error))?;
        }
        for (at, sink) in self.sinks() {
            sink.check().map_err(|error| in_section(&at, error))?;
        }
        if let Some(graph) = &self.graph {
            self.check_graph(graph, origin)?;
        }
        if let Some(cluster) = &self.cluster {
            cluster
                .check()
                .map_err(|error| in_section("cluster", error))?;
            // A partition moves between workers with its position and state.
            let Some(from) = &self.from else {
                return Err(invalid(
                    "cluster",
                    "a clustered pipeline is a line (`from`, `pipeline`, `to`): a graph runs in \
                     one process"
                        .into(),
                ));
            };
            if from.type_name() != "jetstream" {
                return Err(invalid(
                    "from.type",
                    format!(
                        "a pipeline with `cluster` reads a partitioned JetStream stream: expected \
                         `jetstream`, got `{}`",
                        from.type_name()
                    ),
                ));
            }
            if !matches!(self.state.type_name(), "redis" | "sled" | "redb") {
                return Err(invalid(
                    "state.type",
                    format!(
                        "a pipeline with `cluster` keeps its state where the next owner of a \
                         partition finds it: expected `redis` (or `sled` or `redb` for a single \
                         worker), got `{}`",
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

    /// The sources with their JSON paths: `("from", from)` for a line,
    /// `("sources.<name>", …)` for each of a graph's.
    pub fn sources(&self) -> Vec<(String, &SourceConfig)> {
        let mut sources: Vec<(String, &SourceConfig)> = self
            .from
            .iter()
            .map(|source| ("from".to_owned(), source))
            .collect();
        if let Some(graph) = &self.graph {
            sources.extend(
                graph
                    .sources
                    .iter()
                    .map(|(name, source)| (format!("sources.{name}"), source)),
            );
        }
        sources
    }

    /// The sinks with their JSON paths: `("to", to)` for a line,
    /// `("sinks.<name>", …)` for each of a graph's, then `("dead_letter",
    /// …)` if there is one.
    pub fn sinks(&self) -> Vec<(String, &SinkConfig)> {
        let mut sinks: Vec<(String, &SinkConfig)> =
            self.to.iter().map(|sink| ("to".to_owned(), sink)).collect();
        if let Some(graph) = &self.graph {
            sinks.extend(
                graph
                    .sinks
                    .iter()
                    .map(|sink| (format!("sinks.{}", sink.name), &sink.sink)),
            );
        }
        sinks.extend(
            self.dead_letter
                .iter()
                .map(|sink| ("dead_letter".to_owned(), sink)),
        );
        sinks
    }

    /// Checks a graph's shape and what a graph does not run with; the error
    /// names the JSON path at fault.
    fn check_graph(&self, graph: &GraphConfig, origin: &str) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: String| ConfigError::Invalid {
            file: origin.to_owned(),
            path: path.to_owned(),
            message: cap_quoted(&message),
        };
        if self.delivery == Delivery::AtMostOnce {
            return Err(invalid(
                "delivery",
                "a graph runs `at_least_once` or `exactly_once`: `at_most_once` would commit each \
                 source's position ahead of processing, which a graph does not do"
                    .into(),
            ));
        }
        if self.publish == Publish::AfterCommit {
            return Err(invalid(
                "publish",
                "a graph publishes `before_commit`: `after_commit` is for a line's one sink".into(),
            ));
        }
        let routes: Vec<Option<Vec<&str>>> = self
            .pipeline
            .iter()
            .map(|step| match step {
                StepConfig::Route(route) => Some(
                    route
                        .routes
                        .keys()
                        .map(String::as_str)
                        .chain(route.default.as_deref())
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        let shape = GraphShape {
            sources: graph
                .sources
                .iter()
                .map(|(name, _)| name.as_str())
                .collect(),
            nodes: self
                .pipeline
                .iter()
                .zip(&graph.inputs)
                .zip(routes)
                .map(|((step, inputs), routes)| GraphStepShape {
                    name: step.name(),
                    inputs,
                    routes,
                })
                .collect(),
            sinks: graph
                .sinks
                .iter()
                .map(|sink| (sink.name.as_str(), sink.from.as_slice()))
                .collect(),
        };
        let Err(error) = shape.check() else {
            return self.check_join_inputs(graph, origin);
        };
        let source = |index: usize| graph.sources.get(index).map_or("", |(name, _)| name);
        let sink = |index: usize| graph.sinks.get(index).map_or("", |sink| &sink.name);
        let path = match error.place {
            GraphPlace::Sources => "sources".to_owned(),
            GraphPlace::Sinks => "sinks".to_owned(),
            GraphPlace::Source(index) => format!("sources.{}", source(index)),
            GraphPlace::Node(index) => format!("pipeline[{index}].name"),
            GraphPlace::NodeFrom(index) => format!("pipeline[{index}].from"),
            GraphPlace::NodeInput(index, input) => format!("pipeline[{index}].from[{input}]"),
            GraphPlace::NodeRoute(index, route) => match self.pipeline.get(index) {
                Some(StepConfig::Route(config)) => match config.routes.keys().nth(route) {
                    Some(name) => format!("pipeline[{index}].routes.{name}"),
                    None => format!("pipeline[{index}].default"),
                },
                _ => format!("pipeline[{index}]"),
            },
            GraphPlace::SinkFrom(index) => format!("sinks.{}.from", sink(index)),
            GraphPlace::SinkInput(index, input) => format!("sinks.{}.from[{input}]", sink(index)),
        };
        Err(invalid(&path, error.message))
    }

    /// Checks that each join step of a graph joins two of its own inputs:
    /// `left` and `right` are read from the `plumber-input` header, which
    /// only carries the names in the step's `from`, so any other name would
    /// match no event.
    fn check_join_inputs(&self, graph: &GraphConfig, origin: &str) -> Result<(), ConfigError> {
        for (index, (step, inputs)) in self.pipeline.iter().zip(&graph.inputs).enumerate() {
            let StepConfig::Join(join) = step else {
                continue;
            };
            for (field, name) in [("left", &join.left), ("right", &join.right)] {
                if !inputs.contains(name) {
                    let known: Vec<String> = inputs.iter().map(|i| format!("`{i}`")).collect();
                    return Err(ConfigError::Invalid {
                        file: origin.to_owned(),
                        path: format!("pipeline[{index}].{field}"),
                        message: cap_quoted(&format!(
                            "`{name}` is not one of the step's inputs {}",
                            known.join(", ")
                        )),
                    });
                }
            }
        }
        Ok(())
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
        let policy = self.checkpoint_policy();
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
        let builder = self.common_builder(state, policy);
        let mut builder = match &self.graph {
            Some(graph) => self.graph_builder(builder, graph, &context).await?,
            None => self.line_builder(builder, &context).await?,
        };
        if let Some(sink) = &self.dead_letter {
            builder = builder.dead_letter_boxed(sink.open(&context).await?);
        }
        Ok(builder)
    }

    /// A builder for this pipeline's steps on `state` between `source` and
    /// `sink` instead of its own `from` and `to`, with `dead_letter` (when
    /// the config has a dead-letter sink) instead of its own: what
    /// `plumber test` runs. Nothing the config names is opened.
    ///
    /// # Errors
    ///
    /// The config is a graph (it has no one source and sink to replace),
    /// or has a repartition step.
    pub fn replay_builder(
        &self,
        state: SharedState,
        source: Box<dyn crate::streams::Source>,
        sink: Box<dyn crate::streams::Sink>,
        dead_letter: Box<dyn crate::streams::Sink>,
    ) -> Result<PipelineBuilder, StreamError> {
        if self.graph.is_some() {
            return Err(cannot_replay(
                "a graph (`sources`, `sinks`): only a line's `from` and `to` can be replaced"
                    .to_owned(),
            ));
        }
        if let Some(StepConfig::Repartition(repartition)) = self
            .pipeline
            .iter()
            .find(|step| matches!(step, StepConfig::Repartition(_)))
        {
            return Err(cannot_replay(format!(
                "the repartition step `{}` runs only in a clustered pipeline",
                repartition.name
            )));
        }
        let mut builder = self
            .common_builder(state, self.checkpoint_policy())
            .from_boxed(source);
        for step in &self.pipeline {
            if let Some(spec) = step_spec(step) {
                builder = builder.then(spec);
            }
        }
        if self.dead_letter.is_some() {
            builder = builder.dead_letter_boxed(dead_letter);
        }
        Ok(builder.to_boxed(sink))
    }

    fn checkpoint_policy(&self) -> CheckpointPolicy {
        CheckpointPolicy {
            interval: self.checkpoint.interval_ms.map(Duration::from_millis),
            every_events: self.checkpoint.every_events,
            on_window_close: self.checkpoint.on_window_close,
            max_pending_keys: self.checkpoint.max_pending_keys,
            max_pending_bytes: self.checkpoint.max_pending_bytes,
        }
    }

    /// The builder's settings every way of running the config shares.
    fn common_builder(&self, state: SharedState, policy: CheckpointPolicy) -> PipelineBuilder {
        Pipeline::builder(&self.name)
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
    }

    /// A line: `from`, the steps in order, `to`.
    async fn line_builder(
        &self,
        mut builder: PipelineBuilder,
        context: &OpenContext<'_>,
    ) -> Result<PipelineBuilder, StreamError> {
        let (Some(from), Some(to)) = (&self.from, &self.to) else {
            return Err(not_read("a line without `from` or `to`"));
        };
        builder = builder.from_boxed(from.open(context).await?);
        for step in &self.pipeline {
            if let StepConfig::Lookup(lookup) = step {
                builder = builder.then(lookup_spec(lookup, context).await?);
            } else if let Some(spec) = step_spec(step) {
                builder = builder.then(spec);
            }
        }
        Ok(builder.to_boxed(to.open(context).await?))
    }

    /// A graph: its named sources, its steps with their inputs, its named sinks.
    async fn graph_builder(
        &self,
        mut builder: PipelineBuilder,
        graph: &GraphConfig,
        context: &OpenContext<'_>,
    ) -> Result<PipelineBuilder, StreamError> {
        for (name, source) in &graph.sources {
            builder = builder.source_boxed(name, source.open(context).await?);
        }
        for (step, inputs) in self.pipeline.iter().zip(&graph.inputs) {
            builder = match step {
                StepConfig::Route(route) => builder.route_from(inputs, route.to_router()),
                StepConfig::Lookup(lookup) => {
                    builder.then_from(inputs, lookup_spec(lookup, context).await?)
                }
                other => match step_spec(other) {
                    Some(spec) => builder.then_from(inputs, spec),
                    None => builder,
                },
            };
        }
        for sink in &graph.sinks {
            builder = builder.to_from_boxed(&sink.name, &sink.from, sink.sink.open(context).await?);
        }
        Ok(builder)
    }
}

/// A config `PipelineConfig::replay_builder` cannot run.
fn cannot_replay(what: String) -> StreamError {
    StreamError::Io {
        stream: "pipeline config".to_owned(),
        action: "replay",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, what),
    }
}

/// A config that `PipelineConfig::parse_with` would not have read.
fn not_read(what: &str) -> StreamError {
    StreamError::Io {
        stream: "pipeline config".to_owned(),
        action: "open",
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what}: the config was not read by `PipelineConfig::parse_with`"),
        ),
    }
}

/// A lookup step, its table opened.
async fn lookup_spec(
    lookup: &LookupStepConfig,
    context: &OpenContext<'_>,
) -> Result<StepSpec, StreamError> {
    let Some(table) = lookup.table.config() else {
        return Err(not_read("a lookup step whose table was not read"));
    };
    let how = match lookup.how {
        crate::join::JoinHow::Inner => crate::join::How::Inner,
        crate::join::JoinHow::Left => crate::join::How::Left,
    };
    let step = crate::join::RemoteLookupStep::new(
        &lookup.name,
        table.open(context).await?,
        how,
        lookup.cache(),
    );
    Ok(StepSpec::Ready(Box::new(step)))
}

/// A step as the builder takes it (`None`: a kind the builder does not
/// take this way, refused when the config was read).
fn step_spec(step: &StepConfig) -> Option<StepSpec> {
    match step {
        StepConfig::Wasm(pipe) => Some(pipe.to_pipe().into()),
        StepConfig::Command(command) => Some(
            crate::pipeline::CommandPipe {
                name: command.name.clone(),
                module: command.module.clone(),
                args: command.args.clone(),
                limits: command.limits.clone().unwrap_or_default(),
            }
            .into(),
        ),
        StepConfig::Exec(exec) => Some(
            crate::pipeline::ExecPipe {
                name: exec.name.clone(),
                path: exec.path.clone(),
                args: exec.args.clone(),
                timeout: Duration::from_millis(exec.timeout_ms.unwrap_or(10_000)),
                allow_unsandboxed: exec.allow_unsandboxed,
            }
            .into(),
        ),
        // `check` has validated every window when the config was read.
        StepConfig::Window(window) => window.build().ok().map(Into::into),
        // `check` has validated every join when the config was read.
        StepConfig::Join(join) => join.build().ok().map(Into::into),
        // Refused in `builder`; a router only in a graph; a lookup opens
        // its table (`lookup_spec`).
        StepConfig::Repartition(_) | StepConfig::Route(_) | StepConfig::Lookup(_) => None,
    }
}

/// The line or graph parts of a config as read: `from`, `to`, the graph,
/// and the steps. Refuses a mix of a line's fields and a graph's, a graph
/// step without `from`, a line's step with one, and a router in a line.
type ShapeParts = (
    Option<SourceConfig>,
    Option<SinkConfig>,
    Option<GraphConfig>,
    Vec<StepConfig>,
);

fn read_shape(
    registry: &Registry,
    fields: &PipelineFields,
    base: &Path,
    invalid: &dyn Fn(&str, &str) -> ConfigError,
) -> Result<ShapeParts, ConfigError> {
    let in_section =
        |at: &str, (inner, message): (String, String)| invalid(&strict::join(at, &inner), &message);
    match (&fields.from, &fields.sources) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "sources",
                "`from` is the one source of a line and `sources` names a graph's: use one or \
                 the other",
            ))
        }
        (None, None) => {
            return Err(invalid(
                "from",
                "missing field `from` (the source; or `sources` for a graph)",
            ))
        }
        _ => {}
    }
    match (&fields.to, &fields.sinks, &fields.sources) {
        (Some(_), Some(_), _) => {
            return Err(invalid(
                "sinks",
                "`to` is the one sink of a line and `sinks` names a graph's: use one or the other",
            ))
        }
        (Some(_), None, Some(_)) => {
            return Err(invalid(
                "to",
                "a graph (`sources`) names its sinks in `sinks`, each with the `from` it writes",
            ))
        }
        (None, Some(_), None) => {
            return Err(invalid(
                "sinks",
                "a line (`from`) has one sink, `to`; a graph names its sources in `sources`",
            ))
        }
        (None, None, _) => {
            return Err(invalid(
                if fields.sources.is_some() {
                    "sinks"
                } else {
                    "to"
                },
                if fields.sources.is_some() {
                    "missing field `sinks` (a graph's sinks by name)"
                } else {
                    "missing field `to` (the sink; or `sinks` for a graph)"
                },
            ))
        }
        _ => {}
    }
    let steps: Vec<StepConfig> = fields
        .pipeline
        .iter()
        .map(|entry| entry.step.clone())
        .collect();
    let Some(sources) = &fields.sources else {
        // A line.
        for (index, entry) in fields.pipeline.iter().enumerate() {
            if entry.from.is_some() {
                return Err(invalid(
                    &format!("pipeline[{index}].from"),
                    "a line's step reads the step before it: `from` names a step's inputs in a \
                     graph (a config with `sources` and `sinks`)",
                ));
            }
            if matches!(entry.step, StepConfig::Route(_)) {
                return Err(invalid(
                    &format!("pipeline[{index}].type"),
                    "a `route` step sends events to named outputs that later steps and sinks \
                     read: it belongs to a graph (a config with `sources` and `sinks`)",
                ));
            }
        }
        let (Some(from), Some(to)) = (&fields.from, &fields.to) else {
            return Err(invalid("from", "missing field `from`"));
        };
        let from = registry
            .read_source(from.clone(), base)
            .map_err(|error| in_section("from", error))?;
        let to = registry
            .read_sink(to.clone(), base)
            .map_err(|error| in_section("to", error))?;
        return Ok((Some(from), Some(to), None, steps));
    };
    if fields.cluster.is_some() {
        return Err(invalid(
            "cluster",
            "a clustered pipeline is a line (`from`, `pipeline`, `to`): a graph runs in one process",
        ));
    }
    let mut graph_sources = Vec::with_capacity(sources.len());
    for (name, section) in sources {
        let at = format!("sources.{name}");
        let source = registry
            .read_source(section.clone(), base)
            .map_err(|error| in_section(&at, error))?;
        graph_sources.push((name.clone(), source));
    }
    let mut inputs = Vec::with_capacity(fields.pipeline.len());
    for (index, entry) in fields.pipeline.iter().enumerate() {
        if matches!(entry.step, StepConfig::Repartition(_)) {
            return Err(invalid(
                &format!("pipeline[{index}].type"),
                "a `repartition` step belongs to a clustered line, not to a graph",
            ));
        }
        let Some(from) = &entry.from else {
            return Err(invalid(
                &format!("pipeline[{index}].from"),
                "missing field `from`: each step of a graph names the outputs it reads \
                 (sources, steps, `<router>.<route>`)",
            ));
        };
        inputs.push(from.clone());
    }
    let mut graph_sinks = Vec::new();
    for (name, entry) in fields.sinks.iter().flatten() {
        let at = format!("sinks.{name}");
        let Some(from) = &entry.from else {
            return Err(invalid(
                &format!("{at}.from"),
                "missing field `from`: each sink of a graph names the outputs it writes",
            ));
        };
        let sink = registry
            .read_sink(entry.sink.clone(), base)
            .map_err(|error| in_section(&at, error))?;
        graph_sinks.push(GraphSinkConfig {
            name: name.clone(),
            from: from.clone(),
            sink,
        });
    }
    let graph = GraphConfig {
        sources: graph_sources,
        inputs,
        sinks: graph_sinks,
    };
    Ok((None, None, Some(graph), steps))
}

/// `` `a`, `b` `` (or `none`).
fn quoted(names: &[&str]) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    quoted.join(", ")
}
