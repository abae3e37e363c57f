//! The WebAssembly runtime: one [`Runtime`] per process holds the wasmtime
//! engine, the linker with the host side of our WIT, and the on-disk cache
//! of compiled components.
//!
//! Loading a pipe ([`Runtime::load`]) reads the `.wasm`, takes its compiled
//! form from the cache (compiling and storing it on a miss), checks its
//! imports against what the pipe is granted, and prepares an `InstancePre`
//! that every instance of the pipe reuses.

pub(crate) mod bindings;
mod cache;
mod capabilities;
mod guest_output;
mod host;
pub mod limits;
mod migrate;
mod packed;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, UpdateDeadline};

use crate::state::PipeState;
pub use cache::{ComponentCache, CACHE_MAX_BYTES_VAR, DEFAULT_CACHE_MAX_BYTES};
pub use capabilities::{Capabilities, Grant, ReadOnlyDir};
pub(crate) use guest_output::LogBudget;
pub use guest_output::{
    GuestLogLine, LOG_BYTES_PER_SECOND, LOG_LINES_PER_SECOND, RECENT_LOG_LINES,
};
pub use host::HostCtx;
pub use limits::{LimitExceeded, LimitKind, PipeLimits, HEADER_OVERHEAD_BYTES, MAX_MESSAGE_BYTES};
pub use migrate::{MigrateError, Migration, MIGRATE_BATCH_BYTES, MIGRATE_BATCH_KEYS};

/// The name the linker knows our `state` interface by (guests built
/// against an older minor version are served by semver matching).
const STATE_INTERFACE: &str = "plumber:pipe/state@0.1.1";

