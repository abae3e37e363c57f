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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let tries = Cell::new(0);
        let held = wait_until(Duration::from_secs(10), || {
            tries.set(tries.get() + 1);
            tries.get() == 3
        });
        assert!(held);
        assert_eq!(tries.get(), 3);
    }

    #[test]
    fn says_false_when_the_timeout_passes() {
        let started = std::time::Instant::now();
        assert!(!wait_until(Duration::from_millis(50), || false));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_on_tokios_clock_when_async() {
        let started = tokio::time::Instant::now();
        let held = wait_until_async(Duration::from_secs(5), || {
            std::future::ready(started.elapsed() >= Duration::from_secs(2))
        })
        .await;
        assert!(held);
        // The paused clock moved, not the wall clock: 2 s of polls, at once.
        assert!(!wait_until_async(Duration::from_secs(3), || std::future::ready(false)).await);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }
}
