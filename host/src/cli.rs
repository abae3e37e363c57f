//! The `plumber` command line: `run`, `validate`, `state`, `bench`.
//!
//! Exit status: 0 on success, 2 when the config or a pipe's module is bad
//! (the message names the JSON path or the file), 1 when a run fails.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, PipelineConfig, StepConfig};
use crate::pipeline::PipelineError;
use crate::runtime::Runtime;
use crate::state::Namespace;

/// Data pipelines whose pipes are WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "plumber", version, about)]
pub struct Cli {
    /// Where compiled components are cached (default: $PLUMBER_CACHE_DIR,
    /// else $XDG_CACHE_HOME/plumber, else ~/.cache/plumber).
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// A subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a pipeline until its source ends or Ctrl-C; resumes from its last checkpoint.
    Run {
        /// The pipeline's JSON config.
        config: PathBuf,
    },
    /// Checks a config and loads its pipes' modules, without running anything.
    Validate {
        /// The pipeline's JSON config.
        config: PathBuf,
    },
    /// Prints the committed state of one pipe of a pipeline, a `key<TAB>value` line per key.
    State {
        /// The pipeline's JSON config.
        config: PathBuf,
        /// The pipe whose keys to print.
        #[arg(long)]
        pipe: String,
    },
    /// Measures a WASM pipe against the same logic in native Rust.
    Bench(crate::bench::BenchArgs),
}

/// Runs the command line; the return value is the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(dispatch(cli))
}

async fn dispatch(cli: Cli) -> ExitCode {
    let cache_dir = cli.cache_dir.clone();
    let runtime = || match &cache_dir {
        Some(dir) => Runtime::new(Some(dir.clone())),
        None => Runtime::with_default_cache(),
    };
    match cli.command {
        Command::Run { config } => run(&config, runtime).await,
        Command::Validate { config } => validate(&config, runtime),
        Command::State { config, pipe } => dump_state(&config, &pipe).await,
        Command::Bench(args) => crate::bench::run(args, runtime).await,
    }
}

fn config_failure(error: &ConfigError) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(2)
}

fn load_config(path: &Path) -> Result<PipelineConfig, ExitCode> {
    PipelineConfig::load(path).map_err(|e| config_failure(&e))
}

async fn run(
    path: &Path,
    runtime: impl Fn() -> Result<Runtime, crate::runtime::LoadError>,
) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    let state = match config.open_state() {
        Ok(state) => state,
        Err(error) => {
            eprintln!("error: {}: at `state`: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    tracing::warn!(
        pipeline = %config.name,
        "sinks stdout and file write before the checkpoint commits: after a crash, output since \
         the last checkpoint is written again (at-least-once output; state is exactly-once)"
    );
    let builder = config.builder(state).runtime(rt);
    let shutdown = builder.shutdown_handle();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            shutdown.shutdown();
        }
    });
    match builder.run().await {
        Ok(report) => {
            tracing::info!(
                pipeline = %config.name,
                events_in = report.events_in,
                events_out = report.events_out,
                checkpoints = report.checkpoints,
                "pipeline finished"
            );
            ExitCode::SUCCESS
        }
        Err(PipelineError::Load { pipe, source, .. }) => {
            let field = config
                .module_field(&pipe)
                .unwrap_or_else(|| "pipeline".to_owned());
            eprintln!(
                "error: {}: at `{field}` (pipe `{pipe}`): {source}",
                path.display()
            );
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}

fn validate(
    path: &Path,
    runtime: impl Fn() -> Result<Runtime, crate::runtime::LoadError>,
) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(1);
        }
    };
    for (index, step) in config.pipeline.iter().enumerate() {
        let StepConfig::Wasm {
            name,
            module,
            grants,
            ..
        } = step;
        if let Err(error) = rt.load(module, grants) {
            eprintln!(
                "error: {}: at `pipeline[{index}].module` (pipe `{name}`): {error}",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    println!(
        "{}: ok (pipeline `{}`, {} pipes)",
        path.display(),
        config.name,
        config.pipeline.len()
    );
    ExitCode::SUCCESS
}

async fn dump_state(path: &Path, pipe: &str) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let state = match config.open_state() {
        Ok(state) => state,
        Err(error) => {
            eprintln!("error: {}: at `state`: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let namespace = Namespace::for_pipe(&config.name, pipe);
    match state.scan_prefix(namespace.prefix()).await {
        Ok(entries) => {
            let prefix_len = namespace.prefix().len();
            for (key, value) in entries {
                println!(
                    "{}\t{}",
                    String::from_utf8_lossy(&key[prefix_len..]),
                    String::from_utf8_lossy(&value)
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(1)
        }
    }
}
