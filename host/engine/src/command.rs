//! Command pipes: programs that read events as lines on stdin and write one
//! result line per event on stdout, for languages without component
//! tooling.
//!
//! - [`WasiCommandStep`] runs a WASI preview 1 *command* module (Go's
//!   standard `GOOS=wasip1` build, C, Zig, ...) sandboxed, as one
//!   long-lived instance: no files, no environment, no arguments beyond the
//!   configured ones, its memory capped and its time per batch limited as a
//!   component pipe's. Its normal exit (`proc_exit(0)`) after stdin closes
//!   is success.
//! - [`ExecStep`] runs an executable of the host, unsandboxed, for parity
//!   with the seed's standalone mode (`"path": "cowsay"`). It is refused
//!   unless the step's config says `"allow_unsandboxed": true`, and never
//!   runs in a multi-tenant host.
//!
//! The protocol is the same for both: for each event, its value and `\n`
//! go to stdin; the program answers with exactly one line per event, in
//! order, which becomes the event's new value (key, timestamp and headers
//! are kept). A value holding a newline cannot be framed and is an error
//! naming the event. The program must flush each line (line-buffered
//! output), or the pipe waits for its time limit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinHandle;
use wasmtime::{Linker, Store, UpdateDeadline};
use wasmtime_wasi::cli::{AsyncStdinStream, AsyncStdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

use crate::runtime::limits::{LimitKind, PipeLimits};
use crate::runtime::Runtime;
use crate::step::{Step, StepError};
use crate::Batch;
use crate::ErrorChain;

/// Longest answer line read from a command, so a program that never writes
/// a newline cannot take the host's memory.
const MAX_LINE: usize = 1 << 20;

/// Why a command pipe could not start.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The module could not be read or compiled, or is not a command.
    #[error("command module `{path}`: {message}")]
    Module {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// An unsandboxed executable without the config's explicit permission,
    /// or in a multi-tenant host.
    #[error("step `{step}`: {message}")]
    Refused {
        /// The step.
        step: String,
        /// Why.
        message: String,
    },
    /// The executable could not be started.
    #[error("step `{step}`: cannot start `{path}`")]
    Spawn {
        /// The step.
        step: String,
        /// The executable.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The line protocol over a program's stdin and stdout.
struct Lines {
    step: String,
    input: Box<dyn AsyncWrite + Send + Unpin>,
    output: BufReader<Box<dyn AsyncRead + Send + Unpin>>,
    line: Vec<u8>,
    timeout: Duration,
}

impl Lines {
    fn failed(&self, message: String) -> StepError {
        StepError::Native {
            step: self.step.clone(),
            message,
        }
    }

    /// Sends every event's value and reads one answer line per event.
    async fn exchange(&mut self, batch: &mut Batch) -> Result<(), StepError> {
        let mut frame = Vec::new();
        for (index, event) in batch.events.iter().enumerate() {
            if event.value.contains(&b'\n') {
                return Err(self.failed(format!(
                    "event {index} of the batch holds a newline, which the line protocol cannot carry"
                )));
            }
            frame.extend_from_slice(&event.value);
            frame.push(b'\n');
        }
        let timeout = self.timeout;
        let count = batch.events.len();
        let exchange = async {
            self.input
                .write_all(&frame)
                .await
                .map_err(|e| format!("cannot write to its stdin: {e}"))?;
            self.input
                .flush()
                .await
                .map_err(|e| format!("cannot write to its stdin: {e}"))?;
            for index in 0..count {
                self.line.clear();
                let read = (&mut self.output)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut self.line)
                    .await
                    .map_err(|e| format!("cannot read its stdout: {e}"))?;
                if read == 0 {
                    return Err(format!(
                        "the program ended before answering event {index} of the batch"
                    ));
                }
                if self.line.last() != Some(&b'\n') {
                    return Err(format!(
                        "its answer to event {index} is longer than {MAX_LINE} bytes"
                    ));
                }
                self.line.pop();
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                batch.events[index].value = std::mem::take(&mut self.line);
            }
            Ok::<(), String>(())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(self.failed(message)),
            Err(_) => Err(StepError::Limit {
                step: self.step.clone(),
                kind: LimitKind::Time,
                batch_len: count,
                first_event: String::new(),
                message: format!(
                    "no answer for every event within {} ms (does the program flush each line?)",
                    timeout.as_millis()
                ),
            }),
        }
    }
}

/// What the command module's store holds.
struct CommandCtx {
    wasi: WasiP1Ctx,
    limiter: crate::runtime::limits::MemoryLimiter,
}

/// A WASI preview 1 command module run as a long-lived, sandboxed process.
pub struct WasiCommandStep {
    lines: Lines,
    instance: Option<JoinHandle<Result<(), String>>>,
}

impl WasiCommandStep {
    /// Compiles `module` and starts it with `args` (its `argv[1..]`).
    ///
    /// # Errors
    ///
    /// The module cannot be read, compiled or linked (it imports something
    /// other than `wasi_snapshot_preview1`, or has no `_start`).
    pub fn start(
        runtime: &Runtime,
        tenant: &str,
        step: &str,
        module: &Path,
        args: &[String],
        limits: &PipeLimits,
    ) -> Result<Self, CommandError> {
        let fail = |message: String| CommandError::Module {
            path: module.to_path_buf(),
            message,
        };
        // The runtime's engine: its epoch ticker and compile cache serve
        // command modules too.
        let engine = runtime.engine().clone();
        let compiled = runtime
            .load_module(module)
            .map_err(|e| fail(ErrorChain(&e).to_string()))?;
        if compiled.get_export("_start").is_none() {
            return Err(fail(
                "it exports no `_start`: build a command (e.g. `GOOS=wasip1 GOARCH=wasm go build`), not a library".to_owned(),
            ));
        }
        let mut linker: Linker<CommandCtx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |ctx| &mut ctx.wasi)
            .map_err(|e| fail(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&compiled)
            .map_err(|e| fail(format!("{e:#}")))?;

        let (to_guest, guest_stdin) = tokio::io::duplex(64 * 1024);
        let (guest_stdout, from_guest) = tokio::io::duplex(64 * 1024);
        let mut argv = vec![step.to_owned()];
        argv.extend(args.iter().cloned());
        // Nothing of the host: no environment, no directories. Its stderr
        // goes to the log like a component's.
        let wasi = WasiCtxBuilder::new()
            .args(&argv)
            .stdin(AsyncStdinStream::new(guest_stdin))
            .stdout(AsyncStdoutStream::new(64 * 1024, guest_stdout))
            .stderr(crate::runtime::guest_stderr(tenant, step))
            .build_p1();
        let mut store = Store::new(
            &engine,
            CommandCtx {
                wasi,
                limiter: crate::runtime::limits::MemoryLimiter::new(limits.memory_bytes),
            },
        );
        store.limiter(|ctx| &mut ctx.limiter);
        // The program runs in its own task; at every tick it yields, so a
        // spinning one shares its worker thread. Time is limited per batch
        // by the exchange's timeout.
        let timeout = limits.call_timeout();
        store.epoch_deadline_callback(|_| {
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(tokio::task::yield_now()),
            ))
        });
        store.set_epoch_deadline(1);
        let step_name = step.to_owned();
        // The task holds the runtime, whose epoch ticker makes the program
        // yield (and so lets an abort reach it).
        let runtime = runtime.clone();
        let instance = tokio::spawn(async move {
            let _runtime = runtime;
            let instance = instance_pre
                .instantiate_async(&mut store)
                .await
                .map_err(|e| format!("cannot instantiate: {e:#}"))?;
            let start = instance
                .get_typed_func::<(), ()>(&mut store, "_start")
                .map_err(|e| format!("{e:#}"))?;
            match start.call_async(&mut store, ()).await {
                Ok(()) => Ok(()),
                Err(error) => match error.downcast_ref::<wasmtime_wasi::I32Exit>() {
                    // Go ends with proc_exit(0): a normal exit.
                    Some(exit) if exit.0 == 0 => Ok(()),
                    Some(exit) => Err(format!("exited with status {}", exit.0)),
                    None => Err(format!("trapped: {error:#}")),
                },
            }
            .map_err(|message| {
                tracing::warn!(step = %step_name, %message, "command module stopped");
                message
            })
        });
        Ok(WasiCommandStep {
            lines: Lines {
                step: step.to_owned(),
                input: Box::new(to_guest),
                output: BufReader::new(Box::new(from_guest)),
                line: Vec::new(),
                timeout,
            },
            instance: Some(instance),
        })
    }
}

