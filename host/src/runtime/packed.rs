//! The host side of the packed batch (see the `plumber-wire` crate): a
//! batch encoded into one reused buffer on the way in, and the guest's
//! answer decoded into events on the way out.

use plumber_wire::{BatchReader, BatchWriter, WindowRef};

use crate::{Batch, Event, PipeError};

/// Encodes `batch` into `buffer` (cleared first; its capacity is kept).
pub(super) fn encode_batch(buffer: &mut Vec<u8>, batch: &Batch) {
    let window = batch.window.as_ref().map(|window| WindowRef {
        start: window.start,
        end: window.end,
        key: window.key.as_deref(),
    });
    let mut writer = BatchWriter::new(buffer, window);
    for event in &batch.events {
        writer.push(
            event.key.as_deref(),
            &event.value,
            event.timestamp,
            event.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
    }
    writer.finish();
}

/// Why a packed answer was not turned into events.
#[derive(Debug)]
pub(super) enum DecodeFailure {
    /// The buffer is not a packed batch: the guest's fault, reported as its error.
    Malformed(PipeError),
    /// More events than the output limit (refused before allocating them).
    TooMany(u64),
}

/// Decodes a guest's packed answer.
///
/// # Errors
///
/// A malformed buffer, or more than `max_events` events.
pub(super) fn decode_events(bytes: &[u8], max_events: u64) -> Result<Vec<Event>, DecodeFailure> {
    let malformed = |error: plumber_wire::DecodeError| {
        DecodeFailure::Malformed(PipeError {
            message: format!("process-packed returned {error}"),
            retryable: false,
            event_index: None,
        })
    };
    let reader = BatchReader::new(bytes).map_err(malformed)?;
    if reader.len() as u64 > max_events {
        return Err(DecodeFailure::TooMany(reader.len() as u64));
    }
    let mut events = Vec::with_capacity(reader.len());
    for event in reader.events() {
        let event = event.map_err(malformed)?;
        let mut headers = Vec::with_capacity(event.header_count() as usize);
        for header in event.headers() {
            let (name, value) = header.map_err(malformed)?;
            headers.push((name.to_owned(), value.to_owned()));
        }
        events.push(Event {
            key: event.key.map(<[u8]>::to_vec),
            value: event.value.to_vec(),
            timestamp: event.timestamp,
            headers,
        });
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WindowInfo;

    #[test]
    fn a_batch_round_trips_through_the_encoding() {
        let batch = Batch {
            events: vec![
                Event {
                    headers: vec![("h".to_owned(), "v".to_owned())],
                    ..Event::new("a").with_key("k").with_timestamp(5)
                },
                Event::new(vec![0xff, 0]),
            ],
            window: Some(WindowInfo {
                start: 1,
                end: 2,
                key: None,
            }),
        };
        let mut buffer = vec![9; 3];
        encode_batch(&mut buffer, &batch);
        assert_eq!(decode_events(&buffer, 10).unwrap(), batch.events);
    }

    #[test]
    fn too_many_events_are_refused_before_decoding() {
        let batch = Batch::new(vec![Event::new("a"), Event::new("b")]);
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &batch);
        assert!(matches!(
            decode_events(&buffer, 1),
            Err(DecodeFailure::TooMany(2))
        ));
    }

    #[test]
    fn garbage_is_the_guests_error() {
        match decode_events(b"\x07garbage", 10) {
            Err(DecodeFailure::Malformed(error)) => {
                assert!(
                    error.message.contains("malformed packed batch"),
                    "{}",
                    error.message
                )
            }
            other => panic!("decoded garbage: {other:?}"),
        }
    }
}
