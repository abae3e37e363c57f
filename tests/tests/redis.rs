//! The Redis state backend against a real `redis-server`.
//!
//! Each test starts its own server on a free loopback port, in a temporary
//! directory, and stops it when done. The tests
//! need `redis-server` on the `PATH` (or its path in `PLUMBER_REDIS_SERVER`)
//! and fail if it is missing.

use plumber_tests as harness;

use std::time::{Duration, Instant};

use harness::{free_port, raw_command, RedisServer};

use plumber::checkpoint::{CheckpointRecord, Position};
use plumber::state::{RedisOptions, RedisState, StateBackend, StateError, WriteSet};

/// Shows the backend's log lines in a failing test's output.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("plumber_connectors=debug")
        .try_init();
}

async fn connect_to(url: &str, reconnect_timeout: Duration) -> RedisState {
    init_logs();
    let options = RedisOptions {
        reconnect_timeout,
        ..RedisOptions::default()
    };
    match RedisState::connect(url, options).await {
        Ok(state) => state,
        Err(error) => panic!("connect to {url}: {error}"),
    }
}

fn record(pipeline: &str, epoch: u64, offset: u64, fence: u64) -> CheckpointRecord {
    let mut record = CheckpointRecord::new(pipeline, epoch, Position::Offset(offset));
    record.fence = fence;
    record
}

fn writes(entries: &[(&[u8], Option<&[u8]>)]) -> WriteSet {
    entries
        .iter()
        .map(|(key, value)| (key.to_vec(), value.map(<[u8]>::to_vec)))
        .collect()
}

