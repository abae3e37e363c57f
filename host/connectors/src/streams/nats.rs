//! NATS: core NATS subjects and JetStream streams, as sources and sinks.
//!
//! | type | reads / writes | guarantee |
//! | --- | --- | --- |
//! | [`NatsSource`] | a core NATS subscription (optionally in a queue group) | at-most-once: core NATS keeps nothing, so what arrived while no pipeline listened, or was in flight at a crash, is gone |
//! | [`NatsSink`] | core NATS publishes | at-most-once / at-least-once: a replay after a crash publishes again |
//! | [`JetStreamSource`] | a durable pull consumer it owns, recreated at the committed position | a restart reads exactly what follows the last checkpoint, so none is lost and, with a replayable pipeline, the effect on state is exactly-once |
//! | [`JetStreamSink`] | JetStream publishes with a `Nats-Msg-Id` | exactly-once output into the stream within its duplicate window |
//!
//! Events and NATS messages map one to one: the payload is the event's
//! value, headers are the event's headers, and the event's key travels in a
//! [`KEY_HEADER`] (`plumber-key`) header. Sinks do not copy event headers
//! whose names start with `Nats-` (server directives such as
//! `Nats-Expected-Last-Sequence` must not leak from one stream into another);
//! the JetStream sink sets its own `Nats-Msg-Id`.

pub mod config;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{Client, HeaderMap, HeaderName, HeaderValue, Subject, Subscriber};
use async_trait::async_trait;
use futures_core::Stream;
use sha2::{Digest, Sha256};

use super::reconnect::{Reconnect, FIRST_BACKOFF, MAX_BACKOFF};
use super::{CommitListener, Sink, Source, StreamError};
use plumber_engine::checkpoint::Position;
use plumber_engine::shuffle::{
    partition_token, subject_token, ShuffleKey, UPSTREAM_HEADER, WATERMARK_HEADER,
};
use plumber_engine::streams::OUTBOX_ID_HEADER;
use plumber_engine::{Batch, Event};

/// The header that carries an event's key.
pub const KEY_HEADER: &str = "plumber-key";
/// The header that carries an event's timestamp (ms since the Unix epoch).
pub const TIMESTAMP_HEADER: &str = "plumber-timestamp";

/// The header a [`JetStreamSource`] puts on each event: the message's stream
/// sequence. A [`JetStreamSink`] derives its message ids from it.
pub const SOURCE_SEQ_HEADER: &str = "plumber-source-seq";

/// How long a [`JetStreamSource`] waits for a first message per pull request
/// before asking again.
const PULL_WAIT: Duration = Duration::from_millis(100);

/// The most JetStream publishes a sink leaves unacknowledged before it waits
/// for the oldest ack (below async-nats' default of 5,000 in flight).
const MAX_PENDING_ACKS: usize = 4096;

/// How many per-sequence output counters a [`JetStreamSink`] remembers.
const MAX_SEQ_COUNTERS: usize = 100_000;

fn io_error(
    stream: String,
    action: &'static str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> StreamError {
    StreamError::Io {
        stream,
        action,
        source: std::io::Error::other(error),
    }
}

fn invalid(stream: String, action: &'static str, message: String) -> StreamError {
    StreamError::Io {
        stream,
        action,
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, message),
    }
}

/// Waits for the next item of a stream.
async fn next_item<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The next item of a stream if one is ready now, without waiting.
fn ready_item<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(stream).poll_next(&mut cx) {
        Poll::Ready(item) => item,
        Poll::Pending => None,
    }
}

/// An event from a NATS message: payload, headers (sorted by name), the key
/// from [`KEY_HEADER`] and the timestamp from [`TIMESTAMP_HEADER`].
fn event_from(message: &async_nats::Message) -> Event {
    let mut event = Event::new(message.payload.to_vec());
    if let Some(map) = &message.headers {
        let mut entries: Vec<(&HeaderName, &Vec<HeaderValue>)> = map.iter().collect();
        entries.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(b.0.as_ref()));
        for (name, values) in entries {
            let name: &str = name.as_ref();
            for value in values {
                if name == KEY_HEADER {
                    if event.key.is_none() {
                        event.key = Some(value.as_str().as_bytes().to_vec());
                    }
                } else if name == TIMESTAMP_HEADER && event.timestamp.is_none() {
                    match value.as_str().parse() {
                        Ok(timestamp) => event.timestamp = Some(timestamp),
                        // Not a timestamp after all: keep it as a plain header.
                        Err(_) => event
                            .headers
                            .push((name.to_owned(), value.as_str().to_owned())),
                    }
                } else {
                    event
                        .headers
                        .push((name.to_owned(), value.as_str().to_owned()));
                }
            }
        }
    }
    event
}

/// The NATS headers of an event: its headers (except `Nats-*`) and its key;
/// or why the event cannot be a NATS message.
fn headers_of(event: &Event) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for (name, value) in &event.headers {
        if name
            .as_bytes()
            .get(..5)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"nats-"))
        {
            continue;
        }
        if name == KEY_HEADER && event.key.is_some()
            || name == TIMESTAMP_HEADER && event.timestamp.is_some()
        {
            continue;
        }
        let header: HeaderName = name
            .parse()
            .map_err(|_| format!("header name {name:?} is not a valid NATS header name"))?;
        let value: HeaderValue = value
            .parse()
            .map_err(|_| format!("the value of header {name:?} contains a line break"))?;
        map.append(header, value);
    }
    if let Some(key) = &event.key {
        let value = std::str::from_utf8(key)
            .ok()
            .and_then(|key| key.parse::<HeaderValue>().ok())
            .ok_or_else(|| {
                "the event key must be UTF-8 text without line breaks to travel in the \
                 `plumber-key` header"
                    .to_owned()
            })?;
        map.insert(HeaderName::from_static(KEY_HEADER), value);
    }
    if let Some(timestamp) = event.timestamp {
        if let Ok(value) = timestamp.to_string().parse::<HeaderValue>() {
            map.insert(HeaderName::from_static(TIMESTAMP_HEADER), value);
        }
    }
    Ok(map)
}

/// The servers of a `url` field: one NATS URL, or several separated by
/// commas (the nodes of a cluster: the client starts with any that answers
/// and reconnects to another when its node dies).
///
/// # Errors
///
/// A part is not a NATS URL (the message names it).
pub(crate) fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .map(|part| {
            part.parse::<async_nats::ServerAddr>()
                .map_err(|error| format!("`{part}` is not a NATS URL: {error}"))
        })
        .collect()
}

async fn connect(url: &str, stream: impl FnOnce() -> String) -> Result<Client, StreamError> {
    let stream = stream();
    let servers = match server_addrs(url) {
        Ok(servers) => servers,
        Err(message) => return Err(invalid(stream, "connect", message)),
    };
    connect_options(stream.clone())
        .connect(servers)
        .await
        .map_err(|e| io_error(stream, "connect", e))
}

/// Connect options whose connection logs its events as `who`'s (the
/// stream or the cluster it serves): a lost connection at `warn`, a
/// regained one at `info`, the server's complaints (slow consumer, lame
/// duck, errors) at `warn`. The first connection is not logged: a worker
/// opens two per partition, hundreds as it starts. (The client's own
/// lines, which name no stream, are left to `async_nats=info`.)
#[must_use]
pub fn connect_options(who: String) -> async_nats::ConnectOptions {
    let connected_once = Arc::new(AtomicBool::new(false));
    async_nats::ConnectOptions::new().event_callback(move |event| {
        let (who, connected_once) = (who.clone(), connected_once.clone());
        async move {
            use async_nats::Event;
            match event {
                Event::Connected => {
                    if connected_once.swap(true, Ordering::Relaxed) {
                        tracing::info!("{who}: connected to the NATS server again");
                    }
                }
                Event::Disconnected => {
                    tracing::warn!("{who}: lost the connection to the NATS server; reconnecting");
                }
                Event::Closed | Event::Draining => tracing::debug!("{who}: NATS {event}"),
                Event::LameDuckMode
                | Event::SlowConsumer(_)
                | Event::ServerError(_)
                | Event::ClientError(_) => tracing::warn!("{who}: NATS {event}"),
            }
        }
    })
}

// ---------------------------------------------------------------------------
// Riding out lost connections
// ---------------------------------------------------------------------------

