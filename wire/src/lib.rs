//! The packed batch: a whole batch of events in one byte buffer, so that a
//! batch crosses into a guest and back as one `list<u8>` each way (one
//! allocation and one copy per batch) instead of the canonical ABI's
//! allocation and copy per event field.
//!
//! Used by the host and by the Rust guest SDK for the optional
//! `process-packed` export of the `packed-pipe` world. All integers are
//! little-endian.
//!
//! ```text
//! batch  := version:u8 (= 1)  window  count:u32  event*count
//! window := 0                                       no window
//!         | 1 start:u64 end:u64                     a window
//!         | 2 start:u64 end:u64 len:u32 key[len]    a keyed window
//! event  := flags:u8 (bit 0: key, bit 1: timestamp)
//!           [len:u32 key[len]]  len:u32 value[len]  [timestamp:u64]
//!           headers:u32 (len:u32 name[len] len:u32 value[len])*headers
//! ```
//!
//! A guest answers with a batch in the same encoding (its window is ignored).
//!
//! ```
//! use plumber_wire::{BatchReader, BatchWriter, EventRef};
//!
//! let mut buffer = Vec::new();
//! let mut writer = BatchWriter::new(&mut buffer, None);
//! writer.push(Some(b"k"), b"hello", Some(7), [("h", "v")]);
//! writer.finish();
//!
//! let reader = BatchReader::new(&buffer).unwrap();
//! let events: Vec<EventRef> = reader.events().collect::<Result<_, _>>().unwrap();
//! assert_eq!(events[0].value, b"hello");
//! assert_eq!(events[0].headers().next().unwrap().unwrap(), ("h", "v"));
//! ```

#![forbid(unsafe_code)]
// Every public item is documented, and nothing is `pub` that a user of the
// crate cannot reach (warnings here; CI's clippy denies them).
#![warn(missing_docs, unreachable_pub)]

/// The encoding's version byte.
pub const VERSION: u8 = 1;

const FLAG_KEY: u8 = 1;
const FLAG_TIMESTAMP: u8 = 2;
/// The smallest encoded event: flags, value length, header count.
const MIN_EVENT_BYTES: usize = 1 + 4 + 4;

/// A window's bounds as carried by a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowRef<'a> {
    /// First millisecond (inclusive).
    pub start: u64,
    /// Last millisecond (exclusive).
    pub end: u64,
    /// The key of a keyed window.
    pub key: Option<&'a [u8]>,
}

/// Why a buffer is not a packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset in the buffer where decoding stopped.
    pub offset: usize,
    /// What was expected there.
    pub message: &'static str,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed packed batch at byte {}: {}",
            self.offset, self.message
        )
    }
}

impl std::error::Error for DecodeError {}

/// Writes a packed batch into a buffer (which is cleared first, keeping
/// its capacity, so one buffer serves every batch).
pub struct BatchWriter<'b> {
    buffer: &'b mut Vec<u8>,
    count_at: usize,
    count: u32,
}

impl<'b> BatchWriter<'b> {
    /// Starts a batch with an optional window.
    pub fn new(buffer: &'b mut Vec<u8>, window: Option<WindowRef<'_>>) -> Self {
        buffer.clear();
        buffer.push(VERSION);
        match window {
            None => buffer.push(0),
            Some(window) => {
                buffer.push(if window.key.is_some() { 2 } else { 1 });
                buffer.extend_from_slice(&window.start.to_le_bytes());
                buffer.extend_from_slice(&window.end.to_le_bytes());
                if let Some(key) = window.key {
                    put_bytes(buffer, key);
                }
            }
        }
        let count_at = buffer.len();
        buffer.extend_from_slice(&0u32.to_le_bytes());
        BatchWriter {
            buffer,
            count_at,
            count: 0,
        }
    }

