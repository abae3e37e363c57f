//! What a running pipeline is doing, readable while it runs.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dead_letter::{DeadLetterEntry, RECENT_DEAD_LETTERS};
use crate::histogram::Histogram;
use crate::recent::Recent;
use crate::step::StepCounters;
use crate::swap::PipeSlot;

/// Where a pipeline is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Loading pipes and restoring the last checkpoint.
    Starting,
    /// Processing.
    Running,
    /// Ended cleanly.
    Stopped,
    /// Ended with an error.
    Failed,
}

impl Phase {
    /// Its name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// How many committed checkpoints [`LiveStatus::checkpoint_history`] keeps.
pub const CHECKPOINT_HISTORY: usize = 64;

/// One committed checkpoint, as the admin console's history lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointEntry {
    /// Its epoch.
    pub epoch: u64,
    /// When it was committed, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How long it held the source back (barrier sent to commit done),
    /// microseconds.
    pub pause_micros: u64,
    /// How long the state backend's atomic commit took, microseconds.
    pub commit_micros: u64,
    /// Keys written (or deleted) by the commit.
    pub keys: u64,
}

/// Counters of one stage, updated as batches pass.
#[derive(Debug)]
pub struct StageStats {
    /// The step's name.
    pub name: String,
    /// Its kind ([`crate::step::Step::kind`], `route` for a graph's router).
    pub kind: &'static str,
    /// The outputs it reads, in a graph (its `from`); empty in a line.
    pub inputs: Vec<String>,
    /// Events in.
    pub events_in: AtomicU64,
    /// Events out.
    pub events_out: AtomicU64,
    /// Events held (a window's buffers).
    pub buffered: AtomicU64,
    /// A WASM step's own counters.
    pub counters: Option<Arc<StepCounters>>,
    /// The most keys the step has held for a checkpoint at once.
    pub pending_keys_peak: AtomicU64,
    /// The most bytes of keys and values it has held for a checkpoint at once.
    pub pending_bytes_peak: AtomicU64,
    /// Checkpoints it asked for because its pending writes reached a bound
    /// ([`crate::checkpoint::CheckpointPolicy::max_pending_keys`], `max_pending_bytes`).
    pub write_set_checkpoints: AtomicU64,
}

impl StageStats {
    /// Zero counters for the step `name`.
    /// The same, marked with the step's kind and the outputs it reads.
    pub(super) fn described(mut self, kind: &'static str, inputs: Vec<String>) -> Self {
        self.kind = kind;
        self.inputs = inputs;
        self
    }

    pub(super) fn new(name: &str, counters: Option<Arc<StepCounters>>) -> Self {
        StageStats {
            name: name.to_owned(),
            kind: "native",
            inputs: Vec::new(),
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            buffered: AtomicU64::new(0),
            counters,
            pending_keys_peak: AtomicU64::new(0),
            pending_bytes_peak: AtomicU64::new(0),
            write_set_checkpoints: AtomicU64::new(0),
        }
    }
}

/// What a running pipeline is doing, readable while it runs.
#[derive(Debug)]
pub struct LiveStatus {
    phase: AtomicU8,
    /// Events read from the source in this run.
    pub events_in: AtomicU64,
    /// Events written to the sink in this run.
    pub events_out: AtomicU64,
    /// Checkpoints committed in this run.
    pub checkpoints: AtomicU64,
    /// At-most-once: commits of the source position ahead of processing
    /// (one per group of ready batches).
    pub position_commits: AtomicU64,
    /// Epoch of the last committed checkpoint (`u64::MAX`: none).
    last_epoch: AtomicU64,
    /// When it was committed, ms since the Unix epoch.
    last_commit_ms: AtomicU64,
    /// How long its barrier took, microseconds.
    pub last_checkpoint_micros: AtomicU64,
    /// How long each checkpoint held the source back (barrier sent to
    /// commit done).
    pub checkpoint_pause: Histogram,
    /// How long the backend's atomic commits took (checkpoints, and the
    /// position commits of at-most-once).
    pub commit_time: Histogram,
    /// What the source says is still waiting (-1: it does not say).
    pub source_lag: AtomicI64,
    /// Writes the sink's server reported as duplicates and dropped
    /// ([`Sink::duplicates`](crate::streams::Sink::duplicates)), read at
    /// each checkpoint barrier.
    pub sink_duplicates: AtomicU64,
    error: Mutex<Option<String>>,
    stages: Mutex<Vec<Arc<StageStats>>>,
    pipes: Mutex<Vec<Arc<PipeSlot>>>,
    checkpoint_history: Recent<CheckpointEntry>,
    dead_letters: Arc<Recent<DeadLetterEntry>>,
}

