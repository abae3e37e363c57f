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
//! With `key_by` a window keeps one buffer per event key and fires per key.
//! Buffers are part of every checkpoint (saved in the state backend with the
//! pipes' writes and the source position), so a restart continues a
//! half-filled window. When a finite source ends, every open window fires.

mod clock;
mod config;
mod trigger;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::dead_letter::DeadLetters;
use crate::state::{Namespace, SharedState, StateError, WriteSet};
use crate::step::{Step, StepError};
use crate::{Batch, Event, WindowInfo};

pub use clock::WindowClock;
pub use config::{
    CountWindowConfig, KeyBy, LateConfig, OverflowConfig, SessionWindowConfig, SignalOn,
    SignalWindowConfig, SlidingWindowConfig, TimeDomain, TumblingWindowConfig, WindowConfig,
};
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
            shared: Arc::default(),
        }
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

/// One open window of one key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Buffer {
    start: u64,
    end: u64,
    events: Vec<Event>,
    bytes: usize,
    /// Fired at least once (event time with allowed lateness keeps it).
    fired: bool,
}

impl Buffer {
    fn new(start: u64, end: u64) -> Self {
        Buffer {
            start,
            end,
            events: Vec::new(),
            bytes: 0,
            fired: false,
        }
    }
}

/// A window due for release.
struct Release {
    end: u64,
    start: u64,
    key: Option<Vec<u8>>,
    events: Vec<Event>,
}

fn emit(key: Option<Vec<u8>>, start: u64, end: u64, events: Vec<Event>, out: &mut Vec<Batch>) {
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

/// What a checkpoint saves of a window.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Snapshot {
    open: Vec<(Option<Vec<u8>>, Vec<Buffer>)>,
    max_timestamp: Option<u64>,
    watermark: Option<u64>,
    late_dropped: u64,
}

const SNAPSHOT_KEY: &str = "buffers";

fn event_bytes(event: &Event) -> usize {
    event.size_bytes()
}

/// A running window.
pub struct WindowStep {
    spec: Window,
    clock: WindowClock,
    namespace: Namespace,
    event_time: Option<EventTime>,
    /// Open buffers per key (`None`: unkeyed or keyless events).
    open: BTreeMap<Option<Vec<u8>>, Vec<Buffer>>,
    max_timestamp: Option<u64>,
    watermark: Option<u64>,
    last_arrival_ms: u64,
    triggers_seen: u64,
    dead_letters: Option<DeadLetters>,
    changed: bool,
    checkpoint_on_close: Option<Arc<Notify>>,
}

