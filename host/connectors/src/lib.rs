//! plumber's connectors beyond the engine's own, each behind a cargo
//! feature (all on by default):
//!
//! | feature | what |
//! | --- | --- |
//! | `nats` | NATS core and JetStream sources and sinks ([`streams::nats`]) |
//! | `http` | the listening HTTP source and the POSTing HTTP sink ([`streams::http`]) |
//! | `sql` | SQL sources and sinks through sqlx: SQLite, PostgreSQL ([`streams::sql`]) |
//! | `redis` | the Redis state backend ([`state::RedisState`]) |
//! | `sled` | the sled state backend ([`state::SledState`]), the binary's default state |
//!
//! [`register_all`] adds to a [`config::Registry`] what the features
//! enable. The modules [`config`], [`state`] and [`streams`] re-export the
//! engine's modules of the same names beside their own connectors, so
//! that the `plumber` crate has one module of each.

pub mod config;
pub mod state;
pub mod streams;

pub use config::{register_all, standard_registry, ReadStandard};
