//! Upper-cases every event's value.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct Upper;

impl Pipe for Upper {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Upper)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut events = batch.events;
        for event in &mut events {
            if event.value.is_ascii() {
                event.value.make_ascii_uppercase();
            } else {
                event.value = String::from_utf8_lossy(&event.value).to_uppercase().into_bytes();
            }
        }
        Ok(events)
    }
}

plumber_guest::export_pipe!(Upper);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_cases_ascii_and_unicode() {
        let mut pipe = Upper::init("{}").unwrap();
        let out = pipe
            .process(
                Batch::new(vec![Event::new("ada"), Event::new("émile")]),
                &mut State::in_memory(),
            )
            .unwrap();
        assert_eq!(out[0].value, b"ADA");
        assert_eq!(out[1].value_str(), Some("ÉMILE"));
    }
}
