//! Streams: where events come from (sources) and go to (sinks).
//!
//! A [`Source`] hands out batches with the position after each, and can
//! seek to a stored position on restart. A [`Sink`] writes batches and makes
//! them durable on [`Sink::flush`], which the engine calls before each
//! checkpoint commits.

mod array;
mod channel;
mod file;
pub mod reconnect;
pub mod replay;
mod stdout;

use async_trait::async_trait;

use crate::checkpoint::Position;
use crate::{Batch, Event};

pub use array::config::ArraySourceConfig;
pub use array::ArraySource;
pub use channel::{
    batch_channel_sink, channel_sink, channel_source, BatchChannelSink, ChannelSink, ChannelSource,
};
pub use file::config::{FileSinkConfig, FileSourceConfig};
pub use file::{
    FileIdentity, FilePosition, FileSink, FileSource, LineFormat, OnMissingFile,
    DEFAULT_MAX_LINE_BYTES,
};
pub use replay::{MemorySink, ReplaySource};
pub use stdout::config::{DiscardSinkConfig, StdoutSinkConfig};
pub use stdout::{DiscardSink, StdoutSink};

/// The header of an event published from a pipeline's outbox
/// (`"publish": "after_commit"`): `<pipeline>:o<epoch>:<n>`, the `n`th
/// output of the committed epoch `epoch`. A republish after a restart
/// carries the same value, so it identifies the output for de-duplication:
/// the JetStream sink of that pipeline uses it as the `Nats-Msg-Id`, and a
/// consumer of any other sink can drop what it has seen.
pub const OUTBOX_ID_HEADER: &str = "plumber-outbox-id";

/// What a JSON value is, for errors about events that are not what a
/// stream or a step expects ("expected an object, got a number").
#[must_use]
pub fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Why a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// An I/O operation on a file or stream failed.
    #[error("{stream}: {action}")]
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
    #[error("{stream}: cannot seek to {position}: {reason}")]
    Seek {
        /// The stream.
        stream: String,
        /// The position asked for (boxed: a source's own position is large,
        /// and errors are rare).
        position: Box<Position>,
        /// Why not.
        reason: String,
    },
    /// A line could not be read as an event.
    #[error("{stream}: the line at byte {offset} is not a JSON event")]
    Parse {
        /// The stream.
        stream: String,
        /// Where the line starts.
        offset: u64,
        /// What is wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A line of a file source is longer than its `max_line_bytes`.
    #[error(
        "{stream}: the line at byte {offset} is longer than max_line_bytes ({max} bytes); \
         raise `max_line_bytes` or fix the file"
    )]
    LineTooLong {
        /// The stream.
        stream: String,
        /// Where the line starts.
        offset: u64,
        /// The cap.
        max: u64,
    },
    /// The receiving end of a channel sink is gone.
    #[error("{stream}: the receiver was dropped")]
    Closed {
        /// The stream.
        stream: String,
    },
}

impl StreamError {
    /// A stored position that `stream` cannot take, and why.
    pub fn seek(stream: String, position: &Position, reason: impl std::fmt::Display) -> Self {
        StreamError::Seek {
            stream,
            position: Box::new(position.clone()),
            reason: reason.to_string(),
        }
    }
}

