//! plumber's control plane: many pipelines of many tenants in one process
//! ([`supervisor`]), the admin and metrics HTTP server ([`admin`]) and the
//! Prometheus registry it serves ([`metrics`]), the web console it serves
//! ([`console`]). Tenants' quotas and hot
//! swap are the engine's (`plumber_engine::tenant`, `plumber_engine::swap`):
//! the state layer enforces quotas at each write, and a swap happens at a
//! checkpoint barrier.

pub mod admin;
pub mod console;
pub mod metrics;
pub mod supervisor;
