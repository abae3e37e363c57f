//! Workers of a pipeline: each has an entry in the members bucket
//! (refreshed every quarter of the lease TTL, gone after a TTL without
//! refresh) and answers requests on its ping subject. A peer whose ping
//! finds "no responders" is dead — its connection to NATS is gone — which
//! is known within a millisecond, long before its entry or leases expire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use async_nats::{Client, RequestErrorKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use crate::ClusterError;

/// How long a ping waits for an answer: a live worker answers in
/// microseconds; a dead one is reported by the server at once.
pub const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// The payload of a drain request on a worker's ping subject.
const DRAIN: &[u8] = b"drain";

/// The payload of a request every process answering a worker's ping
/// subject answers with its instance token (see [`Members::answer_pings`]).
const WHO: &[u8] = b"who";

/// What a worker publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The worker's id.
    pub id: String,
    /// The most partitions it runs (none: no limit).
    #[serde(default)]
    pub max_partitions: Option<u32>,
    /// Draining: it wants no partitions and gives its own away.
    #[serde(default)]
    pub draining: bool,
}

/// What a ping found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// The worker answered.
    Alive,
    /// Nobody listens on its ping subject: its process or its connection
    /// is gone.
    Dead,
    /// No answer in time (a slow or hung worker, or the network): not
    /// known dead; its lease ends it if it is.
    Unknown,
}

