//! `{"type": "nats", …}` and `{"type": "jetstream", …}`: the configs of
//! the core NATS and JetStream sources and sinks.

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use serde::Deserialize;

use super::{JetStreamConsumerOptions, JetStreamSink, JetStreamSource, NatsSink, NatsSource};
use crate::config::validate::redact_url;
use crate::config::validate::CONNECT_TIMEOUT;
use crate::config::{
    Checks, ConnectorSpec, FieldError, OpenContext, OutputGuarantee, SinkSpec, SourceSpec,
};
use crate::streams::{Sink, Source, StreamError};
use plumber_engine::shuffle::ShuffleKey;

fn default_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

/// `{"type": "nats", "subject": …}` as a source: what is published while
/// the pipeline runs (at-most-once).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject, wildcards allowed (required).
    pub subject: String,
    /// Queue group, to share the subject between workers (default: none).
    #[serde(default)]
    pub queue_group: Option<String>,
}

#[async_trait]
impl ConnectorSpec for NatsSourceConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url)?;
        check_subject(&self.subject, "subject", true)?;
        checks.needs_connect(format!("the NATS server at {}", redact_url(&self.url)));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        client(&self.url).await.map(drop)
    }
}

#[async_trait]
impl SourceSpec for NatsSourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        Ok(Box::new(
            NatsSource::connect(&self.url, &self.subject, self.queue_group.clone()).await?,
        ))
    }
}

/// `{"type": "nats", "subject": …}` as a sink: core NATS publishes
/// (at-least-once at best).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject, no wildcards (required).
    pub subject: String,
    /// Take each event's subject from this header when it has it (default:
    /// always `subject`).
    #[serde(default)]
    pub subject_from_header: Option<String>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
}

#[async_trait]
impl ConnectorSpec for NatsSinkConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url)?;
        check_subject(&self.subject, "subject", false)?;
        checks.needs_connect(format!("the NATS server at {}", redact_url(&self.url)));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        client(&self.url).await.map(drop)
    }
}

#[async_trait]
impl SinkSpec for NatsSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        let mut sink = NatsSink::connect(&self.url, &self.subject).await?;
        if let Some(header) = &self.subject_from_header {
            sink = sink.subject_from_header(header);
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            sink = sink.reconnect_timeout(Duration::from_millis(ms));
        }
        Ok(Box::new(sink))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::AtLeastOnce(
            "exactly-once on state, but core NATS output is at-least-once at best: replayed \
             events are published again",
        )
    }
}

/// `{"type": "jetstream", "stream": …, "consumer": …}` as a source: a
/// durable pull consumer; messages are acked once a checkpoint covers
/// them, and the position is the stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSourceConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// The stream (required).
    pub stream: String,
    /// The durable consumer, created if missing; it belongs to the pipeline
    /// (required).
    pub consumer: String,
    /// Only this subject of the stream (default: all of it).
    #[serde(default)]
    pub filter_subject: Option<String>,
    /// The subjects the stream captures, for `plumber setup` to create it
    /// when it does not exist (default: `filter_subject`).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Redelivery wait for unacked messages, in ms (default 30 000).
    #[serde(default)]
    pub ack_wait_ms: Option<u64>,
    /// Most unacked messages in flight (default 100 000).
    #[serde(default)]
    pub max_ack_pending: Option<i64>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
    /// The stream is a shuffle stream fed by this many upstream tasks that
    /// send watermark messages: the source's watermark is their minimum,
    /// which event-time windows use (default: none; a `repartition` step's
    /// second stage sets it).
    #[serde(default)]
    pub watermark_upstreams: Option<u32>,
    /// With `watermark_upstreams`: an upstream that sent no watermark
    /// message for this long is left out of the minimum, in ms (default
    /// 60 000).
    #[serde(default)]
    pub watermark_idle_timeout_ms: Option<u64>,
}

