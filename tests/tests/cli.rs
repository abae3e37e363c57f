//! The `plumber` binary: exit codes and messages for good and bad input.

use plumber_tests as harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn plumber(args: &[&str], config: &Path) -> Output {
    Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber")
}

fn write_config(dir: &Path, config: serde_json::Value) -> std::path::PathBuf {
    let path = dir.join("pipeline.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    path
}

fn names_config(dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "name": "names",
        "state": { "type": "sled", "path": "state" },
        "from": { "type": "array", "values": ["Ada", "grace", "ada"] },
        "pipeline": [
            { "name": "upper", "type": "wasm", "module": harness::guest("upper") },
            { "name": "lower", "type": "wasm", "module": harness::guest("lower") },
            { "name": "count", "type": "wasm", "module": harness::guest("count") }
        ],
        "to": { "type": "file", "path": dir.join("out.txt") }
    })
}

#[test]
fn run_prints_counts_and_state_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), names_config(dir.path()));
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "ada 1\ngrace 1\nada 2\n"
    );
    // The guest's log line reached the host's log, tagged with the pipe.
    let line = stderr
        .lines()
        .find(|l| l.contains("count ready"))
        .unwrap_or_else(|| panic!("no guest log in: {stderr}"));
    assert!(
        line.contains("plumber::guest") && line.contains("pipe") && line.contains("count"),
        "{line}"
    );
    // The state lives beside the config, as the config says.
    let state = Command::new(harness::plumber_binary())
        .args(["state", "--pipe", "count"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout), "ada\t2\ngrace\t1\n");
}

#[test]
fn validate_accepts_a_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), names_config(dir.path()));
    let output = plumber(&["validate"], &config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn expect_exit_2(config: serde_json::Value, command: &str, wanted: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), config);
    let output = plumber(&[command], &path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for text in wanted {
        assert!(stderr.contains(text), "`{text}` not in: {stderr}");
    }
}

#[test]
fn bad_fields_exit_2_with_their_json_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["checkpoint"] = serde_json::json!({ "interval_ms": 0 });
    expect_exit_2(
        config,
        "validate",
        &["checkpoint.interval_ms", "positive interval"],
    );

    let mut config = names_config(dir.path());
    config["batch_size"] = serde_json::json!("many");
    expect_exit_2(config, "run", &["batch_size", "invalid type"]);

    let mut config = names_config(dir.path());
    config["pipeline"][1]["name"] = serde_json::json!("upper");
    expect_exit_2(config, "validate", &["pipeline[1].name", "used twice"]);

    let mut config = names_config(dir.path());
    config["to"] = serde_json::json!({ "type": "printer" });
    expect_exit_2(
        config,
        "validate",
        &["`to.type`", "unknown variant `printer`"],
    );
}

#[test]
fn a_missing_or_invalid_module_names_the_file_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["pipeline"][2]["module"] = serde_json::json!("nowhere/count.wasm");
    expect_exit_2(
        config.clone(),
        "validate",
        &["pipeline[2].module", "nowhere/count.wasm", "No such file"],
    );
    expect_exit_2(
        config,
        "run",
        &["pipeline[2].module", "nowhere/count.wasm", "No such file"],
    );

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm").unwrap();
    let mut config = names_config(dir.path());
    config["pipeline"][0]["module"] = serde_json::json!(garbage);
    expect_exit_2(
        config,
        "validate",
        &[
            "pipeline[0].module",
            "garbage.wasm",
            "not a WebAssembly component",
        ],
    );

    // A core module (no component layer).
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let mut config = names_config(dir.path());
    config["pipeline"][0]["module"] = serde_json::json!(core);
    expect_exit_2(config, "validate", &["core module"]);
}

