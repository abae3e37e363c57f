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

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::checkpoint::CheckpointRecord;

pub use memory::config::MemoryStateConfig;
pub use memory::MemoryState;

use crate::tenant::StateQuota;

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backend's own storage failed (a sled database). The engine
    /// knows no backend's error type: backends live in other crates.
    #[error("{backend} state at `{location}`")]
    Backend {
        /// "sled", ...
        backend: &'static str,
        /// Where its data is, e.g. the database directory.
        location: String,
        /// What the backend said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process claimed the pipeline after this one: this process's
    /// commits are refused so it cannot overwrite newer checkpoints.
    #[error("pipeline `{pipeline}` was claimed by a newer process (fence {newer} > ours {ours}); stopping")]
    Fenced {
        /// The pipeline.
        pipeline: String,
        /// Our token.
        ours: u64,
        /// The token in force.
        newer: u64,
    },
    /// The backend could not be reached in time.
    #[error("{backend} state at {address}: {message}")]
    Unavailable {
        /// "redis", ...
        backend: &'static str,
        /// Where it was.
        address: String,
        /// What happened.
        message: String,
    },
    /// A memory state's snapshot file could not be written or read.
    #[error("memory state snapshot `{path}`: {message}")]
    Snapshot {
        /// The snapshot file.
        path: String,
        /// What went wrong.
        message: String,
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
    /// A write would take a tenant past its state quota.
    #[error("tenant `{tenant}` would go past its state quota of {quota} bytes")]
    Quota {
        /// The tenant.
        tenant: String,
        /// Its quota in bytes.
        quota: u64,
    },
    /// One call would write more new state than a pipe may hold between
    /// two checkpoints; no checkpoint can pass within a call.
    #[error("one call would write more than {limit} new {what} before a checkpoint can pass (`checkpoint.{field}`)")]
    PendingWrites {
        /// "keys" or "bytes".
        what: &'static str,
        /// The config field of the bound.
        field: &'static str,
        /// The bound.
        limit: u64,
    },
}

/// Pending writes of one epoch: `Some(value)` sets, `None` deletes.
/// Keys are full keys (namespace prefix included).
pub type WriteSet = HashMap<Vec<u8>, Option<Vec<u8>>, KeyHasher>;

/// The hasher of write sets: foldhash, seeded per process. Keys are short
/// and hashed several times per event on the state hot path, where SipHash
/// (std's default) was a tenth of the time.
pub type KeyHasher = foldhash::fast::RandomState;

/// A pending write of a [`PipeState`], with what the call in progress
/// replaced (so a failed call can be undone without a copy per write).
#[derive(Debug, Clone)]
struct Pending {
    /// What the key will hold.
    value: Stored,
    /// The number of the call that last wrote it.
    call: u64,
    /// What the pending write was before the call numbered `call` first
    /// wrote it: `None` when it had none.
    before: Option<Stored>,
}

/// A pending write's value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    /// `Some(value)` sets, `None` deletes.
    Bytes(Option<Vec<u8>>),
    /// Sets the integer's decimal text (the encoding of `add`), written out
    /// only when the value is read or handed over: a counter's many adds
    /// between two checkpoints neither parse nor format text.
    Counter(i64),
}

impl Stored {
    /// The value as bytes (`None`: deleted).
    fn to_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Stored::Bytes(value) => value.clone(),
            Stored::Counter(n) => {
                let mut text = Vec::with_capacity(decimal_len(*n));
                write_integer(&mut text, *n);
                Some(text)
            }
        }
    }

    /// [`Stored::to_bytes`], consuming.
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Stored::Bytes(value) => value,
            counter @ Stored::Counter(_) => counter.to_bytes(),
        }
    }

    /// The length of the value's bytes (`None`: deleted).
    fn len(&self) -> Option<usize> {
        match self {
            Stored::Bytes(value) => value.as_ref().map(Vec::len),
            Stored::Counter(n) => Some(decimal_len(*n)),
        }
    }
}

/// The length of `n`'s decimal text, as [`write_integer`] writes it.
fn decimal_len(n: i64) -> usize {
    let digits = n
        .unsigned_abs()
        .checked_ilog10()
        .map_or(1, |log| log as usize + 1);
    digits + usize::from(n < 0)
}

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

    /// Whether reading many keys with [`StateBackend::get_many`] is much
    /// cheaper than one by one (a backend across a network): then a pipe's
    /// `add-many` reads the keys it has not written yet in one call.
    fn batches_reads(&self) -> bool {
        false
    }

    /// Reads the committed values of many full keys, in order. The default
    /// reads them one by one; a backend across a network overrides it with
    /// one round trip.
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Writes a full key now, outside any checkpoint (at-least-once and
    /// at-most-once pipelines write through).
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), StateError>;

    /// Deletes a full key now.
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn delete(&self, key: &[u8]) -> Result<(), StateError>;

    /// Atomically adds `delta` to the decimal integer at a full key (absent
    /// is 0) and returns the new value.
    ///
    /// # Errors
    ///
    /// The value is not an integer, or the backend failed.
    async fn add(&self, key: &[u8], delta: i64) -> Result<i64, StateError>;

    /// Claims `pipeline` for this process and returns its fencing token,
    /// higher than any earlier claim's. Commits carry the token
    /// ([`CheckpointRecord::fence`]); a backend shared between processes
    /// refuses a commit whose token is older than the last claim.
    ///
    /// # Errors
    ///
    /// The backend failed.
    async fn claim(&self, pipeline: &str) -> Result<u64, StateError>;

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

/// Reads a stored integer (decimal ASCII, the encoding of `add`).
///
/// # Errors
///
/// The bytes are not a decimal integer.
pub fn parse_integer(key: &[u8], bytes: &[u8]) -> Result<i64, StateError> {
    if let Some(n) = parse_short_decimal(bytes) {
        return Ok(n);
    }
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or_else(|| {
            StateError::Invalid(format!(
                "value at `{}` is not an integer",
                String::from_utf8_lossy(key)
            ))
        })
}

