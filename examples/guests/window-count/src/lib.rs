//! Aggregates a window: counts the values of the batch a window released
//! and emits one event per distinct value, `<start>-<end>\t<value>\t<count>`,
//! most frequent first (ties in value order). The window's bounds come from
//! the batch's `window-info`.

use std::collections::BTreeMap;

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct WindowCount;

impl Pipe for WindowCount {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(WindowCount)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let window = batch.window.ok_or_else(|| {
            PipeError::new("window-count must follow a window: the batch has no window-info")
        })?;
        let mut counts: BTreeMap<&[u8], u64> = BTreeMap::new();
        for event in &batch.events {
            *counts.entry(event.value.as_slice()).or_default() += 1;
        }
        let mut ranked: Vec<(&[u8], u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        Ok(ranked
            .into_iter()
            .map(|(value, count)| {
                let value = String::from_utf8_lossy(value);
                Event::new(format!("{}-{}\t{value}\t{count}", window.start, window.end))
                    .with_timestamp(window.end)
            })
            .collect())
    }
}

plumber_guest::export_pipe!(WindowCount);

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_guest::WindowInfo;

    #[test]
    fn counts_a_window_most_frequent_first() {
        let mut pipe = WindowCount::init("{}").unwrap();
        let batch = Batch {
            events: ["b", "a", "b", "c", "a", "b"]
                .into_iter()
                .map(Event::new)
                .collect(),
            window: Some(WindowInfo {
                start: 0,
                end: 10,
                key: None,
            }),
        };
        let out = pipe.process(batch, &mut State::in_memory()).unwrap();
        let lines: Vec<_> = out.iter().map(|e| e.value_str().unwrap()).collect();
        assert_eq!(lines, ["0-10\tb\t3", "0-10\ta\t2", "0-10\tc\t1"]);
    }

    #[test]
    fn refuses_a_batch_outside_a_window() {
        let mut pipe = WindowCount::init("{}").unwrap();
        assert!(pipe
            .process(Batch::new(vec![]), &mut State::in_memory())
            .is_err());
    }
}
