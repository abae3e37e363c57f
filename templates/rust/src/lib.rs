//! __NAME__: a plumber pipe that counts words. For each event:
//! `n = state.add(<value>, 1)`, and out goes `"<value> <n>"` (key, timestamp
//! and headers kept).

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct WordCount;

impl Pipe for WordCount {
    fn init(_config: &str) -> Result<Self, PipeError> {
        // For a config: `let config: MyConfig = plumber_guest::parse_config(config)?;`
        Ok(WordCount)
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut out = Vec::with_capacity(batch.events.len());
        for (index, event) in batch.events.into_iter().enumerate() {
            let word = String::from_utf8_lossy(&event.value).into_owned();
            let n = state
                .add(&word, 1)
                .map_err(|e| PipeError::from(e).at_event(index))?;
            out.push(Event {
                value: format!("{word} {n}").into_bytes(),
                ..event
            });
        }
        Ok(out)
    }
}

plumber_guest::export_pipe!(WordCount);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_word() {
        let mut state = State::in_memory();
        let mut pipe = WordCount::init("{}").unwrap();
        let batch = Batch::new(["ada", "bob", "ada"].map(Event::new).to_vec());
        let out: Vec<String> = pipe
            .process(batch, &mut state)
            .unwrap()
            .into_iter()
            .map(|e| String::from_utf8(e.value).unwrap())
            .collect();
        assert_eq!(out, ["ada 1", "bob 1", "ada 2"]);
    }
}
