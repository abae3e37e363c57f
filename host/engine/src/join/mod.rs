//! Joins: native steps that pair the events of two inputs by key and time.
//!
//! A join step reads the union of its inputs, each event tagged with the
//! header [`INPUT_HEADER`] naming its input; the step's `left` and `right`
//! name the two inputs it joins. Window and interval joins run on event
//! time (a lookup join has none): each input's watermark trails the
//! highest timestamp seen on it by `max_out_of_orderness_ms`, and the
//! join's watermark is the minimum over the inputs, an input idle for
//! `idle_timeout_ms` left out until it sends again (see
//! [`InputWatermarks`]).
//!
//! | join | emits |
//! | --- | --- |
//! | window (tumbling, sliding, session) | when the watermark passes a window's end: one batch per window and key, the left events then the right ones, each marked with [`SIDE_HEADER`], with the window's `window-info` |
//! | interval | as soon as both events of a pair are there: the pair as two consecutive events (left, right) of the output batch |
//! | lookup table | each left event at once, followed by its key's row in a table fed by the right input (a changelog) |
//!
//! Buffers live in the state backend under the join's namespace
//! ([`Namespace::for_join`]), one entry per key written at a checkpoint
//! when it changed, so a restart continues exactly; they are bounded by
//! `max_buffered_events` with an overflow policy.

mod config;
mod interval;
mod lookup;
mod remote;
mod watermark;
mod windowed;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::dead_letter::DeadLetters;
use crate::state::{KeyHasher, Namespace, SharedState, WriteSet};
use crate::step::{Step, StepError};
use crate::window::{LatePolicy, WindowClock};
use crate::ErrorChain;
use crate::{Batch, Event};

pub use config::{
    JoinConfig, JoinHow, JoinKindConfig, JoinLateConfig, JoinOverflowConfig, JoinWindowConfig,
};
pub use remote::{
    LookupCache, RemoteLookupCounters, RemoteLookupStep, RemoteTable, DEFAULT_CACHE_MAX_KEYS,
    DEFAULT_CACHE_TTL_MS,
};
pub use watermark::InputWatermarks;

/// The header naming the input an event came from (set by the graph on
/// every event a step with several inputs receives).
pub use crate::pipeline::INPUT_HEADER;

/// The header a join sets on the events it releases: `left` or `right`.
pub const SIDE_HEADER: &str = "plumber-side";

/// The header of a lookup join's changelog events: `insert`, `update`,
/// `upsert` (the default when absent) or `delete`.
pub const OP_HEADER: &str = "plumber-op";

/// The key a join groups by: the event key when keyed, else `None`.
pub(crate) type JoinKey = Option<Vec<u8>>;

/// One of the two inputs of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The `left` input.
    Left,
    /// The `right` input.
    Right,
}

impl Side {
    /// `left` or `right`, the value of [`SIDE_HEADER`].
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Left => 0,
            Side::Right => 1,
        }
    }
}

/// The windows of a windowed join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinWindow {
    /// Windows `[k·size, (k+1)·size)`.
    Tumbling {
        /// Window length, ms.
        size_ms: u64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Sliding {
        /// Window length, ms.
        size_ms: u64,
        /// Distance between window starts, ms.
        slide_ms: u64,
    },
    /// A window per key and burst of events of either side, closed by
    /// `gap_ms` without events.
    Session {
        /// The gap that closes a session, ms.
        gap_ms: u64,
    },
}

/// Which keys of a windowed join are released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum How {
    /// Keys with events on both sides.
    #[default]
    Inner,
    /// Keys with left events, whether or not they have right events.
    Left,
}

/// What a join does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// Both sides' events per key and window, released when the window closes.
    Window {
        /// The windows.
        window: JoinWindow,
        /// Which keys are released.
        how: How,
    },
    /// Every pair `left.ts - lower_ms <= right.ts <= left.ts + upper_ms`,
    /// emitted as soon as both are there.
    Interval {
        /// How far before the left event's time a right event may be, ms.
        lower_ms: u64,
        /// How far after the left event's time a right event may be, ms.
        upper_ms: u64,
    },
    /// Each left event with the row of its key in a table fed by the right
    /// input, a changelog (insert, update or delete by key, the operation
    /// in [`OP_HEADER`]), as the table stands when the event arrives.
    LookupTable {
        /// Whether left events without a row are emitted (`Left`) or not.
        how: How,
    },
}

