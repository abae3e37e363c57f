//! Partition leases in a JetStream key-value bucket.
//!
//! One key per partition (`p<NN>`), whose value is the owner's worker id.
//! Acquire is `create` (succeeds only when the key is absent, deleted or
//! expired), renew is `update` with the last revision, release is a delete
//! with the last revision: each is a compare-and-set on the stream's Raft
//! log. The revision grows with every write, across owners, so the newest
//! owner always holds the largest: it is the lease's fencing token. A
//! lease ends without a release when its entry is older than the bucket's
//! `max_age` (the lease TTL) — the holder stopped renewing.
//!
//! Safety never depends on clocks: a holder that is slow to notice it lost
//! its lease is stopped by the state backend's fence, which the new owner
//! claims after taking the lease and before reading the checkpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::{self};
use futures_util::StreamExt;

use crate::partition::PartitionNames;
use crate::ClusterError;

/// A lease held: its partition, owner and revision (the fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The partition.
    pub partition: u32,
    /// The worker holding it.
    pub owner: String,
    /// The revision of the last write (acquire or renewal).
    pub revision: u64,
}

/// Why a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The lease is not ours any more (expired and taken, or released):
    /// stop the partition at once.
    #[error("lease of partition {partition} lost: {message}")]
    Lost {
        /// The partition.
        partition: u32,
        /// What the server said.
        message: String,
    },
    /// The server did not answer (a leader election, a lost connection):
    /// the lease may still be ours until its TTL since the last renewal.
    #[error("lease of partition {partition} not renewed: {message}")]
    Unanswered {
        /// The partition.
        partition: u32,
        /// What failed.
        message: String,
    },
}

/// Who holds a partition's lease now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The worker.
    pub owner: String,
    /// The revision of its last write.
    pub revision: u64,
}

/// The leases of one pipeline's partitions.
#[derive(Clone)]
pub struct Leases {
    store: kv::Store,
    names: PartitionNames,
    ttl: Duration,
}

impl Leases {
    /// The leases in bucket `bucket` (made by `plumber cluster init`),
    /// lasting `ttl` without renewal.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the bucket cannot be opened (run
    /// `plumber cluster init` first).
    pub async fn open(
        context: &jetstream::Context,
        bucket: &str,
        names: PartitionNames,
        ttl: Duration,
    ) -> Result<Self, ClusterError> {
        let store = context.get_key_value(bucket).await.map_err(|e| {
            ClusterError::jetstream(
                format!("opening lease bucket `{bucket}` (run `plumber cluster init` first)"),
                e,
            )
        })?;
        Ok(Leases { store, names, ttl })
    }

    /// How long a lease lives without renewal.
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// How often a holder renews: a quarter of the TTL.
    #[must_use]
    pub fn renew_every(&self) -> Duration {
        self.ttl / 4
    }

    fn key(&self, partition: u32) -> String {
        self.names.lease_key(partition)
    }

    /// Takes the lease of `partition` for `owner` if nobody holds it.
    /// `None` when someone does.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the server does not answer.
    pub async fn acquire(
        &self,
        partition: u32,
        owner: &str,
    ) -> Result<Option<Lease>, ClusterError> {
        // `Store::create` reports a lost race on a lagging replica's read as
        // an "other" error: compare-and-set by hand instead.
        let key = self.key(partition);
        let failed = |error: &dyn std::fmt::Display| {
            ClusterError::jetstream(
                format!("acquiring the lease of partition {partition}"),
                error,
            )
        };
        let expected = match self.store.update(&key, owner.to_owned().into(), 0).await {
            Ok(revision) => return Ok(Some(self.lease(partition, owner, revision))),
            Err(error) if lost_race(&error) => {
                // Held, or ended by a delete marker that the new owner must
                // name as the last revision.
                match self.store.entry(&key).await {
                    Ok(Some(entry)) if entry.operation != Operation::Put => entry.revision,
                    Ok(_) => return Ok(None),
                    Err(error) => return Err(failed(&error)),
                }
            }
            Err(error) => return Err(failed(&error)),
        };
        match self
            .store
            .update(&key, owner.to_owned().into(), expected)
            .await
        {
            Ok(revision) => Ok(Some(self.lease(partition, owner, revision))),
            Err(error) if lost_race(&error) => Ok(None),
            Err(error) => Err(failed(&error)),
        }
    }

    fn lease(&self, partition: u32, owner: &str, revision: u64) -> Lease {
        Lease {
            partition,
            owner: owner.to_owned(),
            revision,
        }
    }

    /// Renews `lease` (compare-and-set on its revision); on success its
    /// revision is the new one.
    ///
    /// # Errors
    ///
    /// [`RenewError::Lost`] when the revision is not the last any more,
    /// [`RenewError::Unanswered`] when the server did not answer.
    pub async fn renew(&self, lease: &mut Lease) -> Result<(), RenewError> {
        match self
            .store
            .update(
                self.key(lease.partition),
                lease.owner.clone().into(),
                lease.revision,
            )
            .await
        {
            Ok(revision) => {
                lease.revision = revision;
                Ok(())
            }
            Err(error) if lost_race(&error) => Err(RenewError::Lost {
                partition: lease.partition,
                message: error.to_string(),
            }),
            Err(error) => Err(RenewError::Unanswered {
                partition: lease.partition,
                message: error.to_string(),
            }),
        }
    }

