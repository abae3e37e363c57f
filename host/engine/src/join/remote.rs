//! The lookup join against an external table (a SQL query): each event is
//! emitted with the row its key finds in the table, looked up through a
//! cache whose entries live `cache_ttl_ms` and of which at most
//! `cache_max_keys` are kept. The keys a batch misses are looked up
//! together, once each, before the batch is emitted.
//!
//! Unlike the lookup-table join, the table is not in the pipeline's state:
//! a replay after a crash looks rows up again and gets the table as it is
//! then. The cache is not checkpointed (it is a cache).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{How, Side, SIDE_HEADER};
use crate::state::KeyHasher;
use crate::step::{Step, StepError};
use crate::streams::StreamError;
use crate::{Batch, Event};

/// A table to look rows up in by key, opened at start (a SQL query of the
/// `sql` connector).
#[async_trait]
pub trait RemoteTable: Send {
    /// The table's description for logs and errors.
    fn describe(&self) -> String;

    /// The row of each of `keys` (`None`: no row), in the order of `keys`.
    ///
    /// # Errors
    ///
    /// The table cannot be reached, or a lookup failed.
    async fn lookup(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StreamError>;
}

/// The cache of a remote lookup: `cache_ttl_ms` and `cache_max_keys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupCache {
    /// How long a looked-up row (or its absence) is used before it is
    /// looked up again.
    pub ttl: Duration,
    /// How many keys the cache holds at most; the oldest go first.
    pub max_keys: usize,
}

impl Default for LookupCache {
    fn default() -> Self {
        LookupCache {
            ttl: Duration::from_millis(DEFAULT_CACHE_TTL_MS),
            max_keys: DEFAULT_CACHE_MAX_KEYS,
        }
    }
}

/// `cache_ttl_ms` by default: a minute.
pub const DEFAULT_CACHE_TTL_MS: u64 = 60_000;
/// `cache_max_keys` by default.
pub const DEFAULT_CACHE_MAX_KEYS: usize = 100_000;

/// What a remote lookup has done, for tests and metrics.
#[derive(Debug, Default)]
pub struct RemoteLookupCounters {
    /// Keys looked up in the table.
    pub looked_up: std::sync::atomic::AtomicU64,
    /// Keys answered by the cache.
    pub cache_hits: std::sync::atomic::AtomicU64,
}

struct Cached {
    at: Instant,
    row: Option<Vec<u8>>,
}

/// The step of a lookup join against a [`RemoteTable`].
pub struct RemoteLookupStep {
    name: String,
    how: How,
    table: Box<dyn RemoteTable>,
    cache: LookupCache,
    rows: HashMap<Vec<u8>, Cached, KeyHasher>,
    /// Keys in the order they were cached (a key cached again appears
    /// twice; the older entry is skipped when it comes up).
    order: VecDeque<(Instant, Vec<u8>)>,
    counters: Arc<RemoteLookupCounters>,
}

impl RemoteLookupStep {
    /// A step named `name` looking keys up in `table`; `how` says whether
    /// events whose key finds no row are emitted (`Left`) or not (`Inner`).
    pub fn new(name: &str, table: Box<dyn RemoteTable>, how: How, cache: LookupCache) -> Self {
        RemoteLookupStep {
            name: name.to_owned(),
            how,
            table,
            cache,
            rows: HashMap::default(),
            order: VecDeque::new(),
            counters: Arc::default(),
        }
    }

    /// Its counters.
    pub fn lookup_counters(&self) -> Arc<RemoteLookupCounters> {
        self.counters.clone()
    }

    fn fresh(&self, key: &[u8], now: Instant) -> bool {
        self.rows
            .get(key)
            .is_some_and(|cached| now.duration_since(cached.at) < self.cache.ttl)
    }

    /// Drops expired entries and, past the bound, the oldest.
    fn evict(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            let expired = now.duration_since(*at) >= self.cache.ttl;
            if !expired && self.rows.len() <= self.cache.max_keys {
                break;
            }
            let Some((at, key)) = self.order.pop_front() else {
                break;
            };
            // Only the entry this position stands for: a key cached again
            // since has a newer one further back.
            if self.rows.get(&key).is_some_and(|cached| cached.at == at) {
                self.rows.remove(&key);
            }
        }
    }

    fn failed(&self, message: String) -> StepError {
        StepError::Native {
            step: self.name.clone(),
            message,
        }
    }
}

fn with_side(mut event: Event, side: Side) -> Event {
    event
        .headers
        .push((SIDE_HEADER.to_owned(), side.as_str().to_owned()));
    event
}