/// What happens when the buffers would hold more than `max_buffered_events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JoinOverflow {
    /// Fail the pipeline with an error naming the join and the bound.
    #[default]
    Fail,
    /// Drop what would be released or expire first (a window join's oldest
    /// window, an interval join's oldest event), counted in
    /// [`JoinCounters::overflow_dropped`].
    DropOldest,
}

/// Counters of a running join, readable while it runs.
#[derive(Debug, Default)]
pub struct JoinCounters {
    /// Late events (dropped or dead-lettered).
    pub late: AtomicU64,
    /// Events dropped by `on_overflow: drop_oldest`.
    pub overflow_dropped: AtomicU64,
    /// Events the join cannot take (dead-lettered): of an input that is
    /// neither side, or a changelog event without a key or with an unknown
    /// operation.
    pub foreign: AtomicU64,
    /// The most events the buffers held at once.
    pub high_water: AtomicU64,
}

/// A join setting that cannot work, with the config field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct JoinSpecError {
    /// The config field at fault (e.g. `slide_ms`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// A join step, as configured.
#[derive(Debug, Clone)]
pub struct Join {
    pub(crate) name: String,
    pub(crate) kind: JoinKind,
    pub(crate) inputs: [String; 2],
    pub(crate) keyed: bool,
    pub(crate) max_out_of_orderness_ms: u64,
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) max_buffered_events: Option<usize>,
    pub(crate) overflow: JoinOverflow,
    pub(crate) late: LatePolicy,
    pub(crate) clock: Option<WindowClock>,
    counters: Arc<JoinCounters>,
}

impl Join {
    /// A windowed join of inputs `left` and `right` (inner; see [`Join::how`]).
    pub fn window(
        name: impl Into<String>,
        left: impl Into<String>,
        right: impl Into<String>,
        window: JoinWindow,
    ) -> Self {
        Join::new(
            name,
            left,
            right,
            JoinKind::Window {
                window,
                how: How::Inner,
            },
        )
    }

    /// An interval join of inputs `left` and `right`: pairs with
    /// `left.ts - lower_ms <= right.ts <= left.ts + upper_ms`.
    pub fn interval(
        name: impl Into<String>,
        left: impl Into<String>,
        right: impl Into<String>,
        lower_ms: u64,
        upper_ms: u64,
    ) -> Self {
        Join::new(name, left, right, JoinKind::Interval { lower_ms, upper_ms })
    }

    /// A lookup join: each event of input `stream` is emitted with the row
    /// of its key in a table fed by the changelog input `changelog` (inner;
    /// see [`Join::how`]). The table is keyed by the event key.
    pub fn lookup_table(
        name: impl Into<String>,
        stream: impl Into<String>,
        changelog: impl Into<String>,
    ) -> Self {
        let mut join = Join::new(
            name,
            stream,
            changelog,
            JoinKind::LookupTable { how: How::Inner },
        );
        join.keyed = true;
        join
    }

    fn new(
        name: impl Into<String>,
        left: impl Into<String>,
        right: impl Into<String>,
        kind: JoinKind,
    ) -> Self {
        Join {
            name: name.into(),
            kind,
            inputs: [left.into(), right.into()],
            keyed: false,
            max_out_of_orderness_ms: 0,
            idle_timeout_ms: None,
            max_buffered_events: None,
            overflow: JoinOverflow::Fail,
            late: LatePolicy::Drop,
            clock: None,
            counters: Arc::default(),
        }
    }

    /// Which keys a windowed join releases, or whether a lookup join emits
    /// events without a row (ignored by an interval join).
    #[must_use]
    pub fn how(mut self, how: How) -> Self {
        if let JoinKind::Window { how: own, .. } | JoinKind::LookupTable { how: own } =
            &mut self.kind
        {
            *own = how;
        }
        self
    }

    /// Joins by event key (default: every event in one group).
    #[must_use]
    pub fn keyed(mut self) -> Self {
        self.keyed = true;
        self
    }

    /// How far each input's watermark trails its highest timestamp.
    #[must_use]
    pub fn max_out_of_orderness_ms(mut self, ms: u64) -> Self {
        self.max_out_of_orderness_ms = ms;
        self
    }

    /// Leaves an input out of the watermark after this long without events.
    #[must_use]
    pub fn idle_timeout_ms(mut self, ms: u64) -> Self {
        self.idle_timeout_ms = Some(ms);
        self
    }

