//! SIGKILLs of `plumber run` at moments picked by the output's growth,
//! shared by the crash tests of lines, graphs and joins.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The kill times' generator (a 64-bit LCG: the same seed, the same kills).
pub struct Lcg(pub u64);

impl Lcg {
    /// A number in `low..high`.
    pub fn next_in(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

/// `plumber run CONFIG` with the test cache, warnings only, stdout
/// discarded and stderr kept (for the failure message): the run a crash
/// test kills and restarts.
pub fn plumber_run(config: &Path) -> Command {
    let mut command = Command::new(crate::plumber_binary());
    command
        .arg("--cache-dir")
        .arg(crate::cache_dir())
        .arg("run")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// The length of the file at `path` (0 while it does not exist).
pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Starts `command`, waits until `watched` is at least `target` bytes long
/// (at most 120 s, or until the process ends), waits `extra` more (so kills
/// land in checkpoints too) and SIGKILLs the process if it still runs.
/// Returns whether the kill hit a running process; a run that ended by
/// itself with a failure fails the test.
pub fn kill_once_grown(
    command: &mut Command,
    watched: &Path,
    target: u64,
    extra: Duration,
) -> bool {
    let mut child = command.spawn().expect("spawn plumber");
    let deadline = Instant::now() + Duration::from_secs(120);
    while file_len(watched) < target
        && Instant::now() < deadline
        && child.try_wait().expect("poll").is_none()
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(extra);
    let landed = child.try_wait().expect("poll").is_none();
    if landed {
        child.kill().expect("SIGKILL");
    }
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.code().is_none_or(|c| c == 0),
        "plumber failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    landed
}
