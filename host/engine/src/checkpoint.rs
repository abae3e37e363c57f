//! Checkpoints: what is saved (a [`CheckpointRecord`] beside the pipes'
//! write sets) and when ([`CheckpointPolicy`]).
//!
//! A checkpoint is taken by a barrier that the source sends down the
//! pipeline behind the last batch of an epoch. Each step hands its pending
//! state to the barrier as it passes; when the barrier reaches the sink, the
//! sink has written everything before it, and the backend commits the write
//! sets together with the source position in one atomic operation. The
//! source waits for that commit before it reads on, so no read of the next
//! epoch can miss a write of the last one.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where a source is: what a restart seeks to. The engine stores it in the
/// checkpoint record and hands it back to the source; only the source reads
/// it.
///
/// Counting sources (array, channel, NATS core, HTTP, SQL, JetStream) keep
/// [`Position::Offset`]; a source that must say more (the file source: which
/// file the offset belongs to) keeps its own serde type as
/// [`Position::Source`], tagged with the source's kind ([`SourcePosition`]);
/// a source reading several partitions keeps one position per partition in
/// [`Position::Partitions`]. A source handed a position of another kind
/// refuses it ([`Position::offset`], [`Position::decode`]).
///
/// Stored as JSON in the checkpoint record: `"start"`, `{"offset": 7}`,
/// `{"source": {"kind": "file", "value": {…}}}`,
/// `{"partitions": {"0": {"offset": 7}, "3": "start"}}`.
// The variants' order is part of the memory backend's snapshot format
// (postcard numbers them): add new ones at the end only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Nothing read yet.
    Start,
    /// A count, sequence number or byte offset: events of an array, the
    /// last stream sequence of JetStream, the position column of SQL.
    Offset(u64),
    /// A source's own position, in its own form.
    Source {
        /// The kind of source that wrote it ([`SourcePosition::KIND`]).
        kind: String,
        /// Its value, as the source serialised it.
        #[serde(with = "json_value")]
        value: serde_json::Value,
    },
    /// One position per partition, for a source that reads several.
    Partitions(BTreeMap<u32, Position>),
    /// A graph's place: each source's position and each sink's, by name
    /// (docs/graphs.md). Only the engine reads it, never a source.
    Graph {
        /// Each source's position.
        sources: BTreeMap<String, Position>,
        /// Each sink's committed position (bytes of a file sink), for the
        /// sinks that have one.
        sinks: BTreeMap<String, u64>,
    },
}

/// A source's own position type, stored as [`Position::Source`] under its
/// [`SourcePosition::KIND`], so that it is never read as another source's.
pub trait SourcePosition: Serialize + DeserializeOwned {
    /// The tag stored with the value, e.g. `"file"`.
    const KIND: &'static str;
}

/// A stored position that a source cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// The position was written by another kind of source.
    #[error(
        "the checkpoint holds {found}, where this source keeps {expected}: it was written by \
         another kind of source (was the pipeline's `from` changed?); to start over, remove \
         the pipeline's state (its checkpoint with it) or run it under another name"
    )]
    Foreign {
        /// What this source keeps.
        expected: String,
        /// What the checkpoint holds.
        found: String,
    },
    /// The position is of this source's kind but does not have its form.
    #[error("the checkpoint's `{kind}` position is not in the form this version reads: {message}")]
    Malformed {
        /// The source kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// A source's position could not be turned into a stored value.
    #[error("a `{kind}` position cannot be stored: {message}")]
    Encode {
        /// The source kind.
        kind: String,
        /// Why not.
        message: String,
    },
}

impl Position {
    /// The offset of a counting source, with `Start` as 0.
    ///
    /// # Errors
    ///
    /// [`PositionError::Foreign`]: the position is a source's own value or
    /// a map of partitions, written by another kind of source.
    pub fn offset(&self) -> Result<u64, PositionError> {
        match self {
            Position::Start => Ok(0),
            Position::Offset(offset) => Ok(*offset),
            other => Err(PositionError::Foreign {
                expected: "an offset (a count or a sequence number)".to_owned(),
                found: other.kind_description(),
            }),
        }
    }

