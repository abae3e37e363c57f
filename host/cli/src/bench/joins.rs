//! Joins at scale: the `joins` scenario of `plumber bench`.
//!
//! Native joins only (no WASM), exactly-once with memory state and a
//! checkpoint every `--checkpoint-ms`, so each row includes saving the
//! changed buffers. The input alternates the two inputs, `bids` (even
//! events) and `auctions` (odd events), 1 ms of event time apart; event
//! `i`'s key is `(i / 2) % 1000`:
//!
//! - **tumbling**: an inner windowed join of 2 s tumbling windows; every
//!   key has both sides in every window, so every event is released.
//! - **interval**: pairs within 100 ms either way, about one per event.
//! - **lookup**: the `auctions` events are the changelog of a table of
//!   1000 rows, each `bids` event is emitted with its key's row.

use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Delivery, Position};
use plumber::join::{Join, JoinWindow, INPUT_HEADER};
use plumber::pipeline::{Pipeline, PipelineBuilder};
use plumber::state::MemoryState;
use plumber::streams::{DiscardSink, Source, StreamError};
use plumber::Event;

use super::{measure, scaled, BenchArgs, BenchError, Engine, Table};

/// Events of each row at `--scale 1`.
pub const EVENTS: u64 = 1_000_000;
/// Keys of the input.
pub const KEYS: u64 = 1_000;
/// The tumbling join's window, a multiple of `2 * KEYS` ms.
const WINDOW_MS: u64 = 2_000;
/// The interval join's bounds, both ways.
const INTERVAL_MS: u64 = 100;

/// A finite source of the two inputs, interleaved, made as they are read.
pub struct JoinInput {
    total: u64,
    produced: u64,
}

impl JoinInput {
    /// `total` events.
    pub fn new(total: u64) -> Self {
        JoinInput { total, produced: 0 }
    }

    /// Event `i`.
    pub fn event(i: u64) -> Event {
        let input = if i.is_multiple_of(2) {
            "bids"
        } else {
            "auctions"
        };
        let mut event = Event::new(i.to_string())
            .with_key(format!("k{}", (i / 2) % KEYS))
            .with_timestamp(i);
        event
            .headers
            .push((INPUT_HEADER.to_owned(), input.to_owned()));
        event
    }
}

#[async_trait::async_trait]
impl Source for JoinInput {
    fn describe(&self) -> String {
        format!("generated join input ({} events)", self.total)
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        self.produced = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?
            .min(self.total);
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let end = self.total.min(self.produced.saturating_add(max as u64));
        if end == self.produced {
            return Ok(None);
        }
        let events = (self.produced..end).map(JoinInput::event).collect();
        self.produced = end;
        Ok(Some((events, Position::Offset(end))))
    }
}

/// The joins of the rows, by name.
fn joins() -> [(&'static str, Join); 3] {
    [
        (
            "tumbling",
            Join::window(
                "join",
                "bids",
                "auctions",
                JoinWindow::Tumbling { size_ms: WINDOW_MS },
            )
            .keyed(),
        ),
        (
            "interval",
            Join::interval("join", "bids", "auctions", INTERVAL_MS, INTERVAL_MS).keyed(),
        ),
        ("lookup", Join::lookup_table("join", "bids", "auctions")),
    ]
}

/// `JoinInput` → `join` → a discarding sink, exactly-once with fresh memory state.
fn pipeline(name: &str, join: Join, events: u64, args: &BenchArgs) -> PipelineBuilder {
    Pipeline::builder(name)
        .state(Arc::new(MemoryState::new()))
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(
            args.checkpoint_ms,
        )))
        .batch_size(args.batch_size)
        .from(JoinInput::new(events))
        .then(join)
        .to(DiscardSink::new())
}

/// The tumbling, interval and lookup rows.
///
/// # Errors
///
/// A pipeline failed.
pub async fn run(args: &BenchArgs, table: &mut Table) -> Result<(), BenchError> {
    // Whole windows, so that every event is released.
    let events = (scaled(EVENTS, args.scale) / WINDOW_MS).max(1) * WINDOW_MS;
    for (kind, join) in joins() {
        let scenario = format!("joins {kind}");
        let builder = pipeline(&scenario.replace(' ', "-"), join, events, args);
        table.push(measure(scenario, Engine::Native, 1, vec![builder]).await?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rows_release_what_the_input_implies() {
        #[derive(clap::Parser)]
        struct Options {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let options: Options =
            clap::Parser::parse_from(["bench", "--scale", "0.01", "--checkpoint-ms", "5"]);
        let mut table = Table::new(false);
        run(&options.bench, &mut table).await.unwrap();
        let rows: Vec<(String, u64, u64)> = table
            .rows()
            .iter()
            .map(|r| (r.scenario.clone(), r.events_in, r.events_out))
            .collect();
        let events = 10_000;
        // Interval pairs by nested loops: each pair is two events out.
        let mut pairs = 0;
        for a in (0..events).step_by(2) {
            for b in (1..events).step_by(2) {
                let same_key = (a / 2) % KEYS == (b / 2) % KEYS;
                pairs += u64::from(same_key && a.abs_diff(b) <= INTERVAL_MS);
            }
        }
        // A bid finds a row once its key's first auction has come.
        let found = (0..events)
            .step_by(2)
            .filter(|a| (1..*a).step_by(2).any(|b| (b / 2) % KEYS == (a / 2) % KEYS))
            .count() as u64;
        assert_eq!(
            rows,
            [
                ("joins tumbling".to_owned(), events, events),
                ("joins interval".to_owned(), events, 2 * pairs),
                ("joins lookup".to_owned(), events, 2 * found),
            ]
        );
    }
}