pub use super::reconnect::DEFAULT_RECONNECT_TIMEOUT;
/// The longest a pull from a [`JetStreamSource`] may take before it counts
/// as a failure (it normally takes about [`PULL_WAIT`]).
const PULL_ATTEMPT_LIMIT: Duration = Duration::from_secs(2);

/// The longest an attempt at (re)creating a [`JetStreamSource`]'s consumer
/// may take before it counts as a failure (replicated consumers take a
/// while on a busy cluster).
const CONSUMER_ATTEMPT_LIMIT: Duration = Duration::from_secs(20);

/// Why an attempt failed: the server could not be reached (worth retrying),
/// or anything else (fails at once).
enum Failure {
    Unreachable(String),
    Fatal(StreamError),
}

/// Retries of one operation while the NATS server is unreachable (see
/// [`Reconnect`]); a [`Failure::Fatal`] fails at once.
struct Retry(Reconnect);

impl Retry {
    fn new(stream: String, url: &str, action: &'static str, timeout: Duration) -> Retry {
        Retry(Reconnect::new(
            stream,
            format!("the NATS server at {url}"),
            action,
            timeout,
        ))
    }

    /// Starts an attempt; returns the most it may take.
    fn attempt(&mut self, first: Duration) -> Duration {
        self.0.attempt(first)
    }

    /// The attempt worked.
    fn succeeded(&mut self) {
        self.0.succeeded();
    }

    /// The attempt failed: waits before the next one, or returns the error.
    async fn failed(&mut self, failure: Failure) -> Result<(), StreamError> {
        match failure {
            Failure::Unreachable(error) => self.0.failed(&error).await,
            Failure::Fatal(error) => Err(error),
        }
    }
}

/// The failure of an attempt that did not finish within its time.
fn no_answer(limit: Duration) -> Failure {
    Failure::Unreachable(format!("no answer within {limit:.1?}"))
}

/// Whether a pull's error is the server's 409 saying the consumer's leader
/// moved (the request ended; the consumer is still there).
fn is_leader_moved(text: &str) -> bool {
    text.contains("409") && (text.contains("Leadership Change") || text.contains("Server Shutdown"))
}

/// Fails at once unless the client is connected.
fn check_connected(client: &Client) -> Result<(), Failure> {
    match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        state => Err(Failure::Unreachable(format!("not connected ({state})"))),
    }
}

// ---------------------------------------------------------------------------
// Core NATS
// ---------------------------------------------------------------------------

/// Reads a core NATS subject: each message is an event (value = payload,
/// key from the `plumber-key` header, the other headers copied, no
/// timestamp).
///
/// **At-most-once by nature**: core NATS keeps nothing, so a restarted
/// pipeline cannot get back what was in flight at a crash, nor what was
/// published while it was down. The position is the count of messages
/// received; seeking to a stored count only makes the count continue from
/// there.
///
/// With a queue group, the subject's messages are shared among the group's
/// members (each goes to one of them).
pub struct NatsSource {
    url: String,
    subject: String,
    queue_group: Option<String>,
    // Kept so that the connection lives as long as the subscription.
    _client: Client,
    subscriber: Subscriber,
    received: u64,
}

impl NatsSource {
    /// Connects to the server at `url` and subscribes to `subject` (in
    /// `queue_group`, if given). Messages published from now on are received.
    ///
    /// # Errors
    ///
    /// The server cannot be reached, or the subject is invalid.
    pub async fn connect(
        url: &str,
        subject: &str,
        queue_group: Option<String>,
    ) -> Result<Self, StreamError> {
        let describe = || describe_source(url, subject, queue_group.as_deref());
        let client = connect(url, describe).await?;
        let subscribed = match &queue_group {
            Some(group) => {
                client
                    .queue_subscribe(subject.to_owned(), group.clone())
                    .await
            }
            None => client.subscribe(subject.to_owned()).await,
        };
        let subscriber = subscribed.map_err(|e| io_error(describe(), "subscribe", e))?;
        // The subscription is registered with the server once this returns.
        client
            .flush()
            .await
            .map_err(|e| io_error(describe(), "subscribe", e))?;
        Ok(NatsSource {
            url: url.to_owned(),
            subject: subject.to_owned(),
            queue_group,
            _client: client,
            subscriber,
            received: 0,
        })
    }
}

fn describe_source(url: &str, subject: &str, queue_group: Option<&str>) -> String {
    match queue_group {
        Some(group) => format!("NATS source `{subject}` (queue group `{group}`) at {url}"),
        None => format!("NATS source `{subject}` at {url}"),
    }
}

#[async_trait]
impl Source for NatsSource {
    fn describe(&self) -> String {
        describe_source(&self.url, &self.subject, self.queue_group.as_deref())
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.received = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        Ok(())
    }

    /// Waits for the first message, then takes what is already waiting (up
    /// to `max`) without waiting for more. Ends only if the subscription is
    /// closed (e.g. drained by the server).
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let Some(first) = next_item(&mut self.subscriber).await else {
            return Ok(None);
        };
        let mut events = Vec::with_capacity(max.clamp(1, 1024));
        events.push(event_from(&first));
        while events.len() < max {
            match ready_item(&mut self.subscriber) {
                Some(message) => events.push(event_from(&message)),
                None => break,
            }
        }
        self.received += events.len() as u64;
        Ok(Some((events, Position::Offset(self.received))))
    }
}

/// Publishes each event to a core NATS subject (payload = value, headers
/// copied, key as the `plumber-key` header); `flush` flushes the client's
/// buffer to the server.
///
/// Core NATS does not store messages, and a publish cannot be taken back:
/// this sink is **at-most-once or at-least-once** with the pipeline (a
/// replay after a crash publishes the replayed events again), never
/// exactly-once.
///
/// While the server is unreachable, publishes wait in the client until it
/// reconnects, and `flush` retries by the reconnect policy (docs/connectors.md,
/// "Retries") until the reconnect timeout
/// ([`NatsSink::reconnect_timeout`], 30 s by default), then fails naming
/// the server. What was on the wire when the connection
/// broke is lost (at-most-once).
pub struct NatsSink {
    url: String,
    subject: String,
    subject_header: Option<String>,
    client: Client,
    reconnect_timeout: Duration,
}

impl NatsSink {
    /// Connects to the server at `url`; events go to `subject`.
    ///
    /// # Errors
    ///
    /// The server cannot be reached.
    pub async fn connect(url: &str, subject: &str) -> Result<Self, StreamError> {
        let client = connect(url, || format!("NATS sink `{subject}` at {url}")).await?;
        Ok(NatsSink {
            url: url.to_owned(),
            subject: subject.to_owned(),
            subject_header: None,
            client,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
        })
    }

    /// How long a publish or flush keeps retrying while the server is
    /// unreachable before it fails (default 30 s).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// Publishes each event to the subject in its header `name`, when it
    /// has one (else to the configured subject).
    #[must_use]
    pub fn subject_from_header(mut self, name: impl Into<String>) -> Self {
        self.subject_header = Some(name.into());
        self
    }
}

/// The subject of an event: from its header `header`, else `default`.
fn subject_for<'a>(event: &'a Event, header: Option<&str>, default: &'a str) -> &'a str {
    header
        .and_then(|header| {
            event
                .headers
                .iter()
                .find(|(name, _)| name == header)
                .map(|(_, value)| value.as_str())
        })
        .unwrap_or(default)
}

#[async_trait]
impl Sink for NatsSink {
    fn describe(&self) -> String {
        format!("NATS sink `{}` at {}", self.subject, self.url)
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        for event in batch.events {
            let headers = headers_of(&event).map_err(|m| invalid(self.describe(), "publish", m))?;
            let subject = subject_for(&event, self.subject_header.as_deref(), &self.subject);
            let mut retry = Retry::new(
                self.describe(),
                &self.url,
                "publish",
                self.reconnect_timeout,
            );
            loop {
                // While the connection is down, publishes queue in the
                // client (sent once it reconnects) until its buffer is full.
                let limit = retry.attempt(self.reconnect_timeout);
                let publish = self.client.publish_with_headers(
                    subject.to_owned(),
                    headers.clone(),
                    event.value.clone().into(),
                );
                let failure = match tokio::time::timeout(limit, publish).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => Failure::Fatal(io_error(self.describe(), "publish", e)),
                    Err(_) => no_answer(limit),
                };
                retry.failed(failure).await?;
            }
            retry.succeeded();
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        let mut retry = Retry::new(self.describe(), &self.url, "flush", self.reconnect_timeout);
        loop {
            let limit = retry.attempt(self.reconnect_timeout);
            let attempt = async {
                check_connected(&self.client)?;
                self.client
                    .flush()
                    .await
                    .map_err(|e| Failure::Unreachable(e.to_string()))
            };
            let failure = match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(())) => {
                    retry.succeeded();
                    return Ok(());
                }
                Ok(Err(failure)) => failure,
                Err(_) => no_answer(limit),
            };
            retry.failed(failure).await?;
        }
    }
}