/// How the pipeline runs its windows.
#[derive(Debug, Clone, Default)]
pub struct WindowOptions {
    /// Restore buffers from the last checkpoint (not under at-most-once).
    pub restore: bool,
    /// Poked whenever the window releases, when the pipeline checkpoints on window close.
    pub checkpoint_on_close: Option<Arc<Notify>>,
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
        let saved = if options.restore {
            state
                .get(&namespace.key(SNAPSHOT_KEY))
                .await
                .map_err(|e: StateError| native(format!("cannot read the saved buffers: {e}")))?
        } else {
            None
        };
        let snapshot = match saved {
            Some(bytes) => postcard::from_bytes::<Snapshot>(&bytes)
                .map_err(|e| native(format!("the saved buffers are corrupt: {e}")))?,
            None => Snapshot::default(),
        };
        spec.shared
            .late_dropped
            .store(snapshot.late_dropped, Ordering::SeqCst);
        let clock = spec.clock.unwrap_or_else(WindowClock::system);
        let triggers_seen = spec.shared.triggers.load(Ordering::SeqCst);
        Ok(WindowStep {
            event_time: spec.event_time_settings(),
            last_arrival_ms: clock.now_ms(),
            open: snapshot.open.into_iter().collect(),
            max_timestamp: snapshot.max_timestamp,
            watermark: snapshot.watermark,
            spec,
            clock,
            namespace,
            triggers_seen,
            dead_letters,
            changed: false,
            checkpoint_on_close: options.checkpoint_on_close.clone(),
        })
    }

    fn key_of(&self, event: &Event) -> Option<Vec<u8>> {
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

    /// Adds `event` to the buffer `index` of `key`, enforcing the bounds.
    fn push(
        &mut self,
        key: &Option<Vec<u8>>,
        index: usize,
        event: Event,
        out: &mut Vec<Batch>,
    ) -> Result<(), StepError> {
        let size = event_bytes(&event);
        let (max_events, max_bytes, overflow) = (
            self.spec.max_events,
            self.spec.max_bytes,
            self.spec.overflow,
        );
        let Some(buffer) = self.open.get_mut(key).and_then(|list| list.get_mut(index)) else {
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
                    let events = std::mem::take(&mut buffer.events);
                    buffer.bytes = 0;
                    let (start, end) = (buffer.start, buffer.end);
                    emit(key.clone(), start, end, events, out);
                }
            }
        }
        if let Some(buffer) = self.open.get_mut(key).and_then(|list| list.get_mut(index)) {
            buffer.bytes += size;
            buffer.events.push(event);
        }
        Ok(())
    }

    /// Finds or opens the buffer `[start, end)` of `key`.
    fn buffer_index(&mut self, key: &Option<Vec<u8>>, start: u64, end: u64) -> usize {
        let list = self.open.entry(key.clone()).or_default();
        match list.iter().position(|b| b.start == start && b.end == end) {
            Some(index) => index,
            None => {
                list.push(Buffer::new(start, end));
                list.len() - 1
            }
        }
    }

    /// The one buffer of a count or signal window's key, opened at `time` if needed.
    fn first_buffer(&mut self, key: &Option<Vec<u8>>, time: u64) -> usize {
        let list = self.open.entry(key.clone()).or_default();
        if list.is_empty() {
            list.push(Buffer::new(time, time));
        }
        0
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
        self.changed = true;
        match (self.spec.late, &self.dead_letters) {
            (LatePolicy::DeadLetter, Some(dead_letters)) => {
                dead_letters
                    .send(event, &self.spec.name, "late event", self.clock.now_ms())
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
        match self.spec.kind.clone() {
            WindowKind::Count { events } => {
                let index = self.first_buffer(&key, time);
                self.push(&key, index, event, out)?;
                if let Some(buffer) = self.open.get_mut(&key).and_then(|list| list.get_mut(index)) {
                    buffer.end = buffer.end.max(time.saturating_add(1));
                    if buffer.events.len() >= events {
                        let buffer = self.remove(&key, index);
                        emit(key, buffer.start, buffer.end, buffer.events, out);
                    }
                }
            }
            WindowKind::Signal { .. } => {
                let index = self.first_buffer(&key, time);
                self.push(&key, index, event, out)?;
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
                let last = bounds.len() - 1;
                let mut event = Some(event);
                for (i, (start, end)) in bounds.into_iter().enumerate() {
                    let copy = if i == last {
                        event.take()
                    } else {
                        event.clone()
                    };
                    let Some(copy) = copy else { break };
                    let index = self.buffer_index(&key, start, end);
                    self.push(&key, index, copy, out)?;
                    self.refire_if_fired(&key, index, out);
                }
            }
            WindowKind::Session { gap_ms, .. } => {
                let end = time.saturating_add(gap_ms);
                if self.closed_for_good(end) {
                    return self.late(event).await;
                }
                let index = self.merge_session(&key, time, end);
                self.push(&key, index, event, out)?;
                if self.event_time.is_some() {
                    // Keep a session's events in time order when one arrives out of order.
                    if let Some(buffer) =
                        self.open.get_mut(&key).and_then(|list| list.get_mut(index))
                    {
                        if let Some(last) = buffer.events.len().checked_sub(1) {
                            let at = buffer.events[..last]
                                .partition_point(|e| e.timestamp.unwrap_or(0) <= time);
                            buffer.events[at..].rotate_right(1);
                        }
                    }
                }
                self.refire_if_fired(&key, index, out);
            }
        }
        if let Some(settings) = self.event_time {
            if has_timestamp {
                self.advance_watermark(settings, time);
            }
            self.fire_due(out);
        }
        Ok(())
    }

    /// Merges the session `[start, end)` with every overlapping session of
    /// `key`; returns the merged session's index.
    fn merge_session(&mut self, key: &Option<Vec<u8>>, start: u64, end: u64) -> usize {
        let list = self.open.entry(key.clone()).or_default();
        let mut merged = Buffer::new(start, end);
        let mut kept = Vec::with_capacity(list.len());
        for buffer in list.drain(..) {
            if buffer.start <= merged.end && merged.start <= buffer.end {
                merged.start = merged.start.min(buffer.start);
                merged.end = merged.end.max(buffer.end);
                merged.bytes += buffer.bytes;
                merged.fired |= buffer.fired;
                merged.events.extend(buffer.events);
            } else {
                kept.push(buffer);
            }
        }
        // Keep events in time order across merged sessions.
        merged
            .events
            .sort_by_key(|e| e.timestamp.unwrap_or(merged.start));
        kept.push(merged);
        *list = kept;
        list.len() - 1
    }

    /// In event time, a window that already fired fires again with its full
    /// contents when a late event joins it.
    fn refire_if_fired(&mut self, key: &Option<Vec<u8>>, index: usize, out: &mut Vec<Batch>) {
        let Some(buffer) = self.open.get(key).and_then(|list| list.get(index)) else {
            return;
        };
        if buffer.fired {
            let (start, end, events) = (buffer.start, buffer.end, buffer.events.clone());
            emit(key.clone(), start, end, events, out);
        }
    }

    fn remove(&mut self, key: &Option<Vec<u8>>, index: usize) -> Buffer {
        let list = self.open.entry(key.clone()).or_default();
        let buffer = list.remove(index);
        if list.is_empty() {
            self.open.remove(key);
        }
        buffer
    }

    fn advance_watermark(&mut self, settings: EventTime, timestamp: u64) {
        let max = self.max_timestamp.map_or(timestamp, |m| m.max(timestamp));
        self.max_timestamp = Some(max);
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
            None => self.clock.now_ms(),
        };
        self.fire_until(horizon, out);
    }

    fn fire_until(&mut self, horizon: u64, out: &mut Vec<Batch>) {
        let lateness = self.event_time.map_or(0, |s| s.allowed_lateness_ms);
        let mut due: Vec<Release> = Vec::new();
        let mut emptied = Vec::new();
        for (key, list) in &mut self.open {
            list.retain_mut(|buffer| {
                if buffer.end > horizon {
                    return true;
                }
                let keep = lateness > 0 && buffer.end.saturating_add(lateness) > horizon;
                if !buffer.fired {
                    let events = if keep {
                        buffer.events.clone()
                    } else {
                        std::mem::take(&mut buffer.events)
                    };
                    due.push(Release {
                        end: buffer.end,
                        start: buffer.start,
                        key: key.clone(),
                        events,
                    });
                    buffer.fired = true;
                }
                keep
            });
            if list.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.open.remove(&key);
        }
        if !due.is_empty() {
            self.changed = true;
        }
        emit_in_order(due, out);
    }

    /// Releases every open buffer (signal trigger; end of a finite source).
    fn release_all(&mut self, out: &mut Vec<Batch>) {
        let now = self.clock.now_ms();
        let open = std::mem::take(&mut self.open);
        let mut due = Vec::new();
        for (key, list) in open {
            for buffer in list {
                if buffer.fired || buffer.events.is_empty() {
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
                    events: buffer.events,
                });
            }
        }
        self.changed = true;
        emit_in_order(due, out);
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            open: self
                .open
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_timestamp: self.max_timestamp,
            watermark: self.watermark,
            late_dropped: self.spec.shared.late_dropped.load(Ordering::SeqCst),
        }
    }
}

