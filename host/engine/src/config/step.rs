//! The steps of `"pipeline"`: WASM pipes, windows, command modules and
//! host executables. Steps are not pluggable connectors: the engine runs
//! each kind itself, so they are one enum here; a window's own fields are
//! [`WindowConfig`]'s, beside the windows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::strict::{self, object_only, tagged_by_type};
use super::FieldError;
use crate::join::JoinConfig;
use crate::pipeline::{RoutePredicate, Router};
use crate::runtime::{Capabilities, Grant, PipeLimits, ReadOnlyDir};
use crate::shuffle::ShuffleKey;
use crate::step::{OnError, WasmPipe};
use crate::window::WindowConfig;

object_only!(
    WasmStepConfig,
    CommandStepConfig,
    ExecStepConfig,
    RepartitionStepConfig,
    RouteStepConfig,
    RouteConfig,
    LookupStepConfig
);
tagged_by_type!(StepConfig);

/// One entry of `"pipeline"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "snake_case", remote = "Self")]
pub enum StepConfig {
    /// A WebAssembly component pipe.
    Wasm(WasmStepConfig),
    /// A native window.
    Window(WindowConfig),
    /// A native join of two inputs.
    Join(JoinConfig),
    /// A WASI preview 1 command module speaking the line protocol.
    Command(CommandStepConfig),
    /// A host executable speaking the line protocol (unsandboxed).
    Exec(ExecStepConfig),
    /// The keyed shuffle that splits a clustered pipeline into two stages.
    Repartition(RepartitionStepConfig),
    /// A graph's native router.
    Route(RouteStepConfig),
    /// A lookup join against an external table (SQL), through a cache.
    Lookup(LookupStepConfig),
}

impl StepConfig {
    /// The step's name.
    pub fn name(&self) -> &str {
        match self {
            StepConfig::Wasm(pipe) => &pipe.name,
            StepConfig::Window(window) => window.name(),
            StepConfig::Join(join) => &join.name,
            StepConfig::Command(command) => &command.name,
            StepConfig::Exec(exec) => &exec.name,
            StepConfig::Repartition(repartition) => &repartition.name,
            StepConfig::Route(route) => &route.name,
            StepConfig::Lookup(lookup) => &lookup.name,
        }
    }
}

/// `{"type": "lookup", ...}`: each event followed by the row its key finds
/// in an external table (docs/joins.md), through a cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct LookupStepConfig {
    /// The step's name (required, unique in the pipeline).
    pub name: String,
    /// The table: `{"type": "sql", "url": …, "query": …}` (required).
    pub table: LookupTableSection,
    /// `"inner"` (default: events whose key finds no row are dropped) or
    /// `"left"` (every event, its row after it when there is one).
    #[serde(default)]
    pub how: crate::join::JoinHow,
    /// How long a looked-up row (or its absence) is used, ms (default 60,000).
    #[serde(default = "default_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
    /// Most keys the cache holds (default 100,000).
    #[serde(default = "default_cache_max_keys")]
    pub cache_max_keys: usize,
}

fn default_cache_ttl_ms() -> u64 {
    crate::join::DEFAULT_CACHE_TTL_MS
}

fn default_cache_max_keys() -> usize {
    crate::join::DEFAULT_CACHE_MAX_KEYS
}

/// `table` of a lookup step: the section as read, then the table's config
/// once the connector registry has read it (when the pipeline config is).
#[derive(Debug, Clone)]
pub struct LookupTableSection {
    pub(crate) raw: serde_json::Value,
    pub(crate) resolved: Option<super::LookupConfig>,
}

impl LookupTableSection {
    /// The table's config (`None` before the registry has read it).
    pub fn config(&self) -> Option<&super::LookupConfig> {
        self.resolved.as_ref()
    }
}

impl<'de> Deserialize<'de> for LookupTableSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(LookupTableSection {
            raw: serde_json::Value::deserialize(deserializer)?,
            resolved: None,
        })
    }
}

impl LookupStepConfig {
    /// The cache its fields say.
    pub fn cache(&self) -> crate::join::LookupCache {
        crate::join::LookupCache {
            ttl: std::time::Duration::from_millis(self.cache_ttl_ms),
            max_keys: self.cache_max_keys,
        }
    }