    /// A source's own position, tagged with its kind.
    ///
    /// # Errors
    ///
    /// [`PositionError::Encode`]: the value does not serialise to JSON
    /// (e.g. a map whose keys are not strings or integers).
    pub fn encode<T: SourcePosition>(value: &T) -> Result<Position, PositionError> {
        let value = serde_json::to_value(value).map_err(|e| PositionError::Encode {
            kind: T::KIND.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Position::Source {
            kind: T::KIND.to_owned(),
            value,
        })
    }

    /// Reads back a position written by [`Position::encode`] for `T`.
    ///
    /// # Errors
    ///
    /// [`PositionError::Foreign`]: the position is not a `T::KIND`
    /// position; [`PositionError::Malformed`]: it is, but not of `T`'s form.
    pub fn decode<T: SourcePosition>(&self) -> Result<T, PositionError> {
        match self {
            Position::Source { kind, value } if kind == T::KIND => {
                T::deserialize(value).map_err(|e| PositionError::Malformed {
                    kind: kind.clone(),
                    message: e.to_string(),
                })
            }
            other => Err(PositionError::Foreign {
                expected: format!("a `{}` position", T::KIND),
                found: other.kind_description(),
            }),
        }
    }

    /// What kind of position this is, for error messages.
    pub fn kind_description(&self) -> String {
        match self {
            Position::Start => "the start".to_owned(),
            Position::Offset(_) => "an offset".to_owned(),
            Position::Source { kind, .. } => format!("a `{kind}` position"),
            Position::Partitions(_) => "a position per partition".to_owned(),
            Position::Graph { .. } => "a graph's positions (one per source)".to_owned(),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Position::Start => f.write_str("the start"),
            Position::Offset(offset) => write!(f, "offset {offset}"),
            Position::Source { kind, value } => write!(f, "`{kind}` position {value}"),
            Position::Partitions(partitions) => {
                f.write_str("partitions {")?;
                for (n, (partition, position)) in partitions.iter().enumerate() {
                    let comma = if n == 0 { "" } else { ", " };
                    write!(f, "{comma}{partition}: {position}")?;
                }
                f.write_str("}")
            }
            Position::Graph { sources, sinks } => {
                f.write_str("sources {")?;
                for (n, (name, position)) in sources.iter().enumerate() {
                    let comma = if n == 0 { "" } else { ", " };
                    write!(f, "{comma}{name}: {position}")?;
                }
                f.write_str("}, sinks {")?;
                for (n, (name, position)) in sinks.iter().enumerate() {
                    let comma = if n == 0 { "" } else { ", " };
                    write!(f, "{comma}{name}: {position}")?;
                }
                f.write_str("}")
            }
        }
    }
}

/// A source's value as nested JSON in the JSON record, and as JSON text in
/// binary formats (the memory backend's postcard snapshot), which cannot
/// read a self-describing value.
mod json_value {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(
        value: &serde_json::Value,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            serializer.serialize_str(&value.to_string())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<serde_json::Value, D::Error> {
        if deserializer.is_human_readable() {
            serde_json::Value::deserialize(deserializer)
        } else {
            let text = String::deserialize(deserializer)?;
            serde_json::from_str(&text).map_err(D::Error::custom)
        }
    }
}

/// The record a checkpoint stores for its pipeline, beside the state writes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CheckpointRecord {
    /// The pipeline's name.
    pub pipeline: String,
    /// The epoch this checkpoint closed (the first is 1).
    pub epoch: u64,
    /// The source position after the last event of the epoch.
    pub position: Position,
    /// Wall-clock time of the commit, ms since the Unix epoch.
    pub committed_at_ms: u64,
    /// The sink's committed position (bytes of a file sink), when it has one.
    #[serde(default)]
    pub sink_position: Option<u64>,
    /// The fencing token of the process that committed it (see
    /// [`crate::state::StateBackend::claim`]).
    #[serde(default)]
    pub fence: u64,
    /// The dead-letter sink's committed position, when it has one.
    #[serde(default)]
    pub dead_letter_position: Option<u64>,
}

impl Serialize for CheckpointRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        // JSON (sled, Redis) leaves an absent dead-letter position out, so a
        // record without one is written as before it existed; a binary form
        // (the memory snapshot, postcard) has every field in order.
        let dead_letter = !serializer.is_human_readable() || self.dead_letter_position.is_some();
        let mut record =
            serializer.serialize_struct("CheckpointRecord", 6 + usize::from(dead_letter))?;
        record.serialize_field("pipeline", &self.pipeline)?;
        record.serialize_field("epoch", &self.epoch)?;
        record.serialize_field("position", &self.position)?;
        record.serialize_field("committed_at_ms", &self.committed_at_ms)?;
        record.serialize_field("sink_position", &self.sink_position)?;
        record.serialize_field("fence", &self.fence)?;
        if dead_letter {
            record.serialize_field("dead_letter_position", &self.dead_letter_position)?;
        } else {
            record.skip_field("dead_letter_position")?;
        }
        record.end()
    }
}