#[async_trait]
impl ConnectorSpec for JetStreamSourceConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url)?;
        if self.watermark_upstreams == Some(0) {
            return Err(FieldError::new(
                "watermark_upstreams",
                "expected the number of upstream tasks, at least 1",
            ));
        }
        match self.watermark_idle_timeout_ms {
            Some(_) if self.watermark_upstreams.is_none() => {
                return Err(FieldError::new(
                    "watermark_idle_timeout_ms",
                    "applies to the upstreams' watermarks: set `watermark_upstreams` too",
                ))
            }
            Some(0) => {
                return Err(FieldError::new(
                    "watermark_idle_timeout_ms",
                    "expected a positive number of milliseconds",
                ))
            }
            _ => {}
        }
        check_name(&self.stream, "stream")?;
        check_name(&self.consumer, "consumer")?;
        if let Some(subject) = &self.filter_subject {
            check_subject(subject, "filter_subject", true)?;
        }
        for (index, subject) in self.subjects.iter().enumerate() {
            check_subject(subject, &format!("subjects[{index}]"), true)?;
        }
        checks.needs_connect(format!(
            "the JetStream stream `{}` at {}",
            self.stream,
            redact_url(&self.url)
        ));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        let stream = &self.stream;
        let jetstream = jetstream::new(client(&self.url).await?);
        jetstream
            .get_stream(stream)
            .await
            .map(drop)
            .map_err(|error| {
                FieldError::new(
                    "stream",
                    format!(
                        "no JetStream stream `{stream}` at {} ({error}): create it, or let \
                     `plumber setup CONFIG` create it with the source's `subjects`",
                        redact_url(&self.url)
                    ),
                )
            })
    }

    async fn setup(&self) -> Result<Option<String>, FieldError> {
        let stream = &self.stream;
        let context = context(&self.url).await?;
        if context.get_stream(stream).await.is_ok() {
            return Ok(Some(format!("stream `{stream}` exists")));
        }
        let subjects: Vec<String> = if self.subjects.is_empty() {
            self.filter_subject.iter().cloned().collect()
        } else {
            self.subjects.clone()
        };
        if subjects.is_empty() {
            return Err(FieldError::new(
                "subjects",
                format!(
                    "there is no stream `{stream}`, and the source does not say which subjects \
                     it captures: add \"subjects\": [\"…\"] (or a `filter_subject`)"
                ),
            ));
        }
        create_stream(&context, stream, subjects.clone()).await?;
        let quoted: Vec<String> = subjects.iter().map(|name| format!("`{name}`")).collect();
        Ok(Some(format!(
            "created stream `{stream}` capturing {}",
            quoted.join(", ")
        )))
    }
}

#[async_trait]
impl SourceSpec for JetStreamSourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        let mut options = JetStreamConsumerOptions::default();
        if let Some(ms) = self.ack_wait_ms {
            options.ack_wait = Duration::from_millis(ms);
        }
        if let Some(max) = self.max_ack_pending {
            options.max_ack_pending = max;
        }
        let mut source = JetStreamSource::connect_with(
            &self.url,
            &self.stream,
            &self.consumer,
            self.filter_subject.clone(),
            options,
        )
        .await?;
        if let Some(ms) = self.reconnect_timeout_ms {
            source = source.reconnect_timeout(Duration::from_millis(ms));
        }
        if let Some(upstreams) = self.watermark_upstreams {
            let idle = self
                .watermark_idle_timeout_ms
                .unwrap_or(plumber_engine::shuffle::DEFAULT_IDLE_TIMEOUT_MS);
            source = source.upstream_watermarks(upstreams, Duration::from_millis(idle));
        }
        Ok(Box::new(source))
    }
}

/// `{"type": "jetstream", "subject": …}` as a sink: JetStream publishes
/// with `Nats-Msg-Id` from the pipeline and the source sequence:
/// exactly-once within the stream's duplicate window.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JetStreamSinkConfig {
    /// Server URL (default `nats://127.0.0.1:4222`).
    #[serde(default = "default_url")]
    pub url: String,
    /// Subject, captured by a stream (required).
    pub subject: String,
    /// The stream that captures `subject`, for `plumber setup` to create
    /// (with `subject` as its subject) when no stream captures it (default:
    /// none; setup then needs the stream to exist).
    #[serde(default)]
    pub stream: Option<String>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
    /// Publish each event to `<subject>.<key>`, the key by `"key"` or
    /// `{"field": …}` written as one subject token (default: always
    /// `subject`); what a `repartition` step's first stage publishes with.
    #[serde(default)]
    pub subject_key_by: Option<ShuffleKey>,
    /// With `subject_key_by`: at each checkpoint, publish the highest event
    /// timestamp written so far as a watermark message to each of this many
    /// partitions of the stream (default: none; a `repartition` step's
    /// first stage sets it when event-time windows follow the step).
    #[serde(default)]
    pub watermark_partitions: Option<u32>,
}

impl JetStreamSinkConfig {
    /// What a stream must capture: `subject`, or `<subject>.*` when each
    /// event goes to `<subject>.<key>`.
    fn captured(&self) -> String {
        match self.subject_key_by {
            Some(_) => format!("{}.*", self.subject),
            None => self.subject.clone(),
        }
    }
}

#[async_trait]
impl ConnectorSpec for JetStreamSinkConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        check_url(&self.url)?;
        check_subject(&self.subject, "subject", false)?;
        if let Some(stream) = &self.stream {
            check_name(stream, "stream")?;
        }
        match self.watermark_partitions {
            Some(0) => {
                return Err(FieldError::new(
                    "watermark_partitions",
                    "expected the number of partitions of the stream, at least 1",
                ))
            }
            Some(_) if self.subject_key_by.is_none() => {
                return Err(FieldError::new(
                    "watermark_partitions",
                    "watermark messages go to the partitions of a stream partitioned by the key: \
                     set `subject_key_by` too",
                ))
            }
            _ => {}
        }
        checks.needs_connect(format!(
            "a JetStream stream capturing `{}` at {}",
            self.captured(),
            redact_url(&self.url)
        ));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        let subject = &self.captured();
        let jetstream = jetstream::new(client(&self.url).await?);
        match jetstream.stream_by_subject(subject.as_str()).await {
            Ok(_) => Ok(()),
            Err(error) => Err(FieldError::new(
                "subject",
                format!(
                    "no JetStream stream at {} captures `{subject}` ({error}): create one, or \
                     name it in the sink's `stream` and let `plumber setup CONFIG` create it",
                    redact_url(&self.url)
                ),
            )),
        }
    }

    async fn setup(&self) -> Result<Option<String>, FieldError> {
        let subject = &self.captured();
        let context = context(&self.url).await?;
        if let Ok(name) = context.stream_by_subject(subject).await {
            return Ok(Some(format!("stream `{name}` captures `{subject}`")));
        }
        let Some(stream) = &self.stream else {
            return Err(FieldError::new(
                "stream",
                format!(
                    "no stream captures `{subject}`: name one in the sink's \"stream\" for setup \
                     to create, or create it yourself"
                ),
            ));
        };
        create_stream(&context, stream, vec![subject.clone()]).await?;
        Ok(Some(format!(
            "created stream `{stream}` capturing `{subject}`"
        )))
    }
}

