//! Newline-delimited files: one event per line.

pub mod config;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

use super::{push_formatted, JsonEvent, Sink, Source, StreamError};
use crate::checkpoint::Position;
use crate::{Batch, Event};

/// How a file source reads a line, and a file or stdout sink writes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineFormat {
    /// The line (without its newline) is the event's value.
    #[default]
    Lines,
    /// The line is a JSON object: `{"value": "..."}` with optional `key`
    /// (string), `timestamp` (ms since the Unix epoch) and `headers` (an
    /// object of strings); a value or key that is not UTF-8 is
    /// `"value_hex"` / `"key_hex"` instead.
    Json,
}

fn parse_json_line(line: &[u8]) -> Result<Event, serde_json::Error> {
    serde_json::from_slice::<JsonEvent>(line).map(Event::from)
}

/// The default longest line a file source reads: 16 MiB.
pub const DEFAULT_MAX_LINE_BYTES: u64 = 16 << 20;

/// Reads a file line by line, one event per line ([`LineFormat`]). The
/// position is the byte offset after the last line handed out.
///
/// A line longer than [`FileSource::max_line_bytes`] (16 MiB by default,
/// not counting its newline) stops the source with
/// [`StreamError::LineTooLong`] naming the file, the line's byte offset and
/// the cap; no more than the cap is ever buffered.
///
/// In follow mode ([`FileSource::follow`]) the source does not end at the
/// end of the file: it waits for more lines (a line is taken only once its
/// newline is written), and when the file is rotated by rename (the path
/// now names another file) or truncated, it finishes the old file and goes
/// on with the new one from its start.
pub struct FileSource {
    path: PathBuf,
    format: LineFormat,
    reader: Option<BufReader<File>>,
    offset: u64,
    line: Vec<u8>,
    max_line_bytes: u64,
    follow: Option<std::time::Duration>,
    /// Identity of the open file (device, inode), to notice a rotation.
    identity: Option<(u64, u64)>,
}

