//! A guest's stdout and stderr: each line goes to the log, tagged with the
//! tenant, the pipe and the stream, never to the host's terminal.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is cut (and said so), so a
/// guest cannot grow the host's memory by never writing a newline.
const MAX_LINE: usize = 4096;

/// One of a guest's output streams.
pub(crate) struct GuestOutput {
    tags: Arc<Tags>,
}

struct Tags {
    tenant: String,
    pipe: String,
    stream: &'static str,
}

impl GuestOutput {
    pub(crate) fn new(tenant: &str, pipe: &str, stream: &'static str) -> Self {
        GuestOutput {
            tags: Arc::new(Tags {
                tenant: tenant.to_owned(),
                pipe: pipe.to_owned(),
                stream,
            }),
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger {
            tags: self.tags.clone(),
            line: Vec::new(),
            cut: false,
        })
    }
}

/// Collects bytes into lines and logs each complete one.
struct LineLogger {
    tags: Arc<Tags>,
    line: Vec<u8>,
    cut: bool,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() && !self.cut {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        let Tags {
            tenant,
            pipe,
            stream,
        } = &*self.tags;
        if self.cut {
            tracing::info!(target: "plumber::guest", tenant = %tenant, pipe = %pipe, stream,
                "{text} … (line cut at {MAX_LINE} bytes)");
        } else {
            tracing::info!(target: "plumber::guest", tenant = %tenant, pipe = %pipe, stream, "{text}");
        }
        self.line.clear();
        self.cut = false;
    }

    fn push(&mut self, bytes: &[u8]) {
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            let (content, ends_line) = match part.strip_suffix(b"\n") {
                Some(content) => (content, true),
                None => (part, false),
            };
            let room = MAX_LINE.saturating_sub(self.line.len());
            if content.len() > room {
                self.cut = true;
            }
            self.line
                .extend_from_slice(&content[..content.len().min(room)]);
            if ends_line {
                self.emit();
            }
        }
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        self.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut logger = LineLogger {
            tags: Arc::new(Tags {
                tenant: "t".into(),
                pipe: "p".into(),
                stream: "stdout",
            }),
            line: Vec::new(),
            cut: false,
        };
        logger.push(b"one\ntw");
        assert_eq!(logger.line, b"tw");
        logger.push(b"o\n");
        assert!(logger.line.is_empty());
        logger.push(&vec![b'x'; MAX_LINE * 3]);
        assert_eq!(logger.line.len(), MAX_LINE);
        assert!(logger.cut);
        logger.push(b"\n");
        assert!(logger.line.is_empty() && !logger.cut);
    }
}
