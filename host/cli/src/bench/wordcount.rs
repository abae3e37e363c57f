//! Word count over generated text: the `wordcount`, `scaling` and `memory`
//! scenarios of `plumber bench`.
//!
//! The input is [`TextSource`]: lines of five words drawn uniformly from a
//! fixed 10,000-word [`vocabulary`], one line per millisecond of event
//! time. The same pipelines run with native Rust steps and with the
//! `wordcount` (and `upper`) guests, built by [`pipeline`], so the tests can
//! check that both produce the same events.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Delivery, Position};
use plumber::pipeline::{Pipeline, PipelineBuilder, PipelineError};
use plumber::runtime::Runtime;
use plumber::state::{MemoryState, SharedState, SledState};
use plumber::step::{NativeStep, WasmPipe};
use plumber::streams::{DiscardSink, Sink, Source, StreamError};
use plumber::window::{EventTime, Window};
use plumber::{Batch, Event};

use super::{guest, measure, scaled, BenchArgs, BenchError, Engine, Row, Table};

/// Lines of the suite's text at `--scale 1`.
pub const LINES: u64 = 2_000_000;
/// Words in every generated line.
pub const WORDS_PER_LINE: usize = 5;
/// Distinct words the lines are drawn from.
pub const VOCABULARY_SIZE: usize = 10_000;
/// The tumbling window of the `window` job: 1,000 lines, 5,000 words.
pub const WINDOW: Duration = Duration::from_millis(1_000);
/// The `memory` scenario's larger input, as a multiple of the smaller.
const MEMORY_FACTOR: u64 = 5;

const CONSONANTS: &[u8] = b"bdfghklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

// The 64-bit LCG of `GeneratedSource` (Knuth's MMIX constants).
const LCG_MULTIPLIER: u64 = 6364136223846793005;
const LCG_INCREMENT: u64 = 1442695040888963407;

/// The fixed vocabulary: 10,000 distinct lower-case words of 3 to 10
/// letters, made of consonant-vowel syllables (sometimes ending in a
/// consonant). The same in every run, whatever the seed.
pub fn vocabulary() -> &'static [Box<str>] {
    static WORDS: OnceLock<Vec<Box<str>>> = OnceLock::new();
    WORDS.get_or_init(|| {
        // A generator of its own, so the vocabulary does not depend on `--seed`.
        let mut rng = 0x5eed_u64;
        let mut next = |bound: usize| {
            rng = rng.wrapping_mul(LCG_MULTIPLIER).wrapping_add(LCG_INCREMENT);
            pick(rng, bound)
        };
        let mut seen = std::collections::HashSet::with_capacity(VOCABULARY_SIZE);
        let mut words = Vec::with_capacity(VOCABULARY_SIZE);
        while words.len() < VOCABULARY_SIZE {
            let syllables = 1 + next(5);
            let mut word = String::with_capacity(10);
            for _ in 0..syllables {
                word.push(char::from(CONSONANTS[next(CONSONANTS.len())]));
                word.push(char::from(VOWELS[next(VOWELS.len())]));
            }
            if word.len() < 10 && (word.len() < 3 || next(2) == 1) {
                word.push(char::from(CONSONANTS[next(CONSONANTS.len())]));
            }
            if seen.insert(word.clone()) {
                words.push(word.into_boxed_str());
            }
        }
        words
    })
}

/// An index below `bound` from the high 32 bits of an LCG state (the low
/// bits of a power-of-two LCG have short periods).
fn pick(state: u64, bound: usize) -> usize {
    (((state >> 32) * bound as u64) >> 32) as usize
}

/// The LCG state `steps` steps after `state`, in O(log steps) (Brown's
/// jump-ahead), so a seek does not replay the text.
fn lcg_jump(state: u64, mut steps: u64) -> u64 {
    let (mut multiplier, mut increment) = (1u64, 0u64);
    let (mut step_multiplier, mut step_increment) = (LCG_MULTIPLIER, LCG_INCREMENT);
    while steps > 0 {
        if steps & 1 == 1 {
            multiplier = multiplier.wrapping_mul(step_multiplier);
            increment = increment
                .wrapping_mul(step_multiplier)
                .wrapping_add(step_increment);
        }
        step_increment = step_multiplier.wrapping_add(1).wrapping_mul(step_increment);
        step_multiplier = step_multiplier.wrapping_mul(step_multiplier);
        steps >>= 1;
    }
    multiplier.wrapping_mul(state).wrapping_add(increment)
}

