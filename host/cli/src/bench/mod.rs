//! `plumber bench`: the same logic as a WASM pipe and as native Rust steps,
//! run through the same pipeline engine, in the same process, on the same
//! generated input.
//!
//! Every input is generated from `--seed` as it is read (so the input costs
//! no memory and is the same for every run). Each measured run gets its own
//! single-threaded tokio runtime on its own thread, so a pipeline's source,
//! steps and sink share one core; the `scaling` scenario runs one and then
//! two pipelines on a two-worker runtime. For each run the table gives:
//! events in and out, wall time, events/s (input events), CPU seconds of the
//! whole process (`getrusage`, so the epoch ticker and sled's threads count
//! too), input events per CPU second, the process's peak resident memory
//! during the run (`VmHWM`, reset before each run through
//! `/proc/self/clear_refs`), and the ratio of events/s to the native run of
//! the same scenario.
//!
//! Scenarios (`--scenario`, comma-separated):
//!
//! | name | what |
//! | --- | --- |
//! | `wordcount` | 2M generated lines × 5 words (10,000-word vocabulary): upper-case map, running count per word in state (memory and sled, exactly-once), final counts per tumbling window |
//! | `nexmark` | the Nexmark generator and queries q0–q8, q11 |
//! | `scaling` | one and two pipelines in parallel |
//! | `memory` | peak RSS at 1× and 5× the input |
//! | `windows` | native windows at scale: a keyed event-time tumbling window with 10k, 100k and 1M keys, a session of 10k and 160k events arriving partly out of order; and a keyed tumbling window over 200k events of 1k keys with and without the `trigger-early` trigger component |
//! | `graphs` | what a graph's shape costs against a line on 2M events: a union of two sources, fan-out to two sinks, a router |
//! | `keys` | peak RSS of a running count over 1M distinct keys (one new key per word) on the memory, sled and (`--redis`) Redis backends |
//! | `suite` | wordcount, nexmark, scaling, memory and windows (the default) |
//! | `batches`, `guarantees`, `languages` | the earlier figures: batch-size sweep, every guarantee and backend, each guest language |

pub mod gate;
pub mod graphs;
pub mod joins;
pub mod keys;
mod legacy;
pub mod nexmark;
pub mod windows;
pub mod wordcount;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use plumber::pipeline::{PipelineBuilder, PipelineError};
use plumber::runtime::Runtime;

pub use legacy::{GeneratedSource, Measurement, WordSource};

/// Where the example guests are after
/// `cargo build --release --target wasm32-wasip2 --manifest-path examples/guests/Cargo.toml`.
pub const GUESTS_DIR: &str = "examples/guests/target/wasm32-wasip2/release";

