//! The printer: each event's value on its own line of standard output.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{push_line, Sink, StreamError};
use crate::Batch;

/// Prints each event's value on a line of standard output.
///
/// Output written before a crash is not taken back, so after a restart the
/// events since the last checkpoint are printed again (at-least-once).
#[derive(Default)]
pub struct StdoutSink {
    buffer: Vec<u8>,
}

impl StdoutSink {
    /// A printer.
    pub fn new() -> Self {
        StdoutSink::default()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.buffer.clear();
        for event in &batch.events {
            push_line(&mut self.buffer, event);
        }
        let mut stdout = tokio::io::stdout();
        stdout
            .write_all(&self.buffer)
            .await
            .map_err(|source| StreamError::Io {
                stream: self.describe(),
                action: "write",
                source,
            })
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        tokio::io::stdout()
            .flush()
            .await
            .map_err(|source| StreamError::Io {
                stream: self.describe(),
                action: "flush",
                source,
            })
    }
}

/// Counts events and drops them (benchmarks, and pipelines run for their state).
#[derive(Default)]
pub struct DiscardSink {
    events: u64,
}

impl DiscardSink {
    /// A sink that keeps nothing.
    pub fn new() -> Self {
        DiscardSink::default()
    }
}

#[async_trait]
impl Sink for DiscardSink {
    fn describe(&self) -> String {
        format!("discard sink ({} events)", self.events)
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.events += batch.events.len() as u64;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
}
