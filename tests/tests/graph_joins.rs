//! A join inside a graph, end to end: two file sources (`bids`, `auctions`)
//! read by a windowed join step (`"from": ["bids", "auctions"]`), the join
//! feeding the real `window-count` guest, the guest's output fanned out to
//! two file sinks and the `bids` source copied to a third. `plumber run` is
//! killed with SIGKILL several times mid-stream and restarted; every sink's
//! output must equal a reference computed here from the generated input
//! by nested loops (exactly-once), for an inner and a left join. Also: a join's `left`/`right` must name
//! one of the step's inputs, refused at config time with the JSON path.

use harness::kills::{self, Lcg};
use plumber_tests as harness;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

const KEYS: u64 = 5;
const SIZE_MS: u64 = 1_000;
const DISORDER_MS: u64 = 300;
const LAG_MS: u64 = 400;
const BASE_MS: u64 = 1_800_000_000_000;

/// One generated event of one source.
#[derive(Clone, Debug)]
struct Generated {
    key: String,
    ts: u64,
    value: String,
    /// Far behind its source's time: late under some interleavings of the
    /// two sources (which one the union reads first is not fixed), never
    /// under others. Every other event is at most `DISORDER_MS` behind the
    /// highest timestamp before it in its own file, so it is never late.
    maybe_late: bool,
}

/// `count` events of one source, 10 ms apart (`lag_ms` behind the base),
/// up to `DISORDER_MS` out of order, and one in forty (after the first
/// hundred) five windows behind.
fn generate(name: &str, count: u64, lag_ms: u64, seed: u64) -> Vec<Generated> {
    let mut rng = Lcg(seed);
    (0..count)
        .map(|n| {
            let now = BASE_MS + 10 * n - lag_ms;
            let maybe_late = n > 100 && rng.next_in(0, 40) == 0;
            let ts = if maybe_late {
                now - 5 * SIZE_MS
            } else {
                now - rng.next_in(0, DISORDER_MS + 1)
            };
            Generated {
                key: format!("k{}", rng.next_in(0, KEYS)),
                ts,
                value: format!("{name}-{n}"),
                maybe_late,
            }
        })
        .collect()
}

fn window_of(ts: u64) -> u64 {
    ts - ts % SIZE_MS
}

/// The lines `window-count` writes for the join's output, by nested loops:
/// an event (not in `late`) is released iff an event of the other side
/// (not in `late`) has its key and its tumbling window, or, with `how` =
/// `"left"`, if it is a bid; `window-count` writes one line per value
/// (each value is unique, so its count is 1).
fn expected_pairs(
    how: &str,
    bids: &[Generated],
    auctions: &[Generated],
    late: &BTreeSet<String>,
) -> Vec<String> {
    let on_time = |e: &&Generated| !late.contains(&e.value);
    let mut released = BTreeSet::new();
    for bid in bids.iter().filter(on_time) {
        if how == "left" {
            released.insert((window_of(bid.ts), bid.value.clone()));
        }
        for auction in auctions.iter().filter(on_time) {
            if bid.key == auction.key && window_of(bid.ts) == window_of(auction.ts) {
                released.insert((window_of(bid.ts), bid.value.clone()));
                released.insert((window_of(auction.ts), auction.value.clone()));
            }
        }
    }
    let mut lines: Vec<String> = released
        .into_iter()
        .map(|(start, value)| format!("{start}-{}\t{value}\t1", start + SIZE_MS))
        .collect();
    lines.sort();
    lines
}

/// Whether `event` (the `index`th of its file `own`) can have met a
/// watermark at or past its window's end: the join's watermark when it is
/// read is at most the least of the highest timestamp read before it in
/// its own file and the highest of the other file, less `DISORDER_MS`.
fn could_be_late(own: &[Generated], index: usize, other: &[Generated]) -> bool {
    let own_high = own[..index].iter().map(|e| e.ts).max().unwrap_or(0);
    let other_high = other.iter().map(|e| e.ts).max().unwrap_or(0);
    let ceiling = own_high.min(other_high).saturating_sub(DISORDER_MS);
    window_of(own[index].ts) + SIZE_MS <= ceiling
}

