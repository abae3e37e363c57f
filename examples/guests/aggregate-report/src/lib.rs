//! A window aggregator that reports each window as one event, the line
//! `trigger-report` writes for a buffering window's batch:
//! `<key>,<start>,<end>,<events>,<first value>,<last value>` (key empty
//! when none), keyed by the window's key and timestamped with its end. A
//! window so gives the same line aggregated as buffered, from an
//! accumulator of a few bytes instead of its events.
//!
//! "First" and "last" are by timestamp (ties: by arrival), the order in
//! which a session window in event time keeps its events; for events that
//! come in time order it is also the arrival order of every other window.
//! Partial accumulators (panes, merged sessions) cover separate spans of
//! time, so merging them in order keeps that order.
//!
//! The accumulator: `count` (u64), then the first and the last event as
//! `timestamp` (u64; 0 without one), value length (u32) and value, all
//! little-endian.
//!
//! Config (for the failure tests): `{"fail_on": "v"}` makes `add` return an
//! error for an event whose value is `v`; `{"trap_on": "v"}` makes it trap.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "aggregator",
    path: "../../../wit",
});

use serde::Deserialize;
use std::sync::Mutex;

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    fail_on: Option<String>,
    trap_on: Option<String>,
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn error(message: String) -> PipeError {
    PipeError {
        message,
        retryable: false,
        event_index: None,
    }
}

/// One end of a window: an event's timestamp and value.
#[derive(Clone)]
struct End {
    time: u64,
    value: Vec<u8>,
}

struct Report {
    count: u64,
    first: End,
    last: End,
}

impl Report {
    fn of(event: &Event) -> Report {
        let end = End {
            time: event.timestamp.unwrap_or(0),
            value: event.value.clone(),
        };
        Report {
            count: 1,
            first: end.clone(),
            last: end,
        }
    }

    fn add(&mut self, event: &Event) {
        let time = event.timestamp.unwrap_or(0);
        self.count += 1;
        if time < self.first.time {
            self.first = End {
                time,
                value: event.value.clone(),
            };
        }
        if time >= self.last.time {
            self.last = End {
                time,
                value: event.value.clone(),
            };
        }
    }

    /// `self` then `later` (a window that starts later).
    fn merge(&mut self, later: Report) {
        self.count += later.count;
        if later.first.time < self.first.time {
            self.first = later.first;
        }
        if later.last.time >= self.last.time {
            self.last = later.last;
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.first.value.len() + self.last.value.len());
        out.extend_from_slice(&self.count.to_le_bytes());
        for end in [&self.first, &self.last] {
            out.extend_from_slice(&end.time.to_le_bytes());
            out.extend_from_slice(&(end.value.len() as u32).to_le_bytes());
            out.extend_from_slice(&end.value);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Report, PipeError> {
        let mut reader = Reader { bytes, at: 0 };
        let count = reader.u64()?;
        let first = reader.end()?;
        let last = reader.end()?;
        Ok(Report { count, first, last })
    }
}

/// Reads an accumulator front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PipeError> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .ok_or_else(|| error(format!("corrupt accumulator ({} bytes)", self.bytes.len())))?;
        self.at += n;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64, PipeError> {
        let mut word = [0; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn end(&mut self) -> Result<End, PipeError> {
        let time = self.u64()?;
        let mut len = [0; 4];
        len.copy_from_slice(self.take(4)?);
        let value = self.take(u32::from_le_bytes(len) as usize)?.to_vec();
        Ok(End { time, value })
    }
}

struct AggregateReport;

impl Guest for AggregateReport {
    fn init(config: String) -> Result<(), PipeError> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| error(format!("bad config: {e}")))?;
        *CONFIG
            .lock()
            .map_err(|_| error("config lock poisoned".to_owned()))? = Some(config);
        Ok(())
    }

    fn add(calls: Vec<AddCall>) -> Result<Vec<Vec<u8>>, PipeError> {
        let config = CONFIG
            .lock()
            .map_err(|_| error("config lock poisoned".to_owned()))?;
        let (fail_on, trap_on) = match config.as_ref() {
            Some(c) => (c.fail_on.as_deref(), c.trap_on.as_deref()),
            None => (None, None),
        };
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let mut report = match &call.accumulator {
                Some(bytes) => Some(Report::decode(bytes)?),
                None => None,
            };
            for event in &call.events {
                if fail_on.is_some_and(|v| v.as_bytes() == event.value) {
                    return Err(error(format!(
                        "refused the event `{}`",
                        String::from_utf8_lossy(&event.value)
                    )));
                }
                if trap_on.is_some_and(|v| v.as_bytes() == event.value) {
                    panic!("trapped on purpose");
                }
                match report.as_mut() {
                    Some(report) => report.add(event),
                    None => report = Some(Report::of(event)),
                }
            }
            let report = report.ok_or_else(|| error("an add call with no event".to_owned()))?;
            out.push(report.encode());
        }
        Ok(out)
    }

    fn merge(calls: Vec<MergeCall>) -> Result<Vec<Vec<u8>>, PipeError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let mut parts = call.accumulators.iter();
            let first = parts
                .next()
                .ok_or_else(|| error("a merge call with no accumulator".to_owned()))?;
            let mut report = Report::decode(first)?;
            for part in parts {
                report.merge(Report::decode(part)?);
            }
            out.push(report.encode());
        }
        Ok(out)
    }

    fn emit(calls: Vec<EmitCall>) -> Result<Vec<Vec<Event>>, PipeError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let report = Report::decode(&call.accumulator)?;
            let window = call.window;
            let key = window
                .key
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let line = format!(
                "{key},{},{},{},{},{}",
                window.start,
                window.end,
                report.count,
                String::from_utf8_lossy(&report.first.value),
                String::from_utf8_lossy(&report.last.value),
            );
            out.push(vec![Event {
                key: window.key.clone(),
                value: line.into_bytes(),
                timestamp: Some(window.end),
                headers: Vec::new(),
            }]);
        }
        Ok(out)
    }
}

export!(AggregateReport);
