//! A replay: a source of events and time marks held in memory, and a sink
//! that keeps what it is given, for `plumber test` (docs/testing-pipes.md).
//!
//! A replay file is JSON lines. A line is either an event in the JSON form
//! of [`JsonEvent`](super::JsonEvent) (`value` or `value_hex`, `key` or
//! `key_hex`, `timestamp`, `headers`) or a time mark `{"watermark": N}`:
//! from there on processing time reads `N` and an event-time window's
//! watermark is at least `N` ([`Source::controls_time`]). Blank lines are
//! skipped.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use super::{JsonEvent, Sink, Source, StreamError};
use crate::checkpoint::Position;
use crate::{Batch, Event};

/// One line of a replay file.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayItem {
    /// An event, and the line it was read from (1-based).
    Event {
        /// The event.
        event: Event,
        /// Its line in the file.
        line: usize,
    },
    /// A time mark: processing time and the watermark move to this (ms
    /// since the Unix epoch).
    Watermark(u64),
}

/// A line of a replay file that is not one.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ReplayLineError {
    /// The file, as given.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Which lines a replay file may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayLines {
    /// Events and watermark marks (the input).
    EventsAndMarks,
    /// Events only (the expected output).
    EventsOnly,
}

/// Reads the lines of a replay file named `file` (for errors).
///
/// # Errors
///
/// The first bad line, with `file:line` and what is wrong: not JSON, not
/// an object, a field that an event does not have, a missing `value`, a
/// watermark that is not a whole number or goes back, a watermark where
/// only events may be.
pub fn read_replay(
    text: &str,
    file: &str,
    allowed: ReplayLines,
) -> Result<Vec<ReplayItem>, ReplayLineError> {
    let mut items = Vec::new();
    let mut last_watermark: Option<u64> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let fail = |message: String| ReplayLineError {
            file: file.to_owned(),
            line,
            message,
        };
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| fail(format!("not JSON: {e}")))?;
        let serde_json::Value::Object(object) = &value else {
            return Err(fail(format!(
                "expected an object (an event or {{\"watermark\": N}}), found {}",
                super::json_kind(&value)
            )));
        };
        if let Some(mark) = object.get("watermark") {
            if allowed == ReplayLines::EventsOnly {
                return Err(fail(
                    "a watermark line belongs in the input, not in the expected output".to_owned(),
                ));
            }
            if object.len() > 1 {
                let others: Vec<&str> = object
                    .keys()
                    .map(String::as_str)
                    .filter(|k| *k != "watermark")
                    .collect();
                return Err(fail(format!(
                    "a watermark line has only `watermark`; found also {}",
                    others.join(", ")
                )));
            }
            let Some(watermark) = mark.as_u64() else {
                return Err(fail(format!(
                    "`watermark` must be a whole number of ms since the Unix epoch, found {mark}"
                )));
            };
            if let Some(previous) = last_watermark.filter(|p| watermark < *p) {
                return Err(fail(format!(
                    "watermark {watermark} goes back from the earlier {previous}: time only moves on"
                )));
            }
            last_watermark = Some(watermark);
            items.push(ReplayItem::Watermark(watermark));
            continue;
        }
        let event: JsonEvent = serde_json::from_value(value).map_err(|e| fail(e.to_string()))?;
        items.push(ReplayItem::Event {
            event: event.into(),
            line,
        });
    }
    Ok(items)
}

/// An event as one canonical JSON line of a replay file: `value` (or
/// `value_hex`), then `key` (or `key_hex`), `timestamp` and `headers` when
/// it has them, headers by name (of repeated names the last, as reading
/// keeps). Two events render the same exactly when a replay file cannot
/// tell them apart.
pub fn render_event(event: &Event) -> String {
    /// The fields in the order they are written.
    #[derive(serde::Serialize)]
    struct Line<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_hex: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_hex: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<u64>,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        headers: std::collections::BTreeMap<&'a str, &'a str>,
    }
    fn text_or_hex(bytes: &[u8]) -> (Option<&str>, Option<String>) {
        match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text), None),
            Err(_) => (None, Some(hex::encode(bytes))),
        }
    }
    let (value, value_hex) = text_or_hex(&event.value);
    let (key, key_hex) = event.key.as_deref().map_or((None, None), text_or_hex);
    let line = Line {
        value,
        value_hex,
        key,
        key_hex,
        timestamp: event.timestamp,
        headers: event
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect(),
    };
    // Strings, numbers and a string map always serialise.
    serde_json::to_string(&line).unwrap_or_default()
}

/// A finite source over a replay's items: events in order, and at each
/// watermark mark the end of a batch and a new watermark
/// ([`Source::controls_time`]). Its position is the index of the next item.
pub struct ReplaySource {
    items: Vec<ReplayItem>,
    next: usize,
    watermark: Option<u64>,
}

impl ReplaySource {
    /// A source over `items`.
    pub fn new(items: Vec<ReplayItem>) -> Self {
        ReplaySource {
            items,
            next: 0,
            watermark: None,
        }
    }
}