// ---------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------

/// How a [`JetStreamSource`] creates its durable consumer (it recreates the
/// consumer at every start, so these settings always apply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConsumerOptions {
    /// How long the server waits for the ack of a delivered message before
    /// delivering it again. Messages are acked only after the checkpoint
    /// covering them commits, so this must be well above the checkpoint
    /// interval plus the pipeline's latency (default 30 s).
    pub ack_wait: Duration,
    /// The most delivered, unacknowledged messages; the server stops
    /// delivering past it until a checkpoint acks some (default 100,000). A
    /// pipeline that checkpoints only every N events needs N below this.
    pub max_ack_pending: i64,
}

impl Default for JetStreamConsumerOptions {
    fn default() -> Self {
        JetStreamConsumerOptions {
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 100_000,
        }
    }
}

/// Messages handed out by the current consumer and not yet covered by a
/// committed checkpoint: stream sequence → the delivery's ack subject.
type Pending = Arc<Mutex<BTreeMap<u64, Subject>>>;

/// Reads a JetStream stream through a durable pull consumer that the source
/// owns.
///
/// Each message is an event as for [`NatsSource`], with the message's
/// stream sequence in a [`SOURCE_SEQ_HEADER`] (`plumber-source-seq`)
/// header. The position is the stream sequence of the last event handed
/// out.
///
/// **The checkpoint owns the position, not the consumer.** Before its first
/// pull the source deletes the durable consumer and creates it again,
/// delivering from the sequence after the position it was sought to (the
/// committed checkpoint's; the whole stream without one). So what a crashed
/// run read past its checkpoint is delivered again, in stream order, and
/// nothing at or below the checkpoint comes back — whatever the crashed run
/// left pending in the server. Whenever deliveries may have been lost while
/// running (a gap in the consumer's delivery sequence, a pull cut off by a
/// lost connection), the consumer is recreated the same way at the sequence
/// after the last event handed out. Recovery never depends on redeliveries
/// arriving in any particular order.
///
/// Messages are acknowledged when a checkpoint covering them commits (the
/// pipeline's commit listener, [`Source::commit_listener`]): the consumer
/// acks all (`AckPolicy::All`), so one ack of the highest covered message
/// per checkpoint is enough. Acks keep the consumer's ack floor (and a
/// work-queue or interest stream's retention) in step with the checkpoints;
/// correctness does not depend on them. A message the server delivers again
/// after the ack wait while its checkpoint is pending is not handed out
/// twice.
///
/// **The consumer keeps its state in memory** (`mem_storage`), replicated
/// like the stream but never written to the servers' disks: since the
/// checkpoint owns the position, a consumer whose state the servers lose
/// (all its replicas restarted: the cluster brings it back from its
/// config, with nothing delivered or acked) is found not where the source
/// left off and created again at the sequence after the last event handed
/// out, like any other consumer out of step. On a 3-node cluster
/// this took about a third off the servers' CPU per event
/// (docs/cluster.md, "Throughput: one worker against two").
///
/// **Lost connections**: pulls and acks that fail because the server is
/// unreachable are retried by the reconnect policy (docs/connectors.md, "Retries")
/// until the reconnect timeout ([`JetStreamSource::reconnect_timeout`], 30 s
/// by default) has passed, then fail naming the server. The client reconnects
/// by itself.
///
/// A JetStream source never ends; stop its pipeline with
/// [`plumber_engine::pipeline::PipelineHandle::shutdown`]. The durable consumer
/// belongs to one pipeline: do not share its name, and do not create it by
/// hand (its settings come from the source's options).
pub struct JetStreamSource {
    url: String,
    stream: String,
    consumer_name: String,
    client: Client,
    js_stream: async_nats::jetstream::stream::Stream,
    /// For the consumer handle when an existing consumer is kept.
    context: async_nats::jetstream::Context,
    /// The settings the consumer is created with (but its start).
    config: pull::Config,
    /// The current consumer; `None` until it is (re)created at the sequence
    /// after `handed_out`, before the next pull.
    consumer: Option<PullConsumer>,
    pending: Pending,
    /// The highest sequence handed out, or the position sought to.
    handed_out: u64,
    /// Messages the server said were still pending after the last delivery.
    pending_after: u64,
    reconnect_timeout: Duration,
    /// The consumer (delivery) sequence of the last message received from
    /// the current consumer.
    last_delivery: Option<u64>,
    /// How many times the consumer was created by this source.
    consumers_created: Arc<AtomicU64>,
    /// When the consumer this source created or kept was created (the
    /// server's time): a consumer of that name created at another time is
    /// another reader's.
    created: Option<async_nats::datetime::DateTime>,
    /// The watermarks of the upstream tasks, when the source reads a
    /// shuffle stream's partition for event-time windows.
    upstreams: Option<UpstreamWatermarks>,
}

/// The watermarks the upstream tasks of a shuffle stream's partition sent
/// (their [`WATERMARK_HEADER`] messages), and the source's watermark made
/// of them: the **minimum over the upstreams**, leaving out each upstream
/// that sent no watermark message for the idle timeout (one never heard of
/// counts as silent since the first message read). While an upstream that
/// is not left out has sent none yet, there is no watermark; nor is there
/// when every upstream is left out.
///
/// Silence is measured in the **stream's time**: the time the server
/// stored the newest message read, plus the time since it was read. A
/// backlog read in one burst (a restart, a task that fell behind) thus
/// tells an upstream that stopped early from one that went on, as they
/// were when the messages were stored; once caught up, stream time runs
/// with the local clock. Only server timestamps are compared with each
/// other, never with the local clock.
///
/// Each upstream's watermark only goes up (a restarted upstream replaying
/// older events sends lower ones, which change nothing), so an upstream
/// that comes back after being left out can only hold the minimum back
/// from then on.
#[derive(Debug, Clone)]
pub struct UpstreamWatermarks {
    upstreams: u32,
    idle_timeout_ms: u64,
    /// When the first message read was stored (ms since the epoch).
    first_stored: Option<u64>,
    /// When the newest message read was stored, and when it was read.
    newest: Option<(u64, std::time::Instant)>,
    /// Upstream → its highest watermark and when its last watermark
    /// message was stored.
    latest: HashMap<String, (u64, u64)>,
    /// The watermark last reported.
    reported: Option<u64>,
}

impl UpstreamWatermarks {
    /// The watermarks of `upstreams` upstream tasks, each left out after
    /// `idle_timeout` without a watermark message.
    #[must_use]
    pub fn new(upstreams: u32, idle_timeout: Duration) -> Self {
        UpstreamWatermarks {
            upstreams: upstreams.max(1),
            idle_timeout_ms: u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX),
            first_stored: None,
            newest: None,
            latest: HashMap::new(),
            reported: None,
        }
    }

    /// A message (an event or a watermark message) stored at `stored_ms`
    /// was read at `now`: stream time is at least that.
    pub fn observe(&mut self, stored_ms: u64, now: std::time::Instant) {
        self.first_stored.get_or_insert(stored_ms);
        if self.newest.is_none_or(|(newest, _)| stored_ms >= newest) {
            self.newest = Some((stored_ms, now));
        }
    }

    /// Upstream `upstream`'s watermark message saying `watermark`, stored
    /// at `stored_ms`, was read at `now`.
    pub fn record(
        &mut self,
        upstream: &str,
        watermark: u64,
        stored_ms: u64,
        now: std::time::Instant,
    ) {
        self.observe(stored_ms, now);
        match self.latest.get_mut(upstream) {
            Some((highest, stored)) => {
                *highest = (*highest).max(watermark);
                *stored = (*stored).max(stored_ms);
            }
            None => {
                self.latest
                    .insert(upstream.to_owned(), (watermark, stored_ms));
            }
        }
    }

    /// Stream time at `now` (ms since the epoch): when the newest message
    /// read was stored, plus the time since it was read.
    fn stream_time(&self, now: std::time::Instant) -> Option<u64> {
        let (stored, read) = self.newest?;
        let since =
            u64::try_from(now.saturating_duration_since(read).as_millis()).unwrap_or(u64::MAX);
        Some(stored.saturating_add(since))
    }

    /// The minimum over the upstreams not idle at `now`, if each of them
    /// has sent a watermark.
    #[must_use]
    pub fn current(&self, now: std::time::Instant) -> Option<u64> {
        let time = self.stream_time(now)?;
        let live = |stored: u64| time.saturating_sub(stored) < self.idle_timeout_ms;
        let unheard = usize::try_from(self.upstreams)
            .unwrap_or(usize::MAX)
            .saturating_sub(self.latest.len());
        if unheard > 0 && self.first_stored.is_none_or(live) {
            return None;
        }
        self.latest
            .values()
            .filter(|(_, stored)| live(*stored))
            .map(|(watermark, _)| *watermark)
            .min()
    }

    /// Whether [`UpstreamWatermarks::current`] at `now` differs from the
    /// watermark last reported (which it becomes).
    pub fn changed(&mut self, now: std::time::Instant) -> bool {
        let current = self.current(now);
        let changed = current != self.reported;
        self.reported = current;
        changed
    }

    /// The watermark last reported.
    #[must_use]
    pub fn reported(&self) -> Option<u64> {
        self.reported
    }
}