#[test]
fn a_guest_importing_the_filesystem_is_refused_naming_the_import() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["pipeline"][1]["module"] = serde_json::json!(harness::guest("file-reader"));
    // It needs the wall clock first: not granted by default.
    expect_exit_2(
        config.clone(),
        "validate",
        &[
            "pipeline[1].module",
            "imports `wasi:clocks/wall-clock",
            "not granted",
        ],
    );
    // Granting clocks leaves the filesystem, which no config can grant.
    config["pipeline"][1]["grants"] = serde_json::json!(["clocks"]);
    expect_exit_2(
        config,
        "validate",
        &[
            "pipeline[1].module",
            "imports `wasi:filesystem/",
            "wasi:clocks/*",
        ],
    );
}

/// A guest importing several interfaces it is not granted: the error names
/// every one, not only the first.
#[test]
fn every_ungranted_import_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["pipeline"][1]["module"] = serde_json::json!(harness::guest("wasi-reach"));
    expect_exit_2(
        config,
        "validate",
        &[
            "pipeline[1].module",
            "imports `wasi:clocks/",
            "`wasi:filesystem/",
            "`wasi:sockets/",
            "not granted",
        ],
    );
}

/// What `run` refuses at once, `validate` refuses too, naming the field;
/// both exit 2.
#[test]
fn validate_refuses_what_run_refuses_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "/state",
            serde_json::json!({"type": "redis", "url": "redis://127.0.0.1:notaport/"}),
            "at `state.url`",
            "not a Redis URL",
        ),
        (
            "/state",
            serde_json::json!({"type": "sled", "path": file}),
            "at `state.path`",
            "is a file",
        ),
        (
            "/pipeline/1/read_only_dir",
            serde_json::json!({"host": dir.path().join("no-such-dir"), "guest": "/data"}),
            "at `pipeline[1].read_only_dir.host`",
            "no directory",
        ),
        (
            "/pipeline/2/config",
            serde_json::json!({"separator": ": ", "bogus": 1}),
            "at `pipeline[2].config` (pipe `count`)",
            "failed in init",
        ),
        (
            "/to",
            serde_json::json!({"type": "file", "path": dir.path().join("no-such-dir/out.txt")}),
            "at `to.path`",
            "does not exist",
        ),
        (
            "/from",
            serde_json::json!({"type": "file", "path": dir.path().join("missing.txt")}),
            "at `from.path`",
            "no file",
        ),
    ];
    for (pointer, value, at, why) in cases {
        let mut config = names_config(dir.path());
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        config.pointer_mut(parent).unwrap()[field] = value;
        for command in ["validate", "run"] {
            expect_exit_2(config.clone(), command, &[at, why]);
        }
    }
}

/// Without `--connect`, `validate` says in one line which checks it left;
/// with it, it reaches the server, and a server that is not there fails
/// with status 1 (the config itself is fine).
#[test]
fn validate_connect_reaches_the_servers_it_otherwise_names() {
    let server = harness::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["state"] = serde_json::json!({"type": "redis", "url": server.url()});
    let path = write_config(dir.path(), config.clone());
    let output = plumber(&["validate"], &path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let skipped: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("not checked without --connect: "))
        .collect();
    assert_eq!(
        skipped,
        [format!(
            "not checked without --connect: the Redis server at {}",
            server.url()
        )
        .as_str()],
        "{stdout}"
    );
    let output = plumber(&["validate", "--connect"], &path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!stdout.contains("not checked"), "{stdout}");

    let nobody = format!("redis://127.0.0.1:{}/", harness::free_port());
    config["state"] = serde_json::json!({"type": "redis", "url": nobody,
        "reconnect_timeout_ms": 200, "key_prefix": "tenant-a:"});
    let path = write_config(dir.path(), config);
    let output = plumber(&["validate", "--connect"], &path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at `state.url`"), "{stderr}");
    // The retries say whose keys wait (a worker's partitions each have
    // their own prefix).
    assert!(
        stderr.contains("redis state (keys `tenant-a:…`): `PING` failed"),
        "{stderr}"
    );
    // Without --connect the same config is fine.
    assert!(plumber(&["validate"], &path).status.success());
}

/// Exit status 2 is for a config that cannot work; a system that fails
/// under a good one is 1. A sled path that is a file is the config's fault;
/// one the system cannot create (here under /proc) is not.
#[test]
fn exit_status_tells_a_bad_config_from_a_failing_system() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    for (state, status) in [
        (file.clone(), 2),
        (file.join("below-a-file"), 2),
        (PathBuf::from("/proc/self/plumber-state"), 1),
    ] {
        let mut config = names_config(dir.path());
        config["state"] = serde_json::json!({"type": "sled", "path": state});
        let path = write_config(dir.path(), config);
        for command in ["run", "state"] {
            let args: &[&str] = if command == "state" {
                &["state", "--pipe", "count"]
            } else {
                &["run"]
            };
            let output = plumber(args, &path);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(
                output.status.code(),
                Some(status),
                "{command} {state:?}: {stderr}"
            );
            assert!(stderr.contains("at `state"), "{stderr}");
        }
    }
    // An admin address another process holds: the system's doing, 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let path = write_config(dir.path(), names_config(dir.path()));
    let output = plumber(&["run", "--admin", &address], &path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&address), "{stderr}");
    // The cause too, once: the error's own text does not repeat it.
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
}