/// Why a component could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The `.wasm` file could not be read.
    #[error("cannot read WebAssembly file `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is a core module or not WebAssembly at all.
    #[error("`{path}` is not a WebAssembly component: {reason}")]
    NotComponent {
        /// The file.
        path: PathBuf,
        /// What it is instead.
        reason: String,
    },
    /// wasmtime refused the component.
    #[error("cannot compile component `{path}`")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's explanation.
        #[source]
        source: wasmtime::Error,
    },
    /// The component imports something the pipe was not granted.
    #[error(
        "component `{path}` imports {}, which this pipe is not granted \
         (granted: plumber:pipe/*, wasi:io/*, wasi:cli stdio/environment/exit/terminal{extra}); \
         remove the imports from the guest or grant them in the pipe's config \
         (grantable: clocks, random, filesystem_interfaces, env, read_only_dir)",
        ungranted_list(imports)
    )]
    ImportNotGranted {
        /// The file.
        path: PathBuf,
        /// Every import not granted (at least one), as the component names
        /// them, in its order.
        imports: Vec<String>,
        /// The optional grants in force, for the message.
        extra: String,
    },
    /// The component does not export what the `plumber:pipe` world needs.
    #[error("component `{path}` does not implement the plumber:pipe world")]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What is missing, as wasmtime says it.
        #[source]
        source: wasmtime::Error,
    },
    /// Instantiating the component failed.
    #[error("cannot instantiate pipe `{pipe}`")]
    Instantiate {
        /// The pipe's name.
        pipe: String,
        /// wasmtime's explanation.
        #[source]
        source: wasmtime::Error,
    },
    /// The guest's `init` refused its config or trapped.
    #[error("pipe `{pipe}` failed in init: {message}")]
    Init {
        /// The pipe's name.
        pipe: String,
        /// The guest's error or the trap.
        message: String,
    },
    /// The module cannot take over the pipe's state: it declares another
    /// state version and cannot migrate, or its migration failed.
    #[error("pipe `{pipe}`: the module cannot take over the pipe's state")]
    StateVersion {
        /// The pipe's name.
        pipe: String,
        /// Why (boxed: it is large, and rare).
        #[source]
        source: Box<MigrateError>,
    },
    /// The compile cache could not be used.
    #[error("component cache `{path}`")]
    Cache {
        /// The cache directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A cache setting from the environment is not usable.
    #[error("`{variable}` is `{value}`: expected a whole number of bytes, e.g. 1073741824")]
    CacheSetting {
        /// The environment variable.
        variable: &'static str,
        /// What it holds.
        value: String,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine")]
    Engine(#[source] wasmtime::Error),
    /// The thread that ends guests' time slices could not be started.
    #[error("cannot start the epoch ticker of the WebAssembly engine")]
    EpochTicker(#[source] std::io::Error),
    /// The pipe's capabilities could not be set up (a read-only directory
    /// that cannot be opened).
    #[error("pipe `{pipe}`: {message}")]
    Capability {
        /// The pipe's name.
        pipe: String,
        /// What went wrong.
        message: String,
    },
}

/// The process-wide WebAssembly engine, linker and compile cache.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostCtx>,
    cache: Option<ComponentCache>,
    /// Advances the epoch that time limits count in; stops when dropped.
    _ticker: limits::EpochTicker,
}

impl Runtime {
    /// A runtime that caches compiled components in `cache_dir`
    /// (`None`: compile on every load), keeping at most
    /// `$PLUMBER_CACHE_MAX_BYTES` bytes there (default 1 GiB).
    ///
    /// # Errors
    ///
    /// `PLUMBER_CACHE_MAX_BYTES` is not a number of bytes
    /// ([`LoadError::CacheSetting`]), or the engine or linker could not be
    /// set up.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        Runtime::new_with_profiler(cache_dir, false)
    }

    /// As [`Runtime::new`], and with `perf_map` the JIT code of every
    /// component loaded is named in `/tmp/perf-<pid>.map`, so that `perf
    /// report` shows guest functions by name instead of bare addresses
    /// (wasmtime's perf map; docs/benchmarks.md, "Profiling a pipe").
    ///
    /// # Errors
    ///
    /// As [`Runtime::new`].
    pub fn new_with_profiler(
        cache_dir: Option<PathBuf>,
        perf_map: bool,
    ) -> Result<Self, LoadError> {
        match cache_dir {
            Some(dir) => Runtime::build(Some((dir, cache::max_bytes_from_env()?)), perf_map),
            None => Runtime::build(None, perf_map),
        }
    }

    /// A runtime that caches compiled components in `dir`, deleting the
    /// least recently used entries beyond `max_bytes`.
    ///
    /// # Errors
    ///
    /// The engine or linker could not be set up.
    pub fn with_cache(dir: PathBuf, max_bytes: u64) -> Result<Self, LoadError> {
        Runtime::build(Some((dir, max_bytes)), false)
    }

    fn build(cache: Option<(PathBuf, u64)>, perf_map: bool) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        if perf_map {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        // Time limits: guests check the epoch at loop heads and calls.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(LoadError::Engine)?;
        let ticker = limits::EpochTicker::start(&engine).map_err(LoadError::EpochTicker)?;
        let mut linker = Linker::<HostCtx>::new(&engine);
        bindings::StatefulPipe::add_to_linker::<HostCtx, HasSelf<HostCtx>>(&mut linker, |ctx| ctx)
            .map_err(LoadError::Engine)?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(LoadError::Engine)?;
        // Our own `add-many` in place of the generated one (same contract,
        // keys read in place; see `host::add_many_in_place`).
        linker.allow_shadowing(true);
        linker
            .instance(STATE_INTERFACE)
            .and_then(|mut state| state.func_wrap_async("add-many", host::add_many_in_place))
            .map_err(LoadError::Engine)?;
        linker.allow_shadowing(false);
        let cache = cache.map(|(dir, max_bytes)| ComponentCache::new(dir, &engine, max_bytes));
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                _ticker: ticker,
            }),
        })
    }

    /// A runtime with the default cache directory: `$PLUMBER_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/plumber`, else `$HOME/.cache/plumber`, else none.
    ///
    /// # Errors
    ///
    /// The engine or linker could not be set up.
    pub fn with_default_cache() -> Result<Self, LoadError> {
        Runtime::new(default_cache_dir())
    }

    /// The compile cache, when there is one.
    pub fn cache(&self) -> Option<&ComponentCache> {
        self.inner.cache.as_ref()
    }

    /// Loads the component at `path` for a pipe with these capabilities.
    ///
    /// # Errors
    ///
    /// The file is missing or not a component, it imports something not
    /// granted, or it does not export `init` and `process`.
    pub fn load(
        &self,
        path: &Path,
        capabilities: &Capabilities,
    ) -> Result<PipeComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(path, &bytes, capabilities)
    }

    /// Loads a component from its bytes; `path` names it in errors.
    ///
    /// # Errors
    ///
    /// As [`Runtime::load`].
    pub fn load_bytes(
        &self,
        path: &Path,
        bytes: &[u8],
        capabilities: &Capabilities,
    ) -> Result<PipeComponent, LoadError> {
        let instance_pre = self.prepare(path, bytes, capabilities)?;
        let pre = bindings::StatefulPipePre::new(instance_pre).map_err(|source| {
            LoadError::WrongWorld {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let digest = Sha256::digest(bytes);
        Ok(PipeComponent {
            path: path.to_path_buf(),
            version: hex::encode(&digest[..6]),
            pre,
        })
    }

    /// Reads and compiles the component at `path` into the compile cache
    /// and checks its imports, whichever of our worlds it is (a pipe, a
    /// window trigger or aggregator), so that a later start pays no compile
    /// (`plumber bench` warms the cache so).
    ///
    /// # Errors
    ///
    /// As [`Runtime::load`], but for the world.
    pub fn precompile(&self, path: &Path) -> Result<(), LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.prepare(path, &bytes, &Capabilities::default())
            .map(|_| ())
    }

    /// Reads, compiles (through the cache) and checks a component of any
    /// of our worlds: its imports against `capabilities`, and that the
    /// linker serves them. Pipes, window triggers and aggregators are all
    /// loaded so.
    ///
    /// # Errors
    ///
    /// As [`Runtime::load`].
    pub(crate) fn prepare(
        &self,
        path: &Path,
        bytes: &[u8],
        capabilities: &Capabilities,
    ) -> Result<wasmtime::component::InstancePre<HostCtx>, LoadError> {
        check_is_component(path, bytes)?;
        let engine = &self.inner.engine;
        let component = match &self.inner.cache {
            Some(cache) => cache.get_or_compile(engine, path, bytes)?,
            None => Component::new(engine, bytes).map_err(|source| LoadError::Compile {
                path: path.to_path_buf(),
                source,
            })?,
        };
        let component_type = component.component_type();
        let ungranted: Vec<String> = component_type
            .imports(engine)
            .map(|(import, _)| import)
            .filter(|import| !capabilities.allows(import))
            .map(str::to_owned)
            .collect();
        if !ungranted.is_empty() {
            return Err(LoadError::ImportNotGranted {
                path: path.to_path_buf(),
                imports: ungranted,
                extra: capabilities.describe(),
            });
        }
        self.inner
            .linker
            .instantiate_pre(&component)
            .map_err(|source| LoadError::WrongWorld {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Loads a WASI preview 1 core module (a command pipe), through the
    /// compile cache.
    ///
    /// # Errors
    ///
    /// The file cannot be read, or is not a core module wasmtime accepts.
    pub fn load_module(&self, path: &Path) -> Result<wasmtime::Module, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let engine = &self.inner.engine;
        match &self.inner.cache {
            Some(cache) => cache.get_or_compile_module(engine, path, &bytes),
            None => wasmtime::Module::new(engine, &bytes).map_err(|source| LoadError::Compile {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The engine (shared by every pipe of this runtime).
    pub(crate) fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

/// A guest's stderr that goes to the log, tagged (for command modules).
pub(crate) fn guest_stderr(tenant: &str, pipe: &str) -> impl wasmtime_wasi::cli::StdoutStream {
    guest_output::GuestOutput::new(tenant, pipe, "stderr", LogBudget::new(tenant, pipe))
}

/// The default cache directory: `$PLUMBER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/plumber`, else `$HOME/.cache/plumber`, else none.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PLUMBER_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("plumber"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("plumber"))
}

/// `` `a` ``, `` `a` and `b` ``, `` `a`, `b` and `c` ``: every import not granted.
fn ungranted_list(imports: &[String]) -> String {
    let quoted: Vec<String> = imports.iter().map(|import| format!("`{import}`")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// Refuses core modules and non-WebAssembly files with a message that says which.
fn check_is_component(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    let not = |reason: &str| LoadError::NotComponent {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(not(
            "the file does not start with the WebAssembly magic bytes",
        ));
    }
    // Bytes 4..8: a core module has version 1 and layer 0; a component layer 1.
    if bytes[6..8] == [0, 0] {
        return Err(not(
            "it is a core module; build the guest for `wasm32-wasip2` or wrap it with `wasm-tools component new`",
        ));
    }
    Ok(())
}

/// A loaded, checked component ready to be instantiated any number of times.
#[derive(Clone)]
pub struct PipeComponent {
    path: PathBuf,
    version: String,
    pre: bindings::StatefulPipePre<HostCtx>,
}

/// Who an instance is and what it may use: everything needed to create it
/// again after a trap or with another module.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// The tenant (tags its log lines).
    pub tenant: Arc<str>,
    /// The pipe's name.
    pub pipe: Arc<str>,
    /// Its limits.
    pub limits: Arc<PipeLimits>,
    /// Its capabilities.
    pub capabilities: Capabilities,
    /// The config passed to `init`, as JSON text.
    pub config_json: String,
    /// Whether to call `process-packed` when the component exports it
    /// (the default); `false` always uses the canonical-ABI `process`.
    pub packed: bool,
}

impl InstanceSettings {
    /// Settings with default limits and no capabilities.
    pub fn new(tenant: &str, pipe: &str, config_json: impl Into<String>) -> Self {
        InstanceSettings {
            tenant: tenant.into(),
            pipe: pipe.into(),
            limits: Arc::new(PipeLimits::default()),
            capabilities: Capabilities::default(),
            config_json: config_json.into(),
            packed: true,
        }
    }
}

/// The exports of a live instance.
struct Exports {
    bindings: bindings::StatefulPipe,
    /// `process-packed`, when the component has it and the settings allow it.
    packed: Option<wasmtime::component::Func>,
    /// `state-version` and `migrate`, when the component has them.
    versions: migrate::VersionExports,
}

/// The guest side of `process-packed`: one byte list in, one out.
type PackedProcess<'a> =
    wasmtime::component::TypedFunc<(&'a [u8],), (Result<Vec<u8>, crate::PipeError>,)>;

type Started = (Store<HostCtx>, Exports);

impl PipeComponent {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A short hex digest of the module's bytes: its version in logs,
    /// metrics and the admin API.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Creates an instance with this state view, and calls the guest's
    /// `init` with the settings' config.
    ///
    /// # Errors
    ///
    /// Instantiation failed, or `init` returned an error, trapped or went
    /// past a limit.
    pub async fn instantiate(
        &self,
        runtime: &Runtime,
        settings: Arc<InstanceSettings>,
        state: PipeState,
    ) -> Result<PipeInstance, LoadError> {
        let log_budget = LogBudget::new(&settings.tenant, &settings.pipe);
        let (store, exports) = self
            .start(runtime, &settings, state, &log_budget)
            .await
            .map_err(|(error, _)| error)?;
        Ok(PipeInstance {
            store,
            exports,
            log_budget,
            packed_in: Vec::new(),
            spare: packed::SpareValues::default(),
            component: self.clone(),
            runtime: runtime.clone(),
            settings,
            guest_time: Duration::ZERO,
        })
    }

    /// Instantiates and runs `init`; on failure the state view comes back.
    async fn start(
        &self,
        runtime: &Runtime,
        settings: &InstanceSettings,
        state: PipeState,
        log_budget: &Arc<LogBudget>,
    ) -> Result<Started, (LoadError, PipeState)> {
        let pipe = &*settings.pipe;
        let mut store =
            new_store(runtime, settings, state, log_budget).map_err(|failed| *failed)?;
        begin_call(&mut store);
        let instantiated = match self.pre.instance_pre().instantiate_async(&mut store).await {
            Ok(instance) => {
                bindings::StatefulPipe::new(&mut store, &instance).and_then(|bindings| {
                    let packed = match instance.get_func(&mut store, "process-packed") {
                        Some(func) if settings.packed => {
                            // Checked once here; calls use it unchecked.
                            func.typed::<(&[u8],), (Result<Vec<u8>, crate::PipeError>,)>(&store)
                                .map_err(|e| {
                                    e.context("its `process-packed` export has the wrong type")
                                })?;
                            Some(func)
                        }
                        _ => None,
                    };
                    let versions = migrate::VersionExports::find(&mut store, &instance)?;
                    Ok(Exports {
                        bindings,
                        packed,
                        versions,
                    })
                })
            }
            Err(e) => Err(e),
        };
        let exports = match instantiated {
            Ok(exports) => exports,
            Err(e) => {
                let state = store.data_mut().state_mut().take();
                return Err((
                    LoadError::Instantiate {
                        pipe: pipe.to_owned(),
                        source: e,
                    },
                    state,
                ));
            }
        };
        let init = exports
            .bindings
            .call_init(&mut store, &settings.config_json)
            .await;
        let failure = match init {
            Ok(Ok(())) => None,
            Ok(Err(error)) => Some(limits::cap_message(&error.message).into_owned()),
            Err(trap) => Some(match limit_of(&store) {
                Some(kind) => format!("went past its {kind} limit in init"),
                None => limits::cap_message(&format!("trapped: {trap:#}")).into_owned(),
            }),
        };
        if let Some(message) = failure {
            let state = store.data_mut().state_mut();
            state.end_call(false);
            let state = state.take();
            return Err((
                LoadError::Init {
                    pipe: pipe.to_owned(),
                    message,
                },
                state,
            ));
        }
        // Writes made in init belong to the first epoch like any other.
        store.data_mut().state_mut().end_call(true);
        Ok((store, exports))
    }
}

/// A store for one instance of a component: its WASI context from the
/// settings' capabilities, its state view, and the settings' limits
/// (memory, hostcall fuel, time per call). Pipes and window triggers run
/// in such stores alike.
///
/// # Errors
///
/// The capabilities could not be set up; the state view comes back
/// (boxed: the pair is large and the failure rare).
pub(crate) fn new_store(
    runtime: &Runtime,
    settings: &InstanceSettings,
    state: PipeState,
    log_budget: &Arc<LogBudget>,
) -> Result<Store<HostCtx>, Box<(LoadError, PipeState)>> {
    let pipe = &*settings.pipe;
    let wasi = match settings
        .capabilities
        .wasi_ctx(&settings.tenant, pipe, log_budget)
    {
        Ok(wasi) => wasi,
        Err(message) => {
            return Err(Box::new((
                LoadError::Capability {
                    pipe: pipe.to_owned(),
                    message,
                },
                state,
            )))
        }
    };
    let ctx = HostCtx::new(
        settings.tenant.clone(),
        settings.pipe.clone(),
        state,
        settings.limits.clone(),
        log_budget.clone(),
        wasi,
    );
    let mut store = Store::new(runtime.engine(), ctx);
    store.limiter(|ctx| &mut ctx.limiter);
    store.set_hostcall_fuel(limits::hostcall_fuel(&settings.limits));
    store.epoch_deadline_callback(|mut context| {
        let ctx = context.data_mut();
        if ctx.call_started.elapsed() >= ctx.limits.call_timeout() {
            ctx.limit_hit = Some(LimitKind::Time);
            return Err(LimitExceeded(LimitKind::Time).into());
        }
        // Give the worker thread back to tokio at every tick, so a
        // spinning guest cannot starve other pipelines.
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(tokio::task::yield_now()),
        ))
    });
    Ok(store)
}

/// What a call that trapped failed of: a limit it went past (time,
/// memory, what it handed the host) or a trap of its own. Pipes and
/// window triggers report failures so.
pub(crate) fn trap_error(store: &Store<HostCtx>, trap: &wasmtime::Error) -> CallError {
    let bounds = &store.data().limits;
    match limit_of(store) {
        Some(LimitKind::Time) => CallError::Limit {
            kind: LimitKind::Time,
            message: format!(
                "stopped after {} ms, its call_timeout_ms",
                bounds.call_timeout_ms
            ),
        },
        Some(kind) => CallError::Limit {
            kind,
            message: limits::cap_message(&format!(
                "trapped after going past its {kind} limit: {trap:#}"
            ))
            .into_owned(),
        },
        None if is_hostcall_fuel_exhausted(trap) => CallError::Limit {
            kind: LimitKind::OutputBytes,
            message: format!(
                "handed the host more than {} bytes at once (its answer or a host \
                 call's arguments; the most that max_output_bytes {} and \
                 max_output_events {} allow), stopped while it was copied",
                store.hostcall_fuel(),
                bounds.max_output_bytes,
                bounds.max_output_events,
            ),
        },
        None => CallError::Trap(limits::cap_message(&format!("{trap:?}")).into_owned()),
    }
}

pub(crate) fn begin_call(store: &mut Store<HostCtx>) {
    let ctx = store.data_mut();
    ctx.call_started = Instant::now();
    ctx.limit_hit = None;
    ctx.limiter.refused = false;
    store.set_epoch_deadline(1);
}

/// Whether wasmtime stopped copying data out of the guest because it went
/// past the store's hostcall fuel ([`limits::hostcall_fuel`]). wasmtime's
/// error type for it is private: it is known by its message.
fn is_hostcall_fuel_exhausted(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .to_string()
            .contains("fuel allocated for hostcalls has been exhausted")
    })
}

/// The limit the last call went past, if it did.
pub(crate) fn limit_of(store: &Store<HostCtx>) -> Option<LimitKind> {
    let ctx = store.data();
    ctx.limit_hit
        .or(ctx.limiter.refused.then_some(LimitKind::Memory))
}

/// A live instance of a pipe: its store, its exports, and what is needed to
/// create it again.
pub struct PipeInstance {
    store: Store<HostCtx>,
    exports: Exports,
    /// The pipe's log allowance, kept across instances.
    log_budget: Arc<LogBudget>,
    /// The packed form of the batch being processed, reused across calls.
    packed_in: Vec<u8>,
    /// Buffers of consumed events, for the values of answers.
    spare: packed::SpareValues,
    component: PipeComponent,
    runtime: Runtime,
    settings: Arc<InstanceSettings>,
    guest_time: Duration,
}

/// How a call into a pipe failed.
#[derive(Debug)]
pub enum CallError {
    /// The guest returned its own error.
    Guest(crate::PipeError),
    /// The guest trapped (panic, out-of-bounds, unreachable, ...); the
    /// instance cannot be used again.
    Trap(String),
    /// The call went past one of the pipe's limits.
    Limit {
        /// Which.
        kind: LimitKind,
        /// What happened.
        message: String,
    },
}

impl CallError {
    /// Whether the instance is unusable and must be created again.
    pub fn needs_new_instance(&self) -> bool {
        match self {
            CallError::Guest(_) => false,
            CallError::Trap(_) => true,
            // An answer over the output limits may have been stopped
            // while it was being copied out, which leaves the instance
            // mid-call.
            CallError::Limit { kind, .. } => matches!(
                kind,
                LimitKind::Time
                    | LimitKind::Memory
                    | LimitKind::OutputBytes
                    | LimitKind::OutputEvents
            ),
        }
    }
}

impl PipeInstance {
    /// Calls `process` with one batch. A failed call's state writes are
    /// undone (write-through writes excepted).
    ///
    /// # Errors
    ///
    /// The guest returned an error, trapped, or went past a limit.
    pub async fn process(&mut self, batch: &crate::Batch) -> Result<Vec<crate::Event>, CallError> {
        begin_call(&mut self.store);
        let result = match self.exports.packed {
            Some(func) => {
                packed::encode_batch(&mut self.packed_in, batch);
                // SAFETY: the type was checked when the instance started.
                let typed: PackedProcess<'_> = unsafe { PackedProcess::new_unchecked(func) };
                let max_events = self.settings.limits.max_output_events;
                let max_bytes = self.settings.limits.max_output_bytes;
                match typed.call_async(&mut self.store, (&self.packed_in,)).await {
                    Ok((Ok(bytes),)) => {
                        // Reported like a limit a state call hit (below).
                        let over = |kind, message| {
                            (
                                Some(kind),
                                crate::PipeError {
                                    message,
                                    retryable: false,
                                    event_index: None,
                                },
                            )
                        };
                        let decoded =
                            packed::decode_events(&bytes, max_events, max_bytes, &mut self.spare);
                        let (limit, error) = match decoded {
                            Ok(events) => return self.finish_call(Ok(Ok(events))),
                            Err(packed::DecodeFailure::Malformed(error)) => (None, error),
                            Err(packed::DecodeFailure::TooMany(count)) => over(
                                LimitKind::OutputEvents,
                                format!("returned {count} events; the limit is {max_events}"),
                            ),
                            Err(packed::DecodeFailure::TooLarge { bytes, headers }) => over(
                                LimitKind::OutputBytes,
                                limits::output_bytes_message(bytes, headers, max_bytes),
                            ),
                        };
                        if limit.is_some() {
                            self.store.data_mut().limit_hit = limit;
                        }
                        Ok(Err(error))
                    }
                    Ok((Err(error),)) => Ok(Err(error)),
                    Err(trap) => Err(trap),
                }
            }
            None => {
                self.exports
                    .bindings
                    .call_process(&mut self.store, batch)
                    .await
            }
        };
        self.finish_call(result)
    }

    /// Turns a call's result into its outcome, and ends the call (undoing
    /// its writes if it failed).
    fn finish_call(
        &mut self,
        result: wasmtime::Result<Result<Vec<crate::Event>, crate::PipeError>>,
    ) -> Result<Vec<crate::Event>, CallError> {
        self.guest_time += self.store.data().call_started.elapsed();
        let outcome = match result {
            Ok(Ok(events)) => self.check_output(events),
            Ok(Err(mut error)) => Err({
                // A guest's message is kept to a size every log line and
                // dead letter can carry.
                if let std::borrow::Cow::Owned(capped) = limits::cap_message(&error.message) {
                    error.message = capped;
                }
                match limit_of(&self.store) {
                    // The guest gave up because a state call hit a limit, or
                    // its packed answer went past the output limit.
                    Some(kind) => CallError::Limit {
                        kind,
                        message: error.message,
                    },
                    None => CallError::Guest(error),
                }
            }),
            Err(trap) => Err(trap_error(&self.store, &trap)),
        };
        self.store.data_mut().state_mut().end_call(outcome.is_ok());
        outcome
    }

    /// The state backend's own failure during the last call, if one came
    /// (taken: asked once per call). The call's outcome must not be used:
    /// the guest saw an error it may have ignored.
    pub fn take_backend_failure(&mut self) -> Option<crate::state::StateError> {
        self.store.data_mut().backend_failure.take()
    }

    /// Hands over a batch the pipe has consumed: its buffers are reused
    /// for the next answer's events (packed calls).
    pub fn recycle(&mut self, events: Vec<crate::Event>) {
        if self.exports.packed.is_some() {
            self.spare.keep(events);
        }
    }

    fn check_output(&self, events: Vec<crate::Event>) -> Result<Vec<crate::Event>, CallError> {
        let limits = &self.settings.limits;
        if events.len() as u64 > limits.max_output_events {
            return Err(CallError::Limit {
                kind: LimitKind::OutputEvents,
                message: format!(
                    "returned {} events; the limit is {}",
                    events.len(),
                    limits.max_output_events
                ),
            });
        }
        let bytes: u64 = events.iter().map(limits::output_bytes).sum();
        if bytes > limits.max_output_bytes {
            let headers = events.iter().map(|e| e.headers.len() as u64).sum();
            return Err(CallError::Limit {
                kind: LimitKind::OutputBytes,
                message: limits::output_bytes_message(bytes, headers, limits.max_output_bytes),
            });
        }
        Ok(events)
    }

    /// Replaces the instance by a fresh one of the same component (after a
    /// trap); pending writes of earlier calls are kept.
    ///
    /// # Errors
    ///
    /// Instantiation or `init` failed; the old (unusable) instance stays.
    pub async fn recreate(&mut self) -> Result<(), LoadError> {
        let component = self.component.clone();
        self.replace(component).await
    }

    /// Switches to another component; pending writes are kept. Call it at a
    /// checkpoint barrier, so no batch sees both.
    ///
    /// # Errors
    ///
    /// Instantiation or `init` of the new component failed; the old
    /// instance keeps running.
    pub async fn replace(&mut self, component: PipeComponent) -> Result<(), LoadError> {
        let state = self.store.data_mut().state_mut().take();
        match component
            .start(&self.runtime, &self.settings, state, &self.log_budget)
            .await
        {
            Ok((store, exports)) => {
                self.store = store;
                self.exports = exports;
                self.component = component;
                Ok(())
            }
            Err((error, state)) => {
                *self.store.data_mut().state_mut() = state;
                Err(error)
            }
        }
    }

    /// Checks that `component` would start as this pipe: instantiates it
    /// on a scratch state view and runs its `init`, touching nothing real.
    ///
    /// # Errors
    ///
    /// Instantiation or `init` failed.
    pub async fn check_candidate(
        runtime: &Runtime,
        settings: &InstanceSettings,
        component: &PipeComponent,
        state: PipeState,
    ) -> Result<(), LoadError> {
        let scratch_budget = LogBudget::new(&settings.tenant, &settings.pipe);
        component
            .start(runtime, settings, state, &scratch_budget)
            .await
            .map(|_| ())
            .map_err(|(error, _)| error)
    }

    /// The component running now.
    pub fn component(&self) -> &PipeComponent {
        &self.component
    }

    /// Its settings.
    pub fn settings(&self) -> &Arc<InstanceSettings> {
        &self.settings
    }

    /// The runtime it runs on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Time spent inside `process` calls so far.
    pub fn guest_time(&self) -> Duration {
        self.guest_time
    }

    /// The pipe's last log lines (its `log` calls and its stdout/stderr
    /// lines that went to the host's log), over every instance.
    pub fn recent_log(&self) -> Arc<crate::recent::Recent<GuestLogLine>> {
        self.log_budget.recent()
    }

    /// Log lines the pipe wrote past its rate ([`LOG_LINES_PER_SECOND`],
    /// [`LOG_BYTES_PER_SECOND`]) and that were dropped, over every instance.
    pub fn log_lines_dropped(&self) -> u64 {
        self.log_budget.dropped()
    }

    /// The largest linear memory the current instance has grown to.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().limiter.peak_bytes
    }

    /// The instance's view of state (its pending writes).
    pub fn state_mut(&mut self) -> &mut PipeState {
        self.store.data_mut().state_mut()
    }
}