/// Options of `plumber bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenarios, comma-separated: suite (= wordcount, nexmark, scaling,
    /// memory, windows), wordcount, nexmark, scaling, memory, windows,
    /// graphs, joins, keys, batches, guarantees, languages.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["suite".to_owned()])]
    pub scenario: Vec<String>,
    /// Multiplies every input size of the suite (1.0: 2,000,000 lines of
    /// text, 5,000,000 Nexmark events).
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Events per batch in the suite.
    #[arg(long, default_value_t = 1024)]
    pub batch_size: usize,
    /// Seed of the generated inputs.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where the example guests' components are.
    #[arg(long, default_value = GUESTS_DIR)]
    pub guests: PathBuf,
    /// Only these engines in `batches` (native, wasm, canonical), for profiling one of them.
    #[arg(long, value_delimiter = ',')]
    pub engines: Vec<String>,
    /// Measure only the runs whose `scenario/engine` contains one of these
    /// (e.g. `count (memory)/wasm`), for profiling one run.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Measure every run in this process instead of one child process per
    /// run (a child's peak RSS and CPU time are its run's alone).
    #[arg(long)]
    pub in_process: bool,
    /// Internal: measure only the run named `scenario/engine` and print its
    /// figures for the parent process.
    #[arg(long, hide = true)]
    pub child_run: Option<String>,
    /// Print the tables as Markdown.
    #[arg(long)]
    pub markdown: bool,
    /// Events per run (`batches`, `guarantees`, `languages`).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Batch sizes to measure (`batches`), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 64, 1024])]
    pub batch_sizes: Vec<usize>,
    /// The upper-case pipe's component (`batches`).
    #[arg(
        long,
        default_value = "examples/guests/target/wasm32-wasip2/release/upper.wasm"
    )]
    pub module: PathBuf,
    /// The one-word count pipe's component (`guarantees`).
    #[arg(
        long,
        default_value = "examples/guests/target/wasm32-wasip2/release/count.wasm"
    )]
    pub count_module: PathBuf,
    /// A Redis server for `guarantees` and `keys` (e.g. redis://127.0.0.1:6379/); skipped when absent.
    #[arg(long)]
    pub redis: Option<String>,
    /// Checkpoint interval in ms (`guarantees`, `languages`, and the suite's stateful runs).
    #[arg(long, default_value_t = 100)]
    pub checkpoint_ms: u64,
    /// The `languages` scenario's components, as `language=path` (default:
    /// the conformance pipes the conformance suite builds under
    /// `target/conformance/`, and the Rust one from `examples/guests`).
    #[arg(long = "component", value_delimiter = ',')]
    pub components: Vec<String>,
    /// `keys`: the pipeline's `checkpoint.max_pending_keys` (default
    /// 100,000), the bound of its write set.
    #[arg(long, default_value_t = plumber::checkpoint::DEFAULT_MAX_PENDING_KEYS)]
    pub max_pending_keys: u64,
    /// Name the guests' JIT code for `perf` (wasmtime's perf map,
    /// `/tmp/perf-<pid>.map`): run under `perf record` with `--only` and
    /// `--in-process` to see guest functions by name.
    #[arg(long)]
    pub profile: bool,
    /// Save the run's figures as JSON to this file (for `--compare`).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Compare the run's ratios to native with a run saved by `--save`:
    /// a ratio that dropped by more than `--tolerance` fails the command.
    #[arg(long)]
    pub compare: Option<PathBuf>,
    /// How far a ratio may drop below the saved one before `--compare`
    /// fails, as a fraction of it (0.15: 15%).
    #[arg(long, default_value_t = 0.15)]
    pub tolerance: f64,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A scenario's pipeline failed.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    /// A guest component is not built.
    #[error(
        "guest `{name}` not found at {path}: build the example guests first \
         (cargo build --release --target wasm32-wasip2 --manifest-path examples/guests/Cargo.toml)"
    )]
    MissingGuest {
        /// The guest's name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// An option or the machine refused (e.g. a thread could not start).
    #[error("{0}")]
    Setup(String),
    /// `--compare` found ratios that dropped beyond the tolerance.
    #[error("{} ratio(s) to native dropped beyond the tolerance: {}", .0.len(), .0.join("; "))]
    Regression(Vec<String>),
}

impl From<PipelineError> for BenchError {
    fn from(error: PipelineError) -> Self {
        BenchError::Pipeline(Box::new(error))
    }
}

/// What ran a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Native Rust steps (the baseline).
    Native,
    /// WASM pipes (and native windows).
    Wasm,
    /// WASM pipes called through the canonical-ABI `process` even when they
    /// export `process-packed` (what the packed crossing saves).
    WasmCanonical,
    /// The source into the sink with no step: the floor of the scenario.
    SourceOnly,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Native => "native",
            Engine::Wasm => "wasm",
            Engine::WasmCanonical => "wasm (canonical ABI)",
            Engine::SourceOnly => "source only",
        }
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct Row {
    /// The scenario, e.g. `wordcount map`.
    pub scenario: String,
    /// Native, WASM or the source alone.
    pub engine: Engine,
    /// Events read from the source.
    pub events_in: u64,
    /// Events written to the sink.
    pub events_out: u64,
    /// Wall time.
    pub seconds: f64,
    /// User + system CPU time of the process during the run.
    pub cpu_seconds: f64,
    /// Peak resident memory of the process during the run, in KiB (0 when unknown).
    pub peak_rss_kib: u64,
    /// The WASM pipes' linear memories at their largest, summed, in KiB.
    pub guest_memory_kib: u64,
}

