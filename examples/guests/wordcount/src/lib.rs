//! The word count of `plumber bench`: lines of space-separated words in,
//! one `<word> <count>` event per word out, keyed by the word.
//!
//! Config: `{"mode": "count"}` (the default) keeps a running count per word
//! in state (one host `add-many` per batch) and emits each word with its
//! count so far; `{"mode": "window"}` follows a window and emits, for the
//! batch the window released, each distinct word with its count in that
//! batch, in word order, stamped with the window's end.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use plumber_guest::{
    parse_config, Batch, BatchReader, BatchWriter, Event, EventRef, Pipe, PipeError, State,
};
use serde::Deserialize;

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
enum Mode {
    #[default]
    Count,
    Window,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    mode: Mode,
}

pub struct WordCount {
    mode: Mode,
}

/// FNV-1a: std's default `RandomState` seeds itself from
/// `wasi:random/insecure-seed`, which the sandbox does not grant, and short
/// words hash faster this way than with SipHash.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// `<word> <count>`, keyed by the word.
fn word_event(word: &[u8], count: impl std::fmt::Display, timestamp: Option<u64>) -> Event {
    let count = count.to_string();
    let mut value = Vec::with_capacity(word.len() + 1 + count.len());
    value.extend_from_slice(word);
    value.push(b' ');
    value.extend_from_slice(count.as_bytes());
    Event {
        key: Some(word.to_vec()),
        value,
        timestamp,
        headers: Vec::new(),
    }
}

/// The words of a line: runs of bytes between single spaces (empty runs skipped).
fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

impl WordCount {
    fn count(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        // One `add-many` host call for the whole batch's words instead of
        // one `add` per word; `lines[i]` is the event the i-th word came from.
        let mut ops: Vec<(&str, i64)> = Vec::with_capacity(batch.events.len() * 5);
        let mut lines: Vec<usize> = Vec::with_capacity(ops.capacity());
        for (index, event) in batch.events.iter().enumerate() {
            for word in words(&event.value) {
                // State keys are strings: a word that is not UTF-8 is the event's fault.
                let key = std::str::from_utf8(word)
                    .map_err(|_| PipeError::new("a word is not UTF-8").at_event(index))?;
                ops.push((key, 1));
                lines.push(index);
            }
        }
        let counts = state.add_many(&ops).map_err(PipeError::from)?;
        if counts.len() != ops.len() {
            return Err(PipeError::new(format!(
                "add-many returned {} values for {} additions",
                counts.len(),
                ops.len()
            )));
        }
        Ok(ops
            .iter()
            .zip(counts)
            .zip(lines)
            .map(|(((word, _), count), index)| {
                word_event(word.as_bytes(), count, batch.events[index].timestamp)
            })
            .collect())
    }

    fn window(batch: &Batch) -> Result<Vec<Event>, PipeError> {
        let window = batch.window.as_ref().ok_or_else(|| {
            PipeError::new(
                "wordcount in window mode must follow a window: the batch has no window-info",
            )
        })?;
        let mut counts: FnvMap<&[u8], u64> = FnvMap::default();
        for event in &batch.events {
            for word in words(&event.value) {
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut counts: Vec<(&[u8], u64)> = counts.into_iter().collect();
        // HashMap order varies between runs; word order makes the output comparable.
        counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(counts
            .into_iter()
            .map(|(word, count)| word_event(word, count, Some(window.end)))
            .collect())
    }
}

impl Pipe for WordCount {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        Ok(WordCount { mode: config.mode })
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        match self.mode {
            Mode::Count => self.count(batch, state),
            Mode::Window => WordCount::window(&batch),
        }
    }

    /// The same as `process`, on the packed bytes: words are slices of the
    /// input buffer and answers are written straight into the output one,
    /// so nothing is allocated per word.
    fn process_packed(
        &mut self,
        batch: BatchReader<'_>,
        out: &mut Vec<u8>,
        state: &mut State,
    ) -> Result<(), PipeError> {
        let malformed = |e: plumber_guest::wire::DecodeError| PipeError::new(e.to_string());
        let events: Vec<EventRef<'_>> = batch
            .events()
            .collect::<Result<_, _>>()
            .map_err(malformed)?;
        let mut writer = BatchWriter::new(out, None);
        let mut text = Vec::with_capacity(32);
        match self.mode {
            Mode::Count => {
                let mut ops: Vec<(&str, i64)> = Vec::with_capacity(events.len() * 5);
                let mut lines: Vec<u32> = Vec::with_capacity(ops.capacity());
                for (index, event) in events.iter().enumerate() {
                    for word in words(event.value) {
                        let key = std::str::from_utf8(word)
                            .map_err(|_| PipeError::new("a word is not UTF-8").at_event(index))?;
                        ops.push((key, 1));
                        lines.push(index as u32);
                    }
                }
                let counts = state.add_many(&ops).map_err(PipeError::from)?;
                if counts.len() != ops.len() {
                    return Err(PipeError::new(format!(
                        "add-many returned {} values for {} additions",
                        counts.len(),
                        ops.len()
                    )));
                }
                for (((word, _), count), line) in ops.iter().zip(counts).zip(lines) {
                    word_text(&mut text, word.as_bytes(), count);
                    let timestamp = events[line as usize].timestamp;
                    writer.push(Some(word.as_bytes()), &text, timestamp, []);
                }
            }
            Mode::Window => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new(
                        "wordcount in window mode must follow a window: the batch has no window-info",
                    )
                })?;
                let mut counts: FnvMap<&[u8], u64> = FnvMap::default();
                for event in &events {
                    for word in words(event.value) {
                        *counts.entry(word).or_default() += 1;
                    }
                }
                let mut counts: Vec<(&[u8], u64)> = counts.into_iter().collect();
                counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
                for (word, count) in counts {
                    word_text(&mut text, word, i64::try_from(count).unwrap_or(i64::MAX));
                    writer.push(Some(word), &text, Some(window.end), []);
                }
            }
        }
        writer.finish();
        Ok(())
    }
}