impl Drop for WasiCommandStep {
    fn drop(&mut self) {
        // A program still running (a failed pipeline, a spinning program)
        // is stopped at its next yield.
        if let Some(instance) = &self.instance {
            instance.abort();
        }
    }
}

#[async_trait]
impl Step for WasiCommandStep {
    fn kind(&self) -> &'static str {
        "command"
    }

    fn name(&self) -> &str {
        &self.lines.step
    }

    async fn process(&mut self, mut batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        if let Err(error) = self.lines.exchange(&mut batch).await {
            // Say why the program is gone, when it is.
            if let Some(instance) = self.instance.take_if(|task| task.is_finished()) {
                if let Ok(Err(message)) = instance.await {
                    return Err(self.lines.failed(message));
                }
            }
            return Err(error);
        }
        out.push(batch);
        Ok(())
    }

    async fn finish(&mut self, _out: &mut Vec<Batch>) -> Result<(), StepError> {
        // Close stdin: the program sees end of input and exits.
        let _ = self.lines.input.shutdown().await;
        if let Some(instance) = self.instance.take() {
            match tokio::time::timeout(self.lines.timeout, instance).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(message))) => return Err(self.lines.failed(message)),
                Ok(Err(e)) => return Err(self.lines.failed(format!("its task failed: {e}"))),
                Err(_) => {
                    return Err(self
                        .lines
                        .failed("did not exit after its input closed".to_owned()))
                }
            }
        }
        Ok(())
    }
}