    /// Checks the fields together.
    ///
    /// # Errors
    ///
    /// The field at fault and why.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.cache_max_keys == 0 {
            return Err(FieldError::new(
                "cache_max_keys",
                "expected at least 1 key (a lookup needs its batch's rows cached)",
            ));
        }
        Ok(())
    }
}

/// `{"type": "route", ...}`: a graph's native router (docs/graphs.md):
/// its outputs are `<name>.<route>` for each route and `<name>.<default>`.
/// Only in a graph (a config with `sources`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RouteStepConfig {
    /// The router's name (required, unique in the pipeline).
    pub name: String,
    /// The routes by name (required, at least one): an event goes to every
    /// route whose predicate it matches.
    pub routes: BTreeMap<String, RouteConfig>,
    /// The route of the events no route matches (default: none, they are
    /// dropped).
    #[serde(default)]
    pub default: Option<String>,
}

/// One route of a router: which events it takes. Exactly one of
/// `header`, `key` and `key_prefix`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RouteConfig {
    /// Events with this header (with the value `equals`, if given).
    #[serde(default)]
    pub header: Option<String>,
    /// The value the header must have (default: any).
    #[serde(default)]
    pub equals: Option<String>,
    /// Events whose key is exactly this (UTF-8) text.
    #[serde(default)]
    pub key: Option<String>,
    /// Events whose key starts with this (UTF-8) text.
    #[serde(default)]
    pub key_prefix: Option<String>,
}

impl RouteStepConfig {
    /// The router as the builder takes it.
    pub fn to_router(&self) -> Router {
        let mut router = Router::new(&self.name);
        for (name, route) in &self.routes {
            let predicate = match (&route.header, &route.equals, &route.key, &route.key_prefix) {
                (Some(header), Some(value), _, _) => {
                    RoutePredicate::header_equals(header.clone(), value.clone())
                }
                (Some(header), None, _, _) => RoutePredicate::HeaderPresent {
                    name: header.clone(),
                },
                (None, _, Some(key), _) => RoutePredicate::KeyEquals(key.clone().into_bytes()),
                (None, _, None, Some(prefix)) => {
                    RoutePredicate::KeyPrefix(prefix.clone().into_bytes())
                }
                // Refused by `check`.
                (None, _, None, None) => continue,
            };
            router = router.route(name.clone(), predicate);
        }
        if let Some(default) = &self.default {
            router = router.default_route(default.clone());
        }
        router
    }

    fn check(&self) -> Result<(), FieldError> {
        if self.routes.is_empty() {
            return Err(FieldError::new(
                "routes",
                "expected at least one route, e.g. {\"big\": {\"header\": \"size\", \"equals\": \"big\"}}",
            ));
        }
        let route_name = |name: &str| name.is_empty() || name.contains('.');
        for (name, route) in &self.routes {
            let at = format!("routes.{name}");
            if route_name(name) {
                return Err(FieldError::new(
                    at,
                    format!(
                        "`{name}` is not a route name: it needs at least one character and no `.`"
                    ),
                ));
            }
            let chosen = [
                route.header.is_some(),
                route.key.is_some(),
                route.key_prefix.is_some(),
            ]
            .into_iter()
            .filter(|set| *set)
            .count();
            if chosen != 1 {
                return Err(FieldError::new(
                    at,
                    "expected exactly one of `header` (with `equals`), `key` and `key_prefix`",
                ));
            }
            if route.equals.is_some() && route.header.is_none() {
                return Err(FieldError::new(
                    format!("{at}.equals"),
                    "`equals` is the value of `header`: it needs `header`",
                ));
            }
        }
        if let Some(default) = &self.default {
            if route_name(default) {
                return Err(FieldError::new(
                    "default",
                    format!("`{default}` is not a route name: it needs at least one character and no `.`"),
                ));
            }
            if self.routes.contains_key(default) {
                return Err(FieldError::new(
                    "default",
                    format!("`{default}` is also the name of a route: the default route needs its own name"),
                ));
            }
        }
        Ok(())
    }
}

