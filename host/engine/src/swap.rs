//! Hot swap: replacing a running pipe's module without stopping its
//! pipeline.
//!
//! A swap is prepared off the hot path: the new module is read, compiled
//! (or taken from the cache), checked against the pipe's capabilities and
//! our world, and its `init` is run once on a scratch state view. Only then
//! is it handed to the pipe's step, which switches at the next checkpoint
//! barrier: every batch before the barrier ran on the old module, every
//! batch after it on the new one, and the pipe's state is the same
//! namespace throughout. A module that fails any check is refused and the
//! old one keeps running.
//!
//! A module that declares another state version than the one recorded
//! with the pipe's state is migrated at the barrier, before the pipe's
//! write set is taken, so the migrated state, the new version and the
//! switch land in the same checkpoint (`runtime::migrate`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use crate::recent::{unix_ms, Recent};
use crate::runtime::{InstanceSettings, Migration, PipeComponent, PipeInstance, Runtime};
use crate::state::{Namespace, PipeState, SharedState, WriteMode};
use crate::ErrorChain;

/// Where a new module comes from.
#[derive(Debug, Clone)]
pub enum ModuleSource {
    /// A `.wasm` file on the host.
    Path(PathBuf),
    /// The component's bytes (an upload).
    Bytes(Vec<u8>),
}

/// Why a swap did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// The new module failed a check; the old one keeps running.
    #[error("module refused for pipe `{pipe}`: {message}")]
    Refused {
        /// The pipe.
        pipe: String,
        /// What was wrong.
        message: String,
    },
    /// The pipeline stopped before the swap could happen.
    #[error("pipe `{pipe}` stopped before its module could be swapped")]
    Stopped {
        /// The pipe.
        pipe: String,
    },
}

/// A swap that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// The version running now.
    pub version: String,
    /// The version it replaced.
    pub previous_version: String,
    /// The state migration that ran at the switch, if one did.
    pub migration: Option<Migration>,
}

/// The module in use by a pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Where it was loaded from (`<upload>` for bytes).
    pub path: PathBuf,
    /// Its short digest.
    pub version: String,
}

/// How many swap attempts [`PipeSlot::swap_history`] keeps.
pub const SWAP_HISTORY: usize = 32;

/// One swap attempt of a pipe's module, as the admin console lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SwapEntry {
    /// When it ended (switched in or refused), milliseconds since the
    /// Unix epoch.
    pub at_ms: u64,
    /// The version running before.
    pub from: String,
    /// The new module's version; `None` if it was refused before it loaded.
    pub to: Option<String>,
    /// Why it was refused; `None` when it runs now.
    pub refused: Option<String>,
    /// The state migration that ran at the switch, as a sentence; `None`
    /// when none ran.
    pub migration: Option<String>,
}

struct PendingSwap {
    component: PipeComponent,
    reply: oneshot::Sender<Result<Swapped, SwapError>>,
}

/// The swap point of one WASM pipe, shared by its step and whoever asks for
/// swaps (the admin API, the module watcher, a library caller).
pub struct PipeSlot {
    pipe: String,
    runtime: Runtime,
    settings: Arc<InstanceSettings>,
    backend: SharedState,
    namespace: Namespace,
    current: Mutex<ModuleInfo>,
    pending: Mutex<Option<PendingSwap>>,
    history: Recent<SwapEntry>,
}