impl CheckpointRecord {
    /// A record stamped with the current time.
    pub fn new(pipeline: &str, epoch: u64, position: Position) -> Self {
        let committed_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        CheckpointRecord {
            pipeline: pipeline.to_owned(),
            epoch,
            position,
            committed_at_ms,
            sink_position: None,
            fence: 0,
            dead_letter_position: None,
        }
    }

    /// The stored form (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // Strings, integers and JSON values (a position's value is already
        // JSON, with string keys) always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads the stored form.
    ///
    /// # Errors
    ///
    /// The bytes are not a record; the message says why.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// What a pipeline promises about the effect of each event on state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The source position is committed before a batch is processed: after a
    /// crash events may be missing, none is applied twice. State writes go
    /// straight to the backend.
    AtMostOnce,
    /// State writes go straight to the backend; positions are committed at
    /// checkpoints. After a crash, events since the last checkpoint are
    /// replayed: nothing is lost, effects may repeat.
    AtLeastOnce,
    /// State writes are held in a write set and committed with the source
    /// position in one atomic operation at each checkpoint. After a crash,
    /// the last checkpoint is restored and replayed: every event's effect on
    /// state happens once.
    #[default]
    ExactlyOnce,
}

/// Keys a pipe may have written since the last checkpoint before one is
/// forced (the default of [`CheckpointPolicy::max_pending_keys`]).
pub const DEFAULT_MAX_PENDING_KEYS: u64 = 100_000;

/// Bytes of keys and values a pipe may have written since the last
/// checkpoint before one is forced (the default of
/// [`CheckpointPolicy::max_pending_bytes`]): 64 MiB.
pub const DEFAULT_MAX_PENDING_BYTES: u64 = 64 << 20;

/// When checkpoints are taken. Strategies combine: a checkpoint is taken
/// when any of them is due. A final one is always taken when the pipeline
/// stops cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Every this long (processing time), when anything happened since the
    /// last one: events read, or a step released output on its own (a
    /// window's timer, signal or idle timeout).
    pub interval: Option<Duration>,
    /// Every this many source events.
    pub every_events: Option<u64>,
    /// Whenever a window releases (so a window's output and the state its
    /// aggregation wrote are committed together promptly).
    pub on_window_close: bool,
    /// Force a checkpoint once a pipe holds this many keys written since
    /// the last one (exactly-once keeps them in memory until then; `None`:
    /// no bound).
    pub max_pending_keys: Option<u64>,
    /// Force a checkpoint once a pipe holds this many bytes of keys and
    /// values written since the last one (`None`: no bound).
    pub max_pending_bytes: Option<u64>,
}

impl Default for CheckpointPolicy {
    /// Only the final checkpoint at a clean stop, and the bounds on what a
    /// pipe may hold between checkpoints.
    fn default() -> Self {
        CheckpointPolicy {
            interval: None,
            every_events: None,
            on_window_close: false,
            max_pending_keys: Some(DEFAULT_MAX_PENDING_KEYS),
            max_pending_bytes: Some(DEFAULT_MAX_PENDING_BYTES),
        }
    }
}

impl CheckpointPolicy {
    /// A checkpoint every `interval`.
    pub fn every(interval: Duration) -> Self {
        CheckpointPolicy {
            interval: Some(interval),
            ..CheckpointPolicy::default()
        }
    }

    /// Only the final checkpoint at a clean stop (and those the bounds on
    /// pending writes force).
    pub fn at_end_only() -> Self {
        CheckpointPolicy::default()
    }

    /// The same policy, also checkpointing whenever a window releases.
    #[must_use]
    pub fn and_on_window_close(mut self) -> Self {
        self.on_window_close = true;
        self
    }

    /// The same policy, also checkpointing every `events` source events.
    #[must_use]
    pub fn and_every_events(mut self, events: u64) -> Self {
        self.every_events = Some(events);
        self
    }

