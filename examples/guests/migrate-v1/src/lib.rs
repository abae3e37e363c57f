//! Version 1 of the state-migration test pipe (`versioned-pipe`, state
//! version `1`): counts each event's value, keeping the count in state as
//! decimal text (the host's `add`), and emits `<value> <count>`.
//!
//! `migrate-v2` keeps the same counts as 8-byte little-endian integers and
//! converts this version's state; `migrate-v3` declares version `3` and
//! cannot convert anything.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "versioned-pipe",
    path: "../../../wit",
});

use plumber::pipe::state;

struct CountText;

impl Guest for CountText {
    fn init(_config: String) -> Result<(), PipeError> {
        Ok(())
    }

    fn process(batch: Batch) -> Result<Vec<Event>, PipeError> {
        let mut out = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.into_iter().enumerate() {
            let value = String::from_utf8_lossy(&event.value).into_owned();
            let count = state::add(&value, 1).map_err(|e| PipeError {
                message: format!("{e:?}"),
                retryable: false,
                event_index: u32::try_from(index).ok(),
            })?;
            out.push(Event {
                value: format!("{value} {count}").into_bytes(),
                ..event
            });
        }
        Ok(out)
    }

    fn state_version() -> String {
        "1".to_owned()
    }
}

export!(CountText);
