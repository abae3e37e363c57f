//! Retrying an operation while its server is unreachable: exponential
//! backoff (50 ms doubling to 2 s), one warning when failures start and one
//! info line when it works again, and an error naming the server once the
//! reconnect timeout has passed since the first failure (or, when a most
//! attempts is set, once they are used). Shared by the connectors that
//! talk to a server (NATS, JetStream, SQL, the HTTP sink).

use std::time::{Duration, Instant};

use super::StreamError;

/// How long connectors keep retrying a lost server by default.
pub const DEFAULT_RECONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The wait before the first retry; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between two retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

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
    backoff: Duration,
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
            backoff: FIRST_BACKOFF,
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
        self.backoff = FIRST_BACKOFF;
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
            return Err(StreamError::Io {
                stream: self.stream.clone(),
                action: self.action,
                source: std::io::Error::other(format!(
                    "gave up after {} attempts in {waited:.1?} ({}); last error: {error}",
                    self.attempts, self.peer
                )),
            });
        }
        let left = self.timeout.saturating_sub(waited);
        if left.is_zero() {
            return Err(StreamError::Io {
                stream: self.stream.clone(),
                action: self.action,
                source: std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "gave up after waiting {waited:.1?} for {} ({} attempts, reconnect \
                         timeout {:?}); last error: {error}",
                        self.peer, self.attempts, self.timeout
                    ),
                ),
            });
        }
        tracing::debug!(
            "{}: `{}` attempt {} failed ({error}); next in {:?}",
            self.stream,
            self.action,
            self.attempts,
            self.backoff
        );
        tokio::time::sleep(self.backoff.min(left)).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}