#[async_trait]
impl Source for ReplaySource {
    fn describe(&self) -> String {
        format!("replay source ({} lines)", self.items.len())
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.next = super::list_index(|| self.describe(), position, self.items.len(), "replay")?;
        // The last mark before the position is the time there.
        self.watermark = self.items[..self.next]
            .iter()
            .rev()
            .find_map(|item| match item {
                ReplayItem::Watermark(w) => Some(*w),
                ReplayItem::Event { .. } => None,
            });
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        if self.next >= self.items.len() {
            return Ok(None);
        }
        let mut events = Vec::new();
        while let Some(item) = self.items.get(self.next) {
            match item {
                ReplayItem::Event { event, .. } => {
                    if events.len() >= max.max(1) {
                        break;
                    }
                    events.push(event.clone());
                    self.next += 1;
                }
                ReplayItem::Watermark(watermark) => {
                    // The events before the mark go first, at the old time;
                    // the mark then comes alone (an empty batch).
                    if events.is_empty() {
                        self.watermark = Some(*watermark);
                        self.next += 1;
                    }
                    break;
                }
            }
        }
        Ok(Some((events, Position::Offset(self.next as u64))))
    }

    fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    fn controls_time(&self) -> bool {
        true
    }
}

/// A sink that keeps every event it is given, readable through
/// [`MemorySink::events`] from elsewhere while or after the pipeline runs.
#[derive(Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<Event>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        MemorySink::default()
    }

    /// The events written so far, in order.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn describe(&self) -> String {
        "memory sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        // One lock per batch.
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batch.events);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<ReplayItem>, ReplayLineError> {
        read_replay(text, "in.jsonl", ReplayLines::EventsAndMarks)
    }

    #[test]
    fn reads_events_and_marks_with_their_lines() {
        let items = read(
            "{\"value\":\"a\",\"key\":\"k\",\"timestamp\":5,\"headers\":{\"h\":\"1\"}}\n\n{\"watermark\":10}\n{\"value_hex\":\"ff\"}\n",
        )
        .unwrap();
        let mut first = Event::new("a").with_key("k").with_timestamp(5);
        first.headers.push(("h".into(), "1".into()));
        assert_eq!(
            items,
            vec![
                ReplayItem::Event {
                    event: first,
                    line: 1
                },
                ReplayItem::Watermark(10),
                ReplayItem::Event {
                    event: Event::new(vec![0xff_u8]),
                    line: 4
                },
            ]
        );
    }

    #[test]
    fn refuses_bad_lines_naming_file_line_and_fault() {
        let cases = [
            ("{\"value\":\"a\"}\nnot json\n", "in.jsonl:2: not JSON"),
            ("[1]\n", "in.jsonl:1: expected an object"),
            (
                "{\"value\":\"a\",\"colour\":1}\n",
                "in.jsonl:1: unknown field `colour`",
            ),
            ("{\"key\":\"a\"}\n", "in.jsonl:1: missing field `value`"),
            (
                "{\"watermark\":-1}\n",
                "in.jsonl:1: `watermark` must be a whole number",
            ),
            (
                "{\"watermark\":5,\"value\":\"a\"}\n",
                "in.jsonl:1: a watermark line has only",
            ),
            (
                "{\"watermark\":5}\n{\"watermark\":4}\n",
                "in.jsonl:2: watermark 4 goes back from the earlier 5",
            ),
        ];
        for (text, wanted) in cases {
            let error = read(text).unwrap_err().to_string();
            assert!(error.starts_with(wanted), "{text:?}: {error}");
        }
        let error = read_replay("{\"watermark\":5}\n", "out.jsonl", ReplayLines::EventsOnly)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("out.jsonl:1: a watermark line belongs in the input"),
            "{error}"
        );
    }

    #[test]
    fn renders_what_it_reads_back_canonically() {
        let text = "{\"headers\":{\"b\":\"2\",\"a\":\"1\"},\"timestamp\":3,\"key_hex\":\"fe\",\"value\":\"v\"}";
        let Ok(items) = read(text) else {
            panic!("read")
        };
        let ReplayItem::Event { event, .. } = &items[0] else {
            panic!("an event")
        };
        let rendered = render_event(event);
        assert_eq!(
            rendered,
            r#"{"value":"v","key_hex":"fe","timestamp":3,"headers":{"a":"1","b":"2"}}"#
        );
        assert_eq!(render_event(&Event::new("x")), r#"{"value":"x"}"#);
    }

    #[tokio::test]
    async fn a_mark_ends_the_batch_and_then_moves_the_watermark() {
        let items =
            read("{\"value\":\"a\"}\n{\"value\":\"b\"}\n{\"watermark\":7}\n{\"value\":\"c\"}\n")
                .unwrap();
        let mut source = ReplaySource::new(items);
        let mut seen = Vec::new();
        while let Some((events, position)) = source.next_batch(10).await.unwrap() {
            let values: Vec<String> = events
                .iter()
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
                .collect();
            seen.push((values, source.watermark(), position));
        }
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            seen,
            vec![
                (strings(&["a", "b"]), None, Position::Offset(2)),
                (strings(&[]), Some(7), Position::Offset(3)),
                (strings(&["c"]), Some(7), Position::Offset(4)),
            ]
        );
        source.seek(&Position::Offset(3)).await.unwrap();
        assert_eq!(source.watermark(), Some(7));
        source.seek(&Position::Offset(1)).await.unwrap();
        assert_eq!(source.watermark(), None);
    }
}