#[cfg(unix)]
fn identity(metadata: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn identity(_metadata: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
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
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            follow: None,
            identity: None,
        }
    }

    /// The longest line (without its newline) the source reads (default
    /// [`DEFAULT_MAX_LINE_BYTES`], at least 1); a longer one is an error.
    #[must_use]
    pub fn max_line_bytes(mut self, bytes: u64) -> Self {
        self.max_line_bytes = bytes.max(1);
        self
    }

    /// Follows the file as it grows (and across rotations), checking for
    /// new lines every `poll`; the source then never ends.
    #[must_use]
    pub fn follow(mut self, poll: std::time::Duration) -> Self {
        self.follow = Some(poll);
        self
    }

    /// Whether the path now names another file than the one open, or the
    /// file became shorter than what was read (truncated in place).
    async fn rotated(&self) -> bool {
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => {
                let other = identity(&metadata).is_some_and(|id| Some(id) != self.identity);
                other || metadata.len() < self.offset
            }
            // Renamed away and not yet recreated: keep reading the old one.
            Err(_) => false,
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
        let metadata = file.metadata().await.map_err(|e| self.io("stat", e))?;
        self.identity = identity(&metadata);
        if self.offset > 0 {
            let len = metadata.len();
            if self.offset > len && self.follow.is_some() {
                tracing::warn!(source = %self.describe(), offset = self.offset, len,
                    "the file is shorter than the checkpoint's offset: it was rotated; reading it from the start");
                self.offset = 0;
            } else if self.offset > len {
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

    /// Bytes of the file not read yet.
    fn lag(&self) -> Option<u64> {
        let length = std::fs::metadata(&self.path).ok()?.len();
        Some(length.saturating_sub(self.offset))
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.offset = position.offset();
        self.reader = None;
        // Open now, so that a bad position is reported at start.
        self.open().await
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        loop {
            self.open().await?;
            let events = self.read_lines(max).await?;
            if !events.is_empty() {
                return Ok(Some((events, Position::Offset(self.offset))));
            }
            let Some(poll) = self.follow else {
                return Ok(None);
            };
            if self.rotated().await {
                // The old file is read to its end: go on with the new one.
                tracing::info!(source = %self.describe(), "the file was rotated; following the new one");
                self.reader = None;
                self.offset = 0;
                self.line.clear();
                continue;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

impl FileSource {
    /// Reads up to `max` complete lines from the open file. A last line
    /// without its newline is taken only when not following (the writer may
    /// still be writing it).
    async fn read_lines(&mut self, max: usize) -> Result<Vec<Event>, StreamError> {
        let stream = self.describe();
        let format = self.format;
        let following = self.follow.is_some();
        let max_line = self.max_line_bytes;
        let FileSource {
            reader: Some(reader),
            line,
            offset,
            ..
        } = self
        else {
            return Ok(Vec::new());
        };
        let mut events = Vec::with_capacity(max.clamp(1, 4096));
        while events.len() < max.max(1) {
            // Room for the longest line and its newline, and not a byte
            // more: a longer line is refused without being buffered.
            let room = (max_line + 1).saturating_sub(line.len() as u64);
            let read = (&mut *reader)
                .take(room)
                .read_until(b'\n', line)
                .await
                .map_err(|source| StreamError::Io {
                    stream: stream.clone(),
                    action: "read",
                    source,
                })?;
            let complete = line.ends_with(b"\n");
            if !complete && line.len() as u64 > max_line {
                line.clear();
                // The position stays before the line: a restart meets it again.
                let error = StreamError::LineTooLong {
                    stream,
                    offset: *offset,
                    max: max_line,
                };
                // The reader is past part of the line; start again from the offset.
                self.reader = None;
                return Err(error);
            }
            if read == 0 && (line.is_empty() || following) || !complete && following {
                // End of the file for now; a partial line waits for its newline.
                break;
            }
            let line_start = *offset;
            *offset += line.len() as u64;
            let mut value = line.as_slice();
            if let Some(rest) = value.strip_suffix(b"\n") {
                value = rest.strip_suffix(b"\r").unwrap_or(rest);
            }
            let parsed = match format {
                LineFormat::Lines => Some(Ok(Event::new(value.to_vec()))),
                LineFormat::Json if value.iter().all(u8::is_ascii_whitespace) => None,
                LineFormat::Json => Some(parse_json_line(value)),
            };
            line.clear();
            match parsed {
                None => {}
                Some(Ok(event)) => events.push(event),
                Some(Err(error)) => {
                    // Keep the position at the bad line: a restart fails on it again.
                    *offset = line_start;
                    return Err(StreamError::Parse {
                        stream,
                        offset: line_start,
                        message: error.to_string(),
                    });
                }
            }
        }
        Ok(events)
    }
}

/// Appends each event's value and a newline to a file; `flush` syncs it to disk.
///
/// Its position is the file's length after the last flush. Under
/// exactly-once a restart truncates the file to the length stored in the
/// checkpoint it resumes, so the output holds every result exactly once.
///
/// With [`FileSink::rotate_at`], once a flush leaves the file at or past
/// that size, the next write first renames it to `<path>.<n>` (n = 1, 2, …)
/// and starts a new file. A rotation happens only after a checkpoint has
/// committed (the engine sends nothing new before), and the position also
/// records how many rotations there were, so recovery can put the file the
/// checkpoint saw back in place.
pub struct FileSink {
    path: PathBuf,
    format: LineFormat,
    writer: Option<BufWriter<File>>,
    buffer: Vec<u8>,
    /// The file's length including everything written, once opened.
    length: Option<u64>,
    rotate_at: Option<u64>,
    rotate_before_next_write: bool,
}

/// Positions pack the rotation count above the length.
const ROTATION_SHIFT: u32 = 48;

fn pack(rotations: u64, length: u64) -> u64 {
    (rotations << ROTATION_SHIFT) | (length & ((1 << ROTATION_SHIFT) - 1))
}

fn unpack(position: u64) -> (u64, u64) {
    (
        position >> ROTATION_SHIFT,
        position & ((1 << ROTATION_SHIFT) - 1),
    )
}

impl FileSink {
    /// A sink appending to the file at `path` (created on first write).
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileSink {
            path: path.as_ref().to_path_buf(),
            format: LineFormat::Lines,
            writer: None,
            buffer: Vec::new(),
            length: None,
            rotate_at: None,
            rotate_before_next_write: false,
        }
    }

    /// Writes lines in `format`: each value (the default), or each event as
    /// a JSON line that a file source with [`LineFormat::Json`] reads back.
    #[must_use]
    pub fn format(mut self, format: LineFormat) -> Self {
        self.format = format;
        self
    }

    /// Rotates the file once it reaches `bytes` (checked at each flush).
    #[must_use]
    pub fn rotate_at(mut self, bytes: u64) -> Self {
        self.rotate_at = Some(bytes.max(1));
        self
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> StreamError {
        StreamError::Io {
            stream: self.describe(),
            action,
            source,
        }
    }

    fn rotated_path(&self, n: u64) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".{n}"));
        self.path.with_file_name(name)
    }

    /// How many rotated files `<path>.<n>` exist (the highest n).
    async fn rotations(&self) -> Result<u64, StreamError> {
        if self.rotate_at.is_none() {
            return Ok(0);
        }
        let mut n = 0;
        while tokio::fs::try_exists(self.rotated_path(n + 1))
            .await
            .map_err(|e| self.io("stat", e))?
        {
            n += 1;
        }
        Ok(n)
    }

    async fn open(&mut self) -> Result<(), StreamError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.io("open", e))?;
        let length = file.metadata().await.map_err(|e| self.io("stat", e))?.len();
        self.length = Some(length);
        self.writer = Some(BufWriter::with_capacity(256 * 1024, file));
        Ok(())
    }

    async fn rotate(&mut self) -> Result<(), StreamError> {
        if let Some(mut writer) = self.writer.take() {
            writer.flush().await.map_err(|e| self.io("flush", e))?;
        }
        let next = self.rotated_path(self.rotations().await? + 1);
        tokio::fs::rename(&self.path, &next)
            .await
            .map_err(|e| self.io("rotate", e))?;
        tracing::info!(sink = %self.describe(), rotated = %next.display(), "rotated the output file");
        self.open().await
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file sink `{}`", self.path.display())
    }

    async fn write(&mut self, batch: Batch) -> Result<(), StreamError> {
        if self.rotate_before_next_write {
            self.rotate_before_next_write = false;
            self.rotate().await?;
        }
        if self.writer.is_none() {
            self.open().await?;
        }
        self.buffer.clear();
        for event in &batch.events {
            push_formatted(&mut self.buffer, event, self.format);
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
        synced.map_err(|e| self.io("flush", e))?;
        if let (Some(limit), Some(length)) = (self.rotate_at, self.length) {
            // Rotate before the next write, which comes after this checkpoint commits.
            self.rotate_before_next_write = length >= limit;
        }
        Ok(())
    }

    async fn position(&mut self) -> Result<Option<u64>, StreamError> {
        let length = match self.length {
            Some(length) => length,
            None => match tokio::fs::metadata(&self.path).await {
                Ok(metadata) => metadata.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                Err(e) => return Err(self.io("stat", e)),
            },
        };
        Ok(Some(pack(self.rotations().await?, length)))
    }

    fn keep_headers(&mut self) {
        self.format = LineFormat::Json;
    }

    async fn recover(&mut self, position: Option<u64>) -> Result<(), StreamError> {
        let Some(position) = position else {
            return Ok(());
        };
        let (rotations, committed) = unpack(position);
        let now = self.rotations().await?;
        if now == rotations + 1 {
            // Rotated after the checkpoint: the file it saw is the last rotated one.
            let last = self.rotated_path(now);
            tracing::info!(sink = %self.describe(), "undoing a rotation made after the last checkpoint");
            match tokio::fs::remove_file(&self.path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io("remove", e)),
            }
            tokio::fs::rename(&last, &self.path)
                .await
                .map_err(|e| self.io("rename for recovery", e))?;
        } else if now != rotations {
            return Err(StreamError::Seek {
                stream: self.describe(),
                position: Position::Offset(position),
                reason: format!(
                    "the checkpoint saw {rotations} rotated files, there are {now}: the files were changed outside plumber"
                ),
            });
        }
        let file = match OpenOptions::new().write(true).open(&self.path).await {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && committed == 0 => return Ok(()),
            Err(e) => return Err(self.io("open for recovery", e)),
        };
        let length = file.metadata().await.map_err(|e| self.io("stat", e))?.len();
        if length < committed {
            return Err(StreamError::Seek {
                stream: self.describe(),
                position: Position::Offset(position),
                reason: format!("the file has only {length} bytes, less than the checkpoint committed ({committed})"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lag_is_the_bytes_not_read_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "ada\nbob\ncy\n").unwrap();
        let mut source = FileSource::new(&path);
        source.seek(&Position::Start).await.unwrap();
        assert_eq!(source.lag(), Some(11));
        let (events, _) = source.next_batch(1).await.unwrap().unwrap();
        assert_eq!(events[0].value, b"ada");
        assert_eq!(source.lag(), Some(7));
        source.next_batch(10).await.unwrap().unwrap();
        assert_eq!(source.lag(), Some(0));
    }
}
