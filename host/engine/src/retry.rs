//! The one backoff policy of everything that tries again: the connectors
//! that lost their server (NATS, JetStream, SQL, the HTTP sink), the Redis
//! state backend, and a pipe's `on_error: retry`.
//!
//! Waits grow exponentially with jitter: the `n`-th wait is drawn between
//! `base(n)` and `2 × base(n)`, where `base` starts at [`RetryPolicy::first`]
//! and doubles up to [`RetryPolicy::max`]. The jitter keeps many pipelines
//! that lost the same server from retrying in lockstep. The delays come from
//! `backon`'s [`ExponentialBuilder`]; what to do between them (how long to
//! keep trying, what to log) belongs to the caller, e.g. the connectors'
//! reconnect loop, which retries until a reconnect timeout and logs once when
//! failures start and once when they stop (backon's own retry loop has no
//! room for a wall-clock deadline that also bounds each attempt, nor for a
//! "works again" line).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How waits between attempts grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The base of the first wait (the wait itself is up to twice that).
    pub first: Duration,
    /// The largest base a wait doubles up to (so no wait exceeds twice it).
    pub max: Duration,
    /// The most retries after the first attempt (`None`: as many as the
    /// caller's deadline allows).
    pub max_retries: Option<u32>,
    /// A seed for the jitter, for reproducible delays in tests (`None`:
    /// random).
    pub seed: Option<u64>,
}

/// The base of the first wait of the connectors' reconnect policy.
pub const RECONNECT_FIRST: Duration = Duration::from_millis(50);
/// The largest base of the connectors' reconnect policy: waits of at most
/// 2 s.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);

impl RetryPolicy {
    /// The connectors' policy when their server is unreachable: waits of
    /// 50–100 ms, doubling up to 1–2 s, until the reconnect timeout.
    #[must_use]
    pub const fn reconnect() -> RetryPolicy {
        RetryPolicy {
            first: RECONNECT_FIRST,
            max: RECONNECT_MAX,
            max_retries: None,
            seed: None,
        }
    }

    /// `on_error: {"retry": {"attempts": …, "backoff_ms": …}}`: `attempts`
    /// retries, the first after `backoff_ms` (plus jitter), each next base
    /// twice the one before (up to 2^20 times `backoff_ms`).
    #[must_use]
    pub fn on_error(attempts: u32, backoff_ms: u64) -> RetryPolicy {
        let first = Duration::from_millis(backoff_ms);
        RetryPolicy {
            first,
            max: first.saturating_mul(1 << 20),
            max_retries: Some(attempts),
            seed: None,
        }
    }

    /// The same policy, with at most `retries` retries.
    #[must_use]
    pub const fn max_retries(mut self, retries: u32) -> RetryPolicy {
        self.max_retries = Some(retries);
        self
    }

    /// The same policy with reproducible jitter.
    #[must_use]
    pub const fn seeded(mut self, seed: u64) -> RetryPolicy {
        self.seed = Some(seed);
        self
    }

    /// The waits before each retry, in order; ends when the retries are
    /// used up.
    #[must_use]
    pub fn delays(&self) -> Delays {
        let mut builder = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.first)
            .with_max_delay(self.max.max(self.first));
        builder = match self.max_retries {
            Some(retries) => builder.with_max_times(retries as usize),
            None => builder.without_max_times(),
        };
        if let Some(seed) = self.seed {
            builder = builder.with_jitter_seed(seed);
        }
        Delays(builder.build())
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::reconnect()
    }
}

/// The waits of one run of a [`RetryPolicy`]; start a new one (with
/// [`RetryPolicy::delays`]) after a success.
#[derive(Debug)]
pub struct Delays(<ExponentialBuilder as BackoffBuilder>::Backoff);

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wait lies between its base and twice it, the bases double from
    /// `first` up to `max`, and the run ends after `max_retries`.
    fn check_bounds(policy: RetryPolicy, waits: usize) -> Vec<Duration> {
        let delays: Vec<Duration> = policy.delays().take(waits).collect();
        // backon computes in f32 seconds: allow a microsecond of rounding.
        let slack = Duration::from_micros(1);
        let mut base = policy.first;
        for (n, delay) in delays.iter().enumerate() {
            assert!(
                *delay + slack >= base && *delay <= base * 2 + slack,
                "wait {n}: {delay:?} not within [{base:?}, {:?}]",
                base * 2
            );
            base = (base * 2).min(policy.max);
        }
        delays
    }

    #[test]
    fn reconnect_waits_stay_within_their_bounds_and_are_jittered() {
        for seed in 0..200 {
            let delays = check_bounds(RetryPolicy::reconnect().seeded(seed), 12);
            assert_eq!(delays.len(), 12, "no retry limit of its own");
            assert!(delays
                .iter()
                .all(|d| *d <= Duration::from_secs(2) + Duration::from_micros(1)));
        }
        // Jitter: two seeds do not give the same waits.
        let one: Vec<_> = RetryPolicy::reconnect()
            .seeded(1)
            .delays()
            .take(8)
            .collect();
        let two: Vec<_> = RetryPolicy::reconnect()
            .seeded(2)
            .delays()
            .take(8)
            .collect();
        assert_ne!(one, two);
        // A seed gives the same waits every time.
        let again: Vec<_> = RetryPolicy::reconnect()
            .seeded(1)
            .delays()
            .take(8)
            .collect();
        assert_eq!(one, again);
        // Unseeded runs are bounded too.
        check_bounds(RetryPolicy::reconnect(), 12);
    }

    #[test]
    fn on_error_retry_maps_attempts_and_backoff() {
        for seed in 0..50 {
            let policy = RetryPolicy::on_error(4, 100).seeded(seed);
            let delays = check_bounds(policy, 10);
            assert_eq!(delays.len(), 4, "one wait per retry, then none");
            assert!(delays[0] + Duration::from_micros(1) >= Duration::from_millis(100));
            assert!(delays[3] + Duration::from_micros(1) >= Duration::from_millis(800));
        }
        assert_eq!(RetryPolicy::on_error(0, 100).delays().count(), 0);
        // No backoff: retries at once.
        assert!(RetryPolicy::on_error(3, 0)
            .delays()
            .all(|d| d == Duration::ZERO));
    }

    #[test]
    fn a_retry_limit_ends_the_waits() {
        let delays: Vec<_> = RetryPolicy::reconnect().max_retries(2).delays().collect();
        assert_eq!(delays.len(), 2);
    }
}
