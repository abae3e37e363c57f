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

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::recent::{unix_ms, Recent};
use crate::streams::{Sink, StreamError};
use crate::{Batch, Event};

/// How many dead letters [`crate::pipeline::LiveStatus::recent_dead_letters`]
/// keeps.
pub const RECENT_DEAD_LETTERS: usize = 32;

/// How much of a dead letter's value, key or header value is kept for
/// people to look at, in bytes (the sink gets all of it).
pub const SHOWN_BYTES: usize = 256;

/// A dead letter as the admin console shows it: the start of its value
/// and key, and its headers (why, where, when).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterEntry {
    /// When it was written to the dead-letter sink, ms since the Unix
    /// epoch.
    pub at_ms: u64,
    /// The key's first [`SHOWN_BYTES`] bytes, as text (invalid UTF-8
    /// replaced).
    pub key: Option<String>,
    /// The value's first [`SHOWN_BYTES`] bytes, as text.
    pub value: String,
    /// How long the value was, in bytes.
    pub value_bytes: usize,
    /// Its headers, each value cut to [`SHOWN_BYTES`] bytes.
    pub headers: Vec<(String, String)>,
}

/// The start of `bytes` as text: at most [`SHOWN_BYTES`] bytes, invalid
/// UTF-8 replaced.
fn shown(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(SHOWN_BYTES)];
    let mut text = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > SHOWN_BYTES {
        text.push('…');
    }
    text
}

impl DeadLetterEntry {
    /// What is shown of `event`, written at `at_ms`.
    #[must_use]
    pub fn of(event: &Event, at_ms: u64) -> DeadLetterEntry {
        DeadLetterEntry {
            at_ms,
            key: event.key.as_deref().map(shown),
            value: shown(&event.value),
            value_bytes: event.value.len(),
            headers: event
                .headers
                .iter()
                .map(|(name, value)| (name.clone(), shown(value.as_bytes())))
                .collect(),
        }
    }
}

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
/// [`DeadLetters`] is dropped, returning how many letters it wrote. What
/// it writes is also kept, shortened, in `recent`.
pub(crate) fn start(
    inbox: DeadLetterInbox,
    mut sink: Box<dyn Sink>,
    recent: Arc<Recent<DeadLetterEntry>>,
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
                remember(&recent, &events);
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
            let events: Vec<Event> = held.into_iter().map(|(_, e)| e).collect();
            remember(&recent, &events);
            sink.write(Batch::new(events)).await?;
        }
        sink.flush().await?;
        Ok(written)
    })
}

/// Keeps the last of `events` (only as many as `recent` holds: the rest
/// of a big batch is skipped) for the console.
fn remember(recent: &Recent<DeadLetterEntry>, events: &[Event]) {
    let now = unix_ms();
    let skip = events.len().saturating_sub(recent.capacity());
    recent.extend(
        events
            .iter()
            .skip(skip)
            .map(|event| DeadLetterEntry::of(event, now)),
    );
}

/// Starts the dead-letter sink's task at once (tests, and sinks with
/// nothing to bring back).
#[cfg(test)]
pub(crate) fn spawn(
    sink: Box<dyn Sink>,
    recent: Arc<Recent<DeadLetterEntry>>,
) -> (DeadLetters, JoinHandle<Result<u64, StreamError>>) {
    let (letters, inbox) = channel();
    (letters, start(inbox, sink, recent))
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
        let recent = Arc::new(Recent::new(8));
        let (letters, task) = spawn(Box::new(FileSink::new(&path)), recent);
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

#[cfg(test)]
mod recent_tests {
    use super::*;
    use crate::streams::channel_sink;

    fn event(key: Option<&[u8]>, value: &[u8]) -> Event {
        Event {
            key: key.map(<[u8]>::to_vec),
            value: value.to_vec(),
            timestamp: None,
            headers: vec![("origin".to_owned(), "test".to_owned())],
        }
    }

    /// What the sink writes is also kept, shortened, with the headers that
    /// say why, where and when; only the last few.
    #[tokio::test]
    async fn written_letters_are_kept_shortened_with_their_headers() {
        let (sink, mut written) = channel_sink(64);
        let recent = Arc::new(Recent::new(3));
        let (letters, task) = spawn(Box::new(sink), recent.clone());
        let long = vec![b'x'; SHOWN_BYTES + 10];
        letters
            .send(event(Some(b"k1"), b"first"), "late-step", "late", 10)
            .await
            .unwrap();
        for i in 0..3u8 {
            letters
                .send_failed(event(None, &[b'0' + i]), "pipe", "trap", "boom", 20)
                .await
                .unwrap();
        }
        letters
            .send(event(Some(&[0xff, b'k']), &long), "late-step", "late", 30)
            .await
            .unwrap();
        letters.flush(1).await.unwrap().unwrap();

        let kept = recent.snapshot();
        let values: Vec<&str> = kept.iter().map(|entry| entry.value.as_str()).collect();
        let long_shown = format!("{}…", "x".repeat(SHOWN_BYTES));
        assert_eq!(values, ["1", "2", long_shown.as_str()]);
        assert_eq!(kept[2].value_bytes, SHOWN_BYTES + 10);
        assert_eq!(kept[2].key.as_deref(), Some("\u{fffd}k"));
        assert_eq!(kept[0].key, None);
        let header = |entry: &DeadLetterEntry, name: &str| {
            entry
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header(&kept[0], "origin").as_deref(), Some("test"));
        assert_eq!(header(&kept[0], REASON_HEADER).as_deref(), Some("trap"));
        assert_eq!(header(&kept[0], STEP_HEADER).as_deref(), Some("pipe"));
        assert_eq!(header(&kept[0], ERROR_HEADER).as_deref(), Some("boom"));
        assert_eq!(header(&kept[2], TIME_HEADER).as_deref(), Some("30"));
        assert!(kept.iter().all(|entry| entry.at_ms > 0));

        // The sink got every letter whole.
        drop(letters);
        assert_eq!(task.await.unwrap().unwrap(), 5);
        let mut values = Vec::new();
        while let Ok(event) = written.try_recv() {
            values.push(event.value.len());
        }
        assert_eq!(values, [5, 1, 1, 1, SHOWN_BYTES + 10]);
    }
}
