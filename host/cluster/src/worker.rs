//! A worker: joins the pipeline's members, computes which partitions it
//! should own, takes free ones (and those of dead workers), runs each as
//! a pipeline of the engine, renews their leases, and gives extra ones up
//! only after a final checkpoint.
//!
//! Take-over order, for every partition: the lease (compare-and-set in the
//! lease bucket) → the partition's state scope (the engine claims the
//! backend's fence when the task starts) → its last checkpoint → its
//! durable consumer recreated at committed+1 (the JetStream source does,
//! before its first pull). A lease whose renewal is refused stops its task
//! at once (aborted, as a crash would: what it did not commit is replayed
//! by the next owner, and a commit it still attempts is refused by the
//! fence the next owner claimed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plumber_engine::pipeline::{PipelineError, PipelineHandle, RunReport};
use plumber_engine::runtime::Runtime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assign::assign;
use crate::init::{check_version, connect};
use crate::lease::{Lease, Leases, RenewError};
use crate::membership::{check_worker_id, Member, Members, Ping};
use crate::version::Verdict;
use crate::{ClusterError, ClusterPipeline};

/// How often the worker looks at members and leases at most: a crashed
/// peer's partitions are taken within about this much after its ping
/// finds no responders.
const TICK: Duration = Duration::from_millis(200);

/// How long a joining worker waits before it takes partitions, so that
/// peers starting with it are counted in the first assignment.
const SETTLE: Duration = Duration::from_secs(2);

/// How long a partition's final checkpoint may take when it is handed
/// over before the task is stopped anyway (its lease is then released: the
/// next owner replays from the last committed checkpoint).
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(20);

/// What a worker is told at start.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Its id, unique among the pipeline's workers.
    pub id: String,
    /// The most partitions it runs (default: its fair share).
    pub max_partitions: Option<u32>,
    /// The NATS servers, instead of the config's `cluster.url`.
    pub servers: Option<Vec<String>>,
}

/// A partition task running.
struct Task {
    lease: Lease,
    /// When the lease was last written (acquired or renewed).
    renewed: Instant,
    handle: PipelineHandle,
    join: JoinHandle<Result<RunReport, PipelineError>>,
}

/// Microseconds since the Unix epoch, for the ownership log lines (tests
/// on one machine compare them across workers).
fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros())
        .unwrap_or_default()
}

/// Runs a worker of `pipeline` until `stop` turns true, then hands every
/// partition over after its final checkpoint and leaves.
///
/// # Errors
///
/// The worker id is not valid, the servers cannot be reached or are too
/// old, the buckets are missing (`plumber cluster init` was not run), or
/// sled state is used while another worker is a member.
pub async fn run(
    pipeline: ClusterPipeline,
    options: WorkerOptions,
    runtime: Runtime,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    check_worker_id(&options.id).map_err(|message| ClusterError::Invalid {
        file: "--id".into(),
        path: "id".into(),
        message,
    })?;
    let servers = options
        .servers
        .clone()
        .unwrap_or_else(|| pipeline.cluster.url.clone());
    let client = connect(&servers).await?;
    if let Verdict::Old(_, warning) = check_version(&client)? {
        tracing::warn!("{warning}");
    }
    let context = async_nats::jetstream::new(client.clone());
    let members = Members::open(client.clone(), &pipeline.members_bucket()).await?;
    let leases = Leases::open(
        &context,
        &pipeline.leases_bucket(),
        pipeline.names.clone(),
        pipeline.lease_ttl(),
    )
    .await?;
    let me = Member {
        id: options.id.clone(),
        max_partitions: options.max_partitions,
        draining: false,
    };
    if !pipeline.shared_state() {
        let others: Vec<String> = members
            .list()
            .await?
            .into_iter()
            .filter(|member| member.id != me.id)
            .map(|member| member.id)
            .collect();
        if !others.is_empty() {
            return Err(ClusterError::Invalid {
                file: pipeline.origin.clone(),
                path: "state.type".into(),
                message: format!(
                    "sled state is local to one machine, so a pipeline with it runs on one \
                     worker only, and {others:?} already run(s) it: use `redis` state for \
                     several workers"
                ),
            });
        }
    }
    let drain = Arc::new(AtomicBool::new(false));
    let pings = members.answer_pings(&me.id, drain.clone()).await?;
    members.heartbeat(&me).await?;
    tracing::info!(worker = %me.id, partitions = pipeline.names.partitions,
        "worker joined");

    let mut worker = Worker {
        pipeline,
        me,
        members,
        leases,
        runtime,
        tasks: BTreeMap::new(),
        last_heartbeat: Instant::now(),
        drain,
    };
    // Peers starting at the same time register before anyone takes a
    // share computed without them.
    let mut settle = Some(tokio::time::sleep(SETTLE));
    let result = loop {
        if let Some(delay) = settle.take() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break Ok(());
                    }
                }
                () = delay => {}
            }
        }
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break Ok(());
                }
            }
            () = tokio::time::sleep(TICK) => {}
        }
        if let Err(error) = worker.tick().await {
            // A NATS hiccup (a leader election): leases are renewed with
            // their own deadline; the next tick tries again.
            tracing::warn!(worker = %worker.me.id, %error, "worker round failed");
        }
    };
    worker.leave().await;
    pings.abort();
    result
}