#[async_trait]
impl Step for RemoteLookupStep {
    fn kind(&self) -> &'static str {
        "lookup"
    }

    fn name(&self) -> &str {
        &self.name
    }

    async fn process(&mut self, batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        let now = Instant::now();
        let mut missing: Vec<Vec<u8>> = Vec::new();
        {
            let mut asked: HashSet<&[u8], KeyHasher> = HashSet::default();
            let mut hits = 0u64;
            for key in batch.events.iter().filter_map(|event| event.key.as_deref()) {
                if self.fresh(key, now) {
                    hits += 1;
                } else if asked.insert(key) {
                    missing.push(key.to_vec());
                }
            }
            self.counters
                .cache_hits
                .fetch_add(hits, std::sync::atomic::Ordering::Relaxed);
        }
        if !missing.is_empty() {
            let rows = self.table.lookup(&missing).await.map_err(|error| {
                self.failed(format!(
                    "looking {} key(s) up in {}: {error}",
                    missing.len(),
                    self.table.describe()
                ))
            })?;
            if rows.len() != missing.len() {
                return Err(self.failed(format!(
                    "{} answered {} rows for {} keys",
                    self.table.describe(),
                    rows.len(),
                    missing.len()
                )));
            }
            self.counters
                .looked_up
                .fetch_add(missing.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for (key, row) in missing.into_iter().zip(rows) {
                self.order.push_back((now, key.clone()));
                self.rows.insert(key, Cached { at: now, row });
            }
        }
        let mut events = Vec::with_capacity(batch.events.len() * 2);
        for event in batch.events {
            let row = event
                .key
                .as_deref()
                .and_then(|key| self.rows.get(key))
                .and_then(|cached| cached.row.clone());
            match (row, self.how) {
                (Some(row), _) => {
                    let right = Event {
                        key: event.key.clone(),
                        value: row,
                        timestamp: event.timestamp,
                        headers: Vec::new(),
                    };
                    events.push(with_side(event, Side::Left));
                    events.push(with_side(right, Side::Right));
                }
                (None, How::Left) => events.push(with_side(event, Side::Left)),
                (None, How::Inner) => {}
            }
        }
        // After the batch: its own keys stay until it is emitted.
        self.evict(now);
        if !events.is_empty() {
            out.push(Batch::new(events));
        }
        Ok(())
    }

    fn buffered_events(&self) -> Option<usize> {
        Some(self.rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of `k<n>` → `row<n>` for even n, counting its lookups.
    struct EvenRows {
        asked: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    }

    #[async_trait]
    impl RemoteTable for EvenRows {
        fn describe(&self) -> String {
            "the even rows".to_owned()
        }

        async fn lookup(&mut self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StreamError> {
            self.asked.lock().unwrap().extend(keys.iter().cloned());
            Ok(keys
                .iter()
                .map(|key| {
                    let n: u64 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
                    n.is_multiple_of(2).then(|| format!("row{n}").into_bytes())
                })
                .collect())
        }
    }

    fn keyed(n: u64) -> Event {
        Event::new(format!("v{n}").into_bytes()).with_key(format!("k{n}").into_bytes())
    }

    fn step(
        how: How,
        cache: LookupCache,
    ) -> (RemoteLookupStep, Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
        let asked = Arc::default();
        let table = EvenRows {
            asked: Arc::clone(&asked),
        };
        (
            RemoteLookupStep::new("prices", Box::new(table), how, cache),
            asked,
        )
    }

    fn values(out: &[Batch]) -> Vec<(String, String)> {
        out.iter()
            .flat_map(|batch| &batch.events)
            .map(|event| {
                let side = event
                    .headers
                    .iter()
                    .find(|(name, _)| name == SIDE_HEADER)
                    .map(|(_, v)| v.clone())
                    .unwrap();
                (side, String::from_utf8(event.value.clone()).unwrap())
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn each_event_is_followed_by_its_row_and_each_key_is_looked_up_once_per_ttl() {
        let cache = LookupCache {
            ttl: Duration::from_millis(1000),
            max_keys: 100,
        };
        let (mut inner, asked) = step(How::Inner, cache);
        let mut out = Vec::new();
        let batch = Batch::new(vec![
            keyed(2),
            keyed(3),
            keyed(2),
            Event::new(b"nokey".to_vec()),
        ]);
        inner.process(batch, &mut out).await.unwrap();
        assert_eq!(
            values(&out),
            [
                ("left".into(), "v2".into()),
                ("right".into(), "row2".into()),
                ("left".into(), "v2".into()),
                ("right".into(), "row2".into())
            ]
        );
        assert_eq!(*asked.lock().unwrap(), [b"k2".to_vec(), b"k3".to_vec()]);
        // Within the TTL: from the cache, a missing row too.
        let mut out = Vec::new();
        inner
            .process(Batch::new(vec![keyed(2), keyed(3)]), &mut out)
            .await
            .unwrap();
        assert_eq!(asked.lock().unwrap().len(), 2);
        // After it: looked up again.
        tokio::time::advance(Duration::from_millis(1000)).await;
        inner
            .process(Batch::new(vec![keyed(3)]), &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(asked.lock().unwrap().len(), 3);

        let (mut left, _) = step(How::Left, cache);
        let mut out = Vec::new();
        left.process(Batch::new(vec![keyed(3), keyed(4)]), &mut out)
            .await
            .unwrap();
        assert_eq!(
            values(&out),
            [
                ("left".into(), "v3".into()),
                ("left".into(), "v4".into()),
                ("right".into(), "row4".into())
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_holds_at_most_its_bound() {
        let cache = LookupCache {
            ttl: Duration::from_secs(3600),
            max_keys: 10,
        };
        let (mut lookup, asked) = step(How::Left, cache);
        for n in 0..1000 {
            let mut out = Vec::new();
            lookup
                .process(Batch::new(vec![keyed(n), keyed(n % 5)]), &mut out)
                .await
                .unwrap();
            // Every event is emitted, its row with it when there is one.
            assert_eq!(
                values(&out).len(),
                2 + usize::from(n.is_multiple_of(2)) + usize::from((n % 5).is_multiple_of(2))
            );
            assert!(lookup.buffered_events().unwrap() <= 10);
        }
        assert!(asked.lock().unwrap().len() >= 1000);
    }
}
