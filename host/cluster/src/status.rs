//! `plumber cluster status`: each partition's owner, lease revision, fence,
//! committed sequence, lag and last-commit age, and the workers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use plumber_engine::checkpoint::Position;
use plumber_engine::state::{checkpoint_scope, DEFAULT_TENANT};

use crate::init::connect;
use crate::lease::{Holder, Leases};
use crate::membership::{Member, Members, Ping};
use crate::spec::PartitionStates;
use crate::{ClusterError, ClusterPipeline};

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition task (with a `repartition` step, stage 2's tasks
    /// follow stage 1's: task `N + p` is partition `p` of stage 2).
    pub partition: u32,
    /// Its task's pipeline name.
    pub task: String,
    /// The worker holding its lease.
    pub owner: Option<String>,
    /// The lease's revision (the fencing token in the lease bucket).
    pub revision: Option<u64>,
    /// The state backend's fence of the last commit.
    pub fence: Option<u64>,
    /// The stream sequence of the last committed checkpoint.
    pub committed: Option<u64>,
    /// Messages of the partition not yet covered by a checkpoint, as its
    /// consumer counts them.
    pub lag: Option<u64>,
    /// How long ago the last checkpoint committed.
    pub last_commit_age: Option<Duration>,
}

/// The whole cluster.
#[derive(Debug, Clone)]
pub struct ClusterStatus {
    /// The workers, and whether each answered a ping.
    pub members: Vec<(Member, Ping)>,
    /// The partitions, in order.
    pub partitions: Vec<PartitionStatus>,
}

/// Reads the status of `pipeline`'s cluster.
///
/// # Errors
///
/// The servers cannot be reached, the buckets are missing, or a state
/// backend cannot be opened.
pub async fn status(pipeline: &ClusterPipeline) -> Result<ClusterStatus, ClusterError> {
    let client = connect(&pipeline.cluster.url).await?;
    let context = jetstream::new(client.clone());
    let mut pipeline = pipeline.clone();
    pipeline.set_generation(crate::init::input_generation(&context, &pipeline).await?);
    let pipeline = &pipeline;
    let members_bucket = Members::open(client, &pipeline.members_bucket()).await?;
    let mut members = Vec::new();
    for member in members_bucket.list().await? {
        let ping = members_bucket.ping(&member.id).await;
        members.push((member, ping));
    }
    let leases = Leases::open(
        &context,
        &pipeline.leases_bucket(),
        pipeline.names.clone(),
        pipeline.lease_ttl(),
    )
    .await?;
    let held = leases.all().await?;
    let all: Vec<u32> = (0..pipeline.names.tasks()).collect();
    let states = PartitionStates::default();
    let partitions = partitions_status(pipeline, &context, &states, &all, &held).await?;
    Ok(ClusterStatus {
        members,
        partitions,
    })
}

/// The status of `partitions` of `pipeline` (their lease holders in
/// `held`): each one's checkpoint read from its state backend (opened
/// through `states`) and its
/// consumer's lag from the input stream. `plumber cluster status` reads
/// every partition, a worker's `GET /cluster` those it owns.
///
/// # Errors
///
/// The input stream cannot be opened, or a partition's state backend or
/// checkpoint cannot be read.
pub async fn partitions_status(
    pipeline: &ClusterPipeline,
    context: &jetstream::Context,
    states: &PartitionStates,
    partitions: &[u32],
    held: &BTreeMap<u32, Holder>,
) -> Result<Vec<PartitionStatus>, ClusterError> {
    let mut streams = std::collections::BTreeMap::new();
    for name in std::iter::once(&pipeline.stream).chain(pipeline.shuffle.iter().map(|s| &s.stream))
    {
        let stream = context
            .get_stream(name)
            .await
            .map_err(|e| ClusterError::jetstream(format!("opening stream `{name}`"), e))?;
        streams.insert(name.clone(), stream);
    }
    let tenant = pipeline
        .config
        .tenant
        .clone()
        .unwrap_or_else(|| DEFAULT_TENANT.to_owned());
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default();
    let mut statuses = Vec::with_capacity(partitions.len());
    for &partition in partitions {
        let task = pipeline.names.task(partition);
        let config = pipeline.partition_config(partition)?;
        let state = states
            .open(&config)
            .await
            .map_err(|e| ClusterError::jetstream(format!("opening the state of {task}"), e))?;
        let record = state
            .last_checkpoint(&checkpoint_scope(&tenant, &task))
            .await
            .map_err(|e| ClusterError::jetstream(format!("reading the checkpoint of {task}"), e))?;
        let (input, consumer) = pipeline.task_input(partition);
        let lag = match streams.get(&input) {
            Some(stream) => match stream.consumer_info(consumer).await {
                Ok(info) => Some(info.num_pending + info.num_ack_pending as u64),
                Err(_) => None,
            },
            None => None,
        };
        let holder = held.get(&partition);
        statuses.push(PartitionStatus {
            partition,
            task,
            owner: holder.map(|h| h.owner.clone()),
            revision: holder.map(|h| h.revision),
            fence: record.as_ref().map(|r| r.fence),
            committed: record.as_ref().and_then(|r| match r.position {
                Position::Offset(sequence) => Some(sequence),
                _ => None,
            }),
            lag,
            last_commit_age: record
                .as_ref()
                .map(|r| Duration::from_millis(now_ms.saturating_sub(r.committed_at_ms))),
        });
    }
    Ok(statuses)
}

impl ClusterStatus {
    /// A table for people, a line per partition, then the workers.
    #[must_use]
    pub fn render(&self) -> String {
        let dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<12} {:<20} {:>9} {:>6} {:>10} {:>8} {:>10}",
            "partition", "owner", "revision", "fence", "committed", "lag", "commit age"
        );
        for p in &self.partitions {
            let _ = writeln!(
                out,
                "{:<12} {:<20} {:>9} {:>6} {:>10} {:>8} {:>10}",
                p.task,
                dash(p.owner.clone()),
                dash(p.revision.map(|r| r.to_string())),
                dash(p.fence.map(|f| f.to_string())),
                dash(p.committed.map(|c| c.to_string())),
                dash(p.lag.map(|l| l.to_string())),
                dash(
                    p.last_commit_age
                        .map(|age| format!("{:.1}s", age.as_secs_f64()))
                ),
            );
        }
        let _ = writeln!(out, "workers:");
        for (member, ping) in &self.members {
            let owned = self
                .partitions
                .iter()
                .filter(|p| p.owner.as_deref() == Some(member.id.as_str()))
                .count();
            let _ = writeln!(
                out,
                "  {:<20} {:<8} {owned} partition(s){}",
                member.id,
                match ping {
                    Ping::Alive => "alive",
                    Ping::Dead => "dead",
                    Ping::Unknown => "silent",
                },
                if member.draining { ", draining" } else { "" }
            );
        }
        out
    }
}
