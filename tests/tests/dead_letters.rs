//! The dead-letter sink under exactly-once and SIGKILL: its position is
//! recorded in each checkpoint and what was written after it is taken back
//! on a restart, so each event a pipe failed on is dead-lettered exactly
//! once, in a line and in a graph, however many times the run was killed.
//!
//! The pipe (`faulty`) fails on every event whose value starts with `fail`;
//! `on_error: dead_letter` sends that event on and the run goes on. A
//! second step (`upper`) after it keeps barriers and dead letters racing:
//! the first step dead-letters events of the next epoch while the barrier
//! is still on its way to the sink.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use plumber_tests as harness;

use harness::kills::{file_len, kill_once_grown, Lcg};
use serde_json::{json, Value};

/// Every `FAIL_EVERY`-th event fails.
const FAIL_EVERY: u64 = 23;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn value_of(id: u64) -> String {
    if id.is_multiple_of(FAIL_EVERY) {
        format!("fail-{id}")
    } else {
        format!("ok-{id}")
    }
}

struct Scenario {
    /// Kept for the scenario's files.
    _dir: tempfile::TempDir,
    config: PathBuf,
    out: PathBuf,
    dead: PathBuf,
    events: u64,
}

impl Scenario {
    /// A line (`graph` false) or a graph of the same two steps.
    fn new(graph: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let events = env_or("PLUMBER_CRASH_EVENTS", 40_000);
        let input = dir.path().join("in.txt");
        let lines: String = (0..events).map(|id| value_of(id) + "\n").collect();
        std::fs::write(&input, lines).unwrap();
        let out = dir.path().join("out.txt");
        let dead = dir.path().join("dead.jsonl");
        let faulty = json!({
            "name": "faulty", "type": "wasm", "module": harness::guest("faulty"),
            "on_error": "dead_letter"
        });
        let upper = json!({ "name": "upper", "type": "wasm", "module": harness::guest("upper") });
        let mut config = json!({
            "name": "dead",
            "delivery": "exactly_once",
            "state": { "type": "sled", "path": dir.path().join("state") },
            "checkpoint": { "interval_ms": 25 },
            "batch_size": 20,
            "dead_letter": { "type": "file", "path": dead },
        });
        if graph {
            let mut faulty = faulty;
            faulty["from"] = json!(["lines"]);
            let mut upper = upper;
            upper["from"] = json!(["faulty"]);
            config["sources"] = json!({ "lines": { "type": "file", "path": input } });
            config["pipeline"] = json!([faulty, upper]);
            config["sinks"] = json!({ "out": { "type": "file", "path": out, "from": ["upper"] } });
        } else {
            config["from"] = json!({ "type": "file", "path": input });
            config["pipeline"] = json!([faulty, upper]);
            config["to"] = json!({ "type": "file", "path": out });
        }
        let path = dir.path().join("dead.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        Scenario {
            _dir: dir,
            config: path,
            out,
            dead,
            events,
        }
    }

    fn command(&self) -> Command {
        harness::kills::plumber_run(&self.config)
    }

    /// Kills the run `kills` times, then lets it finish; returns how many
    /// kills hit a running process. Every other kill lands in the hold of
    /// a fault point between the first checkpoint's flush (the dead letters
    /// written) and its commit, the moment where letters are on disk that
    /// the checkpoint resumed from does not cover; the others land where
    /// the dead letters have grown by a random amount.
    fn run_with_kills(&self, kills: u64, seed: u64) -> u64 {
        let mut random = Lcg(seed);
        // About 120 bytes per dead letter (value and four headers).
        let full = self.events / FAIL_EVERY * 120;
        let mut landed = 0;
        for kill in 0..kills {
            let grown = file_len(&self.dead);
            let mut command = self.command();
            let (target, extra) = if kill % 2 == 0 {
                command.env("PLUMBER_FAULT_HOLD_BEFORE_COMMIT", "dead:2000");
                (grown + 1, random.next_in(100, 600))
            } else {
                (
                    grown + random.next_in(full / 20, full / 6),
                    random.next_in(0, 30),
                )
            };
            let extra = Duration::from_millis(extra);
            if kill_once_grown(&mut command, &self.dead, target, extra) {
                landed += 1;
            }
        }
        let finished = self.command().output().expect("run plumber");
        assert!(
            finished.status.success(),
            "the last run failed: {}",
            String::from_utf8_lossy(&finished.stderr)
        );
        landed
    }

    fn check(&self, landed: u64) {
        assert!(
            landed > 0,
            "no kill landed while the pipeline ran: the test proved nothing"
        );
        let out = std::fs::read_to_string(&self.out).unwrap();
        let expected_out: Vec<String> = (0..self.events)
            .filter(|id| !id.is_multiple_of(FAIL_EVERY))
            .map(|id| value_of(id).to_uppercase())
            .collect();
        let got_out: Vec<&str> = out.lines().collect();
        assert_eq!(
            got_out.len(),
            expected_out.len(),
            "output lines after {landed} kills"
        );
        assert!(got_out.iter().zip(&expected_out).all(|(a, b)| a == b));

        let dead = std::fs::read_to_string(&self.dead).unwrap();
        let letters: Vec<Value> = dead
            .lines()
            .map(|line| serde_json::from_str(line).expect("a dead letter is a JSON line"))
            .collect();
        let values: Vec<&str> = letters
            .iter()
            .map(|letter| letter["value"].as_str().expect("a text value"))
            .collect();
        let expected_dead: Vec<String> = (0..self.events)
            .filter(|id| id.is_multiple_of(FAIL_EVERY))
            .map(value_of)
            .collect();
        let mut duplicates: Vec<&str> = values.clone();
        duplicates.sort_unstable();
        let before = duplicates.len();
        duplicates.dedup();
        assert_eq!(
            before,
            duplicates.len(),
            "{} events were dead-lettered twice after {landed} kills",
            before - duplicates.len()
        );
        assert_eq!(values, expected_dead, "every failed event once, in order");
        for letter in &letters {
            assert_eq!(letter["headers"]["plumber-dead-letter-step"], "faulty");
            assert_eq!(letter["headers"]["plumber-dead-letter-reason"], "error");
        }
    }
}

fn kills() -> u64 {
    env_or("PLUMBER_CRASH_KILLS", 3)
}

fn seed(salt: u64) -> u64 {
    env_or("PLUMBER_CRASH_SEED", 0xdead) ^ salt
}

#[test]
fn a_lines_dead_letters_are_exactly_once_across_sigkills() {
    let scenario = Scenario::new(false);
    let landed = scenario.run_with_kills(kills(), seed(1));
    scenario.check(landed);
}

#[test]
fn a_graphs_dead_letters_are_exactly_once_across_sigkills() {
    let scenario = Scenario::new(true);
    let landed = scenario.run_with_kills(kills(), seed(2));
    scenario.check(landed);
}
