//! HTTP: a source that accepts events POSTed to it, and a sink that POSTs
//! events to a URL.
//!
//! Both speak the JSON event form of the file source: an object
//! `{"value": "...", "key": "...", "timestamp": N, "headers": {"k": "v"}}`
//! (only `value` is required), or an array of such objects for a batch.
//!
//! # Delivery
//!
//! * [`HttpSource`] answers `202 Accepted` only once the request's events
//!   are **durably accepted**: handed to the pipeline *and* covered by a
//!   committed checkpoint. HTTP cannot replay, so this is what makes it
//!   safe: an event whose request got 202 is never lost (after a crash the
//!   pipeline resumes from a checkpoint that includes it), and a client that
//!   got anything else (an error, a timeout, a dropped connection) must send
//!   the request again. From the client's side delivery is at-least-once: a
//!   request whose 202 was lost on the way back is sent twice.
//! * [`HttpSink`] POSTs what was written since the last flush when the
//!   pipeline flushes it (before each checkpoint) and retries failures, so
//!   it is at-least-once: a POST that reached the receiver but whose answer
//!   did not come back is sent again, and output since the last checkpoint
//!   is sent again after a crash.

pub mod config;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::sync::{mpsc, oneshot};

use super::reconnect::Reconnect;
use super::JsonEvent;
use super::{CommitListener, Sink, Source, StreamError};
use plumber_engine::checkpoint::Position;
use plumber_engine::{Batch, ErrorChain, Event};

/// The most events one request may carry unless [`HttpSource::max_batch`]
/// says otherwise.
pub const DEFAULT_MAX_BATCH: usize = 10_000;

/// One request's events on their way to the source, and how to tell the
/// request that they are committed.
struct Accepted {
    events: VecDeque<Event>,
    ack: oneshot::Sender<()>,
}

/// Requests whose events have all been handed out, waiting for a commit:
/// the count of events handed out after each one's last event, in order.
type Waiters = Arc<Mutex<VecDeque<(u64, oneshot::Sender<()>)>>>;

/// What the server's handler shares with the source.
struct Shared {
    path: String,
    sender: mpsc::Sender<Accepted>,
    max_batch: AtomicUsize,
}

/// An HTTP server whose POSTed events are the source's events.
///
/// `POST <path>` takes:
///
/// * with `Content-Type: application/json` (or any `…+json`): one event
///   object `{"value": "...", "key": "...", "timestamp": N, "headers":
///   {...}}` (only `value` is required; unknown fields are refused) or an
///   array of them, a batch that is accepted or refused as a whole;
/// * with any other content type: the raw body as one event's value.
///
/// It answers
///
/// * `202 Accepted` (body `{"accepted": N}`) once the events are **durably
///   accepted**: handed to the pipeline and covered by a committed
///   checkpoint. The request waits until then, so a client should allow
///   for the pipeline's checkpoint interval in its timeout;
/// * `400 Bad Request` with a message saying what is wrong when the body is
///   not an event or an array of events;
/// * `429 Too Many Requests` when one request holds more than
///   [`HttpSource::max_batch`] events (split it);
/// * `503 Service Unavailable` with `Retry-After: 1` when the source's
///   queue of `capacity` requests is full (the pipeline is behind), or when
///   the pipeline stopped before the events were committed;
/// * `404` for another path and `405` for another method.
///
/// An HTTP source cannot replay. Events that got 202 are never lost, since
/// the 202 came only after the checkpoint that covers them; a client that got
/// no 202 must send its request again (at-least-once from the client's side:
/// a request whose 202 was lost is accepted twice).
///
/// The position is the count of events handed to the pipeline
/// (`Position::Offset`); [`Source::seek`] continues the count from a
/// checkpoint's. The source never ends: a shutdown of the pipeline stops it,
/// and the server stops accepting connections when the source is dropped.
/// Request bodies are limited to 2 MiB (413 above that).
pub struct HttpSource {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    receiver: mpsc::Receiver<Accepted>,
    /// A request whose events are partly handed out.
    current: Option<Accepted>,
    /// Events handed out (the position).
    handed_out: u64,
    waiters: Waiters,
    /// Dropping it stops the server.
    _stop: oneshot::Sender<()>,
}

