//! The console's pipeline page marks each stage with its kind (window,
//! join, router, WASM pipe) and, in a graph, the outputs it reads: a real
//! `plumber run` of a graph with a router, a window and a join, read
//! through the console's JSON and its server-rendered page.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plumber_tests as harness;
use serde_json::{json, Value};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The JSON the console answers at `url`.
async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graphs_stages_show_their_kind_and_inputs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["bids", "people"] {
        std::fs::write(dir.path().join(format!("{name}.jsonl")), "").unwrap();
    }
    let config = json!({
        "name": "g",
        "state": {"type": "memory"},
        "sources": {
            "bids": {"type": "file", "path": "bids.jsonl", "format": "json", "follow_ms": 50},
            "people": {"type": "file", "path": "people.jsonl", "format": "json", "follow_ms": 50}
        },
        "pipeline": [
            {"name": "split", "type": "route", "from": ["bids"],
             "routes": {"big": {"header": "size", "equals": "big"}}, "default": "small"},
            {"name": "upper", "type": "wasm", "module": harness::guest("upper"), "from": ["split.big"]},
            {"name": "per_second", "type": "window", "window": "tumbling", "size_ms": 1000,
             "time": "event", "from": ["split.small"]},
            {"name": "match", "type": "join", "join": "interval", "left": "upper",
             "right": "people", "lower_ms": 10, "upper_ms": 10, "key_by": "key",
             "from": ["upper", "people"]}
        ],
        "sinks": {
            "joined": {"type": "file", "path": "joined.out", "from": ["match"]},
            "windows": {"type": "discard", "from": ["per_second"]}
        }
    });
    std::fs::write(dir.path().join("g.json"), config.to_string()).unwrap();
    let port = harness::free_port();
    let _plumber = Running(
        Command::new(harness::plumber_binary())
            .current_dir(dir.path())
            .arg("--cache-dir")
            .arg(harness::cache_dir())
            .args(["run", "g.json", "--admin"])
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start plumber run"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let ready = harness::wait_until_async(Duration::from_secs(120), || async {
        let Ok(response) = client
            .get(format!("{base}/console/api/pipelines/g"))
            .send()
            .await
        else {
            return false;
        };
        if response.status() != 200 {
            return false;
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        body["stages"].as_array().is_some_and(|s| s.len() == 4)
    })
    .await;
    assert!(ready, "the console never listed the graph's four stages");
    let detail = get_json(&client, &format!("{base}/console/api/pipelines/g")).await;
    let stages: Vec<(String, String, Vec<String>)> = detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| {
            let inputs = stage["inputs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|input| input.as_str().unwrap().to_owned())
                .collect();
            (
                stage["name"].as_str().unwrap().to_owned(),
                stage["kind"].as_str().unwrap().to_owned(),
                inputs,
            )
        })
        .collect();
    let expected = [
        ("split", "route", vec!["bids"]),
        ("upper", "wasm", vec!["split.big"]),
        ("per_second", "window", vec!["split.small"]),
        ("match", "join", vec!["upper", "people"]),
    ];
    for (name, kind, inputs) in expected {
        let stage = stages
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no stage {name}: {detail}"));
        assert_eq!(stage.1, kind, "{name}: {detail}");
        assert_eq!(stage.2, inputs, "{name}: {detail}");
    }
    // The server-rendered page says the same.
    let page = client
        .get(format!("{base}/console/pipelines/g"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(
            "<li class=\"node node-join\" data-stage=\"match\"><span class=\"node-name\">match</span>\
             <span class=\"node-kind\">join</span><span class=\"node-from\">from upper, people</span>"
        ),
        "{page}"
    );
    assert!(
        page.contains("<span class=\"node-kind\">window</span>"),
        "{page}"
    );

    // The server samples the rates for the sparklines whether or not a
    // page is open: with 150 bids in, the overview's rates of the last
    // minutes (one figure per 2 s sample) show them.
    let bids: String = (0..150)
        .map(|i| format!("{{\"value\": \"bid {i}\", \"key\": \"k{i}\", \"timestamp\": {i}}}\n"))
        .collect();
    std::fs::write(dir.path().join("bids.jsonl"), bids).unwrap();
    let sampled = harness::wait_until_async(Duration::from_secs(60), || async {
        let overview = get_json(&client, &format!("{base}/console/api/overview")).await;
        let pipeline = &overview["pipelines"][0];
        let rates = pipeline["rates_in"].as_array().cloned().unwrap_or_default();
        pipeline["events_in"] == 150
            && rates.len() >= 2
            && rates.iter().any(|rate| rate.as_u64().unwrap() > 0)
    })
    .await;
    assert!(sampled, "the overview's rates never showed the 150 bids");
}