const LONG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn get_set_delete_and_add() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    assert_eq!(state.kind(), "redis");
    assert_eq!(state.address(), server.address());

    assert_eq!(state.get(b"k").await.unwrap(), None);
    state.set(b"k", b"v").await.unwrap();
    assert_eq!(state.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    // Keys and values are binary-safe.
    let odd_key: &[u8] = b"\x00bin\r\n\xff";
    state.set(odd_key, b"\x00\xff\r\n").await.unwrap();
    assert_eq!(
        state.get(odd_key).await.unwrap(),
        Some(b"\x00\xff\r\n".to_vec())
    );
    state.delete(b"k").await.unwrap();
    assert_eq!(state.get(b"k").await.unwrap(), None);
    state.delete(b"never there").await.unwrap();

    assert_eq!(state.add(b"n", 5).await.unwrap(), 5);
    assert_eq!(state.add(b"n", -7).await.unwrap(), -2);
    assert_eq!(state.get(b"n").await.unwrap(), Some(b"-2".to_vec()));

    state.set(b"name", b"ada").await.unwrap();
    match state.add(b"name", 1).await {
        Err(StateError::Invalid(message)) => assert!(message.contains("name"), "{message}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    state
        .set(b"big", i64::MAX.to_string().as_bytes())
        .await
        .unwrap();
    assert!(matches!(
        state.add(b"big", 1).await,
        Err(StateError::Invalid(message)) if message.contains("overflow")
    ));

    // The keys live under the default prefix.
    assert_eq!(
        raw_command(server.port(), &[b"EXISTS", b"plumber:s:name"]).unwrap(),
        ":1"
    );
}

#[tokio::test]
async fn commit_applies_write_sets_and_record() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    state.set(b"gone", b"old").await.unwrap();
    state.set(b"shared", b"old").await.unwrap();
    assert!(state.last_checkpoint("p").await.unwrap().is_none());

    let token = state.claim("p").await.unwrap();
    assert_eq!(token, 1);
    let first = writes(&[
        (b"a", Some(b"1")),
        (b"gone", None),
        (b"shared", Some(b"first")),
    ]);
    let second = writes(&[(b"b", Some(b"\x00two")), (b"shared", Some(b"second"))]);
    let committed = record("p", 1, 42, token);
    state.commit(&committed, &[first, second]).await.unwrap();

    assert_eq!(state.get(b"a").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(state.get(b"b").await.unwrap(), Some(b"\x00two".to_vec()));
    assert_eq!(state.get(b"gone").await.unwrap(), None);
    // A later write set wins on a key both wrote.
    assert_eq!(
        state.get(b"shared").await.unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(state.last_checkpoint("p").await.unwrap(), Some(committed));
    assert!(state.last_checkpoint("other").await.unwrap().is_none());
    assert_eq!(
        raw_command(server.port(), &[b"GET", b"plumber:e:p"]).unwrap(),
        "1"
    );

    // The next epoch commits on top.
    let next = record("p", 2, 50, token);
    state
        .commit(&next, &[writes(&[(b"a", Some(b"2"))])])
        .await
        .unwrap();
    assert_eq!(state.get(b"a").await.unwrap(), Some(b"2".to_vec()));
    assert_eq!(state.last_checkpoint("p").await.unwrap(), Some(next));

    // A commit without writes stores the record alone.
    let bare = record("p", 3, 60, token);
    state.commit(&bare, &[]).await.unwrap();
    assert_eq!(state.last_checkpoint("p").await.unwrap(), Some(bare));
}

#[tokio::test]
async fn commit_with_an_older_fence_is_refused_and_changes_nothing() {
    let server = RedisServer::start();
    let old = connect_to(&server.url(), LONG).await;
    let new = connect_to(&server.url(), LONG).await;

    let ours = old.claim("p").await.unwrap();
    let first = record("p", 1, 10, ours);
    old.commit(&first, &[writes(&[(b"k", Some(b"old-1"))])])
        .await
        .unwrap();

    let newer = new.claim("p").await.unwrap();
    assert!(newer > ours);

    let stale = record("p", 2, 20, ours);
    match old
        .commit(
            &stale,
            &[writes(&[(b"k", Some(b"old-2")), (b"x", Some(b"x"))])],
        )
        .await
    {
        Err(StateError::Fenced {
            pipeline,
            ours: got_ours,
            newer: got_newer,
        }) => {
            assert_eq!(pipeline, "p");
            assert_eq!((got_ours, got_newer), (ours, newer));
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    // (Read through a connection that claimed nothing: the old owner's
    // own reads are fenced now, see the next test.)
    let observer = connect_to(&server.url(), LONG).await;
    assert_eq!(observer.get(b"k").await.unwrap(), Some(b"old-1".to_vec()));
    assert_eq!(observer.get(b"x").await.unwrap(), None);
    assert_eq!(old.last_checkpoint("p").await.unwrap(), Some(first));

    // The new owner commits with its token; another pipeline is not fenced.
    let taken_over = record("p", 2, 20, newer);
    new.commit(&taken_over, &[writes(&[(b"k", Some(b"new-2"))])])
        .await
        .unwrap();
    assert_eq!(new.get(b"k").await.unwrap(), Some(b"new-2".to_vec()));
    old.commit(&record("q", 1, 1, 0), &[]).await.unwrap();
}

/// A process paused past its lease (a zombie) must not compute with the
/// state a newer owner committed beyond its own position: once a newer
/// process claimed the pipeline, the old owner's reads fail like its
/// commits, single and batched, while the new owner and a connection that
/// claimed nothing read on.
#[tokio::test]
async fn reads_after_a_newer_claim_are_refused_by_the_fence() {
    let server = RedisServer::start();
    let old = connect_to(&server.url(), LONG).await;
    let new = connect_to(&server.url(), LONG).await;
    let observer = connect_to(&server.url(), LONG).await;

    let ours = old.claim("p").await.unwrap();
    old.commit(&record("p", 1, 10, ours), &[writes(&[(b"k", Some(b"1"))])])
        .await
        .unwrap();
    // Before the takeover the owner reads its own state.
    assert_eq!(old.get(b"k").await.unwrap(), Some(b"1".to_vec()));
    let many: Vec<Vec<u8>> = (0..2_500).map(|i| format!("m{i}").into_bytes()).collect();
    assert_eq!(old.get_many(&many).await.unwrap(), vec![None; 2_500]);

    let newer = new.claim("p").await.unwrap();
    assert!(newer > ours);
    let mut moved: Vec<(&[u8], Option<&[u8]>)> = vec![(b"k", Some(b"7"))];
    let values: Vec<Vec<u8>> = (0..2_500).map(|i| i.to_string().into_bytes()).collect();
    moved.extend(
        many.iter()
            .zip(&values)
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice()))),
    );
    new.commit(&record("p", 2, 20, newer), &[writes(&moved)])
        .await
        .unwrap();

    let fenced = |outcome: Result<_, StateError>| match outcome {
        Err(StateError::Fenced {
            pipeline,
            ours: got_ours,
            newer: got_newer,
        }) => {
            assert_eq!(pipeline, "p");
            assert_eq!((got_ours, got_newer), (ours, newer));
        }
        other => panic!("expected Fenced, got {other:?}"),
    };
    fenced(old.get(b"k").await.map(|_| ()));
    fenced(old.get_many(&many).await.map(|_| ()));

    // The new owner, and a connection that claimed nothing, read what was
    // committed (more keys than one MGET of the script takes).
    assert_eq!(new.get(b"k").await.unwrap(), Some(b"7".to_vec()));
    let expected: Vec<Option<Vec<u8>>> = values.iter().cloned().map(Some).collect();
    assert_eq!(new.get_many(&many).await.unwrap(), expected);
    assert_eq!(observer.get_many(&many).await.unwrap(), expected);

    // A connection through which two pipelines claimed does not fence its
    // reads (no one fence applies to both).
    let shared = connect_to(&server.url(), LONG).await;
    shared.claim("a").await.unwrap();
    shared.claim("b").await.unwrap();
    observer.claim("a").await.unwrap();
    assert_eq!(shared.get(b"k").await.unwrap(), Some(b"7".to_vec()));

    // A fenced read of a key of another type is refused the way a plain
    // GET is.
    assert_eq!(
        raw_command(server.port(), &[b"RPUSH", b"plumber:s:list", b"x"]).unwrap(),
        ":1"
    );
    let refused = new.get(b"list").await;
    assert!(
        matches!(&refused, Err(StateError::Invalid(message)) if message.contains("WRONGTYPE")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn repeated_commit_of_an_epoch_is_a_no_op() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    let first = record("p", 1, 10, 0);
    state
        .commit(&first, &[writes(&[(b"k", Some(b"v1"))])])
        .await
        .unwrap();

    // The same epoch again (a retry whose reply was lost), with other content
    // to show that nothing of it lands.
    let again = record("p", 1, 99, 0);
    state
        .commit(
            &again,
            &[writes(&[(b"k", Some(b"v2")), (b"extra", Some(b"e"))])],
        )
        .await
        .unwrap();
    assert_eq!(state.get(b"k").await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(state.get(b"extra").await.unwrap(), None);
    assert_eq!(
        state.last_checkpoint("p").await.unwrap(),
        Some(first.clone())
    );

    // An older epoch is ignored too.
    let second = record("p", 2, 20, 0);
    state
        .commit(&second, &[writes(&[(b"k", Some(b"v3"))])])
        .await
        .unwrap();
    state
        .commit(&record("p", 1, 5, 0), &[writes(&[(b"k", Some(b"v0"))])])
        .await
        .unwrap();
    assert_eq!(state.get(b"k").await.unwrap(), Some(b"v3".to_vec()));
    assert_eq!(state.last_checkpoint("p").await.unwrap(), Some(second));
}

/// A state whose commits go in chunks of `chunk` writes.
async fn chunked(url: &str, chunk: usize) -> RedisState {
    init_logs();
    let options = RedisOptions {
        reconnect_timeout: LONG,
        commit_chunk_keys: chunk,
        ..RedisOptions::default()
    };
    RedisState::connect(url, options).await.expect("connect")
}

/// A commit larger than a chunk is staged and applied in one step: every
/// write lands, a later write set still wins on a shared key, deletions
/// apply, and no staging list is left behind.
#[tokio::test]
async fn a_commit_in_chunks_applies_every_write_and_leaves_no_stage() {
    let server = RedisServer::start();
    let state = chunked(&server.url(), 3).await;
    let token = state.claim("p").await.unwrap();
    state.set(b"gone", b"old").await.unwrap();
    let mut first: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..10)
        .map(|i| {
            (
                format!("a{i}").into_bytes(),
                Some(format!("v{i}").into_bytes()),
            )
        })
        .collect();
    first.push((b"shared".to_vec(), Some(b"first".to_vec())));
    first.push((b"gone".to_vec(), None));
    let second: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (b"shared".to_vec(), Some(b"second".to_vec())),
        (b"b".to_vec(), Some(b"\x00\r\n".to_vec())),
    ];
    let committed = record("p", 1, 7, token);
    state
        .commit(
            &committed,
            &[first.into_iter().collect(), second.into_iter().collect()],
        )
        .await
        .unwrap();
    for i in 0..10 {
        assert_eq!(
            state.get(format!("a{i}").as_bytes()).await.unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    assert_eq!(
        state.get(b"shared").await.unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(state.get(b"b").await.unwrap(), Some(b"\x00\r\n".to_vec()));
    assert_eq!(state.get(b"gone").await.unwrap(), None);
    assert_eq!(state.last_checkpoint("p").await.unwrap(), Some(committed));
    assert_eq!(
        raw_command(server.port(), &[b"EXISTS", b"plumber:w:p"]).unwrap(),
        ":0"
    );
    // Exactly a multiple of the chunk: the last chunk rides with the commit.
    let exact: WriteSet = (0..6)
        .map(|i| (format!("c{i}").into_bytes(), Some(b"x".to_vec())))
        .collect();
    state
        .commit(&record("p", 2, 8, token), &[exact])
        .await
        .unwrap();
    assert_eq!(state.get(b"c5").await.unwrap(), Some(b"x".to_vec()));
}

/// A chunked commit by a process a newer one fenced off stages nothing
/// and applies nothing; a chunked retry of a committed epoch applies
/// nothing either and cleans its stage up; a stage left by a commit that
/// never finished (a crash) is not applied by the next one.
#[tokio::test]
async fn chunked_commits_keep_the_fence_and_the_epoch_checks() {
    let server = RedisServer::start();
    let old = chunked(&server.url(), 2).await;
    let new = chunked(&server.url(), 2).await;
    let ours = old.claim("p").await.unwrap();
    let many = |value: &[u8]| -> WriteSet {
        (0..7)
            .map(|i| (format!("k{i}").into_bytes(), Some(value.to_vec())))
            .collect()
    };
    old.commit(&record("p", 1, 10, ours), &[many(b"1")])
        .await
        .unwrap();
    let newer = new.claim("p").await.unwrap();
    match old
        .commit(&record("p", 2, 20, ours), &[many(b"stale")])
        .await
    {
        Err(StateError::Fenced {
            ours: o, newer: n, ..
        }) => assert_eq!((o, n), (ours, newer)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(
        raw_command(server.port(), &[b"EXISTS", b"plumber:w:p"]).unwrap(),
        ":0",
        "a fenced process staged writes"
    );
    for i in 0..7 {
        assert_eq!(
            new.get(format!("k{i}").as_bytes()).await.unwrap(),
            Some(b"1".to_vec())
        );
    }
    // A stage a crashed commit left (another epoch's, and garbage after it).
    for part in [&b"plumber-stage 2 9"[..], b"plumber:s:k0", b"sfrom a crash"] {
        raw_command(server.port(), &[b"RPUSH", b"plumber:w:p", part]).unwrap();
    }
    let second = record("p", 2, 20, newer);
    new.commit(&second, &[many(b"2")]).await.unwrap();
    // The same epoch again, chunked (a retry after a lost reply).
    new.commit(&record("p", 2, 99, newer), &[many(b"again")])
        .await
        .unwrap();
    for i in 0..7 {
        assert_eq!(
            new.get(format!("k{i}").as_bytes()).await.unwrap(),
            Some(b"2".to_vec())
        );
    }
    assert_eq!(new.last_checkpoint("p").await.unwrap(), Some(second));
    assert_eq!(
        raw_command(server.port(), &[b"EXISTS", b"plumber:w:p"]).unwrap(),
        ":0"
    );
}

#[tokio::test]
async fn scan_prefix_returns_keys_in_order_with_glob_characters() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    let entries: &[(&[u8], &[u8])] = &[
        (b"1:p*x/b", b"2"),
        (b"1:p*x/a", b"1"),
        (b"1:p*x/[c]", b"3"),
        (b"1:p*x/\\?", b"4"),
        (b"1:p*x/\x00\xff", b"5"),
        // Would match the prefix if `*` were a wildcard.
        (b"1:pyyx/a", b"no"),
        (b"1:p*y/a", b"no"),
        (b"1:p", b"no"),
    ];
    for (key, value) in entries {
        state.set(key, value).await.unwrap();
    }
    // Many keys, so SCAN takes several steps.
    for i in 0..2500 {
        state
            .set(format!("1:p*x/n{i:05}").as_bytes(), b"n")
            .await
            .unwrap();
    }

    let found = state.scan_prefix(b"1:p*x/").await.unwrap();
    assert_eq!(found.len(), 2505);
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = entries[..5]
        .iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    expected.extend((0..2500).map(|i| (format!("1:p*x/n{i:05}").into_bytes(), b"n".to_vec())));
    expected.sort();
    assert_eq!(found, expected);

    assert_eq!(
        state.scan_prefix(b"1:p*x/[").await.unwrap(),
        vec![(b"1:p*x/[c]".to_vec(), b"3".to_vec())]
    );
    assert_eq!(
        state.scan_prefix(b"1:p*x/\\").await.unwrap(),
        vec![(b"1:p*x/\\?".to_vec(), b"4".to_vec())]
    );
    assert!(state.scan_prefix(b"nothing").await.unwrap().is_empty());
    assert_eq!(state.scan_prefix(b"").await.unwrap().len(), 2508);

    // Another key prefix (another deployment on the same server) sees none of it.
    let other = RedisState::connect(
        &server.url(),
        RedisOptions {
            key_prefix: "other*:".to_owned(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(other.scan_prefix(b"").await.unwrap().is_empty());
    other.set(b"1:p*x/zzz", b"o").await.unwrap();
    assert_eq!(state.scan_prefix(b"1:p*x/").await.unwrap().len(), 2505);
    assert_eq!(other.scan_prefix(b"").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_operation_waits_for_the_server_to_come_back() {
    let mut server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    state.set(b"before", b"1").await.unwrap();
    // Load the commit script into the first server's script cache.
    state.commit(&record("p", 1, 1, 0), &[]).await.unwrap();

    server.stop();
    server.restart_after(Duration::from_secs(1));
    let started = Instant::now();
    // Issued while the server is down; the new server has an empty script
    // cache, so this also exercises the EVALSHA → EVAL fallback.
    state
        .commit(&record("p", 2, 2, 0), &[writes(&[(b"after", Some(b"2"))])])
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "waited only {waited:?}"
    );
    assert!(waited < LONG, "waited {waited:?}");

    assert_eq!(state.get(b"after").await.unwrap(), Some(b"2".to_vec()));
    // The restarted server replayed its append-only file: nothing acknowledged was lost.
    assert_eq!(state.get(b"before").await.unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        state.last_checkpoint("p").await.unwrap().map(|r| r.epoch),
        Some(2)
    );
}

fn assert_unavailable(error: StateError, address: &str) {
    let text = error.to_string();
    match error {
        StateError::Unavailable {
            backend,
            address: named,
            message,
        } => {
            assert_eq!(backend, "redis");
            assert_eq!(named, address);
            assert!(message.contains("gave up after waiting"), "{message}");
            assert!(text.contains(address), "{text}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_after_the_timeout() {
    init_logs();
    let short = Duration::from_millis(300);

    // No server at all: connecting gives up.
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let outcome = RedisState::connect(
        &format!("redis://{address}/"),
        RedisOptions {
            reconnect_timeout: short,
            ..RedisOptions::default()
        },
    )
    .await;
    let waited = started.elapsed();
    match outcome {
        Ok(_) => panic!("connected to {address}, where no server runs"),
        Err(error) => assert_unavailable(error, &address),
    }
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );

    // A server that goes away: an operation gives up.
    let server = RedisServer::start();
    let state = connect_to(&server.url(), short).await;
    state.set(b"k", b"v").await.unwrap();
    server.stop();
    let started = Instant::now();
    let outcome = state.get(b"k").await;
    let waited = started.elapsed();
    match outcome {
        Ok(value) => panic!("read {value:?} from a stopped server"),
        Err(error) => assert_unavailable(error, &server.address()),
    }
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn errors_other_than_connection_errors_are_not_retried() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), LONG).await;
    // A list where a string belongs.
    assert_eq!(
        raw_command(server.port(), &[b"RPUSH", b"plumber:s:list", b"x"]).unwrap(),
        ":1"
    );
    let started = Instant::now();
    assert!(matches!(
        state.get(b"list").await,
        Err(StateError::Invalid(message)) if message.contains("WRONGTYPE")
    ));
    assert!(matches!(
        state.add(b"list", 1).await,
        Err(StateError::Invalid(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(1));

    // A fencing counter that is not an integer makes the script refuse.
    raw_command(server.port(), &[b"SET", b"plumber:f:p", b"junk"]).unwrap();
    let started = Instant::now();
    match state.commit(&record("p", 1, 1, 1), &[]).await {
        Err(StateError::Unavailable { message, .. }) => {
            assert!(message.contains("not an integer"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        state.claim("p").await,
        Err(StateError::Invalid(message)) if message.contains("not an integer")
    ));
}

#[tokio::test]
async fn a_server_that_does_not_answer_is_unavailable_after_the_timeout() {
    let server = RedisServer::start();
    let state = connect_to(&server.url(), Duration::from_millis(300)).await;
    state.set(b"k", b"v").await.unwrap();
    server.freeze();
    let started = Instant::now();
    let outcome = state.get(b"k").await;
    let waited = started.elapsed();
    match outcome {
        Ok(value) => panic!("read {value:?} from a frozen server"),
        Err(error) => assert_unavailable(error, &server.address()),
    }
    // The command timeout is at least 1 s; nothing waits much beyond it.
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}
