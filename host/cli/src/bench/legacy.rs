//! The earlier scenarios of `plumber bench`: the upper-case map over a
//! sweep of batch sizes (`batches`), the one-word count under every
//! guarantee and backend (`guarantees`), and the conformance pipe of each
//! language (`languages`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use plumber::checkpoint::Position;
use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::histogram::HistogramSnapshot;
use plumber::pipeline::Pipeline;
use plumber::runtime::Runtime;
use plumber::state::MemoryState;
use plumber::step::{NativeStep, WasmPipe};
use plumber::streams::{DiscardSink, Source, StreamError};
use plumber::Event;

use super::{peak_rss_kib, reset_peak_rss, BenchArgs};

/// One measured run.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// "native" or "wasm".
    pub kind: &'static str,
    /// Events per batch.
    pub batch_size: usize,
    /// Events processed.
    pub events: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Peak resident memory of the process during the run, in KiB (0 when unknown).
    pub peak_rss_kib: u64,
}

impl Measurement {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(f64::EPSILON)
    }
}

const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
];

/// One generated word per event, keyed by the word (the stateful scenarios).
pub struct WordSource {
    inner: GeneratedSource,
}

impl WordSource {
    /// `total` words from `seed`.
    pub fn new(total: u64, seed: u64) -> Self {
        WordSource {
            inner: GeneratedSource::new(total, seed),
        }
    }
}

#[async_trait::async_trait]
impl Source for WordSource {
    fn describe(&self) -> String {
        format!(
            "generated words ({} events, seed {})",
            self.inner.total, self.inner.seed
        )
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.inner.seek(position).await
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let count = (self.inner.total - self.inner.produced).min(max as u64);
        if count == 0 {
            return Ok(None);
        }
        let events = (0..count)
            .map(|_| {
                self.inner.produced += 1;
                let word = self.inner.next_word();
                Event::new(word).with_key(word)
            })
            .collect();
        Ok(Some((events, Position::Offset(self.inner.produced))))
    }
}

/// A finite source of deterministic text events: five words each, drawn
/// from a fixed vocabulary by a linear congruential generator seeded with
/// `seed`. Events are made as they are read, so the input costs no memory.
pub struct GeneratedSource {
    total: u64,
    produced: u64,
    seed: u64,
    rng: u64,
}

impl GeneratedSource {
    /// `total` events from `seed`.
    pub fn new(total: u64, seed: u64) -> Self {
        GeneratedSource {
            total,
            produced: 0,
            seed,
            rng: seed,
        }
    }

    fn next_word(&mut self) -> &'static str {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        WORDS[(self.rng >> 33) as usize % WORDS.len()]
    }

    fn next_event(&mut self) -> Event {
        let mut value = Vec::with_capacity(48);
        for i in 0..5 {
            if i > 0 {
                value.push(b' ');
            }
            value.extend_from_slice(self.next_word().as_bytes());
        }
        self.produced += 1;
        Event::new(value)
    }
}

#[async_trait::async_trait]
impl Source for GeneratedSource {
    fn describe(&self) -> String {
        format!(
            "generated source ({} events, seed {})",
            self.total, self.seed
        )
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        let target = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?
            .min(self.total);
        self.rng = self.seed;
        self.produced = 0;
        while self.produced < target {
            self.next_event();
        }
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let count = (self.total - self.produced).min(max as u64);
        if count == 0 {
            return Ok(None);
        }
        let events = (0..count).map(|_| self.next_event()).collect();
        Ok(Some((events, Position::Offset(self.produced))))
    }
}

