//! Windows: native steps that buffer events and release them as one batch,
//! with the window's bounds in the batch's `window-info`, so that the pipe
//! after a window aggregates it in one call.
//!
//! | kind | releases |
//! | --- | --- |
//! | count | every N events |
//! | tumbling | every `size` ms, windows `[k·size, (k+1)·size)` |
//! | sliding | windows of `size` ms starting every `slide` ms |
//! | session | when no event came for `gap` ms |
//! | signal | when triggered: a control event, SIGUSR1, or [`WindowHandle::trigger`] |
//!
//! Time windows run on processing time (the [`WindowClock`]) or on event
//! time (the events' `timestamp`). In event time a watermark trails the
//! highest timestamp seen by `max_out_of_orderness_ms`; a window fires when
//! the watermark passes its end. A late event whose window is still within
//! `allowed_lateness_ms` of the watermark joins it and the window fires again
//! with its full contents; a later one goes to the late policy (drop and
//! count, or the dead-letter sink). With `idle_timeout_ms`, a source that
//! goes quiet lets the watermark advance with processing time, so its last
//! windows close.
//!
//! Sessions in event time follow Flink's rules: an event first merges with
//! every session of its key that it overlaps or touches, and lateness is
//! judged on the merged session. A merged session that reaches past the
//! watermark waits for the watermark to pass its new end; one the watermark
//! has already passed fires at once.
//!
//! With `key_by` a window keeps one buffer per event key and fires per key.
//! Open time windows are indexed by end, so an event or a timer looks only
//! at the windows that are due, however many keys are open; a key's
//! sessions are ordered by start, so an event finds those it touches in
//! O(log n) and a merge moves only the smaller sessions.
//!
//! Buffers are part of every checkpoint (saved in the state backend with the
//! pipes' writes and the source position, one entry per key, written when
//! it changed: see `saved`), so a restart continues a half-filled window.
//! When a finite source ends, every open window fires.

mod aggregate;
mod buffers;
mod clock;
mod config;
mod plugin;
mod saved;
mod trigger;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::dead_letter::DeadLetters;
use crate::state::{KeyHasher, Namespace, SharedState, StateError, WriteSet};
use crate::step::{Step, StepError};
use crate::ErrorChain;
use crate::{Batch, Event, WindowInfo};

pub use aggregate::AggregateSpec;
use aggregate::{AddCall, AggregateInstance, EmitCall, MergeCall, WindowBounds};
use buffers::{merge_sessions, Buffer, KeyWindows, WindowKey};
pub use clock::WindowClock;
pub use config::{
    AggregateConfig, CountWindowConfig, KeyBy, LateConfig, OverflowConfig, SessionWindowConfig,
    SignalOn, SignalWindowConfig, SlidingWindowConfig, TimeDomain, TriggerConfig,
    TumblingWindowConfig, WindowConfig,
};
pub use plugin::TriggerOnError;
pub use plugin::TriggerSpec;
use plugin::{
    Decision, TimerCall, TriggerAnswer, TriggerCall, TriggerFailure, TriggerInstance, TriggerSlot,
    WindowSummary, WitTimeDomain,
};
pub use saved::{merge_saved_meta, saved_entry, SavedEntry};
use saved::{Entry, Meta};
pub use trigger::WindowHandle;
use trigger::WindowShared;

/// Which events a window groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowKind {
    /// Every `events` events.
    Count {
        /// Events per window.
        events: usize,
    },
    /// Fixed, non-overlapping windows of `size_ms`.
    Tumbling {
        /// Window length.
        size_ms: u64,
        /// Which time.
        time: TimeMode,
    },
    /// Windows of `size_ms` that start every `slide_ms`.
    Sliding {
        /// Window length.
        size_ms: u64,
        /// Distance between window starts.
        slide_ms: u64,
        /// Which time.
        time: TimeMode,
    },
    /// A window per burst of activity, closed by `gap_ms` without events.
    Session {
        /// The gap that closes a session.
        gap_ms: u64,
        /// Which time.
        time: TimeMode,
    },
    /// Released when triggered.
    Signal {
        /// What triggers a release.
        triggers: SignalTriggers,
    },
}

/// The time a time window runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// The host's clock when an event reaches the window.
    Processing,
    /// The events' own timestamps, with a watermark.
    Event(EventTime),
}

/// Event-time settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventTime {
    /// How far behind the highest timestamp seen the watermark trails.
    pub max_out_of_orderness_ms: u64,
    /// How long after its end a window still accepts late events.
    pub allowed_lateness_ms: u64,
    /// After this long without events, the watermark advances with processing time.
    pub idle_timeout_ms: Option<u64>,
}

/// What releases a signal window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalTriggers {
    /// SIGUSR1 to the process.
    pub unix_signal: bool,
    /// A control event that has this header (the event itself is not buffered).
    pub header: Option<String>,
    /// A control event with this key (the event itself is not buffered).
    pub key: Option<Vec<u8>>,
}

/// What happens when a buffer would exceed its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Fail the pipeline with an error naming the window and the bound.
    #[default]
    Fail,
    /// Release the buffer early as a partial window and start a new one.
    Release,
}

/// Where late events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatePolicy {
    /// Drop them and count them ([`WindowHandle::late_dropped`]).
    #[default]
    Drop,
    /// Send them to the pipeline's dead-letter sink.
    DeadLetter,
}

/// A window step, as configured.
#[derive(Debug, Clone)]
pub struct Window {
    pub(crate) name: String,
    pub(crate) kind: WindowKind,
    pub(crate) keyed: bool,
    pub(crate) max_events: Option<usize>,
    pub(crate) max_bytes: Option<usize>,
    pub(crate) overflow: Overflow,
    pub(crate) late: LatePolicy,
    pub(crate) clock: Option<WindowClock>,
    /// A trigger component deciding when the window fires (boxed, as the
    /// aggregator is: a step's spec stays small).
    pub(crate) trigger: Option<Box<TriggerSpec>>,
    /// An aggregator component folding the window's events into
    /// accumulators (boxed: most windows have none, and a step's spec
    /// stays small).
    pub(crate) aggregate: Option<Box<AggregateSpec>>,
    shared: Arc<WindowShared>,
}