/// A finite source of deterministic text: `lines` lines of five words from
/// [`vocabulary`], joined by single spaces, drawn by an LCG seeded with
/// `seed`; no key; line `i` has timestamp `i` (one line per millisecond of
/// event time). Lines are made as they are read, so the input costs no
/// memory beyond each line's own value.
pub struct TextSource {
    total: u64,
    produced: u64,
    seed: u64,
    rng: u64,
    vocabulary: &'static [Box<str>],
}

impl TextSource {
    /// `lines` lines from `seed`.
    pub fn new(lines: u64, seed: u64) -> Self {
        TextSource {
            total: lines,
            produced: 0,
            seed,
            rng: Self::initial_state(seed),
            vocabulary: vocabulary(),
        }
    }

    fn initial_state(seed: u64) -> u64 {
        // One splitmix64 round, so neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// The next line, or `None` after the last.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.produced >= self.total {
            return None;
        }
        // Five words of at most 10 letters and four spaces.
        let mut value = Vec::with_capacity(WORDS_PER_LINE * 11);
        for i in 0..WORDS_PER_LINE {
            self.rng = self
                .rng
                .wrapping_mul(LCG_MULTIPLIER)
                .wrapping_add(LCG_INCREMENT);
            if i > 0 {
                value.push(b' ');
            }
            let word = &self.vocabulary[pick(self.rng, self.vocabulary.len())];
            value.extend_from_slice(word.as_bytes());
        }
        let timestamp = self.produced;
        self.produced += 1;
        Some(Event {
            key: None,
            value,
            timestamp: Some(timestamp),
            headers: Vec::new(),
        })
    }
}

#[async_trait::async_trait]
impl Source for TextSource {
    fn describe(&self) -> String {
        format!(
            "generated text ({} lines of {WORDS_PER_LINE} words, seed {})",
            self.total, self.seed
        )
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        let line = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?
            .min(self.total);
        self.produced = line;
        self.rng = lcg_jump(
            Self::initial_state(self.seed),
            line.wrapping_mul(WORDS_PER_LINE as u64),
        );
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let count = (self.total - self.produced).min(max as u64) as usize;
        if count == 0 {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(count);
        while events.len() < count {
            match self.next_event() {
                Some(event) => events.push(event),
                None => break,
            }
        }
        Ok(Some((events, Position::Offset(self.produced))))
    }
}

/// What a word-count pipeline does after its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// Nothing: the source straight into the sink.
    Source,
    /// Upper-cases each line (`upper` guest).
    Map,
    /// A running count per word in state; emits `<word> <count so far>`
    /// per word (`wordcount` guest, `{"mode": "count"}`).
    Count,
    /// A tumbling event-time window of [`WINDOW`], then one `<word> <count>`
    /// per distinct word of the window (`wordcount` guest, `{"mode": "window"}`).
    Window,
}

/// The inputs of a word-count pipeline.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Lines of generated text.
    pub lines: u64,
    /// Seed of the text.
    pub seed: u64,
    /// Events per batch.
    pub batch_size: usize,
    /// Checkpoint interval.
    pub checkpoint: Duration,
    /// Where the guests' components are.
    pub guests: PathBuf,
}

impl Setup {
    /// The options of `args`, with `lines` lines of input.
    pub fn from_args(args: &BenchArgs, lines: u64) -> Self {
        Setup {
            lines,
            seed: args.seed,
            batch_size: args.batch_size,
            checkpoint: Duration::from_millis(args.checkpoint_ms),
            guests: args.guests.clone(),
        }
    }
}

/// The name of the step `job` adds (and so of its state namespace).
pub fn step_name(job: Job) -> &'static str {
    match job {
        Job::Source => "none",
        Job::Map => "upper",
        Job::Count | Job::Window => "wordcount",
    }
}

/// `<word> <count>`, keyed by the word: what both engines emit.
fn word_event(word: &[u8], count: impl std::fmt::Display, timestamp: Option<u64>) -> Event {
    let count = count.to_string();
    let mut value = Vec::with_capacity(word.len() + 1 + count.len());
    value.extend_from_slice(word);
    value.push(b' ');
    value.extend_from_slice(count.as_bytes());
    Event {
        key: Some(word.to_vec()),
        value,
        timestamp,
        headers: Vec::new(),
    }
}

/// FNV-1a, the hash the guest uses (std's `RandomState` needs a random seed
/// the sandbox does not grant): the native twins hash words the same way.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &byte in bytes {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = hash;
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

/// The native twin of the `upper` guest.
fn native_upper() -> NativeStep {
    NativeStep::map(step_name(Job::Map), |mut event: Event| {
        if event.value.is_ascii() {
            event.value.make_ascii_uppercase();
        } else {
            event.value = String::from_utf8_lossy(&event.value)
                .to_uppercase()
                .into_bytes();
        }
        event
    })
}

