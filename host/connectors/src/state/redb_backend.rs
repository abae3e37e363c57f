//! The redb backend: embedded and durable like sled, with its memory
//! bounded by its page cache.
//!
//! redb is a copy-on-write B-tree in one file that reads pages through a
//! cache of a fixed size (`cache_bytes`) and keeps nothing per stored key
//! in memory, so the process's memory does not grow with the number of
//! keys (sled's does: docs/benchmarks.md, "Memory against distinct keys").
//!
//! Two tables: `state` (full state key to value) and `checkpoints`
//! (pipeline to its [`CheckpointRecord`]'s bytes). A checkpoint is one
//! write transaction over both, committed with [`redb::Durability::Immediate`]
//! (synced to disk before the commit returns): after a crash either all of
//! it is there or none of it.
//!
//! Write-through writes (`set`, `delete`, `add`: at-least-once and
//! at-most-once pipelines) are transactions committed with
//! [`redb::Durability::None`]: a process crash may lose the ones since the
//! last checkpoint, which the replay from that checkpoint's position applies
//! again (at-least-once) or which count among the events a crash may skip
//! (at-most-once). The next checkpoint's durable commit makes them durable
//! with it.

pub mod config;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::{checked_sum, parse_integer, StateBackend, StateError, WriteSet};
use plumber_engine::checkpoint::CheckpointRecord;

/// Full state keys to values.
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");
/// Pipeline (`tenant/pipeline`) to its last checkpoint record.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

/// State in a redb database file.
pub struct RedbState {
    db: redb::Database,
    path: PathBuf,
}

impl RedbState {
    /// redb's page cache by default (`cache_bytes`): 32 MiB, the bound of
    /// what the database holds in memory whatever the number of keys.
    pub const CACHE_BYTES: u64 = 32 * 1024 * 1024;

    /// Opens (or creates) the database file at `path` with the default page
    /// cache, [`RedbState::CACHE_BYTES`].
    ///
    /// # Errors
    ///
    /// As [`RedbState::open_with_cache`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StateError> {
        RedbState::open_with_cache(path, Self::CACHE_BYTES)
    }

    /// Opens (or creates) the database file at `path`, its directory
    /// created when missing, with a page cache of `cache_bytes`. A file
    /// left by a crash is repaired on open (redb walks its trees once).
    ///
    /// # Errors
    ///
    /// The directory or file cannot be created, the file is not a redb
    /// database, or another process has it open (redb locks it).
    pub fn open_with_cache(path: impl AsRef<Path>, cache_bytes: u64) -> Result<Self, StateError> {
        let path = path.as_ref().to_path_buf();
        let location = path.display().to_string();
        let fail = |source: redb::Error| StateError::Backend {
            backend: "redb",
            location: location.clone(),
            source: Box::new(source),
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| fail(e.into()))?;
        }
        let cache = usize::try_from(cache_bytes).unwrap_or(usize::MAX);
        let db = redb::Database::builder()
            .set_cache_size(cache)
            .create(&path)
            .map_err(|e| fail(e.into()))?;
        // Both tables exist from here on: a read never meets a missing one.
        let tables = || -> Result<(), redb::Error> {
            let write = db.begin_write()?;
            write.open_table(STATE)?;
            write.open_table(CHECKPOINTS)?;
            write.commit()?;
            Ok(())
        };
        tables().map_err(fail)?;
        Ok(RedbState { db, path })
    }

    fn error(&self, source: impl Into<redb::Error>) -> StateError {
        StateError::Backend {
            backend: "redb",
            location: self.path.display().to_string(),
            source: Box::new(source.into()),
        }
    }

    /// Runs `write` in a write transaction committed without waiting for
    /// the disk (the write-through operations; see the module documentation).
    fn write_through<T>(
        &self,
        write: impl FnOnce(
            &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        ) -> Result<T, WriteFailure>,
    ) -> Result<T, StateError> {
        let mut transaction = self.db.begin_write().map_err(|e| self.error(e))?;
        transaction
            .set_durability(redb::Durability::None)
            .map_err(|e| self.error(e))?;
        let value = {
            let mut table = transaction.open_table(STATE).map_err(|e| self.error(e))?;
            match write(&mut table) {
                Ok(value) => value,
                Err(WriteFailure::Redb(e)) => return Err(self.error(e)),
                Err(WriteFailure::State(e)) => return Err(e),
            }
        };
        transaction.commit().map_err(|e| self.error(e))?;
        Ok(value)
    }
}

