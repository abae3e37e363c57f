//! Newline-delimited files: one event per line.

pub(super) mod config;

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{push_formatted, JsonEvent, Sink, Source, StreamError};
use crate::checkpoint::{Position, SourcePosition};
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

/// How many of a file's first bytes its fingerprint covers.
const HEAD_BYTES: usize = 256;

/// What a file source does at a restart when the file its checkpoint's
/// offset belongs to is neither at its path nor among the rotated files
/// beside it (see [`FileSource`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMissingFile {
    /// Refuse to start, naming the path and the file looked for.
    #[default]
    Fail,
    /// Say so in the log and read the file now at the path from its start
    /// (what the old file had after the offset is not read).
    Start,
}

/// Which file an offset belongs to: its inode (with the device), and a
/// fingerprint of its first bytes, so that a new file that reuses an inode
/// number, a file rewritten in place or a copy is not taken for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileIdentity {
    /// The file system's device number (Unix). Not required to match at a
    /// restart: it may change when a file system is mounted again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<u64>,
    /// The inode number (Unix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inode: Option<u64>,
    /// How many of the file's first bytes the fingerprint covers: 256, or
    /// fewer when the file was shorter.
    pub head_bytes: u64,
    /// SHA-256 of those bytes, in hexadecimal.
    pub head_sha256: String,
}

impl std::fmt::Display for FileIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(inode) = self.inode {
            write!(f, "inode {inode}")?;
            if let Some(device) = self.device {
                write!(f, " on device {device}")?;
            }
            f.write_str(", ")?;
        }
        let short = self.head_sha256.get(..16).unwrap_or(&self.head_sha256);
        write!(f, "first {} bytes with SHA-256 {short}…", self.head_bytes)
    }
}

/// A [`FileSource`]'s position: the offset after the last line handed out,
/// and the file it belongs to. Stored as a [`Position::Source`] of kind
/// `"file"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePosition {
    /// Bytes of the file read.
    pub offset: u64,
    /// The file they were read from.
    pub file: FileIdentity,
}

impl SourcePosition for FilePosition {
    const KIND: &'static str = "file";
}

/// Reads a file line by line, one event per line ([`LineFormat`]). The
/// position ([`FilePosition`]) is the byte offset after the last line
/// handed out, with the identity of the file it belongs to.
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
///
/// At a restart ([`Source::seek`]) the offset goes to the file it belongs
/// to: the file at the path if it is that file (same inode, same first
/// bytes, at least as long as the offset); else a rotated file beside it
/// (`<name>.<anything>` or `<name>-<anything>`, as rename-based rotation
/// names them), whose rest is read before the file at the path, from its
/// start. When neither holds it (the file was deleted, replaced, rewritten
/// or truncated in place, or rotated by copying) the source refuses, unless
/// told to start over with the file at the path ([`OnMissingFile`]).
pub struct FileSource {
    path: PathBuf,
    format: LineFormat,
    reader: Option<BufReader<File>>,
    offset: u64,
    line: Vec<u8>,
    max_line_bytes: u64,
    follow: Option<std::time::Duration>,
    on_missing_file: OnMissingFile,
    /// A rotated file found at a restart, read to its end before the file
    /// at `path`.
    finishing: Option<PathBuf>,
    /// Device and inode of the open file, to notice a rotation.
    inode: Option<(u64, u64)>,
    /// The open file's fingerprint.
    head: Head,
    /// The position was given in the form of an earlier version.
    migrated: bool,
}

#[cfg(unix)]
fn inode_of(metadata: &std::fs::Metadata) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn inode_of(_metadata: &std::fs::Metadata) -> Option<(u64, u64)> {
    None
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Reads up to `max` bytes from the start of `file` (left after them).
async fn read_head(file: &mut File, max: u64) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    file.take(max).read_to_end(&mut head).await?;
    Ok(head)
}

/// A file's first bytes (up to [`HEAD_BYTES`]) and their SHA-256: its
/// fingerprint, hashed once per change rather than once per batch.
#[derive(Default)]
struct Head {
    bytes: Vec<u8>,
    sha256: String,
}