impl HttpSource {
    /// Binds `addr` now and starts serving `POST path` in a new task; at most
    /// `capacity` requests (at least 1) wait for the pipeline to take them.
    /// Bind port 0 to get a free port, then ask [`HttpSource::local_addr`].
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// `path` does not start with `/`, or the address cannot be bound (in use,
    /// not local, not permitted); the message names the address.
    pub async fn bind(addr: SocketAddr, path: &str, capacity: usize) -> Result<Self, StreamError> {
        let stream = describe_source(&addr.to_string(), path);
        let io = |action, source| StreamError::Io {
            stream: stream.clone(),
            action,
            source,
        };
        if !path.starts_with('/') {
            return Err(io(
                "check the path",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("the path `{path}` does not start with `/`"),
                ),
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| io("bind", e))?;
        let local_addr = listener.local_addr().map_err(|e| io("bind", e))?;
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            path: path.to_owned(),
            sender,
            max_batch: AtomicUsize::new(DEFAULT_MAX_BATCH),
        });
        let router = Router::new()
            .fallback(handle_request)
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let described = describe_source(&local_addr.to_string(), path);
        tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // Completes when the source drops the sender.
                    let _ = stopped.await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(source = %described, %error, "the HTTP server stopped");
            }
        });
        tracing::info!(source = %describe_source(&local_addr.to_string(), path), "listening");
        Ok(HttpSource {
            local_addr,
            shared,
            receiver,
            current: None,
            handed_out: 0,
            waiters: Arc::new(Mutex::new(VecDeque::new())),
            _stop: stop,
        })
    }

    /// The most events one request may carry (default
    /// [`DEFAULT_MAX_BATCH`], at least 1); a larger request gets 429.
    #[must_use]
    pub fn max_batch(self, events: usize) -> Self {
        self.shared
            .max_batch
            .store(events.max(1), Ordering::Relaxed);
        self
    }

    /// The address the server is bound to (with the port chosen when bound
    /// to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Records that `ack`'s request has all its events handed out, up to
    /// the current count.
    fn wait_for_commit(&self, ack: oneshot::Sender<()>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.push_back((self.handed_out, ack));
    }
}

fn describe_source(addr: &str, path: &str) -> String {
    format!("HTTP source `http://{addr}{path}`")
}

#[async_trait]
impl Source for HttpSource {
    fn describe(&self) -> String {
        describe_source(&self.local_addr.to_string(), &self.shared.path)
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.handed_out = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let max = max.max(1);
        let mut events = Vec::new();
        while events.len() < max {
            let mut request = match self.current.take() {
                Some(request) => request,
                // Wait for the first request; then take what is already waiting.
                None if events.is_empty() => match self.receiver.recv().await {
                    Some(request) => request,
                    None => {
                        return Err(StreamError::Io {
                            stream: self.describe(),
                            action: "receive",
                            source: std::io::Error::other("the HTTP server stopped"),
                        })
                    }
                },
                None => match self.receiver.try_recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let take = request.events.len().min(max - events.len());
            events.extend(request.events.drain(..take));
            self.handed_out += take as u64;
            if request.events.is_empty() {
                self.wait_for_commit(request.ack);
            } else {
                self.current = Some(request);
            }
        }
        Ok(Some((events, Position::Offset(self.handed_out))))
    }

    fn commit_listener(&mut self) -> Option<Box<dyn CommitListener>> {
        Some(Box::new(HttpCommitListener {
            describe: self.describe(),
            waiters: self.waiters.clone(),
        }))
    }
}

/// Answers the requests whose events a committed checkpoint covers.
struct HttpCommitListener {
    describe: String,
    waiters: Waiters,
}

#[async_trait]
impl CommitListener for HttpCommitListener {
    async fn committed(&mut self, position: &Position) -> Result<(), StreamError> {
        let committed = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe.clone(), position, e))?;
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        while waiters.front().is_some_and(|(last, _)| *last <= committed) {
            if let Some((_, ack)) = waiters.pop_front() {
                // The client may have gone; its events are committed all the same.
                let _ = ack.send(());
            }
        }
        Ok(())
    }
}

