//! The sandbox: limits, capabilities, tenant isolation and quotas, and
//! error policies, each shown with a guest that misbehaves on purpose
//! (`examples/guests/probe`, `probe-grants`, `wasi-reach`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::dead_letter::{ERROR_HEADER, REASON_HEADER, STEP_HEADER, TIME_HEADER};
use plumber::pipeline::{Pipeline, PipelineBuilder, PipelineError, RunReport};
use plumber::runtime::{Capabilities, Grant, LimitKind, LoadError, PipeLimits, Runtime};
use plumber::state::{MemoryState, Namespace, SharedState};
use plumber::step::{Exhausted, OnError, StepError, WasmPipe};
use plumber::streams::{batch_channel_sink, channel_sink, ArraySource};
use plumber::tenant::{QuotaError, TenantQuota, Tenants};
use plumber::ErrorChain;
use plumber_tests::{cache_dir, guest, run_collect};

fn runtime() -> Runtime {
    Runtime::new(Some(cache_dir())).expect("runtime")
}

fn probe(config: serde_json::Value) -> WasmPipe {
    WasmPipe::new("probe", guest("probe")).config(config)
}

fn limits(change: impl FnOnce(&mut PipeLimits)) -> PipeLimits {
    let mut limits = PipeLimits::default();
    change(&mut limits);
    limits
}

fn pipeline(name: &str, values: &[&str]) -> PipelineBuilder {
    Pipeline::builder(name)
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::every(Duration::from_secs(60)))
        .from(ArraySource::from_strings(values.iter().copied()))
}

