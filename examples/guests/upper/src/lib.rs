//! Upper-cases every event's value.
//!
//! Packed batches are upper-cased as they are copied into the answer: no
//! allocation per event.

use plumber_guest::{Batch, BatchReader, BatchWriter, Event, Pipe, PipeError, State};

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

    fn process_packed(
        &mut self,
        batch: BatchReader<'_>,
        out: &mut Vec<u8>,
        _state: &mut State,
    ) -> Result<(), PipeError> {
        let malformed = |e: plumber_guest::wire::DecodeError| PipeError::new(e.to_string());
        let mut writer = BatchWriter::new(out, None);
        for event in batch.events() {
            let event = event.map_err(malformed)?;
            if event.value.is_ascii() {
                writer.push_copy(&event).make_ascii_uppercase();
            } else {
                let value = String::from_utf8_lossy(event.value).to_uppercase();
                let headers = event.headers().collect::<Result<Vec<_>, _>>().map_err(malformed)?;
                writer.push(event.key, value.as_bytes(), event.timestamp, headers);
            }
        }
        writer.finish();
        Ok(())
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

    #[test]
    fn packed_batches_give_the_same_events() {
        let events = vec![
            Event::new("ada").with_key("k").with_timestamp(3),
            Event::new("émile"),
        ];
        let mut input = Vec::new();
        let mut writer = BatchWriter::new(&mut input, None);
        for e in &events {
            writer.push(e.key.as_deref(), &e.value, e.timestamp, []);
        }
        writer.finish();
        let mut out = Vec::new();
        Upper
            .process_packed(BatchReader::new(&input).unwrap(), &mut out, &mut State::in_memory())
            .unwrap();
        let packed = plumber_guest::unpack(&BatchReader::new(&out).unwrap()).unwrap().events;
        let plain = Upper.process(Batch::new(events), &mut State::in_memory()).unwrap();
        assert_eq!(packed, plain);
    }
}
