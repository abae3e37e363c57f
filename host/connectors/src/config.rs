//! The connectors beyond the engine's own, one registration line each.
//!
//! This is the part of the registry that belongs with the connectors
//! rather than the engine (each line will sit behind the cargo feature of
//! its connector once they live in a crate of their own).

use std::path::Path;

use super::registry::{Registry, StateSpec};
use crate::state::{RedisStateConfig, SledStateConfig};
use crate::streams::http::config::{HttpSinkConfig, HttpSourceConfig};
use crate::streams::nats::config::{
    JetStreamSinkConfig, JetStreamSourceConfig, NatsSinkConfig, NatsSourceConfig,
};
use crate::streams::sql::config::{SqlSinkConfig, SqlSourceConfig};

/// Adds HTTP, NATS, JetStream and SQL sources and sinks, the Redis and
/// sled state backends, and sled in `<name>.state` beside the config as the
/// state of a config that names none.
pub fn register_all(registry: &mut Registry) {
    registry
        .source::<HttpSourceConfig>("http")
        .sink::<HttpSinkConfig>("http")
        .source::<NatsSourceConfig>("nats")
        .sink::<NatsSinkConfig>("nats")
        .source::<JetStreamSourceConfig>("jetstream")
        .sink::<JetStreamSinkConfig>("jetstream")
        .source::<SqlSourceConfig>("sql")
        .sink::<SqlSinkConfig>("sql")
        .state::<RedisStateConfig>("redis")
        .state::<SledStateConfig>("sled")
        .default_state("sled", sled_beside_config);
}

/// `<base>/<pipeline>.state`, a sled directory.
fn sled_beside_config(pipeline: &str, base: &Path) -> Box<dyn StateSpec> {
    Box::new(SledStateConfig {
        path: base.join(format!("{pipeline}.state")),
    })
}
