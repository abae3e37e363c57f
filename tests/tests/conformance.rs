//! The conformance suite: the same four pipes written in Rust, Go, Python
//! and JavaScript (`examples/guests/conformance`, `examples/conformance/*`),
//! each language's component built from source — Go and Python by
//! `plumber build`, JavaScript by its build script (componentize-js), Rust by
//! the guest harness — and run through the same pipelines. Every language
//! must give the same output events and the same final state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plumber::checkpoint::CheckpointPolicy;
use plumber::pipeline::{Pipeline, PipelineError, RunReport};
use plumber::runtime::{LoadError, Runtime};
use plumber::state::{MemoryState, Namespace, SharedState};
use plumber::step::{OnError, StepError, WasmPipe};
use plumber::streams::{channel_sink, ArraySource};
use plumber::window::Window;
use plumber::Event;
use plumber_cli::build::Language;
use plumber_tests::{cache_dir, guest, workspace_root};

const LANGUAGES: [&str; 4] = ["rust", "go", "python", "js"];

/// Every language's component, built once per test process, and compiled
/// once into the shared cache (so the tests do not all compile at once).
fn components() -> &'static BTreeMap<&'static str, PathBuf> {
    static BUILT: OnceLock<BTreeMap<&'static str, PathBuf>> = OnceLock::new();
    // Built on a thread of its own: the tests call this from inside tokio.
    BUILT.get_or_init(|| {
        std::thread::spawn(build_all)
            .join()
            .unwrap_or_else(|_| panic!("building the conformance pipes failed (see above)"))
    })
}

fn build_all() -> BTreeMap<&'static str, PathBuf> {
    {
        let root = workspace_root();
        let out = root.join("target").join("conformance");
        std::fs::create_dir_all(&out).unwrap();
        let js_out = out.join("conformance-js.wasm");
        // JavaScript: its build script (the toolchain is pinned in guest-sdk/js).
        let js = std::thread::spawn({
            let script = root.join("examples/conformance/js/build.sh");
            let js_out = js_out.clone();
            move || {
                let output = std::process::Command::new("bash")
                    .arg(&script)
                    .arg(&js_out)
                    .output()
                    .expect("run the JS build script");
                assert!(
                    output.status.success(),
                    "building the JS conformance pipe failed:\n{}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        });
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let runtime = Runtime::new(Some(cache_dir())).unwrap();
        let mut built = BTreeMap::new();
        built.insert("rust", guest("conformance"));
        for (language, dir) in [("go", "go"), ("python", "python")] {
            let file = out.join(format!("conformance-{language}.wasm"));
            let result = tokio.block_on(plumber_cli::build::build(
                &root.join("examples/conformance").join(dir),
                Some(&file),
                &runtime,
            ));
            let built_one = result
                .unwrap_or_else(|e| panic!("plumber build of the {language} pipe failed: {e}"));
            println!(
                "{language}: {} bytes, built in {:.1} s",
                built_one.bytes,
                built_one.took.as_secs_f64()
            );
            built.insert(language, file);
        }
        js.join().expect("JS build thread");
        built.insert("js", js_out);
        for (language, file) in &built {
            runtime
                .load(file, &capabilities(language))
                .unwrap_or_else(|e| panic!("{language}: {e}"));
        }
        built
    }
}

fn capabilities(language: &str) -> plumber::runtime::Capabilities {
    match language {
        "go" => Language::Go.capabilities(),
        _ => plumber::runtime::Capabilities::default(),
    }
}

fn pipe(language: &str, behaviour: &str) -> WasmPipe {
    let mut pipe = WasmPipe::new("pipe", &components()[language])
        .config(serde_json::json!({ "pipe": behaviour }));
    for grant in capabilities(language).grants {
        pipe = pipe.grant(grant);
    }
    pipe
}

/// What one language's run gave: the result, the events out, and the state.
struct Outcome {
    result: Result<RunReport, PipelineError>,
    events: Vec<Event>,
    state: BTreeMap<String, String>,
}

async fn run(
    language: &str,
    events: Vec<Event>,
    window: Option<Window>,
    step: WasmPipe,
) -> Outcome {
    let state: SharedState = Arc::new(MemoryState::new());
    let mut builder = Pipeline::builder("conformance")
        .state(state.clone())
        .runtime(Runtime::new(Some(cache_dir())).unwrap())
        .checkpoint(CheckpointPolicy::every(Duration::from_secs(60)))
        .from(ArraySource::new(events));
    if let Some(window) = window {
        builder = builder.then(window);
    }
    let (sink, mut receiver) = channel_sink(1024);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = receiver.recv().await {
            events.push(event);
        }
        events
    });
    let result = builder.then(step).to(sink).run().await;
    let namespace = Namespace::for_pipe("conformance", "pipe");
    let state = state
        .scan_prefix(namespace.prefix())
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k[namespace.prefix().len()..]).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    let events = collector.await.unwrap();
    let _ = language;
    Outcome {
        result,
        events,
        state,
    }
}

