//! The in-memory backend: a map behind a mutex.
//!
//! Without a snapshot file it is not durable (tests, library use, pipelines
//! whose state may start empty). With one, every checkpoint writes the whole
//! map and the checkpoint records to `<file>.tmp`, syncs it, keeps the
//! current snapshot as `<file>.prev` and renames the new one into place. Each
//! snapshot ends with the SHA-256 of its contents, so a corrupt or
//! half-written snapshot is detected at start, and the previous one is used
//! instead (state and positions always come from the same snapshot).

pub(super) mod config;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use async_trait::async_trait;

use super::{checked_sum, parse_integer, StateBackend, StateError, WriteSet};
use crate::checkpoint::CheckpointRecord;

/// State kept in the process's memory, optionally snapshotted to a file.
#[derive(Default)]
pub struct MemoryState {
    inner: Mutex<Inner>,
    snapshot: Option<PathBuf>,
}

#[derive(Default, Serialize, Deserialize)]
struct Inner {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoints: HashMap<String, CheckpointRecord>,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn snapshot_error(path: &Path, message: impl std::fmt::Display) -> StateError {
    StateError::Snapshot {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// What a snapshot's payload starts with since checkpoint records carry the
/// dead-letter sink's position; a payload without it is of the earlier form.
const SNAPSHOT_MAGIC: &[u8] = b"plumber-memory-snapshot-2\0";

/// A checkpoint record as snapshots wrote it before dead-letter positions.
#[derive(Deserialize)]
struct EarlierRecord {
    pipeline: String,
    epoch: u64,
    position: crate::checkpoint::Position,
    committed_at_ms: u64,
    sink_position: Option<u64>,
    fence: u64,
}

/// A snapshot's contents before dead-letter positions.
#[derive(Deserialize)]
struct EarlierInner {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
    checkpoints: HashMap<String, EarlierRecord>,
}

impl From<EarlierInner> for Inner {
    fn from(earlier: EarlierInner) -> Self {
        let checkpoints = earlier
            .checkpoints
            .into_iter()
            .map(|(scope, r)| {
                let record = CheckpointRecord {
                    pipeline: r.pipeline,
                    epoch: r.epoch,
                    position: r.position,
                    committed_at_ms: r.committed_at_ms,
                    sink_position: r.sink_position,
                    fence: r.fence,
                    dead_letter_position: None,
                };
                (scope, record)
            })
            .collect();
        Inner {
            entries: earlier.entries,
            checkpoints,
        }
    }
}

/// Reads and verifies one snapshot file.
fn read_snapshot(path: &Path) -> Result<Inner, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let (payload, digest) = bytes
        .split_at_checked(bytes.len().saturating_sub(32))
        .filter(|(_, digest)| digest.len() == 32)
        .ok_or("the file is too short to be a snapshot")?;
    if Sha256::digest(payload).as_slice() != digest {
        return Err("its checksum does not match: the file is corrupt or was cut short".to_owned());
    }
    match payload.strip_prefix(SNAPSHOT_MAGIC) {
        Some(current) => postcard::from_bytes(current).map_err(|e| e.to_string()),
        None => postcard::from_bytes::<EarlierInner>(payload)
            .map(Inner::from)
            .map_err(|e| e.to_string()),
    }
}

impl MemoryState {
    /// An empty state that is not saved anywhere.
    pub fn new() -> Self {
        MemoryState::default()
    }

    /// A state saved to `path` at every checkpoint, loaded from it (or from
    /// the previous snapshot, when the last one is corrupt) if it exists.
    ///
    /// # Errors
    ///
    /// Snapshots exist but none of them can be read.
    pub fn with_snapshot(path: impl AsRef<Path>) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let previous = sibling(&path, ".prev");
        let inner = if path.exists() || previous.exists() {
            match read_snapshot(&path) {
                Ok(inner) => inner,
                Err(newest) => {
                    let inner = read_snapshot(&previous).map_err(|older| {
                        snapshot_error(
                            &path,
                            format!(
                                "{newest}; the previous snapshot cannot be used either: {older}"
                            ),
                        )
                    })?;
                    tracing::warn!(
                        snapshot = %path.display(),
                        previous = %previous.display(),
                        "the last checkpoint snapshot is unusable ({newest}); resuming from the previous one"
                    );
                    inner
                }
            }
        } else {
            Inner::default()
        };
        Ok(MemoryState {
            inner: Mutex::new(inner),
            snapshot: Some(path),
        })
    }