/// The stateful word count through one backend and guarantee.
///
/// # Errors
///
/// The pipeline failed.
pub async fn measure_stateful(
    runtime: &Runtime,
    module: Option<&PathBuf>,
    state: plumber::state::SharedState,
    delivery: Delivery,
    args: &BenchArgs,
    batch_size: usize,
) -> Result<(Measurement, HistogramSnapshot), plumber::pipeline::PipelineError> {
    let builder = Pipeline::builder(format!("bench-{delivery:?}"))
        .state(state)
        .delivery(delivery)
        .checkpoint(CheckpointPolicy::every(std::time::Duration::from_millis(
            args.checkpoint_ms,
        )))
        .batch_size(batch_size)
        .runtime(runtime.clone())
        .from(WordSource::new(args.events, args.seed))
        .to(DiscardSink::new());
    let (kind, builder) = match module {
        Some(module) => ("wasm", builder.then(WasmPipe::new("count", module))),
        None => {
            let mut counts: std::collections::HashMap<Vec<u8>, i64> =
                std::collections::HashMap::new();
            (
                "native",
                builder.then(NativeStep::map("count", move |event: Event| {
                    let key = event.key.clone().unwrap_or_default();
                    let count = counts.entry(key).or_default();
                    *count += 1;
                    let mut value = event.value.clone();
                    value.push(b' ');
                    value.extend_from_slice(count.to_string().as_bytes());
                    Event { value, ..event }
                })),
            )
        }
    };
    reset_peak_rss();
    let started = Instant::now();
    let report = builder.run().await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        Measurement {
            kind,
            batch_size,
            events: report.events_out,
            seconds,
            peak_rss_kib: peak_rss_kib(),
        },
        report.checkpoint_pause,
    ))
}

/// The `q`-quantile of the checkpoint pauses in ms, estimated from their
/// histogram (0 when there were none).
fn pause_ms(pauses: &HistogramSnapshot, q: f64) -> f64 {
    pauses.quantile(q).unwrap_or(0.0) * 1000.0
}

pub(super) async fn run_stateful(
    args: &BenchArgs,
    rt: &Runtime,
) -> Result<(), plumber::pipeline::PipelineError> {
    println!();
    println!(
        "stateful word count: {} one-word events (18-word vocabulary, seed {}), state add per event, \
         checkpoint every {} ms, batch 1024, discard sink",
        args.events, args.seed, args.checkpoint_ms
    );
    println!(
        "{:<8} {:<8} {:<14} {:>12} {:>10} {:>8} {:>10} {:>10} {:>8}",
        "step",
        "backend",
        "delivery",
        "events/s",
        "vs native",
        "ckpts",
        "pause p50",
        "pause p99",
        "RSS MiB"
    );
    let native = measure_stateful(
        rt,
        None,
        std::sync::Arc::new(MemoryState::new()),
        Delivery::ExactlyOnce,
        args,
        1024,
    )
    .await?;
    let native_rate = native.0.rate();
    let print =
        |backend: &str, delivery: Delivery, (m, pauses): &(Measurement, HistogramSnapshot)| {
            println!(
                "{:<8} {:<8} {:<14} {:>12.0} {:>10.2} {:>8} {:>8.2}ms {:>8.2}ms {:>8.1}",
                m.kind,
                backend,
                format!("{delivery:?}"),
                m.rate(),
                m.rate() / native_rate,
                pauses.count(),
                pause_ms(pauses, 0.5),
                pause_ms(pauses, 0.99),
                m.peak_rss_kib as f64 / 1024.0
            );
        };
    print("memory", Delivery::ExactlyOnce, &native);
    let state_error = |source| plumber::pipeline::PipelineError::State {
        pipeline: "bench".to_owned(),
        source,
    };
    for delivery in [
        Delivery::ExactlyOnce,
        Delivery::AtLeastOnce,
        Delivery::AtMostOnce,
    ] {
        let sled_dir = std::env::temp_dir().join(format!(
            "plumber-bench-sled-{}-{delivery:?}",
            std::process::id()
        ));
        let mut backends: Vec<(&str, plumber::state::SharedState)> = vec![
            ("memory", std::sync::Arc::new(MemoryState::new())),
            (
                "sled",
                std::sync::Arc::new(
                    plumber::state::SledState::open(&sled_dir).map_err(state_error)?,
                ),
            ),
        ];
        if let Some(url) = &args.redis {
            // A fresh prefix per run: a pipeline resumes from its last checkpoint.
            let options = plumber::state::RedisOptions {
                key_prefix: format!("plumber-bench:{}:{delivery:?}:", std::process::id()),
                ..plumber::state::RedisOptions::default()
            };
            let redis = plumber::state::RedisState::connect(url, options)
                .await
                .map_err(state_error)?;
            backends.push(("redis", std::sync::Arc::new(redis)));
        }
        for (name, state) in backends {
            let m =
                measure_stateful(rt, Some(&args.count_module), state, delivery, args, 1024).await?;
            print(name, delivery, &m);
        }
        let _ = std::fs::remove_dir_all(&sled_dir);
    }
    // One event per batch: what a commit per batch would cost. At-most-once
    // commits the position ahead once per group of ready batches.
    let small = BenchArgs {
        events: (args.events / 10).max(1),
        ..args.clone()
    };
    println!();
    println!(
        "the same at batch 1 ({} events): at-most-once against exactly-once",
        small.events
    );
    for delivery in [Delivery::ExactlyOnce, Delivery::AtMostOnce] {
        let sled_dir = std::env::temp_dir().join(format!(
            "plumber-bench-sled-batch1-{}-{delivery:?}",
            std::process::id()
        ));
        let backends: Vec<(&str, plumber::state::SharedState)> = vec![
            ("memory", std::sync::Arc::new(MemoryState::new())),
            (
                "sled",
                std::sync::Arc::new(
                    plumber::state::SledState::open(&sled_dir).map_err(state_error)?,
                ),
            ),
        ];
        for (name, state) in backends {
            let m =
                measure_stateful(rt, Some(&args.count_module), state, delivery, &small, 1).await?;
            print(name, delivery, &m);
        }
        let _ = std::fs::remove_dir_all(&sled_dir);
    }
    Ok(())
}

