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