/// The common case of [`parse_integer`] without going through `str`: an
/// optional `-` and 1 to 18 ASCII digits (which cannot overflow an `i64`).
/// `None` for anything else, which the general parser then decides.
fn parse_short_decimal(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &byte in digits {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n = n * 10 + i64::from(digit);
    }
    Some(if negative { -n } else { n })
}

/// `current + delta`, or an error naming the key on overflow.
///
/// # Errors
///
/// The sum overflows an `i64`.
pub fn checked_sum(key: &[u8], current: i64, delta: i64) -> Result<i64, StateError> {
    current.checked_add(delta).ok_or_else(|| {
        StateError::Invalid(format!(
            "adding {delta} to `{}` overflows",
            String::from_utf8_lossy(key)
        ))
    })
}

/// Writes `n` as decimal ASCII into `out` (cleared first), reusing its capacity.
fn write_integer(out: &mut Vec<u8>, n: i64) {
    out.clear();
    if n < 0 {
        out.push(b'-');
    }
    let start = out.len();
    let mut rest = n.unsigned_abs();
    loop {
        out.push(b'0' + (rest % 10) as u8);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out[start..].reverse();
}

/// A shared state backend.
pub type SharedState = Arc<dyn StateBackend>;

/// The tenant of pipelines that do not name one.
pub const DEFAULT_TENANT: &str = "default";

/// The name a pipeline's checkpoints are kept under: `tenant/pipeline`
/// (tenant names cannot contain `/`, so two pipelines never share it).
pub fn checkpoint_scope(tenant: &str, pipeline: &str) -> String {
    format!("{tenant}/{pipeline}")
}

/// The key prefix that isolates one pipe's keys.
///
/// Tenant, pipeline and pipe are each written with their length first, so
/// the prefix is unambiguous whatever the names contain, and no key string
/// a guest passes (`..`, `/`, NUL, another prefix) can leave it: the guest's
/// key is only ever appended after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(Vec<u8>);

/// Whose a stored key is ([`Namespace::owner_of`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOwner<'a> {
    /// A pipe's key: the pipe's name and the key the guest wrote.
    Pipe {
        /// The pipe.
        pipe: &'a str,
        /// The guest's key.
        key: &'a [u8],
    },
    /// An entry of a window's saved buffers
    /// ([`crate::window::saved_entry`] says which).
    Window {
        /// The window.
        window: &'a str,
        /// The entry's name.
        entry: &'a [u8],
    },
    /// An entry of the outbox.
    Outbox {
        /// The entry's name.
        entry: &'a [u8],
    },
}

/// Splits `<length>:<part><rest>` into the part and the rest.
fn length_prefixed_part(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let length: usize = std::str::from_utf8(&bytes[..colon]).ok()?.parse().ok()?;
    let rest = &bytes[colon + 1..];
    if rest.len() < length {
        return None;
    }
    let part = std::str::from_utf8(&rest[..length]).ok()?;
    Some((part, &rest[length..]))
}

fn length_prefixed(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|part| format!("{}:{part}", part.len()))
        .collect()
}

impl Namespace {
    /// The namespace of `pipe` in `pipeline` of the default tenant.
    pub fn for_pipe(pipeline: &str, pipe: &str) -> Self {
        Namespace::for_tenant_pipe(DEFAULT_TENANT, pipeline, pipe)
    }

    /// The namespace of `pipe` in `pipeline` of `tenant`.
    pub fn for_tenant_pipe(tenant: &str, pipeline: &str, pipe: &str) -> Self {
        Namespace(format!("{}/", length_prefixed(&[tenant, pipeline, pipe])).into_bytes())
    }

    /// The namespace of window `window`'s saved buffers in `pipeline` of
    /// `tenant`. (`#` cannot follow the pipeline part of a pipe's namespace,
    /// which continues with a digit, so the two never meet.)
    pub fn for_window(tenant: &str, pipeline: &str, window: &str) -> Self {
        Namespace(
            format!(
                "{}#window{}/",
                length_prefixed(&[tenant, pipeline]),
                length_prefixed(&[window])
            )
            .into_bytes(),
        )
    }

    /// The namespace of join `join`'s saved buffers in `pipeline` of
    /// `tenant`. (`#join` cannot follow the pipeline part of a pipe's
    /// namespace, which continues with a digit, and differs from `#window`
    /// and `#outbox` from its second byte, so none of them meet.)
    pub fn for_join(tenant: &str, pipeline: &str, join: &str) -> Self {
        Namespace(
            format!(
                "{}#join{}/",
                length_prefixed(&[tenant, pipeline]),
                length_prefixed(&[join])
            )
            .into_bytes(),
        )
    }

    /// The namespace of the outbox of `pipeline` of `tenant`: the output
    /// a pipeline that publishes after the commit holds in its checkpoint
    /// (`#outbox` cannot follow the pipeline part of a pipe's namespace,
    /// and differs from `#window`).
    pub fn for_outbox(tenant: &str, pipeline: &str) -> Self {
        Namespace(format!("{}#outbox/", length_prefixed(&[tenant, pipeline])).into_bytes())
    }

    /// The prefix under which every key of `tenant` lies (pipes, windows
    /// and outboxes).
    pub fn tenant_prefix(tenant: &str) -> Vec<u8> {
        length_prefixed(&[tenant]).into_bytes()
    }

    /// The prefix under which every key of `pipeline` of `tenant` lies
    /// (its pipes', windows' and outbox's).
    pub fn pipeline_prefix(tenant: &str, pipeline: &str) -> Vec<u8> {
        length_prefixed(&[tenant, pipeline]).into_bytes()
    }