impl std::fmt::Debug for PipeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeSlot")
            .field("pipe", &self.pipe)
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl PipeSlot {
    pub(crate) fn new(instance: &PipeInstance, backend: SharedState, namespace: Namespace) -> Self {
        let component = instance.component();
        PipeSlot {
            pipe: instance.settings().pipe.to_string(),
            runtime: instance.runtime().clone(),
            settings: instance.settings().clone(),
            backend,
            namespace,
            current: Mutex::new(ModuleInfo {
                path: component.path().to_path_buf(),
                version: component.version().to_owned(),
            }),
            pending: Mutex::new(None),
            history: Recent::new(SWAP_HISTORY),
        }
    }

    /// The pipe's name.
    pub fn pipe(&self) -> &str {
        &self.pipe
    }

    /// The module in use now.
    pub fn current(&self) -> ModuleInfo {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The last [`SWAP_HISTORY`] swap attempts of this pipe (switched in or
    /// refused), oldest first.
    pub fn swap_history(&self) -> Vec<SwapEntry> {
        self.history.snapshot()
    }

    fn record_swap(&self, to: Option<String>, refused: Option<String>, from: String) {
        self.record_swap_migrated(to, refused, from, None);
    }

    fn record_swap_migrated(
        &self,
        to: Option<String>,
        refused: Option<String>,
        from: String,
        migration: Option<String>,
    ) {
        self.history.push(SwapEntry {
            at_ms: unix_ms(),
            from,
            to,
            refused,
            migration,
        });
    }

    /// Loads and checks a new module, then queues it for the next barrier;
    /// the returned receiver answers once the step has switched (or not).
    /// The caller should ask for a checkpoint so the barrier comes soon.
    ///
    /// # Errors
    ///
    /// The module cannot be read, is not a component of our world, imports
    /// what the pipe is not granted, or its `init` fails.
    pub async fn prepare(
        &self,
        source: ModuleSource,
    ) -> Result<oneshot::Receiver<Result<Swapped, SwapError>>, SwapError> {
        let prepared = self.check(source).await;
        if let Err(SwapError::Refused { message, .. }) = &prepared {
            self.record_swap(None, Some(message.clone()), self.current().version);
        }
        prepared
    }

    async fn check(
        &self,
        source: ModuleSource,
    ) -> Result<oneshot::Receiver<Result<Swapped, SwapError>>, SwapError> {
        let refused = |message: String| SwapError::Refused {
            pipe: self.pipe.clone(),
            message,
        };
        let runtime = self.runtime.clone();
        let capabilities = self.settings.capabilities.clone();
        // Compiling takes long enough to stall a tokio worker: do it aside.
        let component = tokio::task::spawn_blocking(move || match source {
            ModuleSource::Path(path) => runtime.load(&path, &capabilities),
            ModuleSource::Bytes(bytes) => {
                runtime.load_bytes(Path::new("<upload>"), &bytes, &capabilities)
            }
        })
        .await
        .map_err(|e| refused(format!("loading stopped: {e}")))?
        .map_err(|e| refused(ErrorChain(&e).to_string()))?;
        let scratch = PipeState::new(
            self.backend.clone(),
            self.namespace.clone(),
            WriteMode::Checkpointed,
        );
        PipeInstance::check_candidate(&self.runtime, &self.settings, &component, scratch)
            .await
            .map_err(|e| refused(ErrorChain(&e).to_string()))?;
        let (reply, answer) = oneshot::channel();
        let previous = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(PendingSwap { component, reply });
        if let Some(previous) = previous {
            // A newer request wins; the older one is told so.
            let _ = previous.reply.send(Err(refused(
                "replaced by a newer swap request before it took effect".to_owned(),
            )));
        }
        Ok(answer)
    }

    /// At a barrier: switches `instance` to the queued module, if any.
    pub(crate) async fn apply(&self, instance: &mut PipeInstance) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(PendingSwap { component, reply }) = pending else {
            return;
        };
        let previous_version = instance.component().version().to_owned();
        // Before the write set is taken at this barrier: a migration's
        // writes are committed with the switch.
        let result = match instance.swap_to(component.clone()).await {
            Ok(migration) => {
                let info = ModuleInfo {
                    path: component.path().to_path_buf(),
                    version: component.version().to_owned(),
                };
                tracing::info!(pipe = %self.pipe, from = %previous_version, to = %info.version,
                    module = %info.path.display(), "module swapped at a checkpoint barrier");
                *self.current.lock().unwrap_or_else(|e| e.into_inner()) = info;
                let described = migration.as_ref().map(describe_migration);
                if let Some(described) = &described {
                    tracing::info!(pipe = %self.pipe, "{described}");
                }
                self.record_swap_migrated(
                    Some(component.version().to_owned()),
                    None,
                    previous_version.clone(),
                    described,
                );
                Ok(Swapped {
                    version: component.version().to_owned(),
                    previous_version,
                    migration,
                })
            }
            Err(error) => {
                tracing::warn!(pipe = %self.pipe, error = %ErrorChain(&error), "module swap refused at the barrier; the old module keeps running");
                self.record_swap(
                    Some(component.version().to_owned()),
                    Some(ErrorChain(&error).to_string()),
                    previous_version,
                );
                Err(SwapError::Refused {
                    pipe: self.pipe.clone(),
                    message: ErrorChain(&error).to_string(),
                })
            }
        };
        let _ = reply.send(result);
    }
}

/// A migration in one sentence, for the swap history and the log.
fn describe_migration(migration: &Migration) -> String {
    format!(
        "state migrated from version `{}` to `{}`: {} keys in {} migrate calls, {} writes, {} ms",
        migration.from,
        migration.to,
        migration.keys,
        migration.calls,
        migration.writes,
        migration.took.as_millis()
    )
}

/// The file's identity for change detection: modification time and length.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches the module file of `slot` and swaps it in whenever it changes
/// (checked every `every`); `request_checkpoint` brings the barrier. A
/// module that fails its checks is logged and not tried again until the
/// file changes once more. Ends when `slot` is the last reference.
pub fn watch_module(
    slot: Arc<PipeSlot>,
    every: Duration,
    request_checkpoint: impl Fn() + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = slot.current().path;
        let mut seen = stamp(&path);
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if Arc::strong_count(&slot) == 1 {
                return;
            }
            let now = stamp(&path);
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            tracing::info!(pipe = %slot.pipe, module = %path.display(), "module file changed; loading it");
            match slot.prepare(ModuleSource::Path(path.clone())).await {
                Ok(answer) => {
                    request_checkpoint();
                    match answer.await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            tracing::warn!(error = %ErrorChain(&error), "module swap failed")
                        }
                        Err(_) => return,
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        error = %ErrorChain(&error),
                        "changed module refused; the old one keeps running"
                    )
                }
            }
        }
    })
}