impl Default for LiveStatus {
    fn default() -> Self {
        LiveStatus {
            phase: AtomicU8::new(0),
            events_in: AtomicU64::new(0),
            events_out: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            position_commits: AtomicU64::new(0),
            last_epoch: AtomicU64::new(u64::MAX),
            last_commit_ms: AtomicU64::new(0),
            last_checkpoint_micros: AtomicU64::new(0),
            checkpoint_pause: Histogram::durations(),
            commit_time: Histogram::durations(),
            source_lag: AtomicI64::new(-1),
            sink_duplicates: AtomicU64::new(0),
            error: Mutex::new(None),
            stages: Mutex::new(Vec::new()),
            pipes: Mutex::new(Vec::new()),
            checkpoint_history: Recent::new(CHECKPOINT_HISTORY),
            dead_letters: Arc::new(Recent::new(RECENT_DEAD_LETTERS)),
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl LiveStatus {
    /// The phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Running,
            2 => Phase::Stopped,
            _ => Phase::Failed,
        }
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        let value = match phase {
            Phase::Starting => 0,
            Phase::Running => 1,
            Phase::Stopped => 2,
            Phase::Failed => 3,
        };
        self.phase.store(value, Ordering::Release);
    }

    /// The error a failed run ended with.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records the error the run ended with, and the phase [`Phase::Failed`].
    pub(super) fn failed(&self, error: String) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
        self.set_phase(Phase::Failed);
    }

    /// The last committed checkpoint's epoch and its age.
    pub fn last_checkpoint(&self) -> Option<(u64, Duration)> {
        let epoch = self.last_epoch.load(Ordering::Acquire);
        (epoch != u64::MAX).then(|| {
            let at = self.last_commit_ms.load(Ordering::Acquire);
            (epoch, Duration::from_millis(now_ms().saturating_sub(at)))
        })
    }

    /// Records the checkpoint of `epoch` as committed now, its barrier
    /// having taken `took`.
    pub(super) fn committed(&self, epoch: u64, took: Duration) {
        self.last_commit_ms.store(now_ms(), Ordering::Release);
        self.last_epoch.store(epoch, Ordering::Release);
        self.last_checkpoint_micros.store(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Records a committed checkpoint in [`Self::checkpoint_history`].
    pub(super) fn record_checkpoint(
        &self,
        epoch: u64,
        pause: Duration,
        commit: Duration,
        keys: usize,
    ) {
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.checkpoint_history.push(CheckpointEntry {
            epoch,
            at_ms: now_ms(),
            pause_micros: micros(pause),
            commit_micros: micros(commit),
            keys: u64::try_from(keys).unwrap_or(u64::MAX),
        });
    }

    /// The last [`CHECKPOINT_HISTORY`] checkpoints committed in this run,
    /// oldest first.
    pub fn checkpoint_history(&self) -> Vec<CheckpointEntry> {
        self.checkpoint_history.snapshot()
    }

    /// The last [`RECENT_DEAD_LETTERS`] events written to the dead-letter
    /// sink in this run, oldest first, shortened.
    pub fn recent_dead_letters(&self) -> Vec<DeadLetterEntry> {
        self.dead_letters.snapshot()
    }

    /// Where the dead-letter task keeps what it wrote.
    pub(crate) fn dead_letter_recorder(&self) -> Arc<Recent<DeadLetterEntry>> {
        self.dead_letters.clone()
    }

    /// Every stage's counters, in pipeline order.
    pub fn stages(&self) -> Vec<Arc<StageStats>> {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The swap points of the WASM pipes.
    pub fn pipes(&self) -> Vec<Arc<PipeSlot>> {
        self.pipes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Adds the next stage's counters.
    pub(super) fn add_stage(&self, stats: Arc<StageStats>) {
        self.stages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stats);
    }

    /// Adds a WASM pipe's swap point.
    pub(super) fn add_pipe(&self, slot: Arc<PipeSlot>) {
        self.pipes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(slot);
    }
}