    fn write_snapshot(&self, path: &Path, inner: &Inner) -> Result<(), StateError> {
        let mut bytes = postcard::to_extend(inner, SNAPSHOT_MAGIC.to_vec())
            .map_err(|e| snapshot_error(path, e))?;
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let tmp = sibling(path, ".tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            if path.exists() {
                std::fs::rename(path, sibling(path, ".prev"))?;
            }
            std::fs::rename(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| snapshot_error(path, e))
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

    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let inner = self.lock();
        Ok(keys
            .iter()
            .map(|key| inner.entries.get(key).cloned())
            .collect())
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
        match &self.snapshot {
            Some(path) => self.write_snapshot(path, &inner),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Position;

    async fn commit(state: &MemoryState, epoch: u64, key: &[u8], value: &[u8]) {
        let mut writes = WriteSet::default();
        writes.insert(key.to_vec(), Some(value.to_vec()));
        let record = CheckpointRecord::new("p", epoch, Position::Offset(epoch * 10));
        state.commit(&record, &[writes]).await.unwrap();
    }

    /// A record with every position, the dead-letter sink's among them,
    /// survives a snapshot (written with its marker, read back whole).
    #[tokio::test]
    async fn a_dead_letter_position_survives_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.snap");
        let mut record = CheckpointRecord::new("default/p", 3, Position::Offset(30));
        record.sink_position = Some(11);
        record.dead_letter_position = Some(7);
        MemoryState::with_snapshot(&path)
            .unwrap()
            .commit(&record, &[])
            .await
            .unwrap();
        assert!(std::fs::read(&path).unwrap().starts_with(SNAPSHOT_MAGIC));
        let reopened = MemoryState::with_snapshot(&path).unwrap();
        let read = reopened.last_checkpoint("default/p").await.unwrap();
        assert_eq!(read, Some(record));
    }

    #[tokio::test]
    async fn a_snapshot_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.snap");
        commit(&MemoryState::with_snapshot(&path).unwrap(), 1, b"k", b"v").await;
        let state = MemoryState::with_snapshot(&path).unwrap();
        assert_eq!(state.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(state.last_checkpoint("p").await.unwrap().unwrap().epoch, 1);
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_falls_back_to_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.snap");
        {
            let state = MemoryState::with_snapshot(&path).unwrap();
            commit(&state, 1, b"k", b"one").await;
            commit(&state, 2, b"k", b"two").await;
        }
        // Cut the last snapshot short, as a crash in the middle of a write would.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let state = MemoryState::with_snapshot(&path).unwrap();
        // State and position both come from checkpoint 1.
        assert_eq!(state.get(b"k").await.unwrap(), Some(b"one".to_vec()));
        let record = state.last_checkpoint("p").await.unwrap().unwrap();
        assert_eq!((record.epoch, record.position), (1, Position::Offset(10)));

        // Both unusable: a clear error naming the file.
        std::fs::write(sibling(&path, ".prev"), b"garbage").unwrap();
        let error = MemoryState::with_snapshot(&path)
            .err()
            .expect("no usable snapshot");
        assert!(error.to_string().contains("state.snap"), "{error}");
    }

    /// A snapshot as versions before source-owned positions wrote it (the
    /// same structures with the position's two variants of then) is read,
    /// and a position of the newer kinds survives a snapshot.
    #[tokio::test]
    async fn snapshots_of_the_earlier_form_are_read_and_new_positions_kept() {
        #[derive(Serialize)]
        enum EarlierPosition {
            Start,
            Offset(u64),
        }
        #[derive(Serialize)]
        struct EarlierRecord {
            pipeline: String,
            epoch: u64,
            position: EarlierPosition,
            committed_at_ms: u64,
            sink_position: Option<u64>,
            fence: u64,
        }
        #[derive(Serialize)]
        struct EarlierInner {
            entries: BTreeMap<Vec<u8>, Vec<u8>>,
            checkpoints: HashMap<String, EarlierRecord>,
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.snapshot");
        let record = |pipeline: &str, epoch, position| EarlierRecord {
            pipeline: pipeline.into(),
            epoch,
            position,
            committed_at_ms: 1_700_000_000_000,
            sink_position: Some(5),
            fence: 0,
        };
        let earlier = EarlierInner {
            entries: BTreeMap::from([(b"k".to_vec(), b"v".to_vec())]),
            checkpoints: HashMap::from([
                (
                    "default/p".to_owned(),
                    record("default/p", 4, EarlierPosition::Offset(42)),
                ),
                (
                    "default/s".to_owned(),
                    record("default/s", 0, EarlierPosition::Start),
                ),
            ]),
        };
        let mut bytes = postcard::to_allocvec(&earlier).unwrap();
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        std::fs::write(&path, bytes).unwrap();

        let state = MemoryState::with_snapshot(&path).unwrap();
        assert_eq!(state.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        let record = state.last_checkpoint("default/p").await.unwrap().unwrap();
        assert_eq!(
            (record.epoch, record.position, record.sink_position),
            (4, Position::Offset(42), Some(5))
        );
        let record = state.last_checkpoint("default/s").await.unwrap().unwrap();
        assert_eq!(record.position, Position::Start);

        let partitioned = Position::Partitions(std::collections::BTreeMap::from([
            (0, Position::Offset(7)),
            (
                1,
                Position::Source {
                    kind: "file".into(),
                    value: serde_json::json!({"offset": 3, "file": {"head_bytes": 0}}),
                },
            ),
        ]));
        let record = CheckpointRecord::new("default/q", 1, partitioned);
        state.commit(&record, &[]).await.unwrap();
        let reopened = MemoryState::with_snapshot(&path).unwrap();
        assert_eq!(
            reopened.last_checkpoint("default/q").await.unwrap(),
            Some(record)
        );
    }
}