/// A window setting that cannot work, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WindowSpecError {
    /// The config field at fault (e.g. `slide_ms`).
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Window {
    fn new(name: impl Into<String>, kind: WindowKind) -> Self {
        Window {
            name: name.into(),
            kind,
            keyed: false,
            max_events: None,
            max_bytes: None,
            overflow: Overflow::Fail,
            late: LatePolicy::Drop,
            clock: None,
            trigger: None,
            aggregate: None,
            shared: Arc::default(),
        }
    }

    /// What kind of window this is, with its sizes.
    pub fn kind(&self) -> &WindowKind {
        &self.kind
    }

    /// Releases every `events` events.
    pub fn count(name: impl Into<String>, events: usize) -> Self {
        Window::new(name, WindowKind::Count { events })
    }

    /// Tumbling windows of `size` (processing time; see [`Window::event_time`]).
    pub fn tumbling(name: impl Into<String>, size: Duration) -> Self {
        Window::new(
            name,
            WindowKind::Tumbling {
                size_ms: millis(size),
                time: TimeMode::Processing,
            },
        )
    }

    /// Sliding windows of `size` starting every `slide`.
    pub fn sliding(name: impl Into<String>, size: Duration, slide: Duration) -> Self {
        Window::new(
            name,
            WindowKind::Sliding {
                size_ms: millis(size),
                slide_ms: millis(slide),
                time: TimeMode::Processing,
            },
        )
    }

    /// Session windows closed by `gap` without events.
    pub fn session(name: impl Into<String>, gap: Duration) -> Self {
        Window::new(
            name,
            WindowKind::Session {
                gap_ms: millis(gap),
                time: TimeMode::Processing,
            },
        )
    }

    /// A window released by triggers only (add them with the `on_*` methods
    /// or [`Window::handle`]).
    pub fn signal(name: impl Into<String>) -> Self {
        Window::new(
            name,
            WindowKind::Signal {
                triggers: SignalTriggers::default(),
            },
        )
    }

    /// Runs a time window on event time.
    #[must_use]
    pub fn event_time(mut self, settings: EventTime) -> Self {
        match &mut self.kind {
            WindowKind::Tumbling { time, .. }
            | WindowKind::Sliding { time, .. }
            | WindowKind::Session { time, .. } => *time = TimeMode::Event(settings),
            WindowKind::Count { .. } | WindowKind::Signal { .. } => {}
        }
        self
    }

    /// Keeps one buffer per event key.
    #[must_use]
    pub fn keyed(mut self) -> Self {
        self.keyed = true;
        self
    }

    /// Bounds each buffer to `events` events.
    #[must_use]
    pub fn max_events(mut self, events: usize) -> Self {
        self.max_events = Some(events);
        self
    }

    /// Bounds each buffer to `bytes` bytes of keys, values and headers.
    #[must_use]
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = Some(bytes);
        self
    }

    /// What to do when a buffer reaches a bound.
    #[must_use]
    pub fn on_overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Where late events go (event time).
    #[must_use]
    pub fn late(mut self, policy: LatePolicy) -> Self {
        self.late = policy;
        self
    }

    /// Releases a signal window on SIGUSR1.
    #[must_use]
    pub fn on_unix_signal(mut self) -> Self {
        if let WindowKind::Signal { triggers } = &mut self.kind {
            triggers.unix_signal = true;
        }
        self
    }

    /// Releases a signal window on an event carrying header `name`.
    #[must_use]
    pub fn on_header(mut self, name: impl Into<String>) -> Self {
        if let WindowKind::Signal { triggers } = &mut self.kind {
            triggers.header = Some(name.into());
        }
        self
    }

    /// Releases a signal window on an event with key `key`.
    #[must_use]
    pub fn on_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        if let WindowKind::Signal { triggers } = &mut self.kind {
            triggers.key = Some(key.into());
        }
        self
    }

    /// Uses `clock` for processing time (default: the wall clock).
    #[must_use]
    pub fn clock(mut self, clock: WindowClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Lets the trigger component of `spec` decide when the window fires
    /// (time windows: tumbling, sliding, session; docs/windows.md).
    #[must_use]
    pub fn with_trigger(mut self, spec: TriggerSpec) -> Self {
        self.trigger = Some(Box::new(spec));
        self
    }

    /// The window's trigger component, when it has one.
    pub fn trigger_spec(&self) -> Option<&TriggerSpec> {
        self.trigger.as_deref()
    }

    /// Keeps one accumulator of the aggregator component of `spec` per key
    /// and window (per key and pane for sliding windows) instead of the
    /// events, and releases what its `emit` answers (count, tumbling,
    /// sliding and session windows; docs/windows.md, "Aggregating windows").
    #[must_use]
    pub fn with_aggregate(mut self, spec: AggregateSpec) -> Self {
        self.aggregate = Some(Box::new(spec));
        self
    }

    /// The window's aggregator component, when it has one.
    pub fn aggregate_spec(&self) -> Option<&AggregateSpec> {
        self.aggregate.as_deref()
    }

    /// A handle to trigger this window and read its counters while it runs.
    pub fn handle(&self) -> WindowHandle {
        WindowHandle {
            shared: self.shared.clone(),
        }
    }

    /// The window's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the settings can work.
    ///
    /// # Errors
    ///
    /// A zero size, count or gap, a slide larger than the size (or not a
    /// divisor of it), a zero bound.
    pub fn validate(&self) -> Result<(), WindowSpecError> {
        let error = |field, message: &str| {
            Err(WindowSpecError {
                field,
                message: message.to_owned(),
            })
        };
        match &self.kind {
            WindowKind::Count { events: 0 } => return error("events", "expected a count of at least 1"),
            WindowKind::Tumbling { size_ms: 0, .. } => return error("size_ms", "expected a positive size in ms"),
            WindowKind::Sliding { size_ms: 0, .. } => return error("size_ms", "expected a positive size in ms"),
            WindowKind::Sliding { slide_ms: 0, .. } => return error("slide_ms", "expected a positive slide in ms"),
            WindowKind::Sliding { size_ms, slide_ms, .. } if slide_ms > size_ms => {
                return Err(WindowSpecError {
                    field: "slide_ms",
                    message: format!(
                        "the slide ({slide_ms} ms) is larger than the size ({size_ms} ms): events between windows would be lost"
                    ),
                })
            }
            WindowKind::Session { gap_ms: 0, .. } => return error("gap_ms", "expected a positive gap in ms"),
            WindowKind::Signal { triggers }
                if !triggers.unix_signal && triggers.header.is_none() && triggers.key.is_none() =>
            {
                // A library handle can still trigger it; the config path checks `on` itself.
            }
            _ => {}
        }
        let timed = matches!(
            self.kind,
            WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } | WindowKind::Session { .. }
        );
        if self.trigger.is_some() && !timed {
            return error(
                "trigger",
                "a trigger applies to tumbling, sliding and session windows only",
            );
        }
        if self.aggregate.is_some() {
            if matches!(self.kind, WindowKind::Signal { .. }) {
                return error(
                    "aggregate",
                    "an aggregate applies to count, tumbling, sliding and session windows only",
                );
            }
            if self.trigger.is_some() {
                return error(
                    "aggregate",
                    "a window takes a trigger or an aggregate, not both",
                );
            }
            if self.overflow == Overflow::Release {
                return error(
                    "on_overflow",
                    "an aggregating window cannot release early: its bound is `max_bytes` of an accumulator, at which it fails",
                );
            }
        }
        if self.max_events == Some(0) {
            return error("max_events", "expected a bound of at least 1 event");
        }
        if self.max_bytes == Some(0) {
            return error("max_bytes", "expected a bound of at least 1 byte");
        }
        if let WindowKind::Count { events } = self.kind {
            if self.max_events.is_some_and(|max| max < events) {
                return error(
                    "max_events",
                    "is smaller than the count: the window could never fill",
                );
            }
        }
        Ok(())
    }

    fn event_time_settings(&self) -> Option<EventTime> {
        match self.kind {
            WindowKind::Tumbling { time, .. }
            | WindowKind::Sliding { time, .. }
            | WindowKind::Session { time, .. } => match time {
                TimeMode::Event(settings) => Some(settings),
                TimeMode::Processing => None,
            },
            WindowKind::Count { .. } | WindowKind::Signal { .. } => None,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A window due for release.
struct Release {
    end: u64,
    start: u64,
    key: WindowKey,
    events: Vec<Event>,
}

fn emit(key: WindowKey, start: u64, end: u64, events: Vec<Event>, out: &mut Vec<Batch>) {
    out.push(Batch {
        events,
        window: Some(WindowInfo { start, end, key }),
    });
}

/// Releases windows in a fixed order: by end, then start, then key.
fn emit_in_order(mut due: Vec<Release>, out: &mut Vec<Batch>) {
    due.sort_by(|a, b| (a.end, a.start, &a.key).cmp(&(b.end, b.start, &b.key)));
    for release in due {
        if !release.events.is_empty() {
            emit(release.key, release.start, release.end, release.events, out);
        }
    }
}

/// A time window in an index: `(deadline, start, key)`. Ordered like
/// releases (by end, then start, then key) when the deadline is the end.
type Due = (u64, u64, WindowKey);

/// The first entry of `index` if it is due by `horizon`, taken out.
fn pop_due(index: &mut BTreeSet<Due>, horizon: u64) -> Option<Due> {
    if index.first()?.0 > horizon {
        return None;
    }
    index.pop_first()
}

/// Work of the firing and merging paths, counted in tests to check that it
/// does not grow with the number of open windows.
#[cfg(test)]
#[derive(Debug, Default)]
struct Work {
    /// Index entries looked at (or, before the index, buffers).
    visited: std::cell::Cell<u64>,
    /// Events moved to merge sessions or to insert out of order.
    moved: std::cell::Cell<u64>,
}

/// A running window.
pub struct WindowStep {
    spec: Window,
    clock: WindowClock,
    namespace: Namespace,
    event_time: Option<EventTime>,
    /// Open windows per key (`None`: unkeyed or keyless events).
    open: HashMap<WindowKey, KeyWindows, KeyHasher>,
    /// Time windows that have not fired, by end: what fires next, in release order.
    unfired: BTreeSet<Due>,
    /// Fired time windows kept for their allowed lateness, by end + lateness.
    retained: BTreeSet<Due>,
    /// Events in all open windows.
    buffered: usize,
    max_timestamp: Option<u64>,
    watermark: Option<u64>,
    last_arrival_ms: u64,
    triggers_seen: u64,
    dead_letters: Option<DeadLetters>,
    /// Keys whose windows changed since the last checkpoint.
    dirty: HashSet<WindowKey, KeyHasher>,
    /// What the last checkpoint saved of [`Meta`] (`None`: nothing yet).
    saved_meta: Option<Meta>,
    /// Saved entries to delete at the next checkpoint (another format's).
    stale: Vec<Vec<u8>>,
    checkpoint_on_close: Option<Arc<Notify>>,
    /// The watermark comes from the source ([`WindowOptions::upstream_watermarks`]).
    upstream_watermarks: bool,
    /// Processing time as the source last set it ([`WindowOptions::controlled_time`]);
    /// `None`: the clock's.
    controlled_now: Option<u64>,
    /// Time moves only with the source's watermark ([`WindowOptions::controlled_time`]).
    controlled_time: bool,
    /// The trigger component, once started ([`WindowStep::start_trigger`]).
    trigger: Option<TriggerInstance>,
    /// What each window keeps for the trigger, per key and window start.
    slots: HashMap<WindowKey, BTreeMap<u64, TriggerSlot>, KeyHasher>,
    /// The trigger's event-time timers: `(at, start, key)`.
    event_timers: BTreeSet<Due>,
    /// The trigger's processing-time timers: `(at, start, key)`.
    processing_timers: BTreeSet<Due>,
    /// Calls not yet asked: events that joined windows, at most one per key.
    pending: Vec<TriggerCall>,
    /// The keys of `pending`.
    pending_keys: HashSet<WindowKey, KeyHasher>,
    /// The windows the event being added joined (trigger windows only).
    touched: Vec<(WindowKey, u64)>,
    /// The aggregator component, once started ([`WindowStep::start_aggregate`]).
    aggregator: Option<AggregateInstance>,
    /// Events waiting to be folded into their accumulators, per window (or
    /// pane) in the order they first came: folded at the end of the batch,
    /// or before anything fires.
    pending_adds: Vec<PendingAdd>,
    /// Where each `(key, start)` of `pending_adds` is.
    pending_index: HashMap<(WindowKey, u64), usize>,
    /// A sliding aggregating window's pane accumulators, per key and pane start.
    panes: HashMap<WindowKey, BTreeMap<u64, Vec<u8>>, KeyHasher>,
    /// Keys that closed a sliding aggregating window: their panes no open
    /// window covers are dropped once the fires are settled.
    pane_gc: HashSet<WindowKey, KeyHasher>,
    #[cfg(test)]
    work: Work,
}

/// Events of one batch waiting for one window's (or pane's) accumulator.
struct PendingAdd {
    key: WindowKey,
    start: u64,
    events: Vec<Event>,
}

/// How the pipeline runs its windows.
#[derive(Debug, Clone, Default)]
pub struct WindowOptions {
    /// Restore buffers from the last checkpoint (not under at-most-once).
    pub restore: bool,
    /// Poked whenever the window releases, when the pipeline checkpoints on window close.
    pub checkpoint_on_close: Option<Arc<Notify>>,
    /// The source reports the watermark ([`crate::streams::Source::reports_watermarks`]):
    /// an event-time window's watermark is then the source's less
    /// `max_out_of_orderness_ms`, never one derived from the timestamps
    /// the window sees, and its own `idle_timeout_ms` is not used.
    pub upstream_watermarks: bool,
    /// The source controls time ([`crate::streams::Source::controls_time`],
    /// `plumber test`): each watermark it reports sets processing time to
    /// it and moves an event-time window's watermark up to it (the
    /// timestamps still move it as usual); no timer fires on its own.
    pub controlled_time: bool,
}

impl WindowStep {
    /// Creates the window of `pipeline`, restoring its buffers from the last
    /// checkpoint in `state`.
    ///
    /// # Errors
    ///
    /// The settings are invalid, the late policy needs a dead-letter sink the
    /// pipeline lacks, the signal handler cannot be installed, or the saved
    /// buffers cannot be read.
    pub async fn restore(
        spec: Window,
        tenant: &str,
        pipeline: &str,
        state: &SharedState,
        dead_letters: Option<DeadLetters>,
        options: &WindowOptions,
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
        if let WindowKind::Signal { triggers } = &spec.kind {
            if triggers.unix_signal {
                trigger::listen_for_sigusr1(spec.handle())
                    .map_err(|e| native(format!("cannot listen for SIGUSR1: {e}")))?;
            }
        }
        let namespace = Namespace::for_window(tenant, pipeline, &spec.name);
        let saved = state
            .scan_prefix(namespace.prefix())
            .await
            .map_err(|e: StateError| {
                native(format!("cannot read the saved buffers: {}", ErrorChain(&e)))
            })?;
        let clock = spec.clock.unwrap_or_else(WindowClock::system);
        let triggers_seen = spec.shared.triggers.load(Ordering::SeqCst);
        let mut step = WindowStep {
            event_time: spec.event_time_settings(),
            last_arrival_ms: if options.controlled_time {
                0
            } else {
                clock.now_ms()
            },
            open: HashMap::default(),
            unfired: BTreeSet::new(),
            retained: BTreeSet::new(),
            buffered: 0,
            max_timestamp: None,
            watermark: None,
            spec,
            clock,
            namespace,
            triggers_seen,
            dead_letters,
            dirty: HashSet::default(),
            saved_meta: None,
            stale: Vec::new(),
            checkpoint_on_close: options.checkpoint_on_close.clone(),
            upstream_watermarks: options.upstream_watermarks,
            controlled_time: options.controlled_time,
            controlled_now: options.controlled_time.then_some(0),
            trigger: None,
            slots: HashMap::default(),
            event_timers: BTreeSet::new(),
            processing_timers: BTreeSet::new(),
            pending: Vec::new(),
            pending_keys: HashSet::default(),
            touched: Vec::new(),
            aggregator: None,
            pending_adds: Vec::new(),
            pending_index: HashMap::new(),
            panes: HashMap::default(),
            pane_gc: HashSet::default(),
            #[cfg(test)]
            work: Work::default(),
        };
        let meta = if options.restore {
            step.load(saved).map_err(|e| StepError::Native {
                step: step.spec.name.clone(),
                message: format!("the saved buffers are corrupt: {e}"),
            })?
        } else {
            // Starting empty: what an earlier run saved goes at the first
            // checkpoint, so that what is saved is always what is open.
            step.stale = saved.into_iter().map(|(name, _)| name).collect();
            Meta::default()
        };
        step.max_timestamp = meta.max_timestamp;
        step.watermark = meta.watermark;
        step.spec
            .shared
            .late_dropped
            .store(meta.late_dropped, Ordering::SeqCst);
        Ok(step)
    }

    /// Loads the saved entries, indexes the windows, and returns the saved [`Meta`].
    fn load(&mut self, saved: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Meta, String> {
        let mut meta = None;
        let mut legacy = None;
        // In key order: an earlier version's single entry (`buffers`) comes
        // before the per-key entries, which are newer if both are there.
        for (name, value) in saved {
            match saved::decode(&self.namespace, &name, &value)? {
                Entry::Meta(saved) => meta = Some(saved),
                Entry::Trigger(key, slots) => {
                    for (start, slot) in slots {
                        if let Some(at) = slot.event_timer {
                            self.event_timers.insert((at, start, key.clone()));
                        }
                        if let Some(at) = slot.processing_timer {
                            self.processing_timers.insert((at, start, key.clone()));
                        }
                        self.slots
                            .entry(key.clone())
                            .or_default()
                            .insert(start, slot);
                    }
                }
                Entry::Key(key, buffers) => {
                    if let Some(windows) = KeyWindows::from_buffers(buffers) {
                        self.open.insert(key, windows);
                    }
                }
                Entry::Panes(key, panes) => {
                    self.panes.insert(key, panes.into_iter().collect());
                }
                Entry::Legacy(saved, open) => {
                    // Replaced by per-key entries at the next checkpoint.
                    self.stale.push(name);
                    legacy = Some(saved);
                    for (key, buffers) in open {
                        if let Some(windows) = KeyWindows::from_buffers(buffers) {
                            self.dirty.insert(key.clone());
                            self.open.insert(key, windows);
                        }
                    }
                }
            }
        }
        self.saved_meta = meta;
        let lateness = self.lateness();
        let indexed = self.indexed();
        for (key, windows) in &self.open {
            for buffer in windows.iter() {
                self.buffered += buffer.events.len();
                if indexed {
                    if buffer.fired {
                        self.retained.insert((
                            buffer.end.saturating_add(lateness),
                            buffer.start,
                            key.clone(),
                        ));
                    } else {
                        self.unfired.insert((buffer.end, buffer.start, key.clone()));
                    }
                }
            }
        }
        Ok(meta.or(legacy).unwrap_or_default())
    }

    /// Whether this window's buffers are time windows, fired from the index.
    fn indexed(&self) -> bool {
        matches!(
            self.spec.kind,
            WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } | WindowKind::Session { .. }
        )
    }

    fn lateness(&self) -> u64 {
        self.event_time.map_or(0, |s| s.allowed_lateness_ms)
    }

    fn key_of(&self, event: &Event) -> WindowKey {
        if self.spec.keyed {
            event.key.clone()
        } else {
            None
        }
    }

    fn is_control(&self, event: &Event) -> bool {
        let WindowKind::Signal { triggers } = &self.spec.kind else {
            return false;
        };
        triggers
            .header
            .as_ref()
            .is_some_and(|name| event.headers.iter().any(|(n, _)| n == name))
            || triggers
                .key
                .as_ref()
                .is_some_and(|key| event.key.as_ref() == Some(key))
    }

    /// The time an event counts at: its timestamp in event time (an event
    /// without one counts at the highest timestamp seen, and does not move
    /// the watermark), else now.
    fn time_of(&self, event: &Event, now: u64) -> u64 {
        match self.event_time {
            Some(_) => event.timestamp.or(self.max_timestamp).unwrap_or(now),
            None => now,
        }
    }

    fn mark_dirty(&mut self, key: &WindowKey) {
        if !self.dirty.contains(key) {
            self.dirty.insert(key.clone());
        }
    }

    /// Adds `event` to the window starting at `start` of `key`, enforcing
    /// the bounds; a session's events are kept in time order. (The caller
    /// marks the key changed, once per event.)
    fn push(
        &mut self,
        key: &WindowKey,
        start: u64,
        event: Event,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        if self.spec.aggregate.is_some() {
            // Folded into the window's accumulator at the end of the batch.
            let _waited = self.queue_add(key, start, event);
            return Ok(());
        }
        let size = event.size_bytes();
        let (max_events, max_bytes, overflow) = (
            self.spec.max_events,
            self.spec.max_bytes,
            self.spec.overflow,
        );
        let in_time_order =
            self.event_time.is_some() && matches!(self.spec.kind, WindowKind::Session { .. });
        let Some(buffer) = self.open.get_mut(key).and_then(|w| w.get_mut(start)) else {
            return Ok(());
        };
        let over_events = max_events.is_some_and(|max| buffer.events.len() + 1 > max);
        let over_bytes =
            max_bytes.is_some_and(|max| buffer.bytes + size > max) && !buffer.events.is_empty();
        if over_events || over_bytes {
            match overflow {
                Overflow::Fail => {
                    let bound = if over_events {
                        format!("max_events = {}", max_events.unwrap_or_default())
                    } else {
                        format!("max_bytes = {}", max_bytes.unwrap_or_default())
                    };
                    return Err(StepError::Native {
                        step: self.spec.name.clone(),
                        message: format!(
                            "window [{}, {}) of key {:?} is full ({bound}); raise the bound or set on_overflow to `release`",
                            buffer.start,
                            buffer.end,
                            key.as_deref().map(String::from_utf8_lossy)
                        ),
                    });
                }
                Overflow::Release => {
                    let events = Vec::from(std::mem::take(&mut buffer.events));
                    self.buffered = self.buffered.saturating_sub(events.len());
                    buffer.bytes = 0;
                    emit(key.clone(), buffer.start, buffer.end, events, out);
                }
            }
        }
        buffer.bytes += size;
        if in_time_order {
            let _moved = buffer.insert_in_time_order(event);
            #[cfg(test)]
            self.work.moved.set(self.work.moved.get() + _moved as u64);
        } else {
            buffer.events.push_back(event);
        }
        self.buffered += 1;
        Ok(())
    }

    /// Opens `buffer` for `key`, indexed by its end when it is a time window.
    fn open_buffer(&mut self, key: &WindowKey, buffer: Buffer) {
        if self.indexed() {
            self.unfired.insert((buffer.end, buffer.start, key.clone()));
        }
        self.buffered += buffer.events.len();
        match self.open.get_mut(key) {
            Some(windows) => windows.insert(buffer),
            None => {
                self.open.insert(key.clone(), KeyWindows::One(buffer));
            }
        }
        self.mark_dirty(key);
    }

    /// Removes the window starting at `start` of `key` (and its index entry).
    fn take_buffer(&mut self, key: &WindowKey, start: u64) -> Option<Buffer> {
        let windows = self.open.get_mut(key)?;
        let buffer = match windows {
            KeyWindows::One(only) if only.start == start => match self.open.remove(key) {
                Some(KeyWindows::One(only)) => only,
                _ => return None,
            },
            KeyWindows::One(_) => return None,
            KeyWindows::Many(_) => {
                let buffer = windows.remove_from_many(start)?;
                if windows.is_empty() {
                    self.open.remove(key);
                }
                buffer
            }
        };
        if self.indexed() {
            let due = if buffer.fired {
                (
                    buffer.end.saturating_add(self.lateness()),
                    buffer.start,
                    key.clone(),
                )
            } else {
                (buffer.end, buffer.start, key.clone())
            };
            if buffer.fired {
                self.retained.remove(&due);
            } else {
                self.unfired.remove(&due);
            }
        }
        self.buffered = self.buffered.saturating_sub(buffer.events.len());
        self.forget_slot(key, buffer.start);
        if self.pane_ms().is_some() {
            self.pane_gc.insert(key.clone());
        }
        self.mark_dirty(key);
        Some(buffer)
    }

    /// Drops what the window starting at `start` of `key` kept for the
    /// trigger (the window closed), timers included.
    fn forget_slot(&mut self, key: &WindowKey, start: u64) {
        let Some(slots) = self.slots.get_mut(key) else {
            return;
        };
        if let Some(slot) = slots.remove(&start) {
            if let Some(at) = slot.event_timer {
                self.event_timers.remove(&(at, start, key.clone()));
            }
            if let Some(at) = slot.processing_timer {
                self.processing_timers.remove(&(at, start, key.clone()));
            }
        }
        if slots.is_empty() {
            self.slots.remove(key);
        }
    }

    /// Whether the window fires natively at its end (not when its trigger
    /// said otherwise).
    fn fires_at_end(&self) -> bool {
        self.trigger.as_ref().is_none_or(|t| t.fire_at_end)
    }

    /// The start of the window `[start, end)` of `key`, opened if needed.
    fn time_buffer(&mut self, key: &WindowKey, start: u64, end: u64) -> u64 {
        let exists = self
            .open
            .get(key)
            .is_some_and(|windows| windows.get(start).is_some());
        if !exists {
            self.open_buffer(key, Buffer::new(start, end));
        }
        start
    }

    /// The start of the one window of a count or signal window's key,
    /// opened at `time` if needed.
    fn first_buffer(&mut self, key: &WindowKey, time: u64) -> u64 {
        if let Some(start) = self.open.get(key).and_then(KeyWindows::first_start) {
            return start;
        }
        self.open_buffer(key, Buffer::new(time, time));
        time
    }

    /// The bounds of the time windows an event at `time` belongs to.
    fn assign(&self, time: u64) -> Vec<(u64, u64)> {
        let (size, slide) = match self.spec.kind {
            WindowKind::Tumbling { size_ms, .. } => (size_ms, size_ms),
            WindowKind::Sliding {
                size_ms, slide_ms, ..
            } => (size_ms, slide_ms),
            _ => return Vec::new(),
        };
        let last_start = time - time % slide;
        let mut bounds = Vec::new();
        let mut start = last_start;
        loop {
            if start + size > time {
                bounds.push((start, start + size));
            } else {
                break;
            }
            match start.checked_sub(slide) {
                Some(earlier) => start = earlier,
                None => break,
            }
        }
        bounds.reverse();
        bounds
    }

    /// Whether a window ending at `end` no longer accepts events.
    fn closed_for_good(&self, end: u64) -> bool {
        match (self.event_time, self.watermark) {
            (Some(settings), Some(watermark)) => {
                end.saturating_add(settings.allowed_lateness_ms) <= watermark
            }
            _ => false,
        }
    }

    async fn late(&mut self, event: Event) -> Result<(), StepError> {
        match (self.spec.late, &self.dead_letters) {
            (LatePolicy::DeadLetter, Some(dead_letters)) => {
                dead_letters
                    .send(event, &self.spec.name, "late event", self.now_ms())
                    .await
                    .map_err(|e| StepError::Native {
                        step: self.spec.name.clone(),
                        message: e.to_string(),
                    })?;
                self.spec
                    .shared
                    .late_dead_lettered
                    .fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                let dropped = self.spec.shared.late_dropped.fetch_add(1, Ordering::SeqCst) + 1;
                tracing::debug!(window = %self.spec.name, dropped, "late event dropped");
            }
        }
        Ok(())
    }

    async fn add(&mut self, event: Event, now: u64, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let key = self.key_of(&event);
        let time = self.time_of(&event, now);
        let has_timestamp = event.timestamp.is_some();
        match self.spec.kind {
            WindowKind::Count { events } => {
                let start = self.first_buffer(&key, time);
                self.push(&key, start, event, out)?;
                let held = self.held(&key, start);
                let full = match self.open.get_mut(&key).and_then(|w| w.get_mut(start)) {
                    Some(buffer) => {
                        buffer.end = buffer.end.max(time.saturating_add(1));
                        held >= events
                    }
                    None => false,
                };
                if full && self.spec.aggregate.is_some() {
                    self.flush_adds().await?;
                }
                if full {
                    if let Some(buffer) = self.take_buffer(&key, start) {
                        emit(
                            key.clone(),
                            buffer.start,
                            buffer.end,
                            buffer.events.into(),
                            out,
                        );
                    }
                }
            }
            WindowKind::Signal { .. } => {
                let start = self.first_buffer(&key, time);
                self.push(&key, start, event, out)?;
            }
            WindowKind::Tumbling { .. } | WindowKind::Sliding { .. } => {
                let bounds: Vec<(u64, u64)> = self
                    .assign(time)
                    .into_iter()
                    .filter(|(_, end)| !self.closed_for_good(*end))
                    .collect();
                if bounds.is_empty() {
                    return self.late(event).await;
                }
                if self.spec.aggregate.is_some() {
                    let before = out.len();
                    self.add_aggregated(&key, time, &bounds, event, out).await?;
                    self.finish_add(&key, has_timestamp, time, out).await?;
                    self.snapshot_panes(before, out);
                    return Ok(());
                }
                let last = bounds.len() - 1;
                let mut event = Some(event);
                for (i, (start, end)) in bounds.into_iter().enumerate() {
                    let copy = if i == last {
                        event.take()
                    } else {
                        event.clone()
                    };
                    let Some(copy) = copy else { break };
                    let start = self.time_buffer(&key, start, end);
                    self.push(&key, start, copy, out)?;
                    if self.spec.trigger.is_some() {
                        self.touched.push((key.clone(), start));
                    }
                    self.fire_if_complete(&key, start, end, out);
                }
            }
            WindowKind::Session { gap_ms, .. } => {
                let end = time.saturating_add(gap_ms);
                // Merge first, then judge lateness on the merged session:
                // an event late for its own session may join a retained one.
                let touching = self
                    .open
                    .get(&key)
                    .map(|windows| windows.touching(time, end))
                    .unwrap_or_default();
                let merged_end = touching
                    .iter()
                    .filter_map(|s| self.open.get(&key).and_then(|w| w.get(*s)))
                    .map(|b| b.end)
                    .fold(end, u64::max);
                if self.closed_for_good(merged_end) {
                    return self.late(event).await;
                }
                let moves_start =
                    touching.len() > 1 || touching.first().is_some_and(|start| time < *start);
                if self.spec.aggregate.is_some() && moves_start {
                    // The events waiting for the sessions it merges are
                    // folded into theirs first: the merged one starts elsewhere.
                    self.flush_adds().await?;
                }
                let start = self.merge_session(&key, time, end, touching);
                self.push(&key, start, event, out)?;
                if self.spec.trigger.is_some() {
                    self.touched.push((key.clone(), start));
                }
                if self.spec.aggregate.is_some() && self.completes(merged_end) {
                    self.flush_adds().await?;
                }
                self.fire_if_complete(&key, start, merged_end, out);
            }
        }
        self.finish_add(&key, has_timestamp, time, out).await
    }

    /// The end of adding an event of `key` at `time`: the key changed, the
    /// watermark moves with the event's timestamp, and what it closes fires.
    async fn finish_add(
        &mut self,
        key: &WindowKey,
        has_timestamp: bool,
        time: u64,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        self.mark_dirty(key);
        if let Some(settings) = self.event_time {
            if has_timestamp {
                self.advance_watermark(settings, time);
            }
            if self.spec.aggregate.is_some() && self.watermark.is_some_and(|w| self.due_by(w)) {
                self.flush_adds().await?;
            }
            self.fire_due(out);
        }
        Ok(())
    }

    /// Whether a window ending at `end` would fire as soon as an event
    /// joins it (event time: the watermark has passed its end).
    fn completes(&self, end: u64) -> bool {
        self.event_time.is_some() && self.watermark.is_some_and(|w| end <= w)
    }

    /// Whether firing up to `horizon` would fire or close any window.
    fn due_by(&self, horizon: u64) -> bool {
        self.unfired.first().is_some_and(|due| due.0 <= horizon)
            || self.retained.first().is_some_and(|due| due.0 <= horizon)
    }

    /// Events in the window starting at `start` of `key`: buffered, or
    /// folded into its accumulator and waiting to be.
    fn held(&self, key: &WindowKey, start: u64) -> usize {
        let Some(buffer) = self.open.get(key).and_then(|w| w.get(start)) else {
            return 0;
        };
        if self.spec.aggregate.is_none() {
            return buffer.events.len();
        }
        let folded: u64 = buffer.events.iter().map(aggregate::folded).sum();
        let waiting = self
            .pending_index
            .get(&(key.clone(), start))
            .and_then(|&at| self.pending_adds.get(at))
            .map_or(0, |pending| pending.events.len());
        usize::try_from(folded).unwrap_or(usize::MAX) + waiting
    }

    /// Merges the session `[start, end)` of `key` with the sessions at
    /// `touching` (the starts of those it overlaps or touches); returns the
    /// merged session's start. The merged session has not fired: it fires
    /// when the watermark passes its end (at once if it already has).
    fn merge_session(&mut self, key: &WindowKey, start: u64, end: u64, touching: Vec<u64>) -> u64 {
        let mut parts = Vec::with_capacity(touching.len() + 1);
        for part in touching {
            if let Some(buffer) = self.take_buffer(key, part) {
                parts.push(buffer);
            }
        }
        let mut merged = match merge_sessions(parts) {
            Some((merged, _moved)) => {
                #[cfg(test)]
                self.work.moved.set(self.work.moved.get() + _moved as u64);
                merged
            }
            None => Buffer::new(start, end),
        };
        merged.start = merged.start.min(start);
        merged.end = merged.end.max(end);
        let merged_start = merged.start;
        self.open_buffer(key, merged);
        merged_start
    }

    /// In event time, a window the watermark has already passed (an event
    /// came late, within the allowed lateness) fires at once with its full
    /// contents, and is kept until its lateness has passed.
    /// (`end` is the window's end, known to the caller: most events come
    /// before the watermark passes it, and cost no lookup here.)
    fn fire_if_complete(&mut self, key: &WindowKey, start: u64, end: u64, out: &mut Vec<Batch>) {
        let lateness = self.lateness();
        let complete =
            |end: u64| self.event_time.is_some() && self.watermark.is_some_and(|w| end <= w);
        if !complete(end) {
            return;
        }
        let Some(buffer) = self.open.get_mut(key).and_then(|w| w.get_mut(start)) else {
            return;
        };
        let end = buffer.end;
        if !complete(end) {
            return;
        }
        let events = buffer.copy_events();
        if !buffer.fired {
            buffer.fired = true;
            let due = (end, start, key.clone());
            self.unfired.remove(&due);
            self.retained
                .insert((end.saturating_add(lateness), start, due.2));
            self.mark_dirty(key);
        }
        if !events.is_empty() && self.fires_at_end() {
            emit(key.clone(), start, end, events, out);
        }
    }

    fn advance_watermark(&mut self, settings: EventTime, timestamp: u64) {
        let max = self.max_timestamp.map_or(timestamp, |m| m.max(timestamp));
        self.max_timestamp = Some(max);
        if self.upstream_watermarks {
            // Only the source's watermark moves it ([`Step::watermark`]).
            return;
        }
        let candidate = max.saturating_sub(settings.max_out_of_orderness_ms);
        if self.watermark.is_none_or(|w| candidate > w) {
            self.watermark = Some(candidate);
        }
    }

    /// Fires every window whose end has passed: the watermark in event time,
    /// the clock in processing time. In event time a fired window is kept
    /// until its allowed lateness has passed too.
    fn fire_due(&mut self, out: &mut Vec<Batch>) {
        let horizon = match self.event_time {
            Some(_) => match self.watermark {
                Some(watermark) => watermark,
                None => return,
            },
            None => self.now_ms(),
        };
        self.fire_until(horizon, out);
    }

    /// Fires the windows that end by `horizon`, from the index: in release
    /// order, looking at no window that is not due.
    fn fire_until(&mut self, horizon: u64, out: &mut Vec<Batch>) {
        let lateness = self.lateness();
        while let Some((end, start, key)) = pop_due(&mut self.unfired, horizon) {
            #[cfg(test)]
            self.work.visited.set(self.work.visited.get() + 1);
            let keep = lateness > 0 && end.saturating_add(lateness) > horizon;
            if keep {
                let Some(buffer) = self.open.get_mut(&key).and_then(|w| w.get_mut(start)) else {
                    continue;
                };
                buffer.fired = true;
                let events = buffer.copy_events();
                self.retained
                    .insert((end.saturating_add(lateness), start, key.clone()));
                self.mark_dirty(&key);
                if !events.is_empty() && self.fires_at_end() {
                    emit(key, start, end, events, out);
                }
            } else if let Some(buffer) = self.take_buffer(&key, start) {
                if !buffer.events.is_empty() && self.fires_at_end() {
                    emit(key, start, end, buffer.events.into(), out);
                }
            }
        }
        // Closed for good: their lateness has passed.
        while let Some((_, start, key)) = pop_due(&mut self.retained, horizon) {
            #[cfg(test)]
            self.work.visited.set(self.work.visited.get() + 1);
            let _ = self.take_buffer(&key, start);
        }
        // The two entries that were not due.
        #[cfg(test)]
        self.work.visited.set(self.work.visited.get() + 2);
    }

    /// Releases every open buffer (signal trigger; end of a finite source).
    fn release_all(&mut self, out: &mut Vec<Batch>) {
        let now = self.now_ms();
        let open = std::mem::take(&mut self.open);
        self.unfired.clear();
        self.retained.clear();
        self.buffered = 0;
        self.slots.clear();
        self.event_timers.clear();
        self.processing_timers.clear();
        // Every pane goes once the fires are settled.
        self.pane_gc.extend(self.panes.keys().cloned());
        let fires = self.fires_at_end();
        let mut due = Vec::new();
        for (key, windows) in open {
            for buffer in windows.into_buffers() {
                if buffer.fired || buffer.events.is_empty() || !fires {
                    continue;
                }
                let end = match self.spec.kind {
                    WindowKind::Signal { .. } => now.max(buffer.start),
                    _ => buffer.end,
                };
                due.push(Release {
                    end,
                    start: buffer.start,
                    key: key.clone(),
                    events: buffer.events.into(),
                });
            }
            self.dirty.insert(key);
        }
        emit_in_order(due, out);
    }

    fn meta(&self) -> Meta {
        Meta {
            max_timestamp: self.max_timestamp,
            watermark: self.watermark,
            late_dropped: self.spec.shared.late_dropped.load(Ordering::SeqCst),
        }
    }
}

#[async_trait]
impl Step for WindowStep {
    fn kind(&self) -> &'static str {
        "window"
    }

    fn name(&self) -> &str {
        &self.spec.name
    }

    fn buffered_events(&self) -> Option<usize> {
        Some(self.buffered)
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        let mut result = self.add_batch(batch, out).await;
        if result.is_ok() {
            result = self.settle_aggregates(released, out).await;
        }
        self.released(released, out);
        result
    }

    fn take_writes(&mut self) -> WriteSet {
        self.snapshot_writes()
    }

    async fn finish(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        self.release_all(out);
        self.settle_aggregates(released, out).await?;
        self.released(released, out);
        Ok(())
    }

    fn timer(&self) -> Option<tokio::time::Instant> {
        self.next_timer()
    }

    fn trigger(&self) -> Option<Arc<Notify>> {
        match self.spec.kind {
            WindowKind::Signal { .. } => Some(self.spec.shared.notify.clone()),
            _ => None,
        }
    }

    async fn wake(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        if self.trigger.is_some() && !self.upstream_watermarks {
            // Timers the idle watermark reaches run before what it closes.
            let now = self.now_ms();
            let idle = self.idle_watermark(now);
            self.run_timers(idle, Some(now), out).await?;
        } else if self.trigger.is_some() {
            let now = self.now_ms();
            self.run_timers(None, Some(now), out).await?;
        }
        self.on_wake(out);
        self.settle_aggregates(released, out).await?;
        self.released(released, out);
        Ok(())
    }

    async fn watermark(&mut self, watermark: u64, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        if self.trigger.is_some() {
            // The trigger's timers the new time reaches run before the
            // windows it closes fire.
            let (event, processing) = if self.controlled_time {
                let event = self
                    .event_time
                    .map(|_| self.watermark.map_or(watermark, |w| w.max(watermark)));
                (event, Some(watermark))
            } else {
                let event = self
                    .event_time
                    .filter(|_| self.upstream_watermarks)
                    .map(|settings| watermark.saturating_sub(settings.max_out_of_orderness_ms));
                (event, None)
            };
            self.run_timers(event, processing, out).await?;
        }
        self.upstream_watermark(watermark, out);
        self.settle_aggregates(released, out).await?;
        self.released(released, out);
        Ok(())
    }
}

impl WindowStep {
    /// Asks for a checkpoint when windows were released since `before`.
    fn released(&self, before: usize, out: &[Batch]) {
        if out.len() > before {
            if let Some(requests) = &self.checkpoint_on_close {
                requests.notify_one();
            }
        }
    }

    async fn add_batch(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        if self.trigger.is_some() {
            return self.add_batch_triggered(batch, out).await;
        }
        let now = self.now_ms();
        self.last_arrival_ms = now;
        for event in batch.events {
            if self.is_control(&event) {
                self.release_all(out);
                continue;
            }
            self.add(event, now, out).await?;
        }
        if self.event_time.is_none() && self.indexed() {
            self.flush_adds().await?;
            self.fire_due(out);
        }
        Ok(())
    }

    /// What changed since the last checkpoint: the entries of the keys whose
    /// windows changed (deleted when a key has none left), and the meta
    /// entry when it changed.
    fn snapshot_writes(&mut self) -> WriteSet {
        let mut writes = WriteSet::default();
        for name in self.stale.drain(..) {
            writes.insert(name, None);
        }
        let mut failed = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let name = saved::key_entry(&self.namespace, &key);
            let value = match self.open.get(&key) {
                Some(windows) => match postcard::to_allocvec(windows) {
                    Ok(bytes) => Some(bytes),
                    Err(error) => {
                        // Serialising owned vectors and integers cannot fail;
                        // if it ever did, the key's previous entry stays and
                        // the next checkpoint tries again.
                        tracing::error!(window = %self.spec.name, "cannot save window buffers: {error}");
                        failed.push(key);
                        continue;
                    }
                },
                None => None,
            };
            writes.insert(name, value);
            if self.pane_ms().is_some() {
                let name = saved::pane_entry(&self.namespace, &key);
                let panes: Vec<(u64, &Vec<u8>)> = self
                    .panes
                    .get(&key)
                    .map(|panes| panes.iter().map(|(start, acc)| (*start, acc)).collect())
                    .unwrap_or_default();
                let value = if panes.is_empty() {
                    None
                } else {
                    match postcard::to_allocvec(&panes) {
                        Ok(bytes) => Some(bytes),
                        Err(error) => {
                            tracing::error!(window = %self.spec.name, "cannot save panes: {error}");
                            failed.push(key);
                            continue;
                        }
                    }
                };
                writes.insert(name, value);
            }
            if self.spec.trigger.is_some() {
                let name = saved::trigger_entry(&self.namespace, &key);
                let slots: Vec<(u64, &TriggerSlot)> = self
                    .slots
                    .get(&key)
                    .map(|slots| {
                        slots
                            .iter()
                            .filter(|(_, slot)| !slot.is_empty())
                            .map(|(start, slot)| (*start, slot))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = if slots.is_empty() {
                    None
                } else {
                    match postcard::to_allocvec(&slots) {
                        Ok(bytes) => Some(bytes),
                        Err(error) => {
                            tracing::error!(window = %self.spec.name, "cannot save trigger slots: {error}");
                            failed.push(key);
                            continue;
                        }
                    }
                };
                writes.insert(name, value);
            }
        }
        self.dirty.extend(failed);
        let meta = self.meta();
        if self.saved_meta != Some(meta) {
            if let Ok(bytes) = postcard::to_allocvec(&meta) {
                writes.insert(saved::meta_entry(&self.namespace), Some(bytes));
                self.saved_meta = Some(meta);
            }
        }
        writes
    }

    /// Processing time now: the controlled time under
    /// [`WindowOptions::controlled_time`], else the clock's.
    fn now_ms(&self) -> u64 {
        self.controlled_now.unwrap_or_else(|| self.clock.now_ms())
    }

    fn next_timer(&self) -> Option<tokio::time::Instant> {
        #[cfg(test)]
        self.work.visited.set(self.work.visited.get() + 1);
        if !self.indexed() || self.controlled_time {
            return None;
        }
        let unfired_end = self.unfired.first().map(|(end, _, _)| *end);
        let timer_at = self.processing_timers.first().map(|(at, _, _)| *at);
        if let Some(at) = timer_at {
            let native = match self.event_time {
                None => unfired_end,
                Some(_) => None,
            };
            let at = native.map_or(at, |end| end.min(at));
            return Some(self.clock.instant_at(at));
        }
        match self.event_time {
            None => unfired_end.map(|end| self.clock.instant_at(end)),
            // The source's watermark leaves out its idle upstreams itself.
            Some(_) if self.upstream_watermarks => None,
            Some(settings) => {
                // Idle: the watermark advances with processing time.
                let idle = settings.idle_timeout_ms?;
                let end = [
                    unfired_end,
                    self.retained.first().map(|(due, _, _)| *due),
                    self.event_timers.first().map(|(at, _, _)| *at),
                ]
                .into_iter()
                .flatten()
                .min()?;
                let watermark = self.watermark.unwrap_or(0);
                let catch_up = end.saturating_sub(watermark);
                let at = self.last_arrival_ms.saturating_add(idle.max(catch_up));
                Some(self.clock.instant_at(at))
            }
        }
    }

    /// The source's watermark: in event time, with
    /// [`WindowOptions::upstream_watermarks`], the window's watermark
    /// becomes it less `max_out_of_orderness_ms` (never going back), and
    /// what that closes fires. Under [`WindowOptions::controlled_time`] it
    /// is the time itself: processing time becomes it, an event-time
    /// watermark moves up to it, and what that closes fires. Ignored
    /// otherwise.
    fn upstream_watermark(&mut self, upstream: u64, out: &mut Vec<Batch>) {
        if self.controlled_time {
            self.controlled_now = Some(
                self.controlled_now
                    .map_or(upstream, |now| now.max(upstream)),
            );
            match self.spec.kind {
                WindowKind::Count { .. } | WindowKind::Signal { .. } => {}
                _ => {
                    if self.event_time.is_some() && self.watermark.is_none_or(|w| upstream > w) {
                        self.watermark = Some(upstream);
                    }
                    self.fire_due(out);
                }
            }
            return;
        }
        let Some(settings) = self.event_time.filter(|_| self.upstream_watermarks) else {
            return;
        };
        let candidate = upstream.saturating_sub(settings.max_out_of_orderness_ms);
        if self.watermark.is_none_or(|w| candidate > w) {
            self.watermark = Some(candidate);
            self.fire_due(out);
        }
    }

    /// In event time with `idle_timeout_ms`, once the source has been quiet
    /// that long: the watermark processing time has moved it to.
    fn idle_watermark(&self, now: u64) -> Option<u64> {
        let settings = self.event_time?;
        let idle = settings.idle_timeout_ms?;
        let quiet = now.saturating_sub(self.last_arrival_ms);
        if quiet < idle {
            return None;
        }
        let base = self
            .max_timestamp
            .map_or(0, |m| m.saturating_sub(settings.max_out_of_orderness_ms));
        Some(base.saturating_add(quiet))
    }

    fn on_wake(&mut self, out: &mut Vec<Batch>) {
        let now = self.now_ms();
        match self.spec.kind {
            WindowKind::Signal { .. } => {
                let triggers = self.spec.shared.triggers.load(Ordering::SeqCst);
                if triggers != self.triggers_seen {
                    self.triggers_seen = triggers;
                    self.release_all(out);
                }
            }
            WindowKind::Count { .. } => {}
            _ => match self.event_time {
                None => self.fire_due(out),
                Some(_) => {
                    if let Some(advanced) = self.idle_watermark(now) {
                        if self.watermark.is_none_or(|w| advanced > w) {
                            self.watermark = Some(advanced);
                        }
                        self.fire_due(out);
                    }
                }
            },
        }
    }
}

/// Plugin triggers ([`TriggerSpec`]): asking the trigger, applying its answers.
impl WindowStep {
    /// Loads and starts the window's trigger component, when it has one
    /// (its name in errors and logs: `<window>/trigger`).
    ///
    /// # Errors
    ///
    /// The module cannot be loaded or is not a `trigger` component, or its
    /// `init` failed.
    pub(crate) async fn start_trigger(
        &mut self,
        runtime: &crate::runtime::Runtime,
        tenant: &str,
        pipeline: &str,
        state: &SharedState,
    ) -> Result<(), crate::runtime::LoadError> {
        let Some(spec) = self.spec.trigger.clone() else {
            return Ok(());
        };
        let instance =
            TriggerInstance::start(runtime, &spec, tenant, pipeline, &self.spec.name, state)
                .await?;
        self.trigger = Some(instance);
        Ok(())
    }

    /// A trigger failure, naming the window, the module and what it was asked about.
    fn trigger_error(&self, asked: &str, failure: &str) -> StepError {
        let module = self
            .trigger
            .as_ref()
            .map(|t| t.module().display().to_string())
            .unwrap_or_default();
        StepError::Native {
            step: self.spec.name.clone(),
            message: format!(
                "the trigger `{module}` of window `{}` {failure} ({asked})",
                self.spec.name
            ),
        }
    }

    /// The summary the trigger is given of the window starting at `start` of `key`.
    fn summary(&self, key: &WindowKey, start: u64) -> Option<WindowSummary> {
        let buffer = self.open.get(key)?.get(start)?;
        Some(WindowSummary {
            key: key.clone(),
            start,
            end: buffer.end,
            count: u32::try_from(buffer.events.len()).unwrap_or(u32::MAX),
            watermark: self.watermark,
            state: self
                .slots
                .get(key)
                .and_then(|slots| slots.get(&start))
                .and_then(|slot| slot.state.clone()),
        })
    }

    /// The watermark `event` would move the window to, when that reaches
    /// a window's end, a retained window's lateness or a trigger timer:
    /// what is pending must be decided first, and the timers run.
    fn closes_something(&self, event: &Event) -> Option<u64> {
        let settings = self.event_time?;
        if self.upstream_watermarks {
            return None;
        }
        let time = event.timestamp?;
        let max = self.max_timestamp.map_or(time, |m| m.max(time));
        let candidate = max.saturating_sub(settings.max_out_of_orderness_ms);
        if self.watermark.is_some_and(|w| candidate <= w) {
            return None;
        }
        let first = [
            self.unfired.first().map(|d| d.0),
            self.retained.first().map(|d| d.0),
            self.event_timers.first().map(|d| d.0),
        ]
        .into_iter()
        .flatten()
        .min()?;
        (first <= candidate).then_some(candidate)
    }

    /// A batch through a window with a trigger: each event is added as
    /// natively, and the windows it joined are asked about in calls that
    /// hold at most one event per key (so each summary is exact), made
    /// before anything that depends on the answers.
    async fn add_batch_triggered(
        &mut self,
        batch: Batch,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        let now = self.now_ms();
        self.last_arrival_ms = now;
        self.run_timers(None, Some(now), out).await?;
        for event in batch.events {
            let key = self.key_of(&event);
            if self.pending_keys.contains(&key) {
                self.ask(out).await?;
            }
            if let Some(watermark) = self.closes_something(&event) {
                self.ask(out).await?;
                self.run_timers(Some(watermark), None, out).await?;
            }
            let copy = event.clone();
            self.touched.clear();
            self.add(event, now, out).await?;
            let touched = std::mem::take(&mut self.touched);
            for (key, start) in &touched {
                if let Some(window) = self.summary(key, *start) {
                    self.pending.push(TriggerCall {
                        event: copy.clone(),
                        window,
                    });
                    self.pending_keys.insert(key.clone());
                }
            }
            self.touched = touched;
        }
        self.ask(out).await?;
        if self.event_time.is_none() {
            self.fire_due(out);
        }
        Ok(())
    }

    /// Asks the trigger about the pending calls and applies its answers;
    /// then runs the timers they set that are already due.
    async fn ask(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let calls = std::mem::take(&mut self.pending);
        self.pending_keys.clear();
        let Some(trigger) = self.trigger.as_mut() else {
            return Ok(());
        };
        match trigger.on_events(&calls).await {
            Ok(answers) => {
                for (call, answer) in calls.iter().zip(answers) {
                    self.settle(&call.window, answer, None, out, || {
                        describe_call(&call.event, &call.window)
                    })?;
                }
            }
            Err(failure) if failure.fatal || calls.len() == 1 => {
                self.failed(&describe_call(&calls[0].event, &calls[0].window), failure)?;
            }
            Err(_) => {
                // Which call failed: each alone (on a fresh instance after
                // a trap; the trigger keeps nothing, so asking again is
                // asking the same).
                for call in &calls {
                    let Some(trigger) = self.trigger.as_mut() else {
                        return Ok(());
                    };
                    let describe = || describe_call(&call.event, &call.window);
                    match trigger.on_events(std::slice::from_ref(call)).await {
                        Ok(answers) => {
                            for answer in answers {
                                self.settle(&call.window, answer, None, out, describe)?;
                            }
                        }
                        Err(failure) => self.failed(&describe(), failure)?,
                    }
                }
            }
        }
        self.run_due_timers(out).await
    }

    /// Runs the trigger timers already due (set by answers just applied:
    /// a timer the watermark passed while the call was pending fires as
    /// if it had been set when asked, whatever the batches were).
    async fn run_due_timers(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let event = self
            .watermark
            .filter(|w| self.event_timers.first().is_some_and(|t| t.0 <= *w));
        let now = self.now_ms();
        let processing = self
            .processing_timers
            .first()
            .is_some_and(|t| t.0 <= now)
            .then_some(now);
        if event.is_some() || processing.is_some() {
            self.run_timers(event, processing, out).await?;
        }
        Ok(())
    }

    /// Applies an answer, or, when it is malformed, follows `on_error`.
    fn settle(
        &mut self,
        window: &WindowSummary,
        answer: TriggerAnswer,
        fired: Option<&plugin::TimerRequest>,
        out: &mut Vec<Batch>,
        describe: impl Fn() -> String,
    ) -> Result<(), StepError> {
        match self.apply(window, answer, fired, out) {
            Ok(()) => Ok(()),
            Err(message) => self.failed(&describe(), TriggerFailure::new(message)),
        }
    }

    /// A failed call (or a malformed answer) about `asked`: the pipeline
    /// stops under `on_error: fail` (or when the instance could not be
    /// created again); under `skip` the call counts as answered `continue`.
    fn failed(&self, asked: &str, failure: TriggerFailure) -> Result<(), StepError> {
        let error = self.trigger_error(asked, &failure.message);
        let policy = self
            .spec
            .trigger
            .as_ref()
            .map_or(TriggerOnError::Fail, |spec| spec.on_error);
        if failure.fatal || policy == TriggerOnError::Fail {
            return Err(error);
        }
        let skipped = self
            .spec
            .shared
            .trigger_skipped
            .fetch_add(1, Ordering::SeqCst)
            + 1;
        tracing::warn!(window = %self.spec.name, skipped, error = %ErrorChain(&error), "trigger call skipped (on_error: skip)");
        Ok(())
    }

    /// Calls `on-timer` for the timers due by `event` (the watermark) and
    /// `processing` (the clock), in time order, and applies the answers;
    /// again while answers set timers that are due by then.
    async fn run_timers(
        &mut self,
        event: Option<u64>,
        processing: Option<u64>,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        loop {
            let calls = self.due_timer_calls(event, processing);
            if calls.is_empty() {
                return Ok(());
            }
            self.tell_timers(calls, out).await?;
        }
    }

    /// The calls of the timers due by `event` and `processing`, taken out
    /// of the windows, in time order.
    fn due_timer_calls(&mut self, event: Option<u64>, processing: Option<u64>) -> Vec<TimerCall> {
        let mut due: Vec<(u64, WitTimeDomain, WindowKey, u64)> = Vec::new();
        if let Some(horizon) = event {
            while let Some((at, start, key)) = pop_due(&mut self.event_timers, horizon) {
                due.push((at, WitTimeDomain::Event, key, start));
            }
        }
        if let Some(horizon) = processing {
            while let Some((at, start, key)) = pop_due(&mut self.processing_timers, horizon) {
                due.push((at, WitTimeDomain::Processing, key, start));
            }
        }
        due.sort_by(|a, b| (a.0, &a.2, a.3).cmp(&(b.0, &b.2, b.3)));
        let mut calls = Vec::with_capacity(due.len());
        for (at, domain, key, start) in due {
            if let Some(slot) = self.slots.get_mut(&key).and_then(|s| s.get_mut(&start)) {
                match domain {
                    WitTimeDomain::Event => slot.event_timer = None,
                    WitTimeDomain::Processing => slot.processing_timer = None,
                }
            }
            self.mark_dirty(&key);
            if let Some(window) = self.summary(&key, start) {
                calls.push(TimerCall {
                    timer: plugin::TimerRequest { domain, at },
                    window,
                });
            }
        }
        calls
    }

    /// Tells the trigger of the timers of `calls` and applies the answers.
    async fn tell_timers(
        &mut self,
        calls: Vec<TimerCall>,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        let Some(trigger) = self.trigger.as_mut() else {
            return Ok(());
        };
        match trigger.on_timer(&calls).await {
            Ok(answers) => {
                for (call, answer) in calls.iter().zip(answers) {
                    self.settle(&call.window, answer, Some(&call.timer), out, || {
                        describe_timer(call)
                    })?;
                }
            }
            Err(failure) if failure.fatal || calls.len() == 1 => {
                self.failed(&describe_timer(&calls[0]), failure)?;
            }
            Err(_) => {
                for call in &calls {
                    let Some(trigger) = self.trigger.as_mut() else {
                        return Ok(());
                    };
                    let describe = || describe_timer(call);
                    match trigger.on_timer(std::slice::from_ref(call)).await {
                        Ok(answers) => {
                            for answer in answers {
                                self.settle(
                                    &call.window,
                                    answer,
                                    Some(&call.timer),
                                    out,
                                    describe,
                                )?;
                            }
                        }
                        Err(failure) => self.failed(&describe(), failure)?,
                    }
                }
            }
        }
        Ok(())
    }

    /// Why `answer` about `window` cannot be applied, if it cannot:
    /// checked before anything changes, so a skipped answer leaves the
    /// window as it was. `fired` is the timer the answer is about.
    fn malformed(
        &self,
        window: &WindowSummary,
        answer: &TriggerAnswer,
        fired: Option<&plugin::TimerRequest>,
    ) -> Option<String> {
        if let Some(timer) = &answer.timer {
            if timer.domain == WitTimeDomain::Event && self.event_time.is_none() {
                return Some(format!(
                    "asked for an event-time timer at {} but the window runs on processing time",
                    timer.at
                ));
            }
            // The latest time the trigger knows has come, in the timer's
            // domain: the watermark it was shown, the timer it was told of.
            let shown = match timer.domain {
                WitTimeDomain::Event => window.watermark,
                WitTimeDomain::Processing => None,
            };
            let known = shown.max(fired.filter(|f| f.domain == timer.domain).map(|f| f.at));
            if let Some(known) = known.filter(|known| timer.at <= *known) {
                return Some(format!(
                    "asked for a timer in the past: {} time {}, not after {known}, a time it was shown",
                    domain_name(timer.domain),
                    timer.at
                ));
            }
        }
        let max = self
            .trigger
            .as_ref()
            .map_or(u64::MAX, |t| t.max_state_bytes());
        let bytes = answer.state.as_ref().map_or(0, Vec::len);
        if bytes as u64 > max {
            return Some(format!(
                "answered a trigger state of {bytes} bytes, more than its limits.max_value_bytes ({max})"
            ));
        }
        None
    }

    /// Applies one answer to the window it was about (if it is still open).
    ///
    /// # Errors
    ///
    /// The answer is malformed ([`WindowStep::malformed`]), as a message;
    /// nothing changed.
    fn apply(
        &mut self,
        window: &WindowSummary,
        answer: TriggerAnswer,
        fired: Option<&plugin::TimerRequest>,
        out: &mut Vec<Batch>,
    ) -> Result<(), String> {
        let key = &window.key;
        let start = window.start;
        let Some(end) = self.open.get(key).and_then(|w| w.get(start)).map(|b| b.end) else {
            return Ok(());
        };
        if let Some(message) = self.malformed(window, &answer, fired) {
            return Err(message);
        }
        let slot = self
            .slots
            .entry(key.clone())
            .or_default()
            .entry(start)
            .or_default();
        slot.state = answer.state;
        if let Some(timer) = answer.timer {
            let (field, index) = match timer.domain {
                WitTimeDomain::Event => (&mut slot.event_timer, &mut self.event_timers),
                WitTimeDomain::Processing => {
                    (&mut slot.processing_timer, &mut self.processing_timers)
                }
            };
            if let Some(old) = field.replace(timer.at) {
                index.remove(&(old, start, key.clone()));
            }
            index.insert((timer.at, start, key.clone()));
        }
        self.mark_dirty(key);
        match answer.decision {
            Decision::Continue => {}
            Decision::Fire => {
                if let Some(buffer) = self.open.get(key).and_then(|w| w.get(start)) {
                    if !buffer.events.is_empty() {
                        emit(key.clone(), start, end, buffer.copy_events(), out);
                    }
                }
            }
            Decision::FireAndPurge => {
                if let Some(buffer) = self.take_buffer(key, start) {
                    if !buffer.events.is_empty() {
                        emit(key.clone(), start, end, buffer.events.into(), out);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Aggregating windows ([`AggregateSpec`]): folding events into
/// accumulators, combining and emitting them.
impl WindowStep {
    /// Loads and starts the window's aggregator component, when it has
    /// one (its name in errors and logs: `<window>/aggregate`).
    ///
    /// # Errors
    ///
    /// The module cannot be loaded or is not an `aggregator` component, or
    /// its `init` failed.
    pub(crate) async fn start_aggregate(
        &mut self,
        runtime: &crate::runtime::Runtime,
        tenant: &str,
        pipeline: &str,
        state: &SharedState,
    ) -> Result<(), crate::runtime::LoadError> {
        let Some(spec) = self.spec.aggregate.clone() else {
            return Ok(());
        };
        let instance =
            AggregateInstance::start(runtime, &spec, tenant, pipeline, &self.spec.name, state)
                .await?;
        self.aggregator = Some(instance);
        Ok(())
    }

    /// A sliding aggregating window's pane length: the greatest common
    /// divisor of its size and slide (`None` for any other window).
    fn pane_ms(&self) -> Option<u64> {
        match self.spec.kind {
            WindowKind::Sliding {
                size_ms, slide_ms, ..
            } if self.spec.aggregate.is_some() => Some(gcd(size_ms, slide_ms)),
            _ => None,
        }
    }

    /// An aggregator failure, naming the window, the module and what it was asked.
    fn aggregate_error(&self, asked: &str, failure: &str) -> StepError {
        let module = self
            .aggregator
            .as_ref()
            .map(|a| a.module().display().to_string())
            .or_else(|| {
                self.spec
                    .aggregate
                    .as_ref()
                    .map(|s| s.module.display().to_string())
            })
            .unwrap_or_default();
        StepError::Native {
            step: self.spec.name.clone(),
            message: format!(
                "the aggregator `{module}` of window `{}` {failure} ({asked})",
                self.spec.name
            ),
        }
    }

    /// Queues `event` for the accumulator of the window (or pane) starting
    /// at `start` of `key`; whether events of it were already waiting.
    fn queue_add(&mut self, key: &WindowKey, start: u64, event: Event) -> bool {
        let slot = (key.clone(), start);
        if let Some(&at) = self.pending_index.get(&slot) {
            if let Some(pending) = self.pending_adds.get_mut(at) {
                pending.events.push(event);
                return true;
            }
        }
        self.pending_index.insert(slot, self.pending_adds.len());
        self.pending_adds.push(PendingAdd {
            key: key.clone(),
            start,
            events: vec![event],
        });
        false
    }

    /// Adds an event of a tumbling or sliding aggregating window: to its
    /// window's accumulator, or to its pane's (a sliding window's windows
    /// only mark that they hold events: their panes hold them).
    async fn add_aggregated(
        &mut self,
        key: &WindowKey,
        time: u64,
        bounds: &[(u64, u64)],
        event: Event,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        match self.pane_ms() {
            Some(pane) => {
                let waited = self.queue_add(key, time - time % pane, event);
                // Its pane already has events of this batch, so the
                // windows that cover it are open and marked; unless one
                // has already fired (a late event), there is nothing to do.
                let earliest_end = bounds.iter().map(|b| b.1).min().unwrap_or(0);
                if waited && !self.completes(earliest_end) {
                    return Ok(());
                }
            }
            None => {
                if let Some(&(start, end)) = bounds.first() {
                    let start = self.time_buffer(key, start, end);
                    let _waited = self.queue_add(key, start, event);
                }
            }
        }
        for &(start, end) in bounds {
            let start = self.time_buffer(key, start, end);
            if self.pane_ms().is_some() {
                if let Some(buffer) = self.open.get_mut(key).and_then(|w| w.get_mut(start)) {
                    if buffer.events.is_empty() {
                        buffer.events.push_back(Event::new(Vec::new()));
                        self.buffered += 1;
                    }
                }
            }
            if self.completes(end) {
                self.flush_adds().await?;
            }
            self.fire_if_complete(key, start, end, out);
        }
        Ok(())
    }

    /// Fails when an accumulator is larger than `max_bytes`.
    fn check_accumulator(&self, window: &WindowBounds, bytes: usize) -> Result<(), StepError> {
        match self.spec.max_bytes {
            Some(max) if bytes > max => Err(StepError::Native {
                step: self.spec.name.clone(),
                message: format!(
                    "the accumulator of window [{}, {}) of key {:?} is {bytes} bytes, more than max_bytes = {max}; raise the bound",
                    window.start,
                    window.end,
                    window.key.as_deref().map(String::from_utf8_lossy)
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Folds the queued events into their accumulators: one `add` call
    /// (after one `merge` call for windows holding partial accumulators
    /// of merged sessions).
    async fn flush_adds(&mut self) -> Result<(), StepError> {
        if self.pending_adds.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending_adds);
        self.pending_index.clear();
        let pane_ms = self.pane_ms();
        let mut merges: Vec<(usize, MergeCall)> = Vec::new();
        let mut calls: Vec<AddCall> = Vec::with_capacity(pending.len());
        let mut folded_before: Vec<u64> = Vec::with_capacity(pending.len());
        for PendingAdd { key, start, events } in pending {
            let (end, partials, folded) = match pane_ms {
                Some(pane) => {
                    let held = self.panes.get_mut(&key).and_then(|p| p.remove(&start));
                    (start.saturating_add(pane), held.into_iter().collect(), 0)
                }
                None => {
                    let Some(buffer) = self.open.get_mut(&key).and_then(|w| w.get_mut(start))
                    else {
                        return Err(StepError::Native {
                            step: self.spec.name.clone(),
                            message: format!(
                                "window [{start}, …) of key {:?} closed before its events were folded (a bug)",
                                key.as_deref().map(String::from_utf8_lossy)
                            ),
                        });
                    };
                    let held = std::mem::take(&mut buffer.events);
                    let end = buffer.end;
                    self.buffered = self.buffered.saturating_sub(held.len());
                    let folded: u64 = held.iter().map(aggregate::folded).sum();
                    let partials: Vec<Vec<u8>> = held.into_iter().map(|e| e.value).collect();
                    (end, partials, folded)
                }
            };
            let window = WindowBounds { key, start, end };
            let accumulator = if partials.len() > 1 {
                merges.push((
                    calls.len(),
                    MergeCall {
                        window: window.clone(),
                        accumulators: partials,
                    },
                ));
                None
            } else {
                partials.into_iter().next()
            };
            calls.push(AddCall {
                window,
                accumulator,
                events,
            });
            folded_before.push(folded);
        }
        if !merges.is_empty() {
            let (at, merge_calls): (Vec<usize>, Vec<MergeCall>) = merges.into_iter().unzip();
            let merged = self.call_merge(&merge_calls).await?;
            for (at, accumulator) in at.into_iter().zip(merged) {
                if let Some(call) = calls.get_mut(at) {
                    call.accumulator = Some(accumulator);
                }
            }
        }
        let Some(aggregator) = self.aggregator.as_mut() else {
            return Err(self.aggregate_error("add", "was not started"));
        };
        let accumulators = match aggregator.add(&calls).await {
            Ok(accumulators) => accumulators,
            Err(failure) => {
                let asked = describe_add(&calls);
                return Err(self.aggregate_error(&asked, &failure));
            }
        };
        for ((call, accumulator), folded) in calls.into_iter().zip(accumulators).zip(folded_before)
        {
            self.check_accumulator(&call.window, accumulator.len())?;
            let WindowBounds { key, start, .. } = call.window;
            match pane_ms {
                Some(_) => {
                    self.panes
                        .entry(key.clone())
                        .or_default()
                        .insert(start, accumulator);
                }
                None => {
                    if let Some(buffer) = self.open.get_mut(&key).and_then(|w| w.get_mut(start)) {
                        buffer.bytes = accumulator.len();
                        let events = folded + call.events.len() as u64;
                        buffer
                            .events
                            .push_back(aggregate::accumulator_event(accumulator, events));
                        self.buffered += 1;
                    }
                }
            }
            self.mark_dirty(&key);
        }
        Ok(())
    }

    async fn call_merge(&mut self, calls: &[MergeCall]) -> Result<Vec<Vec<u8>>, StepError> {
        let Some(aggregator) = self.aggregator.as_mut() else {
            return Err(self.aggregate_error("merge", "was not started"));
        };
        match aggregator.merge(calls).await {
            Ok(merged) => Ok(merged),
            Err(failure) => {
                let asked =
                    describe_windows("merge the accumulators of", calls.iter().map(|c| &c.window));
                Err(self.aggregate_error(&asked, &failure))
            }
        }
    }

    /// A sliding aggregating window's released windows carry a mark; here
    /// it becomes the accumulators of the window's panes, as they are now
    /// (right after the fire, before any later event is folded in).
    fn snapshot_panes(&self, from: usize, out: &mut [Batch]) {
        if self.pane_ms().is_none() {
            return;
        }
        for batch in out.iter_mut().skip(from) {
            let marked = batch.events.len() == 1
                && batch.events.first().is_some_and(|e| e.timestamp.is_none());
            let Some(window) = batch.window.as_ref().filter(|_| marked) else {
                continue;
            };
            batch.events = self
                .panes
                .get(&window.key)
                .map(|panes| {
                    panes
                        .range(window.start..window.end)
                        .map(|(_, acc)| aggregate::accumulator_event(acc.clone(), 0))
                        .collect()
                })
                .unwrap_or_default();
        }
    }

    /// Turns what an aggregating window released since `from` (each
    /// batch holding its window's accumulators) into what the aggregator
    /// emits: one `merge` call for the windows with several partial
    /// accumulators (a sliding window's panes, merged sessions), one
    /// `emit` call; a window that emits nothing releases no batch. Then
    /// drops the panes no open window covers.
    async fn settle_aggregates(
        &mut self,
        from: usize,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        if self.spec.aggregate.is_none() {
            return Ok(());
        }
        self.flush_adds().await?;
        self.snapshot_panes(from, out);
        let bounds = |batch: &Batch| {
            let window = batch.window.clone().unwrap_or(WindowInfo {
                start: 0,
                end: 0,
                key: None,
            });
            WindowBounds {
                key: window.key,
                start: window.start,
                end: window.end,
            }
        };
        let mut merge_at = Vec::new();
        let mut merges = Vec::new();
        for (at, batch) in out.iter_mut().enumerate().skip(from) {
            if batch.events.len() > 1 {
                let window = bounds(batch);
                let accumulators = std::mem::take(&mut batch.events)
                    .into_iter()
                    .map(|e| e.value)
                    .collect();
                merge_at.push(at);
                merges.push(MergeCall {
                    window,
                    accumulators,
                });
            }
        }
        if !merges.is_empty() {
            let merged = self.call_merge(&merges).await?;
            for (at, accumulator) in merge_at.into_iter().zip(merged) {
                if let Some(batch) = out.get_mut(at) {
                    batch.events = vec![aggregate::accumulator_event(accumulator, 0)];
                }
            }
        }
        let mut emit_at = Vec::new();
        let mut emits = Vec::new();
        for (at, batch) in out.iter_mut().enumerate().skip(from) {
            if let Some(accumulator) = batch.events.pop() {
                emit_at.push(at);
                emits.push(EmitCall {
                    window: bounds(batch),
                    accumulator: accumulator.value,
                });
            }
        }
        if !emits.is_empty() {
            let Some(aggregator) = self.aggregator.as_mut() else {
                return Err(self.aggregate_error("emit", "was not started"));
            };
            let released = match aggregator.emit(&emits).await {
                Ok(released) => released,
                Err(failure) => {
                    let asked = describe_windows("emit", emits.iter().map(|c| &c.window));
                    return Err(self.aggregate_error(&asked, &failure));
                }
            };
            for (at, events) in emit_at.into_iter().zip(released) {
                if let Some(batch) = out.get_mut(at) {
                    batch.events = events;
                }
            }
        }
        let mut at = 0;
        out.retain(|batch| {
            let keep = at < from || !batch.events.is_empty();
            at += 1;
            keep
        });
        self.collect_panes();
        Ok(())
    }

    /// Drops the panes of the keys that closed windows that no open window
    /// of their key covers any more.
    fn collect_panes(&mut self) {
        for key in std::mem::take(&mut self.pane_gc) {
            let first = self.open.get(&key).and_then(KeyWindows::first_start);
            let Some(panes) = self.panes.get_mut(&key) else {
                continue;
            };
            match first {
                Some(start) => *panes = panes.split_off(&start),
                None => panes.clear(),
            }
            if panes.is_empty() {
                self.panes.remove(&key);
            }
            self.mark_dirty(&key);
        }
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// What an aggregator was asked to add, for an error: the first window.
fn describe_add(calls: &[AddCall]) -> String {
    let Some(first) = calls.first() else {
        return "add".to_owned();
    };
    let event = first.events.first();
    format!(
        "asked to add {} event(s) to window [{}, {}) of key {:?}, the first with key {:?} and timestamp {:?}{}",
        first.events.len(),
        first.window.start,
        first.window.end,
        first.window.key.as_deref().map(String::from_utf8_lossy),
        event.and_then(|e| e.key.as_deref()).map(String::from_utf8_lossy),
        event.and_then(|e| e.timestamp),
        if calls.len() > 1 {
            format!(", first of {} calls", calls.len())
        } else {
            String::new()
        }
    )
}

/// The windows an aggregator was asked about, for an error: the first one.
fn describe_windows<'a>(
    what: &str,
    mut windows: impl ExactSizeIterator<Item = &'a WindowBounds>,
) -> String {
    let count = windows.len();
    let Some(first) = windows.next() else {
        return what.to_owned();
    };
    format!(
        "asked to {what} window [{}, {}) of key {:?}{}",
        first.start,
        first.end,
        first.key.as_deref().map(String::from_utf8_lossy),
        if count > 1 {
            format!(", first of {count} windows")
        } else {
            String::new()
        }
    )
}

/// What a trigger was asked about, for an error: the event's key and
/// timestamp and its window.
fn describe_call(event: &Event, window: &WindowSummary) -> String {
    format!(
        "asked about the event with key {:?} and timestamp {:?} in window [{}, {})",
        event.key.as_deref().map(String::from_utf8_lossy),
        event.timestamp,
        window.start,
        window.end,
    )
}

/// A time domain as the docs name it.
fn domain_name(domain: WitTimeDomain) -> &'static str {
    match domain {
        WitTimeDomain::Event => "event",
        WitTimeDomain::Processing => "processing",
    }
}

/// What a trigger was told of a timer, for an error.
fn describe_timer(call: &TimerCall) -> String {
    format!(
        "told of its {}-time timer at {} of window [{}, {}) of key {:?}",
        domain_name(call.timer.domain),
        call.timer.at,
        call.window.start,
        call.window.end,
        call.window.key.as_deref().map(String::from_utf8_lossy),
    )
}

#[cfg(test)]
mod tests;
