//! The `plumber` command line: `run`, `validate`, `setup`, `state`,
//! `cluster`, `bench`, `new`, `build`, `test`.
//!
//! Exit status: 0 on success, 2 when the config or a pipe's module is bad
//! (the message names the JSON path or the file), 1 when a run fails.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use plumber::admin::{AdminOptions, AdminServer};
use plumber::checkpoint::Delivery;
use plumber::config::{
    validate, HostConfig, OutputGuarantee, PipelineConfig, ReadStandard, StepConfig,
};
use plumber::pipeline::{PipelineError, Publish};
use plumber::runtime::{LoadError, Runtime};
use plumber::state::{Namespace, SharedState, DEFAULT_TENANT};
use plumber::supervisor::Supervisor;
use plumber::tenant::Tenants;
use plumber::ErrorChain;

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
        /// Pipeline JSON configs (several run side by side in one process).
        configs: Vec<PathBuf>,
        /// A host config: more pipelines, tenant quotas, the admin server.
        #[arg(long)]
        host: Option<PathBuf>,
        /// Serve the admin and metrics API on this address (e.g.
        /// 127.0.0.1:9464); the token, if any, comes from $PLUMBER_ADMIN_TOKEN.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
        /// The directory the admin API's `{"path": …}` module swaps may read
        /// from (without it they are refused; uploads still work).
        #[arg(long)]
        module_dir: Option<PathBuf>,
    },
    /// Checks a config without running it: every check `run` makes at
    /// start that needs no server, each pipe's module, and its `init` on
    /// its config (on a throw-away in-memory state).
    Validate {
        /// The pipeline's JSON config.
        config: PathBuf,
        /// Also reach the servers the config names (Redis, SQL, NATS,
        /// JetStream, HTTP), changing nothing on them.
        #[arg(long)]
        connect: bool,
    },
    /// Creates on its servers what a pipeline config needs and is not
    /// there: an SQL sink's table, JetStream streams. Changes nothing that
    /// exists.
    Setup {
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
    /// A pipeline partitioned over the workers of a NATS JetStream
    /// cluster (a config with `cluster`).
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Runs partitions of a clustered pipeline (a config with `cluster`)
    /// on this machine, beside the workers on others; SIGINT or SIGTERM
    /// hands them over after a final checkpoint each.
    Worker {
        /// The pipeline's JSON config (the same on every machine).
        config: PathBuf,
        /// The NATS servers (comma-separated), instead of the config's
        /// `cluster.url`.
        #[arg(long)]
        cluster: Option<String>,
        /// This worker's id, unique among the pipeline's workers: a process
        /// started with the id of a running one is refused (default: the
        /// host name and the process id).
        #[arg(long)]
        id: Option<String>,
        /// The most partitions this worker runs (default: its fair share).
        #[arg(long)]
        max_partitions: Option<u32>,
        /// Serve the admin and metrics API on this address (e.g.
        /// 127.0.0.1:9464): `/metrics`, `/health`, `/cluster`; the token,
        /// if any, comes from $PLUMBER_ADMIN_TOKEN.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Measures a WASM pipe against the same logic in native Rust.
    Bench(Box<crate::bench::BenchArgs>),
    /// Runs a pipeline's steps on events from a JSON-lines file (with
    /// controlled time: `{"watermark": N}` lines) into memory, and compares
    /// the output with the expected JSON lines; prints a diff and exits 1
    /// when they differ (docs/testing-pipes.md).
    Test {
        /// The pipeline's JSON config (its `from`, `to` and `state` are
        /// replaced: nothing it names is opened).
        config: PathBuf,
        /// The events to feed in, one JSON object a line, and watermark lines.
        #[arg(long)]
        input: PathBuf,
        /// The events expected out, one JSON object a line.
        #[arg(long)]
        expect: PathBuf,
        /// `key`: each key's events in the same order (keys may
        /// interleave); `total`: every event in the same order.
        #[arg(long, value_enum, default_value = "key")]
        order: crate::replay_test::Order,
    },
    /// Creates a pipe project: a word counter with a native test and a
    /// pipeline to run it.
    New {
        /// The project's name (and directory).
        name: String,
        /// `rust`, `go`, `python` or `js`.
        #[arg(long, default_value = "rust")]
        lang: String,
        /// The plumber checkout's `guest-sdk` directory (Rust and Go
        /// projects depend on their SDK by path; default: the one this
        /// binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Builds a pipe project (Rust, Go, Python or JavaScript) into a
    /// component and checks it is a pipe.
    Build {
        /// The project's directory.
        dir: PathBuf,
        /// Where to write the component (default: <dir>/<dir name>.wasm).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

/// A `plumber cluster` subcommand.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Checks the NATS server version, and creates (or checks) the
    /// partitioned input stream and the buckets of members and leases.
    /// Changes nothing that is right; refuses a changed partition count.
    Init {
        /// The pipeline's JSON config (with `cluster`).
        config: PathBuf,
    },
    /// Prints each partition's owner, lease revision, fence, committed
    /// sequence, lag and last-commit age, and the workers.
    Status {
        /// The pipeline's JSON config (with `cluster`).
        config: PathBuf,
    },
    /// Moves a worker's partitions to the others, each after a final
    /// checkpoint; the worker then runs idle until stopped.
    Drain {
        /// The pipeline's JSON config (with `cluster`).
        config: PathBuf,
        /// The worker's id.
        worker: String,
    },
    /// Changes the partition count to the config's `cluster.partitions`:
    /// with every worker stopped and the input drained, moves each
    /// partition's state to the partition of its key under the new count
    /// and switches the stream (docs/cluster.md, "Changing the partition
    /// count").
    Migrate {
        /// The pipeline's JSON config, with the new `cluster.partitions`.
        config: PathBuf,
        /// Where the event key is in the pipes' state keys: a text with one
        /// `{key}` (`k{key}` for keys `k<event key>`).
        /// With a `repartition` step, this is stage 1's pipes' template.
        #[arg(long, default_value = plumber_cluster::migrate::DEFAULT_STATE_KEY)]
        state_key: String,
        /// With a `repartition` step: where the event key (the key the step
        /// shuffled by) is in stage 2's pipes' state keys (default `{key}`).
        #[arg(long)]
        stage2_state_key: Option<String>,
    },
}

/// Runs the command line; the return value is the process's exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run { .. } | Command::Worker { .. }) {
        // Before the async runtime or anything else starts, so that a stop
        // signal during start-up is never the default action (death).
        if let Err(error) = stop::catch_early() {
            eprintln!("error: cannot handle SIGINT and SIGTERM: {error}");
            return ExitCode::from(1);
        }
    }
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

/// A failed command: its exit status and what to print.
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    /// Bad input: a config field or a module (exit 2); the message is the
    /// error with all its causes.
    fn input(error: impl std::error::Error + 'static) -> Self {
        Self::input_message(ErrorChain(&error))
    }

    /// A failure while running (exit 1), with all its causes.
    fn run(error: impl std::error::Error + 'static) -> Self {
        Self::run_message(ErrorChain(&error))
    }

    /// Bad input (exit 2), said in words.
    fn input_message(message: impl std::fmt::Display) -> Self {
        Failure {
            status: 2,
            message: message.to_string(),
        }
    }

    /// A failure while running (exit 1), said in words.
    fn run_message(message: impl std::fmt::Display) -> Self {
        Failure {
            status: 1,
            message: message.to_string(),
        }
    }
}

/// Starts the admin server and prints the address it listens on (tests
/// and scripts read it: port 0 picks one).
async fn start_admin(
    options: AdminOptions,
    control: std::sync::Arc<dyn plumber::admin::AdminControl>,
) -> Result<AdminServer, Failure> {
    let server = AdminServer::start(options, control)
        .await
        .map_err(|error| match error {
            // An address in use is the system's, not the config's.
            plumber::admin::AdminServerError::Bind { .. } => Failure::run(error),
            _ => Failure::input(error),
        })?;
    // One write: stderr is unbuffered, and a reader of the log (a test,
    // a supervisor) must not see the line without its address.
    let line = format!("admin server listening on http://{}\n", server.local_addr());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    Ok(server)
}
async fn dispatch(cli: Cli) -> ExitCode {
    let cache_dir = cli.cache_dir.clone();
    let runtime = || {
        match &cache_dir {
            Some(dir) => Runtime::new(Some(dir.clone())),
            None => Runtime::with_default_cache(),
        }
        .map_err(Failure::run)
    };
    let result = match cli.command {
        Command::Run {
            configs,
            host,
            admin,
            module_dir,
        } => run(configs, host, admin, module_dir, runtime).await,
        Command::Validate { config, connect } => validate(&config, connect, runtime).await,
        Command::Setup { config } => setup(&config).await,
        Command::State { config, pipe } => dump_state(&config, &pipe).await,
        Command::Cluster { command } => cluster(command).await,
        Command::Worker {
            config,
            cluster,
            id,
            max_partitions,
            admin,
        } => worker(&config, cluster, id, max_partitions, admin, runtime).await,
        Command::Test {
            config,
            input,
            expect,
            order,
        } => replay_test(&config, &input, &expect, order, runtime).await,
        Command::New { name, lang, sdk } => new_project(&name, &lang, sdk),
        Command::Build { dir, out } => match runtime() {
            Ok(rt) => match crate::build::build(&dir, out.as_deref(), &rt).await {
                Ok(built) => {
                    println!(
                        "{}: {} pipe, {} bytes, built in {:.1} s",
                        built.component.display(),
                        built.language.name(),
                        built.bytes,
                        built.took.as_secs_f64()
                    );
                    Ok(())
                }
                Err(error @ crate::build::BuildError::UnknownProject { .. }) => {
                    Err(Failure::input(error))
                }
                Err(error) => Err(Failure::run(error)),
            },
            Err(failure) => Err(failure),
        },
        Command::Bench(args) => {
            let rt = if args.profile {
                Runtime::new_with_profiler(
                    cache_dir
                        .clone()
                        .or_else(plumber::runtime::default_cache_dir),
                    true,
                )
                .map_err(Failure::run)
            } else {
                runtime()
            };
            match rt {
                Ok(rt) => crate::bench::run(*args, rt).await.map_err(Failure::run),
                Err(failure) => Err(failure),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

fn cluster_failure(error: plumber_cluster::ClusterError) -> Failure {
    if error.is_bad_input() {
        Failure::input(error)
    } else {
        Failure::run(error)
    }
}

async fn worker(
    path: &Path,
    servers: Option<String>,
    id: Option<String>,
    max_partitions: Option<u32>,
    admin: Option<std::net::SocketAddr>,
    runtime: impl Fn() -> Result<Runtime, Failure>,
) -> Result<(), Failure> {
    let signals = stop::Signals::listen()
        .map_err(|e| Failure::run_message(format!("cannot listen for SIGINT and SIGTERM: {e}")))?;
    let pipeline = plumber_cluster::ClusterPipeline::load(path).map_err(cluster_failure)?;
    validate::offline(&pipeline.config, &path.display().to_string()).map_err(Failure::input)?;
    if max_partitions == Some(0) {
        return Err(Failure::input_message(
            "at `--max-partitions`: expected at least 1 partition",
        ));
    }
    let id = id.unwrap_or_else(default_worker_id);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(stop::requested());
    tokio::spawn(stop::on_signals_do(signals, move || {
        stop_tx.send_replace(true);
    }));
    let view = plumber_cluster::observe::WorkerView::new(&id, &pipeline);
    let admin_server = match admin {
        Some(listen) => {
            let options = AdminOptions {
                listen,
                token: std::env::var("PLUMBER_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
                module_dir: None,
            };
            Some(start_admin(options, view.clone()).await?)
        }
        None => None,
    };
    let options = plumber_cluster::worker::WorkerOptions {
        id,
        max_partitions,
        servers: servers.map(|list| list.split(',').map(str::to_owned).collect()),
    };
    let result =
        plumber_cluster::worker::run_observed(pipeline, options, runtime()?, stop_rx, view)
            .await
            .map_err(cluster_failure);
    if let Some(server) = admin_server {
        server.stop().await;
    }
    result
}

/// `<host name>-<pid>`, with characters a worker id cannot have replaced.
fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "worker".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    format!("{host}-{}", std::process::id())
}

async fn cluster(command: ClusterCommand) -> Result<(), Failure> {
    let failure = cluster_failure;
    match command {
        ClusterCommand::Init { config } => {
            let pipeline = plumber_cluster::ClusterPipeline::load(&config).map_err(failure)?;
            let report = plumber_cluster::init::init(&pipeline)
                .await
                .map_err(failure)?;
            for warning in &report.warnings {
                eprintln!("warning: {warning}");
            }
            for line in &report.lines {
                println!("{line}");
            }
            Ok(())
        }
        ClusterCommand::Status { config } => {
            let pipeline = plumber_cluster::ClusterPipeline::load(&config).map_err(failure)?;
            let status = plumber_cluster::status::status(&pipeline)
                .await
                .map_err(failure)?;
            print!("{}", status.render());
            Ok(())
        }
        ClusterCommand::Drain { config, worker } => {
            let pipeline = plumber_cluster::ClusterPipeline::load(&config).map_err(failure)?;
            let client = plumber_cluster::init::connect(&pipeline.cluster.url)
                .await
                .map_err(failure)?;
            let members =
                plumber_cluster::membership::Members::open(client, &pipeline.members_bucket())
                    .await
                    .map_err(failure)?;
            members.drain(&worker).await.map_err(failure)?;
            println!(
                "worker `{worker}` is draining: its partitions move after a final checkpoint each"
            );
            Ok(())
        }
        ClusterCommand::Migrate {
            config,
            state_key,
            stage2_state_key,
        } => {
            let pipeline = plumber_cluster::ClusterPipeline::load(&config).map_err(failure)?;
            let state_key = plumber_cluster::migrate::StateKeyTemplate::parse(&state_key)
                .map_err(|message| Failure::input_message(format!("--state-key: {message}")))?;
            let stage2_state_key = stage2_state_key
                .map(|text| {
                    plumber_cluster::migrate::StateKeyTemplate::parse(&text).map_err(|message| {
                        Failure::input_message(format!("--stage2-state-key: {message}"))
                    })
                })
                .transpose()?;
            let options = plumber_cluster::migrate::MigrateOptions {
                state_key,
                stage2_state_key,
            };
            let report = plumber_cluster::migrate::migrate(&pipeline, &options)
                .await
                .map_err(failure)?;
            for line in &report.lines {
                println!("{line}");
            }
            Ok(())
        }
    }
}

async fn replay_test(
    path: &Path,
    input: &Path,
    expect: &Path,
    order: crate::replay_test::Order,
    runtime: impl Fn() -> Result<Runtime, Failure>,
) -> Result<(), Failure> {
    let config = PipelineConfig::load(path).map_err(Failure::input)?;
    let result = crate::replay_test::run(path, &config, input, expect, order, runtime()?).await;
    result.map_err(|failure| Failure {
        status: failure.status(),
        message: failure.to_string(),
    })
}

fn new_project(name: &str, lang: &str, sdk: Option<PathBuf>) -> Result<(), Failure> {
    let language = match lang {
        "rust" => crate::build::Language::Rust,
        "go" => crate::build::Language::Go,
        "python" => crate::build::Language::Python,
        "js" | "javascript" => crate::build::Language::JavaScript,
        other => {
            return Err(Failure::input_message(format!(
                "unknown language `{other}`: use rust, go, python or js"
            )))
        }
    };
    let sdk = sdk.unwrap_or_else(crate::new::default_sdk_root);
    let dir = crate::new::create(Path::new("."), name, language, &sdk).map_err(Failure::input)?;
    println!(
        "created {} ({} pipe): see its README.md; `plumber build {}` then `plumber run {}/pipeline.json`",
        dir.display(),
        language.name(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Opens the state backend; the config's state settings were checked
/// (`validate::offline`), so a failure here is the system's (exit 1): a
/// full disk, a permission, an unreachable server.
async fn open_state(
    path: &Path,
    config: &PipelineConfig,
) -> Result<plumber::state::SharedState, Failure> {
    config.open_state().await.map_err(|error| {
        Failure::run_message(format!(
            "{}: at `state`: {}",
            path.display(),
            ErrorChain(&error)
        ))
    })
}

/// A failed check of `validate`: exit 2 for the config's or a module's
/// fault, 1 for a server's.
fn validate_failure(error: validate::ValidateError) -> Failure {
    if error.is_bad_config() {
        Failure::input(error)
    } else {
        Failure::run(error)
    }
}

async fn run(
    configs: Vec<PathBuf>,
    host: Option<PathBuf>,
    admin: Option<std::net::SocketAddr>,
    module_dir: Option<PathBuf>,
    runtime: impl Fn() -> Result<Runtime, Failure>,
) -> Result<(), Failure> {
    // First: from here on a stop signal wakes the task below (the early
    // handler has counted any that came before).
    let signals = stop::Signals::listen()
        .map_err(|e| Failure::run_message(format!("cannot listen for SIGINT and SIGTERM: {e}")))?;
    let host_config = match &host {
        Some(path) => HostConfig::load(path).map_err(Failure::input)?,
        None => HostConfig::default(),
    };
    let paths: Vec<PathBuf> = configs
        .into_iter()
        .chain(host_config.pipelines.iter().cloned())
        .collect();
    if paths.is_empty() {
        return Err(Failure::input_message(
            "nothing to run: give a pipeline config, or a --host config with `pipelines`",
        ));
    }
    let mut loaded = Vec::with_capacity(paths.len());
    for path in paths {
        let config = PipelineConfig::load(&path).map_err(Failure::input)?;
        if config.cluster.is_some() {
            return Err(Failure::input_message(format!(
                "{}: at `cluster`: this pipeline is partitioned over a cluster: run it with \
                 `plumber worker {}` on each machine (after `plumber cluster init {}`), not \
                 `plumber run`",
                path.display(),
                path.display(),
                path.display()
            )));
        }
        // What `validate` checks without a server, before anything opens:
        // whatever fails after this is not the config's fault.
        validate::offline(&config, &path.display().to_string()).map_err(Failure::input)?;
        loaded.push((path, config));
    }
    let rt = runtime()?;
    let tenants = Tenants::new(host_config.tenants.clone());
    let distinct: std::collections::HashSet<&str> = loaded
        .iter()
        .map(|(_, c)| c.tenant.as_deref().unwrap_or(DEFAULT_TENANT))
        .collect();
    if distinct.len() > 1 {
        tenants.set_multi_tenant();
    }
    let supervisor = Supervisor::new(tenants);
    tokio::spawn(stop::on_signals(signals, supervisor.clone()));
    // Pipelines sharing a sled directory share one open database (sled
    // locks its directory): the backend says what it can share.
    let mut shared_states: HashMap<String, SharedState> = HashMap::new();
    let mut running = Vec::with_capacity(loaded.len());
    for (path, config) in &loaded {
        if stop::requested() {
            tracing::info!(pipeline = %config.name, "not started: stopping");
            continue;
        }
        let state = match config.state.shared_key() {
            Some(key) => match shared_states.get(&key) {
                Some(state) => state.clone(),
                None => {
                    let state = open_state(path, config).await?;
                    shared_states.insert(key, state.clone());
                    state
                }
            },
            None => open_state(path, config).await?,
        };
        log_guarantees(config);
        let builder = config
            .builder(state)
            .await
            .map_err(|e| Failure::run_message(format!("{}: {}", path.display(), ErrorChain(&e))))?
            .runtime(rt.clone());
        let tenant = config.tenant.as_deref().unwrap_or(DEFAULT_TENANT);
        let (handle, task) = supervisor
            .start(&config.name, tenant, builder)
            .map_err(|e| {
                Failure::input_message(format!("{}: at `name`: {}", path.display(), ErrorChain(&e)))
            })?;
        if stop::requested() {
            // The signal came while this one was being set up: its
            // shutdown may have missed it.
            handle.shutdown();
        }
        if config.checkpoint.on_signal {
            handle
                .checkpoint_on_sigusr2()
                .map_err(|e| Failure::run_message(format!("cannot listen for SIGUSR2: {e}")))?;
        }
        running.push((path, config, task));
    }
    let admin_listen = admin.or(host_config.admin.as_ref().map(|a| a.listen));
    let admin_server = match admin_listen {
        Some(listen) => {
            let token_env = host_config
                .admin
                .as_ref()
                .and_then(|a| a.token_env.clone())
                .unwrap_or_else(|| "PLUMBER_ADMIN_TOKEN".to_owned());
            let token = std::env::var(&token_env).ok().filter(|t| !t.is_empty());
            let module_dir = module_dir.or_else(|| {
                host_config
                    .admin
                    .as_ref()
                    .and_then(|a| a.module_dir.clone())
            });
            let options = AdminOptions {
                listen,
                token,
                module_dir,
            };
            Some(start_admin(options, supervisor.clone()).await?)
        }
        None => None,
    };
    let status_every = host_config.status_interval_ms.unwrap_or(5000);
    let status_task = (status_every > 0 && std::io::stderr().is_terminal()).then(|| {
        let supervisor = supervisor.clone();
        let every = Duration::from_millis(status_every);
        tokio::spawn(async move {
            let mut previous = HashMap::new();
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticker.tick().await;
                eprintln!("{}", supervisor.status_line(&mut previous, every));
            }
        })
    });

    let mut failure: Option<Failure> = None;
    for (path, config, task) in running {
        // A match, not a closure returning the (large) pipeline error.
        let result = match task.await {
            Ok(result) => result,
            Err(e) => Err(PipelineError::Task {
                pipeline: config.name.clone(),
                message: e.to_string(),
            }),
        };
        let outcome = match result {
            Ok(report) => {
                tracing::info!(
                    pipeline = %config.name,
                    events_in = report.events_in,
                    events_out = report.events_out,
                    checkpoints = report.checkpoints,
                    "pipeline finished"
                );
                Ok(())
            }
            Err(PipelineError::Load { pipe, source, .. }) => {
                let field = match &source {
                    LoadError::Init { .. } => config.step_field(&pipe, "config"),
                    _ => config.module_field(&pipe),
                }
                .unwrap_or_else(|| "pipeline".to_owned());
                Err(Failure::input_message(format!(
                    "{}: at `{field}` (pipe `{pipe}`): {}",
                    path.display(),
                    ErrorChain(&source)
                )))
            }
            Err(error) => Err(Failure::run(error)),
        };
        if let Err(error) = outcome {
            if loaded.len() > 1 {
                // The others keep running; every failure is reported.
                eprintln!("error: {}", error.message);
            }
            failure.get_or_insert(error);
        }
    }
    if let Some(task) = status_task {
        task.abort();
    }
    if let Some(server) = admin_server {
        server.stop().await;
    }
    match failure {
        Some(failure) if loaded.len() > 1 => Err(Failure {
            status: failure.status,
            message: "one or more pipelines failed (see above)".to_owned(),
        }),
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Says at start what this pipeline promises, sink by sink.
fn log_guarantees(config: &PipelineConfig) {
    let pipeline = config.name.as_str();
    match config.delivery {
        Delivery::ExactlyOnce => {
            for (at, sink) in config.sinks() {
                if at == "dead_letter" {
                    continue;
                }
                match sink.output_guarantee() {
                    OutputGuarantee::ExactlyOnce(line) => {
                        tracing::info!(pipeline, sink = %at, "{line}")
                    }
                    OutputGuarantee::AtLeastOnce(line) => {
                        tracing::warn!(pipeline, sink = %at, "{line}")
                    }
                }
            }
        }
        Delivery::AtLeastOnce => tracing::info!(
            pipeline,
            "at-least-once: after a crash, events since the last checkpoint are replayed; \
             their effects on state and output may repeat"
        ),
        Delivery::AtMostOnce => tracing::info!(
            pipeline,
            "at-most-once: positions are committed before processing; after a crash, events \
             in flight are skipped"
        ),
    }
    if config.publish == Publish::AfterCommit {
        tracing::info!(
            pipeline,
            "publish after_commit: each epoch's output is held in its checkpoint and written \
             once it has committed; a restart writes what the committed outbox holds again, with \
             the same ids (a JetStream stream drops them; other sinks may repeat them)"
        );
    }
}

async fn validate(
    path: &Path,
    connect: bool,
    runtime: impl Fn() -> Result<Runtime, Failure>,
) -> Result<(), Failure> {
    let file = path.display().to_string();
    let config = PipelineConfig::load(path).map_err(Failure::input)?;
    let needs_connect = validate::offline(&config, &file).map_err(Failure::input)?;
    let rt = runtime()?;
    validate::guests(&config, &file, &rt)
        .await
        .map_err(validate_failure)?;
    if connect {
        validate::connect(&config, &file)
            .await
            .map_err(validate_failure)?;
    }
    println!(
        "{file}: ok (pipeline `{}`, {} steps)",
        config.name,
        config.pipeline.len()
    );
    if !connect && !needs_connect.is_empty() {
        println!(
            "not checked without --connect: {}",
            needs_connect.join("; ")
        );
    }
    Ok(())
}

async fn setup(path: &Path) -> Result<(), Failure> {
    let file = path.display().to_string();
    let config = PipelineConfig::load(path).map_err(Failure::input)?;
    validate::offline(&config, &file).map_err(Failure::input)?;
    let done = plumber::config::setup::prepare(&config, &file)
        .await
        .map_err(validate_failure)?;
    if done.is_empty() {
        println!("{file}: nothing to set up (no SQL sink, no JetStream stream)");
    }
    for line in done {
        println!("{file}: {line}");
    }
    Ok(())
}

async fn dump_state(path: &Path, pipe: &str) -> Result<(), Failure> {
    let file = path.display().to_string();
    let config = PipelineConfig::load(path).map_err(Failure::input)?;
    let pipes: Vec<&str> = config
        .pipeline
        .iter()
        .filter_map(|step| match step {
            StepConfig::Wasm(pipe) => Some(pipe.name.as_str()),
            _ => None,
        })
        .collect();
    if !pipes.contains(&pipe) {
        let known = if pipes.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its pipes are {}", quoted_list(&pipes))
        };
        return Err(Failure::input_message(format!(
            "{file}: at `--pipe`: pipeline `{}` has no pipe `{}`; {known}",
            config.name,
            plumber::config::excerpt(&escape_control(pipe.as_bytes()))
        )));
    }
    validate::offline_state(&config, &file).map_err(Failure::input)?;
    let state = open_state(path, &config).await?;
    let tenant = config
        .tenant
        .as_deref()
        .unwrap_or(plumber::state::DEFAULT_TENANT);
    let namespace = Namespace::for_tenant_pipe(tenant, &config.name, pipe);
    let entries = state
        .scan_prefix(namespace.prefix())
        .await
        .map_err(Failure::run)?;
    let prefix_len = namespace.prefix().len();
    let mut out = std::io::stdout().lock();
    for (key, value) in entries {
        let key = key.get(prefix_len..).unwrap_or_default();
        let line = format!("{}\t{}\n", escape_control(key), escape_control(&value));
        if let Err(error) = std::io::Write::write_all(&mut out, line.as_bytes()) {
            return Err(Failure::run_message(format!(
                "cannot write to stdout: {error}"
            )));
        }
    }
    Ok(())
}

/// `names` as `` `a`, `b` and `c` ``.
fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// `bytes` as one line of text: a backslash as `\\`, tab, newline and
/// carriage return as `\t`, `\n`, `\r`, other control characters as
/// `\u{1b}`, and bytes that are not UTF-8 as `\xff`; so that `plumber
/// state` prints one `key<TAB>value` line per entry whatever they hold.
fn escape_control(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => text.push_str("\\\\"),
                '\t' => text.push_str("\\t"),
                '\n' => text.push_str("\\n"),
                '\r' => text.push_str("\\r"),
                c if c.is_control() => {
                    let _ = write!(text, "\\u{{{:x}}}", u32::from(c));
                }
                c => text.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(text, "\\x{byte:02x}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lines_escape_what_would_break_them() {
        assert_eq!(escape_control(b"plain k\xc3\xa9y"), "plain k\u{e9}y");
        assert_eq!(
            escape_control(b"a\tb\nc\rd\\e\x1b[0m\x7f\xff\xc3"),
            "a\\tb\\nc\\rd\\\\e\\u{1b}[0m\\u{7f}\\xff\\xc3"
        );
        assert_eq!(quoted_list(&["a", "b", "c"]), "`a`, `b` and `c`");
        assert_eq!(quoted_list(&["a"]), "`a`");
    }
}

/// Stopping `plumber run` by signal: SIGINT and SIGTERM both stop cleanly
/// (every pipeline drains what it has read, takes a final checkpoint, and
/// the process exits 0); a second one exits at once, without the final
/// checkpoint (the next run recovers from the last one, as after a crash).
mod stop {
    use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
    use std::sync::Arc;

    use plumber::supervisor::Supervisor;

    /// Stop signals received so far, counted from the start of `main`.
    static RECEIVED: AtomicUsize = AtomicUsize::new(0);
    /// The last of them.
    static LAST: AtomicI32 = AtomicI32::new(0);

    /// Whether a stop signal has come.
    pub(super) fn requested() -> bool {
        RECEIVED.load(Ordering::SeqCst) > 0
    }

    #[cfg(unix)]
    extern "C" fn count(signal: libc::c_int) {
        // Only atomics: all a signal handler may safely touch.
        LAST.store(signal, Ordering::SeqCst);
        RECEIVED.fetch_add(1, Ordering::SeqCst);
    }

    /// Installs a handler that only counts SIGINT and SIGTERM. Tokio's
    /// handlers, installed later, call it before their own, so the count
    /// covers every signal from now on.
    #[cfg(unix)]
    pub(super) fn catch_early() -> std::io::Result<()> {
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed `sigaction` is valid; the handler only
            // touches atomics, which is async-signal-safe.
            let installed = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = count as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if installed != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    #[cfg(not(unix))]
    pub(super) fn catch_early() -> std::io::Result<()> {
        Ok(())
    }

    fn name(signal: i32) -> &'static str {
        #[cfg(unix)]
        {
            match signal {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM",
                _ => "a stop signal",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = signal;
            "Ctrl-C"
        }
    }

    /// Wakes on SIGINT and SIGTERM.
    pub(super) struct Signals {
        #[cfg(unix)]
        interrupt: tokio::signal::unix::Signal,
        #[cfg(unix)]
        terminate: tokio::signal::unix::Signal,
    }

    impl Signals {
        /// Starts listening (inside the async runtime).
        pub(super) fn listen() -> std::io::Result<Self> {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{signal, SignalKind};
                Ok(Signals {
                    interrupt: signal(SignalKind::interrupt())?,
                    terminate: signal(SignalKind::terminate())?,
                })
            }
            #[cfg(not(unix))]
            {
                Ok(Signals {})
            }
        }

        async fn next(&mut self) {
            #[cfg(unix)]
            {
                tokio::select! {
                    _ = self.interrupt.recv() => {}
                    _ = self.terminate.recv() => {}
                }
            }
            #[cfg(not(unix))]
            {
                if tokio::signal::ctrl_c().await.is_ok() {
                    RECEIVED.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Acts on stop signals until the process ends: the first asks every
    /// pipeline (and those still starting) to stop cleanly, the second
    /// exits at once.
    pub(super) async fn on_signals(signals: Signals, supervisor: Arc<Supervisor>) {
        on_signals_do(signals, move || supervisor.shutdown()).await;
    }

    /// As [`on_signals`], calling `shutdown` on the first signal.
    pub(super) async fn on_signals_do(mut signals: Signals, shutdown: impl Fn()) {
        let mut handled = 0;
        loop {
            // The count, not the wake-ups, says how many came: the early
            // handler counted those before `signals` listened.
            let received = RECEIVED.load(Ordering::SeqCst);
            if received > handled {
                let signal = LAST.load(Ordering::SeqCst);
                if handled == 0 {
                    shutdown();
                    tracing::info!(
                        "{}: stopping: each pipeline finishes what it has read and takes a final \
                         checkpoint (a second signal stops at once, without it)",
                        name(signal)
                    );
                }
                if received > 1 {
                    tracing::warn!(
                        "{} again: exiting now without a final checkpoint; the next run \
                         resumes from the last committed one",
                        name(signal)
                    );
                    std::process::exit(128 + signal);
                }
                handled = received;
            }
            signals.next().await;
        }
    }
}