struct JoinGraph {
    dir: tempfile::TempDir,
    config: PathBuf,
    bids: Vec<Generated>,
    auctions: Vec<Generated>,
}

impl JoinGraph {
    fn new(how: &str, per_source: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bids = generate("bid", per_source, 0, 0x5eed_0001);
        let auctions = generate("auction", per_source, LAG_MS, 0x5eed_0002);
        let write = |name: &str, events: &[Generated]| {
            let lines: String = events
                .iter()
                .map(|e| {
                    let event = json!({"value": e.value, "key": e.key, "timestamp": e.ts});
                    format!("{event}\n")
                })
                .collect();
            let path = dir.path().join(name);
            std::fs::write(&path, lines).unwrap();
            path
        };
        let config = json!({
            "name": "graph-join",
            "delivery": "exactly_once",
            "state": {"type": "sled", "path": dir.path().join("state")},
            "checkpoint": {"interval_ms": 25},
            "batch_size": 20,
            "sources": {
                "bids": {"type": "file", "path": write("bids.jsonl", &bids), "format": "json"},
                "auctions": {"type": "file", "path": write("auctions.jsonl", &auctions),
                             "format": "json"}
            },
            "pipeline": [
                {"name": "bids-auctions", "type": "join", "join": "window", "left": "bids",
                 "right": "auctions", "window": "tumbling", "size_ms": SIZE_MS,
                 "key_by": "key", "how": how, "max_out_of_orderness_ms": DISORDER_MS,
                 "max_buffered_events": 100_000, "late": "dead_letter",
                 "from": ["bids", "auctions"]},
                {"name": "count", "type": "wasm", "module": harness::guest("window-count"),
                 "from": ["bids-auctions"]}
            ],
            "sinks": {
                "pairs": {"type": "file", "path": dir.path().join("pairs.txt"), "from": ["count"]},
                "pairs-copy": {"type": "file", "path": dir.path().join("pairs-copy.txt"),
                               "from": ["count"]},
                "bids-copy": {"type": "file", "path": dir.path().join("bids-copy.txt"),
                              "from": ["bids"]}
            },
            "dead_letter": {"type": "file", "path": dir.path().join("late.txt")}
        });
        let path = dir.path().join("graph-join.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        JoinGraph {
            dir,
            config: path,
            bids,
            auctions,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.out(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn command(&self) -> Command {
        harness::kills::plumber_run(&self.config)
    }

    /// Kills `plumber run` `kills` times, each once the `pairs` sink has
    /// grown by a random 3-25% of `full` bytes (plus a random few ms, so
    /// kills land in checkpoints too), then runs it to the end. Returns the
    /// kills that hit a running process.
    fn run_with_kills(&self, kills: u64, full: u64, seed: u64) -> u64 {
        let mut rng = Lcg(seed);
        let watched = self.out("pairs.txt");
        let mut landed = 0;
        for _ in 0..kills {
            let target = kills::file_len(&watched) + full * rng.next_in(3, 25) / 100;
            let extra = Duration::from_millis(rng.next_in(0, 30));
            if kills::kill_once_grown(&mut self.command(), &watched, target, extra) {
                landed += 1;
            }
        }
        let output = self.command().output().expect("the last run");
        assert!(
            output.status.success(),
            "the last run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        landed
    }
}

#[test]
fn a_join_in_a_graph_killed_and_restarted_gives_exactly_the_reference_outputs() {
    check_killed_and_restarted("inner", 20261207);
}

#[test]
fn a_left_join_in_a_graph_killed_and_restarted_gives_exactly_the_reference_outputs() {
    check_killed_and_restarted("left", 20261208);
}

/// A windowed join (`how`) in the crash graph, killed `PLUMBER_CRASH_KILLS`
/// (4) times; every sink against the reference.
fn check_killed_and_restarted(how: &str, seed: u64) {
    let kills = std::env::var("PLUMBER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let graph = JoinGraph::new(how, 8_000);
    let everyone_on_time = expected_pairs(how, &graph.bids, &graph.auctions, &BTreeSet::new());
    assert!(everyone_on_time.len() > 8_000, "{}", everyone_on_time.len());
    let full: u64 = everyone_on_time.iter().map(|l| l.len() as u64 + 1).sum();
    let landed = graph.run_with_kills(kills, full, seed);
    assert!(
        landed > 0,
        "no kill landed while the graph was running: the test proved nothing"
    );

    // The late events, as the join sent them to the dead-letter sink: each
    // once, and each one that could be late (never an on-time one).
    // The dead-letter sink writes each event as JSON, with its headers.
    let late_values: Vec<String> = graph
        .lines("late.txt")
        .iter()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("a dead letter in JSON");
            let input = event["headers"]["plumber-input"]
                .as_str()
                .expect("its input");
            assert_eq!(
                event["headers"]["plumber-dead-letter-reason"],
                format!("late event of input `{input}`"),
                "{line}"
            );
            event["value"].as_str().expect("its value").to_owned()
        })
        .collect();
    let dead_lettered: BTreeSet<String> = late_values.iter().cloned().collect();
    // The dead-letter sink's position is in each checkpoint and what it
    // wrote after it is taken back on a restart, as for the join's output:
    // an event dead-lettered in an epoch a kill lost is gone, and after the
    // restart it may be read in another interleaving and joined. So each
    // late event is dead-lettered once, and none is also joined.
    assert_eq!(
        late_values.len(),
        dead_lettered.len(),
        "an event was dead-lettered twice"
    );
    let joined: BTreeSet<String> = graph
        .lines("pairs.txt")
        .iter()
        .filter_map(|line| line.split('\t').nth(1).map(str::to_owned))
        .collect();
    let both: Vec<&String> = dead_lettered.intersection(&joined).collect();
    assert!(
        both.is_empty(),
        "dead-lettered as late and joined: {both:?}"
    );
    let late = dead_lettered;
    for (own, other) in [
        (&graph.bids, &graph.auctions),
        (&graph.auctions, &graph.bids),
    ] {
        for (index, event) in own.iter().enumerate() {
            if late.contains(&event.value) {
                assert!(
                    event.maybe_late && could_be_late(own, index, other),
                    "`{}` was dead-lettered as late but cannot have been",
                    event.value
                );
            }
        }
    }

    let expected = expected_pairs(how, &graph.bids, &graph.auctions, &late);
    let mut pairs = graph.lines("pairs.txt");
    // Fan-out: both sinks of the guest got the very same sequence.
    assert_eq!(
        pairs,
        graph.lines("pairs-copy.txt"),
        "the fan-out's two sinks"
    );
    pairs.sort();
    let missing: Vec<&String> = expected
        .iter()
        .filter(|l| pairs.binary_search(l).is_err())
        .collect();
    let extra: Vec<&String> = pairs
        .iter()
        .filter(|l| expected.binary_search(l).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} lines missing (first {:?}), {} not expected (first {:?}); {} late; kept in {}",
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(5).collect::<Vec<_>>(),
        late.len(),
        graph.dir.keep().display()
    );
    assert_eq!(pairs.len(), expected.len(), "lines repeated");
    assert_eq!(pairs, expected);
    // The source copied as it is, in its order.
    let bids: Vec<String> = graph.bids.iter().map(|e| e.value.clone()).collect();
    assert_eq!(graph.lines("bids-copy.txt"), bids, "the bids copy");
}

/// A graph config with a join step; `left`/`right` as given.
fn join_graph_config(left: &str, right: &str) -> Value {
    json!({
        "name": "g",
        "state": {"type": "memory"},
        "sources": {
            "bids": {"type": "array", "values": ["a"]},
            "auctions": {"type": "array", "values": ["b"]}
        },
        "pipeline": [
            {"name": "count", "type": "wasm", "module": "c.wasm", "from": ["j"]},
            {"name": "j", "type": "join", "join": "window", "left": left, "right": right,
             "window": "tumbling", "size_ms": 1000, "from": ["bids", "auctions"]}
        ],
        "sinks": {"out": {"type": "discard", "from": ["count"]}}
    })
}

fn parse(config: &Value) -> Result<plumber::config::PipelineConfig, plumber::config::ConfigError> {
    plumber::config::PipelineConfig::parse_with(
        &plumber::config::standard_registry(),
        &config.to_string(),
        "g.json",
        Path::new("/base"),
    )
}

#[test]
fn a_join_in_a_graph_names_its_own_inputs() {
    let accepted = parse(&join_graph_config("bids", "auctions"));
    assert!(accepted.is_ok(), "{:?}", accepted.err());
    for (left, right, path, named) in [
        ("bidz", "auctions", "pipeline[1].left", "bidz"),
        ("bids", "count", "pipeline[1].right", "count"),
    ] {
        match parse(&join_graph_config(left, right)) {
            Err(plumber::config::ConfigError::Invalid {
                path: at, message, ..
            }) => {
                assert_eq!(at, path, "{message}");
                assert!(
                    message.contains(&format!("`{named}` is not one of the step's inputs"))
                        && message.contains("`bids`, `auctions`"),
                    "{message}"
                );
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("`{left}`/`{right}` was accepted"),
        }
    }
}

/// `examples/join.json` (what `examples/run.sh join` runs) gives what its
/// data says: per auction and 10-second window that has both, its bids and
/// auctions (one `window-count` line each), and every bid archived.
#[test]
fn the_join_example_runs() {
    let examples = harness::workspace_root().join("examples");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(examples.join("join.json")).unwrap())
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    config["state"]["path"] = json!(dir.path().join("state"));
    // The example's own module path, which the harness's build makes.
    let module = examples.join(config["pipeline"][1]["module"].as_str().unwrap());
    assert_eq!(
        module,
        harness::guest("window-count"),
        "the example's module"
    );
    config["pipeline"][1]["module"] = json!(module);
    for (name, source) in config["sources"].as_object_mut().unwrap() {
        let path = examples.join(source["path"].as_str().unwrap());
        assert!(path.exists(), "source `{name}`: {}", path.display());
        source["path"] = json!(path);
    }
    config["sinks"]["pairs"]["path"] = json!(dir.path().join("pairs.out"));
    config["sinks"]["archive"]["path"] = json!(dir.path().join("archive.out"));
    let path = dir.path().join("join.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .arg("run")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("plumber run");
    assert!(
        output.status.success(),
        "plumber run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let size = config["pipeline"][0]["size_ms"].as_u64().unwrap();
    let read = |file: &str| -> Vec<(String, String, u64)> {
        std::fs::read_to_string(examples.join("data").join(file))
            .unwrap()
            .lines()
            .map(|line| {
                let event: Value = serde_json::from_str(line).unwrap();
                (
                    event["value"].as_str().unwrap().to_owned(),
                    event["key"].as_str().unwrap().to_owned(),
                    event["timestamp"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let bids = read("join-bids.jsonl");
    let auctions = read("join-auctions.jsonl");
    // The data is in order within 1 s (the join's out-of-orderness): nothing
    // is late, so every bid and auction of a window with both is released.
    let mut expected = BTreeSet::new();
    for (bid, bid_key, bid_ts) in &bids {
        for (auction, auction_key, auction_ts) in &auctions {
            let start = bid_ts - bid_ts % size;
            if bid_key == auction_key && start == auction_ts - auction_ts % size {
                expected.insert(format!("{start}-{}\t{bid}\t1", start + size));
                expected.insert(format!("{start}-{}\t{auction}\t1", start + size));
            }
        }
    }
    let expected: Vec<String> = expected.into_iter().collect();
    assert!(
        expected.len() > 4,
        "the example joins too little: {expected:?}"
    );
    assert!(expected.len() < bids.len() + auctions.len());
    let mut pairs: Vec<String> = std::fs::read_to_string(dir.path().join("pairs.out"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    pairs.sort();
    assert_eq!(pairs, expected);
    let archive: Vec<String> = std::fs::read_to_string(dir.path().join("archive.out"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let values: Vec<String> = bids.into_iter().map(|(value, _, _)| value).collect();
    assert_eq!(archive, values);
}