/// `{"type": "repartition", "key_by": …}`: splits a clustered pipeline in
/// two stages joined by a partitioned JetStream stream, so that the steps
/// after it see each key in one partition (docs/cluster.md,
/// "Repartition"). Only in a config with `cluster`, at most once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct RepartitionStepConfig {
    /// The step's name (required, unique in the pipeline); it names the
    /// shuffle stream by default.
    pub name: String,
    /// What events are shuffled by (required): `"key"` or
    /// `{"field": "user"}`.
    pub key_by: ShuffleKey,
    /// The shuffle stream, which `plumber cluster init` creates; its
    /// subjects are `<stream>.<key>` (default: `<pipeline>-<step>`, with
    /// characters a stream name cannot have replaced).
    #[serde(default)]
    pub stream: Option<String>,
    /// When event-time windows follow the step: an upstream partition
    /// that sent no watermark for this long is left out of the watermark
    /// (the minimum over the upstream partitions), in ms (default 60 000).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
}

/// `{"type": "command", ...}`: a WASI preview 1 command module (e.g. Go's
/// `GOOS=wasip1` build) that reads one event per line on stdin and writes
/// one line per event on stdout; sandboxed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct CommandStepConfig {
    /// The step's name (required, unique in the pipeline).
    pub name: String,
    /// The core module file (required; relative: to the config's directory).
    pub module: PathBuf,
    /// Arguments after `argv[0]` (default none).
    #[serde(default)]
    pub args: Vec<String>,
    /// `memory_bytes` and `call_timeout_ms` (per batch) apply (defaults:
    /// see [`PipeLimits`]).
    #[serde(default, deserialize_with = "strict::optional_object")]
    pub limits: Option<PipeLimits>,
}

/// `{"type": "exec", ...}`: a host executable with the same line protocol,
/// NOT sandboxed: refused unless `"allow_unsandboxed": true`, and never in
/// a multi-tenant host.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct ExecStepConfig {
    /// The step's name (required, unique in the pipeline).
    pub name: String,
    /// The program (required): a path (relative: to the config's
    /// directory), or a bare name looked up on PATH.
    pub path: PathBuf,
    /// Its arguments (default none).
    #[serde(default)]
    pub args: Vec<String>,
    /// How long one batch may take, ms (default 10 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Must be `true` (default false): the program runs with the host's rights.
    #[serde(default)]
    pub allow_unsandboxed: bool,
}