fn values(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .collect()
}

fn sample() -> Vec<Event> {
    vec![
        Event::new("ada")
            .with_key("k1")
            .with_timestamp(1_800_000_000_000),
        Event {
            headers: vec![("h".into(), "v".into())],
            ..Event::new("Bob-ü")
        },
        Event::new("ada"),
        Event::new(vec![0xff, b'x']),
        Event::new("ada").with_timestamp(7),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transform_is_the_same_in_every_language() {
    let mut outputs = Vec::new();
    for language in LANGUAGES {
        let outcome = run(language, sample(), None, pipe(language, "transform")).await;
        outcome.result.unwrap_or_else(|e| panic!("{language}: {e}"));
        outputs.push((language, outcome.events));
    }
    let expected: Vec<Event> = sample()
        .into_iter()
        .map(|mut e| {
            e.value.make_ascii_uppercase();
            e
        })
        .collect();
    for (language, events) in outputs {
        assert_eq!(events, expected, "{language}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_gives_the_same_events_and_state_in_every_language() {
    for language in LANGUAGES {
        let outcome = run(language, sample(), None, pipe(language, "counter")).await;
        outcome.result.unwrap_or_else(|e| panic!("{language}: {e}"));
        assert_eq!(
            values(&outcome.events),
            ["ada=1", "Bob-ü=1", "ada=2", "\u{fffd}x=1", "ada=3"],
            "{language}"
        );
        // The output key is the value's bytes; the rest of the event is kept.
        let keys: Vec<Option<Vec<u8>>> = outcome.events.iter().map(|e| e.key.clone()).collect();
        let expected_keys: Vec<Option<Vec<u8>>> =
            sample().into_iter().map(|e| Some(e.value)).collect();
        assert_eq!(keys, expected_keys, "{language}");
        assert_eq!(
            outcome.events[0].timestamp,
            Some(1_800_000_000_000),
            "{language}"
        );
        assert_eq!(outcome.events[1].headers, sample()[1].headers, "{language}");
        let expected_state: BTreeMap<String, String> =
            [("ada", "3"), ("Bob-ü", "1"), ("\u{fffd}x", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(outcome.state, expected_state, "{language}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_aggregator_gives_the_same_results_in_every_language() {
    let input: Vec<Event> = ["x", "y", "x", "x", "z", "z", "y"]
        .into_iter()
        .map(Event::new)
        .collect();
    for language in LANGUAGES {
        let outcome = run(
            language,
            input.clone(),
            Some(Window::count("triples", 3)),
            pipe(language, "aggregate"),
        )
        .await;
        outcome.result.unwrap_or_else(|e| panic!("{language}: {e}"));
        // Count windows are in processing time: compare what follows the
        // window's bounds, and check the bounds are ordered.
        let mut rest = Vec::new();
        for value in values(&outcome.events) {
            let parts: Vec<&str> = value.splitn(3, ':').collect();
            let (start, end): (u64, u64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
            assert!(start <= end && end > 0, "{language}: {value}");
            rest.push(parts[2].to_owned());
        }
        assert_eq!(
            rest,
            ["x:2:2", "y:1:1", "x:1:3", "z:2:2", "y:1:2"],
            "{language}"
        );
        let state: Vec<(&str, &str)> = outcome
            .state
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(state, [("x", "3"), ("y", "2"), ("z", "2")], "{language}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_is_the_same_pipe_error_in_every_language() {
    let input = || -> Vec<Event> { ["ok", "bad", "fine"].into_iter().map(Event::new).collect() };
    for language in LANGUAGES {
        let outcome = run(language, input(), None, pipe(language, "fail")).await;
        match outcome.result {
            Err(PipelineError::Step {
                source:
                    StepError::Guest {
                        message,
                        retryable,
                        event_index,
                        ..
                    },
                ..
            }) => {
                assert_eq!(message, "bad event at 1", "{language}");
                assert!(!retryable, "{language}");
                assert_eq!(event_index, Some(1), "{language}");
            }
            other => panic!("{language}: {:?}", other.map(|r| r.events_out)),
        }
        assert!(outcome.events.is_empty(), "{language}");

        // With `skip`, only the bad event is dropped.
        let outcome = run(
            language,
            input(),
            None,
            pipe(language, "fail").on_error(OnError::Skip),
        )
        .await;
        outcome.result.unwrap_or_else(|e| panic!("{language}: {e}"));
        assert_eq!(values(&outcome.events), ["ok", "fine"], "{language}");

        // And a config naming no known pipe fails in init, the same way.
        let outcome = run(language, input(), None, pipe(language, "nope")).await;
        match outcome.result {
            Err(PipelineError::Load {
                source: LoadError::Init { message, .. },
                ..
            }) => assert_eq!(message, "unknown pipe \"nope\"", "{language}"),
            other => panic!("{language}: {:?}", other.map(|r| r.events_out)),
        }
    }
}

/// Python's error paths through the SDK's `export`, run by the host: an
/// uncaught exception (`SystemExit` too), a `state.add` delta outside 64
/// bits and a returned timestamp outside u64 each reach the dead letter as
/// a guest error carrying the exception's text, where a component without
/// the SDK traps with a message that says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_errors_reach_the_dead_letter_with_their_text_not_as_traps() {
    use plumber::dead_letter::{ERROR_HEADER, REASON_HEADER};

    for (behaviour, expected) in [
        ("raise", "unhandled KeyError: 'ada' (at app.py:"),
        ("exit", "unhandled SystemExit: 3 (at app.py:"),
        (
            "add_big",
            "invalid state operation: integer for `ada` does not fit in 64 bits",
        ),
        (
            "bad_timestamp",
            "event 0: timestamp -1 is not an integer in 0..2**64-1",
        ),
    ] {
        let (dead, mut letters) = channel_sink(16);
        let (sink, _out) = channel_sink(16);
        let result = Pipeline::builder("python-errors")
            .state(Arc::new(MemoryState::new()))
            .runtime(Runtime::new(Some(cache_dir())).unwrap())
            .checkpoint(CheckpointPolicy::every(Duration::from_secs(60)))
            .from(ArraySource::new(vec![Event::new("ada")]))
            .dead_letter(dead)
            .then(pipe("python", behaviour).on_error(OnError::DeadLetter))
            .to(sink)
            .run()
            .await;
        result.unwrap_or_else(|e| panic!("{behaviour}: {e}"));
        let letter = letters.try_recv().expect("a dead letter");
        let header = |name: &str| {
            letter
                .headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        assert_eq!(header(REASON_HEADER), "error", "{behaviour}: {letter:?}");
        assert!(
            header(ERROR_HEADER).contains(expected),
            "{behaviour}: {}",
            header(ERROR_HEADER)
        );
    }
}

/// The functions a component imports from `plumber:pipe/state` and the
/// functions it exports, read from its component type (nothing compiled).
fn state_imports_and_exports(path: &std::path::Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let bytes = std::fs::read(path).unwrap();
    let wit_component::DecodedWasm::Component(resolve, world) =
        wit_component::decode(&bytes).unwrap()
    else {
        panic!("{} is not a component", path.display())
    };
    let world = &resolve.worlds[world];
    let mut state = BTreeSet::new();
    for item in world.imports.values() {
        if let wit_parser::WorldItem::Interface { id, .. } = item {
            let interface = &resolve.interfaces[*id];
            if interface.name.as_deref() == Some("state") {
                state.extend(interface.functions.keys().cloned());
            }
        }
    }
    let exports = world
        .exports
        .iter()
        .map(|(key, _)| resolve.name_world_key(key))
        .collect();
    (state, exports)
}

/// The Go SDK crosses packed and counts with `add-many`: the component
/// exports `process-packed` (which the host calls instead of `process`) and
/// its counter imports `add-many` and not `add` (a counter that added per
/// event would import `add`). Python's and JavaScript's SDKs import
/// `add-many` (their counters' single call per batch is tested natively,
/// in examples/conformance/*).
#[test]
fn go_crosses_packed_and_counts_with_add_many() {
    let (state, exports) = state_imports_and_exports(&components()["go"]);
    assert!(exports.contains("process-packed"), "go exports {exports:?}");
    assert!(exports.contains("process"), "go exports {exports:?}");
    assert!(state.contains("add-many"), "go imports {state:?}");
    assert!(!state.contains("add"), "go imports {state:?}");
    for language in ["python", "js"] {
        let (state, _) = state_imports_and_exports(&components()[language]);
        assert!(state.contains("add-many"), "{language} imports {state:?}");
    }
}

/// The counter over many keys: 300,000 events, 200,000 distinct values
/// (every batch repeats values within itself), counted in every language,
/// Go both packed and through the canonical ABI. Each event's running count
/// and the final state must match a count kept here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_many_keys_matches_a_reference_count_in_every_language() {
    const GROUPS: u64 = 100_000;
    const DISTINCT: u64 = 100_003; // prime: g * 7919 % DISTINCT is a permutation
                                   // Groups of three events `a b a`: `a` runs over 100,000 distinct values
                                   // (one per group) and `b` over another 100,000, so each batch repeats
                                   // values within itself and the state ends with 200,000 keys.
    let mut input = Vec::with_capacity(3 * GROUPS as usize);
    for group in 0..GROUPS {
        let a = format!("a{}", group * 7919 % DISTINCT);
        let b = format!("b{}", (group * 104_729 + 1) % DISTINCT);
        input.push(Event::new(a.clone()));
        input.push(Event::new(b));
        input.push(Event::new(a));
    }
    let mut counts: HashMap<String, u64> = HashMap::new();
    let expected: Vec<String> = input
        .iter()
        .map(|e| {
            let key = String::from_utf8(e.value.clone()).unwrap();
            let n = counts.entry(key.clone()).or_default();
            *n += 1;
            format!("{key}={n}")
        })
        .collect();
    assert!(counts.len() >= 200_000, "{} distinct", counts.len());
    let expected_state: BTreeMap<String, String> = counts
        .into_iter()
        .map(|(k, n)| (k, n.to_string()))
        .collect();

    let runs = [
        ("rust", pipe("rust", "counter")),
        ("go", pipe("go", "counter")),
        ("go, canonical ABI", pipe("go", "counter").packed(false)),
        ("python", pipe("python", "counter")),
        ("js", pipe("js", "counter")),
    ];
    for (name, step) in runs {
        let outcome = run(name, input.clone(), None, step).await;
        let report = outcome.result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.events_out, input.len() as u64, "{name}");
        let got = values(&outcome.events);
        if let Some(i) = (0..expected.len()).find(|&i| got.get(i) != Some(&expected[i])) {
            panic!(
                "{name}: event {i} is {:?}, expected {:?}",
                got.get(i),
                expected[i]
            );
        }
        assert_eq!(outcome.state.len(), expected_state.len(), "{name}");
        assert!(
            outcome.state == expected_state,
            "{name}: final state differs"
        );
    }
}