/// The conformance pipe of each language: its size, how long a first
/// compile and a start from the compile cache take, and events/s through
/// its stateless (`transform`) and stateful (`counter`) behaviours.
pub(super) async fn run_languages(
    args: &BenchArgs,
) -> Result<(), plumber::pipeline::PipelineError> {
    let failed = |message: String| plumber::pipeline::PipelineError::Incomplete {
        pipeline: "bench".to_owned(),
        message,
    };
    let components: Vec<(String, PathBuf)> = if args.components.is_empty() {
        vec![
            (
                "rust".to_owned(),
                "examples/guests/target/wasm32-wasip2/release/conformance.wasm".into(),
            ),
            (
                "go".to_owned(),
                "target/conformance/conformance-go.wasm".into(),
            ),
            (
                "python".to_owned(),
                "target/conformance/conformance-python.wasm".into(),
            ),
            (
                "js".to_owned(),
                "target/conformance/conformance-js.wasm".into(),
            ),
        ]
    } else {
        // A loop, not a closure returning the (large) pipeline error.
        let mut components = Vec::new();
        for spec in &args.components {
            let Some((language, path)) = spec.split_once('=') else {
                return Err(failed(format!(
                    "--component {spec}: expected language=path"
                )));
            };
            components.push((language.to_owned(), PathBuf::from(path)));
        }
        components
    };
    println!(
        "conformance pipes, {} events (words from a 1,000-word vocabulary), batch 1024, memory state, exactly-once",
        args.events
    );
    println!(
        "{:<8} {:>10} {:>14} {:>13} {:>16} {:>16}",
        "language", "size KiB", "first compile", "cached start", "stateless ev/s", "stateful ev/s"
    );
    for (language, path) in components {
        let capabilities = if language == "go" {
            crate::build::Language::Go.capabilities()
        } else {
            plumber::runtime::Capabilities::default()
        };
        let size = std::fs::metadata(&path)
            .map_err(|e| failed(format!("{}: {e}", path.display())))?
            .len();
        let cache = tempfile::tempdir().map_err(|e| failed(e.to_string()))?;
        let load_error =
            |e: plumber::runtime::LoadError| failed(plumber::ErrorChain(&e).to_string());
        let started = Instant::now();
        Runtime::new(Some(cache.path().to_path_buf()))
            .map_err(load_error)?
            .load(&path, &capabilities)
            .map_err(load_error)?;
        let first_compile = started.elapsed();
        // A restart: a new runtime loads from the cache and starts an instance.
        let started = Instant::now();
        let runtime = Runtime::new(Some(cache.path().to_path_buf())).map_err(load_error)?;
        let component = runtime.load(&path, &capabilities).map_err(load_error)?;
        let settings = Arc::new(plumber::runtime::InstanceSettings {
            capabilities: capabilities.clone(),
            ..plumber::runtime::InstanceSettings::new("bench", "pipe", r#"{"pipe":"transform"}"#)
        });
        let state = plumber::state::PipeState::new(
            Arc::new(MemoryState::new()),
            plumber::state::Namespace::for_pipe("bench", "pipe"),
            plumber::state::WriteMode::Checkpointed,
        );
        component
            .instantiate(&runtime, settings, state)
            .await
            .map_err(load_error)?;
        let cached_start = started.elapsed();
        let mut rates = Vec::new();
        for behaviour in ["transform", "counter"] {
            let mut pipe =
                WasmPipe::new("pipe", &path).config(serde_json::json!({ "pipe": behaviour }));
            for grant in &capabilities.grants {
                pipe = pipe.grant(*grant);
            }
            let started = Instant::now();
            let report = Pipeline::builder(format!("bench-{language}-{behaviour}"))
                .state(Arc::new(MemoryState::new()))
                .checkpoint(CheckpointPolicy::every(std::time::Duration::from_millis(
                    args.checkpoint_ms,
                )))
                .batch_size(1024)
                .runtime(runtime.clone())
                .from(WordSource::new(args.events, args.seed))
                .then(pipe)
                .to(DiscardSink::new())
                .run()
                .await?;
            rates.push(report.events_out as f64 / started.elapsed().as_secs_f64());
        }
        println!(
            "{:<8} {:>10} {:>12.2} s {:>10.1} ms {:>16.0} {:>16.0}",
            language,
            size / 1024,
            first_compile.as_secs_f64(),
            cached_start.as_secs_f64() * 1000.0,
            rates[0],
            rates[1]
        );
    }
    Ok(())
}

pub(super) async fn run_map(
    args: &BenchArgs,
    rt: &Runtime,
    table: &mut super::Table,
) -> Result<(), super::BenchError> {
    use super::Engine;
    for &batch_size in &args.batch_sizes {
        let scenario = format!("upper map, batch {batch_size}");
        for engine in [Engine::Native, Engine::Wasm, Engine::WasmCanonical] {
            let name = match engine {
                Engine::Native => "native",
                Engine::WasmCanonical => "canonical",
                _ => "wasm",
            };
            if !args.engines.is_empty() && !args.engines.iter().any(|e| e == name) {
                continue;
            }
            let builder = Pipeline::builder("bench")
                .state(Arc::new(MemoryState::new()))
                .checkpoint(CheckpointPolicy::at_end_only())
                .batch_size(batch_size)
                .runtime(rt.clone())
                .from(GeneratedSource::new(args.events, args.seed))
                .to(DiscardSink::new());
            let builder = match engine {
                Engine::Native => builder.then(NativeStep::map("upper", upper_case)),
                Engine::WasmCanonical => {
                    builder.then(WasmPipe::new("upper", &args.module).packed(false))
                }
                _ => builder.then(WasmPipe::new("upper", &args.module)),
            };
            table.push(super::measure(&scenario, engine, 1, vec![builder]).await?);
        }
    }
    Ok(())
}

/// The native upper-case step of the map scenarios.
pub(crate) fn upper_case(mut event: Event) -> Event {
    if event.value.is_ascii() {
        event.value.make_ascii_uppercase();
    } else {
        event.value = String::from_utf8_lossy(&event.value)
            .to_uppercase()
            .into_bytes();
    }
    event
}