/// The native twin of the guest's count mode: the counts live in a
/// `HashMap` in the step, not in the state backend.
fn native_count() -> NativeStep {
    let mut counts: FnvMap<Vec<u8>, i64> =
        FnvMap::with_capacity_and_hasher(VOCABULARY_SIZE, BuildHasherDefault::default());
    NativeStep::batch(step_name(Job::Count), move |batch: Batch| {
        let mut out = Vec::with_capacity(batch.events.len() * WORDS_PER_LINE);
        for event in &batch.events {
            for word in words(&event.value) {
                // Look up by slice first: allocating the key only for a new word.
                let count = match counts.get_mut(word) {
                    Some(count) => {
                        *count += 1;
                        *count
                    }
                    None => {
                        counts.insert(word.to_vec(), 1);
                        1
                    }
                };
                out.push(word_event(word, count, event.timestamp));
            }
        }
        Ok(out)
    })
}

/// The native twin of the guest's window mode.
fn native_window_count() -> NativeStep {
    NativeStep::batch(step_name(Job::Window), |batch: Batch| {
        let end = batch
            .window
            .as_ref()
            .map(|w| w.end)
            .ok_or_else(|| "the batch has no window-info".to_owned())?;
        let mut counts: FnvMap<&[u8], u64> = FnvMap::default();
        for event in &batch.events {
            for word in words(&event.value) {
                *counts.entry(word).or_default() += 1;
            }
        }
        let mut counts: Vec<(&[u8], u64)> = counts.into_iter().collect();
        counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Ok(counts
            .into_iter()
            .map(|(word, count)| word_event(word, count, Some(end)))
            .collect())
    })
}

/// A word-count pipeline: [`TextSource`] → `job` on `engine` → `sink`,
/// exactly-once, a checkpoint every `setup.checkpoint`, state in `state`.
///
/// # Errors
///
/// [`BenchError::MissingGuest`] when a WASM job's guest is not built.
pub fn pipeline(
    name: impl Into<String>,
    job: Job,
    engine: Engine,
    setup: &Setup,
    rt: &Runtime,
    state: SharedState,
    sink: impl Sink + 'static,
) -> Result<PipelineBuilder, BenchError> {
    let builder = Pipeline::builder(name)
        .state(state)
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::every(setup.checkpoint))
        .batch_size(setup.batch_size)
        .runtime(rt.clone())
        .from(TextSource::new(setup.lines, setup.seed))
        .to(sink);
    // Through `process-packed` when the guest exports it, unless the
    // canonical ABI is what is measured.
    let packed = engine != Engine::WasmCanonical;
    let upper = || -> Result<WasmPipe, BenchError> {
        Ok(WasmPipe::new(step_name(Job::Map), guest(&setup.guests, "upper")?).packed(packed))
    };
    let wordcount = |mode: &str| -> Result<WasmPipe, BenchError> {
        Ok(
            WasmPipe::new(step_name(Job::Count), guest(&setup.guests, "wordcount")?)
                .config(serde_json::json!({ "mode": mode }))
                .packed(packed),
        )
    };
    let window = || Window::tumbling("window", WINDOW).event_time(EventTime::default());
    Ok(match (engine, job) {
        (Engine::SourceOnly, _) | (_, Job::Source) => builder,
        (Engine::Native, Job::Map) => builder.then(native_upper()),
        (Engine::Native, Job::Count) => builder.then(native_count()),
        (Engine::Native, Job::Window) => builder.then(window()).then(native_window_count()),
        (Engine::Wasm | Engine::WasmCanonical, Job::Map) => builder.then(upper()?),
        (Engine::Wasm | Engine::WasmCanonical, Job::Count) => builder.then(wordcount("count")?),
        (Engine::Wasm | Engine::WasmCanonical, Job::Window) => {
            builder.then(window()).then(wordcount("window")?)
        }
    })
}

/// A name no other pipeline of this process has: a pipeline resumes from
/// its last checkpoint in a backend, so no run may find another's.
fn unique_name(job: Job, engine: Engine) -> String {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let engine: String = engine
        .name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("bench-wordcount-{job:?}-{engine}-{run}").to_lowercase()
}

fn memory_state() -> SharedState {
    Arc::new(MemoryState::new())
}

