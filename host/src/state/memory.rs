//! The in-memory backend: a map behind a mutex. Not durable; for tests,
//! library use and pipelines whose state may start empty.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{checked_sum, parse_integer, StateBackend, StateError, WriteSet};
use crate::checkpoint::CheckpointRecord;

/// State kept in the process's memory.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoints: HashMap<String, CheckpointRecord>,
}

impl MemoryState {
    /// An empty state.
    pub fn new() -> Self {
        MemoryState::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated
        // (commit builds nothing in place), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl StateBackend for MemoryState {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.lock().entries.get(key).cloned())
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.lock().entries.insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.lock().entries.remove(key);
        Ok(())
    }

    async fn add(&self, key: &[u8], delta: i64) -> Result<i64, StateError> {
        let mut inner = self.lock();
        let current = match inner.entries.get(key) {
            Some(bytes) => parse_integer(key, bytes)?,
            None => 0,
        };
        let next = checked_sum(key, current, delta)?;
        inner
            .entries
            .insert(key.to_vec(), next.to_string().into_bytes());
        Ok(next)
    }

    async fn claim(&self, _pipeline: &str) -> Result<u64, StateError> {
        // One process owns a memory state: nothing to fence.
        Ok(0)
    }

    async fn commit(
        &self,
        record: &CheckpointRecord,
        writes: &[WriteSet],
    ) -> Result<(), StateError> {
        let mut inner = self.lock();
        for set in writes {
            for (key, value) in set {
                match value {
                    Some(value) => inner.entries.insert(key.clone(), value.clone()),
                    None => inner.entries.remove(key),
                };
            }
        }
        inner
            .checkpoints
            .insert(record.pipeline.clone(), record.clone());
        Ok(())
    }

    async fn last_checkpoint(
        &self,
        pipeline: &str,
    ) -> Result<Option<CheckpointRecord>, StateError> {
        Ok(self.lock().checkpoints.get(pipeline).cloned())
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        Ok(self
            .lock()
            .entries
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}
