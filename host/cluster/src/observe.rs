//! What a worker shows about itself: Prometheus series of its partitions
//! and of the cluster as it sees it, and `GET /cluster` on its admin
//! server.
//!
//! A worker runs its partition tasks through a
//! [`Supervisor`](plumber_control::supervisor::Supervisor), so every
//! partition has the engine's own series (`plumber_source_lag`,
//! `plumber_checkpoint_age_seconds`, `plumber_sink_duplicates_total`, …,
//! labelled `pipeline="<name>#p<NN>"`) while it runs here, and the admin
//! server's `/pipelines` and checkpoint calls work per partition. The
//! worker adds its own series, labelled `worker="<id>"`:
//!
//! | series | kind | what |
//! | --- | --- | --- |
//! | `plumber_cluster_partitions_owned` | gauge | partitions this worker runs |
//! | `plumber_cluster_members` | gauge | live workers in its last round (itself included) |
//! | `plumber_cluster_partition_lag{partition}` | gauge | messages of an owned partition not yet read |
//! | `plumber_cluster_partition_lease_revision{partition}` | gauge | the lease revision (fencing token) of an owned partition |
//! | `plumber_cluster_lease_renew_seconds` | histogram | how long lease renewals took |
//! | `plumber_cluster_leases_lost_total` | counter | leases whose renewal was refused or not answered within the TTL |
//! | `plumber_cluster_rebalances_total` | counter | rounds in which this worker took or gave up partitions |
//! | `plumber_cluster_partitions_taken_total` | counter | partitions started here |
//! | `plumber_cluster_partitions_handed_over_total` | counter | partitions given up after a final checkpoint |
//! | `plumber_cluster_hand_off_seconds` | histogram | giving a partition up: stop asked → final checkpoint → lease released |
//! | `plumber_cluster_fenced_commits_total` | counter | commits the state backend refused because a newer owner claimed the partition |
//! | `plumber_cluster_output_duplicates_total` | counter | publishes the output's server reported as duplicates, over every partition run here (also those handed over since) |

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use async_nats::jetstream;
use plumber_control::admin::{
    AdminControl, AdminError, CheckpointDone, ModuleUpload, PipelineStatus, SwapDone,
};
use plumber_control::supervisor::Supervisor;
use plumber_engine::histogram::Histogram;
use plumber_engine::pipeline::PipelineError;
use plumber_engine::state::StateError;
use plumber_engine::tenant::Tenants;

use crate::lease::Holder;
use crate::spec::PartitionStates;
use crate::status::partitions_status;
use crate::ClusterPipeline;

/// The worker's own counters (atomics: the worker loop writes, scrapes
/// read).
#[derive(Debug)]
pub struct WorkerCounters {
    /// Rounds in which the worker took or gave up at least one partition.
    pub rebalances: AtomicU64,
    /// Leases lost: a renewal refused, or none answered within the TTL.
    pub leases_lost: AtomicU64,
    /// Commits refused by the state backend's fence.
    pub fenced_commits: AtomicU64,
    /// Partitions started here.
    pub partitions_taken: AtomicU64,
    /// Partitions handed over after a final checkpoint.
    pub partitions_handed_over: AtomicU64,
    /// Duplicates the output's server reported to partition tasks that
    /// stopped here (the running ones' are added at each scrape).
    pub stopped_duplicates: AtomicU64,
    /// How long lease renewals took.
    pub lease_renew: Histogram,
    /// How long giving a partition up took (stop asked → lease released).
    pub hand_off: Histogram,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            rebalances: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            fenced_commits: AtomicU64::new(0),
            partitions_taken: AtomicU64::new(0),
            partitions_handed_over: AtomicU64::new(0),
            stopped_duplicates: AtomicU64::new(0),
            lease_renew: Histogram::durations(),
            hand_off: Histogram::durations(),
        }
    }
}