/// The index that `position` (an offset) names in a list of `len` items a
/// source replays (`what`: the list, for the error), at most `len`.
pub(crate) fn list_index(
    stream: impl Fn() -> String,
    position: &Position,
    len: usize,
    what: &str,
) -> Result<usize, StreamError> {
    let index = position
        .offset()
        .map_err(|e| StreamError::seek(stream(), position, e))?;
    usize::try_from(index)
        .ok()
        .filter(|i| *i <= len)
        .ok_or_else(|| StreamError::seek(stream(), position, format!("past the end of the {what}")))
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
    /// [`StreamError::Seek`]: the position does not fit the source (past
    /// the end of an array, a file that is no longer there), or was written
    /// by another kind of source.
    async fn seek(&mut self, position: &Position) -> Result<(), StreamError>;

    /// The position the source stands at after [`Source::seek`], when it
    /// records it in another form than the one it was handed (a position
    /// stored by an earlier version): the engine commits this form at the
    /// next checkpoint, even if nothing is read before it.
    fn migrated_position(&self) -> Option<Position> {
        None
    }

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

    /// Whether the source tells event-time windows their watermark
    /// ([`Source::watermark`]): a stage reading a shuffle stream, whose
    /// watermark comes from its upstream partitions. Asked once, before the
    /// steps are created: a window after such a source takes its watermark
    /// only from it, never from the timestamps it sees.
    fn reports_watermarks(&self) -> bool {
        false
    }

    /// The source's watermark after the last batch (ms since the Unix
    /// epoch; `None`: none yet): no event with an earlier timestamp is
    /// expected any more, but for the windows' `max_out_of_orderness_ms`.
    /// Read after each [`Source::next_batch`], which may return an empty
    /// batch when only the watermark moved.
    fn watermark(&self) -> Option<u64> {
        None
    }

    /// Whether the source controls time for the windows after it (a
    /// replay in `plumber test`): each watermark it reports
    /// ([`Source::watermark`]) sets their processing time and moves an
    /// event-time window's watermark up to it, and no window timer fires
    /// on its own. Asked once, before the steps are created.
    fn controls_time(&self) -> bool {
        false
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

    /// How many of its writes so far the server reported as duplicates
    /// and dropped (a JetStream stream's de-duplication by message id): a
    /// replay after a crash re-sends output the server already stored.
    /// Sinks that cannot tell say 0.
    fn duplicates(&self) -> u64 {
        0
    }

    /// Asks the sink to keep every part of an event, not only its value:
    /// sinks that write values as lines (file, stdout) switch to JSON lines
    /// ([`LineFormat::Json`]); sinks that carry keys and headers already
    /// ignore it. The dead-letter sink asks this, so that a dead letter
    /// keeps the headers saying why it failed.
    fn keep_headers(&mut self) {}
}

/// One event in the JSON form shared by file JSON lines and HTTP bodies:
/// `{"value": "...", "key": "...", "timestamp": N, "headers": {...}}`,
/// only `value` required. A value or key that is not UTF-8 is given as
/// `"value_hex"` / `"key_hex"` (lowercase or uppercase hexadecimal) instead,
/// which is how [`push_json_line`] writes one, so the form is reversible.
#[derive(serde::Deserialize)]
#[serde(try_from = "RawJsonEvent")]
pub struct JsonEvent(Event);

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJsonEvent {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    value_hex: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    key_hex: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// Text or hexadecimal bytes: exactly one (`required`) or at most one.
fn text_or_hex(
    name: &str,
    text: Option<String>,
    hex_text: Option<String>,
    required: bool,
) -> Result<Option<Vec<u8>>, String> {
    match (text, hex_text) {
        (Some(_), Some(_)) => Err(format!("give `{name}` or `{name}_hex`, not both")),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(digits)) => hex::decode(&digits)
            .map(Some)
            .map_err(|e| format!("`{name}_hex` is not hexadecimal bytes: {e}")),
        (None, None) if required => Err(format!("missing field `{name}`")),
        (None, None) => Ok(None),
    }
}

impl TryFrom<RawJsonEvent> for JsonEvent {
    type Error = String;

    fn try_from(raw: RawJsonEvent) -> Result<Self, Self::Error> {
        let value = text_or_hex("value", raw.value, raw.value_hex, true)?.unwrap_or_default();
        let key = text_or_hex("key", raw.key, raw.key_hex, false)?;
        Ok(JsonEvent(Event {
            key,
            value,
            timestamp: raw.timestamp,
            headers: raw.headers.into_iter().collect(),
        }))
    }
}

impl From<JsonEvent> for Event {
    fn from(parsed: JsonEvent) -> Self {
        parsed.0
    }
}

/// An event in the JSON form [`JsonEvent`] reads, borrowed for writing.
struct JsonEventRef<'a>(&'a Event);