    /// Whose key `full` is, a key under
    /// [`Namespace::pipeline_prefix`]`(tenant, pipeline)`; `None` when it is
    /// not under that prefix.
    pub fn owner_of<'a>(tenant: &str, pipeline: &str, full: &'a [u8]) -> Option<KeyOwner<'a>> {
        let rest = full.strip_prefix(Namespace::pipeline_prefix(tenant, pipeline).as_slice())?;
        if let Some(rest) = rest.strip_prefix(b"#window") {
            // `<length>:<window>/<entry>`
            let (window, entry) = length_prefixed_part(rest)?;
            let entry = entry.strip_prefix(b"/")?;
            return Some(KeyOwner::Window { window, entry });
        }
        if let Some(entry) = rest.strip_prefix(b"#outbox/") {
            return Some(KeyOwner::Outbox { entry });
        }
        let (pipe, key) = length_prefixed_part(rest)?;
        let key = key.strip_prefix(b"/")?;
        Some(KeyOwner::Pipe { pipe, key })
    }

    /// The prefix bytes.
    pub fn prefix(&self) -> &[u8] {
        &self.0
    }

    /// The key under which the version of the pipe's state format is
    /// recorded (a module's declared `state-version`): beside the pipe's
    /// keys, never under its prefix, so no guest key can reach it and a
    /// scan of the namespace does not see it (`#` cannot follow the pipe
    /// part of a key where a guest key's `/` does).
    pub fn state_version_key(&self) -> Vec<u8> {
        let base = self.0.strip_suffix(b"/").unwrap_or(&self.0);
        let mut key = Vec::with_capacity(base.len() + STATE_VERSION_SUFFIX.len());
        key.extend_from_slice(base);
        key.extend_from_slice(STATE_VERSION_SUFFIX);
        key
    }

    /// The full key of a guest's key.
    pub fn key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.0.len() + key.len());
        full.extend_from_slice(&self.0);
        full.extend_from_slice(key.as_bytes());
        full
    }
}

/// What [`Namespace::state_version_key`] appends to a pipe's namespace
/// (without its final `/`).
const STATE_VERSION_SUFFIX: &[u8] = b"#state-version";

/// How a pipe's writes reach the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Into a write set that the next checkpoint commits atomically with the
    /// source position (exactly-once effect on state).
    Checkpointed,
    /// Straight to the backend (at-least-once and at-most-once).
    WriteThrough,
}

/// One pipe's view of state: its namespace, its uncommitted writes, and the
/// backend behind them. Reads see the pipe's own pending writes first.
///
/// Writes of the call in progress are kept apart from the epoch's earlier
/// ones, so a call that fails (a guest error, a trap, a limit) can be undone
/// without touching what earlier calls wrote ([`PipeState::end_call`]).
pub struct PipeState {
    backend: SharedState,
    namespace: Namespace,
    /// Writes since the last checkpoint, the call in progress's included,
    /// by guest key (the namespace is added when they are handed over).
    writes: HashMap<Vec<u8>, Pending, KeyHasher>,
    /// The number of the call in progress.
    call: u64,
    mode: WriteMode,
    quota: Option<StateQuota>,
    /// Bytes charged to the quota by the call in progress for writes that
    /// an undo takes back (checkpointed writes only: write-through writes
    /// have reached the backend and stay charged).
    charged: i64,
    /// Bytes of keys and values in `writes` (guest keys, without the namespace).
    pending_bytes: usize,
    /// The most one call may add to the write set (checkpoints are forced
    /// between calls; within one, nothing else bounds it).
    call_bound: PendingBound,
    /// The write set's size when the call in progress started.
    call_start: PendingWrites,
    /// A new state version to record with the next checkpoint.
    version_write: Option<String>,
}

/// The most a pipe may write between two checkpoints: keys and bytes of
/// keys and values (`None`: no bound).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingBound {
    /// Keys.
    pub keys: Option<u64>,
    /// Bytes.
    pub bytes: Option<u64>,
}

/// The size of a pipe's uncommitted write set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingWrites {
    /// Keys written since the last checkpoint.
    pub keys: usize,
    /// Bytes of those keys and their values.
    pub bytes: usize,
}

impl PipeState {
    /// A view of `backend` in `namespace` with no pending writes.
    pub fn new(backend: SharedState, namespace: Namespace, mode: WriteMode) -> Self {
        PipeState {
            backend,
            namespace,
            writes: HashMap::default(),
            call: 0,
            mode,
            quota: None,
            charged: 0,
            pending_bytes: 0,
            call_bound: PendingBound::default(),
            call_start: PendingWrites::default(),
            version_write: None,
        }
    }

    /// Refuses a write that would take what one call adds to the write set
    /// past `bound` (a `pending_writes` limit).
    #[must_use]
    pub fn with_call_bound(mut self, bound: PendingBound) -> Self {
        self.call_bound = bound;
        self
    }

    /// Charges the size of every write to a tenant's state quota.
    #[must_use]
    pub fn with_quota(mut self, quota: Option<StateQuota>) -> Self {
        self.quota = quota;
        self
    }

    /// The same view with the pending writes moved into it (an instance
    /// re-created after a trap, or a swapped module, keeps them).
    pub fn take(&mut self) -> PipeState {
        PipeState {
            backend: self.backend.clone(),
            namespace: self.namespace.clone(),
            writes: std::mem::take(&mut self.writes),
            call: self.call,
            mode: self.mode,
            quota: self.quota.clone(),
            charged: std::mem::take(&mut self.charged),
            pending_bytes: std::mem::take(&mut self.pending_bytes),
            call_bound: self.call_bound,
            call_start: std::mem::take(&mut self.call_start),
            version_write: self.version_write.take(),
        }
    }

    /// A copy of this view with its pending writes: what to go back to
    /// when a state migration fails.
    pub fn fork(&self) -> PipeState {
        PipeState {
            backend: self.backend.clone(),
            namespace: self.namespace.clone(),
            writes: self.writes.clone(),
            call: self.call,
            mode: self.mode,
            quota: self.quota.clone(),
            charged: self.charged,
            pending_bytes: self.pending_bytes,
            call_bound: self.call_bound,
            call_start: self.call_start,
            version_write: self.version_write.clone(),
        }
    }

