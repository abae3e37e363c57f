//! Graphs (docs/graphs.md): the config's checks with their JSON paths; two
//! file sources through a router, a pipe and fan-out into file sinks,
//! against an expectation computed here; and a graph with two sources, a
//! stateful guest reading both and two sinks, SIGKILLed repeatedly, with
//! exactly-once output and state.
//!
//! `PLUMBER_CRASH_KILLS` (default 3), `PLUMBER_CRASH_EVENTS` (default
//! 40 000) and `PLUMBER_CRASH_SEED` tune the crash test as in crash.rs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::kills::{self, Lcg};
use plumber::config::{standard_registry, ConfigError, PipelineConfig};
use plumber_tests as harness;
use serde_json::{json, Value};

/// Reads `config` as `plumber run` does: the JSON path and message of its error.
fn refusal(config: &Value) -> (String, String) {
    let registry = standard_registry();
    match PipelineConfig::parse_with(
        &registry,
        &config.to_string(),
        "graph.json",
        Path::new("/graphs-test"),
    ) {
        Ok(_) => panic!("accepted: {config}"),
        Err(ConfigError::Invalid { path, message, .. }) => (path, message),
        Err(other) => panic!("{other}"),
    }
}

/// A valid graph: two sources, a step reading both, a router, three sinks.
fn graph() -> Value {
    json!({
        "name": "g",
        "state": {"type": "memory"},
        "sources": {
            "bids": {"type": "array", "values": ["1"]},
            "auctions": {"type": "array", "values": ["2"]}
        },
        "pipeline": [
            {"name": "count", "type": "wasm", "module": "count.wasm", "from": ["bids", "auctions"]},
            {"name": "split", "type": "route", "from": ["count"],
             "routes": {"big": {"header": "size", "equals": "big"}}, "default": "rest"}
        ],
        "sinks": {
            "archive": {"type": "discard", "from": ["count"]},
            "alerts": {"type": "discard", "from": ["split.big"]},
            "others": {"type": "discard", "from": ["split.rest"]}
        }
    })
}

#[test]
fn a_graph_config_is_read() {
    let registry = standard_registry();
    let config = PipelineConfig::parse_with(
        &registry,
        &graph().to_string(),
        "graph.json",
        Path::new("/graphs-test"),
    )
    .unwrap();
    let graph = config.graph.expect("a graph");
    assert!(config.from.is_none() && config.to.is_none());
    assert_eq!(
        graph
            .sources
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["auctions", "bids"]
    );
    assert_eq!(graph.inputs, [vec!["bids", "auctions"], vec!["count"]]);
    assert_eq!(graph.sinks.len(), 3);
}

#[test]
fn unknown_inputs_are_refused_with_their_paths() {
    let mut config = graph();
    config["sinks"]["alerts"]["from"] = json!(["bidz"]);
    let (path, message) = refusal(&config);
    assert_eq!(path, "sinks.alerts.from[0]");
    assert!(
        message.contains("unknown input `bidz`; known: `auctions`, `bids`, `count`"),
        "{message}"
    );

    let mut config = graph();
    config["pipeline"][1]["from"] = json!(["count", "nothing"]);
    let (path, message) = refusal(&config);
    assert_eq!(path, "pipeline[1].from[1]");
    assert!(message.contains("unknown input `nothing`"), "{message}");

    // A router is read by its routes.
    let mut config = graph();
    config["sinks"]["alerts"]["from"] = json!(["split"]);
    let (path, message) = refusal(&config);
    assert_eq!(path, "sinks.alerts.from[0]");
    assert!(message.contains("`split.<route>`"), "{message}");
}

#[test]
fn cycles_are_refused_with_their_paths() {
    let mut config = graph();
    config["pipeline"] = json!([
        {"name": "a", "type": "wasm", "module": "a.wasm", "from": ["bids", "c"]},
        {"name": "b", "type": "wasm", "module": "b.wasm", "from": ["a", "auctions"]},
        {"name": "c", "type": "wasm", "module": "c.wasm", "from": ["b"]}
    ]);
    config["sinks"] = json!({"out": {"type": "discard", "from": ["c"]}});
    let (path, message) = refusal(&config);
    assert!(
        [
            "pipeline[0].from[1]",
            "pipeline[1].from[0]",
            "pipeline[2].from[0]"
        ]
        .contains(&path.as_str()),
        "{path}: {message}"
    );
    assert!(message.contains("a cycle"), "{message}");
    assert!(
        message.contains("`a` → `b` → `c`")
            || message.contains("`b` → `c` → `a`")
            || message.contains("`c` → `a` → `b`"),
        "{message}"
    );
}

