//! Sources and sinks that need a library or a server: HTTP, NATS (core
//! and JetStream) and SQL, each with its config type in `<name>/config.rs`;
//! and the engine's streams module (the [`Source`] and [`Sink`] traits,
//! array, channel, file, stdout), re-exported.

pub use plumber_engine::streams::*;

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "sql")]
pub mod sql;
