//! Newline-delimited files: one event per line.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

use super::{push_line, Sink, Source, StreamError};
use crate::checkpoint::Position;
use crate::{Batch, Event};

/// How a file source reads a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The line (without its newline) is the event's value.
    #[default]
    Lines,
    /// The line is a JSON object: `{"value": "..."}` with optional `key`
    /// (string), `timestamp` (ms since the Unix epoch) and `headers` (an
    /// object of strings).
    Json,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    value: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    timestamp: Option<u64>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

fn parse_json_line(line: &[u8]) -> Result<Event, serde_json::Error> {
    let parsed: JsonLine = serde_json::from_slice(line)?;
    Ok(Event {
        key: parsed.key.map(String::into_bytes),
        value: parsed.value.into_bytes(),
        timestamp: parsed.timestamp,
        headers: parsed.headers.into_iter().collect(),
    })
}

/// Reads a file line by line, one event per line ([`LineFormat`]). The
/// position is the byte offset after the last line handed out.
pub struct FileSource {
    path: PathBuf,
    format: LineFormat,
    reader: Option<BufReader<File>>,
    offset: u64,
    line: Vec<u8>,
}

impl FileSource {
    /// A source over the file at `path` (opened on first use).
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSource {
            path: path.as_ref().to_path_buf(),
            format: LineFormat::Lines,
            reader: None,
            offset: 0,
            line: Vec::new(),
        }
    }

    /// Reads lines in `format`.
    #[must_use]
    pub fn format(mut self, format: LineFormat) -> Self {
        self.format = format;
        self
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> StreamError {
        StreamError::Io {
            stream: self.describe(),
            action,
            source,
        }
    }

    async fn open(&mut self) -> Result<(), StreamError> {
        if self.reader.is_some() {
            return Ok(());
        }
        let mut file = File::open(&self.path)
            .await
            .map_err(|e| self.io("open", e))?;
        if self.offset > 0 {
            let len = file.metadata().await.map_err(|e| self.io("stat", e))?.len();
            if self.offset > len {
                return Err(StreamError::Seek {
                    stream: self.describe(),
                    position: Position::Offset(self.offset),
                    reason: format!("the file has only {len} bytes"),
                });
            }
            file.seek(std::io::SeekFrom::Start(self.offset))
                .await
                .map_err(|e| self.io("seek", e))?;
        }
        self.reader = Some(BufReader::with_capacity(256 * 1024, file));
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file source `{}`", self.path.display())
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.offset = match position {
            Position::Start => 0,
            Position::Offset(offset) => *offset,
        };
        self.reader = None;
        // Open now, so that a bad position is reported at start.
        self.open().await
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        self.open().await?;
        let stream = self.describe();
        let format = self.format;
        let FileSource {
            reader: Some(reader),
            line,
            offset,
            ..
        } = self
        else {
            return Ok(None);
        };
        let mut events = Vec::with_capacity(max.clamp(1, 4096));
        while events.len() < max.max(1) {
            line.clear();
            let read = reader
                .read_until(b'\n', line)
                .await
                .map_err(|source| StreamError::Io {
                    stream: stream.clone(),
                    action: "read",
                    source,
                })?;
            if read == 0 {
                break;
            }
            let line_start = *offset;
            *offset += read as u64;
            let mut value = line.as_slice();
            if let Some(rest) = value.strip_suffix(b"\n") {
                value = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            match format {
                LineFormat::Lines => events.push(Event::new(value.to_vec())),
                LineFormat::Json if value.iter().all(u8::is_ascii_whitespace) => {}
                LineFormat::Json => match parse_json_line(value) {
                    Ok(event) => events.push(event),
                    Err(error) => {
                        // Keep the position at the bad line: a restart fails on it again.
                        *offset = line_start;
                        return Err(StreamError::Parse {
                            stream: stream.clone(),
                            offset: line_start,
                            message: error.to_string(),
                        });
                    }
                },
            }
        }
        if events.is_empty() {
            return Ok(None);
        }
        Ok(Some((events, Position::Offset(*offset))))
    }
}

/// Appends each event's value and a newline to a file; `flush` syncs it to disk.
///
/// Its position is the file's length after the last flush. Under
/// exactly-once a restart truncates the file to the length stored in the
/// checkpoint it resumes, so the output holds every result exactly once.
pub struct FileSink {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    buffer: Vec<u8>,
    /// The file's length including everything written, once opened.
    length: Option<u64>,
}

impl FileSink {
    /// A sink appending to the file at `path` (created on first write).
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSink {
            path: path.as_ref().to_path_buf(),
            writer: None,
            buffer: Vec::new(),
            length: None,
        }
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> StreamError {
        StreamError::Io {
            stream: self.describe(),
            action,
            source,
        }
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file sink `{}`", self.path.display())
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        if self.writer.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| self.io("open", e))?;
            let length = file.metadata().await.map_err(|e| self.io("stat", e))?.len();
            self.length = Some(length);
            self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
        }
        self.buffer.clear();
        for event in &batch.events {
            push_line(&mut self.buffer, event);
        }
        if let Some(writer) = self.writer.as_mut() {
            if let Err(e) = writer.write_all(&self.buffer).await {
                return Err(self.io("write", e));
            }
            self.length = self.length.map(|l| l + self.buffer.len() as u64);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StreamError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        let flushed = writer.flush().await;
        let synced = match flushed {
            Ok(()) => writer.get_ref().sync_data().await,
            Err(e) => Err(e),
        };
        synced.map_err(|e| self.io("flush", e))
    }

    async fn position(&mut self) -> Result<Option<u64>, StreamError> {
        if let Some(length) = self.length {
            return Ok(Some(length));
        }
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(0)),
            Err(e) => Err(self.io("stat", e)),
        }
    }

    async fn recover(&mut self, position: Option<u64>) -> Result<(), StreamError> {
        let Some(committed) = position else {
            return Ok(());
        };
        let file = match OpenOptions::new().write(true).open(&self.path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && committed == 0 => return Ok(()),
            Err(e) => return Err(self.io("open for recovery", e)),
        };
        let length = file.metadata().await.map_err(|e| self.io("stat", e))?.len();
        if length < committed {
            return Err(StreamError::Seek {
                stream: self.describe(),
                position: Position::Offset(committed),
                reason: format!(
                    "the file has only {length} bytes, less than the checkpoint committed"
                ),
            });
        }
        if length > committed {
            tracing::info!(sink = %self.describe(), committed, dropped = length - committed,
                "dropping output written after the last checkpoint");
            file.set_len(committed)
                .await
                .map_err(|e| self.io("truncate", e))?;
            file.sync_all().await.map_err(|e| self.io("sync", e))?;
        }
        Ok(())
    }
}
