//! A pipe that misbehaves on purpose, for tests of the host's error handling.
//!
//! An event whose value starts with `trap` makes it trap (a Rust panic
//! aborts into a WebAssembly `unreachable`); one that starts with `fail`
//! makes it return a `pipe-error` naming the event; anything else passes
//! through.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct Faulty;

impl Pipe for Faulty {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Faulty)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        for (index, event) in batch.events.iter().enumerate() {
            if event.value.starts_with(b"trap") {
                panic!("asked to trap");
            }
            if event.value.starts_with(b"fail") {
                return Err(PipeError::new("asked to fail").at_event(index));
            }
        }
        Ok(batch.events)
    }
}

plumber_guest::export_pipe!(Faulty);
