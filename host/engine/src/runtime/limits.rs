//! Limits per pipe: what one call into a guest may take from the host.
//!
//! Time is bounded by epoch interruption: one engine-wide ticker advances
//! the epoch every [`EPOCH_TICK`]; at each tick a running guest yields to
//! tokio (so a spinning guest never holds a worker thread for longer than a
//! tick) and is stopped once its call has run past `call_timeout_ms`.
//! Memory is bounded by a [`wasmtime::ResourceLimiter`]: growing past the
//! cap fails inside the guest. Output and state sizes are checked by the
//! host where they cross the boundary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{Engine, ResourceLimiter};

/// How often the engine's epoch advances: the granularity of time limits
/// and of a spinning guest's yields.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// What one pipe may use. Every field has a default; a config sets only
/// the ones it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipeLimits {
    /// Wall-clock milliseconds one call (`init` or `process`) may run
    /// (default 10 000).
    pub call_timeout_ms: u64,
    /// Bytes of linear memory the instance may grow to (default 256 MiB).
    pub memory_bytes: u64,
    /// Events one call may return (default 1 000 000).
    pub max_output_events: u64,
    /// Bytes one call may return (default 64 MiB): keys, values, header
    /// names and values, and [`HEADER_OVERHEAD_BYTES`] per header (see
    /// [`output_bytes`]).
    pub max_output_bytes: u64,
    /// Bytes of one state key (default 4096).
    pub max_key_bytes: u64,
    /// Bytes of one state value (default 1 MiB).
    pub max_value_bytes: u64,
    /// Wall-clock milliseconds a whole state migration at a hot swap may
    /// run, over all its `migrate` calls (default 60 000); each call is
    /// also held to `call_timeout_ms`.
    pub migrate_timeout_ms: u64,
}

impl Default for PipeLimits {
    fn default() -> Self {
        PipeLimits {
            call_timeout_ms: 10_000,
            memory_bytes: 256 << 20,
            max_output_events: 1_000_000,
            max_output_bytes: 64 << 20,
            max_key_bytes: 4096,
            max_value_bytes: 1 << 20,
            migrate_timeout_ms: 60_000,
        }
    }
}

impl PipeLimits {
    /// The per-call time limit.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// The time limit of a whole state migration.
    pub fn migrate_timeout(&self) -> Duration {
        Duration::from_millis(self.migrate_timeout_ms)
    }

    /// The first field that cannot work, with why (for config checks).
    pub fn invalid_field(&self) -> Option<(&'static str, &'static str)> {
        let fields = [
            ("call_timeout_ms", self.call_timeout_ms),
            ("memory_bytes", self.memory_bytes),
            ("max_output_events", self.max_output_events),
            ("max_output_bytes", self.max_output_bytes),
            ("max_key_bytes", self.max_key_bytes),
            ("max_value_bytes", self.max_value_bytes),
            ("migrate_timeout_ms", self.migrate_timeout_ms),
        ];
        if let Some((field, _)) = fields.iter().find(|(_, value)| *value == 0) {
            return Some((field, "expected a positive number"));
        }
        if self.memory_bytes < 1 << 20 {
            return Some((
                "memory_bytes",
                "expected at least 1048576 (1 MiB); a component needs some memory to start",
            ));
        }
        None
    }
}

/// What each header of a returned event counts toward `max_output_bytes`
/// on top of its name and value: the host's in-memory size of a header
/// pair (48 bytes on 64-bit hosts), so that many empty headers cost what
/// they take.
pub const HEADER_OVERHEAD_BYTES: u64 = std::mem::size_of::<(String, String)>() as u64;

/// What one returned event counts toward `max_output_bytes`: its key,
/// value, header names and values, and [`HEADER_OVERHEAD_BYTES`] per header.
pub fn output_bytes(event: &crate::Event) -> u64 {
    event.size_bytes() as u64 + event.headers.len() as u64 * HEADER_OVERHEAD_BYTES
}

/// The message of an answer over `max_output_bytes`.
pub(crate) fn output_bytes_message(bytes: u64, headers: u64, max: u64) -> String {
    if headers == 0 {
        format!("returned {bytes} bytes of events; the limit is {max}")
    } else {
        format!(
            "returned {bytes} bytes of events with {headers} headers (each header counts its \
             name and value plus {HEADER_OVERHEAD_BYTES} bytes); the limit is {max}"
        )
    }
}

