//! The admin API against a browser's reach and a curious client: raw HTTP
//! requests (so `Host`, `Origin` and `Content-Type` are exactly what a test
//! says) to an admin server over a running pipeline with a real guest.

use plumber_tests as harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plumber::admin::{AdminOptions, AdminServer};
use plumber::checkpoint::CheckpointPolicy;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, SharedState};
use plumber::step::WasmPipe;
use plumber::streams::{channel_sink, channel_source};
use plumber::supervisor::Supervisor;
use plumber::tenant::Tenants;
use plumber::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request with exactly these headers (plus `Content-Length`
/// and `Connection: close`); returns the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    stream.write_all(head.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A running pipeline `guarded` (pipe `count`, the `swap-v1` guest) under a
/// supervisor.
struct Engine {
    supervisor: Arc<Supervisor>,
    input: tokio::sync::mpsc::Sender<Event>,
    output: tokio::sync::mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<
        Result<plumber::pipeline::RunReport, plumber::pipeline::PipelineError>,
    >,
}

impl Engine {
    async fn start() -> Engine {
        let state: SharedState = Arc::new(MemoryState::new());
        let supervisor = Supervisor::new(Tenants::new(HashMap::new()));
        let (input, source) = channel_source(16);
        let (sink, output) = channel_sink(64);
        let builder = Pipeline::builder("guarded")
            .state(state)
            .runtime(Runtime::new(Some(harness::cache_dir())).unwrap())
            .checkpoint(CheckpointPolicy::every(Duration::from_millis(50)))
            .from(source)
            .then(WasmPipe::new("count", harness::guest("swap-v1")))
            .to(sink);
        let (_handle, task) = supervisor.start("guarded", "acme", builder).expect("start");
        let mut engine = Engine {
            supervisor,
            input,
            output,
            task,
        };
        // Running once it has answered one event.
        assert!(engine.answer("ada").await.starts_with("v1:"));
        engine
    }

    async fn answer(&mut self, value: &str) -> String {
        self.input.send(Event::new(value)).await.expect("send");
        let event = tokio::time::timeout(Duration::from_secs(30), self.output.recv())
            .await
            .expect("an answer within 30 s")
            .expect("the pipeline runs");
        event.value_lossy().into_owned()
    }

    async fn serve(&self, token: Option<&str>, module_dir: Option<&Path>) -> AdminServer {
        AdminServer::start(
            AdminOptions {
                listen: "127.0.0.1:0".parse().unwrap(),
                token: token.map(str::to_owned),
                module_dir: module_dir.map(Path::to_path_buf),
            },
            self.supervisor.clone(),
        )
        .await
        .expect("admin server")
    }

    async fn stop(self) -> plumber::pipeline::RunReport {
        self.supervisor.shutdown();
        drop(self.input);
        self.task.await.unwrap().expect("clean stop")
    }
}

const JSON: (&str, &str) = ("Content-Type", "application/json");
const CHECKPOINT: &str = "/pipelines/guarded/checkpoint";
const MODULE: &str = "/pipelines/guarded/pipes/count/module";

/// Without a token: a request must be addressed to the server by a
/// loopback name (a DNS name of a web page's choosing that resolves to
/// 127.0.0.1 is refused), must not come from another origin, and a POST
/// must be JSON or WebAssembly, which no page can send across origins
/// without a preflight. What passes works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_only_same_origin_typed_requests_to_a_loopback_name_pass() {
    let engine = Engine::start().await;
    let server = engine.serve(None, None).await;
    let addr = server.local_addr();
    let port = addr.port();
    let own = format!("127.0.0.1:{port}");

    // Host: only the loopback names of this server.
    for name in [
        own.clone(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, body) = request(addr, "GET", "/health", &[("Host", &name)], b"").await;
        assert_eq!((status, body.as_str()), (200, "ok"), "{name}");
    }
    for name in [
        format!("attacker.example:{port}"),
        "127.0.0.1".to_owned(),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        format!("localhost.attacker.example:{port}"),
    ] {
        for (method, path, headers) in [
            ("GET", "/pipelines", vec![("Host", name.as_str())]),
            ("POST", CHECKPOINT, vec![("Host", name.as_str()), JSON]),
        ] {
            let (status, body) = request(addr, method, path, &headers, b"").await;
            assert_eq!(status, 421, "{method} {path} Host {name}: {body}");
            assert!(body.contains("answers to"), "{body}");
        }
    }
    // HTTP/1.0 without any Host.
    let (status, _) = request(addr, "GET", "/pipelines", &[], b"").await;
    assert_eq!(status, 421);

    // Origin: another one (or an opaque one) is refused, for GET and POST.
    for origin in [
        "http://attacker.example",
        "null",
        "http://localhost:1",
        "https://127.0.0.1",
    ] {
        for (method, path) in [("GET", "/pipelines"), ("POST", CHECKPOINT)] {
            let headers = [("Host", own.as_str()), ("Origin", origin), JSON];
            let (status, body) = request(addr, method, path, &headers, b"").await;
            assert_eq!(status, 403, "{method} {path} Origin {origin}: {body}");
            assert!(body.contains("cross-origin request refused"), "{body}");
        }
    }

    // Content-Type: what a form or a plain fetch can send is refused.
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/octet-stream"),
    ] {
        let mut headers = vec![("Host", own.as_str())];
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type));
        }
        for path in [CHECKPOINT, MODULE] {
            let (status, body) = request(addr, "POST", path, &headers, b"{}").await;
            assert_eq!(status, 415, "{path} {content_type:?}: {body}");
        }
    }

    // What passes: a same-origin JSON POST is a checkpoint.
    let own_origin = format!("http://{own}");
    for headers in [
        vec![("Host", own.as_str()), JSON],
        vec![
            ("Host", own.as_str()),
            ("Origin", own_origin.as_str()),
            JSON,
        ],
    ] {
        let (status, body) = request(addr, "POST", CHECKPOINT, &headers, b"").await;
        assert_eq!(status, 200, "{headers:?}: {body}");
        let done: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(done["pipeline"], "guarded");
    }
    server.stop().await;
    engine.stop().await;
}

