//! Counts events per key in state, for crash tests: each event's value is a
//! decimal id; its key is `id % keys`; the pipe adds 1 to the key's counter
//! and emits `<id> <key> <count>`.
//!
//! Config: `{"keys": 7}` (default 10).

use plumber_guest::{parse_config, Batch, Event, Pipe, PipeError, State};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_keys")]
    keys: u64,
}

fn default_keys() -> u64 {
    10
}

pub struct KeyCounter {
    keys: u64,
}

impl Pipe for KeyCounter {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        if config.keys == 0 {
            return Err(PipeError::new("`keys` must be at least 1"));
        }
        Ok(KeyCounter { keys: config.keys })
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut out = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.iter().enumerate() {
            let id: u64 = event
                .value_str()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    PipeError::new("the event's value is not a decimal id").at_event(index)
                })?;
            let key = id % self.keys;
            let count = state
                .add(&format!("k{key}"), 1)
                .map_err(|e| PipeError::from(e).at_event(index))?;
            out.push(Event::new(format!("{id} {key} {count}")));
        }
        Ok(out)
    }
}

plumber_guest::export_pipe!(KeyCounter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key() {
        let mut pipe = KeyCounter::init(r#"{"keys": 2}"#).unwrap();
        let mut state = State::in_memory();
        let out = pipe
            .process(
                Batch::new(["1", "2", "3"].into_iter().map(Event::new).collect()),
                &mut state,
            )
            .unwrap();
        let lines: Vec<_> = out.iter().map(|e| e.value_str().unwrap()).collect();
        assert_eq!(lines, ["1 1 1", "2 0 1", "3 1 2"]);
        assert!(KeyCounter::init(r#"{"keys": 0}"#).is_err());
        assert!(pipe
            .process(Batch::new(vec![Event::new("x")]), &mut state)
            .is_err());
    }
}
