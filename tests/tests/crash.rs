//! Crash tests: the `plumber` binary is killed with SIGKILL at random
//! moments, restarted on the same config, and finally run to the end. The
//! source is N events with unique ids; a stateful guest counts them per key
//! (`id % K`) and emits `<id> <key> <count>` to a file sink. What the output
//! and the final state must satisfy depends on the delivery guarantee.
//!
//! `PLUMBER_CRASH_KILLS` (default 3) sets how many kills per run,
//! `PLUMBER_CRASH_EVENTS` (default 40 000) the number of events, and
//! `PLUMBER_CRASH_SEED` the seed of the kill times: raise the first two for
//! a longer soak.

use plumber_tests as harness;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const KEYS: u64 = 7;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator for kill times.
struct Lcg(u64);

impl Lcg {
    fn next_in(&mut self, low: u64, high: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        low + (self.0 >> 33) % (high - low)
    }
}

struct Scenario {
    dir: tempfile::TempDir,
    config: PathBuf,
    out: PathBuf,
    events: u64,
}

impl Scenario {
    fn new(delivery: &str, state: serde_json::Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = env_or("PLUMBER_CRASH_EVENTS", 40_000);
        let input = dir.path().join("ids.txt");
        let ids: String = (0..events).map(|id| format!("{id}\n")).collect();
        std::fs::write(&input, ids).unwrap();
        let out = dir.path().join("out.txt");
        let config = serde_json::json!({
            "name": "crash",
            "delivery": delivery,
            "state": state,
            "checkpoint": { "interval_ms": 25 },
            "batch_size": 20,
            "from": { "type": "file", "path": input },
            "pipeline": [
                { "name": "counter", "type": "wasm", "module": harness::guest("key-counter"),
                  "config": { "keys": KEYS } }
            ],
            "to": { "type": "file", "path": out }
        });
        let path = dir.path().join("crash.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        Scenario {
            dir,
            config: path,
            out,
            events,
        }
    }

    fn command(&self) -> Command {
        harness::kills::plumber_run(&self.config)
    }

    /// Bytes the complete output takes (every id once).
    fn full_output_len(&self) -> u64 {
        let mut counts = HashMap::new();
        (0..self.events)
            .map(|id| {
                let count: &mut u64 = counts.entry(id % KEYS).or_default();
                *count += 1;
                format!("{id} {} {count}\n", id % KEYS).len() as u64
            })
            .sum()
    }

