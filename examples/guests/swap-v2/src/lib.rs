//! Version 2 of the hot-swap test pipe (see `swap-v1`): the same logic and
//! state, emitting `v2:<value>:<count>`.

#[path = "../../swap-v1/src/pipe.rs"]
mod pipe;

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

const VERSION: &str = "v2";

pub struct Swap;

impl Pipe for Swap {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Swap)
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        pipe::count(VERSION, batch, state)
    }
}

plumber_guest::export_pipe!(Swap);
