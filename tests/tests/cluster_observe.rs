//! Scale-out observability: a worker's metrics and `GET /cluster` on its
//! admin server, the output duplicates the JetStream server reports (none
//! after a clean restart of every worker, some after a crash), and the
//! single-worker rule of sled state. Real servers: a 3-node NATS JetStream
//! cluster (one node for the sled tests), Redis, `plumber worker` processes.

use plumber_tests as harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use harness::cluster::*;
use harness::NatsServer;
use plumber::streams::nats::JetStreamSink;
use plumber::streams::Sink;
use plumber::{Batch, Event};
use plumber_cluster::lease::Leases;
use plumber_cluster::ClusterPipeline;

/// How long a positive condition is waited for before the test fails.
const PATIENCE: Duration = Duration::from_secs(120);

fn worker_label(id: &str) -> String {
    format!("worker=\"{id}\"")
}

/// Scrapes `workers` until their owned-partition gauges add up to
/// `partitions`; returns each one's scrape.
async fn wait_for_full_ownership(workers: &[&WorkerProcess], partitions: u32) -> Vec<Metrics> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut scrapes = Vec::new();
        for worker in workers {
            scrapes.push(worker.metrics().await);
        }
        let owned: f64 = workers
            .iter()
            .zip(&scrapes)
            .map(|(worker, metrics)| {
                metrics.get(
                    "plumber_cluster_partitions_owned",
                    &worker_label(&worker.id),
                )
            })
            .sum();
        if owned == f64::from(partitions) {
            return scrapes;
        }
        assert!(
            Instant::now() < deadline,
            "the workers' owned partitions add up to {owned}, not {partitions}, after \
             {PATIENCE:?}:\n{}",
            workers
                .iter()
                .map(|w| format!("--- {}\n{}", w.id, w.log_text()))
                .collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The value of `family`'s series of partition task `name` in `metrics`.
fn task_value(metrics: &Metrics, family: &str, name: &str) -> Option<f64> {
    let label = format!("pipeline=\"{name}\"");
    metrics
        .series(family)
        .into_iter()
        .find(|line| line.contains(&label))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Scrapes `workers` until every partition of `pipeline` runs at one of
/// them (`plumber_pipeline_up` 1: past its start, its last checkpoint
/// restored, or checkpoint 0 committed on a first run), so that a stop from
/// here on finds no partition still starting (an owner taken just before,
/// its consumer being created). Returns the partitions whose task had read
/// input then: each owes a final checkpoint at a clean stop (one that read
/// nothing since its start has nothing to save: its last checkpoint, its
/// previous owner's, holds all it did).
async fn wait_for_every_partition_running(
    workers: &[&WorkerProcess],
    pipeline: &ClusterPipeline,
) -> BTreeSet<u32> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut scrapes = Vec::new();
        for worker in workers {
            scrapes.push(worker.metrics().await);
        }
        let mut waiting = Vec::new();
        let mut reading = BTreeSet::new();
        for task in 0..pipeline.names.tasks() {
            let name = pipeline.names.task(task);
            let running = scrapes
                .iter()
                .find(|metrics| task_value(metrics, "plumber_pipeline_up", &name) == Some(1.0));
            match running {
                Some(metrics) => {
                    if task_value(metrics, "plumber_source_events_total", &name)
                        .is_some_and(|events| events > 0.0)
                    {
                        reading.insert(task);
                    }
                }
                None => waiting.push(name),
            }
        }
        if waiting.is_empty() {
            return reading;
        }
        assert!(
            Instant::now() < deadline,
            "partitions {waiting:?} do not run after {PATIENCE:?}:\n{}",
            workers
                .iter()
                .map(|w| format!("--- {}\n{}", w.id, w.log_text()))
                .collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The lines of the workers' logs that say something went wrong or moved.
fn notable_lines(workers: &[WorkerProcess]) -> String {
    workers
        .iter()
        .flat_map(|w| {
            w.log_text()
                .lines()
                .filter(|line| {
                    ["WARN", "ERROR", "handed over", "dead", "joined"]
                        .iter()
                        .any(|word| line.contains(word))
                })
                .map(|line| format!("{}: {line}\n", w.id))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A worker's counter (`<name>_total{worker=…}`).
fn counter(metrics: &Metrics, name: &str, worker: &str) -> f64 {
    metrics.get(name, &worker_label(worker))
}

// The JetStream sink's duplicate count

#[tokio::test]
async fn the_jetstream_sink_counts_the_duplicates_the_server_reports() {
    let server = NatsServer::start();
    let context = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    context
        .create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let batch = || {
        Batch::new(
            (0..5)
                .map(|n| {
                    let mut event = Event::new(format!("v{n}"));
                    event.headers = vec![("plumber-source-seq".into(), n.to_string())];
                    event
                })
                .collect(),
        )
    };
    let mut first = JetStreamSink::connect(&server.url(), "out", "p")
        .await
        .unwrap();
    first.write(batch()).await.unwrap();
    first.flush().await.unwrap();
    assert_eq!(first.duplicates(), 0, "new messages are not duplicates");

    // A replay: the same ids again, which the server drops and says so.
    let mut replay = JetStreamSink::connect(&server.url(), "out", "p")
        .await
        .unwrap();
    replay.write(batch()).await.unwrap();
    replay.flush().await.unwrap();
    assert_eq!(replay.duplicates(), 5);
    let mut stream = context.get_stream("OUT").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 5);
}

// Metrics and GET /cluster, and duplicates after a crash

/// Three workers with admin servers, 64 partitions; w2 is SIGKILLed
/// mid-stream. Before: the owned gauges add up to 64, each worker sees 3
/// members, its `GET /cluster` lists the partitions whose leases it holds
/// in the lease bucket, with their checkpoints. After: the survivors own
/// all 64, took partitions in new rebalances, see 2 members, and the
/// server reported duplicates to them (the replay of what w2 published
/// after its last checkpoints); no commit was fenced, no lease lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_metrics_and_cluster_view_follow_a_killed_worker() {
    let events = oracle_events();
    let setup = oracle_setup(64).await;
    let workers: Vec<WorkerProcess> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| WorkerProcess::start_with_admin(&setup.path, id, setup.dir.path()))
        .collect();
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, 0..events / 2).await })
    };
    wait_for_output(&setup.context, events / 5, PATIENCE * 2, || {
        logs_of(&workers)
    })
    .await;
    let all: Vec<&WorkerProcess> = workers.iter().collect();
    let before = wait_for_full_ownership(&all, 64).await;
    for (worker, metrics) in workers.iter().zip(&before) {
        let id = worker.id.as_str();
        assert_eq!(
            metrics.get("plumber_cluster_members", &worker_label(id)),
            3.0
        );
        assert_eq!(
            counter(metrics, "plumber_cluster_fenced_commits_total", id),
            0.0
        );
        assert_eq!(
            counter(metrics, "plumber_cluster_leases_lost_total", id),
            0.0
        );
        // One lease revision and one lag series per owned partition.
        let owned = metrics.get("plumber_cluster_partitions_owned", &worker_label(id));
        let revisions = metrics.series("plumber_cluster_partition_lease_revision");
        assert_eq!(revisions.len() as f64, owned, "{revisions:?}");
        assert!(metrics
            .value(
                "plumber_cluster_lease_renew_seconds_count",
                &worker_label(id)
            )
            .is_some());
    }

    // GET /cluster: what the worker says it owns is what the lease bucket
    // says it holds.
    let leases = Leases::open(
        &setup.context,
        &setup.pipeline.leases_bucket(),
        setup.pipeline.names.clone(),
        setup.pipeline.lease_ttl(),
    )
    .await
    .unwrap();
    let mut listed = BTreeSet::new();
    for worker in &workers {
        let view = worker.cluster_view().await;
        assert_eq!(view["worker"], worker.id.as_str(), "{view}");
        assert_eq!(view["pipeline"], "keys", "{view}");
        let members: Vec<&str> = view["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert_eq!(members, ["w1", "w2", "w3"], "{view}");
        let held = leases.all().await.unwrap();
        let partitions = view["partitions"].as_array().unwrap();
        assert!(!partitions.is_empty(), "{view}");
        assert_eq!(view["partitions_owned"], partitions.len(), "{view}");
        let mut committed = 0;
        for partition in partitions {
            let number = u32::try_from(partition["partition"].as_u64().unwrap()).unwrap();
            assert!(listed.insert(number), "partition {number} listed twice");
            assert_eq!(
                partition["task"],
                setup.pipeline.names.task(number).as_str(),
                "{partition}"
            );
            let holder = &held[&number];
            assert_eq!(holder.owner, worker.id, "partition {number}");
            // Renewals move the revision on between the two reads.
            assert!(
                partition["revision"].as_u64().unwrap() <= holder.revision,
                "{partition} vs {holder:?}"
            );
            // A partition just moved may have no consumer yet (its new
            // owner recreates it) nor a checkpoint of its own.
            if partition["committed"].is_u64() && partition["lag"].is_u64() {
                assert!(partition["fence"].as_u64().unwrap() >= 1, "{partition}");
                assert!(partition["last_commit_age_ms"].is_u64(), "{partition}");
                committed += 1;
            } else {
                eprintln!(
                    "{}: not committed or no consumer yet: {partition}",
                    worker.id
                );
            }
        }
        assert!(
            committed > 0,
            "no partition of {} has a commit and a lag: {view}",
            worker.id
        );
    }
    eprintln!(
        "GET /cluster listed {} partitions over the three workers",
        listed.len()
    );

    let survivors = [&workers[0], &workers[2]];
    let rebalanced_before: Vec<f64> = [&before[0], &before[2]]
        .iter()
        .zip(survivors)
        .map(|(m, w)| counter(m, "plumber_cluster_rebalances_total", &w.id))
        .collect();
    let taken_before: Vec<f64> = [&before[0], &before[2]]
        .iter()
        .zip(survivors)
        .map(|(m, w)| counter(m, "plumber_cluster_partitions_taken_total", &w.id))
        .collect();
    // The kill comes while events flow (the checks above may have outlasted
    // the first half): w2's partitions then have output published after
    // their last checkpoints, which their new owners publish again.
    publisher.await.unwrap();
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, events / 2..events).await })
    };
    let mut out = setup.context.get_stream("OUT").await.unwrap();
    let flowing = out.info().await.unwrap().state.messages + events / 20;
    wait_for_output(&setup.context, flowing, PATIENCE * 2, || logs_of(&workers)).await;
    workers[1].signal(libc::SIGKILL);
    publisher.await.unwrap();
    wait_for_output(&setup.context, events, PATIENCE * 3, || logs_of(&workers)).await;
    assert_oracle(&setup.context, &setup.pipeline, events).await;

    let after = wait_for_full_ownership(&survivors, 64).await;
    let mut duplicates = 0.0;
    for (i, (worker, metrics)) in survivors.iter().zip(&after).enumerate() {
        let id = worker.id.as_str();
        assert_eq!(
            metrics.get("plumber_cluster_members", &worker_label(id)),
            2.0
        );
        let rebalances = counter(metrics, "plumber_cluster_rebalances_total", id);
        let taken = counter(metrics, "plumber_cluster_partitions_taken_total", id);
        assert!(rebalances > rebalanced_before[i], "{id}: {rebalances}");
        assert!(taken > taken_before[i], "{id}: {taken}");
        assert_eq!(
            counter(metrics, "plumber_cluster_fenced_commits_total", id),
            0.0
        );
        assert_eq!(
            counter(metrics, "plumber_cluster_leases_lost_total", id),
            0.0
        );
        assert!(
            metrics.get(
                "plumber_cluster_lease_renew_seconds_count",
                &worker_label(id)
            ) > 0.0,
            "{id} renewed no lease"
        );
        let worker_duplicates = counter(metrics, "plumber_cluster_output_duplicates_total", id);
        // The per-partition series of the tasks running now are part of it.
        let running: f64 = metrics
            .series("plumber_sink_duplicates_total")
            .iter()
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        assert!(
            running <= worker_duplicates,
            "{id}: {running} > {worker_duplicates}"
        );
        eprintln!(
            "{id}: {rebalances} rebalances, {taken} partitions taken, {worker_duplicates} \
             duplicates reported; lease renewals {} in {:.3} s",
            metrics.get(
                "plumber_cluster_lease_renew_seconds_count",
                &worker_label(id)
            ),
            metrics.get("plumber_cluster_lease_renew_seconds_sum", &worker_label(id)),
        );
        duplicates += worker_duplicates;
    }
    assert!(
        duplicates > 0.0,
        "the survivors replayed w2's uncommitted output, yet the server reported no duplicate"
    );
}

