//! A join step's config: `{"type": "join", "join": "window" | "interval", …}`,
//! one strict struct whose `build` makes the [`Join`], refusing a field of
//! the other kind of join or window by name.

use serde::Deserialize;

use super::{How, Join, JoinOverflow, JoinSpecError, JoinWindow};
use crate::config::strict::object_only;
use crate::window::{KeyBy, LateConfig, LatePolicy, TimeDomain};

object_only!(JoinConfig);

/// `join`: what the join does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinKindConfig {
    /// Both sides' events per key and window.
    Window,
    /// Pairs within a time interval of each other.
    Interval,
    /// Each event with its key's row in a table fed by a changelog.
    LookupTable,
}

/// `window`: the windows of a windowed join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinWindowConfig {
    /// Fixed windows of `size_ms`.
    Tumbling,
    /// Windows of `size_ms` every `slide_ms`.
    Sliding,
    /// Sessions closed by `gap_ms` without events.
    Session,
}

/// `how`: which keys a windowed join releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinHow {
    /// Keys with events on both sides.
    #[default]
    Inner,
    /// Keys with left events.
    Left,
}

/// `on_overflow` of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinOverflowConfig {
    /// Fail the pipeline.
    #[default]
    Fail,
    /// Drop the oldest window (window join) or event (interval join).
    DropOldest,
}

/// The late policy of a join (the window's values: `drop`, `dead_letter`).
pub type JoinLateConfig = LateConfig;

/// `{"type": "join", …}`: a join of two inputs of the step.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct JoinConfig {
    /// The step's name (required, unique in the pipeline; it keys the
    /// join's saved buffers).
    pub name: String,
    /// `"window"`, `"interval"` or `"lookup_table"` (required).
    pub join: JoinKindConfig,
    /// The input whose events are the left side (required; a lookup
    /// join's enriched stream).
    pub left: String,
    /// The input whose events are the right side (required; a lookup
    /// join's changelog).
    pub right: String,
    /// Window join: `"tumbling"`, `"sliding"` or `"session"` (required).
    #[serde(default)]
    pub window: Option<JoinWindowConfig>,
    /// Tumbling and sliding: window length in ms (required, positive).
    #[serde(default)]
    pub size_ms: Option<u64>,
    /// Sliding: distance between window starts in ms (required, at most `size_ms`).
    #[serde(default)]
    pub slide_ms: Option<u64>,
    /// Session: the gap that closes a session, in ms (required, positive).
    #[serde(default)]
    pub gap_ms: Option<u64>,
    /// Window and lookup joins: `"inner"` (default) or `"left"`.
    #[serde(default)]
    pub how: Option<JoinHow>,
    /// Interval join: a right event may be this many ms before the left one (required).
    #[serde(default)]
    pub lower_ms: Option<u64>,
    /// Interval join: a right event may be this many ms after the left one (required).
    #[serde(default)]
    pub upper_ms: Option<u64>,
    /// `"key"`: join events of the same key (default: every event with
    /// every other; a lookup join always joins by key).
    #[serde(default)]
    pub key_by: Option<KeyBy>,
    /// `"event"` only (the default): joins run on the events' timestamps.
    #[serde(default = "event_time")]
    pub time: TimeDomain,
    /// How far each input's watermark trails its highest timestamp, ms (default 0).
    #[serde(default)]
    pub max_out_of_orderness_ms: Option<u64>,
    /// An input without events for this long is left out of the watermark
    /// until it sends again, ms (default: never).
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Most events the join holds, all keys and both sides (default: no bound).
    #[serde(default)]
    pub max_buffered_events: Option<usize>,
    /// At the bound: `"fail"` (default) or `"drop_oldest"`.
    #[serde(default)]
    pub on_overflow: JoinOverflowConfig,
    /// Window and interval joins: late events (and events without a
    /// timestamp) are `"drop"`ped (default, counted) or sent to the
    /// `"dead_letter"` sink.
    #[serde(default)]
    pub late: Option<LateConfig>,
}

fn event_time() -> TimeDomain {
    TimeDomain::Event
}

fn needs(what: &str, field: &'static str, value: Option<u64>) -> Result<u64, JoinSpecError> {
    value.ok_or_else(|| JoinSpecError {
        field,
        message: format!("{what} needs `{field}`"),
    })
}

fn refuse(field: &'static str, set: bool, applies_to: &str) -> Result<(), JoinSpecError> {
    if set {
        return Err(JoinSpecError {
            field,
            message: format!("`{field}` applies to {applies_to} only"),
        });
    }
    Ok(())
}

impl JoinConfig {
    /// Whether late events go to the dead-letter sink.
    pub fn late_to_dead_letter(&self) -> bool {
        self.late == Some(LateConfig::DeadLetter)
    }

