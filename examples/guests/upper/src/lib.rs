//! Upper-cases every event's value.
//!
//! Packed batches are upper-cased as they are copied into the answer, eight
//! bytes at a time: no allocation per event, and no per-byte loop (wasm32
//! without SIMD gets none of the vectorisation the native step gets).

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
                event.value = String::from_utf8_lossy(&event.value)
                    .to_uppercase()
                    .into_bytes();
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
            if is_ascii(event.value) {
                upper_ascii(writer.push_copy(&event));
            } else {
                let value = String::from_utf8_lossy(event.value).to_uppercase();
                let headers = event
                    .headers()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(malformed)?;
                writer.push(event.key, value.as_bytes(), event.timestamp, headers);
            }
        }
        writer.finish();
        Ok(())
    }
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

fn word(chunk: &[u8]) -> u64 {
    let mut le = [0u8; 8];
    le.copy_from_slice(chunk);
    u64::from_le_bytes(le)
}

/// Whether every byte is below 0x80, eight at a time.
fn is_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let words = chunks.by_ref().fold(0, |acc, chunk| acc | word(chunk));
    words & HIGH_BITS == 0 && chunks.remainder().is_ascii()
}

/// Upper-cases ASCII bytes in place, eight at a time: in each byte of a
/// word, adding `0x80 - 'a'` sets the high bit when the byte is at least
/// 'a', adding `0x80 - 'z' - 1` when it is above 'z' (no carry crosses
/// bytes below 0x80); a letter gets 0x20 (that bit, shifted) cleared.
fn upper_ascii(bytes: &mut [u8]) {
    let mut chunks = bytes.chunks_exact_mut(8);
    for chunk in chunks.by_ref() {
        let w = word(chunk);
        let at_least_a = w.wrapping_add((0x80 - u64::from(b'a')) * ONES);
        let above_z = w.wrapping_add((0x80 - u64::from(b'z') - 1) * ONES);
        let letters = at_least_a & !above_z & HIGH_BITS;
        chunk.copy_from_slice(&(w ^ (letters >> 2)).to_le_bytes());
    }
    chunks.into_remainder().make_ascii_uppercase();
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
    fn eight_at_a_time_agrees_with_std_on_every_ascii_byte() {
        let all: Vec<u8> = (0u8..128)
            .chain(b"hello, World! zz aa {}`@[".iter().copied())
            .collect();
        for start in 0..9 {
            let mut ours = all[start..].to_vec();
            upper_ascii(&mut ours);
            assert_eq!(ours, all[start..].to_ascii_uppercase());
            assert!(is_ascii(&all[start..]));
        }
        let mut not_ascii = all.clone();
        not_ascii[37] = 0xc3;
        assert!(!is_ascii(&not_ascii));
        assert!(!is_ascii(&[b'a', 0x80]));
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
            .process_packed(
                BatchReader::new(&input).unwrap(),
                &mut out,
                &mut State::in_memory(),
            )
            .unwrap();
        let packed = plumber_guest::unpack(&BatchReader::new(&out).unwrap())
            .unwrap()
            .events;
        let plain = Upper
            .process(Batch::new(events), &mut State::in_memory())
            .unwrap();
        assert_eq!(packed, plain);
    }
}
