//! What a guest writes to the host's log: its stdout and stderr (each line
//! goes to the log, tagged with the tenant, the pipe and the stream, never
//! to the host's terminal) and its `log` calls, together held to a rate
//! ([`LogBudget`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;

use crate::recent::{unix_ms, Recent};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is cut (and said so), so a
/// guest cannot grow the host's memory by never writing a newline.
const MAX_LINE: usize = super::limits::MAX_MESSAGE_BYTES;

/// Lines per second one pipe may write to the host's log (its `log` calls
/// and its stdout/stderr lines together), with bursts of up to one
/// second's worth; lines beyond it are dropped and counted.
pub const LOG_LINES_PER_SECOND: u32 = 100;
/// Bytes per second one pipe may write to the host's log, with bursts of up
/// to one second's worth.
pub const LOG_BYTES_PER_SECOND: u32 = 64 * 1024;

/// How many of a pipe's log lines [`LogBudget::recent`] keeps.
pub const RECENT_LOG_LINES: usize = 64;

/// How much of a log line is kept for people to look at, in bytes.
const SHOWN_LINE: usize = 512;

/// A line a guest wrote to the host's log, as the admin console shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GuestLogLine {
    /// When it was written, ms since the Unix epoch.
    pub at_ms: u64,
    /// Where it came from: a `log` call's level (`"info"`, `"warn"`, …)
    /// or the stream (`"stdout"`, `"stderr"`).
    pub source: &'static str,
    /// The line (with a `log` call's fields), its first 512 bytes.
    pub text: String,
}

/// One pipe's allowance of log lines and bytes: a token bucket per
/// resource, refilled continuously, holding at most one second's worth.
/// Shared by every instance the pipe has (a trap does not refill it).
#[derive(Debug)]
pub(crate) struct LogBudget {
    tenant: String,
    pipe: String,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
    recent: Arc<Recent<GuestLogLine>>,
}

#[derive(Debug)]
struct Bucket {
    lines: f64,
    bytes: f64,
    refilled: Instant,
    /// When the last "dropping lines" warning was logged.
    warned_at: Option<Instant>,
    /// Lines dropped since that warning.
    dropped_since_warning: u64,
}

/// While a guest keeps logging too fast, how often the host says so.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl LogBudget {
    pub(crate) fn new(tenant: &str, pipe: &str) -> Arc<Self> {
        Arc::new(LogBudget {
            tenant: tenant.to_owned(),
            pipe: pipe.to_owned(),
            bucket: Mutex::new(Bucket {
                lines: f64::from(LOG_LINES_PER_SECOND),
                bytes: f64::from(LOG_BYTES_PER_SECOND),
                refilled: Instant::now(),
                warned_at: None,
                dropped_since_warning: 0,
            }),
            dropped: AtomicU64::new(0),
            recent: Arc::new(Recent::new(RECENT_LOG_LINES)),
        })
    }

    /// Keeps a line that was admitted and logged, for the console.
    pub(crate) fn record(&self, source: &'static str, text: &str) {
        let mut end = text.len().min(SHOWN_LINE);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.recent.push(GuestLogLine {
            at_ms: unix_ms(),
            source,
            text: text[..end].to_owned(),
        });
    }

    /// The pipe's last [`RECENT_LOG_LINES`] log lines, shared with whoever
    /// shows them.
    pub(crate) fn recent(&self) -> Arc<Recent<GuestLogLine>> {
        self.recent.clone()
    }

    /// Whether a line of `bytes` may be logged now; if not, it is counted
    /// as dropped, and the host logs one warning (then at most one every
    /// ten seconds) saying lines are being dropped.
    pub(crate) fn admit(&self, bytes: usize) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.refilled = now;
        bucket.lines = (bucket.lines + elapsed * f64::from(LOG_LINES_PER_SECOND))
            .min(f64::from(LOG_LINES_PER_SECOND));
        bucket.bytes = (bucket.bytes + elapsed * f64::from(LOG_BYTES_PER_SECOND))
            .min(f64::from(LOG_BYTES_PER_SECOND));
        let size = bytes as f64;
        if bucket.lines >= 1.0 && bucket.bytes >= size {
            bucket.lines -= 1.0;
            bucket.bytes -= size;
            return true;
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
        bucket.dropped_since_warning += 1;
        if bucket
            .warned_at
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            tracing::warn!(target: "plumber::guest", tenant = %self.tenant, pipe = %self.pipe,
                dropped = bucket.dropped_since_warning,
                "the guest logs faster than {LOG_LINES_PER_SECOND} lines or {LOG_BYTES_PER_SECOND} \
                 bytes per second: dropping lines (all counted in plumber_pipe_log_dropped_total)");
            bucket.warned_at = Some(now);
            bucket.dropped_since_warning = 0;
        }
        false
    }

    /// Lines dropped so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One of a guest's output streams.
