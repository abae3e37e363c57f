//! The processing-time clock of windows.
//!
//! Window bounds are milliseconds since the Unix epoch; timers are tokio
//! instants. A [`WindowClock`] ties the two together at one moment, so a
//! test can start it at a fixed epoch time and drive it with tokio's paused
//! time, and every bound it computes is exact.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Milliseconds since the Unix epoch, read through tokio's clock.
#[derive(Debug, Clone, Copy)]
pub struct WindowClock {
    base_epoch_ms: u64,
    base: Instant,
}

impl WindowClock {
    /// The wall clock.
    pub fn system() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        WindowClock::starting_at(now)
    }

    /// A clock that reads `epoch_ms` now and advances with tokio's time.
    pub fn starting_at(epoch_ms: u64) -> Self {
        WindowClock {
            base_epoch_ms: epoch_ms,
            base: Instant::now(),
        }
    }

    /// Now, in ms since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.base_epoch_ms.saturating_add(elapsed)
    }

    /// The tokio instant at which this clock reads `epoch_ms`.
    pub fn instant_at(&self, epoch_ms: u64) -> Instant {
        self.base + Duration::from_millis(epoch_ms.saturating_sub(self.base_epoch_ms))
    }
}
