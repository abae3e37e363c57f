//! A window trigger that misbehaves on request, for tests of how the host
//! handles a failing trigger. Otherwise it fires every `every` events of a
//! window (from the summary's count), as `trigger-early` does.
//!
//! Config: `{"every": 5, "faults": true, "big_bytes": 2048}`. With
//! `"faults": true` (the default) an event whose value starts with
//!
//! - `trap` makes it trap (a Rust panic aborts into `unreachable`);
//! - `spin` makes it loop forever (its time limit stops it);
//! - `grow` makes it allocate until its memory limit stops it;
//! - `error` makes it return a `pipe-error`;
//! - `past` makes its answer ask for an event-time timer at 0 (in the past);
//! - `big` makes its answer set a trigger state of `big_bytes` bytes;
//! - `short` makes it answer nothing for the whole call.
//!
//! With `"faults": false` those values are plain events: the trigger as it
//! would be once fixed, for a restart that must give the exact output.
//! `on-timer` answers `continue`.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "trigger",
    path: "../../../wit",
});

use plumber::pipe::trigger_types::{Decision, TimeDomain, TimerRequest};
use serde::Deserialize;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    every: u32,
    faults: bool,
    big_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            every: 5,
            faults: true,
            big_bytes: 2048,
        }
    }
}

static EVERY: AtomicU32 = AtomicU32::new(5);
static FAULTS: AtomicBool = AtomicBool::new(true);
static BIG_BYTES: AtomicUsize = AtomicUsize::new(2048);

fn error(message: String) -> PipeError {
    PipeError {
        message,
        retryable: false,
        event_index: None,
    }
}

struct TriggerFaulty;

impl Guest for TriggerFaulty {
    fn init(config: String) -> Result<TriggerOptions, PipeError> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| error(format!("bad config: {e}")))?;
        if config.every == 0 {
            return Err(error("`every` must be at least 1".to_owned()));
        }
        EVERY.store(config.every, Ordering::Relaxed);
        FAULTS.store(config.faults, Ordering::Relaxed);
        BIG_BYTES.store(config.big_bytes, Ordering::Relaxed);
        Ok(TriggerOptions { fire_at_end: true })
    }

    fn on_events(calls: Vec<TriggerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        let every = EVERY.load(Ordering::Relaxed);
        let faults = FAULTS.load(Ordering::Relaxed);
        let mut answers = Vec::with_capacity(calls.len());
        for call in calls {
            let mut answer = TriggerAnswer {
                decision: if call.window.count % every == 0 {
                    Decision::Fire
                } else {
                    Decision::Continue
                },
                state: call.window.state,
                timer: None,
            };
            let value = call.event.value.as_slice();
            if faults {
                if value.starts_with(b"trap") {
                    panic!("asked to trap");
                } else if value.starts_with(b"spin") {
                    spin();
                } else if value.starts_with(b"grow") {
                    exhaust_memory();
                } else if value.starts_with(b"error") {
                    return Err(error("asked to fail".to_owned()));
                } else if value.starts_with(b"past") {
                    answer.timer = Some(TimerRequest {
                        domain: TimeDomain::Event,
                        at: 0,
                    });
                } else if value.starts_with(b"big") {
                    answer.state = Some(vec![7; BIG_BYTES.load(Ordering::Relaxed)]);
                } else if value.starts_with(b"short") {
                    return Ok(Vec::new());
                }
            }
            answers.push(answer);
        }
        Ok(answers)
    }

    fn on_timer(calls: Vec<TimerCall>) -> Result<Vec<TriggerAnswer>, PipeError> {
        Ok(calls
            .into_iter()
            .map(|call| TriggerAnswer {
                decision: Decision::Continue,
                state: call.window.state,
                timer: None,
            })
            .collect())
    }
}

/// Loops forever; `black_box` keeps the optimiser from removing the loop.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = core::hint::black_box(n).wrapping_add(1);
    }
}

/// Allocates and touches 1 MiB blocks, freeing none, until allocation
/// fails and the allocator aborts.
fn exhaust_memory() -> ! {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; 1 << 20];
        for page in block.chunks_mut(4096) {
            page[0] = 1;
        }
        hoard.push(block);
        core::hint::black_box(&hoard);
    }
}

export!(TriggerFaulty);