// Issue test 10: a clean restart reprocesses nothing

/// Three workers mid-stream; w3 is drained first (its hand-offs show in
/// its metrics), then all three get SIGTERM at once: each hands its
/// partitions over after a final checkpoint and exits 0, and the server
/// reported no duplicate to any of them. Three new workers finish the
/// stream: the oracle is exact and, again, no duplicate was reported —
/// nothing was published twice, so nothing was reprocessed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_of_all_workers_reprocesses_nothing() {
    let events = oracle_events();
    let setup = oracle_setup(64).await;
    let mut workers: Vec<WorkerProcess> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| WorkerProcess::start_with_admin(&setup.path, id, setup.dir.path()))
        .collect();
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move { publish_events(&context, 0..events / 2).await })
    };
    wait_for_output(&setup.context, events / 5, PATIENCE * 2, || {
        logs_of(&workers)
    })
    .await;
    let all: Vec<&WorkerProcess> = workers.iter().collect();
    let before = wait_for_full_ownership(&all, 64).await;
    let w3_owned = before[2].get("plumber_cluster_partitions_owned", &worker_label("w3"));
    let w3_handed = counter(
        &before[2],
        "plumber_cluster_partitions_handed_over_total",
        "w3",
    );

    // A drain: w3 gives its partitions up, each after a final checkpoint.
    let drained = plumber(&["cluster", "drain", setup.path.to_str().unwrap(), "w3"]);
    assert!(drained.status.success(), "{}", text(&drained));
    wait_for_full_ownership(&[&workers[0], &workers[1]], 64).await;
    let deadline = Instant::now() + PATIENCE;
    let w3 = loop {
        let metrics = workers[2].metrics().await;
        if metrics.get("plumber_cluster_partitions_owned", &worker_label("w3")) == 0.0 {
            break metrics;
        }
        assert!(
            Instant::now() < deadline,
            "w3 still owns partitions:\n{}",
            workers[2].log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let handed = counter(&w3, "plumber_cluster_partitions_handed_over_total", "w3") - w3_handed;
    assert_eq!(
        handed, w3_owned,
        "w3 handed over {handed} of its {w3_owned} partitions"
    );
    let hand_offs = w3.get(
        "plumber_cluster_hand_off_seconds_count",
        &worker_label("w3"),
    );
    assert!(
        hand_offs >= handed,
        "{hand_offs} hand-off times for {handed} hand-overs"
    );
    eprintln!(
        "drain: w3 handed {handed} partitions over, {:.3} s in all ({:.3} s each on average)",
        w3.get("plumber_cluster_hand_off_seconds_sum", &worker_label("w3")),
        w3.get("plumber_cluster_hand_off_seconds_sum", &worker_label("w3")) / hand_offs
    );

    // Every partition running first: one just handed over by w3 may still
    // be starting (under load, for seconds), and one never started before
    // has no checkpoint at all.
    let reading =
        wait_for_every_partition_running(&[&workers[0], &workers[1]], &setup.pipeline).await;

    // SIGTERM to every worker at once, mid-stream.
    let stopped = Instant::now();
    let stopped_ms = now_us() / 1000;
    for worker in &workers {
        worker.signal(libc::SIGTERM);
    }
    for worker in &mut workers {
        let status = worker.wait_exit(PATIENCE);
        assert!(
            status.success(),
            "{} exited {status}:\n{}",
            worker.id,
            worker.log_text()
        );
    }
    eprintln!(
        "all three workers stopped {:?} after SIGTERM",
        stopped.elapsed()
    );
    let mut out = setup.context.get_stream("OUT").await.unwrap();
    let out_at_stop = out.info().await.unwrap().state.messages;
    assert!(out_at_stop < events, "the stream was not stopped mid-way");
    for worker in &workers {
        assert_eq!(
            worker.duplicates_at_exit(),
            0,
            "{} was told of duplicate publishes in a run without faults:\n{}",
            worker.id,
            worker.log_text()
        );
    }
    // Every partition has a checkpoint, and each that had read input
    // since its start took a final one at the stop.
    let last = last_checkpoints(&setup.pipeline, &(0..64).collect::<Vec<_>>()).await;
    let missing: BTreeMap<u32, Option<(u64, u64)>> = last
        .iter()
        .filter(|(partition, record)| {
            record.as_ref().is_none_or(|record| {
                record.fence == 0
                    || (reading.contains(partition) && record.committed_at_ms < stopped_ms)
            })
        })
        .map(|(partition, record)| {
            let record = record.as_ref().map(|r| (r.fence, r.committed_at_ms));
            (*partition, record)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "partitions with no checkpoint, or none at the stop (ms {stopped_ms}) after reading \
         input, as (fence, committed at ms): {missing:?}; read input: {reading:?}"
    );
    eprintln!(
        "{} of 64 partitions had read input since their start, and committed a final \
         checkpoint at the stop",
        reading.len()
    );

    // Again, with new workers: the rest of the stream.
    let restarted: Vec<WorkerProcess> = ["r1", "r2", "r3"]
        .iter()
        .map(|id| WorkerProcess::start_with_admin(&setup.path, id, setup.dir.path()))
        .collect();
    publisher.await.unwrap();
    publish_events(&setup.context, events / 2..events).await;
    let logs = || logs_of(&workers) + &logs_of(&restarted);
    wait_for_output(&setup.context, events, PATIENCE * 3, logs).await;
    assert_oracle(&setup.context, &setup.pipeline, events).await;
    let all: Vec<&WorkerProcess> = restarted.iter().collect();
    let scrapes = wait_for_full_ownership(&all, 64).await;
    let mut read_after = 0.0;
    for (worker, metrics) in restarted.iter().zip(&scrapes) {
        let id = worker.id.as_str();
        assert_eq!(
            counter(metrics, "plumber_cluster_output_duplicates_total", id),
            0.0,
            "{id} was told of duplicate publishes after a clean restart; the warnings and \
             hand-overs of the workers of both runs:\n{}",
            notable_lines(&workers) + &notable_lines(&restarted)
        );
        assert_eq!(
            counter(metrics, "plumber_cluster_fenced_commits_total", id),
            0.0
        );
        let events_in: f64 = metrics
            .series("plumber_source_events_total")
            .iter()
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum();
        eprintln!("{id} read {events_in} events after the restart");
        read_after += events_in;
    }
    // Partitions that moved between the new workers took their counts
    // along (their series end with them), so this can be below the rest
    // of the stream, but never above: nothing was read twice.
    let rest = (events - out_at_stop) as f64;
    assert!(
        read_after <= rest,
        "the new workers read {read_after} events, the stream had {rest} left"
    );
    let mut restarted = restarted;
    for worker in &mut restarted {
        let status = worker.terminate();
        assert!(
            status.success(),
            "{} exited {status}:\n{}",
            worker.id,
            worker.log_text()
        );
        assert_eq!(worker.duplicates_at_exit(), 0, "{}", worker.log_text());
    }
    eprintln!(
        "clean restart: {out_at_stop} of {events} outputs before the stop, the rest after; no \
         duplicate publish reported in either run"
    );
}

// sled: one worker only

/// A clustered pipeline on sled state with 4 partitions on one NATS
/// server.
fn sled_setup(server: &NatsServer, dir: &std::path::Path) -> std::path::PathBuf {
    let mut config = cluster_config(&[server.url()], 4, "redis://127.0.0.1:1/");
    config["state"] = serde_json::json!({ "type": "sled", "path": dir.join("state") });
    write_config(dir, "sled.json", &config)
}

/// Every worker of a sled pipeline shares the machine's one database, so
/// a second worker is refused (exit 2, naming `state.type` and the worker
/// that runs it) while the first keeps all its partitions; once that one
/// is killed, a new worker starts at once — the dead worker's member entry,
/// which outlives it by up to the lease TTL, does not block it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_on_sled_state_is_refused_naming_state_type() {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = sled_setup(&server, dir.path());
    let pipeline = ClusterPipeline::load(&path).unwrap();
    plumber_cluster::init::init(&pipeline).await.unwrap();

    let first = WorkerProcess::start_with_admin(&path, "s1", dir.path());
    wait_for_full_ownership(&[&first], 4).await;
    let view = first.cluster_view().await;
    assert_eq!(view["partitions_owned"], 4, "{view}");

    let mut second = WorkerProcess::start_with(&path, "s2", dir.path(), &[]);
    let status = second.wait_exit(PATIENCE);
    let log = second.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("at `state.type`"), "{log}");
    assert!(
        log.contains("`sled` state is local to one machine"),
        "{log}"
    );
    assert!(log.contains("`s1`"), "{log}");
    let metrics = first.metrics().await;
    assert_eq!(
        metrics.get("plumber_cluster_partitions_owned", &worker_label("s1")),
        4.0
    );
    assert!(
        !first.log_text().contains("partition stopped"),
        "s1 gave a partition up:\n{}",
        first.log_text()
    );

    // A crash, and a new worker at once: the dead one's entry is ignored.
    first.signal(libc::SIGKILL);
    let mut first = first;
    first.wait_exit(PATIENCE);
    let started = Instant::now();
    let mut successor = WorkerProcess::start_with_admin(&path, "s3", dir.path());
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = successor.child.try_wait().unwrap() {
            panic!("s3 exited {status}:\n{}", successor.log_text());
        }
        let metrics = successor.metrics().await;
        if metrics.get("plumber_cluster_partitions_owned", &worker_label("s3")) == 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "s3 did not take the partitions:\n{}",
            successor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the successor owned the 4 partitions {:?} after it started",
        started.elapsed()
    );
    let view = successor.cluster_view().await;
    assert_eq!(view["partitions_owned"], 4, "{view}");
    assert_eq!(
        successor.terminate().code(),
        Some(0),
        "{}",
        successor.log_text()
    );
}

