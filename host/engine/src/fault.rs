//! Fault points: testing aids that make a rare timing happen on purpose,
//! each switched on only by an environment variable read once per process
//! (unset, a fault point costs one check of a value read at start).
//!
//! | variable | what it does |
//! | --- | --- |
//! | `PLUMBER_FAULT_HOLD_BEFORE_COMMIT=<pipeline>:<ms>` | the first checkpoint of pipeline `<pipeline>` (exact name, e.g. `keys#p05`) waits `<ms>` between the barrier's reply (every stage and the sink done) and the commit, once per process: long enough for another worker to take the partition over, so that the held commit meets the new owner's fence |
//! | `PLUMBER_FAULT_HOLD_BEFORE_SWITCH=<ms>` | `plumber cluster migrate` waits `<ms>` between its last check that no producer publishes and the switch of the stream (read by `plumber_cluster::migrate`), so that a test can publish in between |
//!
//! Never set them in production: they exist for the fault tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The variable of the hold between barrier and commit.
pub const HOLD_BEFORE_COMMIT: &str = "PLUMBER_FAULT_HOLD_BEFORE_COMMIT";

/// A parsed `PLUMBER_FAULT_HOLD_BEFORE_COMMIT`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HoldBeforeCommit {
    pipeline: String,
    hold: Duration,
}

/// Parses `<pipeline>:<ms>` (the last `:` separates them).
fn parse_hold(value: &str) -> Result<HoldBeforeCommit, String> {
    let (pipeline, ms) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("`{value}` is not `<pipeline>:<ms>`"))?;
    if pipeline.is_empty() {
        return Err(format!("`{value}` names no pipeline before the `:`"));
    }
    let ms: u64 = ms
        .parse()
        .map_err(|_| format!("`{ms}` in `{value}` is not a number of milliseconds"))?;
    Ok(HoldBeforeCommit {
        pipeline: pipeline.to_owned(),
        hold: Duration::from_millis(ms),
    })
}

/// The hold configured for this process, read once.
fn hold_config() -> Option<&'static HoldBeforeCommit> {
    static HOLD: OnceLock<Option<HoldBeforeCommit>> = OnceLock::new();
    HOLD.get_or_init(|| {
        let value = std::env::var(HOLD_BEFORE_COMMIT).ok()?;
        match parse_hold(&value) {
            Ok(hold) => {
                tracing::warn!(
                    pipeline = %hold.pipeline, hold_ms = hold.hold.as_millis() as u64,
                    "fault point {HOLD_BEFORE_COMMIT} is set: a testing aid, never for production"
                );
                Some(hold)
            }
            Err(message) => {
                tracing::error!("{HOLD_BEFORE_COMMIT} ignored: {message}");
                None
            }
        }
    })
    .as_ref()
}

/// Whether the hold fired already (it fires once per process).
static HOLD_FIRED: AtomicBool = AtomicBool::new(false);

/// The fault point between a checkpoint's barrier and its commit: waits
/// when `PLUMBER_FAULT_HOLD_BEFORE_COMMIT` names `pipeline` and has not
/// fired yet in this process; returns at once otherwise.
pub(crate) async fn hold_before_commit(pipeline: &str, epoch: u64) {
    let Some(hold) = hold_config() else {
        return;
    };
    if hold.pipeline != pipeline || HOLD_FIRED.swap(true, Ordering::SeqCst) {
        return;
    }
    tracing::warn!(
        pipeline,
        epoch,
        hold_ms = hold.hold.as_millis() as u64,
        at_us = now_us(),
        "fault point: holding the commit"
    );
    tokio::time::sleep(hold.hold).await;
    tracing::warn!(
        pipeline,
        epoch,
        at_us = now_us(),
        "fault point: commit released"
    );
}

/// Microseconds since the Unix epoch, for tests that compare log lines of
/// several processes on one machine.
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as u64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_names_a_pipeline_and_milliseconds() {
        assert_eq!(
            parse_hold("keys#p05:3000"),
            Ok(HoldBeforeCommit {
                pipeline: "keys#p05".into(),
                hold: Duration::from_millis(3000)
            })
        );
        // The last `:` separates: a name may contain one.
        assert_eq!(
            parse_hold("a:b:7").map(|h| h.pipeline),
            Ok("a:b".to_owned())
        );
        assert!(parse_hold("keys#p05")
            .unwrap_err()
            .contains("<pipeline>:<ms>"));
        assert!(parse_hold(":10").unwrap_err().contains("names no pipeline"));
        assert!(parse_hold("p:soon").unwrap_err().contains("`soon`"));
    }
}
