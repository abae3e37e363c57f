//! The logic shared by `swap-v1`, `swap-v2` and `swap-v3`, which include this
//! file by path so that the three versions differ only in their `VERSION`
//! (and in whether `init` succeeds).

use plumber_guest::{Batch, Event, PipeError, State};

/// Counts each event's value in state and replaces the value with
/// `<version>:<value>:<count>`; key, headers and timestamp are kept.
pub fn count(version: &str, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
    let mut out = Vec::with_capacity(batch.events.len());
    for (index, mut event) in batch.events.into_iter().enumerate() {
        let value = event
            .value_str()
            .ok_or_else(|| PipeError::new("the event's value is not UTF-8").at_event(index))?
            .to_owned();
        let n = state
            .add(&value, 1)
            .map_err(|e| PipeError::from(e).at_event(index))?;
        event.value = format!("{version}:{value}:{n}").into_bytes();
        out.push(event);
    }
    Ok(out)
}
