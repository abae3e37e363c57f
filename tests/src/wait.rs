//! Waiting for a condition instead of sleeping a fixed time before a
//! positive check: the check passes as soon as it can, and a slow machine
//! gets the whole timeout instead of failing.

use std::future::Future;
use std::time::Duration;

/// How often a condition is tried again.
const POLL: Duration = Duration::from_millis(10);

/// Tries `condition` every 10 ms until it holds (`true`) or `timeout` has
/// passed (`false`, after one last try). Blocks the thread: for tests
/// without a runtime, or in a blocking task.
#[must_use = "assert on the result: false means the condition never held"]
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// As [`wait_until`], for a condition that awaits (a query to a server, a
/// read of state); sleeps on tokio's clock between tries, so it also works
/// under a paused clock.
#[must_use = "assert on the result: false means the condition never held"]
pub async fn wait_until_async<F, C>(timeout: Duration, mut condition: C) -> bool
where
    C: FnMut() -> F,
    F: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
