//! Splits each event's value into words: one event per word, keyed by the
//! word (lower-cased, punctuation trimmed), carrying the input's timestamp.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct Split;

impl Pipe for Split {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(Split)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let mut out = Vec::new();
        for event in &batch.events {
            let text = String::from_utf8_lossy(&event.value);
            for word in text.split_whitespace() {
                let word = word
                    .trim_matches(|c: char| !c.is_alphanumeric())
                    .to_lowercase();
                if word.is_empty() {
                    continue;
                }
                out.push(Event {
                    key: Some(word.clone().into_bytes()),
                    value: word.into_bytes(),
                    timestamp: event.timestamp,
                    headers: Vec::new(),
                });
            }
        }
        Ok(out)
    }
}

plumber_guest::export_pipe!(Split);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_normalises_words() {
        let mut pipe = Split::init("{}").unwrap();
        let out = pipe
            .process(
                Batch::new(vec![Event::new("The cat, the HAT.")]),
                &mut State::in_memory(),
            )
            .unwrap();
        let words: Vec<_> = out.iter().map(|e| e.key_str().unwrap()).collect();
        assert_eq!(words, ["the", "cat", "the", "hat"]);
    }
}
