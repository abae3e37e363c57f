//! The `plumber` binary.

use std::process::ExitCode;

// Events are many small buffers: mimalloc allocates and frees them about
// twice as fast as glibc's malloc on the hot path (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The NATS client logs every connection it opens at info
                // (a worker opens hundreds); plumber logs the ones lost,
                // naming the stream (streams::nats::connect_options).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,async_nats=warn")),
        )
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed) is dropped; the
        // default reports it with `eprintln!`, which panics the task that
        // logged, e.g. the one stopping the pipelines on SIGTERM.
        .log_internal_errors(false)
        .init();
    plumber_cli::cli::main()
}