    /// The join these fields describe.
    ///
    /// # Errors
    ///
    /// A field the kind of join or window needs is missing, one it does not
    /// take is set, or a value cannot work; the error names the field.
    pub fn build(&self) -> Result<Join, JoinSpecError> {
        if self.time != TimeDomain::Event {
            return Err(JoinSpecError {
                field: "time",
                message: "joins run on event time only: expected \"event\"".to_owned(),
            });
        }
        let window = self.window;
        let is = |kind: JoinWindowConfig| window == Some(kind);
        let join = match self.join {
            JoinKindConfig::Window => {
                refuse("lower_ms", self.lower_ms.is_some(), "interval joins")?;
                refuse("upper_ms", self.upper_ms.is_some(), "interval joins")?;
                let Some(kind) = window else {
                    return Err(JoinSpecError {
                        field: "window",
                        message:
                            "a window join needs `window`: \"tumbling\", \"sliding\" or \"session\""
                                .to_owned(),
                    });
                };
                refuse(
                    "size_ms",
                    self.size_ms.is_some() && is(JoinWindowConfig::Session),
                    "tumbling and sliding windows",
                )?;
                refuse(
                    "slide_ms",
                    self.slide_ms.is_some() && !is(JoinWindowConfig::Sliding),
                    "sliding windows",
                )?;
                refuse(
                    "gap_ms",
                    self.gap_ms.is_some() && !is(JoinWindowConfig::Session),
                    "session windows",
                )?;
                let join_window = match kind {
                    JoinWindowConfig::Tumbling => JoinWindow::Tumbling {
                        size_ms: needs("a tumbling window", "size_ms", self.size_ms)?,
                    },
                    JoinWindowConfig::Sliding => JoinWindow::Sliding {
                        size_ms: needs("a sliding window", "size_ms", self.size_ms)?,
                        slide_ms: needs("a sliding window", "slide_ms", self.slide_ms)?,
                    },
                    JoinWindowConfig::Session => JoinWindow::Session {
                        gap_ms: needs("a session window", "gap_ms", self.gap_ms)?,
                    },
                };
                let how = match self.how.unwrap_or_default() {
                    JoinHow::Inner => How::Inner,
                    JoinHow::Left => How::Left,
                };
                Join::window(&self.name, &self.left, &self.right, join_window).how(how)
            }
            JoinKindConfig::LookupTable => {
                let timed = "window and interval joins";
                refuse("window", window.is_some(), "window joins")?;
                refuse("size_ms", self.size_ms.is_some(), "window joins")?;
                refuse("slide_ms", self.slide_ms.is_some(), "window joins")?;
                refuse("gap_ms", self.gap_ms.is_some(), "window joins")?;
                refuse("lower_ms", self.lower_ms.is_some(), "interval joins")?;
                refuse("upper_ms", self.upper_ms.is_some(), "interval joins")?;
                refuse(
                    "max_out_of_orderness_ms",
                    self.max_out_of_orderness_ms.is_some(),
                    timed,
                )?;
                refuse("idle_timeout_ms", self.idle_timeout_ms.is_some(), timed)?;
                refuse("late", self.late.is_some(), timed)?;
                let how = match self.how.unwrap_or_default() {
                    JoinHow::Inner => How::Inner,
                    JoinHow::Left => How::Left,
                };
                Join::lookup_table(&self.name, &self.left, &self.right).how(how)
            }
            JoinKindConfig::Interval => {
                refuse("window", window.is_some(), "window joins")?;
                refuse("size_ms", self.size_ms.is_some(), "window joins")?;
                refuse("slide_ms", self.slide_ms.is_some(), "window joins")?;
                refuse("gap_ms", self.gap_ms.is_some(), "window joins")?;
                refuse("how", self.how.is_some(), "window and lookup joins")?;
                Join::interval(
                    &self.name,
                    &self.left,
                    &self.right,
                    needs("an interval join", "lower_ms", self.lower_ms)?,
                    needs("an interval join", "upper_ms", self.upper_ms)?,
                )
            }
        };
        let mut join = join
            .max_out_of_orderness_ms(self.max_out_of_orderness_ms.unwrap_or(0))
            .on_overflow(match self.on_overflow {
                JoinOverflowConfig::Fail => JoinOverflow::Fail,
                JoinOverflowConfig::DropOldest => JoinOverflow::DropOldest,
            })
            .late(match self.late.unwrap_or_default() {
                LateConfig::Drop => LatePolicy::Drop,
                LateConfig::DeadLetter => LatePolicy::DeadLetter,
            });
        if self.key_by == Some(KeyBy::Key) {
            join = join.keyed();
        }
        if let Some(ms) = self.idle_timeout_ms {
            join = join.idle_timeout_ms(ms);
        }
        if let Some(events) = self.max_buffered_events {
            join = join.max_buffered_events(events);
        }
        join.validate()?;
        Ok(join)
    }
}