#[test]
fn dangling_outputs_are_refused_with_their_paths() {
    // A step nobody reads.
    let mut config = graph();
    config["sinks"]["archive"]["from"] = json!(["bids"]);
    config["pipeline"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "idle", "type": "wasm", "module": "i.wasm", "from": ["bids"]}));
    let (path, message) = refusal(&config);
    assert_eq!(path, "pipeline[2].name");
    assert!(
        message.contains("the output of `idle` is read by no step or sink"),
        "{message}"
    );

    // A route nobody reads.
    let mut config = graph();
    config["sinks"].as_object_mut().unwrap().remove("others");
    let (path, message) = refusal(&config);
    assert_eq!(path, "pipeline[1].default");
    assert!(message.contains("route `split.rest`"), "{message}");
    let mut config = graph();
    config["sinks"].as_object_mut().unwrap().remove("alerts");
    assert_eq!(refusal(&config).0, "pipeline[1].routes.big");

    // A source nobody reads.
    let mut config = graph();
    config["sources"]["spare"] = json!({"type": "array", "values": ["x"]});
    let (path, message) = refusal(&config);
    assert_eq!(path, "sources.spare");
    assert!(
        message.contains("source `spare` is read by no step or sink"),
        "{message}"
    );
}

#[test]
fn a_line_and_a_graph_do_not_mix() {
    let mut config = graph();
    config["from"] = json!({"type": "array", "values": ["x"]});
    assert_eq!(refusal(&config).0, "sources");
    let mut config = graph();
    config["to"] = json!({"type": "discard"});
    assert_eq!(refusal(&config).0, "sinks");

    // A graph's step names its inputs; a line's does not.
    let mut config = graph();
    config["pipeline"][0]
        .as_object_mut()
        .unwrap()
        .remove("from");
    let (path, message) = refusal(&config);
    assert_eq!(path, "pipeline[0].from");
    assert!(message.contains("missing field `from`"), "{message}");
    let mut config = graph();
    config["sinks"]["archive"]
        .as_object_mut()
        .unwrap()
        .remove("from");
    assert_eq!(refusal(&config).0, "sinks.archive.from");
    let line = json!({
        "name": "l",
        "state": {"type": "memory"},
        "from": {"type": "array", "values": ["x"]},
        "pipeline": [{"name": "p", "type": "wasm", "module": "p.wasm", "from": ["x"]}],
        "to": {"type": "discard"}
    });
    assert_eq!(refusal(&line).0, "pipeline[0].from");
    let mut line = line;
    line["pipeline"] = json!([{"name": "r", "type": "route", "routes": {"a": {"key": "a"}}}]);
    assert_eq!(refusal(&line).0, "pipeline[0].type");

    // What a graph does not run with.
    let mut config = graph();
    config["delivery"] = json!("at_most_once");
    assert_eq!(refusal(&config).0, "delivery");
    let mut config = graph();
    config["publish"] = json!("after_commit");
    assert_eq!(refusal(&config).0, "publish");

    // A route's predicate is one of its kinds; `from` is a list of names.
    let mut config = graph();
    config["pipeline"][1]["routes"]["big"] = json!({"equals": "big"});
    assert_eq!(refusal(&config).0, "pipeline[1].routes.big");
    let mut config = graph();
    config["pipeline"][0]["from"] = json!(["bids", 7]);
    assert_eq!(refusal(&config).0, "pipeline[0].from[1]");
}