/// `{"path": …}` swaps read only files inside the configured module
/// directory (relative to it, symbolic links resolved), and refuse every
/// other path with the same answer whether or not the file exists; without
/// a module directory they are refused, and uploads of bytes still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_swaps_stay_inside_the_module_directory() {
    let mut engine = Engine::start().await;
    let root = tempfile::tempdir().unwrap();
    let modules = root.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    std::fs::copy(harness::guest("swap-v2"), modules.join("v2.wasm")).unwrap();
    // A real component outside the directory, and a link to it from inside.
    std::fs::copy(harness::guest("swap-v2"), root.path().join("exists.wasm")).unwrap();
    std::os::unix::fs::symlink(root.path().join("exists.wasm"), modules.join("link.wasm")).unwrap();
    let server = engine.serve(None, Some(&modules)).await;
    let addr = server.local_addr();
    let own = format!("127.0.0.1:{}", addr.port());
    let swap = |path: String| {
        let own = own.clone();
        async move {
            let body = serde_json::json!({ "path": path }).to_string();
            request(
                addr,
                "POST",
                MODULE,
                &[("Host", own.as_str()), JSON],
                body.as_bytes(),
            )
            .await
        }
    };

    let outside_existing = root.path().join("exists.wasm").display().to_string();
    let outside_missing = root.path().join("absent.wasm").display().to_string();
    let answers = [
        swap(outside_existing.clone()).await,
        swap(outside_missing.clone()).await,
        swap("../exists.wasm".into()).await,
        swap("../absent.wasm".into()).await,
        swap("link.wasm".into()).await,
        swap("/etc/passwd".into()).await,
        swap("missing.wasm".into()).await,
        swap(".".into()).await,
    ];
    for (status, body) in &answers {
        assert_eq!(*status, 403, "{body}");
        assert!(
            body.contains("is not a file inside the module directory"),
            "{body}"
        );
    }
    // Existing or not, the same answer but for the path it repeats.
    assert_eq!(
        answers[0].1.replace(&outside_existing, "P"),
        answers[1].1.replace(&outside_missing, "P")
    );
    assert_eq!(
        answers[2].1.replace("exists", "X"),
        answers[3].1.replace("absent", "X")
    );
    assert!(engine.answer("ada").await.starts_with("v1:"));

    // Inside the directory: swapped, by a relative or an absolute path.
    let (status, body) = swap("v2.wasm".into()).await;
    assert_eq!(status, 200, "{body}");
    assert!(engine.answer("ada").await.starts_with("v2:"));
    let (status, body) = swap(modules.join("v2.wasm").display().to_string()).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;

    // No module directory: path swaps are off; bytes still go through.
    let server = engine.serve(None, None).await;
    let addr = server.local_addr();
    let own = format!("127.0.0.1:{}", addr.port());
    let body = serde_json::json!({ "path": modules.join("v2.wasm") }).to_string();
    let (status, answer) = request(
        addr,
        "POST",
        MODULE,
        &[("Host", own.as_str()), JSON],
        body.as_bytes(),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("path swaps are off"), "{answer}");
    let v1 = std::fs::read(harness::guest("swap-v1")).unwrap();
    let wasm = ("Content-Type", "application/wasm");
    let (status, answer) =
        request(addr, "POST", MODULE, &[("Host", own.as_str()), wasm], &v1).await;
    assert_eq!(status, 200, "{answer}");
    assert!(engine.answer("ada").await.starts_with("v1:"));
    server.stop().await;
    engine.stop().await;
}