    /// Kills the pipeline `kills` times at random points of its progress
    /// (when its output has grown by a random 3-25% of the full output since
    /// the start of that run), then lets it finish. Returns how many kills
    /// hit a process that was still working.
    fn run_with_kills(&self, kills: u64, seed: u64) -> u64 {
        let mut rng = Lcg(seed);
        let mut landed = 0;
        let full = self.full_output_len();
        // Output so far, rotated files included.
        let length = || {
            let rotated: u64 = (1..)
                .map_while(|n| {
                    std::fs::metadata(self.out.with_file_name(format!("out.txt.{n}"))).ok()
                })
                .map(|m| m.len())
                .sum();
            rotated + std::fs::metadata(&self.out).map(|m| m.len()).unwrap_or(0)
        };
        for _ in 0..kills {
            let mut child = self.command().spawn().expect("spawn plumber");
            let target = length() + full * rng.next_in(3, 25) / 100;
            let deadline = Instant::now() + Duration::from_secs(120);
            while length() < target
                && Instant::now() < deadline
                && child.try_wait().expect("poll").is_none()
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            // A little more random time, so kills land in checkpoints too.
            std::thread::sleep(Duration::from_millis(rng.next_in(0, 30)));
            if child.try_wait().expect("poll").is_none() {
                child.kill().expect("SIGKILL");
                landed += 1;
            }
            let output = child.wait_with_output().expect("wait");
            if output.status.code().is_some_and(|c| c != 0) {
                panic!(
                    "plumber failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        let started = Instant::now();
        let output = self.command().output().expect("final run");
        assert!(
            output.status.success(),
            "final run failed after {:?}: {}",
            started.elapsed(),
            String::from_utf8_lossy(&output.stderr)
        );
        landed
    }

    /// The output lines as (id, key, count), rotated files first.
    fn output(&self) -> Vec<(u64, u64, u64)> {
        let mut text = String::new();
        for n in 1.. {
            let rotated = self.out.with_file_name(format!("out.txt.{n}"));
            match std::fs::read_to_string(&rotated) {
                Ok(part) => text.push_str(&part),
                Err(_) => break,
            }
        }
        text.push_str(&std::fs::read_to_string(&self.out).unwrap_or_default());
        text.lines()
            .map(|line| {
                let mut parts = line.split(' ').map(|p| p.parse::<u64>().expect("a number"));
                let mut next = || parts.next().expect("three numbers");
                (next(), next(), next())
            })
            .collect()
    }

    /// The final per-key counters, read back through `plumber state`.
    fn state(&self) -> BTreeMap<u64, u64> {
        let output = Command::new(harness::plumber_binary())
            .args(["state", "--pipe", "counter"])
            .arg(&self.config)
            .output()
            .expect("plumber state");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                let (key, value) = line.split_once('\t').expect("key<TAB>value");
                (
                    key.trim_start_matches('k').parse().expect("key"),
                    value.parse().expect("count"),
                )
            })
            .collect()
    }

    fn true_counts(&self) -> BTreeMap<u64, u64> {
        let mut counts = BTreeMap::new();
        for id in 0..self.events {
            *counts.entry(id % KEYS).or_default() += 1;
        }
        counts
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn kills() -> u64 {
    env_or("PLUMBER_CRASH_KILLS", 3)
}

fn seed(salt: u64) -> u64 {
    env_or("PLUMBER_CRASH_SEED", 20261128) ^ salt
}

fn check_exactly_once(scenario: &Scenario, landed: u64) {
    assert!(
        landed > 0,
        "no kill landed while the pipeline was running: the test proved nothing"
    );
    let output = scenario.output();
    // Every id exactly once...
    let mut seen = HashMap::new();
    for (id, _, _) in &output {
        *seen.entry(*id).or_insert(0u32) += 1;
    }
    assert_eq!(
        seen.len() as u64,
        scenario.events,
        "ids missing from the output"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "an id appears twice in the output"
    );
    // ...and each key's counts run 1..n in order, with no gap or repeat.
    let mut last: HashMap<u64, u64> = HashMap::new();
    for (id, key, count) in &output {
        assert_eq!(*key, id % KEYS);
        let previous = last.insert(*key, *count).unwrap_or(0);
        assert_eq!(
            *count,
            previous + 1,
            "key {key}: count {count} after {previous}"
        );
    }
    assert_eq!(scenario.state(), scenario.true_counts());
}

fn check_at_least_once(scenario: &Scenario, landed: u64) {
    assert!(
        landed > 0,
        "no kill landed while the pipeline was running: the test proved nothing"
    );
    let output = scenario.output();
    let ids: std::collections::HashSet<u64> = output.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        ids.len() as u64,
        scenario.events,
        "an id is missing from the output"
    );
    let truth = scenario.true_counts();
    for (key, count) in scenario.state() {
        assert!(
            count >= truth[&key],
            "key {key}: {count} < {}: an event's effect was lost",
            truth[&key]
        );
    }
}

fn check_at_most_once(scenario: &Scenario, landed: u64) {
    assert!(
        landed > 0,
        "no kill landed while the pipeline was running: the test proved nothing"
    );
    let output = scenario.output();
    let mut seen = std::collections::HashSet::new();
    for (id, _, _) in &output {
        assert!(seen.insert(*id), "id {id} was applied twice");
    }
    let truth = scenario.true_counts();
    for (key, count) in scenario.state() {
        assert!(
            count <= truth[&key],
            "key {key}: {count} > {}: an event was applied twice",
            truth[&key]
        );
    }
}

fn sled(scenario_dir: &Path) -> serde_json::Value {
    serde_json::json!({ "type": "sled", "path": scenario_dir.join("state") })
}

#[test]
fn exactly_once_on_sled_survives_sigkill() {
    let scenario = Scenario::new("exactly_once", serde_json::Value::Null);
    let scenario = Scenario::with_state(scenario, sled);
    let landed = scenario.run_with_kills(kills(), seed(1));
    check_exactly_once(&scenario, landed);
}

#[test]
fn at_least_once_on_sled_loses_nothing() {
    let scenario = Scenario::with_state(
        Scenario::new("at_least_once", serde_json::Value::Null),
        sled,
    );
    let landed = scenario.run_with_kills(kills(), seed(2));
    check_at_least_once(&scenario, landed);
}

#[test]
fn at_most_once_on_sled_applies_nothing_twice() {
    let scenario =
        Scenario::with_state(Scenario::new("at_most_once", serde_json::Value::Null), sled);
    let landed = scenario.run_with_kills(kills(), seed(3));
    check_at_most_once(&scenario, landed);
}

fn redb(scenario_dir: &Path) -> serde_json::Value {
    // A page cache far below the data's size, so that reads go to the file.
    serde_json::json!({ "type": "redb", "path": scenario_dir.join("state/crash.redb"),
                        "cache_bytes": 1_048_576 })
}

#[test]
fn exactly_once_on_redb_survives_sigkill() {
    let scenario =
        Scenario::with_state(Scenario::new("exactly_once", serde_json::Value::Null), redb);
    let landed = scenario.run_with_kills(kills(), seed(10));
    check_exactly_once(&scenario, landed);
}

#[test]
fn at_least_once_on_redb_loses_nothing() {
    let scenario = Scenario::with_state(
        Scenario::new("at_least_once", serde_json::Value::Null),
        redb,
    );
    let landed = scenario.run_with_kills(kills(), seed(11));
    check_at_least_once(&scenario, landed);
}

#[test]
fn at_most_once_on_redb_applies_nothing_twice() {
    let scenario =
        Scenario::with_state(Scenario::new("at_most_once", serde_json::Value::Null), redb);
    let landed = scenario.run_with_kills(kills(), seed(12));
    check_at_most_once(&scenario, landed);
}

#[test]
fn exactly_once_on_a_memory_snapshot_survives_sigkill() {
    let scenario = Scenario::with_state(
        Scenario::new("exactly_once", serde_json::Value::Null),
        |dir| serde_json::json!({ "type": "memory", "snapshot": dir.join("state.snap") }),
    );
    let landed = scenario.run_with_kills(kills(), seed(4));
    check_exactly_once(&scenario, landed);
}

impl Scenario {
    /// Rewrites the scenario's config with the state backend `state(dir)`.
    fn with_state(self, state: impl Fn(&Path) -> serde_json::Value) -> Self {
        let mut config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        config["state"] = state(self.path());
        std::fs::write(&self.config, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        self
    }
}

fn redis(server: &harness::RedisServer) -> impl Fn(&Path) -> serde_json::Value + '_ {
    move |_| serde_json::json!({ "type": "redis", "url": server.url(), "reconnect_timeout_ms": 5000 })
}

#[test]
fn exactly_once_on_redis_survives_sigkill() {
    let server = harness::RedisServer::start();
    let scenario = Scenario::with_state(
        Scenario::new("exactly_once", serde_json::Value::Null),
        redis(&server),
    );
    let landed = scenario.run_with_kills(kills(), seed(5));
    check_exactly_once(&scenario, landed);
}

#[test]
fn at_least_once_on_redis_loses_nothing() {
    let server = harness::RedisServer::start();
    let scenario = Scenario::with_state(
        Scenario::new("at_least_once", serde_json::Value::Null),
        redis(&server),
    );
    let landed = scenario.run_with_kills(kills(), seed(6));
    check_at_least_once(&scenario, landed);
}

#[test]
fn at_most_once_on_redis_applies_nothing_twice() {
    let server = harness::RedisServer::start();
    let scenario = Scenario::with_state(
        Scenario::new("at_most_once", serde_json::Value::Null),
        redis(&server),
    );
    let landed = scenario.run_with_kills(kills(), seed(7));
    check_at_most_once(&scenario, landed);
}

#[test]
fn exactly_once_with_a_rotating_file_sink_survives_sigkill() {
    let scenario =
        Scenario::with_state(Scenario::new("exactly_once", serde_json::Value::Null), sled);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&scenario.config).unwrap()).unwrap();
    config["to"]["rotate_bytes"] = serde_json::json!(20_000);
    // A checkpoint every 2000 events (about 28 kB of output): a rotation at each.
    config["checkpoint"]["every_events"] = serde_json::json!(2_000);
    std::fs::write(&scenario.config, config.to_string()).unwrap();
    let landed = scenario.run_with_kills(kills(), seed(8));
    check_exactly_once(&scenario, landed);
    assert!(
        scenario.out.with_file_name("out.txt.3").exists(),
        "the sink did not rotate"
    );
}

/// At-most-once with one event per batch commits the position once per
/// group of ready batches, ahead of processing them: a crash skips the
/// rest of a group, and still never applies an event twice.
#[test]
fn at_most_once_with_batches_of_one_applies_nothing_twice() {
    let scenario =
        Scenario::with_state(Scenario::new("at_most_once", serde_json::Value::Null), sled);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&scenario.config).unwrap()).unwrap();
    config["batch_size"] = serde_json::json!(1);
    std::fs::write(&scenario.config, config.to_string()).unwrap();
    let landed = scenario.run_with_kills(kills(), seed(9));
    check_at_most_once(&scenario, landed);
}
