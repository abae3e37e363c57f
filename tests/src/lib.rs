//! Helpers for plumber's end-to-end tests: building the example guests from
//! source and locating them.
//!
//! Also included by `host/tests/cli.rs` through `#[path]`, so it depends on
//! nothing but `std`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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

/// A compile-cache directory shared by the tests of this checkout.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("plumber-test-cache")
}

/// A real `redis-server` on a free loopback port, stopped when dropped.
pub struct RedisServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts `redis-server` and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed or does not come up: tests that
    /// need Redis fail rather than skip (`.ci/run` installs it).
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server (install it: apt-get install redis-server): {e}")
            });
        let server = RedisServer {
            child,
            port,
            _dir: dir,
        };
        server.wait_until_ready();
        server
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn wait_until_ready(&self) {
        use std::io::{Read, Write};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let mut reply = [0u8; 5];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG"
                {
                    return;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
