//! A window step's config: `{"type": "window", "window": "<kind>", …}`,
//! one struct per kind with exactly the fields that kind accepts, and one
//! `build` per kind making the [`Window`].
//!
//! The fields stay flat on the step object, as they always were; the
//! `window` field picks the struct. A field of another kind is refused by
//! the reading itself, with its path and the kinds it applies to
//! (`pipeline[1].slide_ms: unknown field …; `slide_ms` applies to sliding
//! windows only`); such a field set to `null` is read as not set, as it
//! always was. What only the values can tell (a zero size, event-time
//! settings on a processing-time window, a signal window without a
//! trigger) is checked by `build`, naming the field.

use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use serde_json::Value;

use super::{
    AggregateSpec, EventTime, LatePolicy, Overflow, TriggerOnError, TriggerSpec, Window,
    WindowSpecError,
};
use crate::config::strict::{self, object_only};
use crate::runtime::PipeLimits;

object_only!(SignalOn, TriggerConfig, AggregateConfig);

/// `{"type": "window", …}`: a window, by its `window` kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowConfig {
    /// `"window": "count"`: every N events.
    Count(CountWindowConfig),
    /// `"window": "tumbling"`: fixed windows.
    Tumbling(TumblingWindowConfig),
    /// `"window": "sliding"`: overlapping windows.
    Sliding(SlidingWindowConfig),
    /// `"window": "session"`: bursts separated by a gap.
    Session(SessionWindowConfig),
    /// `"window": "signal"`: released by triggers.
    Signal(SignalWindowConfig),
}

/// The values of `window`, in the order errors list them.
const KINDS: &[&str] = &["count", "tumbling", "sliding", "session", "signal"];

/// The fields that matter only in event time.
const EVENT_TIME_FIELDS: &[&str] = &[
    "max_out_of_orderness_ms",
    "allowed_lateness_ms",
    "idle_timeout_ms",
];

/// The fields the struct of window kind `kind` reads.
fn fields_of(kind: &str) -> Option<&'static [&'static str]> {
    let fields = match kind {
        "count" => strict::struct_fields::<CountWindowConfig>(),
        "tumbling" => strict::struct_fields::<TumblingWindowConfig>(),
        "sliding" => strict::struct_fields::<SlidingWindowConfig>(),
        "session" => strict::struct_fields::<SessionWindowConfig>(),
        "signal" => strict::struct_fields::<SignalWindowConfig>(),
        _ => return None,
    };
    Some(fields.unwrap_or_default())
}

/// The kinds of window `field` applies to, as a phrase (`session windows`,
/// `tumbling and sliding windows`), or `None` when no kind has it.
fn applies_to(field: &str) -> Option<String> {
    let kinds: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|kind| fields_of(kind).is_some_and(|fields| fields.contains(&field)))
        .collect();
    let (last, rest) = kinds.split_last()?;
    let mut phrase = if rest.is_empty() {
        (*last).to_owned()
    } else {
        format!("{} and {last}", rest.join(", "))
    };
    phrase.push_str(" windows");
    if EVENT_TIME_FIELDS.contains(&field) {
        phrase.push_str(" with \"time\": \"event\"");
    }
    Some(phrase)
}

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let strict::Tagged { kind, mut fields } = strict::take_tag(deserializer, "window")?;
        let Some(own) = fields_of(&kind) else {
            let error = <serde_json::Error as de::Error>::unknown_variant(&kind, KINDS);
            return Err(strict::nested_error(
                "window",
                &strict::cap_quoted(&error.to_string()),
            ));
        };
        // A field of another kind: `null` has always meant "not set"; a
        // value is refused, saying where it belongs.
        let foreign: Vec<String> = fields
            .keys()
            .filter(|field| !own.contains(&field.as_str()))
            .cloned()
            .collect();
        for field in foreign {
            let Some(kinds) = applies_to(&field) else {
                continue;
            };
            if fields.get(&field) == Some(&Value::Null) {
                fields.remove(&field);
                continue;
            }
            let error = <serde_json::Error as de::Error>::unknown_field(&field, own);
            return Err(strict::nested_error(
                &field,
                &format!("{error}; `{field}` applies to {kinds} only"),
            ));
        }
        let read = match kind.as_str() {
            "count" => strict::read_fields(fields).map(WindowConfig::Count),
            "tumbling" => strict::read_fields(fields).map(WindowConfig::Tumbling),
            "sliding" => strict::read_fields(fields).map(WindowConfig::Sliding),
            "session" => strict::read_fields(fields).map(WindowConfig::Session),
            _ => strict::read_fields(fields).map(WindowConfig::Signal),
        };
        read.map_err(|(path, message)| strict::nested_error(&path, &message))
    }
}

