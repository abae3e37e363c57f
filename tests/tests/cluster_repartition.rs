//! Scale-out in two stages: a `repartition` step splits a clustered
//! pipeline into stages joined by a partitioned JetStream stream. Real
//! servers: `nats-server` 2.10+ (a single node, and a 3-node JetStream
//! cluster on loopback), Redis; workers as `plumber worker` processes.

use plumber_tests as harness;

use std::collections::BTreeMap;

use harness::cluster::*;
use plumber::config::{PipelineConfig, ReadStandard};
use plumber_cluster::partition::partition_of;
use plumber_cluster::ClusterPipeline;

// Config

#[test]
fn a_repartition_step_needs_a_cluster_and_is_strict() {
    let dir = tempfile::tempdir().unwrap();
    let urls = vec!["nats://127.0.0.1:4222".to_owned()];
    let parse = |config: &serde_json::Value| {
        PipelineConfig::parse(&config.to_string(), "c.json", dir.path())
            .map(drop)
            .map_err(|error| error.to_string())
    };
    let good = two_stage_config(&urls, 8, "redis://127.0.0.1:1/");
    parse(&good).expect("a two-stage config reads");

    let mut unclustered = good.clone();
    unclustered.as_object_mut().unwrap().remove("cluster");
    let error = parse(&unclustered).unwrap_err();
    assert!(error.contains("at `pipeline[0].type`"), "{error}");
    assert!(error.contains("`cluster`"), "{error}");

    let mut twice = good.clone();
    let again = serde_json::json!({ "name": "again", "type": "repartition", "key_by": "key" });
    twice["pipeline"].as_array_mut().unwrap().push(again);
    let error = parse(&twice).unwrap_err();
    assert!(error.contains("at `pipeline[2].type`"), "{error}");
    assert!(error.contains("at most one"), "{error}");

    let mut unknown = good.clone();
    unknown["pipeline"][0]["keyby"] = "key".into();
    let error = parse(&unknown).unwrap_err();
    assert!(error.contains("pipeline[0].keyby"), "{error}");

    let mut bad_key = good.clone();
    bad_key["pipeline"][0]["key_by"] = serde_json::json!({ "column": "user" });
    let error = parse(&bad_key).unwrap_err();
    assert!(error.contains("pipeline[0].key_by"), "{error}");

    let mut empty_field = good.clone();
    empty_field["pipeline"][0]["key_by"] = serde_json::json!({ "field": "" });
    let error = parse(&empty_field).unwrap_err();
    assert!(error.contains("at `pipeline[0].key_by.field`"), "{error}");

    let mut dotted = good.clone();
    dotted["pipeline"][0]["stream"] = "a.b".into();
    let error = parse(&dotted).unwrap_err();
    assert!(error.contains("at `pipeline[0].stream`"), "{error}");

    // The worker's view: two stages of 8 partitions each.
    let path = write_config(dir.path(), "users.json", &good);
    let pipeline = ClusterPipeline::load(&path).unwrap();
    assert_eq!(pipeline.names.tasks(), 16);
    assert_eq!(pipeline.partition_config(0).unwrap().name, "users.s1#p00");
    assert_eq!(pipeline.partition_config(15).unwrap().name, "users.s2#p07");
}

// A shuffle by a field, through one worker

