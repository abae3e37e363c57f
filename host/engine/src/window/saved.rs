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
use crate::state::Namespace;

/// The entry of the watermark, the highest timestamp and the late count.
const META: &[u8] = b"meta";
/// The single entry of earlier versions.
const LEGACY: &[u8] = b"buffers";
/// Before the bytes of a key.
const KEYED: &[u8] = b"key/";
/// The entry of keyless events (and of an unkeyed window).
const KEYLESS: &[u8] = b"nokey";

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
