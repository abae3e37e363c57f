//! State versions and state migration (the `versioned-pipe` and
//! `migrating-pipe` worlds of `wit/migrate.wit`).
//!
//! A module may declare the version of its state format (`state-version`).
//! The host records it with the pipe's state (under
//! [`crate::state::Namespace::state_version_key`], committed with the
//! checkpoint) and compares it whenever a module starts: at a hot swap's
//! barrier and when the pipeline starts. A module that declares another
//! version than the recorded one must export `migrate`; the host then
//! reads the pipe's namespace (committed state with the epoch's pending
//! writes over it), calls `migrate` over it in batches, and puts what it
//! answers, and the new version, into the pipe's write set, so that the
//! checkpoint that follows commits them at once, or nothing of them.

use std::time::{Duration, Instant};

use wasmtime::component::Func;
use wasmtime::Store;

use super::{begin_call, limit_of, limits, HostCtx, LoadError, PipeComponent, PipeInstance};
use crate::state::{StateError, WriteMode};

/// Keys handed to one `migrate` call, at most.
pub const MIGRATE_BATCH_KEYS: usize = 1024;

/// Bytes of keys and values handed to one `migrate` call, at most (a
/// single larger entry goes alone).
pub const MIGRATE_BATCH_BYTES: usize = 1 << 20;

/// The guest side of `migrate`.
type MigrateFunc<'a> = wasmtime::component::TypedFunc<
    (&'a str, &'a [(String, Vec<u8>)]),
    (Result<Vec<(String, Option<Vec<u8>>)>, crate::PipeError>,),
>;

/// Why a module cannot take over a pipe's state.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The module declares another state version and cannot migrate.
    #[error(
        "the state is at version `{recorded}` and the module declares state version \
         `{declared}` but exports no `migrate` to convert it"
    )]
    NoMigrate {
        /// The version recorded with the state.
        recorded: String,
        /// The module's `state-version`.
        declared: String,
    },
    /// The state has a version and the module declares none.
    #[error(
        "the state is at version `{recorded}` and the module declares no state version \
         (it exports no `state-version`), so it cannot be known to read it"
    )]
    Undeclared {
        /// The version recorded with the state.
        recorded: String,
    },
    /// Migration writes must be committed atomically with the switch.
    #[error(
        "the state must migrate from version `{recorded}` to `{declared}`, which needs \
         `delivery: exactly_once` (its writes are committed with the checkpoint)"
    )]
    NotCheckpointed {
        /// The version recorded with the state.
        recorded: String,
        /// The module's `state-version`.
        declared: String,
    },
    /// `state-version` or `migrate` failed.
    #[error("migrating the state from version `{from}` to `{to}` failed after {done} of {total} keys: {message}")]
    Failed {
        /// The recorded version.
        from: String,
        /// The module's version.
        to: String,
        /// Keys migrated before the failure.
        done: usize,
        /// Keys in the namespace.
        total: usize,
        /// The guest's error, the trap or the limit.
        message: String,
    },
    /// The migration ran past `migrate_timeout_ms`.
    #[error(
        "migrating the state from version `{from}` to `{to}` did not finish within its \
         migrate_timeout_ms of {timeout_ms} ms ({done} of {total} keys done)"
    )]
    Timeout {
        /// The recorded version.
        from: String,
        /// The module's version.
        to: String,
        /// The limit.
        timeout_ms: u64,
        /// Keys migrated in time.
        done: usize,
        /// Keys in the namespace.
        total: usize,
    },
    /// The module's `state-version` failed.
    #[error("the module's `state-version` failed: {0}")]
    Version(String),
    /// The state could not be read or written.
    #[error("the pipe's state")]
    State(#[from] StateError),
}

/// A migration that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The version the state was at.
    pub from: String,
    /// The version it is at now.
    pub to: String,
    /// Keys handed to `migrate`.
    pub keys: usize,
    /// Writes `migrate` returned.
    pub writes: usize,
    /// Calls of `migrate`.
    pub calls: usize,
    /// How long it took.
    pub took: Duration,
}

/// The versioning exports of an instance.
#[derive(Clone, Copy, Default)]
pub(super) struct VersionExports {
    pub(super) state_version: Option<Func>,
    pub(super) migrate: Option<Func>,
}

