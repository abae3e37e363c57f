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
/// [`DeadLetters`] is dropped, returning how many letters it wrote. What
/// it writes is also kept, shortened, in `recent`.
pub(crate) fn spawn(
    mut sink: Box<dyn Sink>,
    recent: Arc<Recent<DeadLetterEntry>>,
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
                    let now = unix_ms();
                    // Only the last few are kept: skip the rest of a big batch.
                    let skip = events.len().saturating_sub(recent.capacity());
                    recent.extend(
                        events
                            .iter()
                            .skip(skip)
                            .map(|event| DeadLetterEntry::of(event, now)),
                    );
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

#[cfg(test)]
mod tests {
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
        letters.flush().await.unwrap().unwrap();

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