impl Row {
    /// Input events per second of wall time.
    pub fn rate(&self) -> f64 {
        self.events_in as f64 / self.seconds.max(f64::EPSILON)
    }

    /// Input events per CPU second.
    pub fn rate_per_cpu(&self) -> f64 {
        self.events_in as f64 / self.cpu_seconds.max(f64::EPSILON)
    }
}

/// The rows of a run of `plumber bench`, printed as they come.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    markdown: bool,
    header_printed: bool,
}

impl Table {
    /// An empty table; `markdown` selects the output format.
    pub fn new(markdown: bool) -> Self {
        Table {
            markdown,
            ..Table::default()
        }
    }

    /// The rows so far.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Adds a row and prints it, with its ratio to the native row of the same scenario.
    pub fn push(&mut self, row: Row) {
        // Left out by --only (a run not measured has taken no time); a
        // child process reports to its parent instead.
        if !selected(&row.scenario, row.engine)
            || (row.seconds == 0.0 && row.events_in == 0)
            || CHILD_RUN.get().is_some_and(Option::is_some)
        {
            return;
        }
        if !self.header_printed {
            self.header_printed = true;
            println!("{}", self.header());
        }
        let ratio = gate::vs_native(&self.rows, &row);
        println!("{}", self.format(&row, ratio));
        self.rows.push(row);
    }

    fn header(&self) -> String {
        let columns = [
            "scenario",
            "engine",
            "events in",
            "events out",
            "seconds",
            "events/s",
            "CPU s",
            "events/CPU s",
            "peak RSS MiB",
            "guest MiB",
            "vs native",
        ];
        if self.markdown {
            format!(
                "| {} |\n| --- | --- |{}",
                columns.join(" | "),
                " ---: |".repeat(columns.len() - 2)
            )
        } else {
            format!(
                "{:<26} {:<20} {:>11} {:>11} {:>8} {:>12} {:>7} {:>13} {:>12} {:>9} {:>9}",
                columns[0],
                columns[1],
                columns[2],
                columns[3],
                columns[4],
                columns[5],
                columns[6],
                columns[7],
                columns[8],
                columns[9],
                columns[10]
            )
        }
    }

    fn format(&self, row: &Row, ratio: Option<f64>) -> String {
        let ratio = ratio.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
        let rss = row.peak_rss_kib as f64 / 1024.0;
        let guest = row.guest_memory_kib as f64 / 1024.0;
        if self.markdown {
            format!(
                "| {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {:.1} | {:.1} | {} |",
                row.scenario,
                row.engine.name(),
                thousands(row.events_in),
                thousands(row.events_out),
                row.seconds,
                thousands(row.rate() as u64),
                row.cpu_seconds,
                thousands(row.rate_per_cpu() as u64),
                rss,
                guest,
                ratio
            )
        } else {
            format!(
                "{:<26} {:<20} {:>11} {:>11} {:>8.2} {:>12.0} {:>7.2} {:>13.0} {:>12.1} {:>9.1} {:>9}",
                row.scenario,
                row.engine.name(),
                row.events_in,
                row.events_out,
                row.seconds,
                row.rate(),
                row.cpu_seconds,
                row.rate_per_cpu(),
                rss,
                guest,
                ratio
            )
        }
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The path of an example guest's component, checked to exist.
///
/// # Errors
///
/// [`BenchError::MissingGuest`] when the guests are not built.
pub fn guest(dir: &Path, name: &str) -> Result<PathBuf, BenchError> {
    let path = dir.join(format!("{}.wasm", name.replace('-', "_")));
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::MissingGuest {
            name: name.to_owned(),
            path,
        })
    }
}

