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

use crate::checkpoint::CheckpointPolicy;
use crate::pipeline::{Pipeline, PipelineBuilder};
use crate::runtime::Grant;
use crate::state::{MemoryState, SharedState, SledState, StateError};
use crate::step::WasmPipe;
use crate::streams::{ArraySource, DiscardSink, FileSink, FileSource, StdoutSink};

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
    /// The state backend (default: sled in `<name>.state` beside the config).
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// When to checkpoint (default: every 1000 ms, and at the end).
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
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
}

fn default_batch_size() -> usize {
    1024
}

/// `"state"`: where pipe state and checkpoints live.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StateConfig {
    /// In the process's memory: lost at exit.
    #[serde(rename = "memory")]
    Memory {},
    /// An embedded sled database directory.
    Sled {
        /// The directory.
        path: PathBuf,
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
}

fn default_interval_ms() -> Option<u64> {
    Some(1000)
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            interval_ms: default_interval_ms(),
            every_events: None,
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
    },
}

/// One entry of `"pipeline"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StepConfig {
    /// A WebAssembly component pipe.
    Wasm {
        /// The pipe's name (unique in the pipeline; it keys the pipe's state).
        name: String,
        /// The component file.
        module: PathBuf,
        /// Passed to the guest's `init` as JSON text.
        #[serde(default = "empty_object")]
        config: serde_json::Value,
        /// Optional WASI capabilities: `"clocks"`, `"random"`.
        #[serde(default)]
        grants: Vec<Grant>,
    },
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
    },
    /// Drops events (for pipelines run for their state, and benchmarks).
    Discard {},
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
        let mut names = std::collections::HashSet::new();
        for (index, step) in self.pipeline.iter().enumerate() {
            let StepConfig::Wasm { name, module, .. } = step;
            if name.trim().is_empty() {
                return Err(invalid(
                    &format!("pipeline[{index}].name"),
                    "expected a non-empty pipe name".into(),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(invalid(
                    &format!("pipeline[{index}].name"),
                    format!("pipe name `{name}` is used twice; names key each pipe's state and must be unique"),
                ));
            }
            if module.as_os_str().is_empty() {
                return Err(invalid(
                    &format!("pipeline[{index}].module"),
                    "expected the path of a .wasm component".into(),
                ));
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
            Some(StateConfig::Memory {}) => {}
            None => {
                self.state = Some(StateConfig::Sled {
                    path: base.join(format!("{}.state", self.name)),
                })
            }
        }
        if let SourceConfig::File { path } = &mut self.from {
            resolve(path);
        }
        for step in &mut self.pipeline {
            let StepConfig::Wasm { module, .. } = step;
            resolve(module);
        }
        if let SinkConfig::File { path } = &mut self.to {
            resolve(path);
        }
    }

    /// The JSON path of the `module` field of the pipe called `name`.
    pub fn module_field(&self, name: &str) -> Option<String> {
        self.pipeline
            .iter()
            .position(|step| {
                let StepConfig::Wasm { name: n, .. } = step;
                n == name
            })
            .map(|index| format!("pipeline[{index}].module"))
    }

    /// Opens the state backend this config names.
    ///
    /// # Errors
    ///
    /// The backend cannot be opened.
    pub fn open_state(&self) -> Result<SharedState, StateError> {
        Ok(match &self.state {
            Some(StateConfig::Sled { path }) => Arc::new(SledState::open(path)?),
            Some(StateConfig::Memory {}) | None => Arc::new(MemoryState::new()),
        })
    }

    /// A builder for this pipeline on `state`.
    pub fn builder(&self, state: SharedState) -> PipelineBuilder {
        let policy = CheckpointPolicy {
            interval: self.checkpoint.interval_ms.map(Duration::from_millis),
            every_events: self.checkpoint.every_events,
        };
        let mut builder = Pipeline::builder(&self.name)
            .state(state)
            .checkpoint(policy)
            .batch_size(self.batch_size);
        builder = match &self.from {
            SourceConfig::Array { values } => {
                builder.from(ArraySource::from_strings(values.clone()))
            }
            SourceConfig::File { path } => builder.from(FileSource::new(path)),
        };
        for step in &self.pipeline {
            let StepConfig::Wasm {
                name,
                module,
                config,
                grants,
            } = step;
            let mut pipe = WasmPipe::new(name, module).config(config.clone());
            for grant in grants {
                pipe = pipe.grant(*grant);
            }
            builder = builder.then(pipe);
        }
        match &self.to {
            SinkConfig::Stdout {} => builder.to(StdoutSink::new()),
            SinkConfig::File { path } => builder.to(FileSink::new(path)),
            SinkConfig::Discard {} => builder.to(DiscardSink::new()),
        }
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
        let StepConfig::Wasm {
            module,
            config: pipe_config,
            ..
        } = &config.pipeline[0];
        assert_eq!(module, Path::new("/base/u.wasm"));
        assert_eq!(pipe_config, &serde_json::json!({}));
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
