//! Signal triggers: what releases a signal window's buffer from outside the
//! stream (a library call, or a Unix signal to the process).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Shared between a window and whoever may trigger or observe it.
#[derive(Debug, Default)]
pub(crate) struct WindowShared {
    pub(crate) notify: Arc<Notify>,
    pub(crate) triggers: AtomicU64,
    pub(crate) late_dropped: AtomicU64,
    pub(crate) late_dead_lettered: AtomicU64,
    pub(crate) trigger_skipped: AtomicU64,
}

/// A handle on a window of a running pipeline: trigger a signal window,
/// read the window's counters.
#[derive(Debug, Clone)]
pub struct WindowHandle {
    pub(crate) shared: Arc<WindowShared>,
}

impl WindowHandle {
    /// Releases a signal window's buffers (every key) as soon as the window
    /// next runs. Has no effect on other kinds of window.
    pub fn trigger(&self) {
        self.shared.triggers.fetch_add(1, Ordering::SeqCst);
        self.shared.notify.notify_one();
    }

    /// Late events dropped so far (late policy `drop`).
    pub fn late_dropped(&self) -> u64 {
        self.shared.late_dropped.load(Ordering::SeqCst)
    }

    /// Trigger calls that failed and were taken as `continue` so far
    /// (`trigger.on_error: skip`).
    pub fn trigger_skipped(&self) -> u64 {
        self.shared.trigger_skipped.load(Ordering::SeqCst)
    }

    /// Late events sent to the dead-letter sink so far (late policy `dead_letter`).
    pub fn late_dead_lettered(&self) -> u64 {
        self.shared.late_dead_lettered.load(Ordering::SeqCst)
    }
}

/// Triggers the window on every SIGUSR1 the process receives.
///
/// # Errors
///
/// The signal handler could not be installed.
#[cfg(unix)]
pub(crate) fn listen_for_sigusr1(handle: WindowHandle) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installing the handler here (not in the task) means that once the
    // window exists, SIGUSR1 no longer kills the process.
    let mut signals = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        while signals.recv().await.is_some() {
            handle.trigger();
        }
    });
    Ok(())
}

#[cfg(not(unix))]
pub(crate) fn listen_for_sigusr1(_handle: WindowHandle) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "Unix signals are not available on this platform",
    ))
}