/// The most bytes wasmtime copies out of a guest in one crossing (a host
/// call's arguments, or a call's answer): what `max_output_events` and
/// `max_output_bytes` allow an answer to take in host memory, and never
/// less than wasmtime's own default, which host calls such as `add-many`
/// rely on. Through the canonical ABI this stops an oversized answer while
/// it is copied, before the host allocates it whole.
pub(crate) fn hostcall_fuel(limits: &PipeLimits) -> usize {
    const WASMTIME_DEFAULT: u64 = 128 << 20;
    let events = limits
        .max_output_events
        .saturating_mul(std::mem::size_of::<crate::Event>() as u64);
    let answer = limits.max_output_bytes.saturating_add(events);
    usize::try_from(answer.max(WASMTIME_DEFAULT)).unwrap_or(usize::MAX)
}

/// Longest guest text the host keeps: an error message (a `pipe-error`,
/// a trap), a log line or a stdout/stderr line. Longer text is cut at a
/// character boundary and ends with `… (N bytes in all)`, so one failing
/// event cannot put megabytes into every log line and dead letter.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `text` cut to [`MAX_MESSAGE_BYTES`] (plus the note saying how long it was).
pub(crate) fn cap_message(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= MAX_MESSAGE_BYTES {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// Which limit a pipe went past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// The call ran longer than `call_timeout_ms`.
    Time,
    /// Linear memory would have grown past `memory_bytes`.
    Memory,
    /// The call returned more than `max_output_events` events.
    OutputEvents,
    /// The call returned more than `max_output_bytes` bytes.
    OutputBytes,
    /// A state key was longer than `max_key_bytes`.
    StateKey,
    /// A state value was longer than `max_value_bytes`.
    StateValue,
    /// A write would take the tenant past its state quota.
    StateQuota,
    /// One call wrote more new state than `checkpoint.max_pending_keys` or
    /// `max_pending_bytes` (a checkpoint cannot pass within a call).
    PendingWrites,
}

impl LimitKind {
    /// The name used in errors, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Time => "time",
            LimitKind::Memory => "memory",
            LimitKind::OutputEvents => "output_events",
            LimitKind::OutputBytes => "output_bytes",
            LimitKind::StateKey => "state_key",
            LimitKind::StateValue => "state_value",
            LimitKind::StateQuota => "state_quota",
            LimitKind::PendingWrites => "pending_writes",
        }
    }
}

impl std::fmt::Display for LimitKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a time-limit callback raises to stop a guest; the host tells
/// it from other traps by the limit recorded in the store.
#[derive(Debug, thiserror::Error)]
#[error("pipe went past its {0} limit")]
pub struct LimitExceeded(pub LimitKind);

/// Bounds one instance's memories and tables, and remembers a refusal so the
/// trap that follows is reported as a memory limit.
pub(crate) struct MemoryLimiter {
    max_bytes: usize,
    /// The largest memory size granted so far.
    pub(crate) peak_bytes: usize,
    /// A grow was refused during the current call.
    pub(crate) refused: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            peak_bytes: 0,
            refused: false,
        }
    }
}

/// Table elements an instance may have: far more than any real guest
/// needs, few enough to keep a hostile one's host memory small.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        // A component made by wit-component has a handful of core instances.
        64
    }

    fn memories(&self) -> usize {
        16
    }

    fn tables(&self) -> usize {
        64
    }
}

/// Advances an engine's epoch every [`EPOCH_TICK`] on its own thread until
/// dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("plumber-epoch".to_owned())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(EpochTicker { stop })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_with_their_length() {
        assert_eq!(cap_message("short"), "short");
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(cap_message(&exact), exact.as_str());
        // 'é' is two bytes: the cut falls inside one at an odd limit.
        let long = format!("x{}", "é".repeat(MAX_MESSAGE_BYTES));
        let capped = cap_message(&long);
        let (kept, note) = capped.split_once('…').unwrap();
        assert!(kept.len() <= MAX_MESSAGE_BYTES && kept.len() >= MAX_MESSAGE_BYTES - 1);
        assert_eq!(note, format!(" ({} bytes in all)", long.len()));
    }
}