/// The upstream and watermark of a shuffle stream's watermark message.
fn watermark_of(message: &async_nats::Message) -> Option<(String, Option<u64>)> {
    let headers = message.headers.as_ref()?;
    let watermark = headers.get(WATERMARK_HEADER)?;
    let upstream = headers
        .get(UPSTREAM_HEADER)
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    Some((upstream, watermark.as_str().parse().ok()))
}

impl JetStreamSource {
    /// Connects to the server at `url` for `stream`, whose messages are read
    /// through the durable pull consumer `durable_consumer` (restricted to
    /// `filter_subject` if given), created with
    /// [`JetStreamConsumerOptions::default`] before the first pull.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or the stream does not exist.
    pub async fn connect(
        url: &str,
        stream: &str,
        durable_consumer: &str,
        filter_subject: Option<String>,
    ) -> Result<Self, StreamError> {
        Self::connect_with(
            url,
            stream,
            durable_consumer,
            filter_subject,
            JetStreamConsumerOptions::default(),
        )
        .await
    }

    /// As [`JetStreamSource::connect`], creating the consumer with
    /// `options`.
    ///
    /// # Errors
    ///
    /// As [`JetStreamSource::connect`].
    pub async fn connect_with(
        url: &str,
        stream: &str,
        durable_consumer: &str,
        filter_subject: Option<String>,
        options: JetStreamConsumerOptions,
    ) -> Result<Self, StreamError> {
        let describe = || describe_js_source(url, stream, durable_consumer);
        let client = connect(url, describe).await?;
        let context = async_nats::jetstream::new(client.clone());
        let js_stream = context
            .get_stream(stream)
            .await
            .map_err(|e| io_error(describe(), "get stream", e))?;
        let config = pull::Config {
            durable_name: Some(durable_consumer.to_owned()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::All,
            ack_wait: options.ack_wait,
            max_ack_pending: options.max_ack_pending,
            filter_subject: filter_subject.unwrap_or_default(),
            // The checkpoint owns the position: the consumer's own state
            // need not reach the servers' disks.
            memory_storage: true,
            ..pull::Config::default()
        };
        Ok(JetStreamSource {
            url: url.to_owned(),
            stream: stream.to_owned(),
            consumer_name: durable_consumer.to_owned(),
            client,
            js_stream,
            context,
            config,
            consumer: None,
            pending: Arc::default(),
            handed_out: 0,
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            last_delivery: None,
            pending_after: 0,
            consumers_created: Arc::default(),
            created: None,
            upstreams: None,
        })
    }

    /// Reads a shuffle stream's partition for event-time windows: keeps the
    /// watermark messages of its `upstreams` upstream tasks (messages with
    /// a [`WATERMARK_HEADER`], which are then never events) and reports
    /// their minimum as the source's watermark (see [`UpstreamWatermarks`];
    /// an upstream silent for `idle_timeout` is left out).
    #[must_use]
    pub fn upstream_watermarks(mut self, upstreams: u32, idle_timeout: Duration) -> Self {
        self.upstreams = Some(UpstreamWatermarks::new(upstreams, idle_timeout));
        self
    }

    /// How long a pull or an ack keeps retrying while the server is
    /// unreachable before it fails (default 30 s).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// A counter of the consumers this source created (one at the start,
    /// one more for each recovery from lost deliveries); for tests and
    /// metrics.
    pub fn consumers_created(&self) -> Arc<AtomicU64> {
        self.consumers_created.clone()
    }

    /// One attempt at a batch: what is waiting, else the first to come
    /// within [`PULL_WAIT`] and what is waiting after it. Adds the new
    /// messages to `events`.
    async fn pull_some(&mut self, max: usize, events: &mut Vec<Event>) -> Result<(), Failure> {
        self.pull(max, None, events).await?;
        if events.is_empty() {
            self.pull(1, Some(PULL_WAIT), events).await?;
            let rest = max.saturating_sub(events.len());
            if !events.is_empty() && rest > 0 {
                self.pull(rest, None, events).await?;
            }
        }
        Ok(())
    }

    /// Makes the durable consumer deliver from the sequence after the last
    /// one handed out: keeps the existing one when it is exactly there
    /// with nothing in flight (after a clean hand-over, or a creation
    /// whose answer was not awaited), else deletes it (whatever a previous
    /// run or owner left pending in it, and so ending a zombie's pulls)
    /// and creates it again.
    async fn create_consumer(&mut self) -> Result<(), Failure> {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as InfoKind;
        let existing = match self.js_stream.consumer_info(&self.consumer_name).await {
            Ok(info) => Some(info),
            Err(error) if matches!(error.kind(), InfoKind::NotFound | InfoKind::StreamNotFound) => {
                None
            }
            // Whether a consumer is there, and whose, is unknown: deleting
            // blind could cut off a partition's new owner (this source a
            // zombie resumed), so ask again.
            Err(error) => {
                return Err(Failure::Unreachable(format!(
                    "reading the consumer's info: {error}"
                )))
            }
        };
        if let Some(info) = existing {
            // Another reader replaced the consumer this source had: the
            // partition's new owner (this one a zombie resumed) or a second
            // pipeline on the same name. Deleting it would cut the other
            // reader off and read for nobody: this source stops instead.
            if let Some(ours) = self.created.filter(|ours| *ours != info.created) {
                return Err(Failure::Fatal(invalid(
                    self.describe(),
                    "create consumer",
                    format!(
                        "the consumer this source created at {ours} was replaced by another \
                         reader's, created at {}: the stream is read elsewhere now (a new owner \
                         of the partition), so this source stops rather than delete it",
                        info.created
                    ),
                )));
            }
            if self.can_keep(&info) {
                let delivered = info.delivered.consumer_sequence;
                self.created = Some(info.created);
                let consumer = PullConsumer::new(self.config.clone(), info, self.context.clone());
                tracing::debug!(source = %self.describe(), from = self.handed_out.saturating_add(1),
                    "consumer kept");
                self.start_consumer(consumer, Some(delivered).filter(|d| *d > 0));
                return Ok(());
            }
        }
        self.recreate_consumer().await
    }

    /// Whether the consumer `info` describes delivers next what this
    /// source wants next, with the same settings and nothing delivered,
    /// unacknowledged or requested.
    fn can_keep(&self, info: &async_nats::jetstream::consumer::Info) -> bool {
        let config = &info.config;
        config.filter_subject == self.config.filter_subject
            && config.filter_subjects == self.config.filter_subjects
            && config.ack_policy == self.config.ack_policy
            && config.ack_wait == self.config.ack_wait
            && config.max_ack_pending == self.config.max_ack_pending
            && config.memory_storage == self.config.memory_storage
            && info.delivered.stream_sequence == self.handed_out
            && info.ack_floor.stream_sequence == self.handed_out
            && info.num_ack_pending == 0
            && info.num_waiting == 0
    }

    /// A consumer to pull from: `delivered` is its last delivery sequence
    /// (`None` for a new one).
    fn start_consumer(&mut self, consumer: PullConsumer, delivered: Option<u64>) {
        // Acks of the old consumer's deliveries would go nowhere.
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.last_delivery = delivered;
        self.consumer = Some(consumer);
    }

    /// Deletes the durable consumer and creates it again, delivering from
    /// the sequence after the last one handed out.
    async fn recreate_consumer(&mut self) -> Result<(), Failure> {
        use async_nats::jetstream::stream::ConsumerErrorKind as Kind;
        check_connected(&self.client)?;
        let describe = self.describe();
        let classify =
            |action: &'static str, error: async_nats::jetstream::stream::ConsumerError| {
                match error.kind() {
                    Kind::TimedOut | Kind::Request => Failure::Unreachable(error.to_string()),
                    // 503: no responders, JetStream is not (yet) there.
                    Kind::JetStream(inner) if inner.code() == 503 => {
                        Failure::Unreachable(error.to_string())
                    }
                    _ => Failure::Fatal(io_error(describe.clone(), action, error)),
                }
            };
        match self.js_stream.delete_consumer(&self.consumer_name).await {
            Ok(_) => {}
            Err(error)
                if matches!(error.kind(), Kind::JetStream(inner)
                    if inner.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
                {}
            Err(error) => return Err(classify("delete consumer", error)),
        }
        let mut config = self.config.clone();
        config.deliver_policy = match self.handed_out {
            0 => DeliverPolicy::All,
            last => DeliverPolicy::ByStartSequence {
                start_sequence: last.saturating_add(1),
            },
        };
        let consumer = self
            .js_stream
            .create_consumer(config)
            .await
            .map_err(|error| classify("create consumer", error))?;
        tracing::debug!(source = %self.describe(), from = self.handed_out.saturating_add(1),
            "consumer created");
        self.created = Some(consumer.cached_info().created);
        self.start_consumer(consumer, None);
        self.consumers_created.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Pulls up to `max` messages: what is there now, or, with `wait`, the
    /// first within `wait`. Adds the new ones to `events`.
    async fn pull(
        &mut self,
        max: usize,
        wait: Option<Duration>,
        events: &mut Vec<Event>,
    ) -> Result<(), Failure> {
        // A request sent now would only be sent after a reconnect, to an
        // inbox perhaps abandoned by then.
        check_connected(&self.client)?;
        let Some(consumer) = &self.consumer else {
            return Ok(());
        };
        let requested = match wait {
            Some(wait) => {
                consumer
                    .batch()
                    .max_messages(max)
                    .expires(wait)
                    .messages()
                    .await
            }
            None => consumer.fetch().max_messages(max).messages().await,
        };
        let mut batch = requested.map_err(|e| Failure::Unreachable(e.to_string()))?;
        // Read the request to its end: a message delivered to an abandoned
        // inbox would be lost to this consumer.
        while let Some(item) = next_item(&mut batch).await {
            let message = item.map_err(|e| {
                let text = e.to_string();
                // 503: no responders, JetStream is not (yet) there. 409
                // "Leadership Change" / "Server Shutdown": the consumer's
                // leader moved (a new R3 consumer settling, a node
                // stopping); the pull is tried again.
                if text.contains("503") || is_leader_moved(&text) {
                    Failure::Unreachable(text)
                } else {
                    Failure::Fatal(io_error(self.describe(), "pull", e))
                }
            })?;
            if !self.accept(message, events)? {
                // Deliveries were lost: start again after what was handed out.
                self.consumer = None;
                break;
            }
        }
        Ok(())
    }

    /// Hands out a delivered message unless it was handed out already (a
    /// redelivery after the ack wait). Returns `false` when a delivery
    /// before this one never arrived: the message is not handed out, and
    /// the consumer must be recreated.
    fn accept(
        &mut self,
        message: async_nats::jetstream::Message,
        events: &mut Vec<Event>,
    ) -> Result<bool, Failure> {
        let info = message
            .info()
            .map_err(|e| Failure::Fatal(io_error(self.describe(), "read message metadata", e)))?;
        let (sequence, delivery) = (info.stream_sequence, info.consumer_sequence);
        let stored_ms =
            u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        self.pending_after = info.pending;
        let message = message.message;
        let Some(reply) = message.reply.clone() else {
            return Err(Failure::Fatal(invalid(
                self.describe(),
                "pull",
                format!("message {sequence} has no ack subject"),
            )));
        };
        let previous = self.last_delivery.replace(delivery);
        let expected = previous.map_or(1, |last| last.saturating_add(1));
        if delivery != expected {
            tracing::warn!(
                source = %self.describe(),
                sequence,
                "deliveries {expected}..{delivery} never arrived; reading again after sequence {}",
                self.handed_out
            );
            return Ok(false);
        }
        if sequence <= self.handed_out {
            // Delivered again after the ack wait while its checkpoint is
            // pending: the acks of the covering checkpoint cover it.
            return Ok(true);
        }
        self.handed_out = sequence;
        let now = std::time::Instant::now();
        let watermark = self.upstreams.as_ref().and_then(|_| watermark_of(&message));
        if let Some((upstream, watermark)) = watermark {
            // Not an event: read past (and acknowledged with the others).
            if let (Some(upstreams), Some(watermark)) = (&mut self.upstreams, watermark) {
                upstreams.record(&upstream, watermark, stored_ms, now);
            }
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(sequence, reply);
            return Ok(true);
        }
        if let Some(upstreams) = &mut self.upstreams {
            upstreams.observe(stored_ms, now);
        }
        let mut event = event_from(&message);
        event.headers.retain(|(name, _)| name != SOURCE_SEQ_HEADER);
        event
            .headers
            .push((SOURCE_SEQ_HEADER.to_owned(), sequence.to_string()));
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(sequence, reply);
        events.push(event);
        Ok(true)
    }
}

fn describe_js_source(url: &str, stream: &str, consumer: &str) -> String {
    format!("JetStream source `{stream}` (consumer `{consumer}`) at {url}")
}

#[async_trait]
impl Source for JetStreamSource {
    fn describe(&self) -> String {
        describe_js_source(&self.url, &self.stream, &self.consumer_name)
    }

    /// Messages still pending for the consumer, as the server last said.
    fn lag(&self) -> Option<u64> {
        Some(self.pending_after)
    }

    /// Reads from the sequence after `position` on: the consumer is
    /// recreated there before the next pull.
    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.handed_out = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?;
        self.consumer = None;
        // A start: whatever consumer is there is taken over.
        self.created = None;
        Ok(())
    }

    /// Pulls up to `max` messages: what is waiting, else the first to come
    /// (asking the server again every 100 ms, so that no request is left
    /// open for long). Returns once at least one new message has arrived;
    /// never `None`. While the server is unreachable, retries until the
    /// reconnect timeout.
    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let max = max.max(1);
        let mut events = Vec::new();
        let mut retry = Retry::new(self.describe(), &self.url, "pull", self.reconnect_timeout);
        let mut creating = Retry::new(
            self.describe(),
            &self.url,
            "create consumer",
            self.reconnect_timeout,
        );
        loop {
            if self.consumer.is_none() {
                // Its own, longer deadline: on a loaded cluster a consumer
                // takes seconds to create, and giving up sooner only
                // queues the same work again.
                let limit = creating.attempt(CONSUMER_ATTEMPT_LIMIT);
                match tokio::time::timeout(limit, self.create_consumer()).await {
                    Ok(Ok(())) => creating.succeeded(),
                    Ok(Err(failure)) => {
                        creating.failed(failure).await?;
                        continue;
                    }
                    Err(_) => {
                        creating.failed(no_answer(limit)).await?;
                        continue;
                    }
                }
            }
            let limit = retry.attempt(PULL_ATTEMPT_LIMIT);
            let outcome = match tokio::time::timeout(limit, self.pull_some(max, &mut events)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Err(no_answer(limit)),
            };
            match outcome {
                Ok(()) => retry.succeeded(),
                Err(failure) => {
                    // Deliveries may have been lost with the connection or
                    // the abandoned request: read again after what was
                    // handed out.
                    self.consumer = None;
                    if events.is_empty() || matches!(failure, Failure::Fatal(_)) {
                        retry.failed(failure).await?;
                        continue;
                    }
                    // Hand out what arrived; the next batch recreates.
                }
            }
            // The watermark moves with messages and with time (an
            // upstream going idle): an empty batch says so.
            let moved = self
                .upstreams
                .as_mut()
                .is_some_and(|upstreams| upstreams.changed(std::time::Instant::now()));
            if moved {
                tracing::debug!(source = %self.describe(), upstreams = ?self.upstreams,
                    "watermark moved");
            }
            if !events.is_empty() || moved {
                return Ok(Some((events, Position::Offset(self.handed_out))));
            }
        }
    }

