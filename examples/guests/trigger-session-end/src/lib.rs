//! A window trigger for session windows: an event whose value is the end
//! marker (default `end`) closes its session at once (fire and purge), so
//! the key's next event starts a new session; a session without one
//! closes natively after its gap.
//!
//! Config: `{"end": "end"}`.

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
#[serde(default, deny_unknown_fields)]
struct Config {
    end: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            end: "end".to_owned(),
        }
    }
}

static END: OnceLock<Vec<u8>> = OnceLock::new();

struct TriggerSessionEnd;

impl Guest for TriggerSessionEnd {
    fn init(config: String) -> Result<TriggerOptions, PipeError> {
        let config: Config = serde_json::from_str(&config).map_err(|e| PipeError {
            message: format!("bad config: {e}"),
            retryable: false,
            event_index: None,
        })?;
        let _ = END.set(config.end.into_bytes());
        Ok(TriggerOptions { fire_at_end: true })
    }

    fn on_events(calls: Vec<TriggerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        let end = END.get().map(Vec::as_slice).unwrap_or(b"end");
        Ok(calls
            .into_iter()
            .map(|call| TriggerAnswer {
                decision: if call.event.value == end {
                    Decision::FireAndPurge
                } else {
                    Decision::Continue
                },
                state: None,
                timer: None,
            })
            .collect())
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

export!(TriggerSessionEnd);