    /// Bounds the events the join holds, all keys and sides together.
    #[must_use]
    pub fn max_buffered_events(mut self, events: usize) -> Self {
        self.max_buffered_events = Some(events);
        self
    }

    /// What to do at the bound.
    #[must_use]
    pub fn on_overflow(mut self, overflow: JoinOverflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Where late events go.
    #[must_use]
    pub fn late(mut self, policy: LatePolicy) -> Self {
        self.late = policy;
        self
    }

    /// Uses `clock` for idle timeouts (default: the wall clock).
    #[must_use]
    pub fn clock(mut self, clock: WindowClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The join's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the join does.
    pub fn kind(&self) -> &JoinKind {
        &self.kind
    }

    /// The names of the left and right inputs.
    pub fn inputs(&self) -> (&str, &str) {
        let [left, right] = &self.inputs;
        (left, right)
    }

    /// The join's counters, shared with the running step.
    pub fn counters(&self) -> Arc<JoinCounters> {
        self.counters.clone()
    }

    /// Checks that the settings can work.
    ///
    /// # Errors
    ///
    /// A zero size, slide or gap, a slide larger than the size, a zero
    /// bound or idle timeout, two inputs of the same name or an empty one.
    pub fn validate(&self) -> Result<(), JoinSpecError> {
        let error = |field, message: String| Err(JoinSpecError { field, message });
        let [left, right] = &self.inputs;
        if left.is_empty() {
            return error("left", "expected the name of an input".to_owned());
        }
        if right.is_empty() {
            return error("right", "expected the name of an input".to_owned());
        }
        if left == right {
            return error(
                "right",
                format!("is the same input as `left` (`{left}`): a join needs two inputs"),
            );
        }
        if let JoinKind::Window { window, .. } = self.kind {
            match window {
                JoinWindow::Tumbling { size_ms: 0 } | JoinWindow::Sliding { size_ms: 0, .. } => {
                    return error("size_ms", "expected a positive size in ms".to_owned())
                }
                JoinWindow::Sliding { slide_ms: 0, .. } => {
                    return error("slide_ms", "expected a positive slide in ms".to_owned())
                }
                JoinWindow::Sliding { size_ms, slide_ms } if slide_ms > size_ms => {
                    return error(
                        "slide_ms",
                        format!(
                            "the slide ({slide_ms} ms) is larger than the size ({size_ms} ms): \
                             events between windows would never be joined"
                        ),
                    )
                }
                JoinWindow::Session { gap_ms: 0 } => {
                    return error("gap_ms", "expected a positive gap in ms".to_owned())
                }
                _ => {}
            }
        }
        if self.max_buffered_events == Some(0) {
            return error(
                "max_buffered_events",
                "expected a bound of at least 1 event".to_owned(),
            );
        }
        if self.idle_timeout_ms == Some(0) {
            return error(
                "idle_timeout_ms",
                "expected a positive number of milliseconds".to_owned(),
            );
        }
        Ok(())
    }
}

/// What a join keeps per key and how it fires: the windowed and the
/// interval join.
trait Operator: Send + Sync {
    /// Whether the join runs on event time (needs timestamps, has a watermark).
    fn timed(&self) -> bool {
        true
    }
    /// Why the operator cannot take `event` (it goes to the dead letter).
    fn reject(&self, _side: Side, _key: &JoinKey, _event: &Event) -> Option<String> {
        None
    }
    /// Whether an event of `key` at `time` can no longer be joined.
    fn is_late(&self, key: &JoinKey, time: u64, watermark: Option<u64>) -> bool;
    /// How many more events the buffers hold after adding an event of
    /// `side` and `key` at `time`.
    fn copies(&self, side: Side, key: &JoinKey, time: u64, watermark: Option<u64>) -> usize;
    /// Buffers `event` (already marked with its side) and joins it with
    /// what is there.
    fn add(&mut self, side: Side, key: JoinKey, time: u64, event: Event, watermark: Option<u64>);
    /// Pushes the output of the events added since the last call.
    fn flush(&mut self, _out: &mut Vec<Batch>) {}
    /// Releases or expires what the watermark has passed.
    fn advance(&mut self, watermark: u64, out: &mut Vec<Batch>);
    /// The end of the input: releases what is still open.
    fn finish(&mut self, out: &mut Vec<Batch>);
    /// Drops what would be released or expire first; the events dropped.
    fn evict_oldest(&mut self) -> usize;
    /// Events held.
    fn buffered(&self) -> usize;
    /// Keys changed since the last call.
    fn take_dirty(&mut self) -> HashSet<JoinKey, KeyHasher>;
    /// Marks `key` changed (its save failed: the next checkpoint tries again).
    fn mark_dirty(&mut self, key: JoinKey);
    /// The saved form of `key`'s buffers; `None` when it has none.
    fn encode(&self, key: &JoinKey) -> Option<Result<Vec<u8>, postcard::Error>>;
    /// Restores `key`'s buffers from their saved form.
    fn load(&mut self, key: JoinKey, bytes: &[u8]) -> Result<(), postcard::Error>;
}

/// What a join saves besides its buffers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    max_timestamps: [Option<u64>; 2],
    watermark: Option<u64>,
}

/// The entry of the watermarks.
const META: &[u8] = b"meta";
/// Before the bytes of a key.
const KEYED: &[u8] = b"key/";
/// The entry of keyless events (and of an unkeyed join).
const KEYLESS: &[u8] = b"nokey";

fn key_entry(namespace: &Namespace, key: &JoinKey) -> Vec<u8> {
    match key {
        Some(bytes) => [namespace.prefix(), KEYED, bytes].concat(),
        None => [namespace.prefix(), KEYLESS].concat(),
    }
}

/// How the pipeline runs its joins.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    /// Restore buffers from the last checkpoint (not under at-most-once).
    pub restore: bool,
    /// Poked whenever the join releases, when the pipeline checkpoints on window close.
    pub checkpoint_on_close: Option<Arc<Notify>>,
}