/// `"window": "count"`: releases every `events` events (per key when keyed).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountWindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// Events per window (required, at least 1).
    #[serde(default)]
    pub events: Option<usize>,
    /// An aggregator component keeping accumulators instead of events (default: none).
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
    /// `"processing"` only (the default): a count window has no time.
    #[serde(default)]
    pub time: TimeDomain,
    /// `"drop"` only (the default): a count window has no late events.
    #[serde(default)]
    pub late: LateConfig,
    /// `"key"`: one buffer per event key (default: one buffer).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer (default: no bound).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer (default: no bound).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// At a bound: `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
}

/// `"window": "tumbling"`: windows `[k·size, (k+1)·size)`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TumblingWindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// Window length in ms (required, positive).
    #[serde(default)]
    pub size_ms: Option<u64>,
    /// `processing` (default: the host's clock) or `event` (the events' timestamps).
    #[serde(default)]
    pub time: TimeDomain,
    /// Event time: how far the watermark trails the highest timestamp (default 0).
    #[serde(default)]
    pub max_out_of_orderness_ms: Option<u64>,
    /// Event time: how long after its end a window accepts late events (default 0).
    #[serde(default)]
    pub allowed_lateness_ms: Option<u64>,
    /// Event time: after this long without events the watermark follows
    /// processing time (default: never).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Event time: late events are `drop`ped (default, counted) or sent to
    /// the `dead_letter` sink.
    #[serde(default)]
    pub late: LateConfig,
    /// `"key"`: one buffer per event key (default: one buffer).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer (default: no bound).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer (default: no bound).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// At a bound: `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
    /// A trigger component deciding when the window fires (default: none).
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    /// An aggregator component keeping accumulators instead of events (default: none).
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// `"window": "sliding"`: windows of `size_ms` starting every `slide_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlidingWindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// Window length in ms (required, positive).
    #[serde(default)]
    pub size_ms: Option<u64>,
    /// Distance between window starts in ms (required, positive, at most `size_ms`).
    #[serde(default)]
    pub slide_ms: Option<u64>,
    /// `processing` (default: the host's clock) or `event` (the events' timestamps).
    #[serde(default)]
    pub time: TimeDomain,
    /// Event time: how far the watermark trails the highest timestamp (default 0).
    #[serde(default)]
    pub max_out_of_orderness_ms: Option<u64>,
    /// Event time: how long after its end a window accepts late events (default 0).
    #[serde(default)]
    pub allowed_lateness_ms: Option<u64>,
    /// Event time: after this long without events the watermark follows
    /// processing time (default: never).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Event time: late events are `drop`ped (default, counted) or sent to
    /// the `dead_letter` sink.
    #[serde(default)]
    pub late: LateConfig,
    /// `"key"`: one buffer per event key (default: one buffer).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer (default: no bound).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer (default: no bound).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// At a bound: `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
    /// A trigger component deciding when the window fires (default: none).
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    /// An aggregator component keeping accumulators instead of events (default: none).
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// `"window": "session"`: a session per key, closed after `gap_ms` without events.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionWindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// The gap that closes a session, in ms (required, positive).
    #[serde(default)]
    pub gap_ms: Option<u64>,
    /// `processing` (default: the host's clock) or `event` (the events' timestamps).
    #[serde(default)]
    pub time: TimeDomain,
    /// Event time: how far the watermark trails the highest timestamp (default 0).
    #[serde(default)]
    pub max_out_of_orderness_ms: Option<u64>,
    /// Event time: how long after its end a window accepts late events (default 0).
    #[serde(default)]
    pub allowed_lateness_ms: Option<u64>,
    /// Event time: after this long without events the watermark follows
    /// processing time (default: never).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Event time: late events are `drop`ped (default, counted) or sent to
    /// the `dead_letter` sink.
    #[serde(default)]
    pub late: LateConfig,
    /// `"key"`: one buffer per event key (default: one buffer).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer (default: no bound).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer (default: no bound).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// At a bound: `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
    /// A trigger component deciding when the window fires (default: none).
    #[serde(default)]
    pub trigger: Option<TriggerConfig>,
    /// An aggregator component keeping accumulators instead of events (default: none).
    #[serde(default)]
    pub aggregate: Option<AggregateConfig>,
}