pub(crate) fn reset_peak_rss() {
    // Writing 5 resets the peak resident set size (Linux 4.0+); elsewhere a no-op.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process in KiB, from `/proc/self/status`.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU time of the whole process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage; RUSAGE_SELF is always accepted.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Runs pipelines on a fresh tokio runtime with `workers` threads (1: a
/// single-threaded runtime, so a pipeline's tasks share one core) and
/// measures them together: the row's events are their sums.
///
/// # Errors
///
/// A pipeline failed, or the runtime or its thread could not start.
pub async fn measure(
    scenario: impl Into<String>,
    engine: Engine,
    workers: usize,
    pipelines: Vec<PipelineBuilder>,
) -> Result<Row, BenchError> {
    let scenario = scenario.into();
    let run_name = format!("{scenario}/{}", engine.name());
    let child_run = CHILD_RUN.get().and_then(Option::as_deref);
    if !will_measure(&scenario, engine) {
        // Not measured: an empty row, which the table leaves out.
        return Ok(Row {
            scenario,
            engine,
            events_in: 0,
            events_out: 0,
            seconds: 0.0,
            cpu_seconds: 0.0,
            peak_rss_kib: 0,
            guest_memory_kib: 0,
        });
    }
    if child_run.is_none() && !IN_PROCESS.get().copied().unwrap_or(true) {
        drop(pipelines);
        return measure_in_child(scenario, engine, &run_name).await;
    }
    let row = measure_here(scenario, engine, workers, pipelines).await?;
    if child_run.is_some() {
        println!(
            "{CHILD_ROW} {} {} {} {} {} {}",
            row.events_in,
            row.events_out,
            row.seconds,
            row.cpu_seconds,
            row.peak_rss_kib,
            row.guest_memory_kib
        );
    }
    Ok(row)
}

/// Whether this process will measure the run `scenario/engine` (scenario
/// code checks it before setting up something costly, such as a database,
/// that a skipped run does not need).
pub fn will_measure(scenario: &str, engine: Engine) -> bool {
    match CHILD_RUN.get().and_then(Option::as_deref) {
        Some(wanted) => wanted == format!("{scenario}/{}", engine.name()),
        None => selected(scenario, engine),
    }
}

/// How a child process reports its run.
const CHILD_ROW: &str = "plumber-bench-row";

/// Runs `plumber bench` again with the same options, measuring only `run_name`.
async fn measure_in_child(
    scenario: String,
    engine: Engine,
    run_name: &str,
) -> Result<Row, BenchError> {
    let failed = |message: String| BenchError::Setup(format!("run `{run_name}`: {message}"));
    let exe =
        std::env::current_exe().map_err(|e| failed(format!("cannot find this program: {e}")))?;
    let output = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--child-run")
        .arg(run_name)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| failed(format!("cannot start a child process: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let message = stderr
            .lines()
            .rev()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("no message");
        return Err(failed(format!(
            "the child process failed ({}): {message}",
            output.status
        )));
    }
    let figures: Vec<&str> = stdout
        .lines()
        .find_map(|line| line.strip_prefix(CHILD_ROW))
        .map(|rest| rest.split_whitespace().collect())
        .unwrap_or_default();
    let number = |i: usize| -> Result<f64, BenchError> {
        figures
            .get(i)
            .and_then(|text| text.parse::<f64>().ok())
            .ok_or_else(|| {
                failed(format!(
                    "the child process printed no figures:\n{stdout}{stderr}"
                ))
            })
    };
    Ok(Row {
        scenario,
        engine,
        events_in: number(0)? as u64,
        events_out: number(1)? as u64,
        seconds: number(2)?,
        cpu_seconds: number(3)?,
        peak_rss_kib: number(4)? as u64,
        guest_memory_kib: number(5)? as u64,
    })
}

/// Measures pipelines in this process.
async fn measure_here(
    scenario: String,
    engine: Engine,
    workers: usize,
    pipelines: Vec<PipelineBuilder>,
) -> Result<Row, BenchError> {
    let handles: Vec<_> = pipelines.iter().map(PipelineBuilder::handle).collect();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut builder = if workers <= 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        };
        let runtime = builder
            .enable_all()
            .build()
            .map_err(|e| BenchError::Setup(format!("cannot start a tokio runtime: {e}")))?;
        reset_peak_rss();
        let cpu_before = cpu_seconds();
        let started = Instant::now();
        let reports = runtime.block_on(async move {
            let tasks: Vec<_> = pipelines
                .into_iter()
                .map(|pipeline| tokio::spawn(pipeline.run()))
                .collect();
            let mut reports = Vec::with_capacity(tasks.len());
            for task in tasks {
                match task.await {
                    Ok(report) => reports.push(report?),
                    Err(join) => {
                        return Err(BenchError::Setup(format!("a pipeline task failed: {join}")))
                    }
                }
            }
            Ok(reports)
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu_before;
        Ok::<_, BenchError>((reports, seconds, cpu, peak_rss_kib()))
    })
    .await
    .map_err(|e| BenchError::Setup(format!("the benchmark thread failed: {e}")))?;
    let (reports, seconds, cpu_seconds, peak_rss_kib) = outcome?;
    let guest_memory_bytes: u64 = handles
        .iter()
        .flat_map(|handle| handle.status().stages())
        .filter_map(|stage| stage.counters.clone())
        .map(|counters| {
            counters
                .memory_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    Ok(Row {
        scenario,
        engine,
        events_in: reports.iter().map(|r| r.events_in).sum(),
        events_out: reports.iter().map(|r| r.events_out).sum(),
        seconds,
        cpu_seconds,
        peak_rss_kib,
        guest_memory_kib: guest_memory_bytes / 1024,
    })
}

/// `--child-run`, set once by [`run`].
static CHILD_RUN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// `--in-process`, set once by [`run`].
static IN_PROCESS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// `--only`, set once by [`run`].
static ONLY: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

fn selected(scenario: &str, engine: Engine) -> bool {
    match ONLY.get() {
        Some(only) if !only.is_empty() => {
            let name = format!("{scenario}/{}", engine.name());
            only.iter().any(|part| name.contains(part.as_str()))
        }
        _ => true,
    }
}

/// `n` scaled by `--scale`, at least 1.
pub fn scaled(n: u64, scale: f64) -> u64 {
    ((n as f64 * scale).round() as u64).max(1)
}

/// Runs the scenarios of `args` and prints their tables.
///
/// # Errors
///
/// An unknown scenario, a guest that is not built, or a failed pipeline.
pub async fn run(args: BenchArgs, rt: Runtime) -> Result<(), BenchError> {
    let mut scenarios: Vec<&str> = Vec::new();
    for name in &args.scenario {
        match name.as_str() {
            "suite" | "all" => {
                scenarios.extend(["wordcount", "nexmark", "scaling", "memory", "windows"]);
            }
            "wordcount" | "nexmark" | "scaling" | "memory" | "windows" | "graphs" | "joins"
            | "keys" | "batches" | "guarantees" | "languages" => scenarios.push(name),
            // The earlier names of two scenarios.
            "map" => scenarios.push("batches"),
            "stateful" => scenarios.push("guarantees"),
            other => {
                return Err(BenchError::Setup(format!(
                    "unknown scenario `{other}`: use suite, wordcount, nexmark, scaling, memory, \
                     windows, graphs, joins, keys, batches, guarantees or languages"
                )))
            }
        }
    }
    if !(args.scale > 0.0 && args.scale.is_finite()) {
        return Err(BenchError::Setup(format!(
            "--scale {}: expected a positive number",
            args.scale
        )));
    }
    if !(0.0..1.0).contains(&args.tolerance) {
        return Err(BenchError::Setup(format!(
            "--tolerance {}: expected a fraction from 0 up to 1",
            args.tolerance
        )));
    }
    // Read before the runs, so that a bad file fails at once.
    let baseline = args
        .compare
        .as_deref()
        .map(gate::SavedRun::load)
        .transpose()?;
    if args.batch_size == 0 {
        return Err(BenchError::Setup(
            "--batch-size 0: expected at least 1".to_owned(),
        ));
    }
    let _ = ONLY.set(args.only.clone());
    let _ = CHILD_RUN.set(args.child_run.clone());
    let _ = IN_PROCESS.set(args.in_process);
    let machine = machine_line(&args);
    if args.child_run.is_none() {
        println!("{machine}");
    }
    // Compile the example guests into the cache first, so that no measured
    // run pays a first compile (each run still loads from the cache).
    let guests: &[&str] = if args.child_run.is_some() {
        // The parent has compiled them.
        &[]
    } else {
        &["upper", "wordcount", "nexmark", "nexmark-aggregate"]
    };
    for name in guests {
        if let Ok(path) = guest(&args.guests, name) {
            rt.precompile(&path).map_err(|e| {
                BenchError::Setup(format!("{}: {}", path.display(), plumber::ErrorChain(&e)))
            })?;
        }
    }
    let mut table = Table::new(args.markdown);
    for scenario in scenarios {
        match scenario {
            "wordcount" => wordcount::run(&args, &rt, &mut table).await?,
            "nexmark" => nexmark::run(&args, &rt, &mut table).await?,
            "scaling" => wordcount::run_scaling(&args, &rt, &mut table).await?,
            "memory" => {
                wordcount::run_memory(&args, &rt, &mut table).await?;
                nexmark::run_memory(&args, &rt, &mut table).await?;
            }
            "batches" => legacy::run_map(&args, &rt, &mut table).await?,
            "guarantees" => legacy::run_stateful(&args, &rt).await?,
            "languages" => legacy::run_languages(&args).await?,
            "windows" => windows::run(&args, &mut table).await?,
            "graphs" => graphs::run(&args, &mut table).await?,
            "joins" => joins::run(&args, &mut table).await?,
            "keys" => keys::run(&args, &rt, &mut table).await?,
            _ => {}
        }
    }
    if args.child_run.is_some() {
        return Ok(());
    }
    let verdicts = gate::judge(table.rows(), gate::TARGETS);
    if !verdicts.is_empty() {
        println!("\n{}", gate::render_verdicts(&verdicts));
    }
    let run = gate::SavedRun::of(&machine, table.rows());
    if let Some(path) = &args.save {
        run.save(path)?;
        println!("saved to {}", path.display());
    }
    if let (Some(baseline), Some(path)) = (baseline, &args.compare) {
        let comparison = gate::compare(&baseline, &run, args.tolerance);
        println!(
            "\ncompared with {} (tolerance {:.0}%):",
            path.display(),
            args.tolerance * 100.0
        );
        for line in &comparison.lines {
            println!("  {line}");
        }
        if !comparison.regressions.is_empty() {
            return Err(BenchError::Regression(comparison.regressions));
        }
    }
    Ok(())
}

/// What the figures were measured on.
fn machine_line(args: &BenchArgs) -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut line = format!(
        "plumber bench: {cpu}, {cores} cores; batch {}, seed {}, scale {}; one core per pipeline \
         (single-threaded runtime) unless stated; {}",
        args.batch_size,
        args.seed,
        args.scale,
        if args.in_process {
            "all runs in this process"
        } else {
            "each run in its own process"
        }
    );
    if cfg!(debug_assertions) {
        let _ = write!(line, "; DEBUG BUILD (use --release for figures)");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event a source gives, read `batch` at a time.
    pub(super) async fn read_all(
        source: &mut impl plumber::streams::Source,
        batch: usize,
    ) -> Vec<plumber::Event> {
        let mut events = Vec::new();
        while let Some((batch, _)) = source.next_batch(batch).await.unwrap() {
            events.extend(batch);
        }
        events
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn cpu_seconds_advance_with_work() {
        let before = cpu_seconds();
        let mut x = 0u64;
        let started = Instant::now();
        while started.elapsed().as_millis() < 50 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() > before);
    }

    #[test]
    fn a_missing_guest_says_how_to_build_it() {
        let error = guest(Path::new("/nonexistent"), "word-count").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/word_count.wasm"), "{text}");
        assert!(
            text.contains("cargo build --release --target wasm32-wasip2"),
            "{text}"
        );
    }
}