/// Opens partition `partition`'s pipeline (its state backend, source and
/// sinks) and spawns it; the engine claims the state scope's fence, reads
/// the last checkpoint and seeks the source there as it starts.
async fn open_task(
    pipeline: &ClusterPipeline,
    partition: u32,
    runtime: Runtime,
) -> Result<(PipelineHandle, JoinHandle<Result<RunReport, PipelineError>>), ClusterError> {
    let config = pipeline.partition_config(partition)?;
    let state = config
        .open_state()
        .await
        .map_err(|e| ClusterError::jetstream(format!("opening the state of {}", config.name), e))?;
    let builder = config
        .builder(state)
        .await
        .map_err(|e| ClusterError::jetstream(format!("opening {}", config.name), e))?
        .runtime(runtime);
    let handle = builder.handle();
    Ok((handle, tokio::spawn(builder.run())))
}

struct Worker {
    pipeline: ClusterPipeline,
    me: Member,
    members: Members,
    leases: Leases,
    runtime: Runtime,
    tasks: BTreeMap<u32, Task>,
    last_heartbeat: Instant,
    /// Set by a drain request: announce it, then hand everything over.
    drain: Arc<AtomicBool>,
}

impl Worker {
    async fn tick(&mut self) -> Result<(), ClusterError> {
        self.reap_finished().await;
        self.renew_due().await;
        let draining = self.drain.load(Ordering::SeqCst);
        if draining && !self.me.draining {
            tracing::info!(worker = %self.me.id, "draining: handing every partition over");
            self.me.draining = true;
            self.heartbeat().await?;
        }
        if self.last_heartbeat.elapsed() >= self.leases.renew_every() {
            self.heartbeat().await?;
        }
        self.rebalance().await
    }

