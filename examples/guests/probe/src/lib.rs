//! A pipe that misbehaves on request, for tests of the host's sandbox:
//! infinite loops, memory exhaustion, huge outputs, traps, state-key escapes
//! and reaching for the WASI the host always links (environment, stdio).
//! It imports no WASI interface that needs a grant (no `wasi:filesystem`,
//! `wasi:clocks`, `wasi:sockets`), so it loads with none; the modes that do
//! need grants (`read_file`, `time`) are in `probe-grants`.
//!
//! Config: `{"mode": "<mode>", ...}`; the modes and their extra fields:
//!
//! - `pass`: events pass through unchanged.
//! - `spin`: a batch with an event whose value is `spin` loops forever;
//!   other batches pass through.
//! - `alloc`: a batch with an event whose value is `alloc` allocates 1 MiB
//!   blocks, keeping them all, until the allocator aborts (a trap); other
//!   batches pass through.
//! - `huge`: each event comes out `copies` times (default 100000); with
//!   `bytes` set, a batch gives instead one event of that many `x` bytes.
//! - `trap_on`: counts every event in state under its value (`add(value, 1)`),
//!   but an event whose value equals `value` panics (a trap) first; the
//!   others pass through with the header `probe: seen`. The counts show
//!   whether the writes of a call that trapped were undone.
//! - `escape`: for each event, writes `owned` under tricky keys (`../`,
//!   NUL, namespace-like prefixes, ...) and reads them back, plus `secret`;
//!   one event per key, keyed by it, with the JSON value
//!   `{"key": k, "set": "ok" | "error: ..." | null, "get": string | null}`
//!   (and `"get_error"` when the read failed).
//! - `env`: each event's value becomes the JSON object of the environment
//!   variables the guest sees.
//! - `print`: prints each value to stdout and stderr, then passes it on.
//! - `headers`: a batch gives one event with `headers` empty headers
//!   (default 10,000,000), built without a string per header on the packed
//!   crossing; an empty batch gives nothing.
//! - `log_flood`: each batch first calls `log` `lines` times (default
//!   10,000,000), then passes its events on; with `"stdout": true` it prints
//!   the lines to stdout instead.
//! - `error`: each batch fails with a message of `bytes` `e` bytes
//!   (default 100 MB).

use std::collections::BTreeMap;

use plumber_guest::{
    parse_config, unpack, Batch, BatchReader, BatchWriter, Event, Level, Pipe, PipeError, State,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    copies: Option<u64>,
    bytes: Option<usize>,
    value: Option<String>,
    headers: Option<u64>,
    lines: Option<u64>,
    stdout: Option<bool>,
}

enum Mode {
    Pass,
    Spin,
    Alloc,
    Huge { copies: u64, bytes: Option<usize> },
    TrapOn(Vec<u8>),
    Escape,
    Env,
    Print,
    Headers(usize),
    LogFlood { lines: u64, stdout: bool },
    Error(usize),
}

pub struct Probe {
    mode: Mode,
}

/// The keys `escape` mode tries; a 300-character key is added to them.
const TRICKY_KEYS: &[&str] = &[
    "../other/secret",
    "..\\x",
    "/",
    "a/../../b",
    "\0",
    "x\0y",
    "",
    "5:other4:pipe/secret",
    "%2e%2e/secret",
    "🙂",
];