/// `"window": "signal"`: everything buffered, released when triggered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalWindowConfig {
    /// The window's name (unique in the pipeline; it keys its saved buffers).
    pub name: String,
    /// What releases the buffers (required: at least one trigger).
    #[serde(default)]
    pub on: Option<SignalOn>,
    /// `"processing"` only (the default): a signal window has no time.
    #[serde(default)]
    pub time: TimeDomain,
    /// `"drop"` only (the default): a signal window has no late events.
    #[serde(default)]
    pub late: LateConfig,
    /// `"key"`: one buffer per event key (default: one buffer).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// Most events in one buffer (default: no bound).
    #[serde(default)]
    pub max_events: Option<usize>,
    /// Most bytes (keys, values, headers) in one buffer (default: no bound).
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// At a bound: `fail` (default) or `release` (release the buffer early).
    #[serde(default)]
    pub on_overflow: OverflowConfig,
}

/// `trigger`: a component of the `trigger` world that decides when the
/// window fires (docs/windows.md, "Triggers").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct TriggerConfig {
    /// The component (`.wasm`; relative: against the config's directory).
    pub module: std::path::PathBuf,
    /// Passed to the trigger's `init` as JSON text (default `{}`).
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Its sandbox limits, as a pipe's `limits` (default: a pipe's defaults);
    /// `max_value_bytes` also bounds the trigger state of one window.
    #[serde(default, deserialize_with = "strict::optional_object")]
    pub limits: Option<PipeLimits>,
    /// What a failed call does: `fail` (default) stops the pipeline,
    /// `skip` takes it as answered `continue`.
    #[serde(default)]
    pub on_error: TriggerOnError,
}

/// `aggregate`: a component of the `aggregator` world that folds the
/// window's events into accumulators (docs/windows.md, "Aggregating windows").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct AggregateConfig {
    /// The component (`.wasm`; relative: against the config's directory).
    pub module: std::path::PathBuf,
    /// Passed to the aggregator's `init` as JSON text (default `{}`).
    #[serde(default = "empty_object")]
    pub config: Value,
    /// Its sandbox limits, as a pipe's `limits` (default: a pipe's defaults).
    #[serde(default, deserialize_with = "strict::optional_object")]
    pub limits: Option<PipeLimits>,
}

impl AggregateConfig {
    /// The aggregator these settings describe.
    pub fn spec(&self) -> AggregateSpec {
        AggregateSpec {
            module: self.module.clone(),
            config_json: self.config.to_string(),
            limits: self.limits.clone().unwrap_or_default(),
        }
    }
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

impl TriggerConfig {
    /// The trigger these settings describe.
    pub fn spec(&self) -> TriggerSpec {
        TriggerSpec {
            module: self.module.clone(),
            config_json: self.config.to_string(),
            limits: self.limits.clone().unwrap_or_default(),
            on_error: self.on_error,
        }
    }
}

/// Which time a time window uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeDomain {
    /// The host's clock.
    #[default]
    Processing,
    /// The events' timestamps.
    Event,
}

/// What a keyed window keys by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyBy {
    /// The event's key.
    Key,
}

/// `on_overflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowConfig {
    /// Fail the pipeline.
    #[default]
    Fail,
    /// Release early.
    Release,
}

/// `late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateConfig {
    /// Drop and count.
    #[default]
    Drop,
    /// Send to `dead_letter`.
    DeadLetter,
}

/// `on`: the triggers of a signal window (at least one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct SignalOn {
    /// `"SIGUSR1"`: the only signal a window listens to.
    #[serde(default)]
    pub unix_signal: Option<String>,
    /// A control event carrying this header releases the buffers.
    #[serde(default)]
    pub header: Option<String>,
    /// A control event with this key releases the buffers.
    #[serde(default)]
    pub key: Option<String>,
}

fn error(field: &'static str, message: impl Into<String>) -> WindowSpecError {
    WindowSpecError {
        field,
        message: message.into(),
    }
}

/// The value of a required field of a `kind` window.
fn needs<T>(kind: &str, field: &'static str, value: Option<T>) -> Result<T, WindowSpecError> {
    value.ok_or_else(|| error(field, format!("a {kind} window needs `{field}`")))
}

/// Refuses event time and its late policy on a window without time.
fn untimed(time: TimeDomain, late: LateConfig) -> Result<(), WindowSpecError> {
    if time == TimeDomain::Event {
        return Err(error(
            "time",
            "`time` applies to tumbling, sliding and session windows only",
        ));
    }
    if late != LateConfig::Drop {
        return Err(error(
            "late",
            "`late` applies to windows with \"time\": \"event\" only",
        ));
    }
    Ok(())
}