async fn handle_request(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if uri.path() != shared.path {
        return (
            StatusCode::NOT_FOUND,
            format!("no such path: POST events to `{}`\n", shared.path),
        )
            .into_response();
    }
    if method != Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, HeaderValue::from_static("POST"))],
            "only POST is accepted\n",
        )
            .into_response();
    }
    let events = match parse_body(&headers, &body) {
        Ok(events) => events,
        Err(message) => return (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response(),
    };
    let max_batch = shared.max_batch.load(Ordering::Relaxed);
    if events.len() > max_batch {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "the request holds {} events, more than the {max_batch} accepted in one request: split it\n",
                events.len()
            ),
        )
            .into_response();
    }
    let count = events.len();
    if count == 0 {
        return accepted(0);
    }
    let (ack, acked) = oneshot::channel();
    let request = Accepted {
        events: events.into(),
        ack,
    };
    if let Err(error) = shared.sender.try_send(request) {
        let message = match error {
            mpsc::error::TrySendError::Full(_) => "the pipeline is full: retry later",
            mpsc::error::TrySendError::Closed(_) => "the pipeline is not running: retry later",
        };
        return unavailable(message);
    }
    match acked.await {
        Ok(()) => accepted(count),
        Err(_) => unavailable("the pipeline stopped before the events were committed: retry"),
    }
}

fn accepted(count: usize) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "accepted": count })),
    )
        .into_response()
}

fn unavailable(message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        format!("{message}\n"),
    )
        .into_response()
}

/// Whether the request says its body is JSON (`application/json`, `…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A request body's events, or what is wrong with it.
fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Event>, String> {
    if !is_json(headers) {
        return Ok(vec![Event::new(body.to_vec())]);
    }
    let parsed: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
    match parsed {
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                parse_event(item).map_err(|e| format!("event {index} of the array: {e}"))
            })
            .collect(),
        object @ serde_json::Value::Object(_) => parse_event(object).map(|event| vec![event]),
        other => Err(format!(
            "expected an event object or an array of event objects, got {}",
            plumber_engine::streams::json_kind(&other)
        )),
    }
}

fn parse_event(item: serde_json::Value) -> Result<Event, String> {
    if !item.is_object() {
        return Err(format!(
            "expected an event object {{\"value\": \"...\"}}, got {}",
            plumber_engine::streams::json_kind(&item)
        ));
    }
    serde_json::from_value::<JsonEvent>(item)
        .map(Event::from)
        .map_err(|e| format!("not an event: {e}"))
}

/// One event as the sink sends it.
#[derive(serde::Serialize)]
struct WireEvent {
    value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<u64>,
    headers: BTreeMap<String, String>,
}

impl From<Event> for WireEvent {
    fn from(event: Event) -> Self {
        WireEvent {
            value: lossy(event.value),
            key: event.key.map(lossy),
            timestamp: event.timestamp,
            headers: event.headers.into_iter().collect(),
        }
    }
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// POSTs events to a URL as a JSON array of event objects.
///
/// [`Sink::write`] buffers; [`Sink::flush`] (called by the pipeline before
/// each checkpoint) sends everything buffered as **one** POST of
/// `[{"value": "...", "key": "...", "timestamp": N, "headers": {...}}, ...]`
/// with `Content-Type: application/json` (values and keys as UTF-8 text,
/// invalid bytes replaced; `key` and `timestamp` left out when absent; of
/// headers repeated under one name the last is sent). Any 2xx answer
/// accepts the batch. When more than [`HttpSink::max_buffered`] events are
/// buffered, `write` POSTs them at once rather than holding more.
///
/// A failed attempt is retried with the reconnect policy of the other
/// connectors ([`super::reconnect`]): after a wait of 50 ms that doubles up
/// to 2 s, for [`HttpSink::reconnect_timeout`] (default 30 s) since the
/// first failure (and at most [`HttpSink::max_retries`] times, when set),
/// when the connection failed, the request timed out ([`HttpSink::timeout`])
/// or the answer was a 5xx or 429. Any other answer (a 4xx: the receiver
/// refuses the batch) fails at once. The error after the last attempt names
/// the URL, how long it waited and the last status or transport error.
///
/// Delivery is **at-least-once**: a POST whose answer was lost is sent
/// again, and so is output after the last checkpoint when a pipeline
/// restarts; a receiver that must not see duplicates has to deduplicate.
/// Without a TLS feature of `reqwest`, only `http://` URLs work.
pub struct HttpSink {
    url: String,
    timeout: Duration,
    reconnect_timeout: Duration,
    max_retries: Option<u32>,
    max_buffered: usize,
    client: Option<reqwest::Client>,
    buffer: Vec<WireEvent>,
}

impl HttpSink {
    /// A sink POSTing to `url` (10 s per attempt, retrying for 30 s).
    pub fn new(url: impl Into<String>) -> Self {
        HttpSink {
            url: url.into(),
            timeout: Duration::from_secs(10),
            reconnect_timeout: super::reconnect::DEFAULT_RECONNECT_TIMEOUT,
            max_retries: None,
            max_buffered: 10_000,
            client: None,
            buffer: Vec::new(),
        }
    }