/// `plumber state --pipe` with a pipe the pipeline lacks: status 2 and the
/// pipes it has; keys and values with control characters stay on their line.
#[test]
fn state_names_the_pipes_and_escapes_what_would_break_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = names_config(dir.path());
    config["from"]["values"] = serde_json::json!([
        "tab\there",
        "new\nline",
        "back\\slash",
        "esc\u{1b}[0m",
        "tab\there"
    ]);
    config["pipeline"] = serde_json::json!([
        { "name": "count", "type": "wasm", "module": harness::guest("count") }
    ]);
    let path = write_config(dir.path(), config.clone());
    let output = plumber(&["run"], &path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = plumber(&["state", "--pipe", "count"], &path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "back\\\\slash\t1",
            "esc\\u{1b}[0m\t1",
            "new\\nline\t1",
            "tab\\there\t2"
        ]
    );

    let mut three = names_config(dir.path());
    three["state"] = config["state"].clone();
    let path = write_config(dir.path(), three);
    let output = plumber(&["state", "--pipe", "nosuch"], &path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no pipe `nosuch`; its pipes are `upper`, `lower` and `count`"),
        "{stderr}"
    );
}

#[tokio::test]
async fn run_serves_an_http_source_and_answers_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let out = dir.path().join("out.txt");
    let config = write_config(
        dir.path(),
        serde_json::json!({
            "name": "http-count",
            "state": { "type": "sled", "path": "state" },
            "checkpoint": { "interval_ms": 50 },
            "from": { "type": "http", "listen": format!("127.0.0.1:{port}"), "path": "/events" },
            "pipeline": [ { "name": "count", "type": "wasm", "module": harness::guest("count") } ],
            "to": { "type": "file", "path": out }
        }),
    );
    let mut child = tokio::process::Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    // Wait for the server to listen.
    let mut answer = None;
    for _ in 0..200 {
        match client
            .post(&url)
            .json(&serde_json::json!([{ "value": "ada" }, { "value": "bob" }, { "value": "ada" }]))
            .send()
            .await
        {
            Ok(response) => {
                answer = Some(response);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let answer = answer.expect("the HTTP source listens");
    assert_eq!(answer.status(), 202);
    // 202 means committed: the counts are in the file already.
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "ada 1\nbob 1\nada 2\n"
    );
    // Ctrl-C stops it cleanly.
    let pid = child.id().expect("pid").to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn guest_output_goes_to_the_log_tagged_never_to_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let config = write_config(
        dir.path(),
        serde_json::json!({
            "name": "printer",
            "tenant": "acme",
            "state": { "type": "memory" },
            "from": { "type": "array", "values": ["hello"] },
            "pipeline": [ { "name": "loud", "type": "wasm", "module": harness::guest("probe"),
                            "config": { "mode": "print" } } ],
            "to": { "type": "file", "path": out }
        }),
    );
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        !stdout.contains("hello"),
        "guest output reached stdout: {stdout}"
    );
    for stream in ["stdout", "stderr"] {
        let line = stderr
            .lines()
            .find(|line| line.contains(&format!("{stream}: hello")))
            .unwrap_or_else(|| panic!("no log line for the guest's {stream}: {stderr}"));
        assert!(
            line.contains("tenant=acme") && line.contains("pipe=loud"),
            "{line}"
        );
    }
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
}

