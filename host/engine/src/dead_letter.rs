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
//! a checkpoint commits, the sink asks the dead-letter task to flush; the
//! channel is FIFO, so every dead letter sent before the barrier is durable
//! when the checkpoint is.
//!
//! Under exactly-once the checkpoint also records the dead-letter sink's
//! position, and a restart takes back what was written after it (as for the
//! main sink), since the replayed events are dead-lettered again. For that
//! position to be exact, a letter sent by a step that had already passed the
//! barrier (an event of the next epoch) must not be written before the
//! flush: each letter carries the epoch of the last barrier its stage
//! passed ([`in_stage`], [`passed_barrier`]), and the task holds back the
//! letters of later epochs until the flush of theirs.

use std::cell::Cell;
use std::future::Future;

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
    /// A letter, with the epoch of the last barrier its stage had passed.
    Letter(Event, u64),
    /// Write the letters of checkpoints up to `epoch`, flush, and answer
    /// with the sink's position.
    Flush {
        epoch: u64,
        reply: oneshot::Sender<Result<Option<u64>, StreamError>>,
    },
}

tokio::task_local! {
    /// The epoch of the last barrier the stage running in this task passed
    /// (0 before its first).
    static PASSED_EPOCH: Cell<u64>;
}

/// Runs a stage's loop with its barrier epoch tracked for its dead letters.
pub(crate) async fn in_stage<F: Future>(stage: F) -> F::Output {
    PASSED_EPOCH.scope(Cell::new(0), stage).await
}

/// Notes that the stage running in this task passed the barrier of
/// `epoch`: its dead letters from now on belong to the next checkpoint.
pub(crate) fn passed_barrier(epoch: u64) {
    let _ = PASSED_EPOCH.try_with(|passed| passed.set(epoch));
}

/// A letter sent outside a stage (a test, a task of its own) counts as sent
/// before any barrier: it is written at once, as before epochs were tracked.
fn passed_epoch() -> u64 {
    PASSED_EPOCH.try_with(Cell::get).unwrap_or(0)
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
            .send(Message::Letter(event, passed_epoch()))
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

    /// Writes and flushes every dead letter of the checkpoints up to the one
    /// closing `epoch` (every letter sent before the barrier of `epoch`
    /// passed its stage), and returns the sink's position after them.
    ///
    /// # Errors
    ///
    /// The sink failed to write or flush, or the task has stopped.
    pub async fn flush(
        &self,
        epoch: u64,
    ) -> Result<Result<Option<u64>, StreamError>, DeadLetterClosed> {
        let (reply, replied) = oneshot::channel();
        self.sender
            .send(Message::Flush { epoch, reply })
            .await
            .map_err(|_| DeadLetterClosed)?;
        replied.await.map_err(|_| DeadLetterClosed)
    }
}

/// The receiving end of the dead letters, before its sink task starts.
pub(crate) struct DeadLetterInbox(mpsc::Receiver<Message>);

/// A channel for dead letters: steps can be given its sender before the
/// sink is brought back to the last checkpoint and its task started
/// ([`start`]).
pub(crate) fn channel() -> (DeadLetters, DeadLetterInbox) {
    let (sender, receiver) = mpsc::channel::<Message>(64);
    (DeadLetters { sender }, DeadLetterInbox(receiver))
}

/// Starts the task that owns the dead-letter sink. It ends when every
/// [`DeadLetters`] is dropped, returning how many letters it wrote.
pub(crate) fn start(
    inbox: DeadLetterInbox,
    mut sink: Box<dyn Sink>,
) -> JoinHandle<Result<u64, StreamError>> {
    // A dead letter is worth its headers (why, where, when): a sink that
    // writes only values writes JSON lines instead.
    sink.keep_headers();
    let mut receiver = inbox.0;
    tokio::spawn(async move {
        let mut written = 0u64;
        // The highest epoch flushed: a letter whose stage had passed no
        // later barrier belongs to the next flush, and is written at once.
        let mut flushed_epoch = 0u64;
        // Letters of later checkpoints, in arrival order.
        let mut held: Vec<(u64, Event)> = Vec::new();
        while let Some(message) = receiver.recv().await {
            let mut events = Vec::new();
            let mut flush = None;
            let mut next = Some(message);
            // Take what is already waiting into the same write, up to a flush.
            while let Some(message) = next.take() {
                match message {
                    Message::Letter(event, passed) if passed <= flushed_epoch => {
                        events.push(event);
                    }
                    Message::Letter(event, passed) => held.push((passed, event)),
                    Message::Flush { epoch, reply } => {
                        flush = Some((epoch, reply));
                        break;
                    }
                }
                next = receiver.try_recv().ok();
            }
            if let Some((epoch, _)) = &flush {
                let epoch = *epoch;
                flushed_epoch = flushed_epoch.max(epoch);
                let (due, later): (Vec<_>, Vec<_>) =
                    held.drain(..).partition(|(passed, _)| *passed < epoch);
                held = later;
                events.extend(due.into_iter().map(|(_, event)| event));
            }
            if !events.is_empty() {
                written += events.len() as u64;
                sink.write(Batch::new(events)).await?;
            }
            if let Some((_, reply)) = flush {
                let flushed = match sink.flush().await {
                    Ok(()) => sink.position().await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(flushed);
            }
        }
        // The end of the input: every letter held is due.
        if !held.is_empty() {
            written += held.len() as u64;
            sink.write(Batch::new(held.into_iter().map(|(_, e)| e).collect()))
                .await?;
        }
        sink.flush().await?;
        Ok(written)
    })
}

/// Starts the dead-letter sink's task at once (tests, and sinks with
/// nothing to bring back).
#[cfg(test)]
pub(crate) fn spawn(sink: Box<dyn Sink>) -> (DeadLetters, JoinHandle<Result<u64, StreamError>>) {
    let (letters, inbox) = channel();
    (letters, start(inbox, sink))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::FileSink;

    fn letter(value: &str) -> Event {
        Event::new(value.as_bytes().to_vec())
    }

    fn values(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                json["value"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    /// A stage that passed the barrier of epoch 5 dead-letters an event of
    /// epoch 6 before the sink's flush of epoch 5: the flush leaves it out
    /// (its position is exact), the flush of epoch 6 writes it.
    #[tokio::test]
    async fn a_letter_sent_after_its_stage_passed_the_barrier_waits_for_the_next_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dead.jsonl");
        let (letters, task) = spawn(Box::new(FileSink::new(&path)));
        let stage = letters.clone();
        in_stage(async move {
            stage.send(letter("before"), "s", "error", 1).await.unwrap();
            passed_barrier(5);
            stage.send(letter("after"), "s", "error", 1).await.unwrap();
        })
        .await;
        let at_5 = letters.flush(5).await.unwrap().unwrap();
        assert_eq!(values(&path), ["before"]);
        assert_eq!(at_5, Some(std::fs::metadata(&path).unwrap().len()));
        let at_6 = letters.flush(6).await.unwrap().unwrap();
        assert_eq!(values(&path), ["before", "after"]);
        assert!(at_6 > at_5);
        // Sent outside any stage (or after the last flush's epoch): written
        // at once, and everything held is written at the end.
        in_stage(async {
            passed_barrier(9);
            letters.send(letter("held"), "s", "error", 1).await.unwrap();
        })
        .await;
        letters.send(letter("free"), "s", "error", 1).await.unwrap();
        drop(letters);
        assert_eq!(task.await.unwrap().unwrap(), 4);
        assert_eq!(values(&path), ["before", "after", "free", "held"]);
    }
}
