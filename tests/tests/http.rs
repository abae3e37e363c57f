//! The HTTP source and sink against real loopback servers.

use plumber::ErrorChain;
use plumber_tests as harness;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::config::ReadStandard;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::step::WasmPipe;
use plumber::streams::http::{HttpSink, HttpSource};
use plumber::streams::{channel_sink, Sink, Source};
use plumber::{Batch, Event};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LOCAL: &str = "127.0.0.1:0";

/// What a POST got back: status, `Retry-After`, body.
type Answer = (u16, Option<String>, String);

async fn bind(capacity: usize) -> (HttpSource, String) {
    let source = HttpSource::bind(LOCAL.parse().unwrap(), "/events", capacity)
        .await
        .unwrap();
    let url = format!("http://{}/events", source.local_addr());
    (source, url)
}

/// POSTs `body` in a task, with `content_type` when given.
fn post(url: &str, content_type: Option<&str>, body: impl Into<Vec<u8>>) -> JoinHandle<Answer> {
    let mut request = reqwest::Client::new().post(url).body(body.into());
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    tokio::spawn(async move {
        let response = request.send().await.expect("the POST gets an answer");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        (status, retry_after, response.text().await.unwrap())
    })
}

fn post_json(url: &str, body: serde_json::Value) -> JoinHandle<Answer> {
    post(url, Some("application/json"), body.to_string())
}

async fn answer(post: JoinHandle<Answer>) -> Answer {
    timeout(Duration::from_secs(10), post)
        .await
        .expect("the POST is answered in time")
        .unwrap()
}

async fn next_batch(source: &mut HttpSource, max: usize) -> (Vec<Event>, Position) {
    timeout(Duration::from_secs(10), source.next_batch(max))
        .await
        .expect("a batch in time")
        .unwrap()
        .expect("the source does not end")
}

/// Still waiting for an answer after a moment.
async fn assert_pending(post: &JoinHandle<Answer>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!post.is_finished(), "answered before its commit");
}