    fn reports_watermarks(&self) -> bool {
        self.upstreams.is_some()
    }

    fn watermark(&self) -> Option<u64> {
        self.upstreams
            .as_ref()
            .and_then(UpstreamWatermarks::reported)
    }

    fn commit_listener(&mut self) -> Option<Box<dyn CommitListener>> {
        Some(Box::new(JetStreamCommitListener {
            describe: self.describe(),
            url: self.url.clone(),
            client: self.client.clone(),
            pending: self.pending.clone(),
            reconnect_timeout: self.reconnect_timeout,
        }))
    }
}

/// Acks the messages a [`JetStreamSource`] handed out once a checkpoint
/// covers them.
struct JetStreamCommitListener {
    describe: String,
    url: String,
    client: Client,
    pending: Pending,
    reconnect_timeout: Duration,
}

impl JetStreamCommitListener {
    /// Acks everything up to the delivery `reply` belongs to (the consumer
    /// acks all); done once the server confirmed it.
    async fn ack_through(&self, reply: &Subject) -> Result<(), Failure> {
        check_connected(&self.client)?;
        match self.client.request(reply.clone(), "+ACK".into()).await {
            Ok(_) => Ok(()),
            Err(error) => Err(match error.kind() {
                async_nats::RequestErrorKind::InvalidSubject => {
                    Failure::Fatal(io_error(self.describe.clone(), "ack", error))
                }
                _ => Failure::Unreachable(error.to_string()),
            }),
        }
    }
}

