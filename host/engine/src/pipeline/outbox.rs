//! The outbox of a pipeline that publishes after the commit
//! (`"publish": "after_commit"`, [`Publish::AfterCommit`]).
//!
//! The sink stage holds the epoch's output instead of writing it. At the
//! barrier the held output goes into the checkpoint's write set, so the one
//! atomic commit of the epoch stores it with the state and the source
//! position. Once that commit has landed, the output is written to the sink
//! and flushed, and the next checkpoint deletes it. Each event carries an id
//! ([`OUTBOX_ID_HEADER`], `<pipeline>:o<epoch>:<n>`) given before the
//! commit, so a restart, which publishes again whatever the committed outbox
//! still holds, sends the same ids (a JetStream stream drops those it
//! stored). An epoch that never committed never reaches the sink: a replay
//! that differs from the lost run (a processing-time window, a clock) is
//! published, the lost run's output is not.
//!
//! Stored under [`Namespace::for_outbox`]: `head` (the epoch held, its
//! chunk and event counts, JSON) and the output in chunks of about
//! [`CHUNK_BYTES`] (postcard), keys `<epoch, 20 digits>/<chunk, 6 digits>`.
//! At most one epoch's outbox is committed at a time: the checkpoint after
//! it deletes it (its output was published before that barrier went on).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::state::{KeyHasher, Namespace, SharedState, StateError, WriteSet};
use crate::streams::{Sink, StreamError, OUTBOX_ID_HEADER};
use crate::{Batch, Event};

/// When a pipeline's sink gets the output of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Publish {
    /// Written during the epoch and flushed before its checkpoint commits
    /// (the default). After a crash the epoch is replayed and its output
    /// written again: exactly-once only where the sink drops a repeat (a
    /// JetStream stream by message id, a file truncated back) and the
    /// pipes are deterministic.
    #[default]
    BeforeCommit,
    /// Held in the checkpoint (the outbox) and written once the checkpoint
    /// has committed; a restart writes what the committed outbox still
    /// holds again, with the same ids. For pipes whose replay differs from
    /// the first run (processing-time windows, clocks): output of an epoch
    /// that never committed is never written.
    AfterCommit,
}

/// About how many bytes of events one stored chunk holds.
pub(super) const CHUNK_BYTES: usize = 1 << 20;

/// The key under the outbox's namespace that says what it holds.
const HEAD: &str = "head";

/// What the committed outbox holds.
#[derive(Debug, Serialize, Deserialize)]
struct Head {
    /// The epoch whose output it is.
    epoch: u64,
    /// How many chunks hold it.
    chunks: u32,
    /// How many events in all.
    events: u64,
}

/// An event as an outbox chunk stores it (its own type, so that the
/// stored form does not change with the WIT's).
#[derive(Serialize, Deserialize)]
struct StoredEvent {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    timestamp: Option<u64>,
    headers: Vec<(String, String)>,
}

impl From<&Event> for StoredEvent {
    fn from(event: &Event) -> Self {
        StoredEvent {
            key: event.key.clone(),
            value: event.value.clone(),
            timestamp: event.timestamp,
            headers: event.headers.clone(),
        }
    }
}

impl From<StoredEvent> for Event {
    fn from(stored: StoredEvent) -> Self {
        Event {
            key: stored.key,
            value: stored.value,
            timestamp: stored.timestamp,
            headers: stored.headers,
        }
    }
}

/// Output sealed into a checkpoint, to be written once it has committed.
struct Sealed {
    epoch: u64,
    events: Vec<Event>,
    /// Its stored keys (head and chunks), deleted after it is written.
    keys: Vec<Vec<u8>>,
}

/// When the held output asks for a checkpoint.
#[derive(Clone)]
pub(super) struct OutboxBound {
    /// Asks the source driver for a checkpoint.
    pub(super) requests: Arc<Notify>,
    /// Held events past this ask for one (`checkpoint.max_pending_keys`).
    pub(super) max_events: Option<u64>,
    /// Held bytes past this ask for one (`checkpoint.max_pending_bytes`).
    pub(super) max_bytes: Option<u64>,
}

/// The sink stage's outbox: output held for the next checkpoint, output
/// sealed into a checkpoint and waiting for its commit, and the stored keys
/// of output already written, for the next checkpoint to delete.
pub(super) struct Outbox {
    pipeline: String,
    namespace: Namespace,
    held: Vec<Event>,
    held_bytes: u64,
    sealed: Option<Sealed>,
    to_clear: Vec<Vec<u8>>,
    bound: OutboxBound,
    /// Whether the held output asked for a checkpoint since the last one.
    requested: bool,
}

impl Outbox {
    /// The empty outbox of `pipeline`, stored under `namespace`.
    pub(super) fn new(pipeline: &str, namespace: Namespace, bound: OutboxBound) -> Self {
        Outbox {
            pipeline: pipeline.to_owned(),
            namespace,
            held: Vec::new(),
            held_bytes: 0,
            sealed: None,
            to_clear: Vec::new(),
            bound,
            requested: false,
        }
    }