fn limit_of(result: &Result<RunReport, PipelineError>) -> Option<LimitKind> {
    match result {
        Err(PipelineError::Step {
            source: StepError::Limit { kind, .. },
            ..
        }) => Some(*kind),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_guest_is_stopped_at_its_time_limit() {
    let started = Instant::now();
    let (result, out) = run_collect(pipeline("spin", &["a", "spin", "b"]).batch_size(1).then(
        probe(serde_json::json!({"mode": "spin"})).limits(limits(|l| l.call_timeout_ms = 200)),
    ))
    .await;
    let took = started.elapsed();
    assert_eq!(limit_of(&result), Some(LimitKind::Time), "{result:?}");
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(
        text.contains("time limit") && text.contains("\"spin\""),
        "{text}"
    );
    assert_eq!(out, vec!["a"]);
    // Stopped near its deadline, not after some long default.
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// A time limit is the batch's: its events meet the policy together, after
/// one timed-out call, not one call (and one `call_timeout_ms`) per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_spun_meets_the_policy_as_a_whole_after_one_timeout() {
    const EVENTS: usize = 8;
    let spins = vec!["spin"; EVENTS];
    let builder = pipeline("spin-skip", &spins).then(
        probe(serde_json::json!({"mode": "spin"}))
            .limits(limits(|l| l.call_timeout_ms = 100))
            .on_error(OnError::Skip),
    );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("skipping keeps the pipeline running");
    assert!(out.is_empty(), "{out:?}");
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(
        counters.limits[0].load(Ordering::Relaxed),
        1,
        "timed-out calls"
    );
    assert_eq!(counters.skipped.load(Ordering::Relaxed), EVENTS as u64);

    // Dead-lettered together, each with the batch's error.
    let (dead, mut letters) = channel_sink(64);
    let builder = pipeline("spin-dead", &["a", "spin", "b"])
        .dead_letter(dead)
        .then(
            probe(serde_json::json!({"mode": "spin"}))
                .limits(limits(|l| l.call_timeout_ms = 100))
                .on_error(OnError::DeadLetter),
        );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("dead-lettering keeps the pipeline running");
    assert!(out.is_empty(), "{out:?}");
    let mut dead_values = Vec::new();
    while let Ok(letter) = letters.try_recv() {
        let reason = letter.headers.iter().find(|(k, _)| k == REASON_HEADER);
        assert_eq!(reason.map(|(_, v)| v.as_str()), Some("limit:time"));
        dead_values.push(String::from_utf8_lossy(&letter.value).into_owned());
    }
    assert_eq!(dead_values, ["a", "spin", "b"]);
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(
        counters.limits[0].load(Ordering::Relaxed),
        1,
        "timed-out calls"
    );

    // One event per batch: only the event that spins is skipped.
    let (result, out) = run_collect(
        pipeline("spin-single", &["a", "spin", "b"])
            .batch_size(1)
            .then(
                probe(serde_json::json!({"mode": "spin"}))
                    .limits(limits(|l| l.call_timeout_ms = 100))
                    .on_error(OnError::Skip),
            ),
    )
    .await;
    result.expect("runs");
    assert_eq!(out, vec!["a", "b"]);
}

/// A guest error naming its event: the events before and after it run
/// again as batches, the named one alone; not every event alone.
#[tokio::test]
async fn a_guest_error_at_an_event_reruns_the_batch_around_it() {
    let values: Vec<String> = (0..100)
        .map(|i| {
            if i == 50 {
                "fail".to_owned()
            } else {
                format!("e{i}")
            }
        })
        .collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let builder = pipeline("at-event", &refs)
        .then(WasmPipe::new("faulty", guest("faulty")).on_error(OnError::Skip));
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("runs");
    let expected: Vec<&str> = refs.iter().copied().filter(|v| *v != "fail").collect();
    assert_eq!(out, expected);
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(counters.skipped.load(Ordering::Relaxed), 1);
    // The batch, the 50 before, the failing one, the 49 after.
    assert_eq!(counters.calls.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn growing_past_the_memory_cap_fails_inside_the_guest() {
    let (result, out) = run_collect(pipeline("alloc", &["x", "alloc"]).batch_size(1).then(
        probe(serde_json::json!({"mode": "alloc"})).limits(limits(|l| l.memory_bytes = 16 << 20)),
    ))
    .await;
    assert_eq!(limit_of(&result), Some(LimitKind::Memory), "{result:?}");
    assert_eq!(out, vec!["x"]);
}

#[tokio::test]
async fn output_caps_stop_a_pipe_that_returns_too_much() {
    let (result, _) = run_collect(
        pipeline("huge-count", &["x"]).then(
            probe(serde_json::json!({"mode": "huge", "copies": 1000}))
                .limits(limits(|l| l.max_output_events = 100)),
        ),
    )
    .await;
    assert_eq!(
        limit_of(&result),
        Some(LimitKind::OutputEvents),
        "{result:?}"
    );

    let (result, _) = run_collect(
        pipeline("huge-bytes", &["x"]).then(
            probe(serde_json::json!({"mode": "huge", "bytes": 2_000_000}))
                .limits(limits(|l| l.max_output_bytes = 1_000_000)),
        ),
    )
    .await;
    assert_eq!(
        limit_of(&result),
        Some(LimitKind::OutputBytes),
        "{result:?}"
    );
    assert!(ErrorChain(&result.unwrap_err())
        .to_string()
        .contains("returned 2000000 bytes"));
}

/// Trap on `boom` with a dead-letter sink: the other events pass, the
/// trapping one is dead-lettered with why, where and when, the instance is
/// created again, and the writes of the call that trapped are undone.
#[tokio::test]
async fn a_trapping_event_is_dead_lettered_and_its_calls_writes_undone() {
    let state: SharedState = Arc::new(MemoryState::new());
    let (dead, mut letters) = channel_sink(64);
    let builder = pipeline("trap", &["a", "b", "boom", "c", "a"])
        .state(state.clone())
        .delivery(Delivery::ExactlyOnce)
        .dead_letter(dead)
        .then(
            probe(serde_json::json!({"mode": "trap_on", "value": "boom"}))
                .on_error(OnError::DeadLetter),
        );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("dead-lettering keeps the pipeline running");
    assert_eq!(out, vec!["a", "b", "c", "a"]);

    let letter = letters.try_recv().expect("one dead letter");
    assert!(letters.try_recv().is_err(), "only one dead letter");
    assert_eq!(letter.value, b"boom");
    let header = |name: &str| {
        letter
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} header"))
    };
    assert_eq!(header(REASON_HEADER), "trap");
    assert_eq!(header(STEP_HEADER), "probe");
    assert!(header(ERROR_HEADER).contains("trapped"));
    assert!(header(TIME_HEADER).parse::<u64>().unwrap() > 1_600_000_000_000);

    // The first call (all five events) trapped and was undone; the events
    // then ran one by one: a=2, b=1, c=1, not a=3, b=2.
    let namespace = Namespace::for_pipe("trap", "probe");
    for (key, count) in [("a", "2"), ("b", "1"), ("c", "1")] {
        assert_eq!(
            state.get(&namespace.key(key)).await.unwrap(),
            Some(count.as_bytes().to_vec()),
            "{key}"
        );
    }
    assert_eq!(state.get(&namespace.key("boom")).await.unwrap(), None);
    let stats = handle.status().stages();
    let counters = stats[0].counters.as_ref().unwrap();
    assert_eq!(counters.dead_lettered.load(Ordering::Relaxed), 1);
    // One restart after the batch trapped, one after the event alone.
    assert_eq!(counters.restarts.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn retries_are_bounded_then_the_event_is_dead_lettered() {
    let (dead, mut letters) = channel_sink(64);
    let builder = pipeline("retry", &["a", "boom", "b"])
        .batch_size(1)
        .dead_letter(dead)
        .then(
            probe(serde_json::json!({"mode": "trap_on", "value": "boom"})).on_error(
                OnError::Retry {
                    attempts: 3,
                    backoff_ms: 1,
                    then: Exhausted::DeadLetter,
                },
            ),
        );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("runs on");
    assert_eq!(out, vec!["a", "b"]);
    assert_eq!(letters.try_recv().expect("dead letter").value, b"boom");
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(counters.retries.load(Ordering::Relaxed), 3);
    // The batch of one, then three retries: four traps, four restarts.
    assert_eq!(counters.traps.load(Ordering::Relaxed), 4);

    // Retry then fail: the pipeline stops with the trap.
    let (result, _) = run_collect(pipeline("retry-fail", &["boom"]).then(
        probe(serde_json::json!({"mode": "trap_on", "value": "boom"})).on_error(OnError::Retry {
            attempts: 1,
            backoff_ms: 1,
            then: Exhausted::Fail,
        }),
    ))
    .await;
    assert!(
        matches!(
            result,
            Err(PipelineError::Step {
                source: StepError::Trap { .. },
                ..
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn skip_counts_the_events_it_drops() {
    let builder = pipeline("skip", &["a", "boom", "b", "boom"]).then(
        probe(serde_json::json!({"mode": "trap_on", "value": "boom"})).on_error(OnError::Skip),
    );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("runs on");
    assert_eq!(out, vec!["a", "b"]);
    let stages = handle.status().stages();
    assert_eq!(
        stages[0]
            .counters
            .as_ref()
            .unwrap()
            .skipped
            .load(Ordering::Relaxed),
        2
    );
}

/// Every key trick lands inside the attacker's own namespace: the victim's
/// keys (same pipeline and pipe names, another tenant) are neither read
/// nor changed.
#[tokio::test]
async fn no_key_string_reaches_another_tenants_state() {
    let state: SharedState = Arc::new(MemoryState::new());
    let victim = Namespace::for_tenant_pipe("victim", "p", "probe");
    let mut planted = HashMap::new();
    for key in ["secret", "other/secret", "../secret", "x"] {
        planted.insert(victim.key(key), b"victim-data".to_vec());
    }
    let record = plumber::checkpoint::CheckpointRecord::new(
        "victim/p",
        0,
        plumber::checkpoint::Position::Start,
    );
    let writes: Vec<plumber::state::WriteSet> = vec![planted
        .iter()
        .map(|(k, v)| (k.clone(), Some(v.clone())))
        .collect()];
    state.commit(&record, &writes).await.unwrap();

    let (result, out) = run_collect(
        pipeline("p", &["go"])
            .tenant("attacker")
            .state(state.clone())
            .then(
                probe(serde_json::json!({"mode": "escape"}))
                    .limits(limits(|l| l.max_key_bytes = 256)),
            ),
    )
    .await;
    result.expect("runs");
    let reports: Vec<serde_json::Value> = out
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();
    assert_eq!(reports.len(), 12, "{reports:?}");
    for report in &reports {
        let key = report["key"].as_str().unwrap();
        match key {
            "secret" => assert!(report["get"].is_null(), "{report}"),
            long if long.len() > 256 => {
                let set = report["set"].as_str().unwrap();
                assert!(
                    set.starts_with("error") && set.contains("limit"),
                    "{report}"
                );
            }
            _ => {
                assert_eq!(report["set"], "ok", "{report}");
                // It reads back its own write, never the victim's data.
                assert_eq!(report["get"], "owned", "{report}");
            }
        }
    }
    // The victim's keys are untouched, and every key the attacker wrote
    // lies under its own tenant's prefix.
    let all = state.scan_prefix(b"").await.unwrap();
    let attacker_prefix = Namespace::tenant_prefix("attacker");
    let victim_prefix = Namespace::tenant_prefix("victim");
    let mut victim_keys = 0;
    for (key, value) in &all {
        if key.starts_with(&victim_prefix) {
            victim_keys += 1;
            assert_eq!(value, b"victim-data");
        } else {
            assert!(
                key.starts_with(&attacker_prefix),
                "key outside both tenants: {:?}",
                String::from_utf8_lossy(key)
            );
            assert_eq!(value, b"owned");
        }
    }
    assert_eq!(victim_keys, planted.len());
}

#[test]
fn wasi_filesystem_and_sockets_are_never_linked() {
    let runtime = runtime();
    match runtime.load(&guest("wasi-reach"), &Capabilities::default()) {
        // It imports clocks, filesystem and sockets; every one is named.
        Err(LoadError::ImportNotGranted { imports, .. }) => assert!(
            ["wasi:clocks/", "wasi:filesystem/", "wasi:sockets/"]
                .iter()
                .all(|prefix| imports.iter().any(|import| import.starts_with(prefix))),
            "{imports:?}"
        ),
        other => panic!("loaded or failed otherwise: {:?}", other.err()),
    }
    // Even with every grant there is, sockets stay out.
    let everything = Capabilities {
        grants: vec![Grant::Clocks, Grant::Random],
        env: vec!["HOME".into()],
        read_only_dir: Some(plumber::runtime::ReadOnlyDir {
            host: std::env::temp_dir(),
            guest: "/data".into(),
        }),
    };
    match runtime.load(&guest("wasi-reach"), &everything) {
        Err(LoadError::ImportNotGranted { imports, .. }) => assert!(
            imports
                .iter()
                .all(|import| import.starts_with("wasi:sockets/")),
            "{imports:?}"
        ),
        other => panic!("loaded or failed otherwise: {:?}", other.err()),
    }
}

#[tokio::test]
async fn grants_give_exactly_a_read_only_directory_listed_env_and_clocks() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.txt"), "hello from the host").unwrap();
    let grants_guest =
        |config: serde_json::Value| WasmPipe::new("probe", guest("probe-grants")).config(config);
    // Without grants the guest does not load, and the error names the import.
    let (result, _) = run_collect(
        pipeline("no-grants", &["x"]).then(grants_guest(serde_json::json!({"mode": "time"}))),
    )
    .await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("imports `wasi:"), "{text}");
    // The directory alone is not enough: it also reads the clock.
    let (result, _) = run_collect(pipeline("no-clocks", &["x"]).then(
        grants_guest(serde_json::json!({"mode": "time"})).read_only_dir(dir.path(), "/data"),
    ))
    .await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("imports `wasi:clocks/"), "{text}");

    let (result, out) = run_collect(
        pipeline("read", &["x"]).then(
            grants_guest(serde_json::json!({"mode": "read_file", "path": "/data/in.txt"}))
                .grant(Grant::Clocks)
                .read_only_dir(dir.path(), "/data"),
        ),
    )
    .await;
    result.expect("runs");
    assert_eq!(out[0], "hello from the host");
    assert!(out[1].starts_with("write: error"), "{out:?}");
    assert!(!dir.path().join("in.txt.new").exists());

    let (result, out) = run_collect(
        pipeline("time", &["x"]).then(
            grants_guest(serde_json::json!({"mode": "time"}))
                .grant(Grant::Clocks)
                .read_only_dir(dir.path(), "/data"),
        ),
    )
    .await;
    result.expect("runs");
    assert!(out[0].parse::<u64>().unwrap() > 1_600_000_000_000);

    // Environment: only the listed variable that is set reaches the guest.
    std::env::set_var("PLUMBER_TEST_VISIBLE", "yes");
    std::env::set_var("PLUMBER_TEST_HIDDEN", "no");
    let (result, out) = run_collect(
        pipeline("env", &["x"]).then(
            probe(serde_json::json!({"mode": "env"}))
                .env("PLUMBER_TEST_VISIBLE")
                .env("PLUMBER_TEST_UNSET"),
        ),
    )
    .await;
    result.expect("runs");
    let vars: serde_json::Value = serde_json::from_str(&out[0]).unwrap();
    assert_eq!(vars, serde_json::json!({"PLUMBER_TEST_VISIBLE": "yes"}));
}

#[tokio::test]
async fn tenants_are_held_to_their_pipeline_and_state_quotas() {
    let tenants = Tenants::new(HashMap::from([(
        "small".to_owned(),
        TenantQuota {
            max_pipelines: Some(1),
            max_state_bytes: Some(300),
        },
    )]));
    let state: SharedState = Arc::new(MemoryState::new());
    // A pipeline that waits on an empty channel holds the tenant's one place.
    let (sender, source) = plumber::streams::channel_source(4);
    let (sink, _out) = batch_channel_sink(4);
    let first = Pipeline::builder("first")
        .tenant("small")
        .tenants(tenants.clone())
        .state(state.clone())
        .runtime(runtime())
        .from(source)
        .then(probe(serde_json::json!({"mode": "pass"})))
        .to(sink);
    let first_handle = first.handle();
    let first_task = tokio::spawn(first.run());
    while tenants.usage("small").pipelines() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (second, _) = run_collect(
        pipeline("second", &["x"])
            .tenant("small")
            .tenants(tenants.clone())
            .state(state.clone()),
    )
    .await;
    assert!(
        matches!(
            second,
            Err(PipelineError::Quota {
                source: QuotaError::Pipelines { running: 1, .. },
                ..
            })
        ),
        "{second:?}"
    );
    first_handle.shutdown();
    drop(sender);
    first_task.await.unwrap().expect("first ran");

    // State: each distinct value is a new key; past 300 bytes the writes
    // are refused, and skip drops those events.
    let values: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
    let builder = pipeline("writer", &refs)
        .tenant("small")
        .tenants(tenants.clone())
        .state(state.clone())
        .then(
            probe(serde_json::json!({"mode": "trap_on", "value": "never"})).on_error(OnError::Skip),
        );
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("runs");
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    let quota_failures = counters.limits[6].load(Ordering::Relaxed);
    assert!(quota_failures > 0, "no quota failure");
    assert!(out.len() < 40 && !out.is_empty(), "{} passed", out.len());
    let used = tenants.usage("small").state_bytes();
    assert!(used <= 300, "{used} bytes used");
    let stored: usize = state
        .scan_prefix(&Namespace::tenant_prefix("small"))
        .await
        .unwrap()
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    assert_eq!(stored as i64, used);
}

/// Under write-through (at-least-once, at-most-once) a failed call's
/// writes have reached the backend: its quota charge stays, so a tenant
/// that fails and skips cannot store more than its quota.
#[tokio::test]
async fn write_through_failures_cannot_take_a_tenant_past_its_state_quota() {
    const QUOTA: u64 = 2_000;
    for delivery in [Delivery::AtLeastOnce, Delivery::AtMostOnce] {
        let tenants = Tenants::new(HashMap::from([(
            "small".to_owned(),
            TenantQuota {
                max_pipelines: None,
                max_state_bytes: Some(QUOTA),
            },
        )]));
        let state: SharedState = Arc::new(MemoryState::new());
        // New keys, with an event that traps after its batch's writes.
        let values: Vec<String> = (0..600)
            .map(|i| {
                if i % 25 == 24 {
                    "boom".to_owned()
                } else {
                    format!("key-{i}")
                }
            })
            .collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let builder = pipeline("writer", &refs)
            .tenant("small")
            .tenants(tenants.clone())
            .state(state.clone())
            .delivery(delivery)
            .batch_size(50)
            .then(
                probe(serde_json::json!({"mode": "trap_on", "value": "boom"}))
                    .on_error(OnError::Skip),
            );
        let handle = builder.handle();
        let (result, _) = run_collect(builder).await;
        result.expect("runs");
        let stages = handle.status().stages();
        let counters = stages[0].counters.as_ref().unwrap();
        assert!(
            counters.traps.load(Ordering::Relaxed) > 0,
            "{delivery:?}: no trap"
        );
        assert!(
            counters.limits[6].load(Ordering::Relaxed) > 0,
            "{delivery:?}: the quota was never hit"
        );
        let stored: u64 = state
            .scan_prefix(&Namespace::tenant_prefix("small"))
            .await
            .unwrap()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        println!("{delivery:?}: {stored} bytes stored, quota {QUOTA}");
        assert!(
            stored <= QUOTA,
            "{delivery:?}: {stored} bytes stored, quota {QUOTA}"
        );
        assert_eq!(
            tenants.usage("small").state_bytes(),
            stored as i64,
            "{delivery:?}: the charge is not what is stored"
        );
    }
}

/// A spinning tenant next to a working one, on the same runtime and the
/// same two worker threads: the working pipeline's run time grows by less
/// than the stated bound (3x its time alone). Prints the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_tenant_slows_another_by_less_than_the_bound() {
    const EVENTS: usize = 100_000;
    let values: Vec<String> = (0..EVENTS).map(|i| format!("event-{i}")).collect();
    let rt = runtime();
    let worker = |rt: Runtime| {
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        Pipeline::builder("worker")
            .tenant("good")
            .runtime(rt)
            .batch_size(64)
            .from(ArraySource::from_strings(refs))
            .then(WasmPipe::new("upper", guest("upper")))
    };
    // Warm up (compile cache, first instantiation), then time it alone.
    run_collect(worker(rt.clone())).await.0.expect("warm-up");
    let started = Instant::now();
    let (result, out) = run_collect(worker(rt.clone())).await;
    result.expect("alone");
    assert_eq!(out.len(), EVENTS);
    let alone = started.elapsed();

    // The spinner: every event spins until its 50 ms limit; skip keeps it going.
    let spins: Vec<&str> = vec!["spin"; 10_000];
    let spinner = Pipeline::builder("spinner")
        .tenant("bad")
        .runtime(rt.clone())
        .batch_size(1)
        .from(ArraySource::from_strings(spins))
        .then(
            probe(serde_json::json!({"mode": "spin"}))
                .limits(limits(|l| l.call_timeout_ms = 50))
                .on_error(OnError::Skip),
        );
    let spinner_handle = spinner.handle();
    let (sink, _spun) = channel_sink(16);
    let spinner_task = tokio::spawn(spinner.to(sink).run());
    // Measure once the spinner spins: an event of it has hit its limit.
    let spinning = plumber_tests::wait_until_async(Duration::from_secs(30), || {
        let skipped: u64 = spinner_handle
            .status()
            .stages()
            .iter()
            .filter_map(|stage| stage.counters.as_ref())
            .map(|counters| counters.skipped.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        std::future::ready(skipped > 0)
    })
    .await;
    assert!(spinning, "the spinner never spun an event to its limit");
    let started = Instant::now();
    let (result, out) = run_collect(worker(rt.clone())).await;
    result.expect("beside the spinner");
    assert_eq!(out.len(), EVENTS);
    let beside = started.elapsed();
    spinner_handle.shutdown();
    spinner_task.await.unwrap().expect("spinner stops cleanly");

    let ratio = beside.as_secs_f64() / alone.as_secs_f64();
    println!(
        "fairness: {EVENTS} events alone {alone:?}, beside a spinning tenant {beside:?}, ratio {ratio:.2} (bound 3.0)"
    );
    assert!(ratio < 3.0, "slowed {ratio:.2}x by a spinning tenant");
}

#[tokio::test]
async fn a_bad_tenant_name_is_refused() {
    let (result, _) = run_collect(pipeline("p", &["x"]).tenant("a/b")).await;
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("tenant name `a/b`"), "{text}");
}

/// Headers count toward `max_output_bytes` (their names, values and a
/// fixed overhead each), on the packed crossing and through the canonical
/// ABI: 100,000 empty headers are 4.8 MB of host memory, not 0 bytes.
#[tokio::test]
async fn headers_count_toward_the_output_byte_limit_on_both_crossings() {
    for packed in [true, false] {
        let (result, out) = run_collect(
            pipeline("headers", &["x"]).then(
                probe(serde_json::json!({"mode": "headers", "headers": 100_000}))
                    .packed(packed)
                    .limits(limits(|l| l.max_output_bytes = 1_000_000)),
            ),
        )
        .await;
        assert_eq!(
            limit_of(&result),
            Some(LimitKind::OutputBytes),
            "packed {packed}: {result:?}"
        );
        let text = ErrorChain(&result.unwrap_err()).to_string();
        assert!(
            text.contains("100000 headers") && text.contains("1000000"),
            "packed {packed}: {text}"
        );
        assert!(out.is_empty());

        // 1,000 empty headers (48 KB counted) are within the same limit.
        let (result, out) = run_collect(
            pipeline("few-headers", &["x"]).then(
                probe(serde_json::json!({"mode": "headers", "headers": 1_000}))
                    .packed(packed)
                    .limits(limits(|l| l.max_output_bytes = 1_000_000)),
            ),
        )
        .await;
        result.unwrap_or_else(|e| panic!("packed {packed}: {e}"));
        assert_eq!(out, vec!["headers"]);
    }
}

/// The attack: one packed event with 10 million empty headers,
/// default limits. It is refused as over `max_output_bytes` before the
/// host allocates the headers (it used to take the host past 1 GB).
#[tokio::test]
async fn ten_million_empty_headers_are_refused_by_the_default_limits() {
    let (result, out) = run_collect(pipeline("header-flood", &["x"]).then(probe(
        serde_json::json!({"mode": "headers", "headers": 10_000_000}),
    )))
    .await;
    assert_eq!(
        limit_of(&result),
        Some(LimitKind::OutputBytes),
        "{result:?}"
    );
    assert!(out.is_empty());
}

/// Through the canonical ABI, an answer larger than the host copies out
/// of a guest at once (its hostcall fuel: 128 MiB here, the floor) is
/// stopped while wasmtime copies it, not allocated whole and then refused:
/// a limit error, not a trap, and the instance is created again so the
/// next call runs. 3,000,000 headers are 144 MB in host memory.
#[tokio::test]
async fn an_answer_too_large_to_copy_is_an_output_limit_on_the_canonical_crossing() {
    let flood = || {
        probe(serde_json::json!({"mode": "headers", "headers": 3_000_000}))
            .packed(false)
            .limits(limits(|l| {
                l.memory_bytes = 512 << 20;
                l.max_output_bytes = 1 << 20;
            }))
    };
    let (result, _) = run_collect(pipeline("copy-stop", &["x"]).then(flood())).await;
    assert_eq!(
        limit_of(&result),
        Some(LimitKind::OutputBytes),
        "{result:?}"
    );
    let text = ErrorChain(&result.unwrap_err()).to_string();
    assert!(text.contains("stopped while it was copied"), "{text}");

    let builder = pipeline("copy-stop-skip", &["x", "y"])
        .batch_size(1)
        .then(flood().on_error(OnError::Skip));
    let handle = builder.handle();
    let (result, out) = run_collect(builder).await;
    result.expect("skip keeps the pipeline running");
    assert!(out.is_empty());
    let stages = handle.status().stages();
    let counters = stages[0].counters.as_ref().unwrap();
    assert_eq!(counters.traps.load(Ordering::Relaxed), 0);
    assert_eq!(
        counters.limits[3].load(Ordering::Relaxed),
        2,
        "output_bytes"
    );
    assert_eq!(counters.skipped.load(Ordering::Relaxed), 2);
    assert_eq!(counters.restarts.load(Ordering::Relaxed), 2);
}

/// A guest that fails with a 20 MB message: the host keeps the first
/// 4 KiB and the length, so the dead letter (and the log line) carries
/// kilobytes, not the whole message per event.
#[tokio::test]
async fn a_huge_guest_error_is_cut_before_it_reaches_dead_letters() {
    let (dead, mut letters) = channel_sink(64);
    let (result, out) = run_collect(
        pipeline("huge-error", &["a", "b"])
            .batch_size(1)
            .dead_letter(dead)
            .then(
                probe(serde_json::json!({"mode": "error", "bytes": 20_000_000}))
                    .on_error(OnError::DeadLetter),
            ),
    )
    .await;
    result.expect("dead-lettering keeps the pipeline running");
    assert!(out.is_empty());
    for value in ["a", "b"] {
        let letter = letters.try_recv().expect("a dead letter per event");
        assert_eq!(letter.value, value.as_bytes());
        let error = letter
            .headers
            .iter()
            .find(|(k, _)| k == ERROR_HEADER)
            .map(|(_, v)| v.as_str())
            .expect("an error header");
        assert!(
            error.len() <= plumber::runtime::MAX_MESSAGE_BYTES + 200,
            "{} bytes",
            error.len()
        );
        assert!(
            error.contains("eeee") && error.ends_with("… (20000000 bytes in all)"),
            "{}",
            &error[error.len().saturating_sub(100)..]
        );
    }
}

/// Counts the formatted log lines that contain `needle`.
#[derive(Clone)]
struct LineCounter {
    counts: Arc<std::sync::Mutex<HashMap<&'static str, usize>>>,
}

impl LineCounter {
    const NEEDLES: [&'static str; 2] = ["flood line", "dropping lines"];

    fn new() -> Self {
        LineCounter {
            counts: Arc::default(),
        }
    }

    fn count(&self, needle: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(needle)
            .copied()
            .unwrap_or(0)
    }
}

impl std::io::Write for LineCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let mut counts = self.counts.lock().unwrap();
        for line in text.lines() {
            for needle in Self::NEEDLES {
                if line.contains(needle) {
                    *counts.entry(needle).or_default() += 1;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A guest that logs 200,000 lines in one call (through `log`, then to its
/// stdout): the host writes about its rate's worth (100 lines a second,
/// plus a one-second burst), says once that it drops lines, and counts the
/// rest as dropped. The log lines are counted where they are written.
#[tokio::test]
async fn a_flooding_guest_log_is_held_to_its_rate_and_the_drops_counted() {
    const LINES: u64 = 200_000;
    let counter = LineCounter::new();
    let writer = counter.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    for stdout in [false, true] {
        let before = counter.count("flood line");
        let started = Instant::now();
        let builder = pipeline("flood", &["x"]).then(probe(
            serde_json::json!({"mode": "log_flood", "lines": LINES, "stdout": stdout}),
        ));
        let handle = builder.handle();
        let (result, out) = run_collect(builder).await;
        result.expect("runs");
        assert_eq!(out, vec!["x"]);
        let seconds = started.elapsed().as_secs_f64();
        let written = (counter.count("flood line") - before) as u64;
        let allowed =
            u64::from(plumber::runtime::LOG_LINES_PER_SECOND) * (1 + seconds.ceil() as u64);
        println!("log flood (stdout {stdout}): {LINES} lines in {seconds:.2} s, {written} written");
        assert!(
            written >= 50 && written <= allowed,
            "{written} lines written"
        );
        let stages = handle.status().stages();
        let counters = stages[0].counters.as_ref().unwrap();
        assert_eq!(
            counters.log_dropped.load(Ordering::Relaxed),
            LINES - written,
            "stdout {stdout}"
        );
    }
    // One warning per flood (they take less than its ten-second interval).
    assert_eq!(counter.count("dropping lines"), 2);
}
