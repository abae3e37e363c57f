//! Counting with 8-byte little-endian counts, shared by `migrate-v2` and
//! `migrate-v3` (included by path).

use crate::plumber::pipe::state;
use crate::{Batch, Event, PipeError};

/// Counts each event's value (`get-many` then `set`), emitting
/// `<value> <count>` as `migrate-v1` does.
pub fn count(batch: Batch) -> Result<Vec<Event>, PipeError> {
    let failed = |message: String, index: Option<usize>| PipeError {
        message,
        retryable: false,
        event_index: index.and_then(|i| u32::try_from(i).ok()),
    };
    let keys: Vec<String> = batch
        .events
        .iter()
        .map(|event| String::from_utf8_lossy(&event.value).into_owned())
        .collect();
    let stored = state::get_many(&keys).map_err(|e| failed(format!("{e:?}"), None))?;
    // A key may repeat within the batch: counts carry over in this map (a
    // BTreeMap: a HashMap's random seed would import `wasi:random`).
    let mut counts: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut out = Vec::with_capacity(batch.events.len());
    for (index, (event, (key, stored))) in batch
        .events
        .into_iter()
        .zip(keys.iter().zip(stored))
        .enumerate()
    {
        let current = match counts.get(key.as_str()) {
            Some(n) => *n,
            None => match stored {
                None => 0,
                Some(bytes) => decode(&bytes).ok_or_else(|| {
                    failed(
                        format!("state of `{key}` is not an 8-byte count: {bytes:?}"),
                        Some(index),
                    )
                })?,
            },
        };
        let next = current + 1;
        counts.insert(key.as_str(), next);
        state::set(key, &next.to_le_bytes()).map_err(|e| failed(format!("{e:?}"), Some(index)))?;
        out.push(Event {
            value: format!("{key} {next}").into_bytes(),
            ..event
        });
    }
    Ok(out)
}

/// An 8-byte little-endian count.
pub fn decode(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