    /// How long one attempt may take, from connecting to the end of the
    /// answer (default 10 s).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self.client = None;
        self
    }

    /// How long a failing POST keeps being retried, from its first failure
    /// (default 30 s, as the other connectors).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// At most this many retries of a failed POST, even within the
    /// reconnect timeout (default: no bound but the timeout; 0: only once).
    #[must_use]
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// The most events held between flushes (default 10,000, at least 1);
    /// reaching it POSTs them from `write`.
    #[must_use]
    pub fn max_buffered(mut self, events: usize) -> Self {
        self.max_buffered = events.max(1);
        self
    }

    fn error(&self, action: &'static str, message: String) -> StreamError {
        StreamError::Io {
            stream: self.describe(),
            action,
            source: std::io::Error::other(message),
        }
    }

    fn client(&mut self) -> Result<reqwest::Client, StreamError> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .build()
            .map_err(|e| self.error("create the HTTP client", ErrorChain(&e).to_string()))?;
        self.client = Some(client.clone());
        Ok(client)
    }

    /// POSTs the buffer as one array, retrying; empties it on success.
    async fn post(&mut self) -> Result<(), StreamError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&self.buffer)
            .map_err(|e| self.error("encode the events as JSON", e.to_string()))?;
        let client = self.client()?;
        let mut retry = Reconnect::new(
            self.describe(),
            format!("the HTTP server of {}", self.url),
            "POST",
            self.reconnect_timeout,
        );
        if let Some(retries) = self.max_retries {
            retry = retry.max_attempts(retries.saturating_add(1));
        }
        let mut previous = String::new();
        loop {
            // The first attempt may take `timeout`; later ones no longer
            // than what is left of the reconnect timeout.
            let limit = retry.attempt(self.timeout).min(self.timeout);
            let sent = tokio::time::timeout(
                limit,
                client
                    .post(&self.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send(),
            )
            .await;
            let last = match sent {
                Err(_) if limit < self.timeout => format!(
                    "no answer in the {limit:?} left of the reconnect timeout; before: {previous}"
                ),
                Err(_) => format!("timed out after {limit:?}"),
                Ok(Ok(response)) if response.status().is_success() => {
                    retry.succeeded();
                    self.buffer.clear();
                    return Ok(());
                }
                Ok(Ok(response)) => {
                    let status = response.status();
                    let retryable = status.is_server_error()
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    let text = response.text().await.unwrap_or_default();
                    let text = text.trim();
                    let mut detail = format!("status {status}");
                    if !text.is_empty() {
                        let shown: String = text.chars().take(200).collect();
                        detail = format!("{detail}: {shown}");
                    }
                    if !retryable {
                        return Err(self.error("POST", format!("refused with {detail}")));
                    }
                    detail
                }
                Ok(Err(error)) if error.is_builder() => {
                    return Err(self.error("POST", ErrorChain(&error).to_string()));
                }
                Ok(Err(error)) if error.is_timeout() => {
                    format!("timed out after {:?}", self.timeout)
                }
                Ok(Err(error)) => ErrorChain(&error).to_string(),
            };
            retry.failed(&last).await?;
            previous = last;
        }
    }
}

#[async_trait]
impl Sink for HttpSink {
    fn describe(&self) -> String {
        format!("HTTP sink `{}`", self.url)
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.buffer
            .extend(batch.events.into_iter().map(WireEvent::from));
        if self.buffer.len() >= self.max_buffered {
            self.post().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        self.post().await
    }
}