/// A running join.
pub struct JoinStep {
    spec: Join,
    clock: WindowClock,
    namespace: Namespace,
    operator: Box<dyn Operator>,
    watermarks: InputWatermarks,
    dead_letters: Option<DeadLetters>,
    /// What the last checkpoint saved of [`Meta`].
    saved_meta: Option<Meta>,
    /// Saved entries to delete at the next checkpoint (a run that did not restore).
    stale: Vec<Vec<u8>>,
    checkpoint_on_close: Option<Arc<Notify>>,
}

impl JoinStep {
    /// Creates join `spec` of `pipeline`, restoring its buffers from the
    /// last checkpoint in `state` when `options.restore`.
    ///
    /// # Errors
    ///
    /// The settings are invalid, the late policy needs a dead-letter sink
    /// the pipeline lacks, or the saved buffers cannot be read.
    pub async fn restore(
        spec: Join,
        tenant: &str,
        pipeline: &str,
        state: &SharedState,
        dead_letters: Option<DeadLetters>,
        options: &JoinOptions,
    ) -> Result<Self, StepError> {
        let native = |message: String| StepError::Native {
            step: spec.name.clone(),
            message,
        };
        spec.validate()
            .map_err(|e| native(format!("`{}`: {}", e.field, e.message)))?;
        if spec.late == LatePolicy::DeadLetter && dead_letters.is_none() {
            return Err(native(
                "the late policy is `dead_letter` but the pipeline has no dead-letter sink"
                    .to_owned(),
            ));
        }
        let namespace = Namespace::for_join(tenant, pipeline, &spec.name);
        let saved = state
            .scan_prefix(namespace.prefix())
            .await
            .map_err(|e| native(format!("cannot read the saved buffers: {}", ErrorChain(&e))))?;
        let clock = spec.clock.unwrap_or_else(WindowClock::system);
        let operator: Box<dyn Operator> = match spec.kind {
            JoinKind::Window { window, how } => Box::new(windowed::WindowedJoin::new(window, how)),
            JoinKind::Interval { lower_ms, upper_ms } => {
                Box::new(interval::IntervalJoin::new(lower_ms, upper_ms))
            }
            JoinKind::LookupTable { how } => Box::new(lookup::LookupTable::new(how)),
        };
        let watermarks = InputWatermarks::new(
            spec.max_out_of_orderness_ms,
            spec.idle_timeout_ms,
            clock.now_ms(),
        );
        let mut step = JoinStep {
            clock,
            namespace,
            operator,
            watermarks,
            dead_letters,
            // No meta entry reads as the default: it need not be written.
            saved_meta: Some(Meta::default()),
            stale: Vec::new(),
            checkpoint_on_close: options.checkpoint_on_close.clone(),
            spec,
        };
        if options.restore {
            step.load(saved).map_err(|e| StepError::Native {
                step: step.spec.name.clone(),
                message: format!("the saved buffers are corrupt: {e}"),
            })?;
        } else {
            step.stale = saved.into_iter().map(|(name, _)| name).collect();
        }
        Ok(step)
    }

