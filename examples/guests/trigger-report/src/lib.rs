//! Reports each batch a window released as one event:
//! `<key>,<start>,<end>,<events>,<first value>,<last value>` (key empty
//! when none), keyed by the window's key and timestamped with its end. Put it after a window
//! with a trigger to see every fire: what the window-trigger tests compare
//! with their reference.

use plumber_guest::{Batch, Event, Pipe, PipeError, State};

pub struct TriggerReport;

impl Pipe for TriggerReport {
    fn init(_config: &str) -> Result<Self, PipeError> {
        Ok(TriggerReport)
    }

    fn process(&mut self, batch: Batch, _state: &mut State) -> Result<Vec<Event>, PipeError> {
        let window = batch.window.ok_or_else(|| {
            PipeError::new("trigger-report must follow a window: the batch has no window-info")
        })?;
        let text = |value: Option<&Event>| {
            value
                .map(|e| String::from_utf8_lossy(&e.value).into_owned())
                .unwrap_or_default()
        };
        let key = window
            .key
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        let line = format!(
            "{key},{},{},{},{},{}",
            window.start,
            window.end,
            batch.events.len(),
            text(batch.events.first()),
            text(batch.events.last()),
        );
        let event = Event::new(line).with_timestamp(window.end);
        Ok(vec![match window.key {
            Some(key) => event.with_key(key),
            None => event,
        }])
    }
}

plumber_guest::export_pipe!(TriggerReport);