#[test]
fn one_process_runs_two_tenants_pipelines_and_enforces_the_pipeline_quota() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |name: &str, tenant: &str| {
        let path = dir.path().join(format!("{name}.json"));
        let config = serde_json::json!({
            "name": name,
            "tenant": tenant,
            // Both share one sled directory: the host opens it once.
            "state": { "type": "sled", "path": "state" },
            "from": { "type": "array", "values": ["ada", "bob", "ada"] },
            "pipeline": [ { "name": "count", "type": "wasm", "module": harness::guest("count") } ],
            "to": { "type": "file", "path": dir.path().join(format!("{name}.out")) }
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path
    };
    let a = pipeline("a", "acme");
    let b = pipeline("b", "globex");
    let host = dir.path().join("host.json");
    std::fs::write(
        &host,
        serde_json::json!({ "pipelines": [a, b], "tenants": { "acme": { "max_pipelines": 1 } } })
            .to_string(),
    )
    .unwrap();
    let output = plumber(&["run", "--host"], &host);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["a", "b"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join(format!("{name}.out"))).unwrap(),
            "ada 1\nbob 1\nada 2\n"
        );
    }
    // Two never-ending pipelines of acme at once: whichever starts second
    // is refused by the quota.
    std::fs::write(dir.path().join("never.txt"), "").unwrap();
    let follower = |name: &str| {
        let path = dir.path().join(format!("{name}.json"));
        let config = serde_json::json!({
            "name": name, "tenant": "acme",
            "state": { "type": "memory" },
            "from": { "type": "file", "path": dir.path().join("never.txt"), "follow_ms": 50 },
            "to": { "type": "discard" }
        });
        std::fs::write(&path, config.to_string()).unwrap();
        path
    };
    let slow = follower("slow");
    let a2 = follower("slow2");
    let mut child = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(["run", "--host"])
        .arg(&host)
        .arg(&slow)
        .arg(&a2)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The quota error arrives while `slow` keeps running; stop it then.
    std::thread::sleep(std::time::Duration::from_secs(3));
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tenant `acme` already runs 1 pipelines, its quota"),
        "{stderr}"
    );
}

/// `plumber bench` on a fresh clone: the whole suite, at a small scale,
/// prints a row for every scenario with a ratio to its native baseline.
#[test]
fn bench_runs_the_suite_and_prints_every_scenario() {
    let guests = harness::guest("upper")
        .parent()
        .expect("the guests' directory")
        .to_path_buf();
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args([
            "bench",
            "--scale",
            "0.002",
            "--checkpoint-ms",
            "20",
            "--guests",
        ])
        .arg(&guests)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    for scenario in [
        "wordcount source",
        "wordcount map",
        "wordcount count (memory)",
        "wordcount count (sled)",
        "wordcount window",
        "nexmark source",
        "nexmark q0",
        "nexmark q1",
        "nexmark q2",
        "nexmark q5",
        "nexmark q7",
        "scaling map x2",
        "scaling count x2",
        "memory count 5x",
        "memory window 5x",
        "memory nexmark q5 5x",
        "memory nexmark q7 5x",
        "windows tumbling",
        "windows session",
    ] {
        assert!(
            stdout.lines().any(|line| line.starts_with(scenario)),
            "no `{scenario}` row in:\n{stdout}"
        );
    }
    // Every WASM row of a scenario with a native baseline has a ratio.
    let wasm_rows: Vec<&str> = stdout
        .lines()
        .filter(|line| line.starts_with("wordcount map") && line.contains(" wasm "))
        .collect();
    assert_eq!(wasm_rows.len(), 1, "{stdout}");
    let ratio = wasm_rows[0].split_whitespace().last().unwrap_or_default();
    assert!(
        ratio.parse::<f64>().is_ok(),
        "no ratio in `{}`",
        wasm_rows[0]
    );
}