/// A pipeline into a [`DiscardSink`] with fresh memory state.
fn discarding(
    job: Job,
    engine: Engine,
    setup: &Setup,
    rt: &Runtime,
) -> Result<PipelineBuilder, BenchError> {
    pipeline(
        unique_name(job, engine),
        job,
        engine,
        setup,
        rt,
        memory_state(),
        DiscardSink::new(),
    )
}

/// Measures one pipeline alone on one core.
async fn measure_one(
    scenario: &str,
    job: Job,
    engine: Engine,
    setup: &Setup,
    rt: &Runtime,
) -> Result<Row, BenchError> {
    measure(
        scenario,
        engine,
        1,
        vec![discarding(job, engine, setup, rt)?],
    )
    .await
}

/// The word-count scenarios: the source alone, the map, the count with
/// memory and sled state, and the windowed count.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run(args: &BenchArgs, rt: &Runtime, table: &mut Table) -> Result<(), BenchError> {
    let setup = Setup::from_args(args, scaled(LINES, args.scale));
    // Check both guests before measuring anything.
    guest(&args.guests, "upper")?;
    guest(&args.guests, "wordcount")?;

    table.push(
        measure_one(
            "wordcount source",
            Job::Source,
            Engine::SourceOnly,
            &setup,
            rt,
        )
        .await?,
    );
    for engine in [Engine::Native, Engine::Wasm] {
        table.push(measure_one("wordcount map", Job::Map, engine, &setup, rt).await?);
    }

    let memory = "wordcount count (memory)";
    let sled = "wordcount count (sled)";
    let native = measure_one(memory, Job::Count, Engine::Native, &setup, rt).await?;
    // The native count keeps no backend state, so one native run is the
    // baseline of both backends.
    let native_for_sled = Row {
        scenario: sled.to_owned(),
        ..native.clone()
    };
    table.push(native);
    table.push(measure_one(memory, Job::Count, Engine::Wasm, &setup, rt).await?);
    table.push(native_for_sled);
    table.push(measure_sled(sled, &setup, rt).await?);

    for engine in [Engine::Native, Engine::Wasm] {
        table.push(measure_one("wordcount window", Job::Window, engine, &setup, rt).await?);
    }
    Ok(())
}

/// The WASM count with sled state in a fresh temporary directory.
async fn measure_sled(scenario: &str, setup: &Setup, rt: &Runtime) -> Result<Row, BenchError> {
    if !super::will_measure(scenario, Engine::Wasm) {
        // Opening sled costs memory that would count against the run measured.
        return measure(scenario, Engine::Wasm, 1, Vec::new()).await;
    }
    let name = unique_name(Job::Count, Engine::Wasm);
    let dir = tempfile::tempdir()
        .map_err(|e| BenchError::Setup(format!("cannot make a directory for sled: {e}")))?;
    let state = SledState::open(dir.path()).map_err(|source| {
        BenchError::from(PipelineError::State {
            pipeline: name.clone(),
            source,
        })
    })?;
    let builder = pipeline(
        name,
        Job::Count,
        Engine::Wasm,
        setup,
        rt,
        Arc::new(state),
        DiscardSink::new(),
    )?;
    // The builder, and with it sled, is gone before `dir` is removed.
    measure(scenario, Engine::Wasm, 1, vec![builder]).await
}

/// One and two independent copies of the WASM map and of the WASM count
/// (memory state), the two on a two-worker runtime: do two pipelines get
/// twice the throughput of one?
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run_scaling(
    args: &BenchArgs,
    rt: &Runtime,
    table: &mut Table,
) -> Result<(), BenchError> {
    let setup = Setup::from_args(args, scaled(LINES, args.scale));
    for (label, job) in [("map", Job::Map), ("count", Job::Count)] {
        let one = discarding(job, Engine::Wasm, &setup, rt)?;
        table.push(measure(format!("scaling {label} x1"), Engine::Wasm, 1, vec![one]).await?);
        let two = vec![
            discarding(job, Engine::Wasm, &setup, rt)?,
            discarding(job, Engine::Wasm, &setup, rt)?,
        ];
        table.push(measure(format!("scaling {label} x2"), Engine::Wasm, 2, two).await?);
    }
    Ok(())
}

