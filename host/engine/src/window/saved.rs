//! How a window's buffers are saved in the state backend, under the
//! window's [`Namespace`]: one entry per key with that key's open windows,
//! written at a checkpoint only when they changed since the last one and
//! deleted when the key has none left, plus one entry for the watermark,
//! the highest timestamp and the late count. A checkpoint so writes what
//! changed, not every open buffer.
//!
//! Earlier versions saved everything in one entry, `buffers`; it is still
//! read, and replaced by per-key entries at the next checkpoint.

use serde::{Deserialize, Serialize};

use super::buffers::{Buffer, WindowKey};
use super::plugin::TriggerSlot;
use crate::state::Namespace;

/// The entry of the watermark, the highest timestamp and the late count.
const META: &[u8] = b"meta";
/// The single entry of earlier versions.
const LEGACY: &[u8] = b"buffers";
/// Before the bytes of a key.
const KEYED: &[u8] = b"key/";
/// The entry of keyless events (and of an unkeyed window).
const KEYLESS: &[u8] = b"nokey";
/// Before the bytes of a key: its windows' trigger slots (windows with a
/// plugin trigger only).
const TRIGGER_KEYED: &[u8] = b"trigger/";
/// The trigger slots of keyless events' windows.
const TRIGGER_KEYLESS: &[u8] = b"trigger-nokey";
/// Before the bytes of a key: its pane accumulators (sliding windows with
/// an aggregate only).
const PANE_KEYED: &[u8] = b"pane/";
/// The pane accumulators of keyless events (and of an unkeyed window).
const PANE_KEYLESS: &[u8] = b"pane-nokey";

/// What a window saves besides its buffers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) max_timestamp: Option<u64>,
    pub(crate) watermark: Option<u64>,
    pub(crate) late_dropped: u64,
}

/// The single entry of earlier versions (field order is its format).
#[derive(Debug, Deserialize)]
struct Legacy {
    open: Vec<(WindowKey, Vec<Buffer>)>,
    max_timestamp: Option<u64>,
    watermark: Option<u64>,
    late_dropped: u64,
}

/// One saved entry, read back.
#[derive(Debug)]
pub(crate) enum Entry {
    Meta(Meta),
    Key(WindowKey, Vec<Buffer>),
    /// Everything, as earlier versions saved it.
    Legacy(Meta, Vec<(WindowKey, Vec<Buffer>)>),
    /// The trigger slots of one key's windows, by window start.
    Trigger(WindowKey, Vec<(u64, TriggerSlot)>),
    /// The pane accumulators of one key, by pane start.
    Panes(WindowKey, Vec<(u64, Vec<u8>)>),
}

/// The full state key of the pane accumulators of `key`.
pub(crate) fn pane_entry(namespace: &Namespace, key: &WindowKey) -> Vec<u8> {
    match key {
        Some(bytes) => [namespace.prefix(), PANE_KEYED, bytes].concat(),
        None => [namespace.prefix(), PANE_KEYLESS].concat(),
    }
}

/// The full state key of the trigger slots of `key`'s windows.
pub(crate) fn trigger_entry(namespace: &Namespace, key: &WindowKey) -> Vec<u8> {
    match key {
        Some(bytes) => [namespace.prefix(), TRIGGER_KEYED, bytes].concat(),
        None => [namespace.prefix(), TRIGGER_KEYLESS].concat(),
    }
}

/// The full state key of the entry of `key`.
pub(crate) fn key_entry(namespace: &Namespace, key: &WindowKey) -> Vec<u8> {
    let prefix = namespace.prefix();
    match key {
        Some(bytes) => {
            let mut name = Vec::with_capacity(prefix.len() + KEYED.len() + bytes.len());
            name.extend_from_slice(prefix);
            name.extend_from_slice(KEYED);
            name.extend_from_slice(bytes);
            name
        }
        None => [prefix, KEYLESS].concat(),
    }
}

/// The full state key of the meta entry.
pub(crate) fn meta_entry(namespace: &Namespace) -> Vec<u8> {
    [namespace.prefix(), META].concat()
}

/// Reads the entry saved at `full`, a key under `namespace`.
///
/// # Errors
///
/// The name or the value is not one this version (or an earlier) writes.
pub(crate) fn decode(namespace: &Namespace, full: &[u8], value: &[u8]) -> Result<Entry, String> {
    let name = full.strip_prefix(namespace.prefix()).unwrap_or(full);
    let corrupt = |e: postcard::Error| format!("entry `{}` is corrupt: {e}", shown(name));
    if name == META {
        return postcard::from_bytes(value)
            .map(Entry::Meta)
            .map_err(corrupt);
    }
    if name == LEGACY {
        let legacy: Legacy = postcard::from_bytes(value).map_err(corrupt)?;
        let meta = Meta {
            max_timestamp: legacy.max_timestamp,
            watermark: legacy.watermark,
            late_dropped: legacy.late_dropped,
        };
        return Ok(Entry::Legacy(meta, legacy.open));
    }
    let trigger_key = if name == TRIGGER_KEYLESS {
        Some(None)
    } else {
        name.strip_prefix(TRIGGER_KEYED)
            .map(|bytes| Some(bytes.to_vec()))
    };
    if let Some(key) = trigger_key {
        let slots = postcard::from_bytes(value).map_err(corrupt)?;
        return Ok(Entry::Trigger(key, slots));
    }
    let pane_key = if name == PANE_KEYLESS {
        Some(None)
    } else {
        name.strip_prefix(PANE_KEYED)
            .map(|bytes| Some(bytes.to_vec()))
    };
    if let Some(key) = pane_key {
        let panes = postcard::from_bytes(value).map_err(corrupt)?;
        return Ok(Entry::Panes(key, panes));
    }
    let key = if name == KEYLESS {
        None
    } else if let Some(bytes) = name.strip_prefix(KEYED) {
        Some(bytes.to_vec())
    } else {
        return Err(format!(
            "unexpected entry `{}` (written by a newer version?)",
            shown(name)
        ));
    };
    let buffers: Vec<Buffer> = postcard::from_bytes(value).map_err(corrupt)?;
    Ok(Entry::Key(key, buffers))
}

