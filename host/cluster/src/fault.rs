//! Fault points of the cluster's commands: testing aids that make a rare
//! timing happen on purpose, each switched on only by its environment
//! variable (docs/cluster.md, "Fault points"). Never set them in
//! production.

use std::time::Duration;

/// The fault point that holds a starting worker for `<ms>` between its
/// check that no process answers its id's ping and its own first answer
/// there (a testing aid: two processes started with one id both pass that
/// check, as they would if started at the same moment).
pub const HOLD_AFTER_ID_CHECK: &str = "PLUMBER_FAULT_HOLD_AFTER_ID_CHECK";

/// Waits the milliseconds the fault point `variable` says, if it is set,
/// logging `what`.
pub(crate) async fn hold(variable: &str, what: &str) {
    let Ok(value) = std::env::var(variable) else {
        return;
    };
    match value.parse::<u64>() {
        Ok(ms) => {
            tracing::warn!(
                hold_ms = ms,
                "fault point {variable}: {what} (a testing aid)"
            );
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Err(_) => tracing::error!("{variable} ignored: `{value}` is not milliseconds"),
    }
}