/// Peak RSS of the WASM count (memory state) and the WASM windowed count at
/// 1× and 5× the input: it should not grow with the input.
///
/// # Errors
///
/// A guest is missing or a pipeline failed.
pub async fn run_memory(
    args: &BenchArgs,
    rt: &Runtime,
    table: &mut Table,
) -> Result<(), BenchError> {
    let lines = scaled(LINES, args.scale);
    for (label, job) in [("count", Job::Count), ("window", Job::Window)] {
        for factor in [1, MEMORY_FACTOR] {
            let setup = Setup::from_args(args, lines * factor);
            table.push(
                measure_one(
                    &format!("memory {label} {factor}x"),
                    job,
                    Engine::Wasm,
                    &setup,
                    rt,
                )
                .await?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::read_all;
    use super::*;

    #[test]
    fn the_vocabulary_has_10000_distinct_words_of_3_to_10_letters() {
        let words = vocabulary();
        assert_eq!(words.len(), VOCABULARY_SIZE);
        let distinct: std::collections::HashSet<&str> = words.iter().map(|w| &**w).collect();
        assert_eq!(distinct.len(), VOCABULARY_SIZE);
        for word in words {
            assert!((3..=10).contains(&word.len()), "{word}");
            assert!(word.bytes().all(|b| b.is_ascii_lowercase()), "{word}");
        }
    }

    #[tokio::test]
    async fn lines_have_five_vocabulary_words_and_a_timestamp_per_line() {
        let vocabulary: std::collections::HashSet<&[u8]> =
            vocabulary().iter().map(|w| w.as_bytes()).collect();
        let events = read_all(&mut TextSource::new(1_000, 1), 64).await;
        assert_eq!(events.len(), 1_000);
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.key, None);
            assert_eq!(event.timestamp, Some(i as u64));
            let words: Vec<&[u8]> = event.value.split(|&b| b == b' ').collect();
            assert_eq!(words.len(), WORDS_PER_LINE);
            assert!(words.iter().all(|w| vocabulary.contains(w)));
        }
        // Uniform draws over 5,000 words use a good part of the vocabulary.
        let used: std::collections::HashSet<&[u8]> = events
            .iter()
            .flat_map(|e| e.value.split(|&b| b == b' '))
            .collect();
        assert!(used.len() > 3_000, "{}", used.len());
    }

    #[tokio::test]
    async fn the_text_is_deterministic_per_seed() {
        let a = read_all(&mut TextSource::new(500, 7), 100).await;
        let b = read_all(&mut TextSource::new(500, 7), 33).await;
        let c = read_all(&mut TextSource::new(500, 8), 100).await;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn a_seek_continues_identically() {
        let all = read_all(&mut TextSource::new(300, 42), 50).await;
        for offset in [0, 1, 77, 299, 300] {
            let mut source = TextSource::new(300, 42);
            source.seek(&Position::Offset(offset)).await.unwrap();
            let rest = read_all(&mut source, 16).await;
            assert_eq!(rest, all[offset as usize..], "offset {offset}");
        }
        let mut source = TextSource::new(300, 42);
        read_all(&mut source, 50).await;
        source.seek(&Position::Start).await.unwrap();
        assert_eq!(read_all(&mut source, 50).await, all);
    }

    #[tokio::test]
    async fn batches_stop_at_the_total_and_report_the_position() {
        let mut source = TextSource::new(10, 3);
        let (batch, position) = source.next_batch(4).await.unwrap().unwrap();
        assert_eq!((batch.len(), position), (4, Position::Offset(4)));
        let (batch, position) = source.next_batch(100).await.unwrap().unwrap();
        assert_eq!((batch.len(), position), (6, Position::Offset(10)));
        assert!(source.next_batch(100).await.unwrap().is_none());
    }

    #[test]
    fn the_jump_ahead_matches_stepping() {
        let mut state = 12345u64;
        for steps in 0..200u64 {
            assert_eq!(lcg_jump(12345, steps), state, "{steps}");
            state = state
                .wrapping_mul(LCG_MULTIPLIER)
                .wrapping_add(LCG_INCREMENT);
        }
    }

    #[test]
    fn the_native_steps_emit_word_and_count() {
        let mut count = native_count();
        let line = |s: &str, t| Event::new(s).with_timestamp(t);
        let batch = Batch::new(vec![line("kalo mire kalo", 0), line("mire", 1)]);
        let out = futures_block_on(&mut count, batch);
        let values: Vec<_> = out.iter().map(|e| e.value_lossy().into_owned()).collect();
        assert_eq!(values, ["kalo 1", "mire 1", "kalo 2", "mire 2"]);
        assert_eq!(out[0].key.as_deref(), Some(&b"kalo"[..]));
        assert_eq!(out[3].timestamp, Some(1));
    }

    fn futures_block_on(step: &mut NativeStep, batch: Batch) -> Vec<Event> {
        use plumber::step::Step;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut out = Vec::new();
        runtime.block_on(step.process(batch, &mut out)).unwrap();
        out.into_iter().flat_map(|b| b.events).collect()
    }
}
