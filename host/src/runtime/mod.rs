//! The WebAssembly runtime: one [`Runtime`] per process holds the wasmtime
//! engine, the linker with the host side of our WIT, and the on-disk cache
//! of compiled components.
//!
//! Loading a pipe ([`Runtime::load`]) reads the `.wasm`, takes its compiled
//! form from the cache (compiling and storing it on a miss), checks its
//! imports against what the pipe is granted, and prepares an `InstancePre`
//! that every instance of the pipe reuses.

pub mod bindings;
mod cache;
mod host;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi::{ResourceTable, WasiCtxBuilder};

use crate::state::{Namespace, PipeState, SharedState, WriteMode};
pub use cache::ComponentCache;
pub use host::HostCtx;

/// Why a component could not be loaded or started.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The `.wasm` file could not be read.
    #[error("cannot read WebAssembly file `{path}`: {source}")]
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
    #[error("cannot compile component `{path}`: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component imports something the pipe was not granted.
    #[error(
        "component `{path}` imports `{import}`, which this pipe is not granted \
         (granted: plumber:pipe/*, wasi:io/*, wasi:cli stdio/environment/exit/terminal{extra}); \
         remove the import from the guest or grant it in the pipe's config"
    )]
    ImportNotGranted {
        /// The file.
        path: PathBuf,
        /// The offending import, as the component names it.
        import: String,
        /// The optional grants in force, for the message.
        extra: String,
    },
    /// The component does not export what the `plumber:pipe` world needs.
    #[error("component `{path}` does not implement the plumber:pipe world: {message}")]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// Instantiating the component failed.
    #[error("cannot instantiate pipe `{pipe}`: {message}")]
    Instantiate {
        /// The pipe's name.
        pipe: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The guest's `init` refused its config or trapped.
    #[error("pipe `{pipe}` failed in init: {message}")]
    Init {
        /// The pipe's name.
        pipe: String,
        /// The guest's error or the trap.
        message: String,
    },
    /// The compile cache could not be used.
    #[error("component cache `{path}`: {source}")]
    Cache {
        /// The cache directory or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The engine could not be set up.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// Optional WASI capabilities a pipe may be granted in its config.
/// Nothing else (filesystem, sockets, HTTP) is ever linked for a guest.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// `wasi:clocks/*`: wall and monotonic clocks.
    Clocks,
    /// `wasi:random/*`: random bytes (e.g. for `HashMap`'s seed).
    Random,
}

impl Grant {
    fn allows(self, interface: &str) -> bool {
        match self {
            Grant::Clocks => interface.starts_with("wasi:clocks/"),
            Grant::Random => interface.starts_with("wasi:random/"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Grant::Clocks => "wasi:clocks",
            Grant::Random => "wasi:random",
        }
    }
}

/// Imports every pipe may have: our own interfaces, and the WASI plumbing
/// that a Rust `std` guest imports even when it never uses it. The guest's
/// environment is empty, stdin is empty and stdout/stderr are discarded, so
/// none of these gives access to anything of the host's.
fn always_granted(interface: &str) -> bool {
    const CLI: &[&str] = &[
        "environment",
        "exit",
        "stdin",
        "stdout",
        "stderr",
        "terminal-input",
        "terminal-output",
        "terminal-stdin",
        "terminal-stdout",
        "terminal-stderr",
    ];
    if interface.starts_with("plumber:pipe/") || interface.starts_with("wasi:io/") {
        return true;
    }
    interface
        .strip_prefix("wasi:cli/")
        .map(|rest| rest.split('@').next().unwrap_or(rest))
        .is_some_and(|name| CLI.contains(&name))
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
}

impl Runtime {
    /// A runtime that caches compiled components in `cache_dir`
    /// (`None`: compile on every load).
    ///
    /// # Errors
    ///
    /// The engine or linker could not be set up.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Self, LoadError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::<HostCtx>::new(&engine);
        bindings::StatefulPipe::add_to_linker::<HostCtx, HasSelf<HostCtx>>(&mut linker, |ctx| ctx)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| LoadError::Engine(format!("{e:#}")))?;
        let cache = cache_dir.map(|dir| ComponentCache::new(dir, &engine));
        Ok(Runtime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
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

    /// Loads the component at `path` for a pipe with these grants.
    ///
    /// # Errors
    ///
    /// The file is missing or not a component, it imports something not
    /// granted, or it does not export `init` and `process`.
    pub fn load(&self, path: &Path, grants: &[Grant]) -> Result<PipeComponent, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.load_bytes(path, &bytes, grants)
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
        grants: &[Grant],
    ) -> Result<PipeComponent, LoadError> {
        check_is_component(path, bytes)?;
        let engine = &self.inner.engine;
        let component = match &self.inner.cache {
            Some(cache) => cache.get_or_compile(engine, path, bytes)?,
            None => Component::new(engine, bytes).map_err(|e| LoadError::Compile {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?,
        };
        let grants: BTreeSet<Grant> = grants.iter().copied().collect();
        for (import, _) in component.component_type().imports(engine) {
            if !always_granted(import) && !grants.iter().any(|g| g.allows(import)) {
                let extra: String = grants.iter().map(|g| format!(", {}/*", g.name())).collect();
                return Err(LoadError::ImportNotGranted {
                    path: path.to_path_buf(),
                    import: import.to_owned(),
                    extra,
                });
            }
        }
        let instance_pre =
            self.inner
                .linker
                .instantiate_pre(&component)
                .map_err(|e| LoadError::WrongWorld {
                    path: path.to_path_buf(),
                    message: format!("{e:#}"),
                })?;
        let pre =
            bindings::StatefulPipePre::new(instance_pre).map_err(|e| LoadError::WrongWorld {
                path: path.to_path_buf(),
                message: format!("{e:#}"),
            })?;
        Ok(PipeComponent {
            path: path.to_path_buf(),
            pre,
        })
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PLUMBER_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("plumber"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache").join("plumber"))
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
    pre: bindings::StatefulPipePre<HostCtx>,
}

impl PipeComponent {
    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates an instance for pipe `name` with its state view, and calls
    /// the guest's `init` with `config_json`.
    ///
    /// # Errors
    ///
    /// Instantiation failed, or `init` returned an error or trapped.
    pub async fn instantiate(
        &self,
        runtime: &Runtime,
        name: &str,
        state: SharedState,
        namespace: Namespace,
        mode: WriteMode,
        config_json: &str,
    ) -> Result<PipeInstance, LoadError> {
        // Environment, args, preopens: none. Stdio: empty stdin, discarded
        // output. Clocks and random exist in every context; only a grant lets
        // a component import them (checked in `load_bytes`).
        let wasi = WasiCtxBuilder::new().build();
        let ctx = HostCtx::new(
            name,
            PipeState::new(state, namespace, mode),
            wasi,
            ResourceTable::new(),
        );
        let mut store = Store::new(runtime.engine(), ctx);
        let bindings =
            self.pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| LoadError::Instantiate {
                    pipe: name.to_owned(),
                    message: format!("{e:#}"),
                })?;
        let init = bindings.call_init(&mut store, config_json).await;
        match init {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                return Err(LoadError::Init {
                    pipe: name.to_owned(),
                    message: error.message,
                })
            }
            Err(trap) => {
                return Err(LoadError::Init {
                    pipe: name.to_owned(),
                    message: format!("trapped: {trap:#}"),
                })
            }
        }
        // Writes made in init belong to the first epoch like any other.
        Ok(PipeInstance { store, bindings })
    }
}

/// A live instance of a pipe: its store and its exports.
pub struct PipeInstance {
    store: Store<HostCtx>,
    bindings: bindings::StatefulPipe,
}

/// How a call into a pipe failed.
#[derive(Debug)]
pub enum CallError {
    /// The guest returned its own error.
    Guest(crate::PipeError),
    /// The guest trapped (panic, out-of-bounds, unreachable, ...); the
    /// instance cannot be used again.
    Trap(String),
}

impl PipeInstance {
    /// Calls `process` with one batch.
    ///
    /// # Errors
    ///
    /// The guest returned an error or trapped. Either way the writes of this
    /// call are discarded by the caller's policy, not here.
    pub async fn process(&mut self, batch: &crate::Batch) -> Result<Vec<crate::Event>, CallError> {
        match self.bindings.call_process(&mut self.store, batch).await {
            Ok(Ok(events)) => Ok(events),
            Ok(Err(error)) => Err(CallError::Guest(error)),
            Err(trap) => Err(CallError::Trap(format!("{trap:?}"))),
        }
    }

    /// The instance's view of state (its pending writes).
    pub fn state_mut(&mut self) -> &mut PipeState {
        self.store.data_mut().state_mut()
    }
}