#[tokio::test]
async fn json_event_is_answered_202_only_after_its_commit() {
    let (mut source, url) = bind(4).await;
    let mut listener = source
        .commit_listener()
        .expect("an HTTP source listens for commits");
    let request = post_json(
        &url,
        json!({"value": "hello", "key": "k1", "timestamp": 1_800_000_000_000u64, "headers": {"h": "v"}}),
    );
    let (events, position) = next_batch(&mut source, 100).await;
    assert_eq!(
        events,
        vec![Event {
            key: Some(b"k1".to_vec()),
            value: b"hello".to_vec(),
            timestamp: Some(1_800_000_000_000),
            headers: vec![("h".to_owned(), "v".to_owned())],
        }]
    );
    assert_eq!(position, Position::Offset(1));
    assert_pending(&request).await;
    // A commit that does not cover the event does not answer it.
    listener.committed(&Position::Offset(0)).await.unwrap();
    assert_pending(&request).await;
    listener.committed(&Position::Offset(1)).await.unwrap();
    assert_eq!(
        answer(request).await,
        (202, None, r#"{"accepted":1}"#.to_owned())
    );
}

#[tokio::test]
async fn json_array_is_one_request_split_over_batches() {
    let (mut source, url) = bind(4).await;
    let mut listener = source.commit_listener().unwrap();
    // A position of another kind of source is refused.
    let file = Position::Source {
        kind: "file".into(),
        value: json!({"offset": 2}),
    };
    let error = ErrorChain(&source.seek(&file).await.unwrap_err()).to_string();
    assert!(error.contains("another kind of source"), "{error}");
    // A restarted pipeline continues the count from its checkpoint.
    source.seek(&Position::Offset(10)).await.unwrap();
    let request = post_json(
        &url,
        json!([{"value": "a"}, {"value": "b", "key": "x"}, {"value": "c", "timestamp": 7}]),
    );
    let (first, position) = next_batch(&mut source, 2).await;
    assert_eq!(first, vec![Event::new("a"), Event::new("b").with_key("x")]);
    assert_eq!(position, Position::Offset(12));
    let (second, position) = next_batch(&mut source, 2).await;
    assert_eq!(second, vec![Event::new("c").with_timestamp(7)]);
    assert_eq!(position, Position::Offset(13));
    // Part of the request is not enough.
    listener.committed(&Position::Offset(12)).await.unwrap();
    assert_pending(&request).await;
    listener.committed(&Position::Offset(13)).await.unwrap();
    assert_eq!(
        answer(request).await,
        (202, None, r#"{"accepted":3}"#.to_owned())
    );
}

#[tokio::test]
async fn raw_body_is_one_event_value() {
    let (mut source, url) = bind(4).await;
    let mut listener = source.commit_listener().unwrap();
    let text = post(
        &url,
        Some("text/plain; charset=utf-8"),
        "line one\nline two",
    );
    let (events, position) = next_batch(&mut source, 100).await;
    assert_eq!(events, vec![Event::new("line one\nline two")]);
    assert_eq!(position, Position::Offset(1));
    // No content type at all; JSON-looking text is still the raw value.
    let untyped = post(&url, None, vec![b'{', 0xff, b'}']);
    let (events, position) = next_batch(&mut source, 100).await;
    assert_eq!(events, vec![Event::new(vec![b'{', 0xff, b'}'])]);
    assert_eq!(position, Position::Offset(2));
    // One commit answers both.
    listener.committed(&Position::Offset(2)).await.unwrap();
    assert_eq!(
        answer(text).await,
        (202, None, r#"{"accepted":1}"#.to_owned())
    );
    assert_eq!(
        answer(untyped).await,
        (202, None, r#"{"accepted":1}"#.to_owned())
    );
}

#[tokio::test]
async fn malformed_json_gets_400_saying_what_is_wrong() {
    let (mut source, url) = bind(4).await;
    let cases = [
        (
            r#"{"value": "#,
            "the body is not valid JSON: EOF while parsing a value at line 1 column 10\n",
        ),
        (r#"{"key": "k"}"#, "not an event: missing field `value`\n"),
        (
            r#"[{"value": "a"}, {"value": 1}]"#,
            "event 1 of the array: not an event: invalid type: integer `1`, expected a string\n",
        ),
        (
            r#"[{"value": "a"}, "b"]"#,
            "event 1 of the array: expected an event object {\"value\": \"...\"}, got a string\n",
        ),
        (
            r#""hello""#,
            "expected an event object or an array of event objects, got a string\n",
        ),
        (
            r#"{"value": "a", "colour": "red"}"#,
            "not an event: unknown field `colour`, expected one of `value`, `value_hex`, `key`, `key_hex`, `timestamp`, `headers`\n",
        ),
    ];
    for (body, message) in cases {
        let got = answer(post(&url, Some("application/json"), body)).await;
        assert_eq!(got, (400, None, message.to_owned()), "for {body}");
    }
    // Nothing reached the source.
    assert!(timeout(Duration::from_millis(300), source.next_batch(100))
        .await
        .is_err());
}

#[tokio::test]
async fn oversized_request_gets_429_and_other_paths_and_methods_are_refused() {
    let (source, url) = bind(4).await;
    let source = source.max_batch(2);
    let got = answer(post_json(
        &url,
        json!([{"value": "a"}, {"value": "b"}, {"value": "c"}]),
    ))
    .await;
    assert_eq!(
        got,
        (
            429,
            None,
            "the request holds 3 events, more than the 2 accepted in one request: split it\n"
                .to_owned()
        )
    );
    let other = format!("http://{}/other", source.local_addr());
    let got = answer(post(&other, None, "x")).await;
    assert_eq!(
        got,
        (
            404,
            None,
            "no such path: POST events to `/events`\n".to_owned()
        )
    );
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    // An empty batch has nothing to commit: accepted at once.
    assert_eq!(
        answer(post_json(&url, json!([]))).await,
        (202, None, r#"{"accepted":0}"#.to_owned())
    );
}

#[tokio::test]
async fn bind_failure_names_the_address_and_dropping_the_source_stops_the_server() {
    let (source, _) = bind(1).await;
    let addr: SocketAddr = source.local_addr();
    let error = HttpSource::bind(addr, "/events", 1)
        .await
        .err()
        .expect("the address is taken");
    let message = ErrorChain(&error).to_string();
    assert!(
        message.starts_with(&format!("HTTP source `http://{addr}/events`: bind: ")),
        "{message}"
    );
    let error = HttpSource::bind(LOCAL.parse().unwrap(), "events", 1)
        .await
        .err()
        .expect("a path must start with /");
    assert_eq!(
        ErrorChain(&error).to_string(),
        "HTTP source `http://127.0.0.1:0events`: check the path: the path `events` does not start with `/`"
    );
    drop(source);
    // Once the listener is closed, connecting is refused (a connection made
    // while it closes may be accepted or reset first).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the server is still there after the source was dropped: {other:?}"),
        }
    }
}

fn runtime() -> Runtime {
    Runtime::new(Some(harness::cache_dir())).unwrap()
}

#[tokio::test]
async fn pipeline_answers_202_only_after_a_checkpoint_commits() {
    let (source, url) = bind(4).await;
    let (sink, mut out) = channel_sink(16);
    let builder = Pipeline::builder("http")
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::at_end_only())
        .from(source)
        .then(WasmPipe::new("upper", harness::guest("upper")))
        .to(sink);
    let handle = builder.handle();
    let run = tokio::spawn(builder.run());

    let first = post_json(&url, json!({"value": "hello"}));
    let event = timeout(Duration::from_secs(60), out.recv())
        .await
        .expect("the event goes through the pipeline")
        .unwrap();
    assert_eq!(event.value_lossy(), "HELLO");
    // Processed and written, but no checkpoint covers it yet.
    assert_pending(&first).await;
    handle.checkpoint();
    assert_eq!(
        answer(first).await,
        (202, None, r#"{"accepted":1}"#.to_owned())
    );

    // The final checkpoint of a clean stop answers the rest.
    let second = post(&url, Some("text/plain"), "bye");
    let event = timeout(Duration::from_secs(10), out.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(event.value_lossy(), "BYE");
    assert_pending(&second).await;
    handle.shutdown();
    assert_eq!(
        answer(second).await,
        (202, None, r#"{"accepted":1}"#.to_owned())
    );
    let report = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.events_in, 2);
    assert_eq!(report.checkpoints, 2);
    assert_eq!(
        report.last_checkpoint.map(|c| c.position),
        Some(Position::Offset(2))
    );
}

#[tokio::test]
async fn full_pipeline_answers_503_with_retry_after() {
    let (source, url) = bind(1).await;
    // Nobody reads the sink's channel, so the pipeline backs up.
    let (sink, mut out) = channel_sink(1);
    let builder = Pipeline::builder("http-full")
        .checkpoint(CheckpointPolicy::at_end_only())
        .batch_size(1)
        .channel_capacity(1)
        .from(source)
        .to(sink);
    let handle = builder.handle();
    let run = tokio::spawn(builder.run());

    let mut pending: Vec<(String, JoinHandle<Answer>)> = Vec::new();
    let mut refused = None;
    for i in 0..50 {
        let value = format!("e{i}");
        let mut request = post(&url, Some("text/plain"), value.clone());
        match timeout(Duration::from_millis(300), &mut request).await {
            Ok(answered) => {
                refused = Some(answered.unwrap());
                break;
            }
            // Taken in: it waits for a commit that cannot come yet.
            Err(_) => pending.push((value, request)),
        }
    }
    assert_eq!(
        refused,
        Some((
            503,
            Some("1".to_owned()),
            "the pipeline is full: retry later\n".to_owned()
        ))
    );
    assert!(!pending.is_empty());

    // Unblock the sink and stop: the final checkpoint answers what reached
    // the pipeline with 202; what was still queued in the source gets 503.
    let drain = tokio::spawn(async move {
        let mut received = Vec::new();
        while let Some(event) = out.recv().await {
            received.push(event.value_lossy().into_owned());
        }
        received
    });
    handle.shutdown();
    let mut acknowledged = Vec::new();
    for (value, request) in pending {
        match answer(request).await {
            (202, None, body) => {
                assert_eq!(body, r#"{"accepted":1}"#);
                acknowledged.push(value);
            }
            (503, Some(retry), body) => {
                assert_eq!(retry, "1");
                assert_eq!(
                    body,
                    "the pipeline stopped before the events were committed: retry\n"
                );
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let report = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let received = drain.await.unwrap();
    // Exactly the acknowledged events went through, in order.
    assert!(!acknowledged.is_empty());
    assert_eq!(received, acknowledged);
    assert_eq!(report.events_in, acknowledged.len() as u64);
    assert_eq!(
        report.last_checkpoint.map(|c| c.position),
        Some(Position::Offset(acknowledged.len() as u64))
    );
}

/// A receiver for the sink: answers POSTs with the planned statuses (then
/// `default`), after `delay`, and records every body.
#[derive(Default)]
struct Receiver {
    plan: Mutex<VecDeque<u16>>,
    default: u16,
    delay: Duration,
    /// Every body received, with the status it was answered.
    received: Mutex<Vec<(u16, serde_json::Value)>>,
    content_types: Mutex<Vec<String>>,
    /// When each request came.
    times: Mutex<Vec<std::time::Instant>>,
}

impl Receiver {
    fn received(&self) -> Vec<(u16, serde_json::Value)> {
        self.received.lock().unwrap().clone()
    }
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let status = receiver
        .plan
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(receiver.default);
    receiver
        .times
        .lock()
        .unwrap()
        .push(std::time::Instant::now());
    let parsed = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    receiver.received.lock().unwrap().push((status, parsed));
    receiver.content_types.lock().unwrap().push(
        headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
    );
    tokio::time::sleep(receiver.delay).await;
    let text = if status < 300 {
        "ok"
    } else if status < 500 {
        "no"
    } else {
        "busy"
    };
    (StatusCode::from_u16(status).unwrap(), text)
}

async fn start_receiver(plan: &[u16], default: u16, delay: Duration) -> (String, Arc<Receiver>) {
    let receiver = Arc::new(Receiver {
        plan: Mutex::new(plan.iter().copied().collect()),
        default,
        delay,
        ..Receiver::default()
    });
    let app = axum::Router::new()
        .route("/in", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(LOCAL).await.unwrap();
    let url = format!("http://{}/in", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, receiver)
}

fn sample_batches() -> (Vec<Batch>, serde_json::Value) {
    let mut keyed = Event::new(b"v\xff".to_vec())
        .with_key("k")
        .with_timestamp(5);
    keyed.headers.push(("h".to_owned(), "1".to_owned()));
    let batches = vec![
        Batch::new(vec![Event::new("plain"), keyed]),
        Batch::new(vec![Event::new("last")]),
    ];
    let expected = json!([
        {"value": "plain", "headers": {}},
        {"value": "v\u{FFFD}", "key": "k", "timestamp": 5, "headers": {"h": "1"}},
        {"value": "last", "headers": {}}
    ]);
    (batches, expected)
}

#[tokio::test]
async fn sink_posts_one_batch_per_flush_and_retries_503() {
    let (url, receiver) = start_receiver(&[503, 503], 200, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url);
    let (batches, expected) = sample_batches();
    for batch in batches {
        sink.write(batch).await.unwrap();
    }
    // Writing only buffers.
    assert!(receiver.received().is_empty());
    let started = Instant::now();
    sink.flush().await.unwrap();
    // Two failures: waits of 50 ms and 100 ms before the retries (the
    // reconnect policy of every connector).
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(
        receiver.received(),
        vec![
            (503, expected.clone()),
            (503, expected.clone()),
            (200, expected.clone())
        ]
    );
    let accepted: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|(status, _)| *status == 200)
        .collect();
    assert_eq!(accepted, vec![(200, expected)]);
    assert_eq!(
        *receiver.content_types.lock().unwrap(),
        vec!["application/json"; 3]
    );
    // Nothing buffered: a flush sends nothing.
    sink.flush().await.unwrap();
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn sink_posts_early_when_its_buffer_is_full() {
    let (url, receiver) = start_receiver(&[], 200, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url).max_buffered(2);
    sink.write(Batch::new(vec![Event::new("a")])).await.unwrap();
    assert!(receiver.received().is_empty());
    sink.write(Batch::new(vec![Event::new("b")])).await.unwrap();
    sink.write(Batch::new(vec![Event::new("c")])).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(
        receiver.received(),
        vec![
            (
                200,
                json!([{"value": "a", "headers": {}}, {"value": "b", "headers": {}}])
            ),
            (200, json!([{"value": "c", "headers": {}}]))
        ]
    );
}

#[tokio::test]
async fn sink_gives_up_after_max_retries_naming_the_url() {
    let (url, receiver) = start_receiver(&[], 503, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url).max_retries(2);
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(
        error.starts_with(&format!(
            "HTTP sink `{url}`: POST: gave up after 3 attempts in "
        )) && error.ends_with(&format!(
            "(the HTTP server of {url}); last error: status 503 Service Unavailable: busy"
        )),
        "{error}"
    );
    assert_eq!(receiver.received().len(), 3);

    // A 4xx other than 429 is not retried.
    let (url, receiver) = start_receiver(&[], 400, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url).max_retries(2);
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let error = sink.flush().await.unwrap_err();
    assert_eq!(
        ErrorChain(&error).to_string(),
        format!("HTTP sink `{url}`: POST: refused with status 400 Bad Request: no")
    );
    assert_eq!(receiver.received().len(), 1);

    // 429 is retried like a 5xx.
    let (url, receiver) = start_receiver(&[429], 200, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url).max_retries(2);
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    sink.flush().await.unwrap();
    assert_eq!(receiver.received().len(), 2);

    // Nothing listens: connection errors are retried, then reported.
    let url = format!("http://127.0.0.1:{}/in", harness::free_port());
    let mut sink = HttpSink::new(&url).max_retries(1);
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let message = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(
        message.starts_with(&format!(
            "HTTP sink `{url}`: POST: gave up after 2 attempts in "
        )),
        "{message}"
    );
}

/// The HTTP sink retries as the other connectors do (docs/connectors.md, "Retries"):
/// jittered waits from 50–100 ms doubling up to 1–2 s, for the reconnect
/// timeout since the first failure, then an error naming the server and how
/// long it waited.
#[tokio::test]
async fn sink_retries_for_the_reconnect_timeout_like_the_other_connectors() {
    let (url, receiver) = start_receiver(&[], 503, Duration::ZERO).await;
    let mut sink = HttpSink::new(&url).reconnect_timeout(Duration::from_millis(1_000));
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(
        error.contains("gave up after waiting")
            && error.contains(&format!("the HTTP server of {url}"))
            && error.contains("reconnect timeout 1s")
            && error.ends_with("status 503 Service Unavailable: busy"),
        "{error}"
    );
    // Attempts after waits of at least 50, 100, 200 and 400 ms (jitter adds
    // up to as much again), except that a wait ends at the timeout (one more
    // attempt then): 5 or 6 attempts on an idle machine, fewer when requests
    // are slow. The timeout runs from the first failure, which comes after
    // the first request arrived, so a gap is at least its wait or what was
    // left until first request + 1 s, whichever is less.
    let times = receiver.times.lock().unwrap().clone();
    assert!((4..=6).contains(&times.len()), "{} attempts", times.len());
    let timeout_after = times[0] + Duration::from_millis(1_000);
    for (pair, wanted) in times.windows(2).zip([50, 100, 200, 400]) {
        let gap = pair[1] - pair[0];
        let least =
            Duration::from_millis(wanted).min(timeout_after.saturating_duration_since(pair[0]));
        assert!(
            gap >= least,
            "{gap:?} < {least:?} (the policy's {wanted} ms)"
        );
    }

    // From the JSON config: `reconnect_timeout_ms`.
    let config = plumber::config::PipelineConfig::parse(
        &json!({
            "name": "p", "from": {"type": "array", "values": ["x"]},
            "to": {"type": "http", "url": url, "reconnect_timeout_ms": 300, "timeout_ms": 1000}
        })
        .to_string(),
        "test.json",
        std::path::Path::new("."),
    )
    .unwrap();
    let mut sink = config
        .to
        .as_ref()
        .expect("a line's sink")
        .open(&plumber::config::OpenContext::new("p"))
        .await
        .unwrap();
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let started = Instant::now();
    let error = ErrorChain(&sink.flush().await.unwrap_err()).to_string();
    assert!(error.contains("reconnect timeout 300ms"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sink_times_out_a_slow_receiver() {
    let (url, receiver) = start_receiver(&[], 200, Duration::from_secs(30)).await;
    let mut sink = HttpSink::new(&url)
        .timeout(Duration::from_millis(200))
        .max_retries(1);
    sink.write(Batch::new(vec![Event::new("x")])).await.unwrap();
    let started = Instant::now();
    let error = sink.flush().await.unwrap_err();
    // Two attempts of 200 ms and a 50–100 ms wait, far from the receiver's 30 s.
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = ErrorChain(&error).to_string();
    assert!(
        error.starts_with(&format!(
            "HTTP sink `{url}`: POST: gave up after 2 attempts in "
        )) && error.ends_with("; last error: timed out after 200ms"),
        "{error}"
    );
    // Both attempts reached the receiver: a timed-out POST may be delivered.
    assert_eq!(receiver.received().len(), 2);
}

#[tokio::test]
async fn interval_checkpoints_answer_without_being_asked() {
    let (source, url) = bind(4).await;
    let (sink, mut out) = channel_sink(16);
    let builder = Pipeline::builder("http-interval")
        .runtime(runtime())
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(200)))
        .from(source)
        .then(WasmPipe::new("upper", harness::guest("upper")))
        .to(sink);
    let handle = builder.handle();
    let run = tokio::spawn(builder.run());
    let request = post_json(&url, json!([{"value": "a"}, {"value": "b"}]));
    assert_eq!(
        answer(request).await,
        (202, None, r#"{"accepted":2}"#.to_owned())
    );
    // Answered after the events went through and were committed.
    assert_eq!(out.try_recv().unwrap().value_lossy(), "A");
    assert_eq!(out.try_recv().unwrap().value_lossy(), "B");
    handle.shutdown();
    let report = timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.events_in, 2);
    assert_eq!(
        report.last_checkpoint.map(|c| c.position),
        Some(Position::Offset(2))
    );
}
