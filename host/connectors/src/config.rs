//! The connectors beyond the engine's own, one registration line each
//! (behind the cargo feature of its connector), and the registry the
//! `plumber` binary uses.
//!
//! The engine's config module is re-exported here, so that
//! `plumber::config` has the whole of it.

use std::path::Path;

pub use plumber_engine::config::*;

#[cfg(feature = "redb")]
use crate::state::RedbStateConfig;
#[cfg(feature = "redis")]
use crate::state::RedisStateConfig;
#[cfg(feature = "sled")]
use crate::state::{SledState, SledStateConfig};
#[cfg(feature = "http")]
use crate::streams::http::config::{HttpSinkConfig, HttpSourceConfig};
#[cfg(feature = "nats")]
use crate::streams::nats::config::{
    JetStreamSinkConfig, JetStreamSourceConfig, NatsSinkConfig, NatsSourceConfig,
};
#[cfg(feature = "sql")]
use crate::streams::sql::config::{SqlSinkConfig, SqlSourceConfig};
#[cfg(feature = "sql")]
use crate::streams::sql::lookup::SqlLookupConfig;

/// Adds what this build's features enable: HTTP, NATS, JetStream and SQL
/// sources and sinks, the Redis, sled and redb state backends, and sled in
/// `<name>.state` beside the config as the state of a config that names
/// none.
pub fn register_all(registry: &mut Registry) {
    #[cfg(feature = "http")]
    registry
        .source::<HttpSourceConfig>("http")
        .sink::<HttpSinkConfig>("http");
    #[cfg(feature = "nats")]
    registry
        .source::<NatsSourceConfig>("nats")
        .sink::<NatsSinkConfig>("nats")
        .source::<JetStreamSourceConfig>("jetstream")
        .sink::<JetStreamSinkConfig>("jetstream");
    #[cfg(feature = "sql")]
    registry
        .source::<SqlSourceConfig>("sql")
        .sink::<SqlSinkConfig>("sql")
        .lookup::<SqlLookupConfig>("sql");
    #[cfg(feature = "redis")]
    registry.state::<RedisStateConfig>("redis");
    #[cfg(feature = "redb")]
    registry.state::<RedbStateConfig>("redb");
    #[cfg(feature = "sled")]
    registry
        .state::<SledStateConfig>("sled")
        .default_state("sled", sled_beside_config);
    // Without any feature there is nothing to add.
    let _ = registry;
}

/// What the `plumber` binary knows: [`Registry::builtin`] and every
/// connector of [`register_all`], with sled (if built) in `<name>.state`
/// beside the config as the default state.
pub fn standard_registry() -> Registry {
    let mut registry = Registry::builtin();
    register_all(&mut registry);
    registry
}

/// Reading a pipeline config with the [`standard_registry`]: what
/// `PipelineConfig::load` and `PipelineConfig::parse` did when the engine
/// and the connectors were one crate (the engine reads configs with a
/// registry it is given: [`PipelineConfig::load_with`]).
pub trait ReadStandard: Sized {
    /// Reads and checks the config file at `file` with the connectors of
    /// [`standard_registry`], resolving relative paths against its
    /// directory.
    ///
    /// # Errors
    ///
    /// As [`PipelineConfig::load_with`].
    fn load(file: &Path) -> Result<Self, ConfigError>;

    /// Parses and checks config text with the connectors of
    /// [`standard_registry`]; `origin` names it in errors and relative
    /// paths are resolved against `base`.
    ///
    /// # Errors
    ///
    /// As [`PipelineConfig::parse_with`].
    fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError>;
}

impl ReadStandard for PipelineConfig {
    fn load(file: &Path) -> Result<Self, ConfigError> {
        PipelineConfig::load_with(&standard_registry(), file)
    }

    fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        PipelineConfig::parse_with(&standard_registry(), text, origin, base)
    }
}

/// `<base>/<pipeline>.state`, a sled directory.
#[cfg(feature = "sled")]
fn sled_beside_config(pipeline: &str, base: &Path) -> Box<dyn StateSpec> {
    Box::new(SledStateConfig {
        path: base.join(format!("{pipeline}.state")),
        cache_bytes: SledState::CACHE_BYTES,
    })
}