// One process per worker id

/// Two processes with one worker id would take each other's partitions
/// (each ends the other's leases as a dead holder's). A second `d1` is
/// refused (exit 2, naming the id) while the first keeps all it holds; of
/// two processes started at the same moment with one id, never do both
/// run; a crashed worker's successor with its id starts at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_running_workers_id_is_refused() {
    let server = NatsServer::start();
    let redis = harness::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        "ids.json",
        &cluster_config(&[server.url()], 4, &redis.url()),
    );
    let pipeline = ClusterPipeline::load(&path).unwrap();
    plumber_cluster::init::init(&pipeline).await.unwrap();
    let refused = |log: &str| {
        log.contains("a worker with id `d1` runs this pipeline already")
            && log.contains("give this one another `--id`")
    };

    let first = WorkerProcess::start_with_admin(&path, "d1", dir.path());
    wait_for_full_ownership(&[&first], 4).await;
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let mut second = WorkerProcess::start(&path, "d1", &again);
    let status = second.wait_exit(PATIENCE);
    let log = second.log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(refused(&log), "{log}");
    assert!(log.contains("(it answers its ping)"), "{log}");
    // The first kept what it had: nothing stopped, nothing taken again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = first.metrics().await;
    assert_eq!(
        metrics.get("plumber_cluster_partitions_owned", &worker_label("d1")),
        4.0
    );
    assert!(
        !first.log_text().contains("partition stopped"),
        "d1 gave a partition up:\n{}",
        first.log_text()
    );

    // A crash, and a successor with the same id at once.
    first.signal(libc::SIGKILL);
    let mut first = first;
    first.wait_exit(PATIENCE);
    let successor_dir = dir.path().join("successor");
    std::fs::create_dir(&successor_dir).unwrap();
    let mut successor = WorkerProcess::start_with_admin(&path, "d1", &successor_dir);
    wait_for_full_ownership(&[&successor], 4).await;
    assert_eq!(
        successor.terminate().code(),
        Some(0),
        "{}",
        successor.log_text()
    );

    // Two at the same moment (no worker runs): at most one runs. The
    // fault point holds each after its check that nobody answers the id
    // (both pass it) and before it answers there itself.
    let hold = [(
        plumber_cluster::fault::HOLD_AFTER_ID_CHECK,
        "2000".to_owned(),
    )];
    let twins: Vec<WorkerProcess> = ["twin-a", "twin-b"]
        .iter()
        .map(|name| {
            let twin_dir = dir.path().join(name);
            std::fs::create_dir(&twin_dir).unwrap();
            WorkerProcess::start_with_env(&path, "d1", &twin_dir, &hold)
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut twins = twins;
    let running: Vec<bool> = twins
        .iter_mut()
        .map(|twin| twin.child.try_wait().unwrap().is_none())
        .collect();
    let logs: Vec<String> = twins.iter().map(WorkerProcess::log_text).collect();
    assert!(
        !(running[0] && running[1]),
        "both processes with id d1 run:\n{}\n---\n{}",
        logs[0],
        logs[1]
    );
    for (twin, log) in twins.iter_mut().zip(&logs) {
        assert!(log.contains("holding after the check of the id"), "{log}");
        if twin.child.try_wait().unwrap().is_some() {
            assert_eq!(twin.wait_exit(PATIENCE).code(), Some(2), "{log}");
            assert!(refused(log), "{log}");
        }
    }
    eprintln!(
        "of two processes started at once with one id, {} ran",
        running.iter().filter(|r| **r).count()
    );
}