/// A worker as its admin server sees it: its id, its partition tasks (in
/// a supervisor), the members of its last round and its counters.
pub struct WorkerView {
    id: String,
    pipeline: ClusterPipeline,
    /// The pipeline named in the generation the worker found at its join
    /// (the stream's; see `plumber cluster migrate`).
    joined_pipeline: OnceLock<ClusterPipeline>,
    supervisor: Arc<Supervisor>,
    /// The worker's JetStream context, once it joined.
    context: OnceLock<jetstream::Context>,
    /// Owned partitions → their lease revisions.
    owned: Mutex<BTreeMap<u32, u64>>,
    /// The live members of the last round, by id.
    members: Mutex<Vec<String>>,
    /// The state backends of its partitions (sled's one database shared).
    states: PartitionStates,
    /// The worker's counters.
    pub counters: WorkerCounters,
}

impl std::fmt::Debug for WorkerView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerView")
            .field("id", &self.id)
            .field("pipeline", &self.pipeline.config.name)
            .finish_non_exhaustive()
    }
}

impl WorkerView {
    /// The view of worker `id` of `pipeline`, with no partitions yet.
    #[must_use]
    pub fn new(id: &str, pipeline: &ClusterPipeline) -> Arc<WorkerView> {
        Arc::new(WorkerView {
            id: id.to_owned(),
            pipeline: pipeline.clone(),
            joined_pipeline: OnceLock::new(),
            supervisor: Supervisor::new(Tenants::new(Default::default())),
            context: OnceLock::new(),
            owned: Mutex::new(BTreeMap::new()),
            members: Mutex::new(Vec::new()),
            states: PartitionStates::default(),
            counters: WorkerCounters::default(),
        })
    }

