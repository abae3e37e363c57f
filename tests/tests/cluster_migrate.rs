//! `plumber cluster migrate`: a pipeline's partition count changed with
//! its state moved by key. Real servers: a 3-node NATS JetStream cluster on
//! loopback and Redis; workers as `plumber worker` processes; the
//! `key-counter` guest (state key `k<event key>`, output `id key count`).
//!
//! The oracle after the migration is the one of every cluster run: every id
//! once, each key's counts exactly 1..n in id order — so the counts after
//! the migration continue those before it, which only holds if each key's
//! state reached the key's new partition — and the committed state of the
//! new partitions equal to the truth, each key in its new partition only.

use plumber_tests as harness;

use harness::cluster::*;

/// Runs `plumber cluster migrate CONFIG` with `extra` arguments.
fn migrate(config: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["cluster", "migrate", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    plumber(&args)
}

/// Publishes `ids` and waits for `until` outputs in all.
async fn run_events(
    setup: &OracleSetup,
    workers: &[WorkerProcess],
    ids: std::ops::Range<u64>,
    until: u64,
) {
    publish_events(&setup.context, ids).await;
    wait_for_output(
        &setup.context,
        until,
        std::time::Duration::from_secs(600),
        || logs_of(workers),
    )
    .await;
}

fn stop_all(workers: &mut [WorkerProcess]) {
    for worker in workers {
        let status = worker.terminate();
        assert!(
            status.success(),
            "worker {} exited {status}:\n{}",
            worker.id,
            worker.log_text()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrating_from_8_to_12_partitions_moves_each_keys_state_to_its_new_partition() {
    let setup = oracle_setup(8).await;
    let dir = setup.dir.path();
    // The same pipeline with 12 partitions.
    let mut twelve: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    twelve["cluster"]["partitions"] = 12.into();
    let twelve_path = write_config(dir, "keys12.json", &twelve);

    // Before: two counts per key through 8 partitions.
    let first = 2 * oracle_keys();
    let mut workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(&setup.path, id, dir))
        .collect();
    run_events(&setup, &workers, 0..first, first).await;

    // Refused while workers run.
    let running = migrate(&twelve_path, &["--state-key", "k{key}"]);
    assert_eq!(running.status.code(), Some(2), "{}", text(&running));
    let said = text(&running);
    assert!(
        said.contains("stop every worker first"),
        "the refusal says what to do: {said}"
    );
    stop_all(&mut workers);

    // Refused while the input is not drained: events published while no
    // worker runs are not covered by any checkpoint.
    let second = first + 500;
    publish_events(&setup.context, first..second).await;
    let undrained = migrate(&twelve_path, &["--state-key", "k{key}"]);
    assert_eq!(undrained.status.code(), Some(2), "{}", text(&undrained));
    assert!(
        text(&undrained).contains("the input is not drained"),
        "{}",
        text(&undrained)
    );
    // The old count drains them.
    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    run_events(&setup, &workers, second..second, second).await;
    stop_all(&mut workers);

    // Refused with a template that does not describe the state keys: the
    // pipe's keys are `k<event key>`, and `{key}` would take `k7` for the
    // event key, which is in another partition than the state.
    let wrong = migrate(&twelve_path, &[]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("not keyed by the event key"),
        "{}",
        text(&wrong)
    );

    // The migration, with a producer that publishes in the instant between
    // its last check of the stream and the switch (held open by a fault
    // point): those events were filed by the old count, and are published
    // again under the new one.
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(["cluster", "migrate", twelve_path.to_str().unwrap()])
        .args(["--state-key", "k{key}"])
        .env("RUST_LOG", "warn")
        .env("PLUMBER_FAULT_HOLD_BEFORE_SWITCH", "3000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (holding_tx, holding_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("holding before the switch") {
                let _ = holding_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    holding_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the migration reaches its hold");
    let during = second + 300;
    publish_events(&setup.context, second..during).await;
    let done = child.wait_with_output().unwrap();
    let stderr = log.join().unwrap();
    assert!(done.status.success(), "{done:?}\n{stderr}");
    let said = String::from_utf8_lossy(&done.stdout).into_owned();
    eprintln!(
        "migrated {} keys in {:.1} s with a 3 s hold (debug build):\n{said}",
        oracle_keys(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        said.contains("published again 300 message(s)"),
        "{said}\n{stderr}"
    );
    assert!(said.contains("generation 1"), "{said}");
    // Run again: nothing to do.
    let again = migrate(&twelve_path, &["--state-key", "k{key}"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to migrate"),
        "{}",
        text(&again)
    );

    // A worker with the old count is refused; `init` with the new one
    // changes nothing.
    let old = plumber(&["worker", setup.path.to_str().unwrap(), "--id", "old"]);
    assert_eq!(old.status.code(), Some(2), "{}", text(&old));
    assert!(
        text(&old).contains("partitioned 12 ways, the config says 8"),
        "{}",
        text(&old)
    );
    let init = plumber(&["cluster", "init", twelve_path.to_str().unwrap()]);
    assert!(init.status.success(), "{}", text(&init));

    // After: two more counts per key through 12 partitions.
    let total = 4 * oracle_keys();
    let mut workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(&twelve_path, id, dir))
        .collect();
    run_events(&setup, &workers, during..total, total).await;
    let status = plumber(&["cluster", "status", twelve_path.to_str().unwrap()]);
    assert!(status.status.success(), "{}", text(&status));
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with("keys#g1p"))
        .collect();
    assert_eq!(rows.len(), 12, "{table}");
    // Each owned, its lease found under the new generation's key.
    for row in rows {
        let owner = row.split_whitespace().nth(1).unwrap();
        assert!(owner == "w1" || owner == "w2", "{table}");
    }
    stop_all(&mut workers);

    let mut pipeline = plumber_cluster::ClusterPipeline::load(&twelve_path).unwrap();
    pipeline.set_generation(1);
    assert_oracle(&setup.context, &pipeline, total).await;

    // The old generation's state is gone.
    let mut old = setup.pipeline.clone();
    old.names = old.names.clone().with_generation(0);
    for partition in 0..8 {
        let config = old.partition_config(partition).unwrap();
        let state = config.open_state().await.unwrap();
        let prefix = plumber::state::Namespace::pipeline_prefix(
            plumber::state::DEFAULT_TENANT,
            &config.name,
        );
        let left = state.scan_prefix(&prefix).await.unwrap();
        assert!(
            left.is_empty(),
            "{} keys left in {}",
            left.len(),
            config.name
        );
    }
}

/// A single-stage pipeline of `partitions` partitions with a keyed
/// event-time window (one second) and the `window-count` guest.
fn windowed_config(urls: &[String], partitions: u32, redis: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "win1",
        "state": { "type": "redis", "url": redis },
        "cluster": { "url": urls, "partitions": partitions },
        "checkpoint": { "interval_ms": 500 },
        "from": {
            "type": "jetstream", "url": urls.join(","), "stream": "IN", "consumer": "win1",
            "subjects": ["in.*"]
        },
        "pipeline": [
            { "name": "per_second", "type": "window", "window": "tumbling", "size_ms": 1000,
              "time": "event", "max_out_of_orderness_ms": 500, "key_by": "key" },
            { "name": "count", "type": "wasm", "module": harness::guest("window-count") }
        ],
        "to": { "type": "jetstream", "url": urls.join(","), "subject": "out" }
    })
}

/// Events of `keys` at `timestamps`, each on its key's own subject.
fn timed(keys: &[String], timestamps: &[u64], tag: &str) -> Vec<TimedEvent> {
    keys.iter()
        .flat_map(|key| {
            timestamps.iter().map(move |&timestamp| TimedEvent {
                id: format!("{tag}-{key}-{timestamp}"),
                input_key: key.clone(),
                key: key.clone(),
                timestamp,
            })
        })
        .collect()
}

/// Waits until every partition's consumer has delivered and had acked
/// (after a commit) everything: the input is covered by checkpoints.
async fn wait_until_committed(setup: &OracleSetup, partitions: u32, workers: &[WorkerProcess]) {
    let consumers: Vec<(&str, String)> = (0..partitions)
        .map(|partition| ("IN", format!("win1-p{partition:02}")))
        .collect();
    wait_until_consumed(setup, &consumers, workers).await;
}

/// Waits until each of `consumers` (stream, consumer) has delivered and
/// had acked (after a commit) everything of its stream; each must have
/// something to deliver.
async fn wait_until_consumed(
    setup: &OracleSetup,
    consumers: &[(&str, String)],
    workers: &[WorkerProcess],
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let mut open = Vec::new();
        for (stream, name) in consumers {
            let stream = setup.context.get_stream(*stream).await.unwrap();
            match stream.consumer_info(name).await {
                // A consumer just created reports nothing pending before it
                // has counted (seen: 0 pending, 0 unacked, nothing delivered
                // or acked with 40 messages in its partition), so its acks
                // must also have reached what it delivered (by delivery
                // count: a filtered consumer's delivered stream sequence
                // runs past its last message) and past the stream's start.
                Ok(info)
                    if info.num_pending == 0
                        && info.num_ack_pending == 0
                        && info.ack_floor.consumer_sequence == info.delivered.consumer_sequence
                        && info.ack_floor.stream_sequence > 0 => {}
                Ok(info) => open.push(format!(
                    "{name}: {} pending, {} unacked",
                    info.num_pending, info.num_ack_pending
                )),
                Err(error) => open.push(format!("{name}: {error}")),
            }
        }
        if open.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not committed: {open:?}\n{}",
            logs_of(workers)
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// The keys of the windowed migrations: `u0` to `u39`.
fn window_keys() -> Vec<String> {
    (0..40).map(|n| format!("u{n}")).collect()
}

/// Runs a windowed pipeline (`setup`, 4 partitions) across a migration to
/// 6 partitions: events at `before` for every key of [`window_keys`]
/// through one worker, waiting for `outputs_before` outputs and until the
/// input is committed; the migration; then each batch of `after` for
/// every key through one worker on 6 partitions until `outputs` outputs
/// in all, and two seconds more (no window may fire twice). Returns the
/// output stream.
async fn run_across_migration(
    setup: &OracleSetup,
    before: &[u64],
    outputs_before: u64,
    after: &[&[u64]],
    outputs: u64,
) -> Vec<StoredMessage> {
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "win6.json", &six);
    let keys = window_keys();

    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, before, "a"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    if outputs_before > 0 {
        wait_for_output(
            &setup.context,
            outputs_before,
            std::time::Duration::from_secs(300),
            || logs_of(&workers),
        )
        .await;
    }
    wait_until_committed(setup, 4, &workers).await;
    stop_all(&mut workers);

    let done = migrate(&six_path, &[]);
    assert!(done.status.success(), "{}", text(&done));
    eprintln!("{}", String::from_utf8_lossy(&done.stdout));

    let workers = vec![WorkerProcess::start(&six_path, "w1", dir)];
    for (batch, timestamps) in after.iter().enumerate() {
        publish_timed(
            &setup.context,
            &timed(&keys, timestamps, &format!("b{batch}")),
            50,
            std::time::Duration::ZERO,
        )
        .await;
    }
    wait_for_output(
        &setup.context,
        outputs,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut workers = workers;
    stop_all(&mut workers);
    read_stream_messages(&setup.context, "OUT").await
}

#[tokio::test(flavor = "multi_thread")]
async fn open_windows_move_with_their_keys_and_fire_whole_after_the_migration() {
    let setup = setup_from("win1.json", |urls, redis| windowed_config(urls, 4, redis)).await;
    let keys = window_keys();
    // Three events per key in the window [0, 1000), which stays open: the
    // watermark (the highest time less 500) does not pass its end. After
    // the migration, two more events per key in the same window, then one
    // far on in event time per key, whose watermark closes it in every
    // partition.
    let output = run_across_migration(
        &setup,
        &[100, 200, 300],
        0,
        &[&[400, 500], &[5000]],
        keys.len() as u64,
    )
    .await;

    // Every key's window once, with all five events.
    let mut counts = std::collections::BTreeMap::new();
    for message in &output {
        let parts: Vec<&str> = message.payload.split('\t').collect();
        assert_eq!(parts[0], "0-1000", "{:?}", message.payload);
        assert!(
            counts
                .insert(parts[1].to_owned(), parts[2].to_owned())
                .is_none(),
            "the window of {} fired twice: {output:?}",
            parts[1]
        );
    }
    let expected: std::collections::BTreeMap<String, String> = keys
        .iter()
        .map(|key| (key.clone(), "5".to_owned()))
        .collect();
    assert_eq!(counts, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_triggered_windows_state_and_timers_move_with_its_keys() {
    // The window of `windowed_config` with `trigger-early` (every 3, the
    // end fire from an event-time timer the trigger asks for once per
    // window; the native end fire is off). Before the migration, four
    // events per key in [0, 1000): an early fire at the third; the timer at
    // 1000 is set. After it, one event far on per key: only the timer,
    // moved with the key's windows, fires [0, 1000) again, with all four.
    let setup = setup_from("win1.json", |urls, redis| {
        let mut config = windowed_config(urls, 4, redis);
        config["pipeline"][0]["trigger"] = serde_json::json!({
            "module": harness::guest("trigger-early"),
            "config": { "every": 3, "at_end": "timer" }
        });
        config
    })
    .await;
    let keys = window_keys();
    let output = run_across_migration(
        &setup,
        &[100, 200, 300, 400],
        keys.len() as u64,
        &[&[5000]],
        2 * keys.len() as u64,
    )
    .await;

    // Per key: the early fire (3 events), then the timer's (4).
    let mut fires: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for message in &output {
        let parts: Vec<&str> = message.payload.split('\t').collect();
        assert_eq!(parts[0], "0-1000", "{:?}", message.payload);
        fires
            .entry(parts[1].to_owned())
            .or_default()
            .push(parts[2].to_owned());
    }
    let expected: std::collections::BTreeMap<String, Vec<String>> = keys
        .iter()
        .map(|key| (key.clone(), vec!["3".to_owned(), "4".to_owned()]))
        .collect();
    assert_eq!(fires, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_aggregating_sliding_windows_panes_move_with_its_keys() {
    // The window of `windowed_config` made sliding (1000 every 500) and
    // aggregating with `aggregate-report`: a key's events live only in its
    // pane accumulators (`pane/<key>` entries). Before the migration, four
    // events per key in pane [1000, 1500) (nothing fires: the watermark is
    // at 900); after it, one event far on per key: windows [500, 1500) and
    // [1000, 2000) fire, each with the four events the moved panes hold.
    let setup = setup_from("win1.json", |urls, redis| {
        let mut config = windowed_config(urls, 4, redis);
        config["pipeline"] = serde_json::json!([
            { "name": "per_second", "type": "window", "window": "sliding", "size_ms": 1000,
              "slide_ms": 500, "time": "event", "max_out_of_orderness_ms": 500,
              "key_by": "key", "aggregate": { "module": harness::guest("aggregate-report") } }
        ]);
        config
    })
    .await;
    let keys = window_keys();
    let output = run_across_migration(
        &setup,
        &[1100, 1200, 1300, 1400],
        0,
        &[&[6000]],
        2 * keys.len() as u64,
    )
    .await;

    // Per key: `<key>,<start>,<end>,<events>,…` for both windows.
    let mut fires: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for message in &output {
        let parts: Vec<&str> = message.payload.split(',').collect();
        assert!(parts.len() >= 4, "{:?}", message.payload);
        fires
            .entry(parts[0].to_owned())
            .or_default()
            .push(parts[1..4].join(","));
    }
    for windows in fires.values_mut() {
        windows.sort();
    }
    let expected: std::collections::BTreeMap<String, Vec<String>> = keys
        .iter()
        .map(|key| {
            let windows = vec!["1000,2000,4".to_owned(), "500,1500,4".to_owned()];
            (key.clone(), windows)
        })
        .collect();
    assert_eq!(fires, expected);
}

// Two stages through a `repartition` step

/// Keys of the two-stage migration: event `id` is counted under key
/// `id % TWO_STAGE_KEYS`, which is also its shuffle key (the `plumber-key`
/// header), so that the counter's state key `k<key>` holds the event key
/// (`--stage2-state-key 'k{key}'`).
const TWO_STAGE_KEYS: u64 = 500;

/// [`two_stage_config`] with `partitions` partitions, counting
/// [`TWO_STAGE_KEYS`] keys, checkpointing every 500 ms.
fn counting_two_stage_config(urls: &[String], partitions: u32, redis: &str) -> serde_json::Value {
    let mut config = two_stage_config(urls, partitions, redis);
    config["checkpoint"]["interval_ms"] = 500.into();
    config["pipeline"][1]["config"]["keys"] = TWO_STAGE_KEYS.into();
    config
}

/// The headers of event `id`: its message id and its shuffle key.
fn two_stage_headers(id: u64) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("e{id}").as_str());
    headers.insert("plumber-key", (id % TWO_STAGE_KEYS).to_string().as_str());
    headers
}

/// Publishes events `ids` to the input, `in.<id % 97>` (the input
/// partition says nothing of the shuffle key).
async fn publish_two_stage(context: &async_nats::jetstream::Context, ids: std::ops::Range<u64>) {
    let mut acks = Vec::new();
    for id in ids {
        let subject = format!("in.{}", id % 97);
        let ack = context
            .publish_with_headers(subject, two_stage_headers(id), id.to_string().into())
            .await
            .unwrap();
        acks.push(ack);
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

/// Publishes events `ids` straight to the shuffle stream, as stage 1
/// would: what stage 1 published and stage 2 has not read yet.
async fn publish_to_shuffle(context: &async_nats::jetstream::Context, ids: std::ops::Range<u64>) {
    for id in ids {
        let key = (id % TWO_STAGE_KEYS).to_string();
        let subject = format!("SHUF.{}", plumber::shuffle::subject_token(key.as_bytes()));
        context
            .publish_with_headers(subject, two_stage_headers(id), id.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// `plumber cluster migrate CONFIG ARGS` started with `env`, and a thread
/// that reads its log and says (once) when a line holds `signal`.
fn spawn_migrate(
    config: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
    signal: &'static str,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<String>,
) {
    let mut child = std::process::Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(["cluster", "migrate", config.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let log = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains(signal) {
                let _ = seen_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    (child, seen_rx, log)
}

/// The durable consumers of stream `stream` named after `consumer` (the
/// tests' readers are ephemeral, with other names).
async fn consumer_names(
    context: &async_nats::jetstream::Context,
    stream: &str,
    consumer: &str,
) -> Vec<String> {
    use futures_util::StreamExt;
    let stream = context.get_stream(stream).await.unwrap();
    let mut names: Vec<String> = stream
        .consumer_names()
        .map(|name| name.unwrap())
        .filter(|name| std::future::ready(name.starts_with(&format!("{consumer}-"))))
        .collect()
        .await;
    names.sort();
    names
}

/// Every key of the pipeline-state namespace of `task` (of `pipeline`).
async fn task_keys(pipeline: &plumber_cluster::ClusterPipeline, task: u32) -> Vec<Vec<u8>> {
    let config = pipeline.partition_config(task).unwrap();
    let state = config.open_state().await.unwrap();
    let prefix =
        plumber::state::Namespace::pipeline_prefix(plumber::state::DEFAULT_TENANT, &config.name);
    state
        .scan_prefix(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(key, _)| key)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_stage_pipeline_migrates_both_stages_from_4_to_6_partitions() {
    let setup = setup_from("users.json", |urls, redis| {
        counting_two_stage_config(urls, 4, redis)
    })
    .await;
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "users6.json", &six);
    let keys = TWO_STAGE_KEYS;

    // Before: two counts per key through 4 partitions of each stage.
    let first = 2 * keys;
    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    publish_two_stage(&setup.context, 0..first).await;
    wait_for_output(
        &setup.context,
        first,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    stop_all(&mut workers);

    // Refused while the shuffle stream is not drained: events stage 1
    // published that no stage-2 checkpoint covers (the input is drained).
    let second = first + 100;
    publish_to_shuffle(&setup.context, first..second).await;
    let stage2 = ["--stage2-state-key", "k{key}"];
    let undrained = migrate(&six_path, &stage2);
    assert_eq!(undrained.status.code(), Some(2), "{}", text(&undrained));
    let said = text(&undrained);
    assert!(
        said.contains("the shuffle stream `SHUF` is not drained")
            && said.contains("users.s2#p0")
            && !said.contains("the input is not drained"),
        "the refusal names the stage-2 tasks: {said}"
    );
    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    wait_for_output(
        &setup.context,
        second,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    stop_all(&mut workers);

    // Refused with stage 2's keys read by stage 1's template: the counter's
    // keys are `k<event key>`, and `{key}` (the default) does not find the
    // key in them; the refusal names the flag to give.
    let wrong = migrate(&six_path, &["--state-key", "k{key}"]);
    assert_eq!(wrong.status.code(), Some(2), "{}", text(&wrong));
    assert!(
        text(&wrong).contains("`--stage2-state-key`"),
        "{}",
        text(&wrong)
    );

    // Interrupted between its two switches (killed while held there): the
    // shuffle stream has the new count and generation, the input stream
    // the old ones. Workers of either count refuse to start, saying to run
    // the migration again.
    let (mut child, between, log) = spawn_migrate(
        &six_path,
        &stage2,
        &[("PLUMBER_FAULT_HOLD_BETWEEN_SWITCHES", "120000")],
        "holding between the two switches",
    );
    between
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the migration reaches its hold between the switches");
    child.kill().unwrap();
    child.wait().unwrap();
    drop(log);
    for config in [&setup.path, &six_path] {
        let refused = plumber_exiting_within(
            &["worker", config.to_str().unwrap(), "--id", "early"],
            std::time::Duration::from_secs(60),
        );
        assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
        assert!(
            text(&refused).contains("stopped between its two switches; run it again"),
            "{}",
            text(&refused)
        );
    }
    // Run again, it finishes.
    let started = std::time::Instant::now();
    let done = migrate(&six_path, &stage2);
    assert!(done.status.success(), "{}", text(&done));
    let said = String::from_utf8_lossy(&done.stdout).into_owned();
    eprintln!(
        "the rerun migrated both stages in {:.1} s (debug build):\n{said}",
        started.elapsed().as_secs_f64()
    );
    assert!(said.contains("finishing it from generation 0"), "{said}");
    assert!(
        said.contains("switched stream `SHUF`") && said.contains("switched stream `IN`"),
        "{said}"
    );
    let again = migrate(&six_path, &stage2);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to migrate"),
        "{}",
        text(&again)
    );
    let shuffle_cut = stream_messages(&setup.context, "SHUF").await;

    // After: two more counts per key through 6 partitions of each stage,
    // on two workers.
    let total = second + 2 * keys;
    let mut workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(&six_path, id, dir))
        .collect();
    publish_two_stage(&setup.context, second..total).await;
    wait_for_output(
        &setup.context,
        total,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    let status = plumber(&["cluster", "status", six_path.to_str().unwrap()]);
    assert!(status.status.success(), "{}", text(&status));
    let table = String::from_utf8_lossy(&status.stdout).into_owned();
    for stage in ["users.s1#g1p", "users.s2#g1p"] {
        let rows = table.lines().filter(|l| l.starts_with(stage)).count();
        assert_eq!(rows, 6, "{table}");
    }
    stop_all(&mut workers);

    // Across the boundary: each id once, filed under its key's partition
    // of the count of its time.
    let shuffled = read_stream_messages(&setup.context, "SHUF").await;
    let mut shuffle_sequence = vec![None; total as usize];
    for message in &shuffled {
        let id: u64 = message.payload.parse().unwrap();
        assert!(
            shuffle_sequence[id as usize]
                .replace(message.sequence)
                .is_none(),
            "id {id} crossed the shuffle twice"
        );
        let token = plumber::shuffle::subject_token((id % keys).to_string().as_bytes());
        let count = if message.sequence <= shuffle_cut {
            4
        } else {
            6
        };
        let partition = plumber_cluster::partition::partition_of(token.as_bytes(), count);
        assert_eq!(message.subject, format!("SHUF-p.{partition}.{token}"));
    }
    assert_eq!(shuffled.len() as u64, total);

    // The output: every id once; each key's counts 1..4 in shuffle order.
    let output = read_stream_messages(&setup.context, "OUT").await;
    let mut seen = vec![false; total as usize];
    let mut per_key: std::collections::BTreeMap<u64, Vec<(u64, u64)>> = Default::default();
    for message in &output {
        let parts: Vec<u64> = message
            .payload
            .split(' ')
            .map(|p| p.parse().unwrap())
            .collect();
        let (id, key, count) = (parts[0], parts[1], parts[2]);
        assert!(!seen[id as usize], "id {id} is in the output twice");
        seen[id as usize] = true;
        let sequence = shuffle_sequence[id as usize].expect("crossed the shuffle");
        per_key.entry(key).or_default().push((sequence, count));
    }
    assert_eq!(output.len() as u64, total, "extra or missing outputs");
    let expected_counts = |key: u64| -> Vec<u64> {
        let n = (0..total).filter(|id| id % keys == key).count() as u64;
        (1..=n).collect()
    };
    for (key, mut counts) in per_key {
        counts.sort_unstable();
        let in_order: Vec<u64> = counts.iter().map(|(_, count)| *count).collect();
        assert_eq!(in_order, expected_counts(key), "key {key}");
    }

    // The committed state: each key only in its new stage-2 partition,
    // equal to its count.
    let mut pipeline = plumber_cluster::ClusterPipeline::load(&six_path).unwrap();
    pipeline.set_generation(1);
    let mut counted = std::collections::BTreeMap::new();
    for partition in 0..6 {
        for (key, value) in committed_counts(&pipeline, 6 + partition).await {
            let value = u64::try_from(value).unwrap();
            let token = plumber::shuffle::subject_token(key.to_string().as_bytes());
            assert_eq!(
                plumber_cluster::partition::partition_of(token.as_bytes(), 6),
                partition,
                "key {key} in stage-2 partition {partition}"
            );
            assert!(counted.insert(key, value).is_none(), "key {key} twice");
            assert_eq!(value, *expected_counts(key).last().unwrap(), "key {key}");
        }
    }
    assert_eq!(counted.len() as u64, keys);

    // The old generation is gone: its state (both stages) and consumers.
    let mut old = setup.pipeline.clone();
    old.set_generation(0);
    for task in 0..8 {
        let left = task_keys(&old, task).await;
        assert!(left.is_empty(), "{} keys left in task {task}", left.len());
    }
    // (Which of the new generation's durable consumers exist after the
    // workers stopped is theirs to decide; none of the old one's is left.)
    for (stream, stage) in [("IN", "s1"), ("SHUF", "s2")] {
        let consumers = consumer_names(&setup.context, stream, "users").await;
        let new: Vec<String> = (0..6).map(|p| format!("users-g1{stage}p{p:02}")).collect();
        assert!(
            consumers.iter().all(|name| new.contains(name)),
            "{stream}: {consumers:?}"
        );
    }

    // A shuffle stream whose generation was changed by hand (not one
    // ahead of the input's) is refused, saying what to put back.
    let mut shuffle = setup.context.get_stream("SHUF").await.unwrap();
    let mut edited = shuffle.info().await.unwrap().config.clone();
    edited
        .metadata
        .insert("plumber.generation".into(), "5".into());
    setup.context.update_stream(&edited).await.unwrap();
    let mut eight = six.clone();
    eight["cluster"]["partitions"] = 8.into();
    let eight_path = write_config(dir, "users8.json", &eight);
    let apart = migrate(&eight_path, &stage2);
    assert_eq!(apart.status.code(), Some(2), "{}", text(&apart));
    assert!(
        text(&apart).contains("the shuffle stream `SHUF` is partitioned 6 ways in generation 5")
            && text(&apart).contains("never leaves them so"),
        "{}",
        text(&apart)
    );
}

#[test]
fn a_stage_2_template_for_a_pipeline_of_one_stage_is_refused() {
    // Refused before any server is asked (none listens here).
    let dir = tempfile::tempdir().unwrap();
    let urls = vec!["nats://127.0.0.1:1".to_owned()];
    let config = cluster_config(&urls, 4, "redis://127.0.0.1:1/");
    let path = write_config(dir.path(), "keys.json", &config);
    let refused = migrate(&path, &["--stage2-state-key", "k{key}"]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(
        text(&refused).contains("has none: give its pipes' template with `--state-key`"),
        "{}",
        text(&refused)
    );
    let bad = migrate(&path, &["--stage2-state-key", "k"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    assert!(
        text(&bad).contains("--stage2-state-key: the state-key template"),
        "{}",
        text(&bad)
    );
}

/// Events at `offsets` (ms after [`EVENT_TIME_BASE`]) for each of
/// [`WINDOWED_KEYS`] keys `k<n>`, each key's events through every stage-1
/// partition of `partitions` in turn.
fn timed_through_every_partition(offsets: &[u64], partitions: u32, tag: &str) -> Vec<TimedEvent> {
    let inputs = input_keys_by_partition(partitions);
    let mut events = Vec::new();
    for key in 0..WINDOWED_KEYS {
        for (n, offset) in offsets.iter().enumerate() {
            let upstream = (key as usize + n) % inputs.len();
            events.push(TimedEvent {
                id: format!("{tag}-k{key}-{offset}"),
                input_key: inputs[upstream][0].clone(),
                key: format!("k{key}"),
                timestamp: EVENT_TIME_BASE + offset,
            });
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_time_window_after_the_shuffle_open_across_the_migration_fires_once_whole() {
    // Stage 2 counts each key's events in one-second event-time windows,
    // its watermark the minimum over the stage-1 partitions' watermark
    // messages. Before: three events per key in [B, B+1000), through every
    // stage-1 partition; the window stays open (the watermark is the
    // highest time less 500). After the migration to 6: two more per key in
    // the same window, then end markers from each of the 6 stage-1
    // partitions to each stage-2 partition: the new stage-2 tasks fire the
    // window only when all 6 upstreams' watermarks pass it, once, with the
    // five events.
    let setup = windowed_setup(4, None).await;
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "win6.json", &six);

    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    let before = timed_through_every_partition(&[100, 200, 300], 4, "a");
    publish_timed(&setup.context, &before, 50, std::time::Duration::ZERO).await;
    let consumers: Vec<(&str, String)> = (0..4)
        .map(|p| ("IN", format!("win-s1p{p:02}")))
        .chain((0..4).map(|p| ("SHUF", format!("win-s2p{p:02}"))))
        .collect();
    wait_until_consumed(&setup, &consumers, &workers).await;
    stop_all(&mut workers);
    assert_eq!(stream_messages(&setup.context, "OUT").await, 0);

    let done = migrate(&six_path, &[]);
    assert!(done.status.success(), "{}", text(&done));
    eprintln!("{}", String::from_utf8_lossy(&done.stdout));

    let mut workers = vec![WorkerProcess::start(&six_path, "w1", dir)];
    let after = timed_through_every_partition(&[400, 500], 6, "b");
    publish_timed(&setup.context, &after, 50, std::time::Duration::ZERO).await;
    let upstreams: Vec<u32> = (0..6).collect();
    publish_timed(
        &setup.context,
        &end_markers(&upstreams, 6),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_for_settled_output(
        &setup.context,
        WINDOWED_KEYS,
        std::time::Duration::from_secs(300),
    )
    .await;
    stop_all(&mut workers);
    let all: Vec<TimedEvent> = before.into_iter().chain(after).collect();
    let expected = window_counts(&all);
    assert_eq!(expected.len() as u64, WINDOWED_KEYS);
    assert!(expected.values().all(|count| *count == 5), "{expected:?}");
    assert_window_counts(&setup.context, &expected, || logs_of(&workers)).await;
}
