//! `"cluster"`: a pipeline partitioned over the workers of a NATS JetStream
//! cluster (`plumber worker`, `plumber cluster …`; the `plumber-cluster`
//! crate runs it). The engine only reads and checks the section; `plumber
//! run` refuses a config that has one.

use serde::Deserialize;

use super::strict::object_only;
use super::FieldError;

object_only!(ClusterConfig);

/// The most partitions a pipeline may have.
pub const MAX_PARTITIONS: u32 = 1024;

/// The shortest lease a pipeline may configure, in ms: a NATS leader
/// election stalls renewals for seconds, and a lease must outlive it.
pub const MIN_LEASE_TTL_MS: u64 = 1000;

/// The default lease, in ms: 2 s was lost during a NATS leader election
/// (renewals fail for ~6 s), 10 s survived.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

/// `"cluster": {"url": [...], "partitions": N, "lease_ttl_ms": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, remote = "Self")]
pub struct ClusterConfig {
    /// The NATS servers of the JetStream cluster that holds the input
    /// stream, the members and the leases (at least one).
    pub url: Vec<String>,
    /// How many partitions the input is split into (1 to 1024); fixed for
    /// the pipeline's life.
    pub partitions: u32,
    /// How long a lease lives without renewal, in ms (default 10 000, at
    /// least 1000); it is renewed every quarter of it.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Replicas of the streams and buckets `plumber cluster init` creates
    /// (default: 3 on a NATS cluster, 1 on a single server).
    #[serde(default)]
    pub replicas: Option<usize>,
}

fn default_lease_ttl_ms() -> u64 {
    DEFAULT_LEASE_TTL_MS
}

impl ClusterConfig {
    /// Checks the section's own fields.
    ///
    /// # Errors
    ///
    /// The field at fault, relative to the section.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.url.is_empty() {
            return Err(FieldError::new(
                "url",
                "expected at least one NATS server URL, e.g. [\"nats://127.0.0.1:4222\"]",
            ));
        }
        for (index, url) in self.url.iter().enumerate() {
            if url.trim().is_empty() || url.chars().any(char::is_whitespace) {
                return Err(FieldError::new(
                    format!("url[{index}]"),
                    format!("`{url}` is not a NATS URL"),
                ));
            }
        }
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return Err(FieldError::new(
                "partitions",
                format!(
                    "expected 1 to {MAX_PARTITIONS} partitions, got {}",
                    self.partitions
                ),
            ));
        }
        if self.lease_ttl_ms < MIN_LEASE_TTL_MS {
            return Err(FieldError::new(
                "lease_ttl_ms",
                format!(
                    "expected a lease of at least {MIN_LEASE_TTL_MS} ms (a NATS leader election \
                     stalls renewals for seconds), got {}",
                    self.lease_ttl_ms
                ),
            ));
        }
        if self.replicas == Some(0) || self.replicas.is_some_and(|r| r > 5) {
            return Err(FieldError::new(
                "replicas",
                "expected 1 to 5 replicas (JetStream's range)",
            ));
        }
        Ok(())
    }
}
