//! plumber's engine: data pipelines and stream processing whose pipe logic
//! runs as WebAssembly components.
//!
//! A [`pipeline::Pipeline`] reads batches of [`Event`]s from a source, passes
//! them through steps (WASM pipes, native steps) and writes them to a sink.
//! Pipes keep key/value state through host functions; the host saves that
//! state and the source's position together at each checkpoint, so a
//! restarted pipeline resumes where the last checkpoint left it.
//!
//! The modules follow the words of the design brief:
//!
//! | module | what lives there |
//! | --- | --- |
//! | [`config`] | the JSON config of a pipeline and of a host, its validation, the connector registry |
//! | [`runtime`] | loading components, the compile cache, the host side of the WIT |
//! | [`step`] | the `Step` trait: WASM pipes and native steps |
//! | [`command`] | command pipes: WASI command modules and host executables |
//! | [`state`] | the `StateBackend` trait, write sets, namespaces, the memory backend |
//! | [`streams`] | the `Source` and `Sink` traits; array, channel, file, stdout and discard |
//! | [`checkpoint`] | checkpoint records and strategies |
//! | [`window`] | count, time, sliding, session and signal windows |
//! | [`join`] | windowed, interval and lookup-table joins of two inputs |
//! | [`dead_letter`] | the dead-letter sink for events that cannot go on |
//! | [`pipeline`] | the fluent builder and the engine that runs it |
//! | [`tenant`] | tenants: key isolation and quotas |
//! | [`swap`] | hot swap of a running pipe's module |
//! | [`shuffle`] | the keyed shuffle between a clustered pipeline's stages: keys and subject tokens |
//! | [`fault`] | fault points for tests, switched on by environment variables |
//!
//! Errors show only their own part and keep what they wrap as their
//! `source`; [`ErrorChain`] prints one with all its causes.
//!
//! The other connectors (NATS, HTTP, SQL, Redis, sled) are in
//! `plumber-connectors`, the supervisor and the admin server in
//! `plumber-control`; the `plumber` crate puts them all under one roof.

// Every public item is documented, and nothing is `pub` that a user of the
// crate cannot reach (warnings here; CI's clippy denies them).
#![warn(missing_docs, unreachable_pub)]

pub mod checkpoint;
pub mod command;
pub mod config;
pub mod dead_letter;
mod error_chain;
pub mod fault;
pub mod histogram;
pub mod join;
pub mod pipeline;
pub mod recent;
pub mod retry;
pub mod runtime;
pub mod shuffle;
pub mod state;
pub mod step;
pub mod streams;
pub mod swap;
pub mod tenant;
pub mod window;

pub use error_chain::ErrorChain;
pub use runtime::bindings::plumber::pipe::types::{Batch, Event, PipeError, WindowInfo};

impl Event {
    /// An event with this value and nothing else.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Event {
            key: None,
            value: value.into(),
            timestamp: None,
            headers: Vec::new(),
        }
    }

    /// The same event with a key.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same event with a timestamp (ms since the Unix epoch).
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: u64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Bytes of key, value and headers (what limits and bounds count).
    pub fn size_bytes(&self) -> usize {
        self.value.len()
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The value as text, replacing invalid UTF-8.
    pub fn value_lossy(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.value)
    }
}

impl Batch {
    /// A batch of events outside any window.
    pub fn new(events: Vec<Event>) -> Self {
        Batch {
            events,
            window: None,
        }
    }
}
