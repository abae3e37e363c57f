//! The printer: each event's value on its own line of standard output.

pub(super) mod config;

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;

use super::{push_formatted, LineFormat, Sink, StreamError};
use crate::Batch;

/// Prints each event's value on a line of standard output.
///
/// Output written before a crash is not taken back, so after a restart the
/// events since the last checkpoint are printed again (at-least-once).
#[derive(Default)]
pub struct StdoutSink {
    format: LineFormat,
    buffer: Vec<u8>,
}

impl StdoutSink {
    /// A printer.
    pub fn new() -> Self {
        StdoutSink::default()
    }

    /// Prints lines in `format`: each value (the default), or each event
    /// as a JSON line.
    #[must_use]
    pub fn format(mut self, format: LineFormat) -> Self {
        self.format = format;
        self
    }

    /// Puts the lines of `batch` in the buffer.
    fn encode(&mut self, batch: &Batch) {
        self.buffer.clear();
        for event in &batch.events {
            push_formatted(&mut self.buffer, event, self.format);
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "stdout sink".to_owned()
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        self.encode(&batch);
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

    fn keep_headers(&mut self) {
        self.format = LineFormat::Json;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    #[test]
    fn dead_letters_print_as_json_lines() {
        let batch = Batch::new(vec![Event {
            headers: vec![("why".into(), "because".into())],
            ..Event::new("v")
        }]);
        let mut sink = StdoutSink::new();
        sink.encode(&batch);
        assert_eq!(sink.buffer, b"v\n");
        sink.keep_headers();
        sink.encode(&batch);
        assert_eq!(
            sink.buffer,
            b"{\"value\":\"v\",\"headers\":{\"why\":\"because\"}}\n"
        );
    }
}
