//! Hot swap: v1 → v2 mid-stream under exactly-once, through the library
//! handle, the admin HTTP API and the module-file watcher; broken modules
//! are refused while the running one keeps going.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumber::admin::{AdminOptions, AdminServer};
use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::pipeline::{HandleError, Pipeline, PipelineBuilder};
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, Namespace, SharedState};
use plumber::step::WasmPipe;
use plumber::streams::{channel_sink, channel_source};
use plumber::supervisor::Supervisor;
use plumber::swap::{ModuleSource, SwapError};
use plumber::tenant::Tenants;
use plumber::Event;
use plumber_tests::{cache_dir, guest, ChannelRun};

const KEYS: [&str; 3] = ["ada", "bob", "cy"];

/// Sends `n` events (cycling through the keys) and waits for their output.
async fn feed(running: &mut ChannelRun, n: usize) {
    for _ in 0..n {
        let key = KEYS[running.sent % KEYS.len()];
        running.send(Event::new(key)).await;
    }
    running.settle(Duration::from_secs(30)).await;
}

fn swap_pipeline(name: &str, state: SharedState, pipe: WasmPipe) -> PipelineBuilder {
    Pipeline::builder(name)
        .state(state)
        .delivery(Delivery::ExactlyOnce)
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(50)))
        .batch_size(16)
        .then(pipe)
}

/// Checks that every event was processed exactly once by exactly one
/// version, that the versions follow `versions` in order, and that each
/// key's count runs 1..=n without a gap (state carried over the swaps).
fn check_exactly_once(output: &[String], versions: &[&str]) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut version_index = 0;
    for line in output {
        let parts: Vec<&str> = line.split(':').collect();
        assert_eq!(parts.len(), 3, "{line}");
        let (version, key, n) = (parts[0], parts[1], parts[2].parse::<u64>().unwrap());
        while versions[version_index] != version {
            version_index += 1;
            assert!(
                version_index < versions.len(),
                "version {version} out of order in {output:?}"
            );
        }
        let count = counts.entry(key.to_owned()).or_default();
        *count += 1;
        assert_eq!(n, *count, "{key}: count {n} where {} was due", *count);
    }
    counts
}

async fn committed_counts(state: &SharedState, pipeline: &str) -> HashMap<String, u64> {
    let namespace = Namespace::for_pipe(pipeline, "count");
    state
        .scan_prefix(namespace.prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k[namespace.prefix().len()..]).into_owned(),
                String::from_utf8_lossy(&v).parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_to_v2_mid_stream_processes_every_event_once_and_refuses_a_broken_v3() {
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = swap_pipeline(
        "swap",
        state.clone(),
        WasmPipe::new("count", guest("swap-v1")),
    );
    let handle = builder.handle();
    let (mut running, task) = ChannelRun::start(builder, 64);
    feed(&mut running, 300).await;
    let v1_version = handle.modules()[0].1.version.clone();

    // Swap while events keep arriving.
    let feeder = {
        let input = running.input.clone();
        tokio::spawn(async move {
            for i in 0..150 {
                input.send(Event::new(KEYS[i % 3])).await.unwrap();
            }
        })
    };
    let swapped = handle
        .swap_module("count", ModuleSource::Path(guest("swap-v2")))
        .await
        .expect("v2 accepted");
    feeder.await.unwrap();
    running.sent += 150;
    assert_eq!(swapped.previous_version, v1_version);
    assert_ne!(swapped.version, v1_version);
    assert_eq!(handle.modules()[0].1.version, swapped.version);
    feed(&mut running, 150).await;

    // v3 fails its init: refused, v2 keeps running.
    match handle
        .swap_module("count", ModuleSource::Path(guest("swap-v3")))
        .await
    {
        Err(HandleError::Swap(SwapError::Refused { message, .. })) => {
            assert!(message.contains("v3 refuses to start"), "{message}")
        }
        other => panic!("v3 not refused: {other:?}"),
    }
    // Not a component, and a component importing sockets: refused too.
    for (bytes, expected) in [
        (b"garbage!".to_vec(), "not a WebAssembly component"),
        (
            std::fs::read(guest("wasi-reach")).unwrap(),
            "which this pipe is not granted",
        ),
    ] {
        match handle
            .swap_module("count", ModuleSource::Bytes(bytes))
            .await
        {
            Err(HandleError::Swap(SwapError::Refused { message, .. })) => {
                assert!(message.contains(expected), "{message}")
            }
            other => panic!("bad module not refused: {other:?}"),
        }
    }
    assert!(matches!(
        handle
            .swap_module("nope", ModuleSource::Path(guest("swap-v2")))
            .await,
        Err(HandleError::UnknownPipe(_))
    ));
    assert_eq!(handle.modules()[0].1.version, swapped.version);
    feed(&mut running, 300).await;

    let output = running.output.clone();
    drop(running);
    task.await.unwrap();
    let output = output.lock().unwrap().clone();
    assert_eq!(output.len(), 900);
    let counts = check_exactly_once(&output, &["v1", "v2"]);
    assert!(output.iter().any(|l| l.starts_with("v1:")));
    assert!(output.last().unwrap().starts_with("v2:"));
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![300; 3]);
    let committed = committed_counts(&state, "swap").await;
    assert_eq!(
        committed,
        KEYS.iter().map(|k| (k.to_string(), 300)).collect()
    );
}

