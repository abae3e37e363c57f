//! A window trigger that fires early: every `every` events of a window
//! (default 100), from the count in the window's summary, and again when
//! the window ends.
//!
//! Config: `{"every": 100, "at_end": "native"}`. With `"at_end": "timer"`
//! the trigger turns the native end-of-window fire off and asks instead,
//! once per window, for an event-time timer at the window's end, fired
//! from `on-timer`: the same output, through a timer and the per-window
//! state the host keeps (a one-byte mark that the timer was asked for).
//! A window the watermark has already passed (a late event within the
//! allowed lateness) gets no timer, which would be in the past: the
//! trigger fires it at once, as the native late fire would.
//! `"at_end": "processing_timer"` is the same with a processing-time timer
//! at the window's end (for processing-time windows).

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "trigger",
    path: "../../../wit",
});

use plumber::pipe::trigger_types::{Decision, TimeDomain, TimerRequest};
use serde::Deserialize;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    every: u32,
    at_end: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            every: 100,
            at_end: "native".to_owned(),
        }
    }
}

static EVERY: AtomicU32 = AtomicU32::new(100);
/// Which timer fires the end: none (native), event time, processing time.
static TIMER: AtomicU8 = AtomicU8::new(NATIVE);
const NATIVE: u8 = 0;
const EVENT_TIMER: u8 = 1;
const PROCESSING_TIMER: u8 = 2;

fn error(message: String) -> PipeError {
    PipeError {
        message,
        retryable: false,
        event_index: None,
    }
}

struct TriggerEarly;

impl Guest for TriggerEarly {
    fn init(config: String) -> Result<TriggerOptions, PipeError> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| error(format!("bad config: {e}")))?;
        if config.every == 0 {
            return Err(error("`every` must be at least 1".to_owned()));
        }
        let timer = match config.at_end.as_str() {
            "native" => NATIVE,
            "timer" => EVENT_TIMER,
            "processing_timer" => PROCESSING_TIMER,
            other => {
                return Err(error(format!(
                    "`at_end` is `{other}`: expected \"native\", \"timer\" or \"processing_timer\""
                )))
            }
        };
        EVERY.store(config.every, Ordering::Relaxed);
        TIMER.store(timer, Ordering::Relaxed);
        Ok(TriggerOptions {
            fire_at_end: timer == NATIVE,
        })
    }

    fn on_events(calls: Vec<TriggerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        let every = EVERY.load(Ordering::Relaxed);
        let timer = TIMER.load(Ordering::Relaxed);
        Ok(calls
            .into_iter()
            .map(|call| {
                let window = call.window;
                let ended = window.watermark.is_some_and(|w| w >= window.end);
                let decision = if window.count % every == 0 || (timer == EVENT_TIMER && ended) {
                    Decision::Fire
                } else {
                    Decision::Continue
                };
                // Ask for the end-of-window timer once: the state marks it.
                let asked = window.state.is_some();
                let domain = match timer {
                    EVENT_TIMER if !ended => Some(TimeDomain::Event),
                    PROCESSING_TIMER => Some(TimeDomain::Processing),
                    _ => None,
                };
                TriggerAnswer {
                    decision,
                    state: (timer != NATIVE || asked).then(|| vec![1]),
                    timer: domain.filter(|_| !asked).map(|domain| TimerRequest {
                        domain,
                        at: window.end,
                    }),
                }
            })
            .collect())
    }

    fn on_timer(calls: Vec<TimerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        Ok(calls
            .into_iter()
            .map(|call| TriggerAnswer {
                decision: Decision::Fire,
                state: call.window.state,
                timer: None,
            })
            .collect())
    }
}

export!(TriggerEarly);
