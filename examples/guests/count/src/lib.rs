//! Counts events per key (the event's key, or its value when it has none)
//! in state, and emits `<key><separator><count so far>` for each event.
//!
//! Config: `{"separator": " "}` (default a single space).

use plumber_guest::{log, parse_config, Batch, Event, Level, Pipe, PipeError, State};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    separator: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            separator: " ".to_owned(),
        }
    }
}

pub struct Count {
    separator: String,
}

impl Pipe for Count {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        log(
            Level::Info,
            "count ready",
            &[("separator", &config.separator)],
        );
        Ok(Count {
            separator: config.separator,
        })
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut out = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.into_iter().enumerate() {
            let name = match &event.key {
                Some(key) => String::from_utf8_lossy(key).into_owned(),
                None => String::from_utf8_lossy(&event.value).into_owned(),
            };
            let count = state
                .add(&name, 1)
                .map_err(|e| PipeError::from(e).at_event(index))?;
            let value = format!("{name}{}{count}", self.separator);
            out.push(Event {
                value: value.into_bytes(),
                key: Some(name.into_bytes()),
                ..event
            });
        }
        Ok(out)
    }
}

plumber_guest::export_pipe!(Count);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_name_in_state() {
        let mut state = State::in_memory();
        let mut pipe = Count::init("{}").unwrap();
        let out = pipe
            .process(
                Batch::new(vec![
                    Event::new("ada"),
                    Event::new("bob"),
                    Event::new("ada"),
                ]),
                &mut state,
            )
            .unwrap();
        let values: Vec<_> = out.iter().map(|e| e.value_str().unwrap()).collect();
        assert_eq!(values, ["ada 1", "bob 1", "ada 2"]);
        assert_eq!(state.get_i64("ada").unwrap(), Some(2));
    }

    #[test]
    fn refuses_unknown_config() {
        assert!(Count::init(r#"{"sep": ","}"#).is_err());
    }
}
