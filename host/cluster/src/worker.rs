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
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::assign::assign;
use crate::init::{check_version, connect, input_generation};
use crate::lease::{Lease, Leases, RenewError};
use crate::membership::{check_worker_id, Member, Members, Ping};
use crate::observe::WorkerView;
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

/// A partition held: its lease is kept, and its pipeline run, by a keeper
/// task of its own (see [`keep`]), so that no round of the worker (a slow
/// start, a hand-over waiting for final checkpoints) delays a renewal.
struct Held {
    /// Asks the keeper for a hand-over (a final checkpoint, then the lease
    /// released); taken once sent.
    hand_over: Option<oneshot::Sender<()>>,
    /// The keeper; it ends when the partition has stopped.
    keeper: JoinHandle<Ended>,
}

/// How a keeper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Handed over after a final checkpoint (or after the hand-over
    /// timeout), its lease released.
    HandedOver,
    /// Its pipeline ended by itself (the source ended, or a failure such as
    /// a fenced commit), its lease released.
    Stopped,
    /// Its lease was lost (taken by another, or not renewed within its
    /// TTL): its pipeline was aborted at once, as a crash would be.
    LeaseLost,
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
/// sled state is used while another worker of the pipeline lives.
pub async fn run(
    pipeline: ClusterPipeline,
    options: WorkerOptions,
    runtime: Runtime,
    stop: watch::Receiver<bool>,
) -> Result<(), ClusterError> {
    let view = WorkerView::new(&options.id, &pipeline);
    run_observed(pipeline, options, runtime, stop, view).await
}