    fn load(&mut self, saved: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        for (full, value) in saved {
            let name = full.strip_prefix(self.namespace.prefix()).unwrap_or(&full);
            let shown = || String::from_utf8_lossy(name).escape_debug().to_string();
            let corrupt = |e: postcard::Error| format!("entry `{}` is corrupt: {e}", shown());
            if name == META {
                let meta: Meta = postcard::from_bytes(&value).map_err(corrupt)?;
                self.watermarks.restore(meta.max_timestamps, meta.watermark);
                self.saved_meta = Some(meta);
            } else if let Some(key) = name.strip_prefix(KEYED) {
                self.operator
                    .load(Some(key.to_vec()), &value)
                    .map_err(corrupt)?;
            } else if name == KEYLESS {
                self.operator.load(None, &value).map_err(corrupt)?;
            } else {
                return Err(format!("entry `{}` is not one a join writes", shown()));
            }
        }
        // Nothing restored has changed yet.
        let _ = self.operator.take_dirty();
        Ok(())
    }

    fn native_error(&self, message: String) -> StepError {
        StepError::Native {
            step: self.spec.name.clone(),
            message,
        }
    }

    fn side_of(&self, event: &Event) -> Result<Side, String> {
        let input = event
            .headers
            .iter()
            .find(|(name, _)| name == INPUT_HEADER)
            .map(|(_, value)| value.as_str());
        let [left, right] = &self.spec.inputs;
        match input {
            Some(input) if input == left => Ok(Side::Left),
            Some(input) if input == right => Ok(Side::Right),
            Some(input) => Err(format!(
                "an event of input `{input}`, which is neither side of the join (left `{left}`, right `{right}`)"
            )),
            None => Err(format!(
                "an event without the `{INPUT_HEADER}` header (the join reads inputs `{left}` and `{right}`)"
            )),
        }
    }

    async fn dead_letter(&self, event: Event, reason: &str) -> Result<(), StepError> {
        let Some(dead_letters) = &self.dead_letters else {
            return Err(self.native_error(format!(
                "{reason}, and the pipeline has no dead-letter sink"
            )));
        };
        dead_letters
            .send(event, &self.spec.name, reason, self.clock.now_ms())
            .await
            .map_err(|e| self.native_error(e.to_string()))
    }

    /// An event too late to be joined (or, `untimed`, without a timestamp
    /// to join it at), by the late policy.
    async fn late(&self, event: Event, side: Side, untimed: bool) -> Result<(), StepError> {
        self.spec.counters.late.fetch_add(1, Ordering::Relaxed);
        match self.spec.late {
            LatePolicy::DeadLetter => {
                let input = &self.spec.inputs[side.index()];
                let reason = if untimed {
                    format!("event without a timestamp of input `{input}`")
                } else {
                    format!("late event of input `{input}`")
                };
                self.dead_letter(event, &reason).await
            }
            LatePolicy::Drop => Ok(()),
        }
    }

