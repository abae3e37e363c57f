//! The sled backend: embedded, durable, the default of the `plumber` binary.
//!
//! One tree holds everything. State keys are stored under `s` + full key,
//! checkpoint records under `c` + pipeline name, so a checkpoint is one
//! atomic `apply_batch` followed by a flush to disk.

pub mod config;

use std::path::{Path, PathBuf};

use async_trait::async_trait;

use super::{checked_sum, parse_integer, StateBackend, StateError, WriteSet};
use plumber_engine::checkpoint::CheckpointRecord;

const STATE_PREFIX: u8 = b's';
const CHECKPOINT_PREFIX: u8 = b'c';

/// State in a sled database directory.
pub struct SledState {
    db: sled::Db,
    path: PathBuf,
}

impl SledState {
    /// Sled's page cache by default (`cache_bytes`): 32 MiB instead of
    /// sled's default 1 GiB, which lets a long run's memory grow far past
    /// its live state.
    pub const CACHE_BYTES: u64 = 32 * 1024 * 1024;

    /// Opens (or creates) the database at `path` with the default page
    /// cache, [`SledState::CACHE_BYTES`].
    ///
    /// # Errors
    ///
    /// The directory cannot be created or is locked by another process.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        SledState::open_with_cache(path, Self::CACHE_BYTES)
    }

    /// Opens (or creates) the database at `path`, its page cache capped at
    /// `cache_bytes`.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or is locked by another process.
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: u64) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(|source| StateError::Backend {
                backend: "sled",
                location: path.display().to_string(),
                source: Box::new(source),
            })?;
        Ok(SledState { db, path })
    }

    fn error(&self, source: sled::Error) -> StateError {
        StateError::Backend {
            backend: "sled",
            location: self.path.display().to_string(),
            source: Box::new(source),
        }
    }
}

fn prefixed(prefix: u8, key: &[u8]) -> Vec<u8> {
    let mut full = Vec::with_capacity(key.len() + 1);
    full.push(prefix);
    full.extend_from_slice(key);
    full
}

#[async_trait]
impl StateBackend for SledState {
    fn kind(&self) -> &'static str {
        "sled"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get(prefixed(STATE_PREFIX, key))
            .map(|value| value.map(|v| v.to_vec()))
            .map_err(|e| self.error(e))
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.db
            .insert(prefixed(STATE_PREFIX, key), value)
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.db
            .remove(prefixed(STATE_PREFIX, key))
            .map(|_| ())
            .map_err(|e| self.error(e))
    }

    async fn add(&self, key: &[u8], delta: i64) -> Result<i64, StateError> {
        let full = prefixed(STATE_PREFIX, key);
        // Compare-and-swap until no one else changed the value in between.
        loop {
            let current = self.db.get(&full).map_err(|e| self.error(e))?;
            let value = match &current {
                Some(bytes) => parse_integer(key, bytes)?,
                None => 0,
            };
            let next = checked_sum(key, value, delta)?;
            let swapped = self
                .db
                .compare_and_swap(&full, current, Some(next.to_string().into_bytes()))
                .map_err(|e| self.error(e))?;
            if swapped.is_ok() {
                return Ok(next);
            }
        }
    }

    async fn claim(&self, _pipeline: &str) -> Result<u64, StateError> {
        // sled locks its directory: only one process can have it open.
        Ok(0)
    }

    async fn commit(
        &self,
        record: &CheckpointRecord,
        writes: &[WriteSet],
    ) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for set in writes {
            for (key, value) in set {
                let full = prefixed(STATE_PREFIX, key);
                match value {
                    Some(value) => batch.insert(full, value.as_slice()),
                    None => batch.remove(full),
                }
            }
        }
        batch.insert(
            prefixed(CHECKPOINT_PREFIX, record.pipeline.as_bytes()),
            record.to_bytes(),
        );
        self.db.apply_batch(batch).map_err(|e| self.error(e))?;
        self.db.flush_async().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn last_checkpoint(
        &self,
        pipeline: &str,
    ) -> Result<Option<CheckpointRecord>, StateError> {
        let Some(bytes) = self
            .db
            .get(prefixed(CHECKPOINT_PREFIX, pipeline.as_bytes()))
            .map_err(|e| self.error(e))?
        else {
            return Ok(None);
        };
        CheckpointRecord::from_bytes(&bytes)
            .map(Some)
            .map_err(|message| StateError::CorruptCheckpoint {
                pipeline: pipeline.to_owned(),
                message,
            })
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        self.db
            .scan_prefix(prefixed(STATE_PREFIX, prefix))
            .map(|entry| {
                entry
                    .map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                    .map_err(|e| self.error(e))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_engine::checkpoint::Position;

    #[tokio::test]
    async fn commit_is_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let state = SledState::open(dir.path()).unwrap();
            let mut writes = WriteSet::default();
            writes.insert(b"k".to_vec(), Some(b"v".to_vec()));
            writes.insert(b"gone".to_vec(), None);
            let record = CheckpointRecord::new("p", 3, Position::Offset(42));
            state.commit(&record, &[writes]).await.unwrap();
        }
        let state = SledState::open(dir.path()).unwrap();
        assert_eq!(state.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        let record = state.last_checkpoint("p").await.unwrap().unwrap();
        assert_eq!((record.epoch, record.position), (3, Position::Offset(42)));
        assert!(state.last_checkpoint("other").await.unwrap().is_none());
    }

    /// A record as versions before source-owned positions stored it.
    #[tokio::test]
    async fn a_record_of_the_earlier_form_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = SledState::open(dir.path()).unwrap();
        state
            .db
            .insert(
                prefixed(CHECKPOINT_PREFIX, b"default/p"),
                br#"{"pipeline":"default/p","epoch":3,"position":{"offset":42},"committed_at_ms":1700000000000,"sink_position":5,"fence":0}"#.as_slice(),
            )
            .unwrap();
        let record = state.last_checkpoint("default/p").await.unwrap().unwrap();
        assert_eq!(
            (record.epoch, record.position, record.sink_position),
            (3, Position::Offset(42), Some(5))
        );
    }
}