#[async_trait]
impl CommitListener for JetStreamCommitListener {
    async fn committed(&mut self, position: &Position) -> Result<(), StreamError> {
        // The source's own position: a stream sequence (0 before the first).
        let sequence = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe.clone(), position, e))?;
        let last_covered = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            let covered = match sequence.checked_add(1) {
                Some(next) => {
                    let later = pending.split_off(&next);
                    std::mem::replace(&mut *pending, later)
                }
                None => std::mem::take(&mut *pending),
            };
            covered.into_values().next_back()
        };
        let Some(reply) = last_covered else {
            return Ok(());
        };
        let mut retry = Retry::new(
            self.describe.clone(),
            &self.url,
            "ack",
            self.reconnect_timeout,
        );
        loop {
            let limit = retry.attempt(self.reconnect_timeout);
            let failure = match tokio::time::timeout(limit, self.ack_through(&reply)).await {
                Ok(Ok(())) => {
                    retry.succeeded();
                    return Ok(());
                }
                Ok(Err(failure)) => failure,
                Err(_) => no_answer(limit),
            };
            retry.failed(failure).await?;
        }
    }
}

/// Publishes each event to a JetStream subject (payload = value, headers
/// copied, key as the `plumber-key` header), with a `Nats-Msg-Id` header
/// that a replay reproduces:
///
/// - `<pipeline>:<seq>:<n>` when the event has a [`SOURCE_SEQ_HEADER`]
///   (`<seq>`, the stream sequence of the source message it derives from),
///   `<n>` numbering the outputs with that header in order (0, 1, …);
/// - `<pipeline>:<sha256 of the value, hex>` otherwise, so that equal values
///   are one message within the duplicate window;
/// - but `<pipeline>:o<epoch>:<n>`, the event's `plumber-outbox-id` header
///   ([`OUTBOX_ID_HEADER`]), when the pipeline publishes after the commit
///   and its outbox gave the event that id: a restart publishes the
///   committed outbox again with the same ids.
///
/// `flush` waits for the server's ack of every publish, so a checkpoint
/// commits only after its output is stored. After a crash the pipeline
/// replays from its last checkpoint and publishes the same messages with the
/// same ids, which the server drops as duplicates: **exactly-once output
/// into JetStream**, as long as the replay comes within the stream's
/// duplicate window (`duplicate_window`, 2 minutes by default) and the pipes
/// are deterministic. Outputs of a window that carry the sequence header of
/// an event from an earlier checkpoint epoch may be numbered differently in
/// a replay; give such outputs their own ids upstream, or none (and
/// distinct values).
///
/// **Lost connections**: while the server is unreachable (no ack in time,
/// no responders while JetStream restarts), the messages not yet
/// acknowledged are sent again, oldest first, by the reconnect policy
/// (docs/connectors.md, "Retries") until the reconnect timeout ([`JetStreamSink::reconnect_timeout`],
/// 30 s by default), then `flush` fails naming the server. Sending a message
/// again is safe: its id makes the server drop it if it was stored. A
/// subject that no stream captures fails at once.
pub struct JetStreamSink {
    url: String,
    subject: String,
    pipeline: String,
    client: Client,
    context: async_nats::jetstream::Context,
    in_flight: VecDeque<InFlight>,
    counters: HashMap<String, u64>,
    counter_order: VecDeque<String>,
    reconnect_timeout: Duration,
    /// Publish each event under `<subject>.<its key as a token>`.
    key_by: Option<ShuffleKey>,
    /// Publishes the server acknowledged as duplicates (their message id
    /// was stored already: a replay, or a resend after a lost ack).
    duplicates: u64,
    /// Watermark messages to every partition of the stream, when the sink
    /// feeds a shuffle stream read by event-time windows.
    watermarks: Option<WatermarkPublisher>,
}

/// What a [`JetStreamSink`] publishes watermark messages with: at each
/// flush, once every event before it is stored, the highest event
/// timestamp published so far goes to each partition of the stream.
struct WatermarkPublisher {
    /// A subject token of each partition ([`partition_token`]).
    tokens: Vec<String>,
    /// The highest timestamp of the events written so far.
    highest: Option<u64>,
    /// The last watermark published.
    published: Option<u64>,
}

/// A JetStream publish not acknowledged yet.
struct InFlight {
    subject: String,
    message: PublishMessage,
    /// Whether it is an event (a watermark message's duplicate is not
    /// counted in [`Sink::duplicates`]).
    event: bool,
    /// The client's connection count when it was sent: after a reconnect,
    /// its ack cannot come any more.
    connects: u64,
    /// `None` when it was not sent (the connection was down), or the ack is
    /// being waited for.
    ack: Option<PublishAckFuture>,
}

impl JetStreamSink {
    /// Connects to the server at `url`; events go to `subject` (which a
    /// stream must capture), with message ids prefixed by `pipeline`.
    ///
    /// # Errors
    ///
    /// The server cannot be reached, or `pipeline` contains a line break
    /// (it cannot be part of a header).
    pub async fn connect(url: &str, subject: &str, pipeline: &str) -> Result<Self, StreamError> {
        let describe = || format!("JetStream sink `{subject}` at {url}");
        if pipeline.contains(['\r', '\n']) {
            return Err(invalid(
                describe(),
                "connect",
                format!("the pipeline name {pipeline:?} cannot be part of a message id"),
            ));
        }
        let client = connect(url, describe).await?;
        let context = async_nats::jetstream::new(client.clone());
        Ok(JetStreamSink {
            url: url.to_owned(),
            subject: subject.to_owned(),
            pipeline: pipeline.to_owned(),
            client,
            context,
            in_flight: VecDeque::new(),
            counters: HashMap::new(),
            counter_order: VecDeque::new(),
            reconnect_timeout: DEFAULT_RECONNECT_TIMEOUT,
            key_by: None,
            duplicates: 0,
            watermarks: None,
        })
    }

    /// At each flush, once every event written before it is stored,
    /// publishes a **watermark message** to each of the `partitions`
    /// partitions of a stream partitioned by the last subject token (a
    /// shuffle stream): to `<subject>.<token>` with a token the server
    /// files under that partition ([`partition_token`]), no payload, the
    /// highest event timestamp written so far in a [`WATERMARK_HEADER`],
    /// the pipeline's name in an [`UPSTREAM_HEADER`], and the message id
    /// `<pipeline>:wm:<partition>:<timestamp>` (a replay publishing the same
    /// watermark again adds nothing; one that did not move is not sent).
    #[must_use]
    pub fn publish_watermarks(mut self, partitions: u32) -> Self {
        let partitions = partitions.max(1);
        self.watermarks = Some(WatermarkPublisher {
            tokens: (0..partitions)
                .map(|partition| partition_token(partition, partitions))
                .collect(),
            highest: None,
            published: None,
        });
        self
    }