    /// Refreshes our member entry, giving up after a renewal period: the
    /// next round must come in time to renew the leases.
    async fn heartbeat(&mut self) -> Result<(), ClusterError> {
        let budget = self.leases.renew_every();
        match tokio::time::timeout(budget, self.members.heartbeat(&self.me)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ClusterError::jetstream(
                    "refreshing our member entry",
                    format!("no answer within {budget:?}"),
                ))
            }
        }
        self.last_heartbeat = Instant::now();
        Ok(())
    }

    /// Tasks that ended by themselves (a failure, a fence): their leases
    /// are given up so that another worker (or this one) starts again.
    async fn reap_finished(&mut self) {
        let finished: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(_, task)| task.join.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in finished {
            let Some(task) = self.tasks.remove(&partition) else {
                continue;
            };
            match task.join.await {
                Ok(Ok(_)) => tracing::warn!(partition, "partition task ended"),
                // With its causes: why it failed is the reason it stopped
                // (a fenced commit, its consumer recreated by a new owner).
                Ok(Err(error)) => tracing::error!(
                    partition, error = %plumber_engine::ErrorChain(&error), "partition task failed"
                ),
                Err(error) => tracing::error!(partition, %error, "partition task panicked"),
            }
            self.log_stopped(&task.lease);
            if let Err(error) = self.leases.release(&task.lease).await {
                tracing::warn!(partition, %error, "cannot release the lease");
            }
        }
    }

    async fn renew_due(&mut self) {
        let every = self.leases.renew_every();
        let ttl = self.leases.ttl();
        let leases = &self.leases;
        // All due renewals at once: one slow round trip must not delay the
        // others past their deadline.
        let renewals = self
            .tasks
            .iter_mut()
            .filter(|(_, task)| task.renewed.elapsed() >= every)
            .map(|(partition, task)| async move {
                let outcome = leases.renew(&mut task.lease).await;
                if outcome.is_ok() {
                    task.renewed = Instant::now();
                }
                (*partition, task.renewed, outcome)
            });
        let outcomes = futures_util::future::join_all(renewals).await;
        for (partition, renewed, outcome) in outcomes {
            match outcome {
                Ok(()) => {}
                Err(RenewError::Lost { message, .. }) => {
                    tracing::error!(partition, message, "lease lost: stopping the partition");
                    self.abort(partition).await;
                }
                Err(RenewError::Unanswered { message, .. }) => {
                    if renewed.elapsed() >= ttl {
                        tracing::error!(
                            partition,
                            message,
                            "lease not renewed within its TTL: stopping the partition"
                        );
                        self.abort(partition).await;
                    } else {
                        tracing::warn!(partition, message, "lease renewal not answered");
                    }
                }
            }
        }
    }

    /// Stops a partition at once (its lease is not ours any more).
    async fn abort(&mut self, partition: u32) {
        if let Some(task) = self.tasks.remove(&partition) {
            task.join.abort();
            let _ = task.join.await;
            self.log_stopped(&task.lease);
        }
    }

    /// The live members: listed, and not found dead by a ping. Dead ones'
    /// entries are removed.
    async fn live_members(&self) -> Result<(Vec<Member>, BTreeSet<String>), ClusterError> {
        let mut live = Vec::new();
        let mut dead = BTreeSet::new();
        let mut listed = self.members.list().await?;
        if !listed.iter().any(|member| member.id == self.me.id) {
            listed.push(self.me.clone());
        }
        for member in listed {
            if member.id == self.me.id {
                live.push(self.me.clone());
                continue;
            }
            if self.members.ping(&member.id).await == Ping::Dead {
                tracing::info!(worker = %member.id, "worker found dead (no responders)");
                if let Err(error) = self.members.remove(&member.id).await {
                    tracing::warn!(worker = %member.id, %error, "cannot remove a dead member");
                }
                dead.insert(member.id);
            } else {
                live.push(member);
            }
        }
        Ok((live, dead))
    }

    async fn rebalance(&mut self) -> Result<(), ClusterError> {
        // Listing the members creates a consumer, which waits for the
        // JetStream meta leader: while one is elected (seconds, after a
        // node died) it must not hold back the lease renewals of the next
        // rounds, or every lease lapses. (Only the listing is cut short:
        // what follows takes leases and starts tasks, and must finish.)
        let budget = self.leases.renew_every();
        let (live, dead) = match tokio::time::timeout(budget, self.live_members()).await {
            Ok(members) => members?,
            Err(_) => {
                return Err(ClusterError::jetstream(
                    "listing the live members",
                    format!("no answer within {budget:?}"),
                ))
            }
        };
        let owners = assign(self.pipeline.names.partitions, &live);
        let wanted: BTreeSet<u32> = owners
            .iter()
            .filter(|(_, owner)| **owner == self.me.id)
            .map(|(partition, _)| *partition)
            .collect();
        // Give up first, so that the new owner can start.
        let extra: Vec<u32> = self
            .tasks
            .keys()
            .filter(|partition| !wanted.contains(partition))
            .copied()
            .collect();
        self.hand_over(&extra).await;
        // Each takes a few round trips to the lease bucket: all at once.
        let missing: Vec<u32> = wanted
            .into_iter()
            .filter(|partition| !self.tasks.contains_key(partition))
            .collect();
        let this = &*self;
        let attempts = missing
            .iter()
            .map(|partition| this.try_take(*partition, &live, &dead));
        let mut taken = Vec::new();
        let attempted = futures_util::future::join_all(attempts).await;
        // The leases were written no later than this.
        let acquired = Instant::now();
        for attempt in attempted {
            match attempt {
                Ok(Some(lease)) => taken.push(lease),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot take a partition"),
            }
        }
        self.start(taken, acquired).await;
        Ok(())
    }

    /// Takes `partition`'s lease if it is free, ours from an earlier life,
    /// or a dead worker's; `None` while a live worker holds it.
    async fn try_take(
        &self,
        partition: u32,
        live: &[Member],
        dead: &BTreeSet<String>,
    ) -> Result<Option<Lease>, ClusterError> {
        let Some(holder) = self.leases.holder(partition).await? else {
            return self.leases.acquire(partition, &self.me.id).await;
        };
        let gone = holder.owner == self.me.id
            || dead.contains(&holder.owner)
            || (!live.iter().any(|member| member.id == holder.owner)
                && self.members.ping(&holder.owner).await == Ping::Dead);
        if !gone {
            return Ok(None);
        }
        tracing::info!(partition, holder = %holder.owner, revision = holder.revision,
            "ending the lease of a dead holder");
        if let Err(error) = self.leases.break_lease(partition, holder.revision).await {
            tracing::debug!(partition, %error, "lease changed meanwhile");
            return Ok(None);
        }
        self.leases.acquire(partition, &self.me.id).await
    }

    /// Starts the tasks of partitions whose leases we just took (at
    /// `acquired`), all at once (each connects to its state backend and its
    /// streams, which takes a while; one after another, the last of many
    /// would wait). Opening many can take a good part of a short TTL:
    /// the leases are renewed as soon as they are started, when due.
    async fn start(&mut self, leases: Vec<Lease>, acquired: Instant) {
        if leases.is_empty() {
            return;
        }
        let opening = leases.into_iter().map(|lease| {
            let pipeline = &self.pipeline;
            let runtime = self.runtime.clone();
            async move {
                let opened = open_task(pipeline, lease.partition, runtime).await;
                (lease, opened)
            }
        });
        for (lease, opened) in futures_util::future::join_all(opening).await {
            let partition = lease.partition;
            match opened {
                Ok((handle, join)) => {
                    tracing::info!(
                        worker = %self.me.id, partition, revision = lease.revision,
                        at_us = now_us() as u64, "partition started"
                    );
                    self.tasks.insert(
                        partition,
                        Task {
                            lease,
                            renewed: acquired,
                            handle,
                            join,
                        },
                    );
                }
                Err(error) => {
                    tracing::error!(partition, %error, "cannot start the partition");
                    if let Err(error) = self.leases.release(&lease).await {
                        tracing::warn!(partition, %error, "cannot release the lease");
                    }
                }
            }
        }
        self.renew_due().await;
    }

    /// Stops partitions cleanly (a final checkpoint each, all at once),
    /// then releases their leases so that their new owners start from
    /// those checkpoints.
    async fn hand_over(&mut self, partitions: &[u32]) {
        let mut stopping = Vec::with_capacity(partitions.len());
        for partition in partitions {
            if let Some(task) = self.tasks.remove(partition) {
                task.handle.shutdown();
                stopping.push(task);
            }
        }
        for mut task in stopping {
            let partition = task.lease.partition;
            let ended = tokio::time::timeout(HAND_OVER_TIMEOUT, &mut task.join).await;
            match ended {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(error))) => tracing::error!(partition, %error, "partition task failed"),
                Ok(Err(error)) => tracing::error!(partition, %error, "partition task panicked"),
                Err(_) => {
                    tracing::error!(
                        partition,
                        "no final checkpoint within {HAND_OVER_TIMEOUT:?}"
                    );
                    task.join.abort();
                    let _ = task.join.await;
                }
            }
            self.log_stopped(&task.lease);
            match self.leases.release(&task.lease).await {
                Ok(()) => tracing::info!(partition, "partition handed over"),
                Err(error) => tracing::warn!(partition, %error, "cannot release the lease"),
            }
        }
    }

    fn log_stopped(&self, lease: &Lease) {
        tracing::info!(
            worker = %self.me.id, partition = lease.partition, revision = lease.revision,
            at_us = now_us() as u64, "partition stopped"
        );
    }

    /// Hands every partition over and removes our member entry.
    async fn leave(&mut self) {
        self.me.draining = true;
        if let Err(error) = self.members.heartbeat(&self.me).await {
            tracing::warn!(%error, "cannot announce the drain");
        }
        let partitions: Vec<u32> = self.tasks.keys().copied().collect();
        self.hand_over(&partitions).await;
        if let Err(error) = self.members.remove(&self.me.id).await {
            tracing::warn!(%error, "cannot remove the member entry");
        }
        tracing::info!(worker = %self.me.id, "worker left");
    }
}
