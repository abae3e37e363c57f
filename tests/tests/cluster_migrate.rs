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
    let first = 2 * ORACLE_KEYS;
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
        ORACLE_KEYS,
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
    let total = 4 * ORACLE_KEYS;
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let stream = setup.context.get_stream("IN").await.unwrap();
    loop {
        let mut open = Vec::new();
        for partition in 0..partitions {
            let name = format!("win1-p{partition:02}");
            match stream.consumer_info(&name).await {
                Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
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

#[tokio::test(flavor = "multi_thread")]
async fn open_windows_move_with_their_keys_and_fire_whole_after_the_migration() {
    let setup = setup_from("win1.json", |urls, redis| windowed_config(urls, 4, redis)).await;
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "win6.json", &six);
    let keys: Vec<String> = (0..40).map(|n| format!("u{n}")).collect();

    // Three events per key in the window [0, 1000), which stays open: the
    // watermark (the highest time less 500) does not pass its end.
    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[100, 200, 300], "a"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_until_committed(&setup, 4, &workers).await;
    stop_all(&mut workers);

    let done = migrate(&six_path, &[]);
    assert!(done.status.success(), "{}", text(&done));
    eprintln!("{}", String::from_utf8_lossy(&done.stdout));

    // Two more events per key in the same window, then one far on in
    // event time per key, whose watermark closes it in every partition.
    let mut workers = vec![WorkerProcess::start(&six_path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[400, 500], "b"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    publish_timed(
        &setup.context,
        &timed(&keys, &[5000], "c"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_for_output(
        &setup.context,
        keys.len() as u64,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    stop_all(&mut workers);

    // Every key's window once, with all five events.
    let output = read_stream_messages(&setup.context, "OUT").await;
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
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "win6.json", &six);
    let keys: Vec<String> = (0..40).map(|n| format!("u{n}")).collect();

    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[100, 200, 300, 400], "a"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_for_output(
        &setup.context,
        keys.len() as u64,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    wait_until_committed(&setup, 4, &workers).await;
    stop_all(&mut workers);

    let done = migrate(&six_path, &[]);
    assert!(done.status.success(), "{}", text(&done));

    let mut workers = vec![WorkerProcess::start(&six_path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[5000], "c"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_for_output(
        &setup.context,
        2 * keys.len() as u64,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    // A little longer: no fire may come twice.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop_all(&mut workers);

    // Per key: the early fire (3 events), then the timer's (4).
    let output = read_stream_messages(&setup.context, "OUT").await;
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
    let dir = setup.dir.path();
    let mut six: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&setup.path).unwrap()).unwrap();
    six["cluster"]["partitions"] = 6.into();
    let six_path = write_config(dir, "win6.json", &six);
    let keys: Vec<String> = (0..40).map(|n| format!("u{n}")).collect();

    let mut workers = vec![WorkerProcess::start(&setup.path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[1100, 1200, 1300, 1400], "a"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_until_committed(&setup, 4, &workers).await;
    stop_all(&mut workers);

    let done = migrate(&six_path, &[]);
    assert!(done.status.success(), "{}", text(&done));

    let mut workers = vec![WorkerProcess::start(&six_path, "w1", dir)];
    publish_timed(
        &setup.context,
        &timed(&keys, &[6000], "c"),
        50,
        std::time::Duration::ZERO,
    )
    .await;
    wait_for_output(
        &setup.context,
        2 * keys.len() as u64,
        std::time::Duration::from_secs(300),
        || logs_of(&workers),
    )
    .await;
    // A little longer: no window may fire twice.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    stop_all(&mut workers);

    // Per key: `<key>,<start>,<end>,<events>,…` for both windows.
    let output = read_stream_messages(&setup.context, "OUT").await;
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