pub(crate) struct GuestOutput {
    tags: Arc<Tags>,
    budget: Arc<LogBudget>,
}

struct Tags {
    tenant: String,
    pipe: String,
    stream: &'static str,
}

impl GuestOutput {
    pub(crate) fn new(
        tenant: &str,
        pipe: &str,
        stream: &'static str,
        budget: Arc<LogBudget>,
    ) -> Self {
        GuestOutput {
            tags: Arc::new(Tags {
                tenant: tenant.to_owned(),
                pipe: pipe.to_owned(),
                stream,
            }),
            budget,
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
            budget: self.budget.clone(),
            line: Vec::new(),
            cut: false,
        })
    }
}

/// Collects bytes into lines and logs each complete one.
struct LineLogger {
    tags: Arc<Tags>,
    budget: Arc<LogBudget>,
    line: Vec<u8>,
    cut: bool,
}

impl LineLogger {
    fn emit(&mut self) {
        if self.line.is_empty() && !self.cut {
            return;
        }
        if !self.budget.admit(self.line.len()) {
            self.line.clear();
            self.cut = false;
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
        self.budget.record(stream, text);
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

    /// Each line that went to the log is kept, its first 512 bytes (cut
    /// on a character boundary), the last [`RECENT_LOG_LINES`] of them.
    #[test]
    fn logged_lines_are_kept_for_the_console() {
        let budget = LogBudget::new("t", "p");
        let mut logger = LineLogger {
            tags: Arc::new(Tags {
                tenant: "t".into(),
                pipe: "p".into(),
                stream: "stderr",
            }),
            budget: budget.clone(),
            line: Vec::new(),
            cut: false,
        };
        logger.push(b"one\r\ntwo\n");
        // 300 two-byte characters: 600 bytes, cut to 256 of them.
        budget.record("warn", &"é".repeat(300));
        let kept = budget.recent().snapshot();
        let texts: Vec<(&str, &str)> = kept.iter().map(|l| (l.source, l.text.as_str())).collect();
        let cut = "é".repeat(SHOWN_LINE / 2);
        assert_eq!(
            texts,
            [("stderr", "one"), ("stderr", "two"), ("warn", cut.as_str())]
        );
        // A flood: some lines are dropped; only the last few are kept.
        for _ in 0..LOG_LINES_PER_SECOND * 2 {
            logger.push(b"x\n");
        }
        assert!(budget.dropped() > 0);
        let kept = budget.recent().snapshot();
        assert_eq!(kept.len(), RECENT_LOG_LINES);
        assert!(kept.iter().all(|line| line.text == "x"));
    }

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut logger = LineLogger {
            tags: Arc::new(Tags {
                tenant: "t".into(),
                pipe: "p".into(),
                stream: "stdout",
            }),
            budget: LogBudget::new("t", "p"),
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

    #[test]
    fn the_budget_lets_a_second_of_lines_through_then_drops() {
        let budget = LogBudget::new("t", "p");
        let admitted = (0..1000).filter(|_| budget.admit(10)).count();
        // One second's worth at once, and what refills while the loop runs.
        assert!(
            (LOG_LINES_PER_SECOND as usize..LOG_LINES_PER_SECOND as usize + 5).contains(&admitted),
            "{admitted}"
        );
        assert_eq!(budget.dropped(), 1000 - admitted as u64);
        // Bytes are held to their own rate: a 4 KiB line fits 16 times.
        let bytes = LogBudget::new("t", "p");
        let admitted = (0..100).filter(|_| bytes.admit(4096)).count();
        assert_eq!(admitted, LOG_BYTES_PER_SECOND as usize / 4096);
    }
}
