//! `{"type": "redis", …}`: the Redis state backend's config.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::validate::redact_url;
use crate::config::validate::CONNECT_TIMEOUT;
use crate::config::{Checks, ConnectorSpec, FieldError, StateSpec};
use crate::state::{RedisOptions, RedisState, SharedState, StateError};
use plumber_engine::ErrorChain;

/// `{"type": "redis", "url": …}`: a Redis server.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStateConfig {
    /// The server, e.g. `redis://127.0.0.1:6379/` (required).
    pub url: String,
    /// Put in front of every key (default `plumber:`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// How long to keep retrying an unreachable server before failing, in
    /// ms (default 30 000), with the waits of the one retry policy (docs/connectors.md,
    /// "Retries"; [`RetryPolicy`](crate::retry::RetryPolicy)).
    #[serde(default)]
    pub reconnect_timeout_ms: Option<u64>,
}

#[async_trait]
impl ConnectorSpec for RedisStateConfig {
    fn validate(&self, checks: &mut Checks) -> Result<(), FieldError> {
        let url = &self.url;
        // Parsing connects to nothing; its message never repeats the URL.
        redis::Client::open(url.as_str()).map_err(|error| {
            FieldError::new(
                "url",
                format!("`{}` is not a Redis URL: {error}", redact_url(url)),
            )
        })?;
        checks.needs_connect(format!("the Redis server at {}", redact_url(url)));
        Ok(())
    }

    async fn check_connected(&self) -> Result<(), FieldError> {
        // The check waits its own time, not the pipeline's reconnect timeout.
        let options = RedisOptions {
            reconnect_timeout: CONNECT_TIMEOUT,
            ..self.options()
        };
        RedisState::connect(&self.url, options)
            .await
            .map(drop)
            .map_err(|error| FieldError::new("url", ErrorChain(&error).to_string()))
    }
}

#[async_trait]
impl StateSpec for RedisStateConfig {
    async fn open(&self) -> Result<SharedState, StateError> {
        Ok(Arc::new(
            RedisState::connect(&self.url, self.options()).await?,
        ))
    }
}

impl RedisStateConfig {
    /// The options this config sets, the defaults for the rest.
    fn options(&self) -> RedisOptions {
        let mut options = RedisOptions::default();
        if let Some(prefix) = &self.key_prefix {
            options.key_prefix = prefix.clone();
        }
        if let Some(ms) = self.reconnect_timeout_ms {
            options.reconnect_timeout = Duration::from_millis(ms);
        }
        options
    }
}
