//! A pipeline's tasks end with it.
//!
//! Each stage runs as its own tokio task, and a tokio task outlives the
//! handle that spawned it. A pipeline whose run is aborted (a cluster
//! worker that lost a partition's lease aborts that partition's pipeline)
//! must not leave its reader pulling, or its sink publishing, for the
//! partition's new owner to meet: an [`OwnedTask`] aborts its task when it
//! is dropped.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task that is aborted when this is dropped; awaiting it gives
/// the task's result as a [`JoinHandle`] does.
pub(crate) struct OwnedTask<T>(JoinHandle<T>);

impl<T: Send + 'static> OwnedTask<T> {
    /// Spawns `future` on the current runtime.
    pub(crate) fn spawn(future: impl Future<Output = T> + Send + 'static) -> Self {
        OwnedTask(tokio::spawn(future))
    }
}

impl<T> From<JoinHandle<T>> for OwnedTask<T> {
    fn from(handle: JoinHandle<T>) -> Self {
        OwnedTask(handle)
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        // A finished task is not affected.
        self.0.abort();
    }
}
