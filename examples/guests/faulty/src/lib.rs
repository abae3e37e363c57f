//! A pipe that misbehaves on purpose, for tests of the host's error handling.
//!
//! An event whose value is `trap` makes it trap (a Rust panic aborts into a
//! WebAssembly `unreachable`); `fail` makes it return a `pipe-error` naming
//! the event; anything else passes through.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct Faulty;

impl Pipe for Faulty {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Faulty)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        for (index, event) in batch.events.iter().enumerate() {
            match event.value.as_slice() {
                b"trap" => panic!("asked to trap"),
                b"fail" => return Err(PipeError::new("asked to fail").at_event(index)),
                _ => {}
            }
        }
        Ok(batch.events)
    }
}

plumber_guest::export_pipe!(Faulty);