/// An entry's name for an error: escaped, and cut after 80 characters.
fn shown(name: &[u8]) -> String {
    let text = String::from_utf8_lossy(name);
    let mut shown: String = text
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .collect();
    if text.chars().count() > 80 {
        shown.push('…');
    }
    shown
}

/// What a saved entry of a window is, by its name (the part after the
/// window's namespace): what a tool that moves state between partitions
/// (`plumber cluster migrate`) needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedEntry<'a> {
    /// The watermark, highest timestamp and late count
    /// ([`merge_saved_meta`] combines several).
    Meta,
    /// The open windows of one key (the event key's bytes).
    Keyed(&'a [u8]),
    /// The open windows of keyless events.
    Keyless,
    /// Everything, as versions before per-key entries saved it.
    Legacy,
    /// The trigger state and timers of one key's windows (the event key's
    /// bytes): they move with the key's windows.
    TriggerKeyed(&'a [u8]),
    /// The trigger state and timers of keyless events' windows.
    TriggerKeyless,
    /// The pane accumulators of one key (the event key's bytes; sliding
    /// windows with an aggregate): they move with the key's windows.
    PaneKeyed(&'a [u8]),
    /// The pane accumulators of keyless events.
    PaneKeyless,
    /// A name this version does not write.
    Unknown,
}

/// What the entry named `name` is.
#[must_use]
pub fn saved_entry(name: &[u8]) -> SavedEntry<'_> {
    if name == META {
        SavedEntry::Meta
    } else if name == KEYLESS {
        SavedEntry::Keyless
    } else if name == LEGACY {
        SavedEntry::Legacy
    } else if let Some(key) = name.strip_prefix(KEYED) {
        SavedEntry::Keyed(key)
    } else if name == TRIGGER_KEYLESS {
        SavedEntry::TriggerKeyless
    } else if let Some(key) = name.strip_prefix(TRIGGER_KEYED) {
        SavedEntry::TriggerKeyed(key)
    } else if name == PANE_KEYLESS {
        SavedEntry::PaneKeyless
    } else if let Some(key) = name.strip_prefix(PANE_KEYED) {
        SavedEntry::PaneKeyed(key)
    } else {
        SavedEntry::Unknown
    }
}

/// The meta entry of a window that takes over the keys of windows whose
/// meta entries are `values`: the lowest watermark (no event of theirs is
/// late that was not late before), the highest timestamp and, with
/// `with_late_count`, the sum of the late counts (0 without: when the keys
/// go to several windows, one of them carries the count).
///
/// # Errors
///
/// A value is not a meta entry.
pub fn merge_saved_meta(values: &[&[u8]], with_late_count: bool) -> Result<Vec<u8>, String> {
    let mut merged = Meta::default();
    for value in values {
        let meta: Meta = postcard::from_bytes(value)
            .map_err(|e| format!("a window's meta entry is corrupt: {e}"))?;
        merged.max_timestamp = merged.max_timestamp.max(meta.max_timestamp);
        merged.watermark = match (merged.watermark, meta.watermark) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if with_late_count {
            merged.late_dropped = merged.late_dropped.saturating_add(meta.late_dropped);
        }
    }
    postcard::to_allocvec(&merged).map_err(|e| format!("cannot encode a window's meta entry: {e}"))
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    fn meta(max_timestamp: Option<u64>, watermark: Option<u64>, late_dropped: u64) -> Vec<u8> {
        postcard::to_allocvec(&Meta {
            max_timestamp,
            watermark,
            late_dropped,
        })
        .unwrap()
    }

    #[test]
    fn merged_meta_keeps_the_lowest_watermark_and_the_highest_time() {
        let values = [
            meta(Some(900), Some(400), 2),
            meta(Some(700), Some(200), 3),
            meta(None, None, 0),
        ];
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let merged: Meta = postcard::from_bytes(&merge_saved_meta(&values, true).unwrap()).unwrap();
        assert_eq!(
            merged,
            Meta {
                max_timestamp: Some(900),
                watermark: Some(200),
                late_dropped: 5
            }
        );
        let without: Meta =
            postcard::from_bytes(&merge_saved_meta(&values, false).unwrap()).unwrap();
        assert_eq!(without.late_dropped, 0);
        assert!(
            merge_saved_meta(&[b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"], true).is_err()
        );
    }

    #[test]
    fn entries_are_told_apart_by_name() {
        assert_eq!(saved_entry(b"meta"), SavedEntry::Meta);
        assert_eq!(saved_entry(b"key/u7"), SavedEntry::Keyed(b"u7"));
        assert_eq!(saved_entry(b"nokey"), SavedEntry::Keyless);
        assert_eq!(saved_entry(b"buffers"), SavedEntry::Legacy);
        assert_eq!(saved_entry(b"trigger/u7"), SavedEntry::TriggerKeyed(b"u7"));
        assert_eq!(saved_entry(b"pane/u7"), SavedEntry::PaneKeyed(b"u7"));
        assert_eq!(saved_entry(b"pane-nokey"), SavedEntry::PaneKeyless);
        assert_eq!(saved_entry(b"trigger-nokey"), SavedEntry::TriggerKeyless);
        assert_eq!(saved_entry(b"other"), SavedEntry::Unknown);
    }
}
