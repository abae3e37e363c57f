//! The host side of the packed batch (see the `plumber-wire` crate): a
//! batch encoded into one reused buffer on the way in, and the guest's
//! answer decoded into events on the way out.

use plumber_wire::{BatchReader, BatchWriter, EventRef, WindowRef};

use super::limits::HEADER_OVERHEAD_BYTES;
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

/// Value buffers of events a pipe has consumed, reused for the values of
/// the events it answers with: a map then costs no allocation per event.
#[derive(Debug, Default)]
pub(super) struct SpareValues {
    buffers: Vec<Vec<u8>>,
}

impl SpareValues {
    /// At most this many buffers are kept...
    const MAX_BUFFERS: usize = 4096;
    /// ...of at most this capacity, so the pool stays under 4 MiB.
    const MAX_CAPACITY: usize = 1024;

    /// Keeps the value buffers of consumed events.
    pub(super) fn keep(&mut self, events: Vec<Event>) {
        for event in events {
            if self.buffers.len() >= Self::MAX_BUFFERS {
                break;
            }
            if event.value.capacity() <= Self::MAX_CAPACITY && event.value.capacity() > 0 {
                self.buffers.push(event.value);
            }
        }
    }

    /// A copy of `bytes`, in a spare buffer when there is one that fits
    /// well: an event may live long in a window, so it must not hold a
    /// buffer much larger than its value.
    fn filled_with(&mut self, bytes: &[u8]) -> Vec<u8> {
        if let Some(buffer) = self.buffers.last() {
            let fits = buffer.capacity() >= bytes.len()
                && buffer.capacity() <= bytes.len().saturating_mul(2).max(16);
            if fits {
                if let Some(mut buffer) = self.buffers.pop() {
                    buffer.clear();
                    buffer.extend_from_slice(bytes);
                    return buffer;
                }
            }
        }
        bytes.to_vec()
    }
}

/// Why a packed answer was not turned into events.
#[derive(Debug)]
pub(super) enum DecodeFailure {
    /// The buffer is not a packed batch: the guest's fault, reported as its error.
    Malformed(PipeError),
    /// More events than the output limit (refused before allocating them).
    TooMany(u64),
    /// More bytes than the output limit, as [`super::limits::output_bytes`]
    /// counts them: the whole answer's bytes and headers (refused before
    /// allocating the event that went past the limit).
    TooLarge {
        /// The answer's bytes, counted.
        bytes: u64,
        /// Its headers.
        headers: u64,
    },
}

/// What `event` counts toward `max_output_bytes` (as
/// [`super::limits::output_bytes`] of the decoded event), read from the
/// encoding without allocating.
fn counted_bytes(event: &EventRef<'_>) -> u64 {
    let text = event.key.map_or(0, <[u8]>::len) + event.value.len() + event.header_text_len();
    text as u64 + u64::from(event.header_count()) * HEADER_OVERHEAD_BYTES
}

/// The bytes and headers of a whole answer, counted without allocating.
fn count_all(reader: &BatchReader<'_>) -> Result<(u64, u64), plumber_wire::DecodeError> {
    let mut totals = (0u64, 0u64);
    for event in reader.events() {
        let event = event?;
        totals.0 = totals.0.saturating_add(counted_bytes(&event));
        totals.1 += u64::from(event.header_count());
    }
    Ok(totals)
}

/// Decodes a guest's packed answer. Each event is counted before anything
/// is allocated for it, so an answer over the limits costs no more than
/// the limits.
///
/// # Errors
///
/// A malformed buffer, more than `max_events` events or more than
/// `max_bytes` bytes.
pub(super) fn decode_events(
    bytes: &[u8],
    max_events: u64,
    max_bytes: u64,
    spare: &mut SpareValues,
) -> Result<Vec<Event>, DecodeFailure> {
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
    let mut counted = 0u64;
    for event in reader.events() {
        let event = event.map_err(malformed)?;
        counted = counted.saturating_add(counted_bytes(&event));
        if counted > max_bytes {
            let (bytes, headers) = count_all(&reader).map_err(malformed)?;
            return Err(DecodeFailure::TooLarge { bytes, headers });
        }
        let mut headers = Vec::with_capacity(event.header_count() as usize);
        for header in event.headers() {
            let (name, value) = header.map_err(malformed)?;
            headers.push((name.to_owned(), value.to_owned()));
        }
        events.push(Event {
            key: event.key.map(<[u8]>::to_vec),
            value: spare.filled_with(event.value),
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
        assert_eq!(
            decode_events(&buffer, 10, u64::MAX, &mut SpareValues::default()).unwrap(),
            batch.events
        );
    }

    #[test]
    fn spare_buffers_are_reused_and_bounded() {
        let mut spare = SpareValues::default();
        let consumed: Vec<Event> = (0..5000).map(|_| Event::new(vec![b'x'; 16])).collect();
        spare.keep(consumed);
        assert_eq!(spare.buffers.len(), SpareValues::MAX_BUFFERS);
        spare.keep(vec![Event::new(vec![0; 4096])]);
        assert_eq!(spare.buffers.len(), SpareValues::MAX_BUFFERS);
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &Batch::new(vec![Event::new("abc")]));
        let events = decode_events(&buffer, 10, u64::MAX, &mut spare).unwrap();
        assert_eq!(events[0].value, b"abc");
        // 16 bytes of room for 3: reused.
        assert_eq!(spare.buffers.len(), SpareValues::MAX_BUFFERS - 1);
        assert_eq!(events[0].value.capacity(), 16);
        // An empty value does not take (and keep alive) a spare buffer.
        spare.keep(vec![Event::new(vec![0; 1000])]);
        let before = spare.buffers.len();
        encode_batch(&mut buffer, &Batch::new(vec![Event::new("")]));
        let events = decode_events(&buffer, 10, u64::MAX, &mut spare).unwrap();
        assert_eq!(events[0].value.capacity(), 0);
        assert_eq!(spare.buffers.len(), before);
    }

    #[test]
    fn too_many_events_are_refused_before_decoding() {
        let batch = Batch::new(vec![Event::new("a"), Event::new("b")]);
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &batch);
        assert!(matches!(
            decode_events(&buffer, 1, u64::MAX, &mut SpareValues::default()),
            Err(DecodeFailure::TooMany(2))
        ));
    }

    #[test]
    fn headers_are_counted_before_they_are_decoded() {
        let headers = vec![(String::new(), String::new()); 1000];
        let batch = Batch::new(vec![
            Event::new("ab"),
            Event {
                headers,
                ..Event::new("cd").with_key("k")
            },
        ]);
        let mut buffer = Vec::new();
        encode_batch(&mut buffer, &batch);
        let counted: u64 = batch
            .events
            .iter()
            .map(super::super::limits::output_bytes)
            .sum();
        assert_eq!(counted, 2 + 3 + 1000 * HEADER_OVERHEAD_BYTES);
        assert!(decode_events(&buffer, 10, counted, &mut SpareValues::default()).is_ok());
        match decode_events(&buffer, 10, counted - 1, &mut SpareValues::default()) {
            Err(DecodeFailure::TooLarge { bytes, headers }) => {
                assert_eq!((bytes, headers), (counted, 1000));
            }
            other => panic!("decoded over the limit: {other:?}"),
        }
    }

    #[test]
    fn garbage_is_the_guests_error() {
        match decode_events(b"\x07garbage", 10, u64::MAX, &mut SpareValues::default()) {
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