#[async_trait]
impl SinkSpec for JetStreamSinkConfig {
    async fn open(&self, context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        let mut sink = JetStreamSink::connect(&self.url, &self.subject, context.pipeline).await?;
        if let Some(key_by) = &self.subject_key_by {
            sink = sink.subject_key_by(key_by.clone());
        }
        if let Some(partitions) = self.watermark_partitions {
            sink = sink.publish_watermarks(partitions);
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            sink = sink.reconnect_timeout(Duration::from_millis(ms));
        }
        Ok(Box::new(sink))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::ExactlyOnce(
            "exactly-once: state, and the JetStream sink within the stream's duplicate window",
        )
    }
}

/// The `url` field: a NATS server address, or several separated by commas
/// (parsing connects to nothing).
fn check_url(url: &str) -> Result<(), FieldError> {
    addrs(url).map(drop)
}

/// The servers of the `url` field.
fn addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, FieldError> {
    super::server_addrs(url).map_err(|_| {
        let bad = url
            .split(',')
            .map(str::trim)
            .find(|part| part.parse::<async_nats::ServerAddr>().is_err())
            .unwrap_or(url);
        FieldError::new(
            "url",
            format!(
                "`{}` is not a NATS URL (one URL, or several separated by commas)",
                redact_url(bad)
            ),
        )
    })
}

/// A NATS subject at `field`: dot-separated tokens, none empty, no
/// whitespace; wildcards (`*`, a last `>`) only where it is subscribed to.
fn check_subject(subject: &str, field: &str, wildcards: bool) -> Result<(), FieldError> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let last = tokens.len() - 1;
    for (index, token) in tokens.iter().enumerate() {
        let problem = if token.is_empty() {
            Some("has an empty token (`..`, or a `.` at an end)")
        } else if token.chars().any(char::is_whitespace) {
            Some("contains whitespace")
        } else if (*token == "*" || (*token == ">" && index == last)) && !wildcards {
            Some("has a wildcard, but messages are published to it")
        } else if token.len() > 1 && token.contains(['*', '>']) || *token == ">" && index != last {
            Some("has `*` or `>` inside a token (a wildcard is a whole token, `>` the last)")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(FieldError::new(
                field,
                format!("subject `{subject}` {problem}"),
            ));
        }
    }
    Ok(())
}

/// A JetStream stream or consumer name at `field`.
fn check_name(name: &str, field: &str) -> Result<(), FieldError> {
    if name.is_empty()
        || name.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
    {
        return Err(FieldError::new(
            field,
            format!(
                "`{name}` is not a JetStream name: it needs at least one character, and no \
                 whitespace, `.`, `*`, `>`, `/` or `\\`"
            ),
        ));
    }
    Ok(())
}

/// A connection to the NATS server at `url`, within [`CONNECT_TIMEOUT`].
async fn client(url: &str) -> Result<async_nats::Client, FieldError> {
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .max_reconnects(Some(1));
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect(addrs(url)?)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(error)) => Err(FieldError::new(
            "url",
            format!(
                "cannot reach the NATS server at {}: {error}",
                redact_url(url)
            ),
        )),
        Err(_) => Err(FieldError::new(
            "url",
            format!(
                "no answer from the NATS server at {} within {CONNECT_TIMEOUT:?}",
                redact_url(url)
            ),
        )),
    }
}

/// A JetStream context on the server at `url`, for `plumber setup`.
async fn context(url: &str) -> Result<jetstream::Context, FieldError> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(addrs(url)?)
        .await
        .map_err(|error| {
            FieldError::new(
                "url",
                format!(
                    "cannot reach the NATS server at {}: {error}",
                    redact_url(url)
                ),
            )
        })?;
    Ok(jetstream::new(client))
}

async fn create_stream(
    context: &jetstream::Context,
    name: &str,
    subjects: Vec<String>,
) -> Result<(), FieldError> {
    context
        .create_stream(jetstream::stream::Config {
            name: name.to_owned(),
            subjects,
            ..Default::default()
        })
        .await
        .map(drop)
        .map_err(|error| {
            FieldError::new("stream", format!("cannot create stream `{name}`: {error}"))
        })
}