    /// Makes room for `copies` events, by the overflow policy.
    fn make_room(&mut self, copies: usize) -> Result<(), StepError> {
        let Some(max) = self.spec.max_buffered_events else {
            return Ok(());
        };
        while self.operator.buffered() + copies > max {
            match self.spec.overflow {
                JoinOverflow::Fail => {
                    return Err(self.native_error(format!(
                        "the join holds {} events and its bound is max_buffered_events = {max}; \
                         raise the bound or set on_overflow to `drop_oldest`",
                        self.operator.buffered()
                    )));
                }
                JoinOverflow::DropOldest => {
                    let dropped = self.operator.evict_oldest();
                    if dropped == 0 {
                        // Nothing left to drop: the event alone is more than the bound.
                        break;
                    }
                    self.spec
                        .counters
                        .overflow_dropped
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    async fn add_batch(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let now = self.clock.now_ms();
        for mut event in batch.events {
            let side = match self.side_of(&event) {
                Ok(side) => side,
                Err(reason) => {
                    self.spec.counters.foreign.fetch_add(1, Ordering::Relaxed);
                    self.dead_letter(event, &reason).await?;
                    continue;
                }
            };
            self.watermarks.arrived(side, now);
            let timed = self.operator.timed();
            let time = match event.timestamp {
                Some(time) => time,
                // No time to join it at: as late as can be.
                None if timed => {
                    self.late(event, side, true).await?;
                    continue;
                }
                None => 0,
            };
            let key = if self.spec.keyed {
                event.key.clone()
            } else {
                None
            };
            if let Some(reason) = self.operator.reject(side, &key, &event) {
                self.spec.counters.foreign.fetch_add(1, Ordering::Relaxed);
                self.dead_letter(event, &reason).await?;
                continue;
            }
            if timed
                && self
                    .operator
                    .is_late(&key, time, self.watermarks.watermark())
            {
                self.late(event, side, false).await?;
                continue;
            }
            let watermark = self.watermarks.watermark();
            self.make_room(self.operator.copies(side, &key, time, watermark))?;
            event
                .headers
                .push((SIDE_HEADER.to_owned(), side.as_str().to_owned()));
            self.operator.add(side, key, time, event, watermark);
            self.note_high_water();
            if timed {
                self.watermarks.observe(side, time);
                self.advance(now, out);
            }
        }
        // An interval join's pairs of the whole batch, as one batch.
        self.operator.flush(out);
        Ok(())
    }

    fn note_high_water(&self) {
        let buffered = self.operator.buffered() as u64;
        self.spec
            .counters
            .high_water
            .fetch_max(buffered, Ordering::Relaxed);
    }

    /// Moves the watermark to what the inputs say now, releasing and
    /// expiring what it passes.
    fn advance(&mut self, now: u64, out: &mut Vec<Batch>) {
        if let Some(watermark) = self.watermarks.update(now) {
            self.operator.advance(watermark, out);
        }
    }

    /// Asks for a checkpoint when the join released since `before`.
    fn released(&self, before: usize, out: &[Batch]) {
        if out.len() > before {
            if let Some(requests) = &self.checkpoint_on_close {
                requests.notify_one();
            }
        }
    }

    fn snapshot_writes(&mut self) -> WriteSet {
        let mut writes = WriteSet::default();
        for name in self.stale.drain(..) {
            writes.insert(name, None);
        }
        let mut failed = Vec::new();
        for key in self.operator.take_dirty() {
            let value = match self.operator.encode(&key) {
                Some(Ok(bytes)) => Some(bytes),
                Some(Err(error)) => {
                    // Serialising owned vectors and integers cannot fail; if
                    // it ever did, the previous entry stays and the next
                    // checkpoint tries again.
                    tracing::error!(join = %self.spec.name, "cannot save join buffers: {error}");
                    failed.push(key);
                    continue;
                }
                None => None,
            };
            writes.insert(key_entry(&self.namespace, &key), value);
        }
        for key in failed {
            self.operator.mark_dirty(key);
        }
        let (max_timestamps, watermark) = self.watermarks.saved();
        let meta = Meta {
            max_timestamps,
            watermark,
        };
        if self.saved_meta != Some(meta) {
            if let Ok(bytes) = postcard::to_allocvec(&meta) {
                writes.insert([self.namespace.prefix(), META].concat(), Some(bytes));
                self.saved_meta = Some(meta);
            }
        }
        writes
    }
}

#[async_trait]
impl Step for JoinStep {
    fn kind(&self) -> &'static str {
        "join"
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn buffered_events(&self) -> Option<usize> {
        Some(self.operator.buffered())
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let before = out.len();
        let result = self.add_batch(batch, out).await;
        self.released(before, out);
        result
    }

    fn take_writes(&mut self) -> WriteSet {
        self.snapshot_writes()
    }

    async fn finish(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let before = out.len();
        self.operator.finish(out);
        self.released(before, out);
        Ok(())
    }

    fn timer(&self) -> Option<tokio::time::Instant> {
        if !self.operator.timed() || self.operator.buffered() == 0 {
            return None;
        }
        self.watermarks
            .next_idle_at(self.clock.now_ms())
            .map(|at| self.clock.instant_at(at))
    }

    async fn wake(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let before = out.len();
        let now = self.clock.now_ms();
        self.advance(now, out);
        self.released(before, out);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