/// An executable of the host, run unsandboxed with the line protocol.
pub struct ExecStep {
    lines: Lines,
    child: tokio::process::Child,
}

impl ExecStep {
    /// Starts `path` with `args`.
    ///
    /// # Errors
    ///
    /// `allowed` is false (the config did not say `"allow_unsandboxed":
    /// true`, or the host is multi-tenant), or the program cannot start.
    pub fn start(
        step: &str,
        path: &Path,
        args: &[String],
        timeout: Duration,
        allowed: Result<(), String>,
    ) -> Result<Self, CommandError> {
        allowed.map_err(|message| CommandError::Refused {
            step: step.to_owned(),
            message,
        })?;
        let mut child = tokio::process::Command::new(path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| CommandError::Spawn {
                step: step.to_owned(),
                path: path.to_path_buf(),
                source,
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(CommandError::Spawn {
                step: step.to_owned(),
                path: path.to_path_buf(),
                source: std::io::Error::other("no pipes to the child"),
            });
        };
        tracing::warn!(step, program = %path.display(), "running an unsandboxed executable step");
        Ok(ExecStep {
            lines: Lines {
                step: step.to_owned(),
                input: Box::new(stdin),
                output: BufReader::new(Box::new(stdout)),
                line: Vec::new(),
                timeout,
            },
            child,
        })
    }
}

#[async_trait]
impl Step for ExecStep {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn name(&self) -> &str {
        &self.lines.step
    }

    async fn process(&mut self, mut batch: Batch, out: &mut Vec<Batch>) -> Result<(), StepError> {
        if batch.events.is_empty() {
            return Ok(());
        }
        self.lines.exchange(&mut batch).await?;
        out.push(batch);
        Ok(())
    }

    async fn finish(&mut self, _out: &mut Vec<Batch>) -> Result<(), StepError> {
        // Dropping the pipe closes the child's stdin (a shutdown would not).
        let _ = self.lines.input.shutdown().await;
        self.lines.input = Box::new(tokio::io::sink());
        match tokio::time::timeout(self.lines.timeout, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(self.lines.failed(format!("exited with {status}"))),
            Ok(Err(e)) => Err(self.lines.failed(format!("cannot wait for it: {e}"))),
            Err(_) => Err(self
                .lines
                .failed("did not exit after its input closed".to_owned())),
        }
    }
}
