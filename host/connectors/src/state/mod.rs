//! State backends that need a library or a server: Redis, sled and redb, each
//! with its config type in `<backend>/config.rs`; and the engine's state
//! module (the [`StateBackend`] trait, the memory backend), re-exported.

pub use plumber_engine::state::*;

#[cfg(feature = "redb")]
mod redb_backend;
#[cfg(feature = "redis")]
mod redis_backend;
#[cfg(feature = "sled")]
mod sled_backend;

#[cfg(feature = "redb")]
pub use redb_backend::config::RedbStateConfig;
#[cfg(feature = "redb")]
pub use redb_backend::RedbState;
#[cfg(feature = "redis")]
pub use redis_backend::config::RedisStateConfig;
#[cfg(feature = "redis")]
pub use redis_backend::{RedisOptions, RedisState};
#[cfg(feature = "sled")]
pub use sled_backend::config::SledStateConfig;
#[cfg(feature = "sled")]
pub use sled_backend::SledState;
