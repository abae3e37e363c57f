//! Streams: where events come from (sources) and go to (sinks).
//!
//! A [`Source`] hands out batches with the position after each, and can
//! seek to a stored position on restart. A [`Sink`] writes batches and makes
//! them durable on [`Sink::flush`], which the engine calls before each
//! checkpoint commits.

mod array;
mod channel;
mod file;
pub mod http;
pub mod nats;
mod reconnect;
pub mod sql;
mod stdout;

use async_trait::async_trait;

use crate::checkpoint::Position;
use crate::{Batch, Event};

pub use array::ArraySource;
pub use channel::{
    batch_channel_sink, channel_sink, channel_source, BatchChannelSink, ChannelSink, ChannelSource,
};
pub use file::{FileSink, FileSource, LineFormat};
pub use stdout::{DiscardSink, StdoutSink};

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// An I/O operation on a file or stream failed.
    #[error("{stream}: {action}: {source}")]
    Io {
        /// The stream, e.g. "file source `in.txt`".
        stream: String,
        /// What was being done.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A stored position does not fit this stream.
    #[error("{stream}: cannot seek to {position:?}: {reason}")]
    Seek {
        /// The stream.
        stream: String,
        /// The position asked for.
        position: Position,
        /// Why not.
        reason: String,
    },
    /// A line could not be read as an event.
    #[error("{stream}: the line at byte {offset} is not a JSON event: {message}")]
    Parse {
        /// The stream.
        stream: String,
        /// Where the line starts.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// The receiving end of a channel sink is gone.
    #[error("{stream}: the receiver was dropped")]
    Closed {
        /// The stream.
        stream: String,
    },
}

/// Where events come from.
#[async_trait]
pub trait Source: Send {
    /// The source's description for logs and errors.
    fn describe(&self) -> String;

    /// Moves to a position stored by a checkpoint, before the first read.
    ///
    /// # Errors
    ///
    /// The position does not fit the source (e.g. past the end of a file).
    async fn seek(&mut self, position: &Position) -> Result<(), StreamError>;

    /// The next batch of at most `max` events and the position after its
    /// last event; `None` when a finite source has ended.
    ///
    /// # Errors
    ///
    /// Reading failed.
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError>;

    /// A listener the pipeline tells about committed positions, for sources
    /// that must acknowledge what they delivered. Called once, before reading.
    fn commit_listener(&mut self) -> Option<Box<dyn CommitListener>> {
        None
    }

    /// How much is still waiting at the source after the last batch, when
    /// it knows (messages for JetStream, bytes for a file), for metrics.
    fn lag(&self) -> Option<u64> {
        None
    }
}

/// Told when a checkpoint covering a source position has been committed
/// (e.g. to acknowledge JetStream messages only once they are safe).
#[async_trait]
pub trait CommitListener: Send {
    /// Everything up to and including `position` is committed.
    ///
    /// # Errors
    ///
    /// The acknowledgement failed; the pipeline stops (the messages will be
    /// redelivered and replayed).
    async fn committed(&mut self, position: &Position) -> Result<(), StreamError>;
}

/// Where events go to.
#[async_trait]
pub trait Sink: Send {
    /// The sink's description for logs and errors.
    fn describe(&self) -> String;

    /// Writes one batch (it may stay buffered until [`Sink::flush`]).
    ///
    /// # Errors
    ///
    /// Writing failed.
    async fn write(&mut self, batch: Batch) -> Result<(), StreamError>;

    /// Makes everything written so far durable; called before each checkpoint.
    ///
    /// # Errors
    ///
    /// Flushing failed; the checkpoint is not committed.
    async fn flush(&mut self) -> Result<(), StreamError>;

    /// Where the sink is after the last flush, for sinks that can go back
    /// to it (a file sink's length); stored in each checkpoint.
    ///
    /// # Errors
    ///
    /// The position cannot be read.
    async fn position(&mut self) -> Result<Option<u64>, StreamError> {
        Ok(None)
    }

    /// On an exactly-once restart: drop what was written after `position`,
    /// the sink's position at the checkpoint being resumed. Sinks that
    /// cannot take output back ignore it (and are at-least-once).
    ///
    /// # Errors
    ///
    /// The sink could not be brought back to `position`.
    async fn recover(&mut self, _position: Option<u64>) -> Result<(), StreamError> {
        Ok(())
    }
}

/// One event in the JSON form shared by file JSON lines and HTTP bodies:
/// `{"value": "...", "key": "...", "timestamp": N, "headers": {...}}`,
/// only `value` required.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonEvent {
    value: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

impl From<JsonEvent> for Event {
    fn from(parsed: JsonEvent) -> Self {
        Event {
            key: parsed.key.map(String::into_bytes),
            value: parsed.value.into_bytes(),
            timestamp: parsed.timestamp,
            headers: parsed.headers.into_iter().collect(),
        }
    }
}

/// Appends one event's value and a newline: the line format of file and
/// stdout sinks.
pub(crate) fn push_line(buffer: &mut Vec<u8>, event: &Event) {
    buffer.extend_from_slice(&event.value);
    buffer.push(b'\n');
}