    /// Publishes the watermark messages of [`JetStreamSink::publish_watermarks`]
    /// when the highest timestamp moved since the last ones.
    async fn send_watermarks(&mut self) -> Result<(), StreamError> {
        let Some(publisher) = &self.watermarks else {
            return Ok(());
        };
        let Some(watermark) = publisher.highest.filter(|w| publisher.published < Some(*w)) else {
            return Ok(());
        };
        let messages: Vec<(String, PublishMessage)> = publisher
            .tokens
            .iter()
            .enumerate()
            .map(|(partition, token)| {
                let mut headers = HeaderMap::new();
                headers.insert(WATERMARK_HEADER, watermark.to_string().as_str());
                headers.insert(UPSTREAM_HEADER, self.pipeline.as_str());
                let message = PublishMessage::build()
                    .payload(Vec::<u8>::new().into())
                    .headers(headers)
                    .message_id(format!("{}:wm:{partition}:{watermark}", self.pipeline));
                (format!("{}.{token}", self.subject), message)
            })
            .collect();
        for (subject, message) in messages {
            self.enqueue(subject, message, false).await?;
        }
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        if let Some(publisher) = &mut self.watermarks {
            publisher.published = Some(watermark);
        }
        Ok(())
    }

    /// Sends `message` to `subject` (or holds it back, see [`JetStreamSink::send`])
    /// and keeps it in flight until its ack.
    async fn enqueue(
        &mut self,
        subject: String,
        message: PublishMessage,
        event: bool,
    ) -> Result<(), StreamError> {
        while self.in_flight.len() >= MAX_PENDING_ACKS {
            self.settle_oldest().await?;
        }
        let connects = self.connects();
        let ack = self.send(&subject, message.clone()).await?;
        self.in_flight.push_back(InFlight {
            subject,
            message,
            event,
            connects,
            ack,
        });
        Ok(())
    }

    /// Publishes each event to `<subject>.<token>`, the token being the
    /// event's key by `key_by` as [`subject_token`] writes it, so that a
    /// stream whose subject transform partitions by the last token puts
    /// each key in one partition; the key also becomes the event's key
    /// (its `plumber-key` header). An event without such a key fails the
    /// write, naming what is missing.
    #[must_use]
    pub fn subject_key_by(mut self, key_by: ShuffleKey) -> Self {
        self.key_by = Some(key_by);
        self
    }

    /// How long publishing keeps retrying while the server is unreachable
    /// before it fails (default 30 s).
    #[must_use]
    pub fn reconnect_timeout(mut self, timeout: Duration) -> Self {
        self.reconnect_timeout = timeout;
        self
    }

    /// The message id of `event`.
    fn message_id(&mut self, event: &Event) -> String {
        if let Some(id) = self.outbox_id(event) {
            return id.to_owned();
        }
        let sequence = event
            .headers
            .iter()
            .find(|(name, _)| name == SOURCE_SEQ_HEADER)
            .map(|(_, value)| value);
        let Some(sequence) = sequence else {
            let digest = Sha256::digest(&event.value);
            return format!("{}:{}", self.pipeline, hex::encode(digest));
        };
        let n = match self.counters.get_mut(sequence) {
            Some(count) => {
                *count += 1;
                *count
            }
            None => {
                if self.counter_order.len() >= MAX_SEQ_COUNTERS {
                    if let Some(oldest) = self.counter_order.pop_front() {
                        self.counters.remove(&oldest);
                    }
                }
                self.counters.insert(sequence.clone(), 0);
                self.counter_order.push_back(sequence.clone());
                0
            }
        };
        format!("{}:{sequence}:{n}", self.pipeline)
    }

    /// The id this pipeline's outbox gave `event` (publishing after the
    /// commit): its [`OUTBOX_ID_HEADER`] when that names this pipeline. One
    /// another pipeline gave (carried over from its output stream) does not
    /// count here: two pipelines' epochs may number alike.
    fn outbox_id<'e>(&self, event: &'e Event) -> Option<&'e str> {
        event
            .headers
            .iter()
            .rev()
            .find(|(name, _)| name == OUTBOX_ID_HEADER)
            .map(|(_, value)| value.as_str())
            .filter(|value| {
                value
                    .strip_prefix(self.pipeline.as_str())
                    .is_some_and(|rest| rest.starts_with(":o"))
            })
    }

    /// Sends `message`, unless an earlier message still waits to be sent
    /// (it must not be overtaken) or the connection is down: then it is sent
    /// again with the others once the connection is back.
    async fn send(
        &self,
        subject: &str,
        message: PublishMessage,
    ) -> Result<Option<PublishAckFuture>, StreamError> {
        if self.in_flight.back().is_some_and(|last| last.ack.is_none()) {
            return Ok(None);
        }
        self.send_now(subject, message).await
    }

    /// How many times the client has connected so far.
    fn connects(&self) -> u64 {
        self.client.statistics().connects.load(Ordering::SeqCst)
    }

    /// Returns once the client has connected again since `connects`.
    async fn reconnected_since(&self, connects: u64) {
        while self.connects() == connects {
            tokio::time::sleep(FIRST_BACKOFF).await;
        }
    }

    /// Sends `message` unless the connection is down.
    async fn send_now(
        &self,
        subject: &str,
        message: PublishMessage,
    ) -> Result<Option<PublishAckFuture>, StreamError> {
        if check_connected(&self.client).is_err() {
            return Ok(None);
        }
        let send = self.context.send_publish(subject.to_owned(), message);
        match tokio::time::timeout(MAX_BACKOFF, send).await {
            Ok(Ok(ack)) => Ok(Some(ack)),
            Ok(Err(e)) => Err(io_error(self.describe(), "publish", e)),
            // The client's buffer stays full: the connection is down.
            Err(_) => Ok(None),
        }
    }

    /// Sends every message in flight again, in order (their ids make the
    /// server drop those it already stored).
    async fn resend_all(&mut self) -> Result<(), StreamError> {
        for entry in &mut self.in_flight {
            entry.ack = None;
        }
        for index in 0..self.in_flight.len() {
            let message = self.in_flight[index].message.clone();
            let subject = self.in_flight[index].subject.clone();
            let connects = self.connects();
            let ack = self.send_now(&subject, message).await?;
            if ack.is_none() {
                break;
            }
            self.in_flight[index].ack = ack;
            self.in_flight[index].connects = connects;
        }
        Ok(())
    }

    /// What a failed publish means: the server is unreachable (retry), or
    /// it refused the message.
    async fn classify(&self, error: async_nats::jetstream::context::PublishError) -> Failure {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        match error.kind() {
            Kind::TimedOut | Kind::BrokenPipe => Failure::Unreachable(error.to_string()),
            // No responders: no stream captures the subject, or JetStream is
            // not there (yet); ask it which.
            Kind::StreamNotFound => {
                if let Err(failure) = check_connected(&self.client) {
                    return failure;
                }
                let captured = match self.key_by {
                    Some(_) => format!("{}.*", self.subject),
                    None => self.subject.clone(),
                };
                let probe = self.context.stream_by_subject(captured);
                match tokio::time::timeout(MAX_BACKOFF, probe).await {
                    Ok(Err(e))
                        if e.kind()
                            == async_nats::jetstream::context::GetStreamByNameErrorKind::NotFound =>
                    {
                        Failure::Fatal(io_error(self.describe(), "publish", error))
                    }
                    Ok(Ok(_)) | Ok(Err(_)) | Err(_) => Failure::Unreachable(error.to_string()),
                }
            }
            _ => Failure::Fatal(io_error(self.describe(), "publish", error)),
        }
    }

    /// Waits for the ack of the oldest publish in flight; while the server
    /// is unreachable, sends everything in flight again with backoff until
    /// the reconnect timeout.
    async fn settle_oldest(&mut self) -> Result<(), StreamError> {
        let mut retry = Retry::new(
            self.describe(),
            &self.url,
            "publish",
            self.reconnect_timeout,
        );
        loop {
            // Held back while the connection was down: send them now.
            if self
                .in_flight
                .front()
                .is_some_and(|oldest| oldest.ack.is_none())
                && check_connected(&self.client).is_ok()
            {
                self.resend_all().await?;
            }
            let Some(front) = self.in_flight.front_mut() else {
                return Ok(());
            };
            let (ack, connects) = (front.ack.take(), front.connects);
            let limit = retry.attempt(self.reconnect_timeout);
            let failure = match ack {
                None => Failure::Unreachable("not connected".to_owned()),
                Some(ack) => {
                    let outcome = tokio::select! {
                        outcome = tokio::time::timeout(limit, ack) => outcome,
                        () = self.reconnected_since(connects) => {
                            Ok(Err(async_nats::jetstream::context::PublishError::new(
                                async_nats::jetstream::context::PublishErrorKind::BrokenPipe,
                            )))
                        }
                    };
                    match outcome {
                        Ok(Ok(ack)) => {
                            let settled = self.in_flight.pop_front();
                            if ack.duplicate && settled.is_some_and(|settled| settled.event) {
                                self.duplicates += 1;
                            }
                            retry.succeeded();
                            return Ok(());
                        }
                        Ok(Err(error)) => self.classify(error).await,
                        Err(_) => no_answer(limit),
                    }
                }
            };
            retry.failed(failure).await?;
            self.resend_all().await?;
        }
    }
}

