//! The dead-letter sink: where a pipeline sends events it cannot deliver in
//! order (late events of a window, and later the events a pipe failed on),
//! each with headers saying why, where and when.
//!
//! A sink that writes values as lines (file, stdout) writes dead letters as
//! JSON lines (`{"value": …, "key": …, "timestamp": …, "headers": {…}}`,
//! [`crate::streams::Sink::keep_headers`]), which a file source with
//! `"format": "json"` reads back.
//!
//! Dead letters travel on their own channel to their own sink task. Before
//! a checkpoint commits, the main sink asks the dead-letter task to flush;
//! the channel is FIFO, so every dead letter sent before the barrier is
//! durable when the checkpoint is.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::streams::{Sink, StreamError};
use crate::{Batch, Event};

/// Header naming why an event was dead-lettered.
pub const REASON_HEADER: &str = "plumber-dead-letter-reason";
/// Header naming the step that dead-lettered it.
pub const STEP_HEADER: &str = "plumber-dead-letter-step";
/// Header with the time it was dead-lettered, ms since the Unix epoch.
pub const TIME_HEADER: &str = "plumber-dead-letter-time-ms";
/// Header with the error a pipe failed with.
pub const ERROR_HEADER: &str = "plumber-dead-letter-error";

enum Message {
    Letter(Event),
    Flush(oneshot::Sender<Result<(), StreamError>>),
}

/// A sender of dead letters; cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    sender: mpsc::Sender<Message>,
}

/// The dead-letter sink task stopped (its own error is reported by the pipeline).
#[derive(Debug, thiserror::Error)]
#[error("the dead-letter sink has stopped")]
pub struct DeadLetterClosed;

impl DeadLetters {
    /// Sends `event` with headers for `reason`, `step` and the time `now_ms`.
    ///
    /// # Errors
    ///
    /// The dead-letter task has stopped.
    pub async fn send(
        &self,
        mut event: Event,
        step: &str,
        reason: &str,
        now_ms: u64,
    ) -> Result<(), DeadLetterClosed> {
        event
            .headers
            .push((REASON_HEADER.to_owned(), reason.to_owned()));
        event
            .headers
            .push((STEP_HEADER.to_owned(), step.to_owned()));
        event
            .headers
            .push((TIME_HEADER.to_owned(), now_ms.to_string()));
        self.sender
            .send(Message::Letter(event))
            .await
            .map_err(|_| DeadLetterClosed)
    }

    /// Sends `event`, which pipe `step` failed on, with the `reason`
    /// ("error", "trap", "limit:time", ...) and the error's text.
    ///
    /// # Errors
    ///
    /// The dead-letter task has stopped.
    pub async fn send_failed(
        &self,
        mut event: Event,
        step: &str,
        reason: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<(), DeadLetterClosed> {
        event
            .headers
            .push((ERROR_HEADER.to_owned(), error.to_owned()));
        self.send(event, step, reason, now_ms).await
    }

    /// Waits until every dead letter sent so far is written and flushed.
    ///
    /// # Errors
    ///
    /// The sink failed to write or flush, or the task has stopped.
    pub async fn flush(&self) -> Result<Result<(), StreamError>, DeadLetterClosed> {
        let (reply, replied) = oneshot::channel();
        self.sender
            .send(Message::Flush(reply))
            .await
            .map_err(|_| DeadLetterClosed)?;
        replied.await.map_err(|_| DeadLetterClosed)
    }
}

/// Starts the task that owns the dead-letter sink. It ends when every
/// [`DeadLetters`] is dropped, returning how many letters it wrote.
pub(crate) fn spawn(
    mut sink: Box<dyn Sink>,
) -> (DeadLetters, JoinHandle<Result<u64, StreamError>>) {
    // A dead letter is worth its headers (why, where, when): a sink that
    // writes only values writes JSON lines instead.
    sink.keep_headers();
    let (sender, mut receiver) = mpsc::channel::<Message>(64);
    let task = tokio::spawn(async move {
        let mut written = 0u64;
        while let Some(message) = receiver.recv().await {
            match message {
                Message::Letter(event) => {
                    let mut events = vec![event];
                    // Write what is already waiting in the same batch.
                    let mut flush = None;
                    while let Ok(next) = receiver.try_recv() {
                        match next {
                            Message::Letter(event) => events.push(event),
                            Message::Flush(reply) => {
                                flush = Some(reply);
                                break;
                            }
                        }
                    }
                    written += events.len() as u64;
                    sink.write(Batch::new(events)).await?;
                    if let Some(reply) = flush {
                        let _ = reply.send(sink.flush().await);
                    }
                }
                Message::Flush(reply) => {
                    let _ = reply.send(sink.flush().await);
                }
            }
        }
        sink.flush().await?;
        Ok(written)
    });
    (DeadLetters { sender }, task)
}