impl Pipe for Probe {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        let mode = match config.mode.as_str() {
            "pass" => Mode::Pass,
            "spin" => Mode::Spin,
            "alloc" => Mode::Alloc,
            "huge" => Mode::Huge {
                copies: config.copies.unwrap_or(100_000),
                bytes: config.bytes,
            },
            "trap_on" => Mode::TrapOn(
                config
                    .value
                    .ok_or_else(|| PipeError::new("mode `trap_on` needs `value`"))?
                    .into_bytes(),
            ),
            "escape" => Mode::Escape,
            "env" => Mode::Env,
            "print" => Mode::Print,
            "headers" => Mode::Headers(
                usize::try_from(config.headers.unwrap_or(10_000_000))
                    .map_err(|_| PipeError::new("`headers` is too large"))?,
            ),
            "log_flood" => Mode::LogFlood {
                lines: config.lines.unwrap_or(10_000_000),
                stdout: config.stdout.unwrap_or(false),
            },
            "error" => Mode::Error(config.bytes.unwrap_or(100_000_000)),
            other => return Err(PipeError::new(format!("unknown mode `{other}`"))),
        };
        Ok(Probe { mode })
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        let events = batch.events;
        match &self.mode {
            Mode::Pass => Ok(events),
            Mode::Spin => {
                if events.iter().any(|e| e.value == b"spin") {
                    spin();
                }
                Ok(events)
            }
            Mode::Alloc => {
                if events.iter().any(|e| e.value == b"alloc") {
                    exhaust_memory();
                }
                Ok(events)
            }
            Mode::Huge { bytes: Some(n), .. } => Ok(if events.is_empty() {
                Vec::new()
            } else {
                vec![Event::new(vec![b'x'; *n])]
            }),
            Mode::Huge {
                copies,
                bytes: None,
            } => {
                let copies = usize::try_from(*copies)
                    .map_err(|_| PipeError::new("`copies` is too large"))?;
                let mut out = Vec::with_capacity(events.len().saturating_mul(copies));
                for event in events {
                    out.extend(std::iter::repeat_n(event, copies));
                }
                Ok(out)
            }
            Mode::TrapOn(value) => {
                let mut out = Vec::with_capacity(events.len());
                for mut event in events {
                    if event.value == *value {
                        panic!("probe: asked to trap on this value");
                    }
                    let key = String::from_utf8_lossy(&event.value).into_owned();
                    state
                        .add(&key, 1)
                        .map_err(|e| PipeError::new(format!("state: {e:?}")))?;
                    event.headers.push(("probe".into(), "seen".into()));
                    out.push(event);
                }
                Ok(out)
            }
            Mode::Escape => {
                let mut out = Vec::new();
                for _ in &events {
                    out.extend(escape(state));
                }
                Ok(out)
            }
            Mode::Env => {
                let vars: BTreeMap<String, String> = std::env::vars_os()
                    .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
                    .collect();
                let text = json!(vars).to_string();
                Ok(with_values(events, |_| text.clone()))
            }
            Mode::Print => {
                for event in &events {
                    let value = String::from_utf8_lossy(&event.value);
                    println!("stdout: {value}");
                    eprintln!("stderr: {value}");
                }
                Ok(events)
            }
            Mode::Headers(count) => Ok(if events.is_empty() {
                Vec::new()
            } else {
                // Empty strings do not allocate: 48 bytes per header here.
                vec![Event {
                    headers: vec![(String::new(), String::new()); *count],
                    ..Event::new("headers")
                }]
            }),
            Mode::LogFlood { lines, stdout } => {
                flood(*lines, *stdout);
                Ok(events)
            }
            Mode::Error(bytes) => Err(PipeError::new("e".repeat(*bytes))),
        }
    }

    fn process_packed(
        &mut self,
        batch: BatchReader<'_>,
        out: &mut Vec<u8>,
        state: &mut State,
    ) -> Result<(), PipeError> {
        if let Mode::Headers(count) = self.mode {
            // Written straight into the answer: 8 bytes per empty header,
            // reserved at once (growing by doubling would need 1.5x).
            out.reserve(count.saturating_mul(8).saturating_add(64));
            let mut writer = BatchWriter::new(out, None);
            if !batch.is_empty() {
                let empty = ("", "");
                writer.push(None, b"headers", None, std::iter::repeat_n(empty, count));
            }
            writer.finish();
            return Ok(());
        }
        let events = self.process(unpack(&batch)?, state)?;
        let mut writer = BatchWriter::new(out, None);
        for event in &events {
            writer.push(
                event.key.as_deref(),
                &event.value,
                event.timestamp,
                event.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
        }
        writer.finish();
        Ok(())
    }
}

/// Writes `lines` log lines (through `log`, or to stdout).
fn flood(lines: u64, stdout: bool) {
    for n in 0..lines {
        if stdout {
            println!("flood line {n}");
        } else {
            plumber_guest::log(Level::Info, "flood line", &[("n", &n.to_string())]);
        }
    }
}