/// As [`run`], keeping what the worker does in `view` (made for the same
/// id and pipeline), which its admin server serves: its partitions run in
/// the view's supervisor, its counters count there.
///
/// # Errors
///
/// As [`run`].
pub async fn run_observed(
    mut pipeline: ClusterPipeline,
    options: WorkerOptions,
    runtime: Runtime,
    mut stop: watch::Receiver<bool>,
    view: Arc<WorkerView>,
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
    // The stream says which generation of partitions runs, and refuses a
    // config with another partition count.
    pipeline.set_generation(input_generation(&context, &pipeline).await?);
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
    // Before anything is written under the id: a second process with the
    // id of a running worker would end that one's leases as a dead
    // holder's, and it would end the new one's.
    // An unanswered ping (a server slow under load, or a hung process) is
    // asked again before it refuses the start.
    let mut found = members.ping(&me.id).await;
    for _ in 1..ID_CHECK_PINGS {
        if found != Ping::Unknown {
            break;
        }
        found = members.ping(&me.id).await;
    }
    match found {
        Ping::Dead => {}
        Ping::Alive => return Err(id_taken(&me.id, "it answers its ping")),
        Ping::Unknown => {
            return Err(id_taken(
                &me.id,
                "it is connected but does not answer its ping: hung?",
            ))
        }
    }
    if !pipeline.shared_state() {
        // Registered before looking, and not answering pings yet: of two
        // workers starting at once, each sees the other (both refuse) or
        // one sees the first (it refuses); never do both run. A running
        // sled worker finds the refused one dead by ping and forgets it.
        members.heartbeat(&me).await?;
        let others = live_others(&members, &me.id).await;
        let others = match others {
            Ok(others) => others,
            Err(error) => {
                let _ = members.remove(&me.id).await;
                return Err(error);
            }
        };
        if !others.is_empty() {
            if let Err(error) = members.remove(&me.id).await {
                tracing::warn!(%error, "cannot remove the member entry");
            }
            return Err(single_worker_state(&pipeline, &others));
        }
    }
    let drain = Arc::new(AtomicBool::new(false));
    crate::fault::hold(
        crate::fault::HOLD_AFTER_ID_CHECK,
        "holding after the check of the id",
    )
    .await;
    let instance = client.new_inbox();
    let pings = members
        .answer_pings(&me.id, &instance, drain.clone())
        .await?;
    // Two processes that passed the ping above at the same moment: each
    // answers now, so each sees the other (both refuse) or one sees the
    // first (it refuses).
    if members.answered_by_another(&me.id, &instance).await? {
        pings.abort();
        return Err(id_taken(
            &me.id,
            "another process started with it at the same moment",
        ));
    }
    members.heartbeat(&me).await?;
    view.joined(context.clone(), &pipeline);
    tracing::info!(worker = %me.id, partitions = pipeline.names.partitions,
        tasks = pipeline.names.tasks(), "worker joined");

    let mut worker = Worker {
        keeping: Keeping {
            pipeline: Arc::new(pipeline),
            leases,
            runtime,
            worker: me.id.clone(),
            view: view.clone(),
        },
        view,
        me,
        members,
        held: BTreeMap::new(),
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
    view: &WorkerView,
) -> Result<(PipelineHandle, JoinHandle<Result<RunReport, PipelineError>>), ClusterError> {
    let config = pipeline.partition_config(partition)?;
    let state =
        view.states().open(&config).await.map_err(|e| {
            ClusterError::jetstream(format!("opening the state of {}", config.name), e)
        })?;
    let builder = config
        .builder(state)
        .await
        .map_err(|e| ClusterError::jetstream(format!("opening {}", config.name), e))?
        .runtime(runtime);
    view.supervisor()
        .start(&config.name, view.tenant(), builder)
        .map_err(|e| ClusterError::jetstream(format!("starting {}", config.name), e))
}

/// The other workers of `members` that are not known dead: listed, and
/// answering their ping or silent (a hung worker still holds its state).
///
/// # Errors
///
/// The members cannot be listed (then nobody can say the worker is alone).
async fn live_others(members: &Members, me: &str) -> Result<Vec<String>, ClusterError> {
    let mut live = Vec::new();
    for member in members.list().await? {
        if member.id != me && members.ping(&member.id).await != Ping::Dead {
            live.push(member.id);
        }
    }
    Ok(live)
}

/// How many times a starting worker pings its own id while the ping goes
/// unanswered (each waits up to [`crate::membership::PING_TIMEOUT`]).
const ID_CHECK_PINGS: usize = 5;

/// The refusal of a worker whose id another process runs as.
fn id_taken(id: &str, how: &str) -> ClusterError {
    ClusterError::WorkerIdTaken {
        id: id.to_owned(),
        how: how.to_owned(),
    }
}

/// The refusal of a second worker on a pipeline whose state is local.
fn single_worker_state(pipeline: &ClusterPipeline, others: &[String]) -> ClusterError {
    ClusterError::Invalid {
        file: pipeline.origin.clone(),
        path: "state.type".into(),
        message: format!(
            "`{}` state is local to one machine, so a clustered pipeline with it runs on one \
             worker only, and worker(s) {} run it already: stop them first, or use `redis` \
             state (shared, fenced per partition) for several workers",
            pipeline.config.state.type_name(),
            others
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What a keeper needs: shared by every partition of a worker.
#[derive(Clone)]
struct Keeping {
    pipeline: Arc<ClusterPipeline>,
    leases: Leases,
    runtime: Runtime,
    worker: String,
    /// What the admin server shows: tasks, members, counters.
    view: Arc<WorkerView>,
}

impl Keeping {
    fn log_started(&self, lease: &Lease) {
        self.view.started(lease.partition, lease.revision);
        tracing::info!(
            worker = %self.worker, partition = lease.partition, revision = lease.revision,
            at_us = now_us() as u64, "partition started"
        );
    }

    fn log_stopped(&self, lease: &Lease) {
        self.view.stopped(lease.partition);
        tracing::info!(
            worker = %self.worker, partition = lease.partition, revision = lease.revision,
            at_us = now_us() as u64, "partition stopped"
        );
    }

    /// Releases `lease`; `handed_over` says since when a hand-over was
    /// asked (for the hand-off time), if it was.
    async fn release(&self, lease: &Lease, handed_over: Option<Instant>) {
        match self.leases.release(lease).await {
            Ok(()) if handed_over.is_some() => {
                let counters = &self.view.counters;
                if let Some(asked) = handed_over {
                    counters.hand_off.record_duration(asked.elapsed());
                }
                counters
                    .partitions_handed_over
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(partition = lease.partition, "partition handed over");
            }
            Ok(()) => {}
            Err(error) => {
                tracing::warn!(partition = lease.partition, %error, "cannot release the lease");
            }
        }
    }

    /// Renews `lease` if due. `Err` when it is lost: the caller stops the
    /// partition at once. A renewal not answered is retried (soon) until
    /// the TTL since the last one has passed.
    async fn renew(&self, lease: &mut Lease, renewal: &mut Renewal) -> Result<(), ()> {
        let partition = lease.partition;
        let every = self.leases.renew_every();
        let asked = Instant::now();
        let outcome = if renewal.after_unanswered {
            self.leases.renew_after_unanswered(lease).await
        } else {
            self.leases.renew(lease).await
        };
        self.view
            .counters
            .lease_renew
            .record_duration(asked.elapsed());
        match outcome {
            Ok(()) => {
                self.view.renewed(partition, lease.revision);
                renewal.renewed = Instant::now();
                renewal.next = tokio::time::Instant::now() + every;
                renewal.after_unanswered = false;
                Ok(())
            }
            Err(RenewError::Lost { message, .. }) => {
                self.lost();
                tracing::error!(partition, message, "lease lost: stopping the partition");
                Err(())
            }
            Err(RenewError::Unanswered { message, .. }) => {
                if renewal.renewed.elapsed() >= self.leases.ttl() {
                    self.lost();
                    tracing::error!(
                        partition,
                        message,
                        "lease not renewed within its TTL: stopping the partition"
                    );
                    return Err(());
                }
                tracing::warn!(partition, message, "lease renewal not answered");
                renewal.next = tokio::time::Instant::now() + RENEW_RETRY.min(every);
                renewal.after_unanswered = true;
                Ok(())
            }
        }
    }
}

impl Keeping {
    fn lost(&self) {
        self.view
            .counters
            .leases_lost
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// When a lease was last renewed and is next due.
struct Renewal {
    /// The last renewal (or the acquire) that was answered.
    renewed: Instant,
    /// When the next renewal is due.
    next: tokio::time::Instant,
    /// Whether the last renewal went unanswered: it may have landed, so
    /// the next one adopts our own newer write (see
    /// [`Leases::renew_after_unanswered`]).
    after_unanswered: bool,
}

/// How soon a renewal that was not answered is tried again.
const RENEW_RETRY: Duration = Duration::from_millis(250);

/// Keeps partition `lease.partition`: opens and runs its pipeline while
/// renewing its lease every quarter of the TTL, from the moment it was
/// `acquired`. Ends when the pipeline ends (lease released), when asked to
/// hand over (a final checkpoint, then the lease released; renewals go on
/// meanwhile, so a slow final checkpoint does not lose it), or when the
/// lease is lost (the pipeline aborted at once; its uncommitted work is
/// replayed by the next owner and a commit it would still attempt is
/// refused by the fence the next owner claimed).
async fn keep(
    keeping: Keeping,
    mut lease: Lease,
    acquired: Instant,
    mut hand_over: oneshot::Receiver<()>,
) -> Ended {
    let partition = lease.partition;
    keeping.log_started(&lease);
    let mut renewal = Renewal {
        renewed: acquired,
        next: tokio::time::Instant::from_std(acquired) + keeping.leases.renew_every(),
        after_unanswered: false,
    };
    let opening = open_task(
        &keeping.pipeline,
        partition,
        keeping.runtime.clone(),
        &keeping.view,
    );
    tokio::pin!(opening);
    let (handle, mut join) = loop {
        tokio::select! {
            opened = &mut opening => match opened {
                Ok(task) => break task,
                Err(error) => {
                    tracing::error!(partition, %error, "cannot start the partition");
                    keeping.log_stopped(&lease);
                    keeping.release(&lease, None).await;
                    return Ended::Stopped;
                }
            },
            () = tokio::time::sleep_until(renewal.next) => {
                if keeping.renew(&mut lease, &mut renewal).await.is_err() {
                    // Dropping `opening` abandons the start (nothing runs yet).
                    keeping.log_stopped(&lease);
                    return Ended::LeaseLost;
                }
            }
            _ = &mut hand_over => {
                keeping.log_stopped(&lease);
                keeping.release(&lease, Some(Instant::now())).await;
                return Ended::HandedOver;
            }
        }
    };
    // The hand-over's deadline, and when it was asked.
    let mut handing_over: Option<tokio::time::Instant> = None;
    let mut asked: Option<Instant> = None;
    loop {
        tokio::select! {
            ended = &mut join => {
                match ended {
                    Ok(Ok(_)) if handing_over.is_some() => {}
                    Ok(Ok(_)) => tracing::warn!(partition, "partition task ended"),
                    Ok(Err(error)) => {
                        keeping.view.task_failed(&error);
                        // With its causes: why it failed is why it stopped
                        // (a fenced commit, its consumer recreated by a
                        // new owner).
                        tracing::error!(
                            partition,
                            error = %plumber_engine::ErrorChain(&error),
                            "partition task failed"
                        );
                    }
                    Err(error) => tracing::error!(partition, %error, "partition task panicked"),
                }
                keeping.log_stopped(&lease);
                keeping.release(&lease, asked).await;
                return if handing_over.is_some() { Ended::HandedOver } else { Ended::Stopped };
            }
            () = tokio::time::sleep_until(renewal.next) => {
                if keeping.renew(&mut lease, &mut renewal).await.is_err() {
                    join.abort();
                    let _ = (&mut join).await;
                    keeping.log_stopped(&lease);
                    return Ended::LeaseLost;
                }
            }
            _ = &mut hand_over, if handing_over.is_none() => {
                handle.shutdown();
                handing_over = Some(tokio::time::Instant::now() + HAND_OVER_TIMEOUT);
                asked = Some(Instant::now());
            }
            () = sleep_until_or_never(handing_over) => {
                tracing::error!(partition, "no final checkpoint within {HAND_OVER_TIMEOUT:?}");
                join.abort();
                let _ = (&mut join).await;
                keeping.log_stopped(&lease);
                keeping.release(&lease, asked).await;
                return Ended::HandedOver;
            }
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

struct Worker {
    keeping: Keeping,
    /// What the admin server shows: tasks, members, counters.
    view: Arc<WorkerView>,
    me: Member,
    members: Members,
    held: BTreeMap<u32, Held>,
    last_heartbeat: Instant,
    /// Set by a drain request: announce it, then hand everything over.
    drain: Arc<AtomicBool>,
}

impl Worker {
    fn leases(&self) -> &Leases {
        &self.keeping.leases
    }

    async fn tick(&mut self) -> Result<(), ClusterError> {
        self.reap_ended().await;
        let draining = self.drain.load(Ordering::SeqCst);
        if draining && !self.me.draining {
            tracing::info!(worker = %self.me.id, "draining: handing every partition over");
            self.me.draining = true;
            self.heartbeat().await?;
        }
        if self.last_heartbeat.elapsed() >= self.leases().renew_every() {
            self.heartbeat().await?;
        }
        self.rebalance().await
    }

    /// Refreshes our member entry, giving up after a renewal period: while
    /// the JetStream meta leader is elected (seconds, after a node died)
    /// the round goes on, and the next one tries again.
    async fn heartbeat(&mut self) -> Result<(), ClusterError> {
        let budget = self.leases().renew_every();
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

    /// Forgets the partitions whose keepers ended (handed over, stopped by
    /// a failure, or their lease lost): their leases are released or
    /// gone, so another worker (or this one) may take them again.
    async fn reap_ended(&mut self) {
        let ended: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, held)| held.keeper.is_finished())
            .map(|(partition, _)| *partition)
            .collect();
        for partition in ended {
            if let Some(held) = self.held.remove(&partition) {
                match held.keeper.await {
                    Ok(ended) => tracing::debug!(partition, ?ended, "partition let go"),
                    Err(error) => tracing::error!(partition, %error, "partition keeper panicked"),
                }
            }
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
        // JetStream meta leader: while one is elected the round gives up
        // (renewals go on in the keepers) and the next one tries again.
        let budget = self.leases().renew_every();
        let (live, dead) = match tokio::time::timeout(budget, self.live_members()).await {
            Ok(members) => members?,
            Err(_) => {
                return Err(ClusterError::jetstream(
                    "listing the live members",
                    format!("no answer within {budget:?}"),
                ))
            }
        };
        self.view
            .set_members(live.iter().map(|member| member.id.clone()).collect());
        let owners = assign(self.keeping.pipeline.names.tasks(), &live);
        let wanted: BTreeSet<u32> = owners
            .iter()
            .filter(|(_, owner)| **owner == self.me.id)
            .map(|(partition, _)| *partition)
            .collect();
        // Give up what is not ours any more: each keeper takes a final
        // checkpoint and releases the lease, and the new owner takes it
        // on one of its next rounds.
        let handing_over = self.hand_over(|partition| !wanted.contains(&partition));
        // Each takes a few round trips to the lease bucket: all at once.
        let missing: Vec<u32> = wanted
            .into_iter()
            .filter(|partition| !self.held.contains_key(partition))
            .collect();
        let this = &*self;
        let attempts = missing
            .iter()
            .map(|partition| this.try_take(*partition, &live, &dead));
        let mut taken = Vec::new();
        for attempt in futures_util::future::join_all(attempts).await {
            match attempt {
                Ok(Some(acquired)) => taken.push(acquired),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot take a partition"),
            }
        }
        if handing_over > 0 || !taken.is_empty() {
            self.view
                .counters
                .rebalances
                .fetch_add(1, Ordering::Relaxed);
        }
        for (lease, acquired) in taken {
            let (ask, asked) = oneshot::channel();
            let partition = lease.partition;
            let keeper = tokio::spawn(keep(self.keeping.clone(), lease, acquired, asked));
            self.held.insert(
                partition,
                Held {
                    hand_over: Some(ask),
                    keeper,
                },
            );
        }
        Ok(())
    }

    /// Takes `partition`'s lease if it is free, ours from an earlier life,
    /// or a dead worker's; `None` while a live worker holds it. With the
    /// lease, the moment it was written (renewals count from there).
    async fn try_take(
        &self,
        partition: u32,
        live: &[Member],
        dead: &BTreeSet<String>,
    ) -> Result<Option<(Lease, Instant)>, ClusterError> {
        let leases = self.leases();
        let acquire = || async {
            let asked = Instant::now();
            Ok(leases
                .acquire(partition, &self.me.id)
                .await?
                .map(|lease| (lease, asked)))
        };
        let Some(holder) = leases.holder(partition).await? else {
            return acquire().await;
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
        if let Err(error) = leases.break_lease(partition, holder.revision).await {
            tracing::debug!(partition, %error, "lease changed meanwhile");
            return Ok(None);
        }
        acquire().await
    }

    /// Asks the keepers of the partitions `which` selects to hand over
    /// (each a final checkpoint, then its lease released); does not wait.
    /// Returns how many were asked now.
    fn hand_over(&mut self, which: impl Fn(u32) -> bool) -> usize {
        let mut asked = 0;
        for (partition, held) in &mut self.held {
            if which(*partition) {
                if let Some(ask) = held.hand_over.take() {
                    // A keeper that already ended has dropped its end.
                    let _ = ask.send(());
                    asked += 1;
                }
            }
        }
        asked
    }

    /// Hands every partition over, waits for the keepers, and removes our
    /// member entry.
    async fn leave(&mut self) {
        self.me.draining = true;
        if let Err(error) = self.members.heartbeat(&self.me).await {
            tracing::warn!(%error, "cannot announce the drain");
        }
        self.hand_over(|_| true);
        for (partition, held) in std::mem::take(&mut self.held) {
            if let Err(error) = held.keeper.await {
                tracing::error!(partition, %error, "partition keeper panicked");
            }
        }
        if let Err(error) = self.members.remove(&self.me.id).await {
            tracing::warn!(%error, "cannot remove the member entry");
        }
        // Tests read it: a clean restart must have made the output's
        // server drop nothing.
        tracing::info!(
            worker = %self.me.id,
            output_duplicates = self.view.output_duplicates(),
            "worker left"
        );
    }
}
