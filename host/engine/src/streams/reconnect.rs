//! Retrying an operation while its server is unreachable, by the one
//! [`RetryPolicy`] (waits of 50–100 ms doubling up to 1–2 s, with jitter):
//! one warning when failures start and one info line when it works again,
//! and an error naming the server once the reconnect timeout has passed
//! since the first failure (or, when a most attempts is set, once they are
//! used). Shared by everything that talks to a server: NATS, JetStream,
//! SQL, the HTTP sink and the Redis state backend.

use std::time::{Duration, Instant};

use super::StreamError;
use crate::retry::{Delays, RetryPolicy, RECONNECT_FIRST, RECONNECT_MAX};

/// How long connectors keep retrying a lost server by default.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often to look whether a lost connection is back.
pub const FIRST_BACKOFF: Duration = RECONNECT_FIRST;
/// The longest one step of talking to a server may take before it counts
/// as unreachable (the longest wait of the policy).
pub const MAX_BACKOFF: Duration = RECONNECT_MAX.saturating_mul(2);

/// Why an operation stopped retrying.
#[derive(Debug)]
pub struct GaveUp {
    /// The reconnect timeout passed (rather than the most attempts).
    pub timed_out: bool,
    /// How long, how many attempts, and the last error.
    pub message: String,
}

impl GaveUp {
    /// As the error of a source or sink.
    pub fn into_stream_error(self, stream: String, action: &'static str) -> StreamError {
        let kind = if self.timed_out {
            std::io::ErrorKind::TimedOut
        } else {
            std::io::ErrorKind::Other
        };
        StreamError::Io {
            stream,
            action,
            source: std::io::Error::new(kind, self.message),
        }
    }
}

/// The retry state of one operation.
pub struct Reconnect {
    /// The source or sink, for log lines and errors.
    stream: String,
    /// What is unreachable, e.g. "the NATS server at nats://…".
    peer: String,
    action: &'static str,
    timeout: Duration,
    started: Instant,
    first_failure: Option<Instant>,
    policy: RetryPolicy,
    delays: Delays,
    attempts: u32,
    /// The most attempts of one operation, when bounded.
    max_attempts: Option<u32>,
}

impl Reconnect {
    /// The retry state of `action` of `stream`, which talks to `peer`.
    pub fn new(
        stream: impl Into<String>,
        peer: impl Into<String>,
        action: &'static str,
        timeout: Duration,
    ) -> Self {
        Reconnect {
            stream: stream.into(),
            peer: peer.into(),
            action,
            timeout,
            started: Instant::now(),
            first_failure: None,
            policy: RetryPolicy::reconnect(),
            delays: RetryPolicy::reconnect().delays(),
            attempts: 0,
            max_attempts: None,
        }
    }

    /// Gives up after `attempts` attempts (at least 1) even within the
    /// reconnect timeout.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// Whether an attempt has failed already.
    pub fn retrying(&self) -> bool {
        self.first_failure.is_some()
    }

    /// Starts an attempt and returns the most it may take: `first` while
    /// nothing failed, then what is left of the reconnect timeout.
    pub fn attempt(&mut self, first: Duration) -> Duration {
        self.started = Instant::now();
        self.attempts = self.attempts.saturating_add(1);
        match self.first_failure {
            None => first.min(self.timeout).max(Duration::from_millis(1)),
            Some(since) => self
                .timeout
                .saturating_sub(since.elapsed())
                .max(Duration::from_millis(1)),
        }
    }

    /// The attempt worked: says so if earlier ones failed, and starts over.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.first_failure.take() {
            tracing::info!(
                "{}: `{}` works again: {} answered after {:.1?} ({} attempts)",
                self.stream,
                self.action,
                self.peer,
                since.elapsed(),
                self.attempts
            );
        }
        self.delays = self.policy.delays();
        self.attempts = 0;
    }

    /// The attempt failed because the peer is unreachable (`error` says
    /// how): waits before the next attempt.
    ///
    /// # Errors
    ///
    /// The reconnect timeout has passed since the first failure, or the
    /// most attempts are used; the error names the peer and how long it
    /// waited.
    pub async fn failed(&mut self, error: &str) -> Result<(), StreamError> {
        self.wait(error)
            .await
            .map_err(|gave_up| gave_up.into_stream_error(self.stream.clone(), self.action))
    }

    /// As [`Reconnect::failed`], for callers with their own error type.
    pub async fn wait(&mut self, error: &str) -> Result<(), GaveUp> {
        let since = match self.first_failure {
            Some(since) => since,
            None => {
                tracing::warn!(
                    "{}: `{}` failed ({error}); retrying {} for up to {:?}",
                    self.stream,
                    self.action,
                    self.peer,
                    self.timeout
                );
                *self.first_failure.insert(self.started)
            }
        };
        let waited = since.elapsed();
        if self.max_attempts.is_some_and(|most| self.attempts >= most) {
            return Err(GaveUp {
                timed_out: false,
                message: format!(
                    "gave up after {} attempts in {waited:.1?} ({}); last error: {error}",
                    self.attempts, self.peer
                ),
            });
        }
        let left = self.timeout.saturating_sub(waited);
        if left.is_zero() {
            return Err(GaveUp {
                timed_out: true,
                message: format!(
                    "gave up after waiting {waited:.1?} for {} ({} attempts, reconnect \
                     timeout {:?}); last error: {error}",
                    self.peer, self.attempts, self.timeout
                ),
            });
        }
        // The policy sets no retry limit of its own: the timeout ends it.
        let wait = self.delays.next().unwrap_or(MAX_BACKOFF);
        tracing::debug!(
            "{}: `{}` attempt {} failed ({error}); next in {wait:?}",
            self.stream,
            self.action,
            self.attempts,
        );
        tokio::time::sleep(wait.min(left)).await;
        Ok(())
    }
}