/// Replaces each event's value, keeping its key, headers and timestamp.
fn with_values(events: Vec<Event>, value: impl Fn(&Event) -> String) -> Vec<Event> {
    events
        .into_iter()
        .map(|mut event| {
            event.value = value(&event).into_bytes();
            event
        })
        .collect()
}

/// Loops forever; `black_box` keeps the optimiser from removing the loop.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n).wrapping_add(1);
    }
}

/// Allocates and touches 1 MiB blocks, freeing none, until allocation fails
/// and the allocator aborts.
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        hoard.push(block);
        core::hint::black_box(&hoard);
    }
}

/// Writes and reads the tricky keys (and reads `secret`); one event per key.
fn escape(state: &mut State) -> Vec<Event> {
    let long = "k".repeat(300);
    let mut keys: Vec<&str> = TRICKY_KEYS.to_vec();
    keys.push(&long);
    // All writes first, so the reads show any aliasing between keys.
    let sets: Vec<Option<String>> = keys
        .iter()
        .map(|key| {
            Some(match state.set(key, b"owned") {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error: {}", PipeError::from(e).message),
            })
        })
        .chain(std::iter::once(None))
        .collect();
    keys.push("secret");
    keys.iter()
        .zip(sets)
        .map(|(key, set)| {
            let mut report = json!({ "key": key, "set": set });
            match state.get(key) {
                Ok(value) => {
                    report["get"] = json!(value.map(|v| String::from_utf8_lossy(&v).into_owned()));
                }
                Err(e) => {
                    report["get"] = json!(null);
                    report["get_error"] = json!(PipeError::from(e).message);
                }
            }
            Event::new(report.to_string()).with_key(*key)
        })
        .collect()
}

plumber_guest::export_pipe!(Probe);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &str, values: &[&str]) -> Vec<Event> {
        let mut pipe = Probe::init(config).unwrap();
        let events = values.iter().map(|v| Event::new(*v)).collect();
        pipe.process(Batch::new(events), &mut State::in_memory())
            .unwrap()
    }

    #[test]
    fn huge_multiplies_events() {
        assert_eq!(
            run(r#"{"mode": "huge", "copies": 3}"#, &["a", "b"]).len(),
            6
        );
        assert_eq!(run(r#"{"mode": "huge"}"#, &["a"]).len(), 100_000);
        let out = run(r#"{"mode": "huge", "bytes": 10}"#, &["a", "b"]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value, b"xxxxxxxxxx");
    }

    #[test]
    fn escape_reports_every_key() {
        let out = run(r#"{"mode": "escape"}"#, &["go"]);
        assert_eq!(out.len(), TRICKY_KEYS.len() + 2);
        let secret: serde_json::Value = serde_json::from_slice(&out[out.len() - 1].value).unwrap();
        assert_eq!(secret, json!({"key": "secret", "set": null, "get": null}));
        let first: serde_json::Value = serde_json::from_slice(&out[0].value).unwrap();
        assert_eq!(first["set"], "ok");
        assert_eq!(first["get"], "owned");
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(Probe::init(r#"{"mode": "nope"}"#).is_err());
        assert!(Probe::init(r#"{"mode": "trap_on"}"#).is_err());
        // The modes that need grants live in `probe-grants`.
        assert!(Probe::init(r#"{"mode": "read_file", "path": "/x"}"#).is_err());
        assert!(Probe::init(r#"{"mode": "time"}"#).is_err());
        let out = run(r#"{"mode": "headers", "headers": 3}"#, &["a", "b"]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].headers.len(), 3);
        let mut pipe = Probe::init(r#"{"mode": "error", "bytes": 5}"#).unwrap();
        let failed = pipe.process(Batch::new(vec![Event::new("x")]), &mut State::in_memory());
        assert_eq!(failed.unwrap_err().message, "eeeee");
        assert_eq!(
            run(r#"{"mode": "trap_on", "value": "x"}"#, &["a"])[0].header("probe"),
            Some("seen")
        );
    }
}