    /// Reads the committed outbox (the output of the last committed epoch
    /// that the last run may not have written, or not all of it) and
    /// returns its events, in order, for the restart to write again; their
    /// keys are deleted by the next checkpoint.
    ///
    /// # Errors
    ///
    /// The backend failed, or what it holds is not an outbox.
    pub(super) async fn restore(&mut self, state: &SharedState) -> Result<Vec<Event>, StateError> {
        let head_key = self.namespace.key(HEAD);
        let Some(head) = state.get(&head_key).await? else {
            return Ok(Vec::new());
        };
        let head: Head = serde_json::from_slice(&head)
            .map_err(|e| self.corrupt(format!("its head is not readable: {e}")))?;
        let mut events = Vec::with_capacity(usize::try_from(head.events).unwrap_or(0));
        let mut keys = vec![head_key];
        for chunk in 0..head.chunks {
            let key = self.chunk_key(head.epoch, chunk);
            let bytes = state.get(&key).await?.ok_or_else(|| {
                self.corrupt(format!(
                    "chunk {chunk} of {} of epoch {} is missing",
                    head.chunks, head.epoch
                ))
            })?;
            let stored: Vec<StoredEvent> = postcard::from_bytes(&bytes).map_err(|e| {
                self.corrupt(format!(
                    "chunk {chunk} of epoch {} is not readable: {e}",
                    head.epoch
                ))
            })?;
            events.extend(stored.into_iter().map(Event::from));
            keys.push(key);
        }
        if events.len() as u64 != head.events {
            return Err(self.corrupt(format!(
                "epoch {} holds {} events where its head says {}",
                head.epoch,
                events.len(),
                head.events
            )));
        }
        self.to_clear = keys;
        Ok(events)
    }

    fn corrupt(&self, message: String) -> StateError {
        StateError::CorruptCheckpoint {
            pipeline: self.pipeline.clone(),
            message: format!("its outbox: {message}"),
        }
    }

    fn chunk_key(&self, epoch: u64, chunk: u32) -> Vec<u8> {
        self.namespace.key(&format!("{epoch:020}/{chunk:06}"))
    }

    /// Whether stored keys wait for a checkpoint to delete them.
    pub(super) fn has_uncleared(&self) -> bool {
        !self.to_clear.is_empty()
    }

    /// Holds a batch for the next checkpoint (instead of writing it); asks
    /// for a checkpoint once the held output is past the bound.
    pub(super) fn hold(&mut self, batch: Batch) {
        for event in &batch.events {
            self.held_bytes += event.size_bytes() as u64;
        }
        self.held.extend(batch.events);
        let over = self
            .bound
            .max_events
            .is_some_and(|max| self.held.len() as u64 >= max)
            || self
                .bound
                .max_bytes
                .is_some_and(|max| self.held_bytes >= max);
        if over && !self.requested {
            self.requested = true;
            tracing::debug!(pipeline = %self.pipeline, events = self.held.len(), bytes = self.held_bytes,
                "held output reached its bound: checkpoint requested");
            self.bound.requests.notify_one();
        }
    }

    /// The epoch of the sealed output waiting for its commit.
    pub(super) fn sealed_epoch(&self) -> Option<u64> {
        self.sealed.as_ref().map(|sealed| sealed.epoch)
    }

    /// At the barrier of `epoch`: gives the held output its ids and seals
    /// it; returns the checkpoint's writes (the sealed output, and the
    /// deletion of output written since the last checkpoint) and how many
    /// events were sealed.
    ///
    /// The sealed output of the last checkpoint must have been written
    /// ([`Outbox::publish`]) first.
    pub(super) fn seal(&mut self, epoch: u64) -> (WriteSet, u64) {
        let mut writes =
            WriteSet::with_capacity_and_hasher(self.to_clear.len(), KeyHasher::default());
        for key in self.to_clear.drain(..) {
            writes.insert(key, None);
        }
        self.requested = false;
        self.held_bytes = 0;
        let mut events = std::mem::take(&mut self.held);
        if events.is_empty() {
            return (writes, 0);
        }
        for (n, event) in events.iter_mut().enumerate() {
            event.headers.retain(|(name, _)| name != OUTBOX_ID_HEADER);
            event.headers.push((
                OUTBOX_ID_HEADER.to_owned(),
                format!("{}:o{epoch}:{n}", self.pipeline),
            ));
        }
        let mut keys = Vec::new();
        let mut chunk: Vec<StoredEvent> = Vec::new();
        let mut chunk_bytes = 0;
        let mut chunks: u32 = 0;
        for (index, event) in events.iter().enumerate() {
            chunk_bytes += event.size_bytes();
            chunk.push(StoredEvent::from(event));
            if chunk_bytes >= CHUNK_BYTES || index + 1 == events.len() {
                let key = self.chunk_key(epoch, chunks);
                // Plain bytes, strings and integers always serialise.
                writes.insert(
                    key.clone(),
                    Some(postcard::to_allocvec(&chunk).unwrap_or_default()),
                );
                keys.push(key);
                chunks += 1;
                chunk.clear();
                chunk_bytes = 0;
            }
        }
        let head = Head {
            epoch,
            chunks,
            events: events.len() as u64,
        };
        let head_key = self.namespace.key(HEAD);
        writes.insert(
            head_key.clone(),
            Some(serde_json::to_vec(&head).unwrap_or_default()),
        );
        keys.push(head_key);
        let count = events.len() as u64;
        self.sealed = Some(Sealed {
            epoch,
            events,
            keys,
        });
        (writes, count)
    }

    /// Writes the sealed output to `sink` and flushes it; its stored keys
    /// are deleted by the next checkpoint. Call only once its checkpoint
    /// has committed. Returns the events written.
    ///
    /// # Errors
    ///
    /// The sink failed: the output stays in the committed outbox, which
    /// the next start writes again.
    pub(super) async fn publish(&mut self, sink: &mut dyn Sink) -> Result<u64, StreamError> {
        let Some(sealed) = self.sealed.take() else {
            return Ok(0);
        };
        let count = sealed.events.len() as u64;
        sink.write(Batch::new(sealed.events)).await?;
        sink.flush().await?;
        tracing::debug!(pipeline = %self.pipeline, epoch = sealed.epoch, events = count,
            "outbox published after its commit");
        self.to_clear.extend(sealed.keys);
        Ok(count)
    }
}