/// Why a write inside [`RedbState::write_through`] failed.
enum WriteFailure {
    Redb(redb::Error),
    State(StateError),
}

impl From<redb::StorageError> for WriteFailure {
    fn from(error: redb::StorageError) -> Self {
        WriteFailure::Redb(error.into())
    }
}

#[async_trait]
impl StateBackend for RedbState {
    fn kind(&self) -> &'static str {
        "redb"
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(STATE).map_err(|e| self.error(e))?;
        let value = table.get(key).map_err(|e| self.error(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// One read transaction for all of them.
    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(STATE).map_err(|e| self.error(e))?;
        keys.iter()
            .map(|key| {
                table
                    .get(key.as_slice())
                    .map(|value| value.map(|v| v.value().to_vec()))
                    .map_err(|e| self.error(e))
            })
            .collect()
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        self.write_through(|table| {
            table.insert(key, value)?;
            Ok(())
        })
    }

    async fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        self.write_through(|table| {
            table.remove(key)?;
            Ok(())
        })
    }

    /// Atomic: redb runs one write transaction at a time.
    async fn add(&self, key: &[u8], delta: i64) -> Result<i64, StateError> {
        self.write_through(|table| {
            let current = match table.get(key)? {
                Some(bytes) => parse_integer(key, bytes.value()).map_err(WriteFailure::State)?,
                None => 0,
            };
            let next = checked_sum(key, current, delta).map_err(WriteFailure::State)?;
            table.insert(key, next.to_string().as_bytes())?;
            Ok(next)
        })
    }

    async fn claim(&self, _pipeline: &str) -> Result<u64, StateError> {
        // redb locks its file: only one process can have it open.
        Ok(0)
    }

    /// One write transaction, synced to disk before it returns.
    async fn commit(
        &self,
        record: &CheckpointRecord,
        writes: &[WriteSet],
    ) -> Result<(), StateError> {
        let transaction = self.db.begin_write().map_err(|e| self.error(e))?;
        {
            let mut state = transaction.open_table(STATE).map_err(|e| self.error(e))?;
            for set in writes {
                for (key, value) in set {
                    match value {
                        Some(value) => state.insert(key.as_slice(), value.as_slice()),
                        None => state.remove(key.as_slice()),
                    }
                    .map_err(|e| self.error(e))?;
                }
            }
            let mut checkpoints = transaction
                .open_table(CHECKPOINTS)
                .map_err(|e| self.error(e))?;
            checkpoints
                .insert(record.pipeline.as_str(), record.to_bytes().as_slice())
                .map_err(|e| self.error(e))?;
        }
        // Dropped without a commit on an error above: nothing is applied.
        transaction.commit().map_err(|e| self.error(e))
    }

