//! The conformance pipes in Rust: the same four behaviours written in every
//! guest language (`examples/conformance/{go,python,js}`), selected by the
//! config `{"pipe": "transform" | "counter" | "aggregate" | "fail"}`. The
//! conformance suite (`tests/tests/conformance.rs`) runs each language's
//! component through the same pipelines and asserts identical outputs and
//! state.

use plumber_guest::{parse_config, Batch, Event, Pipe, PipeError, State};
use serde::Deserialize;

#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    pipe: String,
}

enum Behaviour {
    Transform,
    Counter,
    Aggregate,
    Fail,
}

pub struct Conformance {
    behaviour: Behaviour,
}

impl Pipe for Conformance {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = parse_config(config)?;
        let behaviour = match config.pipe.as_str() {
            "transform" => Behaviour::Transform,
            "counter" => Behaviour::Counter,
            "aggregate" => Behaviour::Aggregate,
            "fail" => Behaviour::Fail,
            other => return Err(PipeError::new(format!("unknown pipe \"{other}\""))),
        };
        Ok(Conformance { behaviour })
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        match self.behaviour {
            Behaviour::Transform => Ok(batch
                .events
                .into_iter()
                .map(|mut event| {
                    event.value.make_ascii_uppercase();
                    event
                })
                .collect()),
            Behaviour::Counter => {
                // One `add-many` for the batch (in order: a value repeated in
                // the batch sees the additions before it), as the Go, Python
                // and JavaScript counters do. The state key is the value as
                // text; the output key is the value's bytes as they came.
                let texts: Vec<String> = batch
                    .events
                    .iter()
                    .map(|event| String::from_utf8_lossy(&event.value).into_owned())
                    .collect();
                let ops: Vec<(&str, i64)> = texts.iter().map(|text| (text.as_str(), 1)).collect();
                let counts = state.add_many(&ops)?;
                Ok(batch
                    .events
                    .into_iter()
                    .zip(texts.iter().zip(counts))
                    .map(|(event, (text, n))| Event {
                        key: Some(event.value.clone()),
                        value: format!("{text}={n}").into_bytes(),
                        ..event
                    })
                    .collect())
            }
            Behaviour::Aggregate => aggregate(batch, state),
            Behaviour::Fail => {
                if let Some(index) = batch.events.iter().position(|e| e.value == b"bad") {
                    return Err(PipeError::new(format!("bad event at {index}")).at_event(index));
                }
                Ok(batch.events)
            }
        }
    }
}

fn aggregate(batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
    let (start, end) = batch.window.as_ref().map_or((0, 0), |w| (w.start, w.end));
    // Distinct values (as bytes) in order of first appearance, with counts.
    let mut counts: Vec<(&[u8], u64)> = Vec::new();
    for event in &batch.events {
        match counts
            .iter_mut()
            .find(|(v, _)| *v == event.value.as_slice())
        {
            Some((_, count)) => *count += 1,
            None => counts.push((&event.value, 1)),
        }
    }
    let mut out = Vec::with_capacity(counts.len());
    for (value, count) in counts {
        let text = String::from_utf8_lossy(value);
        let before = match state.get(&text)? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .parse::<u64>()
                .map_err(|_| {
                    PipeError::new(format!("stored total of \"{text}\" is not a number"))
                })?,
            None => 0,
        };
        let total = before + count;
        state.set(&text, total.to_string().as_bytes())?;
        out.push(
            Event::new(format!("{start}:{end}:{text}:{count}:{total}")).with_key(value.to_vec()),
        );
    }
    Ok(out)
}

plumber_guest::export_pipe!(Conformance);

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_guest::WindowInfo;

    fn run(pipe: &str, values: &[&str], state: &mut State) -> Result<Vec<String>, PipeError> {
        let mut conformance = Conformance::init(&format!(r#"{{"pipe":"{pipe}"}}"#))?;
        let events = values.iter().map(|v| Event::new(*v)).collect();
        let mut batch = Batch::new(events);
        if pipe == "aggregate" {
            batch.window = Some(WindowInfo {
                start: 10,
                end: 20,
                key: None,
            });
        }
        Ok(conformance
            .process(batch, state)?
            .into_iter()
            .map(|e| String::from_utf8(e.value).unwrap())
            .collect())
    }

    #[test]
    fn the_four_behaviours() {
        let mut state = State::in_memory();
        assert_eq!(
            run("transform", &["abc", "Ü-x"], &mut state).unwrap(),
            ["ABC", "Ü-X"]
        );
        assert_eq!(
            run("counter", &["ada", "bob", "ada"], &mut state).unwrap(),
            ["ada=1", "bob=1", "ada=2"]
        );
        let mut state = State::in_memory();
        assert_eq!(
            run("aggregate", &["x", "y", "x"], &mut state).unwrap(),
            ["10:20:x:2:2", "10:20:y:1:1"]
        );
        assert_eq!(
            run("aggregate", &["x"], &mut state).unwrap(),
            ["10:20:x:1:3"]
        );
        let error = run("fail", &["ok", "bad"], &mut state).unwrap_err();
        assert_eq!(error.message, "bad event at 1");
        assert_eq!(error.event_index, Some(1));
        assert!(!error.retryable);
        assert_eq!(
            Conformance::init(r#"{"pipe":"nope"}"#)
                .err()
                .unwrap()
                .message,
            "unknown pipe \"nope\""
        );
        assert_eq!(
            Conformance::init("{}").err().unwrap().message,
            "unknown pipe \"\""
        );
    }
}
