//! Memory against distinct keys: the `keys` scenario of `plumber bench`.
//!
//! A running count over [`DistinctKeySource`] (every word of the input a
//! key never seen before, 1,000,000 of them at `--scale 1`) through the
//! `wordcount` guest, exactly-once, on the memory, sled, redb and (with
//! `--redis URL`) Redis backends. The figure is each run's peak RSS: what
//! the process holds beyond its state is bounded by configuration (the
//! write set by `checkpoint.max_pending_keys`/`max_pending_bytes`, redb's
//! page cache by its `cache_bytes`), not by the number of keys (sled's
//! footprint grows with them whatever its `cache_bytes`); the memory
//! backend holds every key in the process by definition (docs/benchmarks.md
//! gives its cost per key).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::pipeline::PipelineError;
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, RedbState, SharedState, SledState};
use plumber::streams::{DiscardSink, Source, StreamError};
use plumber::Event;

use super::wordcount::{pipeline, Job, Setup, WORDS_PER_LINE};
use super::{guest, measure, scaled, BenchArgs, BenchError, Engine, Table};

/// Distinct keys at `--scale 1`.
pub const DISTINCT_KEYS: u64 = 1_000_000;

/// The rows of the scenario, by backend.
pub const MEMORY_ROW: &str = "keys count (memory)";
/// See [`MEMORY_ROW`].
pub const SLED_ROW: &str = "keys count (sled)";
/// See [`MEMORY_ROW`].
pub const REDB_ROW: &str = "keys count (redb)";
/// See [`MEMORY_ROW`].
pub const REDIS_ROW: &str = "keys count (redis)";

/// A finite source of lines of [`WORDS_PER_LINE`] words where no word
/// repeats: line `i` holds `k<5i>` … `k<5i+4>` (decimal), timestamp `i`.
pub struct DistinctKeySource {
    lines: u64,
    next: u64,
}

impl DistinctKeySource {
    /// Lines enough for `keys` distinct words (rounded up to whole lines).
    pub fn new(keys: u64) -> Self {
        DistinctKeySource {
            lines: keys.div_ceil(WORDS_PER_LINE as u64),
            next: 0,
        }
    }

    /// The words of line `line`.
    pub fn line(line: u64) -> Vec<u8> {
        let mut value = Vec::with_capacity(WORDS_PER_LINE * 9);
        for word in 0..WORDS_PER_LINE as u64 {
            if word > 0 {
                value.push(b' ');
            }
            value.push(b'k');
            value.extend_from_slice((line * WORDS_PER_LINE as u64 + word).to_string().as_bytes());
        }
        value
    }
}

#[async_trait::async_trait]
impl Source for DistinctKeySource {
    fn describe(&self) -> String {
        format!(
            "distinct keys ({} lines of {WORDS_PER_LINE} new words)",
            self.lines
        )
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.next = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?
            .min(self.lines);
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let count = (self.lines - self.next).min(max as u64);
        if count == 0 {
            return Ok(None);
        }
        let events = (self.next..self.next + count)
            .map(|line| Event {
                key: None,
                value: Self::line(line),
                timestamp: Some(line),
                headers: Vec::new(),
            })
            .collect();
        self.next += count;
        Ok(Some((events, Position::Offset(self.next))))
    }
}

fn unique_name(backend: &str) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    format!("bench-keys-{backend}-{}-{run}", std::process::id())
}

/// The `keys` scenario: one row per backend with the run's peak RSS.
///
/// # Errors
///
/// The guest is missing, a backend cannot be opened or a pipeline failed.
pub async fn run(args: &BenchArgs, rt: &Runtime, table: &mut Table) -> Result<(), BenchError> {
    guest(&args.guests, "wordcount")?;
    let keys = scaled(DISTINCT_KEYS, args.scale);
    let setup = Setup::from_args(args, 0);
    let builder = |name: String, state: SharedState| {
        pipeline(
            name,
            Job::Count,
            Engine::Wasm,
            &setup,
            rt,
            state,
            DiscardSink::new(),
        )
        .map(|builder| {
            let policy = CheckpointPolicy::every(setup.checkpoint).with_max_pending(
                Some(args.max_pending_keys),
                Some(plumber::checkpoint::DEFAULT_MAX_PENDING_BYTES),
            );
            builder
                .checkpoint(policy)
                .from(DistinctKeySource::new(keys))
        })
    };
    let state_error = |name: &str| {
        let name = name.to_owned();
        move |source| {
            BenchError::from(PipelineError::State {
                pipeline: name,
                source,
            })
        }
    };

    // Each backend is opened only by the process that measures it: what
    // opening costs counts in that run alone.
    let memory = if super::will_measure(MEMORY_ROW, Engine::Wasm) {
        vec![builder(
            unique_name("memory"),
            Arc::new(MemoryState::new()),
        )?]
    } else {
        Vec::new()
    };
    table.push(measure(MEMORY_ROW, Engine::Wasm, 1, memory).await?);

    let dir = tempfile::tempdir().map_err(|e| {
        BenchError::Setup(format!("cannot make a directory for sled and redb: {e}"))
    })?;
    let sled = if super::will_measure(SLED_ROW, Engine::Wasm) {
        let name = unique_name("sled");
        let state = SledState::open(dir.path()).map_err(state_error(&name))?;
        vec![builder(name, Arc::new(state))?]
    } else {
        Vec::new()
    };
    table.push(measure(SLED_ROW, Engine::Wasm, 1, sled).await?);

    let redb = if super::will_measure(REDB_ROW, Engine::Wasm) {
        let name = unique_name("redb");
        let state = RedbState::open(dir.path().join("keys.redb")).map_err(state_error(&name))?;
        vec![builder(name, Arc::new(state))?]
    } else {
        Vec::new()
    };
    table.push(measure(REDB_ROW, Engine::Wasm, 1, redb).await?);

    if let Some(url) = &args.redis {
        let redis = if super::will_measure(REDIS_ROW, Engine::Wasm) {
            let name = unique_name("redis");
            let options = plumber::state::RedisOptions {
                key_prefix: format!("{name}:"),
                ..plumber::state::RedisOptions::default()
            };
            let state = plumber::state::RedisState::connect(url, options)
                .await
                .map_err(state_error(&name))?;
            vec![builder(name, Arc::new(state))?]
        } else {
            Vec::new()
        };
        table.push(measure(REDIS_ROW, Engine::Wasm, 1, redis).await?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::read_all;
    use super::*;

    #[tokio::test]
    async fn every_word_is_new_and_a_seek_continues_identically() {
        let all = read_all(&mut DistinctKeySource::new(1_003), 64).await;
        // 1,003 keys take 201 lines of 5 words (1,005 words).
        assert_eq!(all.len(), 201);
        let words: Vec<&[u8]> = all
            .iter()
            .flat_map(|e| e.value.split(|&b| b == b' '))
            .collect();
        let distinct: std::collections::HashSet<&[u8]> = words.iter().copied().collect();
        assert_eq!((words.len(), distinct.len()), (1_005, 1_005));
        let mut source = DistinctKeySource::new(1_003);
        source.seek(&Position::Offset(150)).await.unwrap();
        assert_eq!(read_all(&mut source, 7).await, all[150..]);
    }
}