/// Runs `plumber run config` to its end.
fn run(config: &Path) {
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("plumber run");
    assert!(
        output.status.success(),
        "plumber run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn sorted_lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Two JSON-lines file sources into a router (routing by a header of the
/// events, and by the union's `plumber-input` header), one route through
/// a WASM pipe, and file sinks; one sink reads both sources directly
/// (fan-out of a source). Every sink's output is compared with what this
/// test computes from the inputs.
#[test]
fn union_routing_and_fan_out_give_the_expected_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = |n: u64| if n.is_multiple_of(3) { "big" } else { "small" };
    let write_source = |name: &str, count: u64| {
        let lines: String = (0..count)
            .map(|n| {
                format!(
                    "{}\n",
                    json!({"value": format!("{name}{n}"), "headers": {"size": sizes(n)}})
                )
            })
            .collect();
        let path = dir.path().join(format!("{name}.jsonl"));
        std::fs::write(&path, lines).unwrap();
        path
    };
    let (a_count, b_count) = (500u64, 333u64);
    let a = write_source("a", a_count);
    let b = write_source("b", b_count);
    let out = |name: &str| dir.path().join(format!("{name}.txt"));
    let config = json!({
        "name": "routing",
        "state": {"type": "sled", "path": dir.path().join("state")},
        "batch_size": 16,
        "sources": {
            "a": {"type": "file", "path": a, "format": "json"},
            "b": {"type": "file", "path": b, "format": "json"}
        },
        "pipeline": [
            {"name": "split", "type": "route", "from": ["a", "b"],
             "routes": {
                 "big": {"header": "size", "equals": "big"},
                 "from_b": {"header": "plumber-input", "equals": "b"}
             },
             "default": "rest"},
            {"name": "upper", "type": "wasm", "module": harness::guest("upper"), "from": ["split.big"]}
        ],
        "sinks": {
            "big": {"type": "file", "path": out("big"), "from": ["upper"]},
            "from_b": {"type": "file", "path": out("from_b"), "from": ["split.from_b"]},
            "rest": {"type": "file", "path": out("rest"), "from": ["split.rest"]},
            "all": {"type": "file", "path": out("all"), "from": ["a", "b"]}
        }
    });
    let path = dir.path().join("routing.json");
    std::fs::write(&path, config.to_string()).unwrap();
    run(&path);

    // The reference, from the inputs alone.
    let events: Vec<(String, u64, &str)> = (0..a_count)
        .map(|n| ("a".to_owned(), n, "a"))
        .chain((0..b_count).map(|n| ("b".to_owned(), n, "b")))
        .map(|(name, n, source)| (format!("{name}{n}"), n, source))
        .collect();
    let expect = |keep: &dyn Fn(u64, &str) -> bool, map: &dyn Fn(&str) -> String| {
        let mut lines: Vec<String> = events
            .iter()
            .filter(|(_, n, source)| keep(*n, source))
            .map(|(value, _, _)| map(value))
            .collect();
        lines.sort();
        lines
    };
    let same = |value: &str| value.to_owned();
    let big = |n: u64| sizes(n) == "big";
    assert_eq!(
        sorted_lines(&out("big")),
        expect(&|n, _| big(n), &|value| value.to_uppercase())
    );
    assert_eq!(
        sorted_lines(&out("from_b")),
        expect(&|_, source| source == "b", &same)
    );
    // The default route: what matched neither route.
    assert_eq!(
        sorted_lines(&out("rest")),
        expect(&|n, source| !big(n) && source != "b", &same)
    );
    assert_eq!(sorted_lines(&out("all")), expect(&|_, _| true, &same));
    // And each source's events keep their order in the union.
    let all = std::fs::read_to_string(out("all")).unwrap();
    for (name, count) in [("a", a_count), ("b", b_count)] {
        let order: Vec<String> = all
            .lines()
            .filter(|line| line.starts_with(name))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = (0..count).map(|n| format!("{name}{n}")).collect();
        assert_eq!(order, expected, "the order of `{name}`");
    }
}

const KEYS: u64 = 7;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The crash graph: ids 0..N split over two file sources (evens and odds),
/// the key-counter guest reading both (state: a counter per `id % 7`), its
/// output fanned out to two file sinks, and a third sink copying the odds
/// source as it is.
struct CrashGraph {
    dir: tempfile::TempDir,
    config: PathBuf,
    events: u64,
}

impl CrashGraph {
    fn new(delivery: &str, state: impl Fn(&Path) -> Value) -> Self {
        Self::with_odds(
            delivery,
            state,
            None,
            env_or("PLUMBER_CRASH_EVENTS", 40_000),
        )
    }

    /// As [`CrashGraph::new`], with the odd ids read from `odds` (a source
    /// section that already holds them) instead of a file, and `events` ids.
    fn with_odds(
        delivery: &str,
        state: impl Fn(&Path) -> Value,
        odds: Option<Value>,
        events: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, parity: u64| {
            let ids: String = (0..events)
                .filter(|id| id % 2 == parity)
                .map(|id| format!("{id}\n"))
                .collect();
            let path = dir.path().join(name);
            std::fs::write(&path, ids).unwrap();
            path
        };
        let evens = write("evens.txt", 0);
        let odds = odds.unwrap_or_else(|| json!({"type": "file", "path": write("odds.txt", 1)}));
        let config = json!({
            "name": "crash-graph",
            "delivery": delivery,
            "state": state(dir.path()),
            "checkpoint": { "interval_ms": 25 },
            "batch_size": 20,
            "sources": {
                "evens": {"type": "file", "path": evens},
                "odds": odds
            },
            "pipeline": [
                { "name": "counter", "type": "wasm", "module": harness::guest("key-counter"),
                  "config": { "keys": KEYS }, "from": ["evens", "odds"] }
            ],
            "sinks": {
                "all": {"type": "file", "path": dir.path().join("all.txt"), "from": ["counter"]},
                "copy": {"type": "file", "path": dir.path().join("copy.txt"), "from": ["counter"]},
                "odds": {"type": "file", "path": dir.path().join("odds-out.txt"), "from": ["odds"]}
            }
        });
        let path = dir.path().join("crash-graph.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        CrashGraph {
            dir,
            config: path,
            events,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self) -> Command {
        harness::kills::plumber_run(&self.config)
    }

    /// Bytes of the counter's complete output (every id once).
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

    /// Kills `plumber run` `kills` times, each when the `all` sink has
    /// grown by a random 3-25% of its full length, then runs it to the end.
    /// Returns how many kills hit a running process.
    fn run_with_kills(&self, kills: u64, seed: u64) -> u64 {
        let landed = self.kill_runs(kills, seed);
        let output = self.command().output().expect("final run");
        assert!(
            output.status.success(),
            "final run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        landed
    }

    /// With a source that never ends (a stream): after the kills, a run
    /// that is stopped by SIGINT once the `all` sink is complete.
    fn run_with_kills_then_interrupt(&self, kills: u64, seed: u64) -> u64 {
        let landed = self.kill_runs(kills, seed);
        let mut child = self.command().spawn().expect("spawn plumber");
        let full = self.full_output_len();
        let deadline = Instant::now() + Duration::from_secs(120);
        while std::fs::metadata(self.out("all.txt")).map_or(0, |m| m.len()) < full {
            assert!(
                Instant::now() < deadline,
                "the output is incomplete after 120 s"
            );
            assert!(
                child.try_wait().expect("poll").is_none(),
                "plumber stopped before its output was complete"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = i32::try_from(child.id()).expect("a pid");
        // SAFETY: a plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
        let output = child.wait_with_output().expect("wait");
        assert!(
            output.status.success(),
            "the last run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        landed
    }

    /// The kills of [`CrashGraph::run_with_kills`].
    fn kill_runs(&self, kills: u64, seed: u64) -> u64 {
        let mut rng = Lcg(seed);
        let mut landed = 0;
        let full = self.full_output_len();
        let watched = self.out("all.txt");
        for _ in 0..kills {
            let target = kills::file_len(&watched) + full * rng.next_in(3, 25) / 100;
            let extra = Duration::from_millis(rng.next_in(0, 30));
            if kills::kill_once_grown(&mut self.command(), &watched, target, extra) {
                landed += 1;
            }
        }
        landed
    }

    /// A counter sink's lines as (id, key, count).
    fn counted(&self, name: &str) -> Vec<(u64, u64, u64)> {
        std::fs::read_to_string(self.out(name))
            .unwrap_or_default()
            .lines()
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

    /// Checks exactly-once output and state against a reference computed
    /// from the ids alone.
    fn check_exactly_once(&self) {
        let mut truth: BTreeMap<u64, u64> = BTreeMap::new();
        for id in 0..self.events {
            *truth.entry(id % KEYS).or_default() += 1;
        }
        for sink in ["all.txt", "copy.txt"] {
            let output = self.counted(sink);
            let mut seen: HashMap<u64, u32> = HashMap::new();
            for (id, _, _) in &output {
                *seen.entry(*id).or_default() += 1;
            }
            assert_eq!(seen.len() as u64, self.events, "{sink}: ids missing");
            assert!(seen.values().all(|n| *n == 1), "{sink}: an id twice");
            // Each key's counts run 1..n in order: no effect lost or repeated.
            let mut last: HashMap<u64, u64> = HashMap::new();
            for (id, key, count) in &output {
                assert_eq!(*key, id % KEYS, "{sink}");
                let previous = last.insert(*key, *count).unwrap_or(0);
                assert_eq!(
                    *count,
                    previous + 1,
                    "{sink}: key {key}: {count} after {previous}"
                );
            }
            assert_eq!(
                last.into_iter().collect::<BTreeMap<_, _>>(),
                truth,
                "{sink}: final counts"
            );
        }
        // Fan-out: both sinks got the very same sequence.
        assert_eq!(self.counted("all.txt"), self.counted("copy.txt"));
        // The source copied as it is: every odd id once, in order.
        let odds: Vec<u64> = std::fs::read_to_string(self.out("odds-out.txt"))
            .unwrap()
            .lines()
            .map(|line| line.parse().expect("an id"))
            .collect();
        let expected: Vec<u64> = (0..self.events).filter(|id| id % 2 == 1).collect();
        assert_eq!(odds, expected, "the odds sink");
        assert_eq!(self.state(), truth, "the committed state");
    }
}

fn kills() -> u64 {
    env_or("PLUMBER_CRASH_KILLS", 3)
}

fn seed(salt: u64) -> u64 {
    env_or("PLUMBER_CRASH_SEED", 20261207) ^ salt
}

#[test]
fn a_graph_on_sled_is_exactly_once_under_sigkill() {
    let graph = CrashGraph::new(
        "exactly_once",
        |dir| json!({"type": "sled", "path": dir.join("state")}),
    );
    let landed = graph.run_with_kills(kills(), seed(1));
    assert!(landed > 0, "no kill landed while the graph was running");
    graph.check_exactly_once();
}

#[test]
fn a_graph_on_redis_is_exactly_once_under_sigkill() {
    let server = harness::RedisServer::start();
    let graph = CrashGraph::new(
        "exactly_once",
        |_| json!({"type": "redis", "url": server.url(), "reconnect_timeout_ms": 5000}),
    );
    let landed = graph.run_with_kills(kills(), seed(2));
    assert!(landed > 0, "no kill landed while the graph was running");
    graph.check_exactly_once();
}

/// `examples/graph.json` (what `examples/run.sh graph` runs) gives what its
/// data says: the big bids of both files upper-cased, and every bid.
#[test]
fn the_graph_example_runs() {
    let examples = harness::workspace_root().join("examples");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(examples.join("graph.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    config["state"]["path"] = json!(dir.path().join("state"));
    config["pipeline"][1]["module"] = json!(harness::guest("upper"));
    for (name, source) in config["sources"].as_object_mut().unwrap() {
        let path = examples.join(source["path"].as_str().unwrap());
        assert!(path.exists(), "source `{name}`: {}", path.display());
        source["path"] = json!(path);
    }
    config["sinks"]["alerts"]["path"] = json!(dir.path().join("alerts.out"));
    config["sinks"]["archive"]["path"] = json!(dir.path().join("archive.out"));
    let path = dir.path().join("graph.json");
    std::fs::write(&path, config.to_string()).unwrap();
    run(&path);

    let mut values = Vec::new();
    let mut big = Vec::new();
    for file in ["bids-eu.jsonl", "bids-us.jsonl"] {
        let text = std::fs::read_to_string(examples.join("data").join(file)).unwrap();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line).unwrap();
            let value = event["value"].as_str().unwrap().to_owned();
            if event["headers"]["size"] == "big" {
                big.push(value.to_uppercase());
            }
            values.push(value);
        }
    }
    values.sort();
    big.sort();
    assert!(!big.is_empty() && big.len() < values.len());
    assert_eq!(sorted_lines(&dir.path().join("alerts.out")), big);
    assert_eq!(sorted_lines(&dir.path().join("archive.out")), values);
}

/// At-least-once: after the kills nothing is lost (every id is in both
/// counter sinks, every odd id in the copy) and no counter is below the
/// truth; effects may repeat.
#[test]
fn a_graph_at_least_once_loses_nothing_under_sigkill() {
    let graph = CrashGraph::new(
        "at_least_once",
        |dir| json!({"type": "sled", "path": dir.join("state")}),
    );
    let landed = graph.run_with_kills(kills(), seed(3));
    assert!(landed > 0, "no kill landed while the graph was running");
    for sink in ["all.txt", "copy.txt"] {
        let ids: std::collections::HashSet<u64> =
            graph.counted(sink).iter().map(|(id, _, _)| *id).collect();
        assert_eq!(ids.len() as u64, graph.events, "{sink}: an id is missing");
    }
    let odds: std::collections::HashSet<u64> = std::fs::read_to_string(graph.out("odds-out.txt"))
        .unwrap()
        .lines()
        .map(|line| line.parse().expect("an id"))
        .collect();
    assert_eq!(
        odds.len() as u64,
        graph.events / 2,
        "the odds sink lost an id"
    );
    let mut truth: BTreeMap<u64, u64> = BTreeMap::new();
    for id in 0..graph.events {
        *truth.entry(id % KEYS).or_default() += 1;
    }
    for (key, count) in graph.state() {
        assert!(
            count >= truth[&key],
            "key {key}: {count} < {}: an effect was lost",
            truth[&key]
        );
    }
}

#[test]
fn a_graph_on_a_memory_snapshot_is_exactly_once_under_sigkill() {
    let graph = CrashGraph::new(
        "exactly_once",
        |dir| json!({"type": "memory", "snapshot": dir.join("state.snap")}),
    );
    let landed = graph.run_with_kills(kills(), seed(4));
    assert!(landed > 0, "no kill landed while the graph was running");
    graph.check_exactly_once();
}

/// The odd ids from a JetStream stream, the even ones from a file: each
/// source checkpointed at its own position (the stream's consumer acked at
/// each commit), SIGKILLed repeatedly, exactly-once output and state.
#[test]
fn a_graph_of_a_file_and_a_jetstream_stream_is_exactly_once_under_sigkill() {
    let server = harness::NatsServer::start();
    let events = env_or("PLUMBER_CRASH_EVENTS", 40_000) / 2;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(server.url()).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "ODDS".to_owned(),
            subjects: vec!["odds".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create the stream");
        for id in (0..events).filter(|id| id % 2 == 1) {
            js.publish("odds", id.to_string().into())
                .await
                .expect("publish")
                .await
                .expect("publish ack");
        }
    });
    let odds = json!({"type": "jetstream", "url": server.url(), "stream": "ODDS",
                      "consumer": "graph", "ack_wait_ms": 10000});
    let graph = CrashGraph::with_odds(
        "exactly_once",
        |dir| json!({"type": "sled", "path": dir.join("state")}),
        Some(odds),
        events,
    );
    let landed = graph.run_with_kills_then_interrupt(kills(), seed(5));
    assert!(landed > 0, "no kill landed while the graph was running");
    graph.check_exactly_once();
}

/// A WASM pipe sets the header a router reads: the `probe` guest marks the
/// events of one source (`probe: seen`), the router sends the marked ones
/// to one sink and the rest (the other source's) to another.
#[test]
fn a_wasm_pipe_sets_the_header_a_router_reads() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, count: u64| {
        let lines: String = (0..count).map(|n| format!("{name}{n}\n")).collect();
        let path = dir.path().join(format!("{name}.txt"));
        std::fs::write(&path, lines).unwrap();
        path
    };
    let (a, b) = (write("a", 200), write("b", 150));
    let out = |name: &str| dir.path().join(format!("{name}.out"));
    let config = json!({
        "name": "marks",
        "state": {"type": "sled", "path": dir.path().join("state")},
        "batch_size": 32,
        "sources": {
            "a": {"type": "file", "path": a},
            "b": {"type": "file", "path": b}
        },
        "pipeline": [
            {"name": "mark", "type": "wasm", "module": harness::guest("probe"),
             "config": {"mode": "trap_on", "value": "no such value"}, "from": ["a"]},
            {"name": "split", "type": "route", "from": ["mark", "b"],
             "routes": {"seen": {"header": "probe", "equals": "seen"}}, "default": "unseen"}
        ],
        "sinks": {
            "seen": {"type": "file", "path": out("seen"), "from": ["split.seen"]},
            "unseen": {"type": "file", "path": out("unseen"), "from": ["split.unseen"]}
        }
    });
    let path = dir.path().join("marks.json");
    std::fs::write(&path, config.to_string()).unwrap();
    run(&path);
    let expected = |name: &str, count: u64| {
        let mut lines: Vec<String> = (0..count).map(|n| format!("{name}{n}")).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted_lines(&out("seen")), expected("a", 200));
    assert_eq!(sorted_lines(&out("unseen")), expected("b", 150));
}