impl Head {
    fn new(bytes: Vec<u8>) -> Self {
        let sha256 = sha256_hex(&bytes);
        Head { bytes, sha256 }
    }

    /// Adds what of `bytes`, read at offset `start`, lies past the head and
    /// within [`HEAD_BYTES`] (a file opened shorter than that grows).
    fn extend(&mut self, start: u64, bytes: &[u8]) {
        let have = self.bytes.len() as u64;
        if have >= HEAD_BYTES as u64 || start > have {
            return;
        }
        let from = usize::try_from(have - start).unwrap_or(usize::MAX);
        let to = bytes
            .len()
            .min(usize::try_from(HEAD_BYTES as u64 - start).unwrap_or(usize::MAX));
        if let Some(more) = bytes.get(from..to).filter(|more| !more.is_empty()) {
            self.bytes.extend_from_slice(more);
            self.sha256 = sha256_hex(&self.bytes);
        }
    }
}

/// What is at a path, compared with a recorded file.
enum Candidate {
    /// The recorded file, long enough for the offset.
    Same,
    /// Nothing.
    Missing,
    /// Something else, as said.
    Other(String),
}

/// Whether the file at `path` is the one `recorded` was read from.
async fn compare(path: &Path, recorded: &FilePosition) -> std::io::Result<Candidate> {
    let metadata = match tokio::fs::metadata(path).await {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Candidate::Missing),
        Err(e) => return Err(e),
    };
    if !metadata.is_file() {
        return Ok(Candidate::Other("not a regular file".to_owned()));
    }
    let inode = inode_of(&metadata);
    if let (Some(recorded), Some((_, found))) = (recorded.file.inode, inode) {
        if recorded != found {
            return Ok(Candidate::Other(format!("another file, inode {found}")));
        }
    }
    let length = metadata.len();
    if length < recorded.offset {
        return Ok(Candidate::Other(format!(
            "the same inode with {length} bytes, less than the offset: the file was truncated"
        )));
    }
    let mut file = File::open(path).await?;
    let head = read_head(&mut file, recorded.file.head_bytes).await?;
    if head.len() as u64 != recorded.file.head_bytes
        || sha256_hex(&head) != recorded.file.head_sha256
    {
        return Ok(Candidate::Other(
            "the same inode with other first bytes: the file was rewritten in place, or a new \
             file reuses the inode number"
                .to_owned(),
        ));
    }
    if let (Some(recorded), Some((found, _))) = (recorded.file.device, inode) {
        if recorded != found {
            tracing::info!(path = %path.display(), recorded, found,
                "the file's device number changed (mounted again?); same inode and first bytes: the same file");
        }
    }
    Ok(Candidate::Same)
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
            on_missing_file: OnMissingFile::Fail,
            finishing: None,
            inode: None,
            head: Head::default(),
            migrated: false,
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

    /// What to do at a restart when the checkpoint's file is nowhere
    /// (default [`OnMissingFile::Fail`]).
    #[must_use]
    pub fn on_missing_file(mut self, action: OnMissingFile) -> Self {
        self.on_missing_file = action;
        self
    }

    /// Whether the path now names another file than the one open, or the
    /// file became shorter than what was read (truncated in place).
    async fn rotated(&self) -> bool {
        match tokio::fs::metadata(&self.path).await {
            Ok(metadata) => {
                let other = inode_of(&metadata).is_some_and(|id| Some(id) != self.inode);
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

    /// The file being read: a rotated one being finished, else the path.
    fn reading(&self) -> &Path {
        self.finishing.as_deref().unwrap_or(&self.path)
    }

    async fn open(&mut self) -> Result<(), StreamError> {
        if self.reader.is_some() {
            return Ok(());
        }
        let mut file = File::open(self.reading())
            .await
            .map_err(|e| self.io("open", e))?;
        let metadata = file.metadata().await.map_err(|e| self.io("stat", e))?;
        self.inode = inode_of(&metadata);
        self.head = Head::new(
            read_head(&mut file, HEAD_BYTES as u64)
                .await
                .map_err(|e| self.io("read", e))?,
        );
        let length = metadata.len();
        if self.offset > length {
            return Err(StreamError::seek(
                self.describe(),
                &Position::Offset(self.offset),
                format!("the file has only {length} bytes"),
            ));
        }
        file.seek(std::io::SeekFrom::Start(self.offset))
            .await
            .map_err(|e| self.io("seek", e))?;
        self.reader = Some(BufReader::with_capacity(256 * 1024, file));
        Ok(())
    }

    /// The position after what was read, in the open file.
    fn position(&self) -> Result<Position, StreamError> {
        let (device, inode) = self.inode.unzip();
        Position::encode(&FilePosition {
            offset: self.offset,
            file: FileIdentity {
                device,
                inode,
                head_bytes: self.head.bytes.len() as u64,
                head_sha256: self.head.sha256.clone(),
            },
        })
        .map_err(|e| self.io("record the position", std::io::Error::other(e)))
    }

    /// Goes on with the file at the path, from its start.
    fn next_file(&mut self) {
        self.reader = None;
        self.finishing = None;
        self.offset = 0;
        self.line.clear();
    }

    /// A bare offset, as versions before file identities stored it: applied
    /// to the file now at the path, as they did.
    async fn seek_bare_offset(&mut self, offset: u64) -> Result<(), StreamError> {
        tracing::info!(source = %self.describe(), offset,
            "the checkpoint holds a bare offset (an earlier version's): applying it to the file now at the path; the next checkpoint records which file it belongs to");
        let length = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.io("open", e))?
            .len();
        self.migrated = true;
        if offset > length && self.follow.is_some() {
            tracing::warn!(source = %self.describe(), offset, length,
                "the file is shorter than the checkpoint's offset: it was rotated; reading it from the start");
            self.offset = 0;
        } else if offset > length {
            return Err(StreamError::seek(
                self.describe(),
                &Position::Offset(offset),
                format!("the file has only {length} bytes"),
            ));
        } else {
            self.offset = offset;
        }
        Ok(())
    }

    /// Rotated files beside the path: `<name>.<anything>`, `<name>-<anything>`.
    async fn rotated_files(&self) -> Result<Vec<PathBuf>, StreamError> {
        let Some(name) = self.path.file_name().and_then(|n| n.to_str()) else {
            return Ok(Vec::new());
        };
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .map_err(|e| self.io("list the rotated files", e))?;
        let mut found = Vec::new();
        while let Some(entry) = entries
            .next_entry()
            .await
            .map_err(|e| self.io("list the rotated files", e))?
        {
            let file_name = entry.file_name();
            let rotated = file_name
                .to_str()
                .and_then(|n| n.strip_prefix(name))
                .is_some_and(|rest| {
                    rest.len() > 1 && (rest.starts_with('.') || rest.starts_with('-'))
                });
            if rotated {
                found.push(entry.path());
            }
        }
        found.sort();
        Ok(found)
    }

    /// Finds the file `recorded` was read from: at the path, else rotated
    /// beside it; else refuses, or starts over ([`OnMissingFile`]).
    async fn seek_recorded(
        &mut self,
        position: &Position,
        recorded: &FilePosition,
    ) -> Result<(), StreamError> {
        let at_path = compare(&self.path, recorded)
            .await
            .map_err(|e| self.io("compare with the checkpoint's file", e))?;
        let at_path = match at_path {
            Candidate::Same => {
                self.offset = recorded.offset;
                return Ok(());
            }
            Candidate::Missing => "there is no file there".to_owned(),
            Candidate::Other(what) => format!("the file there is {what}"),
        };
        for rotated in self.rotated_files().await? {
            let candidate = compare(&rotated, recorded)
                .await
                .map_err(|e| self.io("compare with the checkpoint's file", e))?;
            if let Candidate::Same = candidate {
                tracing::info!(source = %self.describe(), rotated = %rotated.display(), offset = recorded.offset,
                    "the file was rotated while the pipeline was stopped: reading the rest of the rotated file, then the file at the path");
                self.finishing = Some(rotated);
                self.offset = recorded.offset;
                return Ok(());
            }
        }
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let missing = format!(
            "the file this offset belongs to ({}) is not at `{}` ({at_path}) nor among the \
             rotated files beside it (`{name}.*`, `{name}-*`)",
            recorded.file,
            self.path.display()
        );
        match self.on_missing_file {
            OnMissingFile::Start => {
                tracing::warn!(source = %self.describe(),
                    "{missing}; reading the file at the path from its start (\"on_missing_file\": \"start\")");
                self.offset = 0;
                Ok(())
            }
            OnMissingFile::Fail => Err(StreamError::seek(
                self.describe(),
                position,
                format!(
                    "{missing}; to read the file now at the path from its start and keep the \
                     pipeline's state, set `\"on_missing_file\": \"start\"` on the source; to \
                     start over, remove the pipeline's state (its checkpoint with it)"
                ),
            )),
        }
    }
}

#[async_trait]
impl Source for FileSource {
    fn describe(&self) -> String {
        format!("file source `{}`", self.path.display())
    }

    /// Bytes of the file not read yet (and of the file at the path, while
    /// a rotated one is finished).
    fn lag(&self) -> Option<u64> {
        let length = std::fs::metadata(self.reading()).ok()?.len();
        let next = match &self.finishing {
            Some(_) => std::fs::metadata(&self.path).map_or(0, |m| m.len()),
            None => 0,
        };
        Some(length.saturating_sub(self.offset) + next)
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.reader = None;
        self.finishing = None;
        self.line.clear();
        self.migrated = false;
        match position {
            Position::Start => self.offset = 0,
            Position::Offset(offset) => self.seek_bare_offset(*offset).await?,
            _ => {
                let recorded = position
                    .decode::<FilePosition>()
                    .map_err(|e| StreamError::seek(self.describe(), position, e))?;
                self.seek_recorded(position, &recorded).await?;
            }
        }
        // Open now, so that a bad position is reported at start.
        self.open().await
    }

    fn migrated_position(&self) -> Option<Position> {
        if self.migrated {
            self.position().ok()
        } else {
            None
        }
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        loop {
            self.open().await?;
            let events = self.read_lines(max).await?;
            if !events.is_empty() {
                return Ok(Some((events, self.position()?)));
            }
            let Some(poll) = self.follow else {
                if self.finishing.is_some() {
                    // The rotated file is read: go on with the file at the path.
                    self.next_file();
                    continue;
                }
                return Ok(None);
            };
            if self.rotated().await {
                // Lines written to the old file before its rename may have
                // come after the read that found its end: read it to its
                // end once more before going on with the new one.
                let events = self.read_lines(max).await?;
                if !events.is_empty() {
                    return Ok(Some((events, self.position()?)));
                }
                // Nothing more comes to a rotated file: a last line without
                // its newline is complete.
                if let Some(event) = self.finish_partial_line()? {
                    return Ok(Some((vec![event], self.position()?)));
                }
                tracing::info!(source = %self.describe(), "the file was rotated; following the new one");
                self.next_file();
                continue;
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// One line (with or without its newline) as an event in `format`; `None`
/// for a blank line of a JSON file.
fn parse_line(format: LineFormat, line: &[u8]) -> Option<Result<Event, serde_json::Error>> {
    let mut value = line;
    if let Some(rest) = value.strip_suffix(b"\n") {
        value = rest.strip_suffix(b"\r").unwrap_or(rest);
    }
    match format {
        LineFormat::Lines => Some(Ok(Event::new(value.to_vec()))),
        LineFormat::Json if value.iter().all(u8::is_ascii_whitespace) => None,
        LineFormat::Json => Some(parse_json_line(value)),
    }
}

impl FileSource {
    /// Takes the last line of a rotated file that has no newline (no more
    /// is written to it) as an event, and moves the offset past it.
    fn finish_partial_line(&mut self) -> Result<Option<Event>, StreamError> {
        if self.line.is_empty() {
            return Ok(None);
        }
        let line = std::mem::take(&mut self.line);
        let start = self.offset;
        self.offset += line.len() as u64;
        self.head.extend(start, &line);
        match parse_line(self.format, &line) {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(error)) => {
                self.offset = start;
                Err(StreamError::Parse {
                    stream: self.describe(),
                    offset: start,
                    source: error,
                })
            }
        }
    }

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
            head,
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
            // A file opened shorter than the fingerprint gets it completed.
            head.extend(line_start, line);
            let parsed = parse_line(format, line);
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
                        source: error,
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
                position: Box::new(Position::Offset(position)),
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
                position: Box::new(Position::Offset(position)),
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

    /// The last line of a file rotated away without its newline is
    /// complete (nothing more is written to it): it is read, then the new
    /// file, and nothing is lost.
    #[tokio::test]
    async fn a_rotated_file_is_read_to_its_end_before_the_new_one() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        std::fs::write(&path, "one\n").unwrap();
        let mut source = FileSource::new(&path).follow(std::time::Duration::from_millis(5));
        source.seek(&Position::Start).await.unwrap();
        let (events, _) = source.next_batch(10).await.unwrap().unwrap();
        assert_eq!(events[0].value, b"one");
        // Found at its end; then a partial line, and the rename.
        let mut old = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        old.write_all(b"two\nthr").unwrap();
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        std::fs::write(&path, "four\n").unwrap();
        let mut values = Vec::new();
        while values.len() < 3 {
            let (events, _) =
                tokio::time::timeout(std::time::Duration::from_secs(10), source.next_batch(10))
                    .await
                    .expect("lines within 10 s")
                    .unwrap()
                    .unwrap();
            values.extend(events.into_iter().map(|e| e.value_lossy().into_owned()));
        }
        assert_eq!(values, ["two", "thr", "four"]);
    }

    fn position_of(position: &Position) -> FilePosition {
        position.decode::<FilePosition>().unwrap()
    }

    /// The fingerprint of a file opened shorter than 256 bytes grows with
    /// what is read, and is what a restart computes from the file.
    #[tokio::test]
    async fn the_fingerprint_grows_with_a_short_file_up_to_256_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "ab\n").unwrap();
        let mut source = FileSource::new(&path).follow(std::time::Duration::from_millis(5));
        source.seek(&Position::Start).await.unwrap();
        let (_, position) = source.next_batch(10).await.unwrap().unwrap();
        let first = position_of(&position);
        assert_eq!(first.offset, 3);
        assert_eq!(first.file.head_bytes, 3);
        assert_eq!(first.file.head_sha256, sha256_hex(b"ab\n"));

        let line = format!("{}\n", "x".repeat(99));
        std::fs::write(&path, format!("ab\n{}", line.repeat(3))).unwrap();
        let (events, position) = source.next_batch(10).await.unwrap().unwrap();
        assert_eq!(events.len(), 3);
        let grown = position_of(&position);
        let content = std::fs::read(&path).unwrap();
        assert_eq!(grown.offset, content.len() as u64);
        assert_eq!(grown.file.head_bytes, 256);
        assert_eq!(grown.file.head_sha256, sha256_hex(&content[..256]));
        assert_eq!(grown.file.inode, first.file.inode);

        // A restart at either position finds the file.
        for position in [&Position::encode(&first).unwrap(), &position] {
            let mut restarted = FileSource::new(&path);
            restarted.seek(position).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_position_of_another_kind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, "ab\n").unwrap();
        let foreign = [
            Position::Partitions(std::collections::BTreeMap::from([(0, Position::Offset(1))])),
            Position::Source {
                kind: "jetstream".into(),
                value: serde_json::json!({"sequence": 1}),
            },
        ];
        for position in &foreign {
            let error = FileSource::new(&path).seek(position).await.unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, StreamError::Seek { .. })
                    && text.contains("in.txt")
                    && text.contains("another kind of source"),
                "{text}"
            );
        }
        let malformed = Position::Source {
            kind: "file".into(),
            value: serde_json::json!({"offset": 1}),
        };
        let text = FileSource::new(&path)
            .seek(&malformed)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("not in the form") && text.contains("`file`"),
            "{text}"
        );
    }
}
