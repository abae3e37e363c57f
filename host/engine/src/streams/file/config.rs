//! `{"type": "file", …}`: the configs of the file source and sink.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::config::validate::{file_to_be_written, file_to_read};
use crate::config::{
    Checks, ConnectorSpec, FieldError, OpenContext, OutputGuarantee, SinkSpec, SourceSpec,
};
use crate::streams::{FileSink, FileSource, LineFormat, OnMissingFile, Sink, Source, StreamError};

/// `{"type": "file", "path": …}` as a source: a newline-delimited file,
/// one event per line.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSourceConfig {
    /// The file (required; relative: to the config's directory).
    pub path: PathBuf,
    /// `lines` (default: each line is a value) or `json` (each line an
    /// event object: `value`, and optionally `key`, `timestamp`, `headers`).
    #[serde(default)]
    pub format: LineFormat,
    /// Follow the file as it grows and across rotations, polling every
    /// this many ms (the source then never ends; default: read to the end
    /// and stop).
    #[serde(default)]
    pub follow_ms: Option<u64>,
    /// The longest line read (default 16 MiB); a longer one stops the
    /// pipeline with an error naming the file, the offset and the cap.
    #[serde(default)]
    pub max_line_bytes: Option<u64>,
    /// At a restart, when the checkpoint's file is neither at the path nor
    /// rotated beside it: `fail` (default) or `start` (read the file at the
    /// path from its start).
    #[serde(default)]
    pub on_missing_file: OnMissingFile,
}

fn resolve(path: &mut PathBuf, base: &Path) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

#[async_trait]
impl ConnectorSpec for FileSourceConfig {
    fn check(&self) -> Result<(), FieldError> {
        if self.max_line_bytes == Some(0) {
            return Err(FieldError::new(
                "max_line_bytes",
                "expected a positive number of bytes",
            ));
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        resolve(&mut self.path, base);
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        file_to_read(&self.path, "path")
    }
}

#[async_trait]
impl SourceSpec for FileSourceConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Source>, StreamError> {
        let mut source = FileSource::new(&self.path)
            .format(self.format)
            .on_missing_file(self.on_missing_file);
        if let Some(bytes) = self.max_line_bytes {
            source = source.max_line_bytes(bytes);
        }
        if let Some(ms) = self.follow_ms {
            source = source.follow(Duration::from_millis(ms.max(1)));
        }
        Ok(Box::new(source))
    }
}

/// `{"type": "file", "path": …}` as a sink: a line per event, appended.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file (required; relative: to the config's directory; its
    /// directory must exist).
    pub path: PathBuf,
    /// Rotate the file (to `<path>.1`, `.2`, …) once it reaches this many
    /// bytes (default: never).
    #[serde(default)]
    pub rotate_bytes: Option<u64>,
}

#[async_trait]
impl ConnectorSpec for FileSinkConfig {
    fn resolve_paths(&mut self, base: &Path) {
        resolve(&mut self.path, base);
    }

    fn validate(&self, _checks: &mut Checks) -> Result<(), FieldError> {
        file_to_be_written(&self.path, "path")
    }
}

#[async_trait]
impl SinkSpec for FileSinkConfig {
    async fn open(&self, _context: &OpenContext<'_>) -> Result<Box<dyn Sink>, StreamError> {
        let sink = FileSink::new(&self.path);
        Ok(Box::new(match self.rotate_bytes {
            Some(bytes) => sink.rotate_at(bytes),
            None => sink,
        }))
    }

    fn output_guarantee(&self) -> OutputGuarantee {
        OutputGuarantee::ExactlyOnce(
            "exactly-once: state and the file sink's output (truncated to the last checkpoint \
             on recovery)",
        )
    }
}