    /// How writes reach the backend.
    pub fn mode(&self) -> WriteMode {
        self.mode
    }

    /// The version of the state format recorded with the pipe's state
    /// (the one set since the last checkpoint first); `None` when no module
    /// that declares one has run yet.
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub async fn state_version(&self) -> Result<Option<String>, StateError> {
        if let Some(version) = &self.version_write {
            return Ok(Some(version.clone()));
        }
        let stored = self
            .backend
            .get(&self.namespace.state_version_key())
            .await?;
        Ok(stored.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Records `version` as the state's version: with the next checkpoint,
    /// or at once under write-through.
    ///
    /// # Errors
    ///
    /// Write-through: the backend failed.
    pub async fn record_state_version(&mut self, version: &str) -> Result<(), StateError> {
        match self.mode {
            WriteMode::Checkpointed => {
                self.version_write = Some(version.to_owned());
                Ok(())
            }
            WriteMode::WriteThrough => {
                self.backend
                    .set(&self.namespace.state_version_key(), version.as_bytes())
                    .await
            }
        }
    }

    /// Every key of the pipe's namespace with its value as the pipe sees
    /// it (committed state with the pending writes over it), in key order:
    /// what a state migration converts.
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub async fn entries(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        let prefix = self.namespace.prefix();
        let committed = self.backend.scan_prefix(prefix).await?;
        let mut entries: std::collections::BTreeMap<String, Vec<u8>> = committed
            .into_iter()
            .filter_map(|(full, value)| {
                let key = full.strip_prefix(prefix)?;
                // Guest keys are strings; nothing else is written here.
                Some((String::from_utf8(key.to_vec()).ok()?, value))
            })
            .collect();
        for (key, pending) in &self.writes {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            match pending.value.to_bytes() {
                Some(value) => {
                    entries.insert(key.to_owned(), value);
                }
                None => {
                    entries.remove(key);
                }
            }
        }
        Ok(entries.into_iter().collect())
    }

    /// Writes what a state migration returned for `key` (`None` deletes
    /// it) into the write set. Charged to the quota like any write; not
    /// held to the per-call bound, since a migration rewrites the whole
    /// namespace in the checkpoint of the switch by design.
    ///
    /// # Errors
    ///
    /// The tenant's quota would be exceeded, or the backend failed.
    pub async fn put_migrated(
        &mut self,
        key: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StateError> {
        let old = self.old_len(key).await?;
        self.charge(key, old, value.as_ref().map(Vec::len))?;
        self.write(key, Stored::Bytes(value));
        Ok(())
    }

    /// How much is waiting for the next checkpoint (nothing under write-through).
    pub fn pending(&self) -> PendingWrites {
        PendingWrites {
            keys: self.writes.len(),
            bytes: self.pending_bytes,
        }
    }

    /// A view of the same namespace whose writes go nowhere: for checking
    /// that a new module's `init` succeeds without touching real state.
    pub fn scratch(&self) -> PipeState {
        PipeState::new(
            self.backend.clone(),
            self.namespace.clone(),
            WriteMode::Checkpointed,
        )
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The value of a guest key: the pipe's own pending write, or the backend's.
    async fn current(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self.writes.get(key.as_bytes()) {
            Some(pending) => Ok(pending.value.to_bytes()),
            None => self.backend.get(&self.namespace.key(key)).await,
        }
    }

    /// Charges a write that turns an entry of `old` value bytes into one of
    /// `new` (None: absent) to the quota; an entry costs its full key too.
    /// Returns the bytes charged (negative: freed).
    fn charge(
        &mut self,
        key: &str,
        old: Option<usize>,
        new: Option<usize>,
    ) -> Result<i64, StateError> {
        let Some(quota) = &self.quota else {
            return Ok(0);
        };
        let key_len = self.namespace.prefix().len() + key.len();
        let size = |value: Option<usize>| value.map_or(0, |len| (key_len + len) as i64);
        let delta = size(new) - size(old);
        quota.try_charge(delta)?;
        if self.mode == WriteMode::Checkpointed {
            // Undone with the call if it fails.
            self.charged += delta;
        }
        Ok(delta)
    }

    /// A write-through write the backend refused: it did not land, so its
    /// charge is given back.
    fn refund_failed<T>(&self, delta: i64, result: Result<T, StateError>) -> Result<T, StateError> {
        if result.is_err() {
            if let Some(quota) = &self.quota {
                quota.refund(delta);
            }
        }
        result
    }

    async fn old_len(&self, key: &str) -> Result<Option<usize>, StateError> {
        if self.quota.is_none() {
            return Ok(None);
        }
        Ok(self.current(key).await?.map(|value| value.len()))
    }

    /// Reads a guest key.
    ///
    /// # Errors
    ///
    /// The backend failed.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.current(key).await
    }

    /// Writes a guest key.
    ///
    /// # Errors
    ///
    /// The tenant's quota would be exceeded, or (write-through) the backend failed.
    pub async fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), StateError> {
        self.check_call_growth(key, Some(value.len()))?;
        let old = self.old_len(key).await?;
        let delta = self.charge(key, old, Some(value.len()))?;
        match self.mode {
            WriteMode::Checkpointed => {
                self.write(key, Stored::Bytes(Some(value)));
                Ok(())
            }
            WriteMode::WriteThrough => {
                let result = self.backend.set(&self.namespace.key(key), &value).await;
                self.refund_failed(delta, result)
            }
        }
    }

    /// Deletes a guest key.
    ///
    /// # Errors
    ///
    /// Write-through: the backend failed.
    pub async fn delete(&mut self, key: &str) -> Result<(), StateError> {
        self.check_call_growth(key, None)?;
        let old = self.old_len(key).await?;
        let delta = self.charge(key, old, None)?;
        match self.mode {
            WriteMode::Checkpointed => {
                self.write(key, Stored::Bytes(None));
                Ok(())
            }
            WriteMode::WriteThrough => {
                let result = self.backend.delete(&self.namespace.key(key)).await;
                self.refund_failed(delta, result)
            }
        }
    }

    /// Adds `delta` to the decimal integer at a guest key; absent counts as 0.
    ///
    /// # Errors
    ///
    /// The stored value is not an integer, the sum overflows, the tenant's
    /// quota would be exceeded, or the backend failed.
    pub async fn add(&mut self, key: &str, delta: i64) -> Result<i64, StateError> {
        if self.mode == WriteMode::Checkpointed && self.quota.is_none() {
            // The hot path of counters: a key written since the checkpoint
            // is updated where it lies, as an integer (no text parsed or
            // written, nothing allocated).
            if let Some(pending) = self.writes.get_mut(key.as_bytes()) {
                let current = match &pending.value {
                    Stored::Counter(n) => Some(*n),
                    Stored::Bytes(Some(bytes)) => Some(parse_integer(key.as_bytes(), bytes)?),
                    // Deleted in this epoch: the general path below.
                    Stored::Bytes(None) => None,
                };
                if let Some(current) = current {
                    let next = checked_sum(key.as_bytes(), current, delta)?;
                    let old_len = pending.value.len().unwrap_or(0);
                    let value = Stored::Counter(next);
                    if pending.call == self.call {
                        pending.value = value;
                    } else {
                        // The first write of this call: keep what it replaces
                        // for an undo.
                        pending.before = Some(std::mem::replace(&mut pending.value, value));
                        pending.call = self.call;
                    }
                    self.pending_bytes = self.pending_bytes + decimal_len(next) - old_len;
                    return Ok(next);
                }
            }
        }
        if self.mode == WriteMode::WriteThrough && self.quota.is_none() {
            return self.backend.add(&self.namespace.key(key), delta).await;
        }
        let current = self.current(key).await?;
        self.add_to(key, delta, current).await
    }

    /// Applies each `(key, delta)` in order, as that many [`PipeState::add`]
    /// calls would, pushing the new values to `values`; key `i` is
    /// `keys[ops[i-1].0..ops[i].0]`. Under exactly-once on a backend that
    /// [batches reads](StateBackend::batches_reads), the committed values
    /// of the keys not yet in the write set are read in one
    /// [`StateBackend::get_many`] (one round trip instead of one per new key).
    ///
    /// # Errors
    ///
    /// As [`PipeState::add`], for the first addition that fails (those
    /// before it are applied).
    pub async fn add_many(
        &mut self,
        keys: &str,
        ops: &[(usize, i64)],
        values: &mut Vec<i64>,
    ) -> Result<(), StateError> {
        let key_at = |start: usize, end: usize| keys.get(start..end).unwrap_or_default();
        let mut prefetched: HashMap<&str, Option<Vec<u8>>, KeyHasher> = HashMap::default();
        if self.mode == WriteMode::Checkpointed
            && self.quota.is_none()
            && self.backend.batches_reads()
        {
            let mut missing: Vec<&str> = Vec::new();
            let mut start = 0;
            for &(end, _) in ops {
                let key = key_at(start, end);
                start = end;
                if !self.writes.contains_key(key.as_bytes()) && !prefetched.contains_key(key) {
                    prefetched.insert(key, None);
                    missing.push(key);
                }
            }
            if missing.len() > 1 {
                let full: Vec<Vec<u8>> =
                    missing.iter().map(|key| self.namespace.key(key)).collect();
                let read = self.backend.get_many(&full).await?;
                for (key, value) in missing.into_iter().zip(read) {
                    prefetched.insert(key, value);
                }
            } else {
                // One new key (or none): the ordinary path reads it.
                prefetched.clear();
            }
        }
        let mut start = 0;
        for &(end, delta) in ops {
            let key = key_at(start, end);
            start = end;
            let read = if prefetched.is_empty() {
                None
            } else {
                prefetched.remove(key)
            };
            let value = match read {
                // Not in the write set before this call: its committed value
                // was read above (later additions to it find it written).
                Some(current) => self.add_to(key, delta, current).await?,
                None => self.add(key, delta).await?,
            };
            values.push(value);
        }
        Ok(())
    }

    /// The general path of [`PipeState::add`], from the key's `current` value.
    async fn add_to(
        &mut self,
        key: &str,
        delta: i64,
        current: Option<Vec<u8>>,
    ) -> Result<i64, StateError> {
        let old_len = current.as_ref().map(Vec::len);
        let current = match current {
            None => 0,
            Some(bytes) => parse_integer(key.as_bytes(), &bytes)?,
        };
        let next = checked_sum(key.as_bytes(), current, delta)?;
        let new_len = decimal_len(next);
        self.check_call_growth(key, Some(new_len))?;
        let charged = self.charge(key, old_len, Some(new_len))?;
        if self.mode == WriteMode::WriteThrough {
            let result = self.backend.add(&self.namespace.key(key), delta).await;
            return self.refund_failed(charged, result);
        }
        self.write(key, Stored::Counter(next));
        Ok(next)
    }

    /// Refuses a checkpointed write that would take what the call in
    /// progress added to the write set past the call bound.
    fn check_call_growth(&self, key: &str, value_len: Option<usize>) -> Result<(), StateError> {
        if self.mode != WriteMode::Checkpointed {
            return Ok(());
        }
        let existing = self.writes.get(key.as_bytes());
        let keys = self.writes.len() + usize::from(existing.is_none());
        let old_bytes = existing.map_or(0, |pending| entry_bytes(key.as_bytes(), &pending.value));
        let bytes = self.pending_bytes + key.len() + value_len.unwrap_or(0) - old_bytes;
        let grown = |now: usize, start: usize| now.saturating_sub(start) as u64;
        if let Some(limit) = self.call_bound.keys {
            if existing.is_none() && grown(keys, self.call_start.keys) > limit {
                return Err(StateError::PendingWrites {
                    what: "keys",
                    field: "max_pending_keys",
                    limit,
                });
            }
        }
        if let Some(limit) = self.call_bound.bytes {
            if grown(bytes, self.call_start.bytes) > limit {
                return Err(StateError::PendingWrites {
                    what: "bytes",
                    field: "max_pending_bytes",
                    limit,
                });
            }
        }
        Ok(())
    }

    /// Ends a call into the guest: its writes join the epoch's when it
    /// succeeded, and are dropped (with their quota charge) when it failed.
    /// Write-through writes have already landed either way, so they stay
    /// charged.
    pub fn end_call(&mut self, succeeded: bool) {
        if !succeeded {
            // Failures are rare: a scan of the epoch's writes finds the
            // call's own and puts back what they replaced.
            let call = self.call;
            self.writes.retain(|_, pending| {
                if pending.call != call {
                    return true;
                }
                match pending.before.take() {
                    Some(before) => {
                        pending.value = before;
                        // Not this call's any more (and not undone twice).
                        pending.call = call.wrapping_sub(1);
                        true
                    }
                    None => false,
                }
            });
            self.pending_bytes = self
                .writes
                .iter()
                .map(|(key, pending)| entry_bytes(key, &pending.value))
                .sum();
            if let Some(quota) = &self.quota {
                quota.refund(self.charged);
            }
        }
        // A new call number: what this call replaced is no longer needed for
        // an undo (it is dropped when the key is next written, or at the checkpoint).
        self.call += 1;
        self.charged = 0;
        self.call_start = self.pending();
    }

    /// Records a write of the call in progress.
    fn write(&mut self, key: &str, value: Stored) {
        let call = self.call;
        let new_bytes = entry_bytes(key.as_bytes(), &value);
        if let Some(pending) = self.writes.get_mut(key.as_bytes()) {
            let old_bytes = entry_bytes(key.as_bytes(), &pending.value);
            self.pending_bytes = self.pending_bytes + new_bytes - old_bytes;
            if pending.call == call {
                pending.value = value;
            } else {
                pending.before = Some(std::mem::replace(&mut pending.value, value));
                pending.call = call;
            }
            return;
        }
        match self.writes.entry(key.as_bytes().to_vec()) {
            std::collections::hash_map::Entry::Occupied(mut entry) => {
                let pending = entry.get_mut();
                let old_bytes = entry_bytes(key.as_bytes(), &pending.value);
                self.pending_bytes = self.pending_bytes + new_bytes - old_bytes;
                if pending.call == call {
                    pending.value = value;
                } else {
                    pending.before = Some(std::mem::replace(&mut pending.value, value));
                    pending.call = call;
                }
            }
            std::collections::hash_map::Entry::Vacant(entry) => {
                self.pending_bytes += new_bytes;
                entry.insert(Pending {
                    value,
                    call,
                    before: None,
                });
            }
        }
    }

    /// Hands over the pending writes for a checkpoint, leaving none.
    pub fn take_writes(&mut self) -> WriteSet {
        self.end_call(true);
        self.pending_bytes = 0;
        self.call_start = PendingWrites::default();
        let mut writes =
            WriteSet::with_capacity_and_hasher(self.writes.len(), KeyHasher::default());
        let prefix = self.namespace.prefix();
        writes.extend(self.writes.drain().map(|(key, pending)| {
            let mut full = Vec::with_capacity(prefix.len() + key.len());
            full.extend_from_slice(prefix);
            full.extend_from_slice(&key);
            (full, pending.value.into_bytes())
        }));
        if let Some(version) = self.version_write.take() {
            writes.insert(
                self.namespace.state_version_key(),
                Some(version.into_bytes()),
            );
        }
        writes
    }

    /// Drops the pending writes (after a failed call whose effects must not land).
    pub fn discard_writes(&mut self) {
        self.end_call(false);
        self.writes.clear();
        self.version_write = None;
        self.pending_bytes = 0;
        self.call_start = PendingWrites::default();
    }
}

/// What a pending entry counts toward [`PendingWrites::bytes`].
fn entry_bytes(key: &[u8], value: &Stored) -> usize {
    key.len() + value.len().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast integer parse agrees with `str::parse` (the reference) on
    /// every edge: signs, zeros, lengths around 18 digits, the `i64` range
    /// and bytes that are not digits.
    #[test]
    fn stored_integers_parse_as_str_parse_does() {
        let mut cases: Vec<String> = [
            "",
            "-",
            "+",
            "0",
            "-0",
            "007",
            "-007",
            "+5",
            "5+",
            " 5",
            "5 ",
            "1_0",
            "١",
            "123456789012345678",
            "-123456789012345678",
            "999999999999999999",
            "1234567890123456789",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "00000000000000000001",
        ]
        .iter()
        .map(|case| (*case).to_owned())
        .collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..10_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = seed as i64 >> (seed % 64);
            cases.push(n.to_string());
        }
        for case in &cases {
            let reference = case.parse::<i64>().ok();
            let parsed = parse_integer(b"k", case.as_bytes()).ok();
            assert_eq!(parsed, reference, "{case:?}");
        }
        assert!(parse_integer(b"k", &[0xff, b'1']).is_err());
        // The length of a counter's text, computed without writing it.
        for case in &cases {
            if let Ok(n) = case.parse::<i64>() {
                assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
            }
        }
        for n in [0, 9, 10, -1, -10, i64::MAX, i64::MIN] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }

    /// A counter written in many calls keeps exact values and an exact undo
    /// of the failed call, with its buffers reused between calls.
    #[tokio::test]
    async fn counters_across_calls_undo_exactly() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let mut state = PipeState::new(
            backend,
            Namespace::for_pipe("p", "c"),
            WriteMode::Checkpointed,
        );
        let mut reference = 0i64;
        for call in 0..50i64 {
            let before = reference;
            for _ in 0..3 {
                assert_eq!(state.add("n", call).await.unwrap(), reference + call);
                reference += call;
            }
            let succeeded = call % 7 != 3;
            state.end_call(succeeded);
            if !succeeded {
                reference = before;
            }
            assert_eq!(
                state.get("n").await.unwrap(),
                Some(reference.to_string().into_bytes()),
                "after call {call}"
            );
            assert_eq!(state.pending().bytes, 1 + reference.to_string().len());
        }
    }