/// The event-time fields of a time window: its settings in event time,
/// `None` in processing time (where none of them may be set).
fn event_time(
    time: TimeDomain,
    max_out_of_orderness_ms: Option<u64>,
    allowed_lateness_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    late: LateConfig,
) -> Result<Option<EventTime>, WindowSpecError> {
    if time == TimeDomain::Processing {
        let set = [
            ("max_out_of_orderness_ms", max_out_of_orderness_ms.is_some()),
            ("allowed_lateness_ms", allowed_lateness_ms.is_some()),
            ("idle_timeout_ms", idle_timeout_ms.is_some()),
            ("late", late != LateConfig::Drop),
        ];
        if let Some((field, _)) = set.into_iter().find(|(_, set)| *set) {
            return Err(error(
                field,
                format!("`{field}` applies to windows with \"time\": \"event\" only"),
            ));
        }
        return Ok(None);
    }
    if idle_timeout_ms == Some(0) {
        return Err(error(
            "idle_timeout_ms",
            "expected a positive timeout in ms",
        ));
    }
    Ok(Some(EventTime {
        max_out_of_orderness_ms: max_out_of_orderness_ms.unwrap_or(0),
        allowed_lateness_ms: allowed_lateness_ms.unwrap_or(0),
        idle_timeout_ms,
    }))
}

/// What every kind has: keying, bounds, overflow and late policies.
struct Shared {
    key_by: Option<KeyBy>,
    max_events: Option<usize>,
    max_bytes: Option<usize>,
    on_overflow: OverflowConfig,
    late: LateConfig,
    event_time: Option<EventTime>,
    trigger: Option<TriggerSpec>,
    aggregate: Option<AggregateSpec>,
}

impl Shared {
    /// `window` with these settings, checked.
    fn apply(self, mut window: Window) -> Result<Window, WindowSpecError> {
        if let Some(settings) = self.event_time {
            window = window.event_time(settings);
        }
        if let Some(trigger) = self.trigger {
            window = window.with_trigger(trigger);
        }
        if let Some(aggregate) = self.aggregate {
            window = window.with_aggregate(aggregate);
        }
        if self.key_by == Some(KeyBy::Key) {
            window = window.keyed();
        }
        if let Some(max) = self.max_events {
            window = window.max_events(max);
        }
        if let Some(max) = self.max_bytes {
            window = window.max_bytes(max);
        }
        window = window.on_overflow(match self.on_overflow {
            OverflowConfig::Fail => Overflow::Fail,
            OverflowConfig::Release => Overflow::Release,
        });
        window = window.late(match self.late {
            LateConfig::Drop => LatePolicy::Drop,
            LateConfig::DeadLetter => LatePolicy::DeadLetter,
        });
        window.validate()?;
        Ok(window)
    }
}

impl CountWindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// `events` is missing or zero, `time` or `late` is set to what only
    /// time windows take, or a bound cannot work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        untimed(self.time, self.late)?;
        let events = needs("count", "events", self.events)?;
        Shared {
            key_by: self.key_by,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            on_overflow: self.on_overflow,
            late: self.late,
            event_time: None,
            trigger: None,
            aggregate: self.aggregate.as_ref().map(AggregateConfig::spec),
        }
        .apply(Window::count(&self.name, events))
    }
}

impl TumblingWindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// `size_ms` is missing or zero, an event-time field is set in
    /// processing time, or a bound cannot work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        let event_time = event_time(
            self.time,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            self.idle_timeout_ms,
            self.late,
        )?;
        let size = needs("tumbling", "size_ms", self.size_ms)?;
        Shared {
            key_by: self.key_by,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            on_overflow: self.on_overflow,
            late: self.late,
            event_time,
            trigger: self.trigger.as_ref().map(TriggerConfig::spec),
            aggregate: self.aggregate.as_ref().map(AggregateConfig::spec),
        }
        .apply(Window::tumbling(&self.name, Duration::from_millis(size)))
    }
}

impl SlidingWindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// `size_ms` or `slide_ms` is missing or zero, the slide is larger
    /// than the size, an event-time field is set in processing time, or a
    /// bound cannot work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        let event_time = event_time(
            self.time,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            self.idle_timeout_ms,
            self.late,
        )?;
        let size = needs("sliding", "size_ms", self.size_ms)?;
        let slide = needs("sliding", "slide_ms", self.slide_ms)?;
        Shared {
            key_by: self.key_by,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            on_overflow: self.on_overflow,
            late: self.late,
            event_time,
            trigger: self.trigger.as_ref().map(TriggerConfig::spec),
            aggregate: self.aggregate.as_ref().map(AggregateConfig::spec),
        }
        .apply(Window::sliding(
            &self.name,
            Duration::from_millis(size),
            Duration::from_millis(slide),
        ))
    }
}