    /// Appends one event.
    pub fn push<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp: Option<u64>,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) {
        self.start_event(key, value.len(), timestamp);
        self.buffer.extend_from_slice(value);
        self.end_event(timestamp, headers);
    }

    /// Appends a copy of `event` and returns its value's bytes in the
    /// buffer, for a pipe that rewrites values in place.
    pub fn push_copy(&mut self, event: &EventRef<'_>) -> &mut [u8] {
        // The event's encoding is the same in both batches: one copy.
        self.count += 1;
        let value_at = self.buffer.len() + event.value_offset;
        self.buffer.extend_from_slice(event.raw);
        &mut self.buffer[value_at..value_at + event.value.len()]
    }

    /// Events written so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no event was written.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the event count; the buffer then holds the batch.
    pub fn finish(self) {
        self.buffer[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Writes flags, key and the value's length; returns where the value
    /// (which the caller appends next) starts.
    fn start_event(
        &mut self,
        key: Option<&[u8]>,
        value_len: usize,
        timestamp: Option<u64>,
    ) -> usize {
        self.count += 1;
        let mut flags = 0;
        if key.is_some() {
            flags |= FLAG_KEY;
        }
        if timestamp.is_some() {
            flags |= FLAG_TIMESTAMP;
        }
        self.buffer.push(flags);
        if let Some(key) = key {
            put_bytes(self.buffer, key);
        }
        self.buffer
            .extend_from_slice(&len_u32(value_len).to_le_bytes());
        self.buffer.len()
    }

    fn end_event<'h>(
        &mut self,
        timestamp: Option<u64>,
        headers: impl IntoIterator<Item = (&'h str, &'h str)>,
    ) {
        if let Some(timestamp) = timestamp {
            self.buffer.extend_from_slice(&timestamp.to_le_bytes());
        }
        let count_at = self.buffer.len();
        self.buffer.extend_from_slice(&0u32.to_le_bytes());
        let mut count = 0u32;
        for (name, value) in headers {
            put_bytes(self.buffer, name.as_bytes());
            put_bytes(self.buffer, value.as_bytes());
            count += 1;
        }
        if count > 0 {
            self.buffer[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
        }
    }
}

fn len_u32(len: usize) -> u32 {
    // Events are bounded far below 4 GiB by the host's limits; saturate
    // rather than wrap so a decoder sees a short buffer, not a wrong one.
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn put_bytes(buffer: &mut Vec<u8>, bytes: &[u8]) {
    buffer.extend_from_slice(&len_u32(bytes.len()).to_le_bytes());
    buffer.extend_from_slice(bytes);
}

/// One event of a packed batch, borrowed from the buffer.
#[derive(Debug, Clone, Copy)]
pub struct EventRef<'a> {
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// The timestamp, if any.
    pub timestamp: Option<u64>,
    header_count: u32,
    raw_headers: &'a [u8],
    /// The whole encoded event, and where its value starts in it.
    raw: &'a [u8],
    value_offset: usize,
}

impl<'a> EventRef<'a> {
    /// How many headers the event has.
    pub fn header_count(&self) -> u32 {
        self.header_count
    }

    /// Bytes of the headers' names and values together (without their
    /// length prefixes), known without reading them.
    pub fn header_text_len(&self) -> usize {
        // Each header is two 4-byte lengths and its two strings.
        self.raw_headers
            .len()
            .saturating_sub(8 * self.header_count as usize)
    }

    /// The headers, in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            cursor: Cursor {
                bytes: self.raw_headers,
                offset: 0,
                base: 0,
            },
            left: self.header_count,
        }
    }
}

/// The headers of an [`EventRef`].
pub struct Headers<'a> {
    cursor: Cursor<'a>,
    left: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a str, &'a str), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some((|| {
            let name = self.cursor.text()?;
            let value = self.cursor.text()?;
            Ok((name, value))
        })())
    }
}

/// Reads a packed batch.
#[derive(Debug, Clone)]
pub struct BatchReader<'a> {
    /// The batch's window, if it has one.
    pub window: Option<WindowRef<'a>>,
    count: u32,
    events_at: usize,
    bytes: &'a [u8],
}

