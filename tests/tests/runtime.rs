//! Loading components: the compile cache and the sandbox's import checks.

use std::sync::Arc;

use plumber::runtime::{Capabilities, Grant, InstanceSettings, LoadError, Runtime};
use plumber::state::{MemoryState, Namespace, PipeState, SharedState, WriteMode};
use plumber::Batch;
use plumber::Event;
use plumber_tests::guest;

#[tokio::test]
async fn a_second_runtime_loads_from_the_disk_cache_without_compiling() {
    let cache = tempfile::tempdir().unwrap();
    let first = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    first
        .load(&guest("upper"), &Capabilities::default())
        .expect("load");
    let stats = first.cache().expect("cache");
    assert_eq!((stats.hits(), stats.misses()), (0, 1));
    assert!(stats
        .entry_path(&std::fs::read(guest("upper")).unwrap())
        .exists());

    // A new runtime (as after a restart) finds the compiled form on disk.
    let second = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    let component = second
        .load(&guest("upper"), &Capabilities::default())
        .expect("load from cache");
    let stats = second.cache().expect("cache");
    assert_eq!((stats.hits(), stats.misses()), (1, 0));

    // And what it loaded runs.
    let state: SharedState = Arc::new(MemoryState::new());
    let mut instance = component
        .instantiate(
            &second,
            Arc::new(InstanceSettings::new("default", "upper", "{}")),
            PipeState::new(
                state,
                Namespace::for_pipe("p", "upper"),
                WriteMode::Checkpointed,
            ),
        )
        .await
        .expect("instantiate");
    let out = instance
        .process(&Batch::new(vec![Event::new("cached")]))
        .await
        .expect("process");
    assert_eq!(out[0].value, b"CACHED");
}

#[test]
fn a_corrupt_cache_entry_is_recompiled() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(Some(cache.path().to_path_buf())).unwrap();
    let entry = runtime
        .cache()
        .unwrap()
        .entry_path(&std::fs::read(guest("lower")).unwrap());
    std::fs::write(&entry, b"garbage").unwrap();
    runtime
        .load(&guest("lower"), &Capabilities::default())
        .expect("recompiled");
    assert_eq!(runtime.cache().unwrap().misses(), 1);
    assert_ne!(std::fs::read(&entry).unwrap(), b"garbage");
}

/// The size of a cache entry.
fn entry_size(runtime: &Runtime, name: &str) -> u64 {
    let entry = runtime
        .cache()
        .unwrap()
        .entry_path(&std::fs::read(guest(name)).unwrap());
    std::fs::metadata(entry).expect("entry written").len()
}

/// Bytes of entries in a cache directory.
fn cache_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|item| item.unwrap())
        .filter(|item| item.file_name().to_string_lossy().ends_with(".cwasm"))
        .map(|item| item.metadata().unwrap().len())
        .sum()
}

#[test]
fn the_cache_keeps_its_size_bound_by_evicting_the_least_recently_used() {
    let load = |runtime: &Runtime, name: &str| {
        runtime
            .load(&guest(name), &Capabilities::default())
            .unwrap_or_else(|e| panic!("load {name}: {e}"));
    };
    // The entries' sizes, from an unbounded cache.
    let sizes = tempfile::tempdir().unwrap();
    let unbounded = Runtime::with_cache(sizes.path().to_path_buf(), u64::MAX).unwrap();
    let [upper, lower, count] = ["upper", "lower", "count"].map(|name| {
        load(&unbounded, name);
        entry_size(&unbounded, name)
    });
    assert_eq!(unbounded.cache().unwrap().evictions(), 0);

    // Room for any two of the three, not for all three.
    let bound = upper + lower + count - 1;
    let dir = tempfile::tempdir().unwrap();
    let runtime = Runtime::with_cache(dir.path().to_path_buf(), bound).unwrap();
    let cache = runtime.cache().unwrap();
    let entry = |name: &str| cache.entry_path(&std::fs::read(guest(name)).unwrap());
    // Distinct modification times even on a file system with coarse ones.
    let tick = || std::thread::sleep(std::time::Duration::from_millis(20));
    load(&runtime, "upper");
    tick();
    load(&runtime, "lower");
    tick();
    // A hit makes `upper` the most recently used...
    load(&runtime, "upper");
    assert_eq!((cache.hits(), cache.misses()), (1, 2));
    tick();
    // ...so the third entry pushes out `lower`.
    load(&runtime, "count");
    assert_eq!(cache.evictions(), 1);
    assert!(!entry("lower").exists(), "the least recently used goes");
    assert!(entry("upper").exists() && entry("count").exists());
    assert!(cache_bytes(dir.path()) <= bound);

    // An entry larger than the whole bound is not kept either.
    let tiny = tempfile::tempdir().unwrap();
    let runtime = Runtime::with_cache(tiny.path().to_path_buf(), upper - 1).unwrap();
    load(&runtime, "upper");
    assert_eq!(cache_bytes(tiny.path()), 0);
}

#[test]
fn imports_beyond_the_grants_are_refused_by_name() {
    let runtime = Runtime::new(None).unwrap();
    match runtime.load(
        &guest("file-reader"),
        &Capabilities {
            grants: vec![Grant::Clocks, Grant::Random],
            ..Capabilities::default()
        },
    ) {
        Err(LoadError::ImportNotGranted { imports, .. }) => {
            assert!(
                imports
                    .iter()
                    .all(|import| import.starts_with("wasi:filesystem/")),
                "{imports:?}"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a filesystem import was accepted"),
    }
    // The stateless and stateful guests need nothing beyond the defaults.
    for name in ["upper", "count", "split"] {
        runtime
            .load(&guest(name), &Capabilities::default())
            .expect(name);
    }
}

#[tokio::test]
async fn init_rejects_a_bad_pipe_config_with_the_guests_message() {
    let runtime = Runtime::new(None).unwrap();
    let component = runtime
        .load(&guest("count"), &Capabilities::default())
        .unwrap();
    let state: SharedState = Arc::new(MemoryState::new());
    let error = component
        .instantiate(
            &runtime,
            Arc::new(InstanceSettings::new("default", "count", r#"{"sep": 1}"#)),
            PipeState::new(
                state,
                Namespace::for_pipe("p", "count"),
                WriteMode::Checkpointed,
            ),
        )
        .await
        .err()
        .expect("init fails");
    let text = error.to_string();
    assert!(
        text.contains("pipe `count` failed in init") && text.contains("unknown field `sep`"),
        "{text}"
    );
}
