//! The seed's example through the library builder: an array of names, an
//! upper-case pipe, a lower-case pipe, a stateful count pipe, a printer.
//!
//! Build the guests first (`examples/run.sh` does both):
//! `cargo build --release --target wasm32-wasip2 --manifest-path examples/guests/Cargo.toml`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::CheckpointPolicy;
use plumber::pipeline::Pipeline;
use plumber::state::MemoryState;
use plumber::step::WasmPipe;
use plumber::streams::{ArraySource, StdoutSink};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let guests =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("guests/target/wasm32-wasip2/release");
    let report = Pipeline::builder("names")
        .state(Arc::new(MemoryState::new()))
        .checkpoint(CheckpointPolicy::every(Duration::from_secs(1)))
        .from(ArraySource::from_strings([
            "Ada", "grace", "ALAN", "ada", "Grace", "ada", "Barbara",
        ]))
        .then(WasmPipe::new("upper", guests.join("upper.wasm")))
        .then(WasmPipe::new("lower", guests.join("lower.wasm")))
        .then(
            WasmPipe::new("count", guests.join("count.wasm"))
                .config(serde_json::json!({ "separator": ": " })),
        )
        .to(StdoutSink::new())
        .run()
        .await?;
    eprintln!(
        "{} events in, {} out, {} checkpoint(s)",
        report.events_in, report.events_out, report.checkpoints
    );
    Ok(())
}
