//! A pipe built against the frozen `plumber:pipe@0.1.0` WIT
//! (`wit/versions/0.1.0`), through raw bindings: each host release must keep
//! loading it (tests/tests/wit_versions.rs).
//!
//! It counts each event's value in state (`add`), reads the count back
//! (`get`), logs once per batch, and emits `<value> <count>`; an event whose
//! value is `fail` fails the batch with its index.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "stateful-pipe",
    path: "../../../wit/versions/0.1.0",
});

use plumber::pipe::{log, state};

struct Compat;

impl Guest for Compat {
    fn init(config: String) -> Result<(), PipeError> {
        if config.trim().is_empty() {
            return Err(PipeError {
                message: "no config".to_owned(),
                retryable: false,
                event_index: None,
            });
        }
        Ok(())
    }

    fn process(batch: Batch) -> Result<Vec<Event>, PipeError> {
        log::log(
            log::Level::Debug,
            "compat batch",
            &[("events".to_owned(), batch.events.len().to_string())],
        );
        let mut out = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.into_iter().enumerate() {
            let failed = |message: String| PipeError {
                message,
                retryable: false,
                event_index: u32::try_from(index).ok(),
            };
            let value = String::from_utf8_lossy(&event.value).into_owned();
            if value == "fail" {
                return Err(failed("asked to fail".to_owned()));
            }
            let count = state::add(&value, 1).map_err(|e| failed(format!("{e:?}")))?;
            let stored = state::get(&value).map_err(|e| failed(format!("{e:?}")))?;
            if stored.as_deref() != Some(count.to_string().as_bytes()) {
                return Err(failed("state::get disagrees with state::add".to_owned()));
            }
            out.push(Event {
                value: format!("{value} {count}").into_bytes(),
                ..event
            });
        }
        Ok(out)
    }
}

export!(Compat);