async fn http(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    // Uploads are components; a checkpoint (no body) says JSON.
    let content_type = if body.is_empty() {
        "application/json"
    } else {
        "application/wasm"
    };
    let post = method == reqwest::Method::POST;
    let mut request = client.request(method, url).body(body);
    if post {
        request = request.header("Content-Type", content_type);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_swaps_checkpoints_and_reports_versions_and_metrics() {
    let state: SharedState = Arc::new(MemoryState::new());
    let supervisor = Supervisor::new(Tenants::new(HashMap::new()));
    let (input, source) = channel_source(64);
    let (sink, mut receiver) = channel_sink(1024);
    let builder = swap_pipeline(
        "admin-swap",
        state.clone(),
        WasmPipe::new("count", guest("swap-v1")),
    )
    .from(source)
    .to(sink);
    let (_handle, task) = supervisor
        .start("admin-swap", "acme", builder)
        .expect("start");
    let server = AdminServer::start(
        AdminOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some("s3cret".into()),
            module_dir: None,
        },
        supervisor.clone(),
    )
    .await
    .expect("admin server");
    let base = format!("http://{}", server.local_addr());
    let client = reqwest::Client::new();
    let get = |path: &str| {
        http(
            &client,
            reqwest::Method::GET,
            format!("{base}{path}"),
            None,
            vec![],
        )
    };

    let mut ready = get("/ready").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.0 != 200 {
        assert!(Instant::now() < deadline, "never ready: {ready:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        ready = get("/ready").await;
    }
    assert_eq!(get("/health").await.0, 200);
    for key in KEYS {
        input.send(Event::new(key)).await.unwrap();
    }
    for _ in 0..3 {
        receiver.recv().await.expect("v1 output");
    }

    let (status, body) = get("/pipelines").await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed[0]["name"], "admin-swap");
    assert_eq!(listed[0]["tenant"], "acme");
    assert_eq!(listed[0]["state"], "running");
    let v1_version = listed[0]["pipes"][0]["version"]
        .as_str()
        .unwrap()
        .to_owned();

    // Mutating calls need the token.
    let v2_bytes = std::fs::read(guest("swap-v2")).unwrap();
    let swap_url = format!("{base}/pipelines/admin-swap/pipes/count/module");
    // (A small body: the server answers 401 before reading it, and a large
    // one could meet a closed connection instead of the answer.)
    let (status, _) = http(
        &client,
        reqwest::Method::POST,
        swap_url.clone(),
        None,
        b"no token".to_vec(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(
        &client,
        reqwest::Method::POST,
        swap_url.clone(),
        Some("s3cret"),
        v2_bytes,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let done: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["previous_version"], v1_version.as_str());
    let v2_version = done["version"].as_str().unwrap().to_owned();

    let (status, body) = http(
        &client,
        reqwest::Method::POST,
        swap_url,
        Some("s3cret"),
        std::fs::read(guest("swap-v3")).unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("v3 refuses to start"), "{body}");

    for key in KEYS {
        input.send(Event::new(key)).await.unwrap();
    }
    let mut after = Vec::new();
    for _ in 0..3 {
        let event = receiver.recv().await.expect("v2 output");
        after.push(String::from_utf8_lossy(&event.value).into_owned());
    }
    assert_eq!(after, vec!["v2:ada:2", "v2:bob:2", "v2:cy:2"]);

    let (status, body) = http(
        &client,
        reqwest::Method::POST,
        format!("{base}/pipelines/admin-swap/checkpoint"),
        Some("s3cret"),
        vec![],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let checkpoint: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(checkpoint["epoch"].as_u64().unwrap() >= 1);

    let (status, metrics) = get("/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        format!(
            "plumber_pipe_module_info{{pipe=\"count\",pipeline=\"admin-swap\",tenant=\"acme\",version=\"{v2_version}\"}} 1"
        ),
        "plumber_source_events_total{pipeline=\"admin-swap\",tenant=\"acme\"} 6".to_owned(),
        "plumber_step_events_out_total{pipeline=\"admin-swap\",step=\"count\",tenant=\"acme\"} 6"
            .to_owned(),
        "plumber_tenant_pipelines{tenant=\"acme\"} 1".to_owned(),
        "plumber_pipeline_up{pipeline=\"admin-swap\",tenant=\"acme\"} 1".to_owned(),
    ] {
        assert!(metrics.contains(&expected), "no `{expected}` in\n{metrics}");
    }
    assert!(metrics.contains("plumber_checkpoint_age_seconds{"));
    assert!(metrics.contains("plumber_pipe_memory_bytes{"));

    // The status line `plumber run` prints on a terminal.
    let mut previous = HashMap::new();
    let line = supervisor.status_line(&mut previous, Duration::from_secs(1));
    assert!(
        line.starts_with("admin-swap [running]: in 6 (6/s) out 6 lag - checkpoint "),
        "{line}"
    );
    let line = supervisor.status_line(&mut previous, Duration::from_secs(1));
    assert!(line.contains("in 6 (0/s)"), "{line}");

    supervisor.shutdown();
    drop(input);
    task.await.unwrap().expect("pipeline ends cleanly");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_module_file_is_swapped_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("count.wasm");
    let replace = |from: &std::path::Path| {
        // Write aside and rename, as a deploy would: the watcher never
        // sees half a file.
        let staging = dir.path().join("staging.wasm");
        std::fs::copy(from, &staging).unwrap();
        std::fs::rename(&staging, &module).unwrap();
    };
    replace(&guest("swap-v1"));
    let state: SharedState = Arc::new(MemoryState::new());
    let builder = swap_pipeline(
        "watched",
        state.clone(),
        WasmPipe::new("count", &module).watch_module(Duration::from_millis(50)),
    );
    let handle = builder.handle();
    let (mut running, task) = ChannelRun::start(builder, 64);
    feed(&mut running, 30).await;
    // Let the file's modification time move on before replacing it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    replace(&guest("swap-v2"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !running.output().last().unwrap().starts_with("v2:") {
        assert!(Instant::now() < deadline, "v2 never took over");
        feed(&mut running, 3).await;
    }
    let v2_version = handle.modules()[0].1.version.clone();
    // A broken file is refused; v2 keeps running.
    tokio::time::sleep(Duration::from_millis(20)).await;
    replace(&guest("swap-v3"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    feed(&mut running, 30).await;
    assert!(running.output().last().unwrap().starts_with("v2:"));
    assert_eq!(handle.modules()[0].1.version, v2_version);

    let output = running.output.clone();
    drop(running);
    task.await.unwrap();
    let output = output.lock().unwrap().clone();
    check_exactly_once(&output, &["v1", "v2"]);
}