    /// The worker's id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The supervisor the worker's partition tasks run in.
    #[must_use]
    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.supervisor
    }

    /// The state backends of the worker's partitions.
    pub(crate) fn states(&self) -> &PartitionStates {
        &self.states
    }

    /// The tenant partition tasks run for.
    pub(crate) fn tenant(&self) -> &str {
        self.pipeline
            .config
            .tenant
            .as_deref()
            .unwrap_or(plumber_engine::state::DEFAULT_TENANT)
    }

    pub(crate) fn joined(&self, context: jetstream::Context, pipeline: &ClusterPipeline) {
        // Set once per worker; a second join (none happens) keeps the first.
        let _ = self.context.set(context);
        let _ = self.joined_pipeline.set(pipeline.clone());
    }

    /// The pipeline as the worker runs it (its partitions' names of the
    /// stream's generation, once joined).
    fn pipeline(&self) -> &ClusterPipeline {
        self.joined_pipeline.get().unwrap_or(&self.pipeline)
    }

    pub(crate) fn set_members(&self, live: Vec<String>) {
        *self.members.lock().unwrap_or_else(|e| e.into_inner()) = live;
    }

    pub(crate) fn started(&self, partition: u32, revision: u64) {
        self.counters
            .partitions_taken
            .fetch_add(1, Ordering::Relaxed);
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(partition, revision);
    }

    pub(crate) fn renewed(&self, partition: u32, revision: u64) {
        if let Some(owned) = self
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&partition)
        {
            *owned = revision;
        }
    }

    /// Partition `partition`'s task ended here: its duplicates count on,
    /// and it leaves the supervisor (and `/metrics`).
    pub(crate) fn stopped(&self, partition: u32) {
        self.owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&partition);
        let task = self.pipeline().names.task(partition);
        if let Some(status) = self.supervisor.status_of(&task) {
            self.counters.stopped_duplicates.fetch_add(
                status.sink_duplicates.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        self.supervisor.remove(&task);
    }

    /// A partition task's error: counted when it is a fenced commit.
    pub(crate) fn task_failed(&self, error: &PipelineError) {
        if is_fenced(error) {
            self.counters.fenced_commits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The partitions owned now, with their lease revisions.
    #[must_use]
    pub fn owned(&self) -> BTreeMap<u32, u64> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Publishes the output's server reported as duplicates, over every
    /// partition task run by this worker so far.
    #[must_use]
    pub fn output_duplicates(&self) -> u64 {
        let running: u64 = self
            .owned()
            .keys()
            .filter_map(|partition| {
                self.supervisor
                    .status_of(&self.pipeline().names.task(*partition))
            })
            .map(|status| status.sink_duplicates.load(Ordering::Relaxed))
            .sum();
        running + self.counters.stopped_duplicates.load(Ordering::Relaxed)
    }

    fn render_metrics(&self) -> String {
        let mut metrics = self.supervisor.scrape();
        let worker = [("worker", self.id.as_str())];
        let owned = self.owned();
        let count = |value: usize| i64::try_from(value).unwrap_or(i64::MAX);
        metrics.gauge_int(
            "plumber_cluster_partitions_owned",
            "Partitions this worker runs",
            &worker,
            count(owned.len()),
        );
        metrics.gauge_int(
            "plumber_cluster_members",
            "Live workers of the pipeline in this worker's last round (itself included)",
            &worker,
            count(self.members.lock().unwrap_or_else(|e| e.into_inner()).len()),
        );
        for (partition, revision) in &owned {
            let partition_label = partition.to_string();
            let labels = [
                ("worker", self.id.as_str()),
                ("partition", partition_label.as_str()),
            ];
            metrics.gauge_int(
                "plumber_cluster_partition_lease_revision",
                "Lease revision (fencing token) of a partition this worker owns",
                &labels,
                i64::try_from(*revision).unwrap_or(i64::MAX),
            );
            let lag = self
                .supervisor
                .status_of(&self.pipeline().names.task(*partition))
                .map_or(-1, |status| status.source_lag.load(Ordering::Relaxed));
            if lag >= 0 {
                metrics.gauge_int(
                    "plumber_cluster_partition_lag",
                    "Messages of an owned partition its consumer has not delivered yet",
                    &labels,
                    lag,
                );
            }
        }
        let counters = &self.counters;
        for (name, help, value) in [
            (
                "plumber_cluster_leases_lost_total",
                "Leases lost: a renewal refused, or none answered within the TTL",
                &counters.leases_lost,
            ),
            (
                "plumber_cluster_rebalances_total",
                "Rounds in which this worker took or gave up partitions",
                &counters.rebalances,
            ),
            (
                "plumber_cluster_partitions_taken_total",
                "Partitions started on this worker",
                &counters.partitions_taken,
            ),
            (
                "plumber_cluster_partitions_handed_over_total",
                "Partitions this worker gave up after a final checkpoint",
                &counters.partitions_handed_over,
            ),
            (
                "plumber_cluster_fenced_commits_total",
                "Commits the state backend refused: a newer owner claimed the partition",
                &counters.fenced_commits,
            ),
        ] {
            metrics.counter(name, help, &worker, value.load(Ordering::Relaxed));
        }
        metrics.counter(
            "plumber_cluster_output_duplicates_total",
            "Publishes the output's server reported as duplicates, over every partition run here",
            &worker,
            self.output_duplicates(),
        );
        metrics.histogram(
            "plumber_cluster_lease_renew_seconds",
            "How long lease renewals took",
            &worker,
            counters.lease_renew.snapshot(),
        );
        metrics.histogram(
            "plumber_cluster_hand_off_seconds",
            "Giving a partition up: stop asked, final checkpoint, lease released",
            &worker,
            counters.hand_off.snapshot(),
        );
        metrics.render()
    }
}

/// Whether `error` (or a cause of it) is a commit refused by the fence.
fn is_fenced(error: &PipelineError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if matches!(
            error.downcast_ref::<StateError>(),
            Some(StateError::Fenced { .. })
        ) {
            return true;
        }
        cause = error.source();
    }
    false
}

impl WorkerView {
    /// Every partition with the holder of its lease (`null`: nobody),
    /// from the lease bucket.
    async fn owners(
        &self,
        context: &jetstream::Context,
    ) -> Result<Vec<serde_json::Value>, crate::ClusterError> {
        let pipeline = self.pipeline();
        let leases = crate::lease::Leases::open(
            context,
            &pipeline.leases_bucket(),
            pipeline.names.clone(),
            pipeline.lease_ttl(),
        )
        .await?;
        let held = leases.all().await?;
        Ok((0..pipeline.names.tasks())
            .map(|partition| {
                let holder = held.get(&partition);
                serde_json::json!({
                    "partition": partition,
                    "task": pipeline.names.task(partition),
                    "owner": holder.map(|h| h.owner.clone()),
                    "revision": holder.map(|h| h.revision),
                })
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl AdminControl for WorkerView {
    fn pipelines(&self) -> Vec<PipelineStatus> {
        self.supervisor.pipelines()
    }

    /// Ready once joined and every partition task started.
    fn ready(&self) -> bool {
        self.context.get().is_some() && self.supervisor.ready()
    }

    fn metrics(&self) -> String {
        self.render_metrics()
    }

    /// `{"worker", "members", "partitions_owned", "rebalances",
    /// "partitions_taken", "partitions_handed_over", "leases_lost",
    /// "partitions": [{partition, task, revision, fence, committed, lag,
    /// last_commit_age_ms}], "owners": [{partition, task, owner,
    /// revision}]}`: what `plumber cluster status` says of this worker's
    /// partitions, and who holds each partition's lease (`null`: nobody),
    /// read now.
    async fn cluster(&self) -> Result<serde_json::Value, AdminError> {
        let context = self.context.get().ok_or_else(|| {
            AdminError::Unavailable(format!("worker `{}` has not joined yet", self.id))
        })?;
        let owned = self.owned();
        let held: BTreeMap<u32, Holder> = owned
            .iter()
            .map(|(partition, revision)| {
                (
                    *partition,
                    Holder {
                        owner: self.id.clone(),
                        revision: *revision,
                    },
                )
            })
            .collect();
        let partitions: Vec<u32> = owned.keys().copied().collect();
        let statuses =
            partitions_status(self.pipeline(), context, &self.states, &partitions, &held)
                .await
                .map_err(|error| AdminError::Unavailable(error.to_string()))?;
        let partitions: Vec<serde_json::Value> = statuses
            .iter()
            .map(|p| {
                serde_json::json!({
                    "partition": p.partition,
                    "task": p.task,
                    "revision": p.revision,
                    "fence": p.fence,
                    "committed": p.committed,
                    "lag": p.lag,
                    "last_commit_age_ms": p.last_commit_age.map(|age| age.as_millis() as u64),
                })
            })
            .collect();
        let owners = self
            .owners(context)
            .await
            .map_err(|error| AdminError::Unavailable(error.to_string()))?;
        let counter = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let counters = &self.counters;
        Ok(serde_json::json!({
            "worker": self.id,
            "pipeline": self.pipeline.config.name,
            "members": *self.members.lock().unwrap_or_else(|e| e.into_inner()),
            "partitions_owned": partitions.len(),
            "rebalances": counter(&counters.rebalances),
            "partitions_taken": counter(&counters.partitions_taken),
            "partitions_handed_over": counter(&counters.partitions_handed_over),
            "leases_lost": counter(&counters.leases_lost),
            "partitions": partitions,
            "owners": owners,
        }))
    }

    fn overview(&self) -> Vec<plumber_control::console::model::PipelineLive> {
        self.supervisor.overview()
    }

    fn detail(&self, pipeline: &str) -> Option<plumber_control::console::model::PipelineDetail> {
        self.supervisor.detail(pipeline)
    }

    fn tenants(&self) -> Vec<plumber_control::console::model::TenantView> {
        AdminControl::tenants(self.supervisor.as_ref())
    }

    async fn checkpoint(&self, pipeline: &str) -> Result<CheckpointDone, AdminError> {
        self.supervisor.checkpoint(pipeline).await
    }

    async fn swap_module(
        &self,
        pipeline: &str,
        pipe: &str,
        module: ModuleUpload,
    ) -> Result<SwapDone, AdminError> {
        self.supervisor.swap_module(pipeline, pipe, module).await
    }
}
