//! The `plumber` binary.

use std::process::ExitCode;

// Events are many small buffers: mimalloc allocates and frees them about
// twice as fast as glibc's malloc on the hot path (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `plumber bench` gives freed memory back to the OS between runs, so
    // each run's peak RSS is its own.
    plumber::bench::on_release_memory(|| {
        // SAFETY: mi_collect only walks mimalloc's own heaps.
        unsafe { libmimalloc_sys::mi_collect(true) }
    });
    plumber::cli::main()
}