#[test]
fn bench_names_a_missing_guest_and_how_to_build_it() {
    let empty = tempfile::tempdir().unwrap();
    let output = Command::new(harness::plumber_binary())
        .args(["bench", "--scenario", "wordcount", "--guests"])
        .arg(empty.path())
        .output()
        .expect("run plumber bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("upper.wasm"), "{stderr}");
    assert!(
        stderr.contains("cargo build --release --target wasm32-wasip2"),
        "{stderr}"
    );
}

/// Whether process `pid` catches both SIGINT and SIGTERM (its `SigCgt` mask).
fn catches_stop_signals(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| {
            let bit = |signal: u32| 1u64 << (signal - 1);
            mask & bit(2) != 0 && mask & bit(15) != 0
        })
}

fn send(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Waits for `child` to exit, at most `limit`.
fn exit_within(
    child: &mut std::process::Child,
    limit: std::time::Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("plumber did not stop within {limit:?} of the signal");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    }
    text
}

/// A file-to-file pipeline, a key counter over ids, that commits only at
/// its final checkpoint (the interval is a minute). Following its input,
/// it never ends by itself; otherwise it ends at the end of the file.
fn counter_config(dir: &Path, input: &Path, follow: bool) -> std::path::PathBuf {
    let mut from = serde_json::json!({ "type": "file", "path": input });
    if follow {
        from["follow_ms"] = serde_json::json!(50);
    }
    write_config(
        dir,
        serde_json::json!({
            "name": "stopping",
            "state": { "type": "sled", "path": "state" },
            "checkpoint": { "interval_ms": 60000 },
            "batch_size": 100,
            "from": from,
            "pipeline": [ { "name": "counter", "type": "wasm",
                            "module": harness::guest("key-counter"), "config": { "keys": 7 } } ],
            "to": { "type": "file", "path": dir.join("out.txt") }
        }),
    )
}

fn spawn_run(config: &Path) -> std::process::Child {
    Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
}

/// The counter's committed state, summed over its keys.
fn committed_total(config: &Path) -> u64 {
    let state = plumber(&["state", "--pipe", "counter"], config);
    assert!(
        state.status.success(),
        "{}",
        String::from_utf8_lossy(&state.stderr)
    );
    String::from_utf8_lossy(&state.stdout)
        .lines()
        .map(|line| line.split_once('\t').unwrap().1.parse::<u64>().unwrap())
        .sum()
}