    #[test]
    fn a_stored_key_names_its_owner() {
        let pipe = Namespace::for_tenant_pipe("t", "orders#p03", "count").key("k:/1");
        assert_eq!(
            Namespace::owner_of("t", "orders#p03", &pipe),
            Some(KeyOwner::Pipe {
                pipe: "count",
                key: b"k:/1"
            })
        );
        // Another partition's keys are not this one's.
        assert_eq!(Namespace::owner_of("t", "orders#p0", &pipe), None);
        assert_eq!(Namespace::owner_of("u", "orders#p03", &pipe), None);
        let mut window = Namespace::for_window("t", "orders#p03", "w/1")
            .prefix()
            .to_vec();
        window.extend_from_slice(b"key/ab");
        assert_eq!(
            Namespace::owner_of("t", "orders#p03", &window),
            Some(KeyOwner::Window {
                window: "w/1",
                entry: b"key/ab"
            })
        );
        let mut outbox = Namespace::for_outbox("t", "orders#p03").prefix().to_vec();
        outbox.extend_from_slice(b"head");
        assert_eq!(
            Namespace::owner_of("t", "orders#p03", &outbox),
            Some(KeyOwner::Outbox { entry: b"head" })
        );
    }

    #[test]
    fn namespaces_cannot_collide_through_names() {
        let a = Namespace::for_pipe("p/a", "b");
        let b = Namespace::for_pipe("p", "a/b");
        assert_ne!(a.key("x"), b.key("x"));
        assert!(!a.prefix().starts_with(b.prefix()) && !b.prefix().starts_with(a.prefix()));
        // Tenants: no pipe of one tenant lies under another tenant's prefix.
        let acme = Namespace::for_tenant_pipe("acme", "p", "count");
        let other = Namespace::for_tenant_pipe("acme2", "p", "count");
        let window = Namespace::for_window("acme", "p", "count");
        assert!(acme.prefix().starts_with(&Namespace::tenant_prefix("acme")));
        assert!(window
            .prefix()
            .starts_with(&Namespace::tenant_prefix("acme")));
        assert!(!other
            .prefix()
            .starts_with(&Namespace::tenant_prefix("acme")));
        assert!(!acme
            .prefix()
            .starts_with(&Namespace::tenant_prefix("acme2")));
        assert_ne!(acme.prefix(), window.prefix());
        let outbox = Namespace::for_outbox("acme", "p");
        assert!(outbox
            .prefix()
            .starts_with(&Namespace::tenant_prefix("acme")));
        for other in [&acme, &window] {
            assert!(!outbox.prefix().starts_with(other.prefix()));
            assert!(!other.prefix().starts_with(outbox.prefix()));
        }
    }

