//! Version 2 of the state-migration test pipe (`migrating-pipe`, state
//! version `2`): the counts of `migrate-v1`, stored as 8-byte
//! little-endian integers, and a `migrate` that converts version `1`'s
//! decimal text.
//!
//! Its config (the pipe's, shared with `migrate-v1`, which ignores it)
//! can slow or break the migration for tests:
//! - `"migrate_spin": N`: N rounds of busy work per key migrated;
//! - `"migrate_fail_on": "KEY"`: `migrate` returns an error at that key;
//! - `"migrate_trap_on": "KEY"`: `migrate` traps (panics) at that key.
//!
//! Each `migrate` call logs `migrate batch` (with its first key) at info.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "migrating-pipe",
    path: "../../../wit",
});

mod count;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use plumber::pipe::log;

static SPIN: AtomicU64 = AtomicU64::new(0);
static FAIL_ON: Mutex<Option<String>> = Mutex::new(None);
static TRAP_ON: Mutex<Option<String>> = Mutex::new(None);

/// The string value of `"name": "..."` in a flat JSON object, if any.
fn string_field(config: &str, name: &str) -> Option<String> {
    let at = config.find(&format!("\"{name}\""))?;
    let rest = &config[at + name.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// The integer value of `"name": N` in a flat JSON object, if any.
fn number_field(config: &str, name: &str) -> Option<u64> {
    let at = config.find(&format!("\"{name}\""))?;
    let rest = &config[at + name.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct CountLe;

impl Guest for CountLe {
    fn init(config: String) -> Result<(), PipeError> {
        SPIN.store(
            number_field(&config, "migrate_spin").unwrap_or(0),
            Ordering::Relaxed,
        );
        *FAIL_ON.lock().unwrap_or_else(|e| e.into_inner()) =
            string_field(&config, "migrate_fail_on");
        *TRAP_ON.lock().unwrap_or_else(|e| e.into_inner()) =
            string_field(&config, "migrate_trap_on");
        Ok(())
    }

    fn process(batch: Batch) -> Result<Vec<Event>, PipeError> {
        count::count(batch)
    }

    fn state_version() -> String {
        "2".to_owned()
    }

    fn migrate(
        from_version: String,
        batch: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, PipeError> {
        if from_version != "1" {
            return Err(PipeError {
                message: format!("cannot migrate state of version `{from_version}`"),
                retryable: false,
                event_index: None,
            });
        }
        let first = batch
            .first()
            .map(|(key, _)| key.clone())
            .unwrap_or_default();
        log::log(
            log::Level::Info,
            "migrate batch",
            &[
                ("first".to_owned(), first),
                ("keys".to_owned(), batch.len().to_string()),
            ],
        );
        let spin = SPIN.load(Ordering::Relaxed);
        let fail_on = FAIL_ON.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let trap_on = TRAP_ON.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::with_capacity(batch.len());
        for (key, value) in batch {
            if fail_on.as_deref() == Some(key.as_str()) {
                return Err(PipeError {
                    message: format!("refusing to migrate key `{key}`"),
                    retryable: false,
                    event_index: None,
                });
            }
            if trap_on.as_deref() == Some(key.as_str()) {
                panic!("trapping at key `{key}`");
            }
            let mut work = 0u64;
            for round in 0..spin {
                work = std::hint::black_box(work.wrapping_mul(31).wrapping_add(round));
            }
            std::hint::black_box(work);
            let text = String::from_utf8(value).map_err(|e| PipeError {
                message: format!("key `{key}` is not decimal text: {e}"),
                retryable: false,
                event_index: None,
            })?;
            let n: u64 = text.parse().map_err(|e| PipeError {
                message: format!("key `{key}` is not a decimal count `{text}`: {e}"),
                retryable: false,
                event_index: None,
            })?;
            out.push((key, Some(n.to_le_bytes().to_vec())));
        }
        Ok(out)
    }
}

export!(CountLe);