/// SIGTERM (what systemd, Docker and Kubernetes send) stops `plumber run`
/// like Ctrl-C: the batches read are drained, a final checkpoint commits
/// them, the process says so and exits 0; the next run resumes exactly.
#[test]
fn sigterm_drains_takes_a_final_checkpoint_and_exits_0() {
    const IDS: usize = 500_000;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ids.txt");
    let ids: String = (0..IDS).map(|id| format!("{id}\n")).collect();
    std::fs::write(&input, ids).unwrap();
    let config = counter_config(dir.path(), &input, true);
    let out = dir.path().join("out.txt");

    // The sink's buffer spills to the file as it fills, long before the
    // only checkpoint: output there shows the run is under way.
    let mut child = spawn_run(&config);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while line_count(&out) < 20_000 {
        assert!(std::time::Instant::now() < deadline, "no output");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            stderr_of(&mut child)
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    send("TERM", child.id());
    let status = exit_within(&mut child, std::time::Duration::from_secs(30));
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(0), "{status}: {stderr}");
    assert!(stderr.contains("SIGTERM: stopping"), "{stderr}");
    assert!(stderr.contains("pipeline finished"), "{stderr}");
    // The final checkpoint (the only one after epoch 0) covers exactly
    // what was written.
    let first = std::fs::read_to_string(&out).unwrap();
    let written = first.lines().count();
    assert!(written < IDS, "{written} lines: not stopped mid-run");
    assert_eq!(committed_total(&config), written as u64);

    // The next run goes on from there to the end of the file: nothing
    // taken back, nothing repeated.
    let config = counter_config(dir.path(), &input, false);
    let output = plumber(&["run"], &config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let all = std::fs::read_to_string(&out).unwrap();
    assert!(
        all.starts_with(&first),
        "the first run's output was taken back"
    );
    let mut seen = std::collections::HashSet::new();
    let mut last = std::collections::HashMap::new();
    for line in all.lines() {
        let parts: Vec<u64> = line.split(' ').map(|p| p.parse().unwrap()).collect();
        assert!(seen.insert(parts[0]), "id {} twice", parts[0]);
        let previous = last.insert(parts[1], parts[2]).unwrap_or(0);
        assert_eq!(parts[2], previous + 1, "{line}");
    }
    assert_eq!(seen.len(), IDS);
    assert_eq!(committed_total(&config), IDS as u64);
}

/// A stop signal at any moment of start-up, once the process runs its own
/// code, is a clean stop: exit 0 every time, and the checkpoints stay
/// whole (the run after goes on exactly).
#[test]
fn a_stop_signal_during_start_up_stops_cleanly_every_time() {
    const IDS: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ids.txt");
    std::fs::write(
        &input,
        (0..IDS).map(|id| format!("{id}\n")).collect::<String>(),
    )
    .unwrap();
    let config = counter_config(dir.path(), &input, true);
    for attempt in 0..10u64 {
        let signal = if attempt % 2 == 0 { "TERM" } else { "INT" };
        let mut child = spawn_run(&config);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !catches_stop_signals(child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        // At different points of start-up: at once, or a little later.
        std::thread::sleep(std::time::Duration::from_millis(attempt * 7 % 40));
        send(signal, child.id());
        let status = exit_within(&mut child, std::time::Duration::from_secs(60));
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal} during start-up (attempt {attempt}): {status}: {}",
            stderr_of(&mut child)
        );
    }
    // Whatever those runs did, each committed it whole.
    let out = dir.path().join("out.txt");
    assert_eq!(committed_total(&config), line_count(&out) as u64);
    let config = counter_config(dir.path(), &input, false);
    let output = plumber(&["run"], &config);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut ids: Vec<u64> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| line.split(' ').next().unwrap().parse().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..IDS).collect::<Vec<u64>>());
    assert_eq!(committed_total(&config), IDS);
}

/// Whoever read the log has gone (stderr is a closed pipe): a stop signal
/// still stops cleanly, the log lines that cannot be written are dropped.
#[test]
fn sigterm_stops_cleanly_when_nobody_reads_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("ids.txt");
    std::fs::write(
        &input,
        (0..300).map(|id| format!("{id}\n")).collect::<String>(),
    )
    .unwrap();
    let config = counter_config(dir.path(), &input, true);
    let mut child = spawn_run(&config);
    let mut stderr = child.stderr.take().unwrap();
    // Read until the pipeline runs, then close the pipe.
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("exactly-once") {
        let n = std::io::Read::read(&mut stderr, &mut chunk).unwrap();
        assert!(n > 0, "plumber ended: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    drop(stderr);
    send("TERM", child.id());
    let status = exit_within(&mut child, std::time::Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
}
