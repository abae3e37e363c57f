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

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Where a source is: what a restart seeks to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Nothing read yet.
    Start,
    /// A count or byte offset: events of an array, bytes of a file.
    Offset(u64),
}

impl Position {
    /// The offset, with `Start` as 0.
    pub fn offset(&self) -> u64 {
        match self {
            Position::Start => 0,
            Position::Offset(offset) => *offset,
        }
    }
}

/// The record a checkpoint stores for its pipeline, beside the state writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }

    /// The stored form (JSON).
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings and integers always serialises.
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
}
