//! `{"type": "http", …}`: the configs of the HTTP source and sink.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use super::{HttpSink, HttpSource};
use crate::config::validate::redact_url;
use crate::config::validate::CONNECT_TIMEOUT;
use crate::config::{
    Checks, ConnectorSpec, FieldError, OpenContext, OutputGuarantee, SinkSpec, SourceSpec,
};
use crate::streams::{Sink, Source, StreamError};

/// `{"type": "http", "listen": …}` as a source: an endpoint that accepts
/// POSTed events, answered 202 once a checkpoint commits them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSourceConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` (required).
    pub listen: SocketAddr,
    /// The path events are POSTed to (default `/events`).
    #[serde(default = "default_path")]
    pub path: String,
    /// Requests that may wait for the pipeline before it answers 503 (default 64).
    #[serde(default)]
    pub capacity: Option<usize>,
    /// Most events in one request, 429 past it (default 10 000).
    #[serde(default)]
    pub max_batch: Option<usize>,
}

fn default_path() -> String {
    "/events".to_owned()
}

#[async_trait]
impl ConnectorSpec for HttpSourceConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        if !self.path.starts_with('/') {
            return Err(FieldError::new(
                "path",
                format!(
                    "expected a path starting with `/`, such as `/events`, not `{}`",
                    self.path
                ),
            ));
        }
        checks.needs_connect(format!("binding {}", self.listen));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        let listen = self.listen;
        tokio::net::TcpListener::bind(listen)
            .await
            .map(drop)
            .map_err(|error| {
                FieldError::new("listen", format!("cannot listen on {listen}: {error}"))
            })
    }
}

#[async_trait]
impl SourceSpec for HttpSourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        let mut source =
            HttpSource::bind(self.listen, &self.path, self.capacity.unwrap_or(64)).await?;
        if let Some(events) = self.max_batch {
            source = source.max_batch(events);
        }
        Ok(Box::new(source))
    }
}

/// `{"type": "http", "url": …}` as a sink: POSTs each checkpoint's events
/// as one JSON array, with retries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// Where to POST: an `http://` URL (required).
    pub url: String,
    /// Per-request timeout in ms (default 10 000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// At most this many retries (default: as many as fit in
    /// `reconnect_timeout_ms`).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// POST early once this many events are buffered (default 10 000).
    #[serde(default)]
    pub max_buffered: Option<usize>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
}

#[async_trait]
impl ConnectorSpec for HttpSinkConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        let url = &self.url;
        let parsed = reqwest::Url::parse(url)
            .map_err(|error| FieldError::new("url", format!("`{url}` is not a URL: {error}")))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(FieldError::new(
                    "url",
                    "this build of plumber speaks HTTP without TLS: use an http:// URL",
                ))
            }
            other => {
                return Err(FieldError::new(
                    "url",
                    format!("expected an http:// URL, not a `{other}` one"),
                ))
            }
        }
        checks.needs_connect(format!("the HTTP server of {}", redact_url(url)));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        let url = &self.url;
        let parsed =
            reqwest::Url::parse(url).map_err(|error| FieldError::new("url", error.to_string()))?;
        let addresses = parsed
            .socket_addrs(|| None)
            .map_err(|error| FieldError::new("url", format!("cannot resolve {url}: {error}")))?;
        let connected =
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&*addresses))
                .await;
        match connected {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(FieldError::new(
                "url",
                format!("cannot connect to {url}: {error}"),
            )),
            Err(_) => Err(FieldError::new(
                "url",
                format!("no connection to {url} within {CONNECT_TIMEOUT:?}"),
            )),
        }
    }
}

#[async_trait]
impl SinkSpec for HttpSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        let mut sink = HttpSink::new(&self.url);
        if let Some(ms) = self.reconnect_timeout_ms {
            sink = sink.reconnect_timeout(Duration::from_millis(ms));
        }
        if let Some(ms) = self.timeout_ms {
            sink = sink.timeout(Duration::from_millis(ms));
        }
        if let Some(retries) = self.max_retries {
            sink = sink.max_retries(retries);
        }
        if let Some(events) = self.max_buffered {
            sink = sink.max_buffered(events);
        }
        Ok(Box::new(sink))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::AtLeastOnce(
            "exactly-once on state, but the HTTP sink is at-least-once: a retried or replayed \
             POST may deliver events twice",
        )
    }
}