#[async_trait]
impl Sink for JetStreamSink {
    fn describe(&self) -> String {
        format!("JetStream sink `{}` at {}", self.subject, self.url)
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        for mut event in batch.events {
            let subject = match &self.key_by {
                None => self.subject.clone(),
                Some(key_by) => {
                    let key = key_by
                        .key_of(&event)
                        .map_err(|m| invalid(self.describe(), "publish", m))?;
                    let subject = format!("{}.{}", self.subject, subject_token(&key));
                    event.key = Some(key);
                    subject
                }
            };
            if self.watermarks.is_some() {
                // No event may pass for a watermark message downstream.
                event
                    .headers
                    .retain(|(name, _)| name != WATERMARK_HEADER && name != UPSTREAM_HEADER);
            }
            let headers = headers_of(&event).map_err(|m| invalid(self.describe(), "publish", m))?;
            let id = self.message_id(&event);
            if let (Some(publisher), Some(timestamp)) = (&mut self.watermarks, event.timestamp) {
                publisher.highest = Some(publisher.highest.map_or(timestamp, |h| h.max(timestamp)));
            }
            let message = PublishMessage::build()
                .payload(event.value.into())
                .headers(headers)
                .message_id(id);
            self.enqueue(subject, message, true).await?;
        }
        Ok(())
    }

    /// Waits until the server has acknowledged (stored, or recognised as a
    /// duplicate) every message published so far; then, with
    /// [`JetStreamSink::publish_watermarks`], publishes the watermark
    /// messages (after every event they cover is stored) and waits for
    /// their acks too.
    async fn flush(&mut self) -> Result<(), StreamError> {
        while !self.in_flight.is_empty() {
            self.settle_oldest().await?;
        }
        self.send_watermarks().await
    }

    /// The publishes the server acknowledged with `duplicate: true`.
    fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::{is_leader_moved, UpstreamWatermarks};
    use std::time::{Duration, Instant};

    #[test]
    fn the_watermark_is_the_minimum_over_upstreams_not_idle() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // Read as stored (caught up): stream time 1_000_000 + ms.
        let stored = |ms: u64| 1_000_000 + ms;
        let mut upstreams = UpstreamWatermarks::new(3, Duration::from_millis(1_000));
        assert_eq!(upstreams.current(at(0)), None);
        // Until each upstream has sent one (or is idle), there is none.
        upstreams.record("s1#p0", 5_000, stored(10), at(10));
        upstreams.record("s1#p1", 2_000, stored(20), at(20));
        assert_eq!(upstreams.current(at(30)), None);
        upstreams.record("s1#p2", 9_000, stored(40), at(40));
        assert_eq!(upstreams.current(at(50)), Some(2_000));
        // Each upstream's own watermark never goes back.
        upstreams.record("s1#p1", 1_000, stored(60), at(60));
        assert_eq!(upstreams.current(at(70)), Some(2_000));
        upstreams.record("s1#p1", 3_000, stored(900), at(900));
        assert_eq!(upstreams.current(at(950)), Some(3_000));
        // p0 and p2 silent for the idle timeout: left out.
        assert_eq!(upstreams.current(at(1_010)), Some(3_000));
        upstreams.record("s1#p1", 4_000, stored(1_020), at(1_020));
        assert_eq!(upstreams.current(at(1_040)), Some(4_000));
        // Every upstream idle: no watermark.
        assert_eq!(upstreams.current(at(2_100)), None);
        // One comes back: it counts again (and holds the others back).
        upstreams.record("s1#p2", 9_500, stored(2_200), at(2_200));
        assert_eq!(upstreams.current(at(2_210)), Some(9_500));
        upstreams.record("s1#p0", 6_000, stored(2_300), at(2_300));
        assert_eq!(upstreams.current(at(2_310)), Some(6_000));
        assert!(upstreams.changed(at(2_320)));
        assert!(!upstreams.changed(at(2_330)));
        assert_eq!(upstreams.reported(), Some(6_000));
    }

    #[test]
    fn an_upstream_never_heard_of_is_left_out_after_the_idle_timeout() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut upstreams = UpstreamWatermarks::new(2, Duration::from_millis(1_000));
        upstreams.record("s1#p0", 7_000, 500, at(0));
        upstreams.record("s1#p0", 7_500, 1_200, at(700));
        // Stream time 1_499: p1 silent since the first message, 999 ms.
        assert_eq!(upstreams.current(at(999)), None);
        assert_eq!(upstreams.current(at(1_000)), Some(7_500));
    }

    /// A backlog read in one burst: the idle upstream stopped 5 s (of
    /// stream time) before the others, though all were read at once; it
    /// is left out by the time its messages were stored, and once every
    /// upstream has been quiet there is still a moment with the others'
    /// minimum (measured from when each was stored, not read).
    #[test]
    fn silence_is_measured_in_the_streams_time() {
        let read = Instant::now();
        let mut upstreams = UpstreamWatermarks::new(3, Duration::from_millis(3_000));
        upstreams.record("s1#p0", 1_000, 10_000, read);
        upstreams.record("s1#p1", 1_100, 10_100, read);
        upstreams.record("s1#p2", 1_200, 10_200, read);
        upstreams.record("s1#p0", 6_000, 15_000, read);
        upstreams.record("s1#p1", 6_100, 15_100, read);
        // p2 stored nothing for 4.8 s of stream time: left out already.
        assert_eq!(upstreams.current(read), Some(6_000));
        // All read at once, then quiet.
        let mut burst = UpstreamWatermarks::new(3, Duration::from_millis(3_000));
        burst.record("s1#p2", 1_200, 10_200, read);
        burst.record("s1#p0", 6_000, 12_000, read);
        burst.record("s1#p1", 6_100, 12_100, read);
        assert_eq!(burst.current(read), Some(1_200));
        let later = |ms: u64| read + Duration::from_millis(ms);
        // Stream time 13_200: p2 left out, p0 and p1 not yet.
        assert_eq!(burst.current(later(1_100)), Some(6_000));
        assert_eq!(burst.current(later(3_100)), None);
        // Events move stream time too.
        let mut events = UpstreamWatermarks::new(2, Duration::from_millis(3_000));
        events.record("s1#p0", 1_000, 10_000, read);
        events.record("s1#p1", 2_000, 10_000, read);
        events.observe(14_000, read);
        assert_eq!(events.current(read), None);
    }

    #[test]
    fn a_moved_consumer_leader_is_retried_and_a_deleted_consumer_is_not() {
        // As async-nats 0.51 words the server's 409s (seen in a cluster test).
        assert!(is_leader_moved(
            "error while processing messages from the stream: 409, Some(\"Leadership Change\")"
        ));
        assert!(is_leader_moved(
            "error while processing messages from the stream: 409, Some(\"Server Shutdown\")"
        ));
        assert!(!is_leader_moved(
            "error while processing messages from the stream: 409, Some(\"Consumer Deleted\")"
        ));
        assert!(!is_leader_moved("Leadership Change"));
    }
}
