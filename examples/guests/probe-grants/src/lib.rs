//! The modes of `probe` that need WASI grants, for tests of the host's
//! grants: reading and writing files, and reading the wall clock. Using them
//! makes the whole component import `wasi:filesystem/*` and `wasi:clocks/*`,
//! so the host loads it only with those grants; they live apart from `probe`
//! so that its other modes load with none.
//!
//! Config: `{"mode": "<mode>", ...}`; the modes and their extra fields:
//!
//! - `read_file`: for each event, reads `path` (the content or `error: ...`)
//!   and tries to write `<path>.new` (`write: ok` or `write: error: ...`):
//!   two events.
//! - `time`: each event's value becomes the wall-clock time in ms since the
//!   Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use plumber_guest::{parse_config, Batch, Event, Pipe, PipeError, State};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: String,
    path: Option<String>,
}

enum Mode {
    ReadFile(String),
    Time,
}

pub struct ProbeGrants {
    mode: Mode,
}

impl Pipe for ProbeGrants {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        let mode = match config.mode.as_str() {
            "read_file" => Mode::ReadFile(
                config
                    .path
                    .ok_or_else(|| PipeError::new("mode `read_file` needs `path`"))?,
            ),
            "time" => Mode::Time,
            other => return Err(PipeError::new(format!("unknown mode `{other}`"))),
        };
        Ok(ProbeGrants { mode })
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let events = batch.events;
        match &self.mode {
            Mode::ReadFile(path) => {
                let mut out = Vec::with_capacity(events.len() * 2);
                for event in events {
                    let content =
                        std::fs::read_to_string(path).unwrap_or_else(|e| format!("error: {e}"));
                    let write = match std::fs::write(format!("{path}.new"), "x") {
                        Ok(()) => "write: ok".to_owned(),
                        Err(e) => format!("write: error: {e}"),
                    };
                    let mut first = event.clone();
                    first.value = content.into_bytes();
                    let mut second = event;
                    second.value = write.into_bytes();
                    out.push(first);
                    out.push(second);
                }
                Ok(out)
            }
            Mode::Time => {
                let ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_err(|e| PipeError::new(format!("clock before the epoch: {e}")))?
                    .as_millis()
                    .to_string();
                Ok(events
                    .into_iter()
                    .map(|mut event| {
                        event.value = ms.clone().into_bytes();
                        event
                    })
                    .collect())
            }
        }
    }
}

plumber_guest::export_pipe!(ProbeGrants);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(config: &str, values: &[&str]) -> Vec<Event> {
        let mut pipe = ProbeGrants::init(config).unwrap();
        let events = values.iter().map(|v| Event::new(*v)).collect();
        pipe.process(Batch::new(events), &mut State::in_memory())
            .unwrap()
    }

    #[test]
    fn time_gives_ms_since_the_epoch() {
        let out = run(r#"{"mode": "time"}"#, &["a", "b"]);
        assert_eq!(out.len(), 2);
        for event in &out {
            let ms: u128 = std::str::from_utf8(&event.value).unwrap().parse().unwrap();
            // Later than 2020-01-01.
            assert!(ms > 1_577_836_800_000);
        }
    }

    #[test]
    fn read_file_reads_and_writes() {
        let dir = std::env::temp_dir().join(format!("probe-grants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.txt");
        std::fs::write(&path, "hello").unwrap();
        let config = serde_json::json!({"mode": "read_file", "path": path}).to_string();
        let out = run(&config, &["go"]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value, b"hello");
        assert_eq!(out[1].value, b"write: ok");
        assert_eq!(
            std::fs::read_to_string(dir.join("in.txt.new")).unwrap(),
            "x"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        let out = run(&config, &["go"]);
        assert!(out[0].value.starts_with(b"error: "));
        assert!(out[1].value.starts_with(b"write: error: "));
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(ProbeGrants::init(r#"{"mode": "nope"}"#).is_err());
        assert!(ProbeGrants::init(r#"{"mode": "read_file"}"#).is_err());
        assert!(ProbeGrants::init(r#"{"mode": "spin"}"#).is_err());
        assert!(ProbeGrants::init(r#"{"mode": "time", "copies": 3}"#).is_err());
    }
}