/// Stage 1 shuffles JSON events by their `user` field (keys that are not
/// plain subject tokens among them); stage 2 has no steps and publishes
/// to `out`. Each event crosses the shuffle stream under the partition of
/// its key's token as the server files it (which equals plumber's
/// `partition_of`), and reaches the output keyed by its field.
#[tokio::test]
async fn a_shuffle_by_field_files_each_key_under_its_partition() {
    let server = harness::NatsServer::start();
    let redis = harness::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let urls = vec![server.url()];
    let mut config = two_stage_config(&urls, 4, &redis.url());
    config["pipeline"] = serde_json::json!([
        { "name": "by_user", "type": "repartition", "key_by": { "field": "user" },
          "stream": "SHUF" }
    ]);
    let path = write_config(dir.path(), "users.json", &config);
    let pipeline = ClusterPipeline::load(&path).unwrap();
    let context = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    // The output stream first, by name (`cluster init` would make one).
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out".into()],
            duplicate_window: plumber_cluster::init::DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .unwrap();
    plumber_cluster::init::init(&pipeline).await.unwrap();
    let users = ["ada", "a.b", "x y", "*", "é", "42", "~61", "bob"];
    let events = 400u64;
    let mut acks = Vec::new();
    for id in 0..events {
        let user: serde_json::Value = if id % 9 == 8 {
            // A number: shuffled by its JSON text.
            serde_json::json!(7)
        } else {
            users[(id % 8) as usize].into()
        };
        let value = serde_json::json!({ "id": id, "user": user }).to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("e{id}").as_str());
        acks.push(
            context
                .publish_with_headers(format!("in.{}", id % 13), headers, value.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let worker = WorkerProcess::start(&path, "w1", dir.path());
    wait_for_output(
        &context,
        events,
        std::time::Duration::from_secs(120),
        || worker.log_text(),
    )
    .await;

    let user_of = |payload: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        match &value["user"] {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        }
    };
    let shuffled = read_stream(&context, "SHUF").await;
    assert_eq!(shuffled.len() as u64, events);
    let mut partitions_used = std::collections::BTreeSet::new();
    for (_, subject, payload, key) in &shuffled {
        let user = user_of(payload);
        let token = plumber::shuffle::subject_token(user.as_bytes());
        let partition = partition_of(token.as_bytes(), 4);
        assert_eq!(subject, &format!("SHUF-p.{partition}.{token}"), "{payload}");
        assert_eq!(key.as_deref(), Some(user.as_str()), "{payload}");
        partitions_used.insert(partition);
    }
    assert!(partitions_used.len() > 1, "{partitions_used:?}");
    let output = read_stream(&context, "OUT").await;
    let mut ids = std::collections::BTreeSet::new();
    for (_, _, payload, key) in &output {
        assert_eq!(key.as_deref(), Some(user_of(payload).as_str()), "{payload}");
        let value: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert!(ids.insert(value["id"].as_u64().unwrap()), "{payload} twice");
    }
    assert_eq!(ids.len() as u64, events);
    drop(worker);
    let _ = (&server, &redis);
}

// Issue test 9

/// How many moments a kill is tried at (see the test below) before the
/// test gives up.
const KILL_ATTEMPTS: u32 = 10;

/// How many of the shuffle stream's newest messages are looked at for
/// publishes past a frozen worker's commits: the newest are where such
/// publishes stand, and reading few keeps the freeze short.
const SHUFFLE_TAIL: u64 = 2_000;

/// The committed input position of each stage-1 task of `tasks` whose last
/// checkpoint still carries the fence it had in `fences`: the commits of
/// the owner the fences were read under, for those of its tasks no new
/// owner has committed since.
async fn owner_commits(
    pipeline: &ClusterPipeline,
    tasks: &[u32],
    fences: &BTreeMap<u32, u64>,
) -> BTreeMap<u32, u64> {
    let stage_1: Vec<u32> = tasks
        .iter()
        .copied()
        .filter(|task| pipeline.names.stage_of(*task).0 == 1)
        .collect();
    committed_positions(pipeline, &stage_1)
        .await
        .into_iter()
        .filter(|(task, (_, fence))| *fence == fences[task])
        .map(|(task, (position, _))| (task, position))
        .collect()
}

/// How many of `shuffled`, stored before `before_us`, a stage-1 task of
/// `commits` (task → its last committed input sequence) published from
/// input past that commit: what its next owner reads and publishes again.
/// A shuffle message's id is `<task>:<input sequence>:<index>`.
fn published_past_commits(
    pipeline: &ClusterPipeline,
    shuffled: &[StoredMessage],
    commits: &BTreeMap<u32, u64>,
    before_us: u64,
) -> u64 {
    let mut past = 0;
    for message in shuffled {
        let Some(id) = &message.id else { continue };
        let mut parts = id.rsplitn(3, ':');
        let (_, input_sequence, task) = (parts.next(), parts.next(), parts.next());
        let (Some(input_sequence), Some(task)) = (input_sequence, task) else {
            continue;
        };
        let input_sequence: u64 = input_sequence.parse().unwrap();
        for (committed_task, committed) in commits {
            if task == pipeline.names.task(*committed_task)
                && input_sequence > *committed
                && message.stored_us < before_us
            {
                past += 1;
            }
        }
    }
    past
}

/// Two stages of 16 partitions (32 tasks) on three workers; while stage 1
/// is publishing into the shuffle stream, a worker that runs stage-2 tasks
/// is killed (SIGKILL). Its tasks of both stages are taken over by the
/// survivors from their checkpoints: stage 1 replays what it had published
/// past its last checkpoint, with the same message ids, which the shuffle
/// stream drops (the test counts such replayed messages and requires
/// some: the boundary was crossed twice by them); stage 2 replays the
/// shuffle stream's partition from its checkpoint. The two-stage oracle
/// holds: every id crossed the shuffle once and reached the output once,
/// each key's counts are 1..n in shuffle order, the committed state is the
/// truth, and no task ever had two owners at once.
#[tokio::test]
async fn a_killed_stage_2_worker_is_taken_over_and_the_two_stage_oracle_holds() {
    const PARTITIONS: u32 = 16;
    let tasks = PARTITIONS * 2;
    let events = oracle_events();
    let setup = two_stage_setup(PARTITIONS).await;
    let workers = start_three_workers(&setup);
    let started = std::time::Instant::now();
    // At most about 5,000 events/s, so that the input still flows when the
    // worker is killed and after its tasks are taken over.
    let publisher = {
        let context = setup.context.clone();
        tokio::spawn(async move {
            publish_keyed_events_paced(&context, 0..events, std::time::Duration::from_millis(200))
                .await
        })
    };
    // Mid-stream: stage 1 is publishing (a quarter of the events crossed),
    // stage 2 is counting.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while stream_messages(&setup.context, "SHUF").await < events / 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "a quarter of the events did not cross the shuffle in 300 s:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The kill must find a stage-1 task of the victim with publishes past
    // its last commit (what the boundary's replay is about), which holds
    // at most moments but not at all (a task just committed, or is still
    // starting after a move). So the victim is frozen (SIGSTOP: it sends
    // and commits nothing more), the precondition is read from the
    // servers, and it is killed then, or let go on (SIGCONT) and tried
    // again a little later.
    // The freeze stays well within the leases' TTL (a renewal period): no
    // lease lapses meanwhile, so nobody takes over before the kill, and a
    // worker let go on is not a zombie.
    let freeze_limit = setup.pipeline.lease_ttl() / 4;
    let mut attempt = 0;
    let (victim, orphans, stage_2, fences, dead_commits, killed_us, publishing) = loop {
        attempt += 1;
        // The worker holding the most stage-2 tasks.
        let (victim, orphans, stage_2) = stage_2_victim(&workers, PARTITIONS);
        let fences = commit_fences(&setup.pipeline, &orphans).await;
        let publishing = !publisher.is_finished();
        workers[victim].signal(libc::SIGSTOP);
        let frozen = std::time::Instant::now();
        let looked = tokio::time::timeout(freeze_limit, async {
            // What it sent before the freeze lands.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let dead_commits = owner_commits(&setup.pipeline, &orphans, &fences).await;
            let last = stream_last_sequence(&setup.context, "SHUF").await;
            let from = last.saturating_sub(SHUFFLE_TAIL) + 1;
            let tail = read_stream_messages_from(&setup.context, "SHUF", from).await;
            let past = published_past_commits(&setup.pipeline, &tail, &dead_commits, u64::MAX);
            (dead_commits, past, tail.len())
        })
        .await;
        let froze_for = frozen.elapsed();
        // Not looked at within the limit: let go on, as with none past.
        let (dead_commits, past, looked_at) = looked.unwrap_or_default();
        if past > 0 {
            workers[victim].signal(libc::SIGKILL);
            let killed_us = now_us();
            eprintln!(
                "kill {attempt}: {} frozen for {froze_for:?} with {past} of the last \
                 {looked_at} shuffle messages published past its stage-1 commits \
                 {dead_commits:?}, then killed",
                workers[victim].id
            );
            break (
                victim,
                orphans,
                stage_2,
                fences,
                dead_commits,
                killed_us,
                publishing,
            );
        }
        workers[victim].signal(libc::SIGCONT);
        assert!(
            attempt < KILL_ATTEMPTS,
            "in {KILL_ATTEMPTS} tries, {} never had, within a freeze of {freeze_limit:?}, a \
             stage-1 task with publishes past its last commit (the last time: {past} of \
             {looked_at} past its stage-1 commits {dead_commits:?}, frozen for {froze_for:?}; \
             none read when the freeze reached its limit): the kill cannot exercise the \
             boundary's replay:\n{}",
            workers[victim].id,
            logs_of(&workers)
        );
        eprintln!(
            "kill {attempt}: {} had {past} of {looked_at} publishes past its stage-1 commits \
             {dead_commits:?} when frozen for {froze_for:?}; trying again",
            workers[victim].id
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let victim_id = workers[victim].id.clone();
    assert!(
        publishing,
        "every event was published before the victim was stopped: the test would not kill \
         mid-stream"
    );
    // The frozen worker committed nothing after its commits were read
    // (those of its tasks no new owner committed since).
    let after_kill = owner_commits(&setup.pipeline, &orphans, &fences).await;
    for (task, position) in &after_kill {
        assert_eq!(
            dead_commits.get(task),
            Some(position),
            "task {task}: {victim_id} committed after it was frozen"
        );
    }
    let (recommitted, slowest) = wait_for_commits_after(
        &setup.pipeline,
        &fences,
        killed_us / 1000,
        std::time::Duration::from_secs(120),
    )
    .await;
    publisher.await.unwrap();
    wait_for_output(
        &setup.context,
        events,
        std::time::Duration::from_secs(600),
        || logs_of(&workers),
    )
    .await;
    let took = started.elapsed();

    let changes: Vec<Ownership> = workers
        .iter()
        .flat_map(|w| ownership_changes(&w.log_text()))
        .collect();
    let mut worst = std::time::Duration::ZERO;
    for task in &orphans {
        let taken = first_start_after(&changes, *task, &victim_id, killed_us)
            .unwrap_or_else(|| panic!("task {task} of {victim_id} was never taken over"));
        worst = worst.max(std::time::Duration::from_micros(taken - killed_us));
    }
    let intervals =
        assert_one_owner_at_a_time_killed(&changes, tasks, &[(victim_id.as_str(), killed_us)]);
    eprintln!(
        "SIGKILL of {victim_id} ({} tasks, {} of stage 2): all owned again {worst:?} after the \
         kill, all committed again within {recommitted:?} (last: task {slowest}); {events} \
         events through two stages in {:.1} s; {intervals} ownership intervals",
        orphans.len(),
        stage_2.len(),
        took.as_secs_f64()
    );
    // Found dead by ping, not left to the lease's expiry (see cluster.rs).
    let ttl = setup.pipeline.lease_ttl();
    assert!(
        worst < ttl,
        "a task had no owner for {worst:?} (TTL {ttl:?})"
    );

    // A status line per task of each stage, owned, with the lag of its
    // consumer on its own input (stage 2: the shuffle stream).
    let status = plumber(&["cluster", "status", setup.path.to_str().unwrap()]);
    assert!(status.status.success(), "{}", text(&status));
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    for stage in ["users.s1#p", "users.s2#p"] {
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with(stage)).collect();
        assert_eq!(lines.len(), PARTITIONS as usize, "{table}");
        for line in lines {
            let columns: Vec<&str> = line.split_whitespace().collect();
            assert_ne!(columns[1], "-", "unowned: {line}\n{table}");
            assert!(columns[5].parse::<u64>().is_ok(), "no lag: {line}\n{table}");
        }
    }

    let mut survivors: Vec<WorkerProcess> = workers;
    survivors.remove(victim);
    for worker in &mut survivors {
        let status = worker.terminate();
        assert!(status.success(), "{} exited {status}", worker.id);
    }
    // Replayed across the boundary: shuffle messages of the dead owner's
    // stage-1 tasks from input past its last commit, stored before the
    // kill. The new owner read them again from that commit on and
    // published them again with the same ids: the stream dropped them.
    let shuffled = read_stream_messages(&setup.context, "SHUF").await;
    let replayed = published_past_commits(&setup.pipeline, &shuffled, &dead_commits, killed_us);
    eprintln!(
        "shuffle stream: {} messages; {replayed} of them were published by the killed worker \
         past its last stage-1 commit (tasks {:?}) and so published again by their new owners, \
         and dropped as duplicates",
        shuffled.len(),
        dead_commits.keys().collect::<Vec<_>>()
    );
    assert!(
        replayed > 0,
        "the kill found no stage-1 task of {victim_id} with publishes past its last commit: the \
         boundary's replay was not exercised (dead owner's commits: {dead_commits:?})"
    );
    let _ = (&setup.cluster, &setup.redis);
    assert_two_stage_oracle(&setup.context, &setup.pipeline, events).await;
    let committed: BTreeMap<u32, u64> = commit_fences(&setup.pipeline, &stage_2).await;
    for (task, fence) in &committed {
        assert!(
            *fence > fences[task],
            "stage-2 task {task} never committed under its new owner"
        );
    }
}