    /// The same policy with other bounds on what a pipe may write between
    /// two checkpoints before one is forced (`None`: no bound).
    #[must_use]
    pub fn with_max_pending(mut self, keys: Option<u64>, bytes: Option<u64>) -> Self {
        self.max_pending_keys = keys;
        self.max_pending_bytes = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_garbage_is_refused() {
        let record = CheckpointRecord::new("p", 7, Position::Offset(10));
        assert_eq!(
            CheckpointRecord::from_bytes(&record.to_bytes()).unwrap(),
            record
        );
        assert!(CheckpointRecord::from_bytes(b"{\"pipeline\":").is_err());
    }

    /// Records as the versions before source-owned positions wrote them.
    #[test]
    fn records_of_the_earlier_form_are_read() {
        let offset = br#"{"pipeline":"default/p","epoch":3,"position":{"offset":42},"committed_at_ms":1700000000000,"sink_position":17,"fence":2}"#;
        let record = CheckpointRecord::from_bytes(offset).unwrap();
        assert_eq!(
            (
                record.epoch,
                record.position,
                record.sink_position,
                record.fence
            ),
            (3, Position::Offset(42), Some(17), 2)
        );
        let start = br#"{"pipeline":"default/p","epoch":0,"position":"start","committed_at_ms":1,"sink_position":null,"fence":0}"#;
        assert_eq!(
            CheckpointRecord::from_bytes(start).unwrap().position,
            Position::Start
        );
        // The earlier form is still what a counting source's position writes
        // without a dead-letter sink; with one, its position is added.
        let mut read = CheckpointRecord::from_bytes(offset).unwrap();
        assert_eq!(read.to_bytes(), offset);
        read.dead_letter_position = Some(5);
        let with = String::from_utf8(read.to_bytes()).unwrap();
        assert!(
            with.ends_with(r#""fence":2,"dead_letter_position":5}"#),
            "{with}"
        );
        assert_eq!(CheckpointRecord::from_bytes(with.as_bytes()).unwrap(), read);
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cursor {
        segment: String,
        byte: u64,
    }

    impl SourcePosition for Cursor {
        const KIND: &'static str = "cursor";
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OtherCursor {
        id: u64,
    }

    impl SourcePosition for OtherCursor {
        const KIND: &'static str = "queue";
    }

    /// A source's own position and a map of partitions both survive the
    /// JSON record and the memory backend's binary snapshot (postcard).
    #[test]
    fn own_and_partitioned_positions_round_trip() {
        let cursor = Cursor {
            segment: "b".into(),
            byte: 9,
        };
        let own = Position::encode(&cursor).unwrap();
        let partitioned = Position::Partitions(BTreeMap::from([
            (0, Position::Offset(17)),
            (3, Position::Start),
            (7, own.clone()),
        ]));
        for position in [own.clone(), partitioned.clone()] {
            let record = CheckpointRecord::new("p", 2, position.clone());
            let read = CheckpointRecord::from_bytes(&record.to_bytes()).unwrap();
            assert_eq!(read, record);
            let binary = postcard::to_allocvec(&record).unwrap();
            assert_eq!(
                postcard::from_bytes::<CheckpointRecord>(&binary).unwrap(),
                record
            );
        }
        assert_eq!(own.decode::<Cursor>().unwrap(), cursor);
        // The JSON form is readable: the value is nested, partitions keyed by number.
        let json: serde_json::Value =
            serde_json::from_slice(&CheckpointRecord::new("p", 2, partitioned).to_bytes()).unwrap();
        assert_eq!(
            json["position"],
            serde_json::json!({"partitions": {
                "0": {"offset": 17},
                "3": "start",
                "7": {"source": {"kind": "cursor", "value": {"segment": "b", "byte": 9}}},
            }})
        );
    }

    #[test]
    fn a_position_of_another_kind_is_refused() {
        let own = Position::encode(&Cursor {
            segment: "a".into(),
            byte: 1,
        })
        .unwrap();
        let partitioned = Position::Partitions(BTreeMap::from([(0, Position::Offset(1))]));
        for foreign in [&own, &partitioned] {
            let error = foreign.offset().unwrap_err();
            assert!(matches!(error, PositionError::Foreign { .. }), "{error}");
            assert!(
                error.to_string().contains("another kind of source"),
                "{error}"
            );
        }
        let error = own.decode::<OtherCursor>().unwrap_err();
        assert_eq!(
            error,
            PositionError::Foreign {
                expected: "a `queue` position".into(),
                found: "a `cursor` position".into()
            }
        );
        assert!(matches!(
            Position::Offset(3).decode::<Cursor>(),
            Err(PositionError::Foreign { .. })
        ));
        let malformed = Position::Source {
            kind: "cursor".into(),
            value: serde_json::json!({"segment": "a"}),
        };
        let error = malformed.decode::<Cursor>().unwrap_err().to_string();
        assert!(
            error.contains("`cursor`") && error.contains("byte"),
            "{error}"
        );
        assert_eq!(Position::Start.offset(), Ok(0));
        assert_eq!(Position::Offset(5).offset(), Ok(5));
    }

    #[test]
    fn positions_display_what_they_hold() {
        let partitioned = Position::Partitions(BTreeMap::from([
            (0, Position::Offset(17)),
            (3, Position::Start),
        ]));
        assert_eq!(
            partitioned.to_string(),
            "partitions {0: offset 17, 3: the start}"
        );
        let own = Position::encode(&OtherCursor { id: 4 }).unwrap();
        assert_eq!(own.to_string(), r#"`queue` position {"id":4}"#);
    }
}
