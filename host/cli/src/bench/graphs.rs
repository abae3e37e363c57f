//! Graphs: the `graphs` scenario of `plumber bench`: what a graph's shape
//! costs against a line, on the same generated events (five words each).
//!
//! A native pass-through step, exactly-once with fresh memory state, a
//! checkpoint every `--checkpoint-ms`, discarding sinks; 2M events at
//! `--scale 1` in every row:
//!
//! - **line**: one source → the step → one sink (the baseline);
//! - **union**: two sources of half the events each → the step reading
//!   both (each event tagged with its input) → one sink;
//! - **fan-out**: one source → the step → two sinks (a copy of each batch);
//! - **union + router**: two sources → a router on the union's input
//!   header → one sink per route.
//!
//! The rows are all `native`: compare their events/s with the line's.

use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Delivery};
use plumber::pipeline::{Pipeline, PipelineBuilder, RoutePredicate, Router, INPUT_HEADER};
use plumber::state::MemoryState;
use plumber::step::NativeStep;
use plumber::streams::DiscardSink;

use super::{measure, scaled, BenchArgs, BenchError, Engine, GeneratedSource, Table};

/// Events of every row at `--scale 1`.
pub const EVENTS: u64 = 2_000_000;

/// The shapes measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One source, the step, one sink, built as a line.
    Line,
    /// Two sources into the step, one sink.
    Union,
    /// One source, the step, two sinks.
    FanOut,
    /// Two sources into a router, a sink per route.
    UnionRouter,
}

impl Layout {
    /// Every shape, in the table's order.
    pub const ALL: [Layout; 4] = [
        Layout::Line,
        Layout::Union,
        Layout::FanOut,
        Layout::UnionRouter,
    ];

    fn scenario(self) -> &'static str {
        match self {
            Layout::Line => "graphs line",
            Layout::Union => "graphs union",
            Layout::FanOut => "graphs fan-out",
            Layout::UnionRouter => "graphs union + router",
        }
    }
}

/// The pipeline of `shape` over `events` events.
pub fn pipeline(shape: Layout, events: u64, args: &BenchArgs) -> PipelineBuilder {
    let builder = Pipeline::builder(shape.scenario().replace([' ', '+'], "-"))
        .state(Arc::new(MemoryState::new()))
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(
            args.checkpoint_ms,
        )))
        .batch_size(args.batch_size);
    let pass = || NativeStep::batch("pass", |batch| Ok(batch.events));
    let half = events / 2;
    let source = |total, salt| GeneratedSource::new(total, args.seed ^ salt);
    match shape {
        Layout::Line => builder
            .from(source(events, 0))
            .then(pass())
            .to(DiscardSink::new()),
        Layout::Union => builder
            .source("left", source(half, 0))
            .source("right", source(events - half, 1))
            .then_from(["left", "right"], pass())
            .to_from("out", ["pass"], DiscardSink::new()),
        Layout::FanOut => builder
            .source("in", source(events, 0))
            .then_from(["in"], pass())
            .to_from("one", ["pass"], DiscardSink::new())
            .to_from("two", ["pass"], DiscardSink::new()),
        Layout::UnionRouter => builder
            .source("left", source(half, 0))
            .source("right", source(events - half, 1))
            .route_from(
                ["left", "right"],
                Router::new("split")
                    .route("left", RoutePredicate::header_equals(INPUT_HEADER, "left"))
                    .default_route("right"),
            )
            .to_from("left", ["split.left"], DiscardSink::new())
            .to_from("right", ["split.right"], DiscardSink::new()),
    }
}

/// The rows, one per shape.
///
/// # Errors
///
/// A pipeline failed.
pub async fn run(args: &BenchArgs, table: &mut Table) -> Result<(), BenchError> {
    let events = scaled(EVENTS, args.scale).max(2);
    for shape in Layout::ALL {
        let builder = pipeline(shape, events, args);
        table.push(measure(shape.scenario(), Engine::Native, 1, vec![builder]).await?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_shape_reads_every_event_and_writes_what_it_should() {
        #[derive(clap::Parser)]
        struct Options {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let options: Options =
            clap::Parser::parse_from(["bench", "--scale", "0.0005", "--checkpoint-ms", "5"]);
        let args = options.bench;
        let mut table = Table::new(false);
        run(&args, &mut table).await.unwrap();
        let rows: Vec<(String, u64, u64)> = table
            .rows()
            .iter()
            .map(|r| (r.scenario.clone(), r.events_in, r.events_out))
            .collect();
        assert_eq!(
            rows,
            [
                ("graphs line".to_owned(), 1_000, 1_000),
                ("graphs union".to_owned(), 1_000, 1_000),
                // Every event to both sinks.
                ("graphs fan-out".to_owned(), 1_000, 2_000),
                // Every event to exactly one route.
                ("graphs union + router".to_owned(), 1_000, 1_000),
            ]
        );
    }
}