impl serde::Serialize for JsonEventRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        match std::str::from_utf8(&event.value) {
            Ok(text) => map.serialize_entry("value", text)?,
            Err(_) => map.serialize_entry("value_hex", &hex::encode(&event.value))?,
        }
        if let Some(key) = &event.key {
            match std::str::from_utf8(key) {
                Ok(text) => map.serialize_entry("key", text)?,
                Err(_) => map.serialize_entry("key_hex", &hex::encode(key))?,
            }
        }
        if let Some(timestamp) = event.timestamp {
            map.serialize_entry("timestamp", &timestamp)?;
        }
        map.serialize_entry("headers", &HeadersRef(&event.headers))?;
        map.end()
    }
}

struct HeadersRef<'a>(&'a [(String, String)]);

impl serde::Serialize for HeadersRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Appends one event as a JSON line in the form [`JsonEvent`] reads (a
/// file source with `"format": "json"` reads it back as the same event;
/// of headers repeated under one name, the last is read back).
pub(crate) fn push_json_line(buffer: &mut Vec<u8>, event: &Event) {
    // Serialising strings, numbers and string maps into a Vec cannot fail.
    if serde_json::to_writer(&mut *buffer, &JsonEventRef(event)).is_ok() {
        buffer.push(b'\n');
    }
}

/// Appends one event's value and a newline: the line format of file and
/// stdout sinks.
pub(crate) fn push_line(buffer: &mut Vec<u8>, event: &Event) {
    buffer.extend_from_slice(&event.value);
    buffer.push(b'\n');
}

/// Appends one event as a line in `format`.
pub(crate) fn push_formatted(buffer: &mut Vec<u8>, event: &Event, format: LineFormat) {
    match format {
        LineFormat::Lines => push_line(buffer, event),
        LineFormat::Json => push_json_line(buffer, event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_back(line: &[u8]) -> Event {
        let text = line.strip_suffix(b"\n").expect("a newline");
        serde_json::from_slice::<JsonEvent>(text)
            .map(Event::from)
            .unwrap()
    }

    #[test]
    fn json_lines_round_trip_every_event() {
        let events = [
            Event::new("plain"),
            Event {
                headers: vec![("a".into(), "1".into()), ("b\n\"".into(), "é".into())],
                ..Event::new("line\nbreak").with_key("k").with_timestamp(7)
            },
            Event::new(vec![0xff, 0x00, b'x']).with_key(vec![0xfe]),
            Event::new(""),
        ];
        for event in events {
            let mut buffer = Vec::new();
            push_json_line(&mut buffer, &event);
            assert_eq!(buffer.iter().filter(|b| **b == b'\n').count(), 1);
            assert_eq!(read_back(&buffer), event);
        }
        let mut buffer = Vec::new();
        push_json_line(&mut buffer, &Event::new(vec![0xff]));
        assert_eq!(buffer, b"{\"value_hex\":\"ff\",\"headers\":{}}\n");
    }

    #[test]
    fn value_and_key_are_text_or_hex_not_both() {
        let parse = |text: &str| serde_json::from_str::<JsonEvent>(text).map(Event::from);
        assert_eq!(parse(r#"{"value_hex": "4142"}"#).unwrap().value, b"AB");
        for (text, expected) in [
            (r#"{"value": "a", "value_hex": "61"}"#, "not both"),
            (r#"{"value_hex": "zz"}"#, "not hexadecimal"),
            (r#"{"key": "k"}"#, "missing field `value`"),
            (r#"{"value": "a", "key": "k", "key_hex": "6b"}"#, "not both"),
            (r#"{"value": "a", "nope": 1}"#, "unknown field `nope`"),
        ] {
            let error = parse(text).err().unwrap().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
