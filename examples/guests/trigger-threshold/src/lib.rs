//! A window trigger that fires when a field of an event's value (a JSON
//! object) exceeds a threshold: the window's contents so far are released,
//! and kept. The window still fires natively at its end.
//!
//! Config: `{"field": "amount", "threshold": 100}` (both required). An
//! event whose value is not a JSON object with a numeric `field` is an
//! error naming the event's key and timestamp: the window's error policy
//! applies to it.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "trigger",
    path: "../../../wit",
});

use plumber::pipe::trigger_types::Decision;
use serde::Deserialize;
use std::sync::OnceLock;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    field: String,
    threshold: f64,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

fn error(message: String) -> PipeError {
    PipeError {
        message,
        retryable: false,
        event_index: None,
    }
}

struct TriggerThreshold;

impl Guest for TriggerThreshold {
    fn init(config: String) -> Result<TriggerOptions, PipeError> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| error(format!("bad config: {e}")))?;
        // A new instance is a new process image: set once.
        let _ = CONFIG.set(config);
        Ok(TriggerOptions { fire_at_end: true })
    }

    fn on_events(calls: Vec<TriggerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        let config = CONFIG
            .get()
            .ok_or_else(|| error("init was not called".to_owned()))?;
        let mut answers = Vec::with_capacity(calls.len());
        for (index, call) in calls.into_iter().enumerate() {
            let value = serde_json::from_slice::<serde_json::Value>(&call.event.value)
                .ok()
                .and_then(|value| value.get(&config.field).and_then(serde_json::Value::as_f64))
                .ok_or_else(|| PipeError {
                    message: format!(
                        "the value of the event with key {:?} and timestamp {:?} has no numeric `{}`",
                        call.event.key.as_deref().map(String::from_utf8_lossy),
                        call.event.timestamp,
                        config.field
                    ),
                    retryable: false,
                    event_index: u32::try_from(index).ok(),
                })?;
            answers.push(TriggerAnswer {
                decision: if value > config.threshold {
                    Decision::Fire
                } else {
                    Decision::Continue
                },
                state: None,
                timer: None,
            });
        }
        Ok(answers)
    }

    fn on_timer(calls: Vec<TimerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        Ok(calls
            .into_iter()
            .map(|call| TriggerAnswer {
                decision: Decision::Continue,
                state: call.window.state,
                timer: None,
            })
            .collect())
    }
}

export!(TriggerThreshold);