    async fn last_checkpoint(
        &self,
        pipeline: &str,
    ) -> Result<Option<CheckpointRecord>, StateError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(CHECKPOINTS).map_err(|e| self.error(e))?;
        let Some(bytes) = table.get(pipeline).map_err(|e| self.error(e))? else {
            return Ok(None);
        };
        CheckpointRecord::from_bytes(bytes.value())
            .map(Some)
            .map_err(|message| StateError::CorruptCheckpoint {
                pipeline: pipeline.to_owned(),
                message,
            })
    }

    async fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StateError> {
        let read = self.db.begin_read().map_err(|e| self.error(e))?;
        let table = read.open_table(STATE).map_err(|e| self.error(e))?;
        let mut entries = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.error(e))? {
            let (key, value) = entry.map_err(|e| self.error(e))?;
            if !key.value().starts_with(prefix) {
                break;
            }
            entries.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_engine::checkpoint::Position;

    #[tokio::test]
    async fn commit_is_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        {
            let state = RedbState::open(&path).unwrap();
            let mut writes = WriteSet::default();
            writes.insert(b"k".to_vec(), Some(b"v".to_vec()));
            writes.insert(b"gone".to_vec(), None);
            state.set(b"gone", b"x").await.unwrap();
            let record = CheckpointRecord::new("p", 3, Position::Offset(42));
            state.commit(&record, &[writes]).await.unwrap();
        }
        let state = RedbState::open(&path).unwrap();
        assert_eq!(state.get(b"k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(state.get(b"gone").await.unwrap(), None);
        let record = state.last_checkpoint("p").await.unwrap().unwrap();
        assert_eq!((record.epoch, record.position), (3, Position::Offset(42)));
        assert!(state.last_checkpoint("other").await.unwrap().is_none());
    }

    /// The file is locked: a second open while the first is held fails
    /// with an error naming the file instead of sharing it.
    #[tokio::test]
    async fn a_second_open_of_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let _first = RedbState::open(&path).unwrap();
        let Err(error) = RedbState::open(&path) else {
            panic!("a second open succeeded");
        };
        let text = plumber_engine::ErrorChain(&error).to_string();
        assert!(
            text.contains("state.redb") && text.contains("already open"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn write_through_adds_reads_and_scans() {
        let dir = tempfile::tempdir().unwrap();
        let state = RedbState::open(dir.path().join("state.redb")).unwrap();
        assert_eq!(state.add(b"p/n", 5).await.unwrap(), 5);
        assert_eq!(state.add(b"p/n", -7).await.unwrap(), -2);
        state.set(b"p/text", b"x").await.unwrap();
        state.set(b"q/other", b"y").await.unwrap();
        assert!(matches!(
            state.add(b"p/text", 1).await,
            Err(StateError::Invalid(_))
        ));
        state
            .set(b"p/max", i64::MAX.to_string().as_bytes())
            .await
            .unwrap();
        assert!(matches!(
            state.add(b"p/max", 1).await,
            Err(StateError::Invalid(_))
        ));
        assert_eq!(
            state
                .get_many(&[b"p/n".to_vec(), b"absent".to_vec(), b"q/other".to_vec()])
                .await
                .unwrap(),
            vec![Some(b"-2".to_vec()), None, Some(b"y".to_vec())]
        );
        state.delete(b"p/max").await.unwrap();
        assert_eq!(
            state.scan_prefix(b"p/").await.unwrap(),
            vec![
                (b"p/n".to_vec(), b"-2".to_vec()),
                (b"p/text".to_vec(), b"x".to_vec())
            ]
        );
    }

    /// Many keys over several commits, each commit replacing some keys of
    /// the one before and deleting others; all of it read back after a
    /// reopen, with a cache far smaller than the data.
    #[tokio::test]
    async fn many_keys_over_many_commits_survive_a_reopen() {
        const KEYS: u64 = 60_000;
        const PER_COMMIT: u64 = 10_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let key = |i: u64| format!("7:default4:keys5:count/k{i}").into_bytes();
        {
            let state = RedbState::open_with_cache(&path, 1024 * 1024).unwrap();
            for (epoch, first) in (0..KEYS).step_by(PER_COMMIT as usize).enumerate() {
                let mut writes = WriteSet::default();
                for i in first..first + PER_COMMIT {
                    writes.insert(key(i), Some(i.to_string().into_bytes()));
                }
                // Rewrite the previous commit's first key, delete its second.
                if first > 0 {
                    writes.insert(key(first - PER_COMMIT), Some(b"again".to_vec()));
                    writes.insert(key(first - PER_COMMIT + 1), None);
                }
                let record = CheckpointRecord::new(
                    "p",
                    epoch as u64 + 1,
                    Position::Offset(first + PER_COMMIT),
                );
                state.commit(&record, &[writes]).await.unwrap();
            }
        }
        let state = RedbState::open_with_cache(&path, 1024 * 1024).unwrap();
        let record = state.last_checkpoint("p").await.unwrap().unwrap();
        assert_eq!(record.position, Position::Offset(KEYS));
        let prefix = b"7:default4:keys5:count/k";
        let stored = state.scan_prefix(prefix).await.unwrap();
        let commits = KEYS / PER_COMMIT;
        assert_eq!(stored.len() as u64, KEYS - (commits - 1));
        for (full, value) in stored {
            let i: u64 = std::str::from_utf8(&full[prefix.len()..])
                .unwrap()
                .parse()
                .unwrap();
            let deleted = i % PER_COMMIT == 1 && i + PER_COMMIT < KEYS;
            assert!(!deleted, "key {i} was deleted");
            let rewritten = i.is_multiple_of(PER_COMMIT) && i + PER_COMMIT < KEYS;
            let expected = if rewritten {
                b"again".to_vec()
            } else {
                i.to_string().into_bytes()
            };
            assert_eq!(value, expected, "key {i}");
        }
    }
}