    /// Renews `lease` again after a renewal that was not answered. That
    /// renewal may have landed (its answer lost with the connection, in a
    /// leader election): the compare-and-set on the old revision is then
    /// refused, yet the entry is still our own write. So on a refusal the
    /// entry is read, and a put by `lease.owner` newer than `lease.revision`
    /// is adopted: nobody else wrote between (an acquire writes its own
    /// owner, a break or an expiry is a delete), and the keeper is still
    /// running, so this worker has not acquired the partition again.
    ///
    /// # Errors
    ///
    /// As [`Leases::renew`].
    pub async fn renew_after_unanswered(&self, lease: &mut Lease) -> Result<(), RenewError> {
        let refused = match self.renew(lease).await {
            Err(RenewError::Lost { message, .. }) => message,
            other => return other,
        };
        match self.store.entry(self.key(lease.partition)).await {
            Ok(Some(entry))
                if entry.operation == Operation::Put
                    && entry.value.as_ref() == lease.owner.as_bytes()
                    && entry.revision > lease.revision =>
            {
                tracing::info!(
                    partition = lease.partition,
                    from = lease.revision,
                    to = entry.revision,
                    "the unanswered lease renewal had landed: keeping its revision"
                );
                lease.revision = entry.revision;
                Ok(())
            }
            Ok(_) => Err(RenewError::Lost {
                partition: lease.partition,
                message: refused,
            }),
            // Refused, then not answered: whose the entry is stays unknown
            // until the next try (within the TTL).
            Err(error) => Err(RenewError::Unanswered {
                partition: lease.partition,
                message: format!("{refused}; then reading the lease: {error}"),
            }),
        }
    }

    /// Gives `lease` up (a delete expecting its revision), so another
    /// worker can take it at once.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the delete was refused (the lease
    /// was not ours any more) or not answered; the lease then ends by
    /// itself after its TTL.
    pub async fn release(&self, lease: &Lease) -> Result<(), ClusterError> {
        self.store
            .delete_expect_revision(self.key(lease.partition), Some(lease.revision))
            .await
            .map_err(|e| {
                ClusterError::jetstream(
                    format!("releasing the lease of partition {}", lease.partition),
                    e,
                )
            })
    }

    /// Ends the lease of a holder known to be dead (its ping had no
    /// responders), if it still holds `revision`: a delete expecting that
    /// revision. Whoever then acquires it fences the dead holder in the
    /// state backend before reading the checkpoint.
    ///
    /// # Errors
    ///
    /// As [`Leases::release`].
    pub async fn break_lease(&self, partition: u32, revision: u64) -> Result<(), ClusterError> {
        self.store
            .delete_expect_revision(self.key(partition), Some(revision))
            .await
            .map_err(|e| {
                ClusterError::jetstream(
                    format!("ending the dead holder's lease of partition {partition}"),
                    e,
                )
            })
    }

    /// Who holds `partition`'s lease, if anyone.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the server does not answer.
    pub async fn holder(&self, partition: u32) -> Result<Option<Holder>, ClusterError> {
        let entry = self.store.entry(self.key(partition)).await.map_err(|e| {
            ClusterError::jetstream(format!("reading the lease of partition {partition}"), e)
        })?;
        Ok(entry.and_then(holder_of))
    }

    /// Every held lease: partition → holder.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the bucket cannot be read.
    pub async fn all(&self) -> Result<BTreeMap<u32, Holder>, ClusterError> {
        let mut keys = self
            .store
            .keys()
            .await
            .map_err(|e| ClusterError::jetstream("listing the leases", e))?;
        let mut held = BTreeMap::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::jetstream("listing the leases", e))?;
            let Some(partition) = self.names.task_of_lease_key(&key) else {
                continue;
            };
            if let Some(holder) = self.holder(partition).await? {
                held.insert(partition, holder);
            }
        }
        Ok(held)
    }
}

/// Whether a compare-and-set was refused because the revision was not the
/// last: `WrongLastRevision`, or, on a clustered stream with another write
/// of the key in flight, the server's "wrong last sequence" constant error
/// (10164), which the client reports as an "other" error.
fn lost_race(error: &kv::UpdateError) -> bool {
    if error.kind() == UpdateErrorKind::WrongLastRevision {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        if let Some(jetstream) = inner.downcast_ref::<jetstream::Error>() {
            let code = jetstream.error_code();
            return code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        source = inner.source();
    }
    false
}

fn holder_of(entry: kv::Entry) -> Option<Holder> {
    match entry.operation {
        Operation::Put => Some(Holder {
            owner: String::from_utf8_lossy(&entry.value).into_owned(),
            revision: entry.revision,
        }),
        Operation::Delete | Operation::Purge => None,
    }
}