/// `<word> <count>` into `out` (cleared first).
fn word_text(out: &mut Vec<u8>, word: &[u8], count: i64) {
    out.clear();
    out.extend_from_slice(word);
    out.push(b' ');
    if count < 0 {
        out.push(b'-');
    }
    let start = out.len();
    let mut rest = count.unsigned_abs();
    loop {
        out.push(b'0' + (rest % 10) as u8);
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out[start..].reverse();
}

plumber_guest::export_pipe!(WordCount);

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_guest::WindowInfo;

    fn values(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.value_str().unwrap()).collect()
    }

    fn packed(batch: &Batch) -> Vec<u8> {
        let mut buffer = Vec::new();
        let window = batch.window.as_ref().map(|w| plumber_guest::WindowRef {
            start: w.start,
            end: w.end,
            key: w.key.as_deref(),
        });
        let mut writer = BatchWriter::new(&mut buffer, window);
        for e in &batch.events {
            writer.push(e.key.as_deref(), &e.value, e.timestamp, []);
        }
        writer.finish();
        buffer
    }

    #[test]
    fn the_packed_path_gives_what_process_gives() {
        for (config, window) in [
            (r#"{"mode": "count"}"#, None),
            (
                r#"{"mode": "window"}"#,
                Some(WindowInfo {
                    start: 0,
                    end: 9,
                    key: None,
                }),
            ),
        ] {
            let batch = Batch {
                events: vec![
                    Event::new("kalo mire kalo").with_timestamp(7),
                    Event::new("mire  tup"),
                ],
                window,
            };
            let mut state = State::in_memory();
            state.set_i64("tup", -3).unwrap();
            let mut pipe = WordCount::init(config).unwrap();
            let mut out = Vec::new();
            pipe.process_packed(
                BatchReader::new(&packed(&batch)).unwrap(),
                &mut out,
                &mut state,
            )
            .unwrap();
            let from_packed = plumber_guest::unpack(&BatchReader::new(&out).unwrap())
                .unwrap()
                .events;
            let mut state = State::in_memory();
            state.set_i64("tup", -3).unwrap();
            let from_process = WordCount::init(config)
                .unwrap()
                .process(batch, &mut state)
                .unwrap();
            assert_eq!(from_packed, from_process, "{config}");
        }
    }

    #[test]
    fn count_mode_emits_each_word_with_its_running_count() {
        let mut state = State::in_memory();
        let mut pipe = WordCount::init(r#"{"mode": "count"}"#).unwrap();
        let out = pipe
            .process(
                Batch::new(vec![
                    Event::new("kalo mire kalo").with_timestamp(7),
                    Event::new("mire tup"),
                ]),
                &mut state,
            )
            .unwrap();
        assert_eq!(
            values(&out),
            ["kalo 1", "mire 1", "kalo 2", "mire 2", "tup 1"]
        );
        assert_eq!(out[0].key_str(), Some("kalo"));
        assert_eq!(out[0].timestamp, Some(7));
        assert_eq!(out[3].timestamp, None);
        // The count carries over to the next batch through state.
        let out = pipe
            .process(Batch::new(vec![Event::new("kalo")]), &mut state)
            .unwrap();
        assert_eq!(values(&out), ["kalo 3"]);
        assert_eq!(state.get_i64("kalo").unwrap(), Some(3));
        assert_eq!(state.get_i64("tup").unwrap(), Some(1));
    }

    #[test]
    fn count_is_the_default_mode() {
        let mut pipe = WordCount::init("{}").unwrap();
        let out = pipe
            .process(
                Batch::new(vec![Event::new("ab ab")]),
                &mut State::in_memory(),
            )
            .unwrap();
        assert_eq!(values(&out), ["ab 1", "ab 2"]);
    }

    #[test]
    fn window_mode_counts_the_batch_in_word_order() {
        let mut state = State::in_memory();
        let mut pipe = WordCount::init(r#"{"mode": "window"}"#).unwrap();
        let batch = Batch {
            events: vec![Event::new("to be or"), Event::new("not to be")],
            window: Some(WindowInfo {
                start: 0,
                end: 1000,
                key: None,
            }),
        };
        let out = pipe.process(batch, &mut state).unwrap();
        assert_eq!(values(&out), ["be 2", "not 1", "or 1", "to 2"]);
        assert_eq!(out[0].key_str(), Some("be"));
        assert!(out.iter().all(|e| e.timestamp == Some(1000)));
        // Window mode keeps nothing in state.
        assert!(state.entries().is_empty());
    }

    #[test]
    fn window_mode_refuses_a_batch_outside_a_window() {
        let mut pipe = WordCount::init(r#"{"mode": "window"}"#).unwrap();
        assert!(pipe
            .process(Batch::new(vec![Event::new("a")]), &mut State::in_memory())
            .is_err());
    }

    #[test]
    fn refuses_an_unknown_mode_or_field() {
        assert!(WordCount::init(r#"{"mode": "sum"}"#).is_err());
        assert!(WordCount::init(r#"{"modes": "count"}"#).is_err());
    }
}
