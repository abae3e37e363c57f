//! The `wordcount` scenarios of `plumber bench` compare like with like: on a
//! small input the WASM pipelines write exactly what their native twins
//! write, and the counts are those of the generated text.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use plumber::runtime::Runtime;
use plumber::state::{MemoryState, Namespace, SharedState};
use plumber::streams::channel_sink;
use plumber::Event;
use plumber_cli::bench::wordcount::{pipeline, step_name, Job, Setup, TextSource, WINDOW};
use plumber_cli::bench::Engine;
use plumber_tests::{cache_dir, guest};

const LINES: u64 = 20_000;
const SEED: u64 = 42;

fn setup() -> Setup {
    let guests = guest("wordcount")
        .parent()
        .expect("the guests' directory")
        .to_path_buf();
    // `upper` is built alongside; make sure of it.
    assert!(guest("upper").exists());
    Setup {
        lines: LINES,
        seed: SEED,
        batch_size: 256,
        // Checkpoints during the run, not only at the end.
        checkpoint: Duration::from_millis(5),
        guests,
    }
}

/// Runs a pipeline and returns what reached its sink, and its state.
async fn run(job: Job, engine: Engine, name: &str) -> (Vec<Event>, SharedState) {
    let rt = Runtime::new(Some(cache_dir())).expect("runtime");
    let state: SharedState = Arc::new(MemoryState::new());
    // Room for every output event: the sink must not wait for this reader.
    let (sink, mut receiver) = channel_sink(LINES as usize * 6);
    let report = pipeline(name, job, engine, &setup(), &rt, state.clone(), sink)
        .expect("pipeline")
        .run()
        .await
        .expect("run");
    assert_eq!(report.events_in, LINES);
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    assert_eq!(report.events_out, events.len() as u64);
    (events, state)
}

/// The generated lines, read directly from the generator.
fn lines() -> Vec<Event> {
    let mut source = TextSource::new(LINES, SEED);
    std::iter::from_fn(|| source.next_event()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// (key, value, timestamp) of each event, as text.
fn triples(events: &[Event]) -> Vec<(String, String, Option<u64>)> {
    events
        .iter()
        .map(|e| {
            (
                text(e.key.as_deref().unwrap_or_default()),
                text(&e.value),
                e.timestamp,
            )
        })
        .collect()
}

#[tokio::test]
async fn wasm_and_native_maps_write_the_same_lines() {
    let (native, _) = run(Job::Map, Engine::Native, "map-native").await;
    let (wasm, _) = run(Job::Map, Engine::Wasm, "map-wasm").await;
    assert_eq!(native.len(), LINES as usize);
    assert_eq!(native, wasm);
    let first = lines().remove(0);
    assert_eq!(native[0].value, first.value.to_ascii_uppercase());
}

#[tokio::test]
async fn wasm_and_native_counts_agree_with_the_text() {
    let (native, _) = run(Job::Count, Engine::Native, "count-native").await;
    let (wasm, state) = run(Job::Count, Engine::Wasm, "count-wasm").await;
    assert_eq!(native.len(), LINES as usize * 5);
    assert_eq!(triples(&native), triples(&wasm));

    // An independent count of the generated text.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for line in lines() {
        for word in text(&line.value).split(' ') {
            *expected.entry(word.to_owned()).or_default() += 1;
        }
    }
    // Each word's last event carries its final count ...
    let mut last: HashMap<String, i64> = HashMap::new();
    for (key, value, _) in triples(&wasm) {
        let (word, count) = value.split_once(' ').expect("`word count`");
        assert_eq!(word, key);
        last.insert(key, count.parse().expect("a count"));
    }
    let last: BTreeMap<String, i64> = last.into_iter().collect();
    assert_eq!(last, expected);
    // ... and the guest's committed state holds the same counts.
    let namespace = Namespace::for_pipe("count-wasm", step_name(Job::Count));
    let stored: BTreeMap<String, i64> = state
        .scan_prefix(namespace.prefix())
        .await
        .expect("scan")
        .into_iter()
        .map(|(k, v)| {
            (
                text(&k[namespace.prefix().len()..]),
                text(&v).parse().expect("an integer"),
            )
        })
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn wasm_and_native_window_counts_agree_with_the_text() {
    let (native, _) = run(Job::Window, Engine::Native, "window-native").await;
    let (wasm, _) = run(Job::Window, Engine::Wasm, "window-wasm").await;
    assert_eq!(triples(&native), triples(&wasm));

    // Per window of 1,000 lines (1 ms each), each word's count, in word order.
    let size = WINDOW.as_millis() as u64;
    let mut windows: BTreeMap<u64, BTreeMap<String, u64>> = BTreeMap::new();
    for line in lines() {
        let end = (line.timestamp.expect("a timestamp") / size + 1) * size;
        for word in text(&line.value).split(' ') {
            *windows
                .entry(end)
                .or_default()
                .entry(word.to_owned())
                .or_default() += 1;
        }
    }
    let expected: Vec<(String, String, Option<u64>)> = windows
        .into_iter()
        .flat_map(|(end, counts)| {
            counts
                .into_iter()
                .map(move |(word, count)| (word.clone(), format!("{word} {count}"), Some(end)))
        })
        .collect();
    assert_eq!(triples(&wasm), expected);
}