/// Checks a worker id: 1 to 64 ASCII letters, digits, `-` and `_` (it is
/// a key-value key and a subject token).
///
/// # Errors
///
/// A message saying what is wrong.
pub fn check_worker_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!(
            "a worker id has 1 to 64 characters; `{id}` has {}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        return Err(format!(
            "worker id `{id}` contains {bad:?}; use ASCII letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

/// The members bucket of one pipeline, and the pings between its workers.
#[derive(Clone)]
pub struct Members {
    client: Client,
    store: kv::Store,
    bucket: String,
}

impl Members {
    /// The members in bucket `bucket` (made by `plumber cluster init`).
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the bucket cannot be opened.
    pub async fn open(client: Client, bucket: &str) -> Result<Self, ClusterError> {
        let context = async_nats::jetstream::new(client.clone());
        let store = context.get_key_value(bucket).await.map_err(|e| {
            ClusterError::jetstream(
                format!("opening member bucket `{bucket}` (run `plumber cluster init` first)"),
                e,
            )
        })?;
        Ok(Members {
            client,
            store,
            bucket: bucket.to_owned(),
        })
    }

    /// The subject worker `id` answers pings on.
    #[must_use]
    pub fn ping_subject(&self, id: &str) -> String {
        format!("plumber.{}.ping.{id}", self.bucket)
    }

    /// Starts answering pings as `id` (until the returned task is aborted
    /// or the connection closes); a drain request (`plumber cluster drain`)
    /// sets `drain`, and a "who" request is answered with `instance` (a
    /// token of this process: [`Members::answered_by_another`]).
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the subscription fails.
    pub async fn answer_pings(
        &self,
        id: &str,
        instance: &str,
        drain: Arc<AtomicBool>,
    ) -> Result<JoinHandle<()>, ClusterError> {
        let mut pings = self
            .client
            .subscribe(self.ping_subject(id))
            .await
            .map_err(|e| ClusterError::jetstream(format!("subscribing to pings of `{id}`"), e))?;
        // The subscription is known to the server once flushed.
        self.client
            .flush()
            .await
            .map_err(|e| ClusterError::jetstream("flushing the ping subscription", e))?;
        let client = self.client.clone();
        let instance = instance.to_owned();
        Ok(tokio::spawn(async move {
            while let Some(ping) = pings.next().await {
                let answer = match ping.payload.as_ref() {
                    DRAIN => {
                        drain.store(true, Ordering::SeqCst);
                        "draining".to_owned()
                    }
                    WHO => instance.clone(),
                    _ => "pong".to_owned(),
                };
                if let Some(reply) = ping.reply {
                    if let Err(error) = client.publish(reply, answer.into()).await {
                        tracing::debug!(%error, "cannot answer a ping");
                    }
                }
            }
        }))
    }

    /// Writes (or refreshes) `member`'s entry.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the server does not answer.
    pub async fn heartbeat(&self, member: &Member) -> Result<(), ClusterError> {
        let value = serde_json::to_vec(member)
            .map_err(|e| ClusterError::jetstream("encoding a member entry", e))?;
        self.store
            .put(&member.id, value.into())
            .await
            .map(drop)
            .map_err(|e| ClusterError::jetstream(format!("heartbeat of `{}`", member.id), e))
    }

    /// Removes worker `id`'s entry (it leaves, or it was found dead).
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the server does not answer.
    pub async fn remove(&self, id: &str) -> Result<(), ClusterError> {
        self.store
            .delete(id)
            .await
            .map_err(|e| ClusterError::jetstream(format!("removing member `{id}`"), e))
    }

    /// The workers with an entry (alive within the last TTL, or not yet
    /// found dead), by id.
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the bucket cannot be read.
    pub async fn list(&self) -> Result<Vec<Member>, ClusterError> {
        let mut keys = self
            .store
            .keys()
            .await
            .map_err(|e| ClusterError::jetstream("listing the members", e))?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ClusterError::jetstream("listing the members", e))?;
            let entry = self
                .store
                .entry(key.clone())
                .await
                .map_err(|e| ClusterError::jetstream(format!("reading member `{key}`"), e))?;
            let Some(entry) = entry else { continue };
            if entry.operation != Operation::Put {
                continue;
            }
            match serde_json::from_slice::<Member>(&entry.value) {
                Ok(member) => members.push(member),
                Err(error) => {
                    tracing::warn!(key, %error, "ignoring a member entry that is not one");
                }
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// Asks worker `id` to hand all its partitions over (after a final
    /// checkpoint each) and take none; it keeps running, idle, until
    /// stopped.
    ///
    /// # Errors
    ///
    /// [`ClusterError::NoSuchWorker`] when no worker `id` runs,
    /// [`ClusterError::JetStream`] when it does not answer.
    pub async fn drain(&self, id: &str) -> Result<(), ClusterError> {
        let request = async_nats::Request::new()
            .payload(DRAIN.into())
            .timeout(Some(PING_TIMEOUT));
        match self
            .client
            .send_request(self.ping_subject(id), request)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == RequestErrorKind::NoResponders => {
                Err(ClusterError::NoSuchWorker {
                    id: id.to_owned(),
                    bucket: self.bucket.clone(),
                })
            }
            Err(error) => Err(ClusterError::jetstream(format!("draining `{id}`"), error)),
        }
    }

    /// Whether a process other than `instance` answers worker `id`'s ping
    /// subject: asked once `instance` answers there itself, so of two
    /// processes that took the same id at the same moment each sees the
    /// other (the answers are gathered for [`PING_TIMEOUT`]).
    ///
    /// # Errors
    ///
    /// [`ClusterError::JetStream`] when the request cannot be sent.
    pub async fn answered_by_another(
        &self,
        id: &str,
        instance: &str,
    ) -> Result<bool, ClusterError> {
        let failed = |e: &dyn std::fmt::Display| {
            ClusterError::jetstream(format!("asking who answers the pings of `{id}`"), e)
        };
        let inbox = self.client.new_inbox();
        let mut answers = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| failed(&e))?;
        self.client
            .publish_with_reply(self.ping_subject(id), inbox, WHO.into())
            .await
            .map_err(|e| failed(&e))?;
        self.client.flush().await.map_err(|e| failed(&e))?;
        let gathered = tokio::time::timeout(PING_TIMEOUT, async {
            while let Some(answer) = answers.next().await {
                if answer.payload.as_ref() != instance.as_bytes() {
                    return true;
                }
            }
            false
        })
        .await;
        Ok(gathered.unwrap_or(false))
    }

    /// Pings worker `id`.
    pub async fn ping(&self, id: &str) -> Ping {
        let request = async_nats::Request::new()
            .payload("ping".into())
            .timeout(Some(PING_TIMEOUT));
        match self
            .client
            .send_request(self.ping_subject(id), request)
            .await
        {
            Ok(_) => Ping::Alive,
            Err(error) if error.kind() == RequestErrorKind::NoResponders => Ping::Dead,
            Err(_) => Ping::Unknown,
        }
    }
}
