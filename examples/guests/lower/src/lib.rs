//! Lower-cases every event's value.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct Lower;

impl Pipe for Lower {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Lower)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut events = batch.events;
        for event in &mut events {
            if event.value.is_ascii() {
                event.value.make_ascii_lowercase();
            } else {
                event.value = String::from_utf8_lossy(&event.value)
                    .to_lowercase()
                    .into_bytes();
            }
        }
        Ok(events)
    }
}

plumber_guest::export_pipe!(Lower);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_cases() {
        let mut pipe = Lower::init("{}").unwrap();
        let out = pipe
            .process(Batch::new(vec![Event::new("ADA")]), &mut State::in_memory())
            .unwrap();
        assert_eq!(out[0].value, b"ada");
    }
}