/// `{"type": "wasm", ...}`: a pipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct WasmStepConfig {
    /// The pipe's name (required, unique in the pipeline; it keys the
    /// pipe's state).
    pub name: String,
    /// The component file (required; relative: to the config's directory).
    pub module: PathBuf,
    /// Passed to the guest's `init` as JSON text (default `{}`).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Optional WASI capabilities: `"clocks"`, `"random"`,
    /// `"filesystem_interfaces"` (default none).
    #[serde(default)]
    pub grants: Vec<Grant>,
    /// Host environment variables the guest may read, only these (default none).
    #[serde(default)]
    pub env: Vec<String>,
    /// One host directory the guest may read, never write:
    /// `{"host": "data", "guest": "/data"}` (default none).
    #[serde(default, deserialize_with = "strict::optional_object")]
    pub read_only_dir: Option<ReadOnlyDir>,
    /// Limits of one call (defaults: see [`PipeLimits`]).
    #[serde(default, deserialize_with = "strict::optional_object")]
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

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl StepConfig {
    /// Checks what the step's fields say together; `dead_letter`: whether
    /// the pipeline has a dead-letter sink. The error names the field
    /// within the step.
    pub(super) fn check(&self, dead_letter: bool) -> Result<(), FieldError> {
        match self {
            StepConfig::Lookup(lookup) => {
                lookup.check()?;
                match lookup.table.config() {
                    Some(table) => table
                        .check()
                        .map_err(|error| FieldError::new(error.path_in("table"), error.message)),
                    None => Ok(()),
                }
            }
            StepConfig::Wasm(pipe) if pipe.module.as_os_str().is_empty() => Err(FieldError::new(
                "module",
                "expected the path of a .wasm component",
            )),
            StepConfig::Wasm(pipe) => {
                if let Some((field, message)) =
                    pipe.limits.as_ref().and_then(PipeLimits::invalid_field)
                {
                    return Err(FieldError::new(format!("limits.{field}"), message));
                }
                if pipe.on_error.uses_dead_letter() && !dead_letter {
                    return Err(FieldError::new(
                        "on_error",
                        "failed events go to the dead-letter sink, but the config has no `dead_letter`",
                    ));
                }
                if pipe.watch_module_ms == Some(0) {
                    return Err(FieldError::new(
                        "watch_module_ms",
                        "expected a positive interval in milliseconds",
                    ));
                }
                if let Some(dir) = &pipe.read_only_dir {
                    if !dir.guest.starts_with('/') {
                        return Err(FieldError::new(
                            "read_only_dir.guest",
                            format!(
                                "expected an absolute guest path such as `/data`, not `{}`",
                                dir.guest
                            ),
                        ));
                    }
                }
                Ok(())
            }
            StepConfig::Command(command) => {
                if let Some((field, message)) =
                    command.limits.as_ref().and_then(PipeLimits::invalid_field)
                {
                    return Err(FieldError::new(format!("limits.{field}"), message));
                }
                Ok(())
            }
            StepConfig::Exec(exec) => {
                if !exec.allow_unsandboxed {
                    return Err(FieldError::new(
                        "allow_unsandboxed",
                        format!(
                            "`{}` would run outside the sandbox with the host's rights; \
                             set \"allow_unsandboxed\": true to allow it (never in a multi-tenant host)",
                            exec.path.display()
                        ),
                    ));
                }
                if exec.timeout_ms == Some(0) {
                    return Err(FieldError::new(
                        "timeout_ms",
                        "expected a positive number of milliseconds",
                    ));
                }
                Ok(())
            }
            StepConfig::Repartition(repartition) => {
                if let ShuffleKey::Field(field) = &repartition.key_by {
                    if field.is_empty() {
                        return Err(FieldError::new(
                            "key_by.field",
                            "expected the name of a field of the events' JSON values",
                        ));
                    }
                }
                if repartition.idle_timeout_ms == Some(0) {
                    return Err(FieldError::new(
                        "idle_timeout_ms",
                        "expected a positive number of milliseconds",
                    ));
                }
                if let Some(stream) = &repartition.stream {
                    if stream.is_empty()
                        || stream.chars().any(|c| {
                            c.is_whitespace()
                                || c.is_control()
                                || matches!(c, '.' | '*' | '>' | '/' | '\\')
                        })
                    {
                        return Err(FieldError::new(
                            "stream",
                            format!(
                                "`{stream}` is not a JetStream stream name: it needs at least one \
                                 character, and no whitespace, `.`, `*`, `>`, `/` or `\\`"
                            ),
                        ));
                    }
                }
                Ok(())
            }
            StepConfig::Route(route) => route.check(),
            StepConfig::Join(join) => {
                join.build()
                    .map_err(|error| FieldError::new(error.field, error.message))?;
                if join.late_to_dead_letter() && !dead_letter {
                    return Err(FieldError::new(
                        "late",
                        "late events go to the dead-letter sink, but the config has no `dead_letter`",
                    ));
                }
                Ok(())
            }
            StepConfig::Window(window) => {
                window
                    .build()
                    .map_err(|error| FieldError::new(error.field, error.message))?;
                if window.late_to_dead_letter() && !dead_letter {
                    return Err(FieldError::new(
                        "late",
                        "late events go to the dead-letter sink, but the config has no `dead_letter`",
                    ));
                }
                Ok(())
            }
        }
    }

    /// Makes the step's relative paths relative to `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        match self {
            StepConfig::Wasm(pipe) => {
                resolve(&mut pipe.module);
                if let Some(dir) = &mut pipe.read_only_dir {
                    resolve(&mut dir.host);
                }
            }
            StepConfig::Command(command) => resolve(&mut command.module),
            // A bare program name is looked up on PATH; a path with a
            // directory part is relative to the config.
            StepConfig::Exec(exec) if exec.path.components().count() > 1 => resolve(&mut exec.path),
            StepConfig::Window(window) => {
                if let Some(trigger) = window.trigger_mut() {
                    resolve(&mut trigger.module);
                }
                if let Some(aggregate) = window.aggregate_mut() {
                    resolve(&mut aggregate.module);
                }
            }
            StepConfig::Exec(_)
            | StepConfig::Join(_)
            | StepConfig::Repartition(_)
            | StepConfig::Route(_)
            | StepConfig::Lookup(_) => {}
        }
    }
}