#[async_trait]
impl Step for WindowStep {
    fn name(&self) -> &str {
        &self.spec.name
    }

    fn buffered_events(&self) -> Option<usize> {
        Some(
            self.open
                .values()
                .flat_map(|buffers| buffers.iter())
                .map(|buffer| buffer.events.len())
                .sum(),
        )
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        let result = self.add_batch(batch, out).await;
        self.released(released, out);
        result
    }

    fn take_writes(&mut self) -> WriteSet {
        self.snapshot_writes()
    }

    async fn finish(&mut self, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let released = out.len();
        self.release_all(out);
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
        self.on_wake(out);
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
        let now = self.clock.now_ms();
        self.last_arrival_ms = now;
        self.changed = true;
        for event in batch.events {
            if self.is_control(&event) {
                self.release_all(out);
                continue;
            }
            self.add(event, now, out).await?;
        }
        if self.event_time.is_none()
            && matches!(
                self.spec.kind,
                WindowKind::Tumbling { .. }
                    | WindowKind::Sliding { .. }
                    | WindowKind::Session { .. }
            )
        {
            self.fire_due(out);
        }
        Ok(())
    }

    fn snapshot_writes(&mut self) -> WriteSet {
        let mut writes = WriteSet::default();
        if !self.changed {
            return writes;
        }
        self.changed = false;
        match postcard::to_allocvec(&self.snapshot()) {
            Ok(bytes) => {
                writes.insert(self.namespace.key(SNAPSHOT_KEY), Some(bytes));
            }
            Err(error) => {
                // Serialising owned vectors and integers cannot fail; if it
                // ever did, the previous snapshot stays and a restart replays more.
                tracing::error!(window = %self.spec.name, "cannot save window buffers: {error}");
                self.changed = true;
            }
        }
        writes
    }

    fn next_timer(&self) -> Option<tokio::time::Instant> {
        let unfired_end = self
            .open
            .values()
            .flatten()
            .filter(|b| !b.fired)
            .map(|b| b.end)
            .min();
        match self.spec.kind {
            WindowKind::Count { .. } | WindowKind::Signal { .. } => None,
            _ => match self.event_time {
                None => unfired_end.map(|end| self.clock.instant_at(end)),
                Some(settings) => {
                    // Idle: the watermark advances with processing time.
                    let idle = settings.idle_timeout_ms?;
                    let end = unfired_end.or_else(|| {
                        self.open
                            .values()
                            .flatten()
                            .map(|b| b.end + settings.allowed_lateness_ms)
                            .min()
                    })?;
                    let watermark = self.watermark.unwrap_or(0);
                    let catch_up = end.saturating_sub(watermark);
                    let at = self.last_arrival_ms.saturating_add(idle.max(catch_up));
                    Some(self.clock.instant_at(at))
                }
            },
        }
    }

    fn on_wake(&mut self, out: &mut Vec<Batch>) {
        let now = self.clock.now_ms();
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
                Some(settings) => {
                    if let Some(idle) = settings.idle_timeout_ms {
                        let quiet = now.saturating_sub(self.last_arrival_ms);
                        if quiet >= idle {
                            let base = self
                                .max_timestamp
                                .map_or(0, |m| m.saturating_sub(settings.max_out_of_orderness_ms));
                            let advanced = base.saturating_add(quiet);
                            if self.watermark.is_none_or(|w| advanced > w) {
                                self.watermark = Some(advanced);
                                self.changed = true;
                            }
                            self.fire_due(out);
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests;
