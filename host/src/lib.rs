//! plumber: data pipelines and stream processing whose pipe logic runs as
//! WebAssembly components.
//!
//! A [`pipeline::Pipeline`] reads batches of [`Event`]s from a source, passes
//! them through steps (WASM pipes, native steps) and writes them to a sink.
//! Pipes keep key/value state through host functions; the host saves that
//! state and the source's position together at each checkpoint, so a
//! restarted pipeline resumes where the last checkpoint left it.
//!
//! This crate is what an embedder links. It puts three crates under one
//! roof, with one module per concept of the design brief:
//!
//! | crate | modules |
//! | --- | --- |
//! | `plumber-engine` | [`pipeline`], [`step`], [`command`], [`checkpoint`], [`state`] (trait, memory backend), [`window`], [`join`], [`runtime`], [`streams`] (traits, array, channel, file, stdout), [`config`], [`dead_letter`], [`tenant`], [`swap`], [`shuffle`] (the keyed shuffle's keys and subject tokens), [`retry`] (the backoff policy of every retry), [`histogram`] (lock-free histograms the engine records into) |
//! | `plumber-connectors` | [`streams::nats`], [`streams::http`], [`streams::sql`], [`state::RedisState`], [`state::SledState`] and their configs, [`config::register_all`]: each behind the cargo feature of its name (`nats`, `http`, `sql`, `redis`, `sled`; all on by default) |
//! | `plumber-control` | [`supervisor`], [`admin`], [`metrics`] |
//!
//! The `plumber` binary, `plumber bench` and `plumber build` are the
//! `plumber-cli` crate, not part of this library.
//!
//! A pipeline config read with every connector of this build:
//! `PipelineConfig::load(path)` with [`config::ReadStandard`] in scope.

pub use plumber_connectors::{config, state, streams};
pub use plumber_control::{admin, metrics, supervisor};
pub use plumber_engine::{
    checkpoint, command, dead_letter, histogram, join, pipeline, retry, runtime, shuffle, step,
    swap, tenant, window,
};
pub use plumber_engine::{Batch, ErrorChain, Event, PipeError, WindowInfo};