    #[test]
    fn join_namespaces_collide_with_nothing() {
        let join = Namespace::for_join("acme", "p", "count");
        let others = [
            Namespace::for_tenant_pipe("acme", "p", "count"),
            Namespace::for_window("acme", "p", "count"),
            Namespace::for_outbox("acme", "p"),
            Namespace::for_join("acme", "p", "count2"),
            Namespace::for_join("acme", "p/count", ""),
            Namespace::for_join("acme2", "p", "count"),
        ];
        assert!(join
            .prefix()
            .starts_with(&Namespace::pipeline_prefix("acme", "p")));
        for other in &others {
            assert!(
                !join.prefix().starts_with(other.prefix())
                    && !other.prefix().starts_with(join.prefix()),
                "{:?} and {:?}",
                String::from_utf8_lossy(join.prefix()),
                String::from_utf8_lossy(other.prefix())
            );
        }
        // A join's entries are no pipe's, window's or outbox's keys.
        let mut entry = join.prefix().to_vec();
        entry.extend_from_slice(b"key/ab");
        assert_eq!(Namespace::owner_of("acme", "p", &entry), None);
    }

    #[test]
    fn integers_are_written_as_decimal_text() {
        let mut out = b"garbage".to_vec();
        for n in [0, 7, -7, 10, 1234567890, i64::MAX, i64::MIN] {
            write_integer(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
    }

    #[tokio::test]
    async fn repeated_adds_in_one_call_and_across_calls_agree() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let namespace = Namespace::for_pipe("p", "count");
        backend.set(&namespace.key("old"), b"40").await.unwrap();
        let mut state = PipeState::new(backend, namespace, WriteMode::Checkpointed);
        assert_eq!(state.add("old", 1).await.unwrap(), 41);
        assert_eq!(state.add("old", 1).await.unwrap(), 42);
        state.end_call(true);
        assert_eq!(state.add("old", -50).await.unwrap(), -8);
        assert_eq!(state.add("old", 10).await.unwrap(), 2);
        // A failed call's adds are undone, earlier calls' kept.
        state.end_call(false);
        assert_eq!(state.get("old").await.unwrap(), Some(b"42".to_vec()));
        state.set("text", b"x".to_vec()).await.unwrap();
        assert!(matches!(
            state.add("text", 1).await,
            Err(StateError::Invalid(_))
        ));
        state
            .set("max", i64::MAX.to_string().into_bytes())
            .await
            .unwrap();
        assert!(matches!(
            state.add("max", 1).await,
            Err(StateError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn a_failed_call_puts_back_exactly_what_it_replaced() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let namespace = Namespace::for_pipe("p", "undo");
        backend.set(&namespace.key("stored"), b"s").await.unwrap();
        let mut state = PipeState::new(backend, namespace, WriteMode::Checkpointed);
        state.set("a", b"1".to_vec()).await.unwrap();
        state.add("n", 5).await.unwrap();
        state.end_call(true);
        // The failed call overwrites, deletes, adds and creates.
        state.set("a", b"2".to_vec()).await.unwrap();
        state.set("a", b"3".to_vec()).await.unwrap();
        state.delete("stored").await.unwrap();
        state.add("n", 1).await.unwrap();
        state.add("n", 1).await.unwrap();
        state.set("new", b"x".to_vec()).await.unwrap();
        state.end_call(false);
        assert_eq!(state.get("a").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(state.get("stored").await.unwrap(), Some(b"s".to_vec()));
        assert_eq!(state.get("n").await.unwrap(), Some(b"5".to_vec()));
        assert_eq!(state.get("new").await.unwrap(), None);
        // A later failed call that wrote nothing undoes nothing more.
        state.end_call(false);
        assert_eq!(state.get("a").await.unwrap(), Some(b"1".to_vec()));
        // A successful call after the failure counts from the restored value.
        assert_eq!(state.add("n", 1).await.unwrap(), 6);
        let writes = state.take_writes();
        let mut keys: Vec<_> = writes.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys.len(), 2, "only a and n are pending: {keys:?}");
    }

    #[tokio::test]
    async fn reads_see_pending_writes_and_add_counts() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let mut state = PipeState::new(
            backend.clone(),
            Namespace::for_pipe("p", "count"),
            WriteMode::Checkpointed,
        );
        assert_eq!(state.add("ada", 1).await.unwrap(), 1);
        assert_eq!(state.add("ada", 2).await.unwrap(), 3);
        assert_eq!(state.get("ada").await.unwrap(), Some(b"3".to_vec()));
        state.delete("ada").await.unwrap();
        assert_eq!(state.get("ada").await.unwrap(), None);
        state.set("name", b"not a number".to_vec()).await.unwrap();
        assert!(matches!(
            state.add("name", 1).await,
            Err(StateError::Invalid(_))
        ));
        // Nothing reached the backend before a commit.
        assert_eq!(backend.scan_prefix(b"").await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn pending_counts_follow_writes_undos_and_checkpoints() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let mut state = PipeState::new(
            backend,
            Namespace::for_pipe("p", "count"),
            WriteMode::Checkpointed,
        );
        assert_eq!(state.pending(), PendingWrites::default());
        state.set("ab", b"xyz".to_vec()).await.unwrap();
        state.add("n", 9).await.unwrap();
        state.end_call(true);
        assert_eq!(
            state.pending(),
            PendingWrites {
                keys: 2,
                bytes: 5 + 2
            }
        );
        // A counter growing a digit in place, in this call and the next.
        state.add("n", 1).await.unwrap();
        state.add("n", 90).await.unwrap();
        assert_eq!(
            state.pending(),
            PendingWrites {
                keys: 2,
                bytes: 5 + 4
            }
        );
        state.set("new", b"1234".to_vec()).await.unwrap();
        state.delete("ab").await.unwrap();
        // The failed call is undone, and so are its sizes.
        state.end_call(false);
        assert_eq!(
            state.pending(),
            PendingWrites {
                keys: 2,
                bytes: 5 + 2
            }
        );
        assert_eq!(state.take_writes().len(), 2);
        assert_eq!(state.pending(), PendingWrites::default());
    }

    #[tokio::test]
    async fn write_through_reaches_the_backend_at_once() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let namespace = Namespace::for_pipe("p", "count");
        let mut state = PipeState::new(backend.clone(), namespace.clone(), WriteMode::WriteThrough);
        assert_eq!(state.add("ada", 2).await.unwrap(), 2);
        state.set("bob", b"x".to_vec()).await.unwrap();
        assert_eq!(
            backend.get(&namespace.key("ada")).await.unwrap(),
            Some(b"2".to_vec())
        );
        assert_eq!(
            backend.get(&namespace.key("bob")).await.unwrap(),
            Some(b"x".to_vec())
        );
        state.delete("bob").await.unwrap();
        assert_eq!(backend.get(&namespace.key("bob")).await.unwrap(), None);
        assert!(state.take_writes().is_empty());
    }

    #[tokio::test]
    async fn entries_show_pending_writes_over_committed_state_and_the_version_key_stays_apart() {
        let backend: SharedState = Arc::new(MemoryState::new());
        let namespace = Namespace::for_pipe("p", "count");
        let other = Namespace::for_pipe("p", "count2");
        let mut state = PipeState::new(backend.clone(), namespace.clone(), WriteMode::Checkpointed);
        state.set("a", b"1".to_vec()).await.unwrap();
        state.set("b", b"2".to_vec()).await.unwrap();
        state.set("c", b"3".to_vec()).await.unwrap();
        state.record_state_version("1").await.unwrap();
        let mut writes = state.take_writes();
        writes.insert(other.key("z"), Some(b"other pipe".to_vec()));
        assert_eq!(
            writes.get(&namespace.state_version_key()),
            Some(&Some(b"1".to_vec()))
        );
        let record = CheckpointRecord::new("p", 1, crate::checkpoint::Position::Offset(0));
        backend.commit(&record, &[writes]).await.unwrap();
        assert_eq!(state.state_version().await.unwrap().as_deref(), Some("1"));
        // Pending: b changed, c deleted, d new.
        state.set("b", b"20".to_vec()).await.unwrap();
        state.delete("c").await.unwrap();
        state.set("d", b"4".to_vec()).await.unwrap();
        let expected: Vec<(String, Vec<u8>)> = [("a", "1"), ("b", "20"), ("d", "4")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(state.entries().await.unwrap(), expected);
        assert!(!namespace
            .state_version_key()
            .starts_with(namespace.prefix()));
        assert!(!namespace.state_version_key().starts_with(other.prefix()));
        // A fork is a copy: what the original writes after it is not in it.
        let fork = state.fork();
        state.set("e", b"5".to_vec()).await.unwrap();
        assert_eq!(fork.entries().await.unwrap(), expected);
    }
}
