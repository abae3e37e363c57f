//! Controls a running pipeline from elsewhere.

use std::sync::Arc;

use tokio::sync::{watch, Notify};

use super::status::{LiveStatus, Phase};
use crate::swap::{ModuleInfo, ModuleSource, SwapError, Swapped};

/// Controls a running pipeline from elsewhere: a clean stop, a checkpoint
/// on demand, a module swap, and its live status.
#[derive(Clone)]
pub struct PipelineHandle {
    shutdown: Arc<watch::Sender<bool>>,
    checkpoint: Arc<Notify>,
    committed: watch::Receiver<u64>,
    status: Arc<LiveStatus>,
}

/// Why a handle call failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The pipeline has no WASM pipe of that name.
    #[error("the pipeline has no WASM pipe `{0}`")]
    UnknownPipe(String),
    /// The pipeline is not running.
    #[error("the pipeline is not running")]
    NotRunning,
    /// The swap was refused or could not happen.
    #[error(transparent)]
    Swap(#[from] SwapError),
}

impl PipelineHandle {
    /// A handle on the pipeline these channels and this status belong to.
    pub(super) fn new(
        shutdown: Arc<watch::Sender<bool>>,
        checkpoint: Arc<Notify>,
        committed: watch::Receiver<u64>,
        status: Arc<LiveStatus>,
    ) -> Self {
        PipelineHandle {
            shutdown,
            checkpoint,
            committed,
            status,
        }
    }

    /// Requests a clean stop: a final checkpoint, then `run` returns.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Requests a checkpoint after the batch in flight.
    pub fn checkpoint(&self) {
        self.checkpoint.notify_one();
    }

    /// Requests a checkpoint and waits until one is committed; returns its epoch.
    ///
    /// # Errors
    ///
    /// The pipeline stopped first.
    pub async fn checkpoint_now(&self) -> Result<u64, HandleError> {
        let mut committed = self.committed.clone();
        committed.borrow_and_update();
        self.checkpoint();
        committed
            .changed()
            .await
            .map_err(|_| HandleError::NotRunning)?;
        let epoch = *committed.borrow();
        Ok(epoch)
    }

    /// Replaces the module of WASM pipe `pipe`: the new module is checked
    /// off the hot path, then switched in at the next checkpoint barrier
    /// (requested here). Returns once it runs.
    ///
    /// # Errors
    ///
    /// No such pipe, the pipeline is not running, or the module was refused
    /// (the old one keeps running).
    pub async fn swap_module(
        &self,
        pipe: &str,
        source: ModuleSource,
    ) -> Result<Swapped, HandleError> {
        let slot = self
            .status
            .pipes()
            .into_iter()
            .find(|slot| slot.pipe() == pipe)
            .ok_or_else(|| match self.status.phase() {
                Phase::Running => HandleError::UnknownPipe(pipe.to_owned()),
                _ => HandleError::NotRunning,
            })?;
        let answer = slot.prepare(source).await?;
        self.checkpoint();
        match answer.await {
            Ok(result) => Ok(result?),
            Err(_) => Err(SwapError::Stopped {
                pipe: pipe.to_owned(),
            }
            .into()),
        }
    }

    /// The module each WASM pipe runs now.
    pub fn modules(&self) -> Vec<(String, ModuleInfo)> {
        self.status
            .pipes()
            .iter()
            .map(|slot| (slot.pipe().to_owned(), slot.current()))
            .collect()
    }

    /// The live status.
    pub fn status(&self) -> &Arc<LiveStatus> {
        &self.status
    }

    /// Requests a checkpoint whenever the process receives SIGUSR2.
    ///
    /// # Errors
    ///
    /// The signal handler cannot be installed (or this is not Unix).
    pub fn checkpoint_on_sigusr2(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut signals = signal(SignalKind::user_defined2())?;
            let handle = self.clone();
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::info!("SIGUSR2: checkpoint requested");
                    handle.checkpoint();
                }
            });
            Ok(())
        }
        #[cfg(not(unix))]
        {
            Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "Unix signals are not available on this platform",
            ))
        }
    }
}
