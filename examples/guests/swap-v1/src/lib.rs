//! Version 1 of a stateful pipe for hot-swap tests: it counts each event's
//! value in state and emits `v1:<value>:<count>`. `swap-v2` is the same pipe
//! emitting `v2:…`, and `swap-v3` refuses to start; all three share
//! `src/pipe.rs`, so a swap keeps the counts.

mod pipe;

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

const VERSION: &str = "v1";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_value_and_keeps_the_rest() {
        let mut pipe = Swap::init("{}").unwrap();
        let mut state = State::in_memory();
        let event = Event::new("ada").with_key("k").with_timestamp(7);
        let out = pipe
            .process(Batch::new(vec![event.clone()]), &mut state)
            .unwrap();
        assert_eq!(out[0].value_str(), Some("v1:ada:1"));
        assert_eq!(out[0].key_str(), Some("k"));
        assert_eq!(out[0].timestamp, Some(7));
        let out = pipe.process(Batch::new(vec![event]), &mut state).unwrap();
        assert_eq!(out[0].value_str(), Some("v1:ada:2"));
    }
}
