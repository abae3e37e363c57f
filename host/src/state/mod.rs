//! State: the key/value storage stateful pipes use through host functions.
//!
//! Every backend implements [`StateBackend`]. Pipes never write to a backend
//! directly: their writes collect in a [`WriteSet`] (which their reads see),
//! and at a checkpoint the write sets of every pipe and the source position
//! are committed in one atomic operation of the backend
//! ([`StateBackend::commit`]).
//!
//! Keys are isolated per pipeline and per pipe by a [`Namespace`] prefix that
//! a guest cannot forge: the prefix encodes the length of each part, so no
//! key string of one pipe equals a key of another.

mod memory;
mod sled_backend;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::CheckpointRecord;

pub use memory::MemoryState;
pub use sled_backend::SledState;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The sled database failed.
    #[error("sled state at `{path}`: {source}")]
    Sled {
        /// The database directory.
        path: String,
        /// What sled said.
        #[source]
        source: sled::Error,
    },
    /// A stored checkpoint record could not be read.
    #[error("checkpoint record of pipeline `{pipeline}` is corrupt: {message}")]
    CorruptCheckpoint {
        /// The pipeline whose record it is.
        pipeline: String,
        /// What is wrong with it.
        message: String,
    },
    /// The value at a key is not what the operation needs.
    #[error("{0}")]
    Invalid(String),
}

/// Pending writes of one epoch: `Some(value)` sets, `None` deletes.
/// Keys are full keys (namespace prefix included).
pub type WriteSet = HashMap<Vec<u8>, Option<Vec<u8>>>;

/// A key/value store that can commit a checkpoint atomically.
#[async_trait]
pub trait StateBackend: Send + Sync + 'static {
    /// A short name for logs ("memory", "sled").
    fn kind(&self) -> &'static str;

    /// Reads the committed value of a full key.
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Applies every write set and stores `record` as the pipeline's last
    /// checkpoint, in one atomic operation: after a crash either all of it is
    /// there or none of it.
    ///
    /// # Errors
    ///
    /// The backend failed; nothing of the checkpoint was applied.
    async fn commit(
        &self,
        record: &CheckpointRecord,
        writes: &[WriteSet],
    ) -> Result<(), StateError>;

    /// The last checkpoint committed for `pipeline`.
    ///
    /// # Errors
    ///
    /// The backend failed or the stored record is corrupt.
    async fn last_checkpoint(&self, pipeline: &str)
        -> Result<Option<CheckpointRecord>, StateError>;

    /// Every committed key under `prefix` with its value, in key order
    /// (for inspection and tests; not for the hot path).
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError>;
}

/// A shared state backend.
pub type SharedState = Arc<dyn StateBackend>;

/// The key prefix that isolates one pipe's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(Vec<u8>);

impl Namespace {
    /// The namespace of `pipe` in `pipeline`.
    pub fn for_pipe(pipeline: &str, pipe: &str) -> Self {
        // Length-prefixed parts make the prefix unambiguous whatever the names contain.
        Namespace(format!("{}:{pipeline}{}:{pipe}/", pipeline.len(), pipe.len()).into_bytes())
    }

    /// The namespace of window `window`'s saved buffers in `pipeline`.
    /// (`#` cannot follow the pipeline part of a pipe's namespace, which
    /// continues with a digit, so the two never meet.)
    pub fn for_window(pipeline: &str, window: &str) -> Self {
        Namespace(
            format!(
                "{}:{pipeline}#window{}:{window}/",
                pipeline.len(),
                window.len()
            )
            .into_bytes(),
        )
    }

    /// The prefix bytes.
    pub fn prefix(&self) -> &[u8] {
        &self.0
    }

    /// The full key of a guest's key.
    pub fn key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.0.len() + key.len());
        full.extend_from_slice(&self.0);
        full.extend_from_slice(key.as_bytes());
        full
    }
}

/// One pipe's view of state: its namespace, its uncommitted writes, and the
/// backend behind them. Reads see the pipe's own pending writes first.
pub struct PipeState {
    backend: SharedState,
    namespace: Namespace,
    writes: WriteSet,
}

impl PipeState {
    /// A view of `backend` in `namespace` with no pending writes.
    pub fn new(backend: SharedState, namespace: Namespace) -> Self {
        PipeState {
            backend,
            namespace,
            writes: WriteSet::new(),
        }
    }

    /// Reads a guest key.
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let full = self.namespace.key(key);
        match self.writes.get(&full) {
            Some(pending) => Ok(pending.clone()),
            None => self.backend.get(&full).await,
        }
    }

    /// Writes a guest key (pending until the next checkpoint).
    pub fn set(&mut self, key: &str, value: Vec<u8>) {
        self.writes.insert(self.namespace.key(key), Some(value));
    }

    /// Deletes a guest key (pending until the next checkpoint).
    pub fn delete(&mut self, key: &str) {
        self.writes.insert(self.namespace.key(key), None);
    }

    /// Adds `delta` to the decimal integer at a guest key; absent counts as 0.
    ///
    /// # Errors
    ///
    /// The stored value is not an integer, the sum overflows, or the backend failed.
    pub async fn add(&mut self, key: &str, delta: i64) -> Result<i64, StateError> {
        let full = self.namespace.key(key);
        let current = match self.writes.get(&full) {
            Some(pending) => pending.clone(),
            None => self.backend.get(&full).await?,
        };
        let current = match current {
            None => 0,
            Some(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse::<i64>().ok())
                .ok_or_else(|| {
                    StateError::Invalid(format!("value at `{key}` is not an integer"))
                })?,
        };
        let next = current
            .checked_add(delta)
            .ok_or_else(|| StateError::Invalid(format!("adding {delta} to `{key}` overflows")))?;
        self.writes
            .insert(full, Some(next.to_string().into_bytes()));
        Ok(next)
    }

    /// Hands over the pending writes for a checkpoint, leaving none.
    pub fn take_writes(&mut self) -> WriteSet {
        std::mem::take(&mut self.writes)
    }

    /// Drops the pending writes (after a failed call whose effects must not land).
    pub fn discard_writes(&mut self) {
        self.writes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_cannot_collide_through_names() {
        let a = Namespace::for_pipe("p/a", "b");
        let b = Namespace::for_pipe("p", "a/b");
        assert_ne!(a.key("x"), b.key("x"));
        assert!(!a.prefix().starts_with(b.prefix()) && !b.prefix().starts_with(a.prefix()));
    }

    #[tokio::test]
    async fn reads_see_pending_writes_and_add_counts() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let mut state = PipeState::new(backend.clone(), Namespace::for_pipe("p", "count"));
        assert_eq!(state.add("ada", 1).await.unwrap(), 1);
        assert_eq!(state.add("ada", 2).await.unwrap(), 3);
        assert_eq!(state.get("ada").await.unwrap(), Some(b"3".to_vec()));
        state.delete("ada");
        assert_eq!(state.get("ada").await.unwrap(), None);
        state.set("name", b"not a number".to_vec());
        assert!(matches!(
            state.add("name", 1).await,
            Err(StateError::Invalid(_))
        ));
        // Nothing reached the backend before a commit.
        assert_eq!(backend.scan_prefix(b"").await.unwrap(), vec![]);
    }
}