impl VersionExports {
    /// Finds and type-checks `state-version` and `migrate`.
    pub(super) fn find(
        store: &mut Store<HostCtx>,
        instance: &wasmtime::component::Instance,
    ) -> wasmtime::Result<Self> {
        let state_version = instance.get_func(&mut *store, "state-version");
        if let Some(func) = state_version {
            func.typed::<(), (String,)>(&*store)
                .map_err(|e| e.context("its `state-version` export has the wrong type"))?;
        }
        let migrate = instance.get_func(&mut *store, "migrate");
        if let Some(func) = migrate {
            func.typed::<(&str, &[(String, Vec<u8>)]), (Result<Vec<(String, Option<Vec<u8>>)>, crate::PipeError>,)>(&*store)
                .map_err(|e| e.context("its `migrate` export has the wrong type"))?;
        }
        Ok(VersionExports {
            state_version,
            migrate,
        })
    }
}

/// Brings the state of the instance in `store` to the version its module
/// declares: records it when the state has none, migrates when it differs.
/// Writes go to the store's write set, in one call (undone together by
/// `end_call(false)` when it fails).
pub(super) async fn reconcile(
    pipe: &str,
    store: &mut Store<HostCtx>,
    exports: VersionExports,
) -> Result<Option<Migration>, MigrateError> {
    let declared = match exports.state_version {
        None => None,
        Some(func) => {
            begin_call(store);
            let typed = func
                .typed::<(), (String,)>(&*store)
                .map_err(|e| MigrateError::Version(format!("{e:#}")))?;
            match typed.call_async(&mut *store, ()).await {
                Ok((version,)) => Some(version),
                Err(trap) => return Err(MigrateError::Version(trap_message(store, &trap))),
            }
        }
    };
    let state = store.data_mut().state_mut();
    let recorded = state.state_version().await?;
    let (recorded, declared) = match (recorded, declared) {
        (None, None) => return Ok(None),
        (Some(recorded), None) => return Err(MigrateError::Undeclared { recorded }),
        (None, Some(declared)) => {
            // The first module that declares a version: the state is taken
            // to be in its format.
            state.record_state_version(&declared).await?;
            return Ok(None);
        }
        (Some(recorded), Some(declared)) if recorded == declared => return Ok(None),
        (Some(recorded), Some(declared)) => (recorded, declared),
    };
    let Some(migrate) = exports.migrate else {
        return Err(MigrateError::NoMigrate { recorded, declared });
    };
    if state.mode() != WriteMode::Checkpointed {
        return Err(MigrateError::NotCheckpointed { recorded, declared });
    }
    let started = Instant::now();
    let entries = state.entries().await?;
    let total = entries.len();
    let limits = store.data().limits.clone();
    let timeout = limits.migrate_timeout();
    let mut migration = Migration {
        from: recorded.clone(),
        to: declared.clone(),
        keys: 0,
        writes: 0,
        calls: 0,
        took: Duration::ZERO,
    };
    let failed = |done: usize, message: String| MigrateError::Failed {
        from: recorded.clone(),
        to: declared.clone(),
        done,
        total,
        message,
    };
    let timed_out = |done: usize| MigrateError::Timeout {
        from: recorded.clone(),
        to: declared.clone(),
        timeout_ms: limits.migrate_timeout_ms,
        done,
        total,
    };
    let typed: MigrateFunc<'_> = migrate
        .typed(&*store)
        .map_err(|e| failed(0, format!("{e:#}")))?;
    let mut start = 0;
    while start < entries.len() {
        let end = batch_end(&entries, start);
        let chunk = &entries[start..end];
        let Some(remaining) = timeout.checked_sub(started.elapsed()) else {
            return Err(timed_out(start));
        };
        begin_call(store);
        let call = typed.call_async(&mut *store, (recorded.as_str(), chunk));
        let writes = match tokio::time::timeout(remaining, call).await {
            Err(_) => return Err(timed_out(start)),
            Ok(Err(trap)) => return Err(failed(start, trap_message(store, &trap))),
            Ok(Ok((Err(error),))) => {
                return Err(failed(
                    start,
                    limits::cap_message(&error.message).into_owned(),
                ))
            }
            Ok(Ok((Ok(writes),))) => writes,
        };
        migration.calls += 1;
        migration.writes += writes.len();
        for (key, value) in writes {
            if key.len() as u64 > limits.max_key_bytes {
                return Err(failed(
                    start,
                    format!(
                        "it returned a key of {} bytes; the limit is {} (max_key_bytes)",
                        key.len(),
                        limits.max_key_bytes
                    ),
                ));
            }
            if let Some(value) = &value {
                if value.len() as u64 > limits.max_value_bytes {
                    return Err(failed(
                        start,
                        format!(
                            "it returned a value of {} bytes for key `{key}`; the limit is {} \
                             (max_value_bytes)",
                            value.len(),
                            limits.max_value_bytes
                        ),
                    ));
                }
            }
            store
                .data_mut()
                .state_mut()
                .put_migrated(&key, value)
                .await?;
        }
        start = end;
        tracing::debug!(pipe, from = %recorded, to = %declared, done = end, total,
            "state migration batch done");
    }
    migration.keys = total;
    store
        .data_mut()
        .state_mut()
        .record_state_version(&declared)
        .await?;
    migration.took = started.elapsed();
    Ok(Some(migration))
}

