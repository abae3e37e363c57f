//! Version 3 of the hot-swap test pipe (see `swap-v1`): broken on purpose,
//! its `init` always fails, so a swap to it must be refused and the running
//! version kept.

#[path = "../../swap-v1/src/pipe.rs"]
mod pipe;

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

const VERSION: &str = "v3";

pub struct Swap;

impl Pipe for Swap {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Err(PipeError::new("v3 refuses to start: broken on purpose"))
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        pipe::count(VERSION, batch, state)
    }
}

plumber_guest::export_pipe!(Swap);