/// With a token the server may listen beyond loopback and be reached by
/// any name, but the token, the origin and the content type are checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_origin_and_content_type_are_still_checked() {
    let engine = Engine::start().await;
    let server = engine.serve(Some("s3cret"), None).await;
    let addr = server.local_addr();
    let bearer = ("Authorization", "Bearer s3cret");
    let named = ("Host", "admin.internal.example:9464");
    let cases: [(Vec<(&str, &str)>, u16); 5] = [
        (vec![named, JSON], 401),
        (vec![named, bearer, ("Content-Type", "text/plain")], 415),
        (
            vec![named, bearer, ("Origin", "http://attacker.example"), JSON],
            403,
        ),
        (
            vec![
                named,
                bearer,
                ("Origin", "http://admin.internal.example:9464"),
                JSON,
            ],
            200,
        ),
        (vec![named, bearer, JSON], 200),
    ];
    for (headers, expected) in cases {
        let (status, body) = request(addr, "POST", CHECKPOINT, &headers, b"").await;
        assert_eq!(status, expected, "{headers:?}: {body}");
    }
    let (status, _) = request(addr, "GET", "/metrics", &[named], b"").await;
    assert_eq!(status, 200);
    server.stop().await;
    engine.stop().await;
}

/// The value of the sample `series` (name and labels, as printed) in
/// Prometheus text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no `{series}` in\n{metrics}"))
        .parse()
        .unwrap_or_else(|e| panic!("`{series}`: {e}"))
}

/// `/metrics` carries histograms of checkpoint pauses, commit times, guest
/// call times and batch sizes, read from the engine at scrape time; the
/// run's report has the pause histogram instead of a list of pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_have_histograms_of_pauses_commits_calls_and_batch_sizes() {
    let mut engine = Engine::start().await;
    for name in ["bob", "cy"] {
        assert!(engine.answer(name).await.starts_with("v1:"));
    }
    let server = engine.serve(None, None).await;
    let addr = server.local_addr();
    let host = format!("127.0.0.1:{}", addr.port());
    let named = ("Host", host.as_str());
    let (status, body) = request(addr, "POST", CHECKPOINT, &[named, JSON], b"").await;
    assert_eq!(status, 200, "{body}");
    let (status, metrics) = request(addr, "GET", "/metrics", &[named], b"").await;
    assert_eq!(status, 200);

    for family in [
        "plumber_checkpoint_pause_seconds",
        "plumber_checkpoint_commit_seconds",
        "plumber_pipe_call_seconds",
        "plumber_pipe_batch_events",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} histogram\n")),
            "no histogram {family} in\n{metrics}"
        );
    }
    let pipeline = "{pipeline=\"guarded\",tenant=\"acme\"}";
    let checkpoints = sample(&metrics, &format!("plumber_checkpoints_total{pipeline}"));
    let pauses = sample(
        &metrics,
        &format!("plumber_checkpoint_pause_seconds_count{pipeline}"),
    );
    let commits = sample(
        &metrics,
        &format!("plumber_checkpoint_commit_seconds_count{pipeline}"),
    );
    // One pause per checkpoint (the histogram is read after the counter,
    // so a checkpoint in between can only add to it), one commit per pause.
    assert!(checkpoints >= 1.0 && pauses >= checkpoints, "{metrics}");
    assert!(commits >= pauses, "{metrics}");
    let all = sample(
        &metrics,
        "plumber_checkpoint_pause_seconds_bucket{pipeline=\"guarded\",tenant=\"acme\",le=\"+Inf\"}",
    );
    assert_eq!(all, pauses);

    let step = "{pipeline=\"guarded\",step=\"count\",tenant=\"acme\"}";
    // Every event went into the pipe in some batch, each batch one call.
    assert_eq!(
        sample(&metrics, &format!("plumber_pipe_batch_events_sum{step}")),
        3.0
    );
    let batches = sample(&metrics, &format!("plumber_pipe_batch_events_count{step}"));
    assert!((1.0..=3.0).contains(&batches), "{metrics}");
    assert_eq!(
        sample(&metrics, &format!("plumber_pipe_call_seconds_count{step}")),
        batches
    );
    assert!(sample(&metrics, &format!("plumber_pipe_call_seconds_sum{step}")) > 0.0);

    server.stop().await;
    let report = engine.stop().await;
    assert_eq!(report.checkpoint_pause.count(), report.checkpoints);
    assert!(report.checkpoint_pause.quantile(0.99).is_some());
}

/// A module directory that does not exist stops the server from starting,
/// naming it; in a host config it is taken relative to the file.
#[tokio::test]
async fn the_module_directory_must_exist_and_is_relative_to_the_host_config() {
    let root = tempfile::tempdir().unwrap();
    let error = AdminServer::start(
        AdminOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: None,
            module_dir: Some(root.path().join("nope")),
        },
        Supervisor::new(Tenants::new(HashMap::new())),
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("nope"), "{error}");

    let host = root.path().join("host.json");
    std::fs::write(&host, r#"{"admin": {"module_dir": "modules"}}"#).unwrap();
    let config = plumber::config::HostConfig::load(&host).unwrap();
    assert_eq!(
        config.admin.unwrap().module_dir.unwrap(),
        root.path().join("modules")
    );
}