/// The end of the batch that starts at `start`: at most
/// [`MIGRATE_BATCH_KEYS`] entries and [`MIGRATE_BATCH_BYTES`] bytes, and
/// at least one entry.
fn batch_end(entries: &[(String, Vec<u8>)], start: usize) -> usize {
    let mut bytes = 0;
    let mut end = start;
    while end < entries.len() && end - start < MIGRATE_BATCH_KEYS {
        let size = entries[end].0.len() + entries[end].1.len();
        if end > start && bytes + size > MIGRATE_BATCH_BYTES {
            break;
        }
        bytes += size;
        end += 1;
    }
    end
}

/// What a trap in `state-version` or `migrate` says, naming the limit it
/// went past when it did.
fn trap_message(store: &Store<HostCtx>, trap: &wasmtime::Error) -> String {
    match limit_of(store) {
        Some(limits::LimitKind::Time) => format!(
            "stopped after {} ms, its call_timeout_ms",
            store.data().limits.call_timeout_ms
        ),
        Some(kind) => format!("went past its {kind} limit"),
        None => limits::cap_message(&format!("trapped: {trap:#}")).into_owned(),
    }
}

impl PipeInstance {
    /// Switches to `component` at a checkpoint barrier, bringing the
    /// state to the version it declares ([`reconcile`]): its migration's
    /// writes join the pending writes, for the checkpoint of the barrier.
    /// Returns the migration, when one ran.
    ///
    /// # Errors
    ///
    /// Instantiation or `init` of the new component failed, or its state
    /// version cannot be reconciled ([`LoadError::StateVersion`]); the old
    /// instance keeps running with its pending writes as they were.
    pub async fn swap_to(
        &mut self,
        component: PipeComponent,
    ) -> Result<Option<Migration>, LoadError> {
        let backup = self.store.data().state_ref().fork();
        let state = self.store.data_mut().state_mut().take();
        let (mut store, exports) = match component
            .start(&self.runtime, &self.settings, state, &self.log_budget)
            .await
        {
            Ok(started) => started,
            Err((error, state)) => {
                *self.store.data_mut().state_mut() = state;
                return Err(error);
            }
        };
        match reconcile(&self.settings.pipe, &mut store, exports.versions).await {
            Ok(migration) => {
                store.data_mut().state_mut().end_call(true);
                self.store = store;
                self.exports = exports;
                self.component = component;
                Ok(migration)
            }
            Err(source) => {
                // Gives back any quota the migration's writes took.
                store.data_mut().state_mut().end_call(false);
                *self.store.data_mut().state_mut() = backup;
                Err(LoadError::StateVersion {
                    pipe: self.settings.pipe.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }

    /// Brings the state to the version the running module declares, when
    /// a pipeline starts (the same rule as at a swap).
    ///
    /// # Errors
    ///
    /// The state version cannot be reconciled ([`LoadError::StateVersion`]).
    pub async fn reconcile_state_version(&mut self) -> Result<Option<Migration>, LoadError> {
        match reconcile(&self.settings.pipe, &mut self.store, self.exports.versions).await {
            Ok(migration) => {
                self.store.data_mut().state_mut().end_call(true);
                Ok(migration)
            }
            Err(source) => {
                self.store.data_mut().state_mut().end_call(false);
                Err(LoadError::StateVersion {
                    pipe: self.settings.pipe.to_string(),
                    source: Box::new(source),
                })
            }
        }
    }
}