impl<'a> BatchReader<'a> {
    /// Reads the header of a batch.
    ///
    /// # Errors
    ///
    /// The buffer does not start like a packed batch, or claims more events than it can hold.
    pub fn new(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut cursor = Cursor {
            bytes,
            offset: 0,
            base: 0,
        };
        if cursor.u8()? != VERSION {
            return Err(cursor.error_at(0, "an unknown version byte (expected 1)"));
        }
        let window = match cursor.u8()? {
            0 => None,
            kind @ (1 | 2) => {
                let start = cursor.u64()?;
                let end = cursor.u64()?;
                let key = if kind == 2 {
                    Some(cursor.bytes()?)
                } else {
                    None
                };
                Some(WindowRef { start, end, key })
            }
            _ => return Err(cursor.error_at(1, "an unknown window kind")),
        };
        let count = cursor.u32()?;
        let left = bytes.len() - cursor.offset;
        if count as usize > left / MIN_EVENT_BYTES {
            return Err(cursor.error("an event count larger than the buffer can hold"));
        }
        Ok(BatchReader {
            window,
            count,
            events_at: cursor.offset,
            bytes,
        })
    }

    /// How many events the batch holds.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The events, in order; an error ends the iteration.
    pub fn events(&self) -> Events<'a> {
        Events {
            cursor: Cursor {
                bytes: self.bytes,
                offset: self.events_at,
                base: 0,
            },
            left: self.count,
            failed: false,
        }
    }
}

/// The events of a [`BatchReader`].
pub struct Events<'a> {
    cursor: Cursor<'a>,
    left: u32,
    failed: bool,
}

impl<'a> Events<'a> {
    fn read(&mut self) -> Result<EventRef<'a>, DecodeError> {
        let start = self.cursor.offset;
        let flags = self.cursor.u8()?;
        if flags & !(FLAG_KEY | FLAG_TIMESTAMP) != 0 {
            return Err(self.cursor.error("unknown event flags"));
        }
        let key = if flags & FLAG_KEY != 0 {
            Some(self.cursor.bytes()?)
        } else {
            None
        };
        let value = self.cursor.bytes()?;
        let value_offset = self.cursor.offset - value.len() - start;
        let timestamp = if flags & FLAG_TIMESTAMP != 0 {
            Some(self.cursor.u64()?)
        } else {
            None
        };
        let header_count = self.cursor.u32()?;
        let headers_at = self.cursor.offset;
        for _ in 0..header_count {
            self.cursor.bytes()?;
            self.cursor.bytes()?;
        }
        Ok(EventRef {
            key,
            value,
            timestamp,
            header_count,
            raw_headers: &self.cursor.bytes[headers_at..self.cursor.offset],
            raw: &self.cursor.bytes[start..self.cursor.offset],
            value_offset,
        })
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<EventRef<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 || self.failed {
            return None;
        }
        self.left -= 1;
        let event = self.read();
        self.failed = event.is_err();
        Some(event)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    offset: usize,
    /// Added to offsets in errors (for sub-slices).
    base: usize,
}

impl<'a> Cursor<'a> {
    fn error(&self, message: &'static str) -> DecodeError {
        self.error_at(self.offset, message)
    }