impl SessionWindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// `gap_ms` is missing or zero, an event-time field is set in
    /// processing time, or a bound cannot work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        let event_time = event_time(
            self.time,
            self.max_out_of_orderness_ms,
            self.allowed_lateness_ms,
            self.idle_timeout_ms,
            self.late,
        )?;
        let gap = needs("session", "gap_ms", self.gap_ms)?;
        Shared {
            key_by: self.key_by,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            on_overflow: self.on_overflow,
            late: self.late,
            event_time,
            trigger: self.trigger.as_ref().map(TriggerConfig::spec),
            aggregate: self.aggregate.as_ref().map(AggregateConfig::spec),
        }
        .apply(Window::session(&self.name, Duration::from_millis(gap)))
    }
}

impl SignalWindowConfig {
    /// The window these settings describe.
    ///
    /// # Errors
    ///
    /// `on` has no trigger or names a signal other than SIGUSR1, `time` or
    /// `late` is set to what only time windows take, or a bound cannot
    /// work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        untimed(self.time, self.late)?;
        let on = self.on.clone().unwrap_or_default();
        if on.unix_signal.is_none() && on.header.is_none() && on.key.is_none() {
            return Err(error(
                "on",
                "a signal window needs a trigger: `unix_signal`, `header` or `key`",
            ));
        }
        let mut window = Window::signal(&self.name);
        match on.unix_signal.as_deref() {
            None => {}
            Some("SIGUSR1") => window = window.on_unix_signal(),
            Some(other) => {
                return Err(error(
                    "on.unix_signal",
                    format!("unix_signal `{other}` is not supported; expected \"SIGUSR1\""),
                ))
            }
        }
        if let Some(header) = on.header {
            window = window.on_header(header);
        }
        if let Some(key) = on.key {
            window = window.on_key(key.into_bytes());
        }
        Shared {
            key_by: self.key_by,
            max_events: self.max_events,
            max_bytes: self.max_bytes,
            on_overflow: self.on_overflow,
            late: self.late,
            event_time: None,
            trigger: None,
            aggregate: None,
        }
        .apply(window)
    }
}

impl WindowConfig {
    /// The window's name.
    pub fn name(&self) -> &str {
        match self {
            WindowConfig::Count(window) => &window.name,
            WindowConfig::Tumbling(window) => &window.name,
            WindowConfig::Sliding(window) => &window.name,
            WindowConfig::Session(window) => &window.name,
            WindowConfig::Signal(window) => &window.name,
        }
    }

    /// The trigger section, on the windows that take one.
    pub fn trigger_mut(&mut self) -> Option<&mut TriggerConfig> {
        match self {
            WindowConfig::Tumbling(window) => window.trigger.as_mut(),
            WindowConfig::Sliding(window) => window.trigger.as_mut(),
            WindowConfig::Session(window) => window.trigger.as_mut(),
            WindowConfig::Count(_) | WindowConfig::Signal(_) => None,
        }
    }

    /// The aggregate section, on the windows that take one.
    pub fn aggregate_mut(&mut self) -> Option<&mut AggregateConfig> {
        match self {
            WindowConfig::Count(window) => window.aggregate.as_mut(),
            WindowConfig::Tumbling(window) => window.aggregate.as_mut(),
            WindowConfig::Sliding(window) => window.aggregate.as_mut(),
            WindowConfig::Session(window) => window.aggregate.as_mut(),
            WindowConfig::Signal(_) => None,
        }
    }

    /// Whether late events go to the dead-letter sink (`"late": "dead_letter"`).
    pub fn late_to_dead_letter(&self) -> bool {
        let late = match self {
            WindowConfig::Count(window) => window.late,
            WindowConfig::Tumbling(window) => window.late,
            WindowConfig::Sliding(window) => window.late,
            WindowConfig::Session(window) => window.late,
            WindowConfig::Signal(window) => window.late,
        };
        late == LateConfig::DeadLetter
    }

    /// The window these settings describe, built by its kind.
    ///
    /// # Errors
    ///
    /// A field is missing for this kind of window, or has a value that
    /// cannot work; the error names the field.
    pub fn build(&self) -> Result<Window, WindowSpecError> {
        match self {
            WindowConfig::Count(window) => window.build(),
            WindowConfig::Tumbling(window) => window.build(),
            WindowConfig::Sliding(window) => window.build(),
            WindowConfig::Session(window) => window.build(),
            WindowConfig::Signal(window) => window.build(),
        }
    }
}