    fn error_at(&self, offset: usize, message: &'static str) -> DecodeError {
        DecodeError {
            offset: self.base + offset,
            message,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .offset
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| self.error("more bytes than the buffer has"))?;
        let slice = &self.bytes[self.offset..end];
        self.offset = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut le = [0u8; 4];
        le.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(le))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut le = [0u8; 8];
        le.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(le))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn text(&mut self) -> Result<&'a str, DecodeError> {
        let at = self.offset;
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|_| self.error_at(at, "a header that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(buffer: &mut Vec<u8>) {
        let mut writer = BatchWriter::new(
            buffer,
            Some(WindowRef {
                start: 10,
                end: 20,
                key: Some(b"w"),
            }),
        );
        writer.push(None, b"plain", None, []);
        writer.push(
            Some(b"key"),
            &[0xff, 0x00],
            Some(u64::MAX),
            [("a", "1"), ("b", "")],
        );
        writer.push(Some(b""), b"", Some(0), []);
        writer.finish();
    }

    #[test]
    fn round_trips_every_field() {
        let mut buffer = Vec::new();
        sample(&mut buffer);
        let reader = BatchReader::new(&buffer).unwrap();
        assert_eq!(
            reader.window,
            Some(WindowRef {
                start: 10,
                end: 20,
                key: Some(b"w")
            })
        );
        assert_eq!(reader.len(), 3);
        let events: Vec<_> = reader.events().collect::<Result<_, _>>().unwrap();
        assert_eq!(events[0].key, None);
        assert_eq!(events[0].value, b"plain");
        assert_eq!(events[0].timestamp, None);
        assert_eq!(events[0].headers().count(), 0);
        assert_eq!(events[1].key, Some(&b"key"[..]));
        assert_eq!(events[1].value, &[0xff, 0x00]);
        assert_eq!(events[1].timestamp, Some(u64::MAX));
        let headers: Vec<_> = events[1].headers().collect::<Result<_, _>>().unwrap();
        assert_eq!(headers, [("a", "1"), ("b", "")]);
        assert_eq!(events[1].header_text_len(), 3);
        assert_eq!(events[0].header_text_len(), 0);
        assert_eq!(events[2].key, Some(&b""[..]));
        assert_eq!(events[2].timestamp, Some(0));
    }

    #[test]
    fn push_copy_keeps_the_event_and_exposes_its_value() {
        let mut input = Vec::new();
        sample(&mut input);
        let reader = BatchReader::new(&input).unwrap();
        let mut output = Vec::new();
        let mut writer = BatchWriter::new(&mut output, None);
        for event in reader.events() {
            writer.push_copy(&event.unwrap()).make_ascii_uppercase();
        }
        writer.finish();
        let out = BatchReader::new(&output).unwrap();
        assert_eq!(out.window, None);
        let events: Vec<_> = out.events().collect::<Result<_, _>>().unwrap();
        assert_eq!(events[0].value, b"PLAIN");
        assert_eq!(events[1].key, Some(&b"key"[..]));
        assert_eq!(events[1].timestamp, Some(u64::MAX));
        assert_eq!(events[1].headers().count(), 2);
    }

    #[test]
    fn a_reused_buffer_is_cleared() {
        let mut buffer = Vec::new();
        sample(&mut buffer);
        let mut writer = BatchWriter::new(&mut buffer, None);
        writer.push(None, b"x", None, []);
        writer.finish();
        let reader = BatchReader::new(&buffer).unwrap();
        assert_eq!(reader.len(), 1);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut buffer = Vec::new();
        sample(&mut buffer);
        for cut in 0..buffer.len() {
            let short = &buffer[..cut];
            let outcome = BatchReader::new(short).and_then(|reader| {
                reader
                    .events()
                    .map(|e| e.and_then(|e| e.headers().collect::<Result<Vec<_>, _>>()))
                    .collect::<Result<Vec<_>, _>>()
            });
            assert!(outcome.is_err(), "cut at {cut} decoded");
        }
    }

    #[test]
    fn refuses_a_count_the_buffer_cannot_hold() {
        let buffer = [VERSION, 0, 0xff, 0xff, 0xff, 0xff];
        let error = BatchReader::new(&buffer).unwrap_err();
        assert!(error.to_string().contains("event count"), "{error}");
    }

    #[test]
    fn refuses_headers_that_are_not_utf8() {
        let mut buffer = Vec::new();
        let mut writer = BatchWriter::new(&mut buffer, None);
        writer.push(None, b"v", None, [("h", "x")]);
        writer.finish();
        let last = buffer.len() - 1;
        buffer[last] = 0xff;
        let reader = BatchReader::new(&buffer).unwrap();
        let event = reader.events().next().unwrap().unwrap();
        assert!(event.headers().next().unwrap().is_err());
    }
}
