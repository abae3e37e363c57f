//! Windows at scale: the `windows` scenario of `plumber bench`.
//!
//! Native windows only (no WASM), exactly-once with memory state and a
//! checkpoint every `--checkpoint-ms`, so each row includes saving the open
//! windows:
//!
//! - **tumbling**: an event-time tumbling window of 60 s keyed by the event
//!   key, one event per key (10k, 100k and 1M keys), all in the first
//!   window; the last event, at 60 s, moves the watermark to the window's
//!   end and every other key's window fires (the last key's when the input
//!   ends).
//! - **session**: an event-time session window (gap 1 s) of one key, 10k
//!   and 160k events 600 ms apart that arrive partly out of order: each
//!   block of 8 comes as 0 2 1 3 5 4 7 6, so events 2, 5 and 7 open
//!   sessions of their own that 1, 4 and 6 then bridge. Everything ends in
//!   one session, released when the input ends.
//! - **trigger**: the cost of a trigger component: an
//!   event-time tumbling window of 60 s keyed by the event key, 1k keys
//!   with 200 events each (200k at `--scale 1`), in time order, the last at
//!   60 s; once without a trigger (native) and once with `trigger-early`
//!   (`every` 10: each key's window fires early 20 times, then at its end),
//!   asked about every event (one call per key per batch).

use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Delivery, Position};
use plumber::pipeline::{Pipeline, PipelineBuilder};
use plumber::state::MemoryState;
use plumber::streams::{DiscardSink, Source, StreamError};
use plumber::window::{EventTime, TriggerSpec, Window};
use plumber::Event;

use super::{guest, measure, scaled, will_measure, BenchArgs, BenchError, Engine, Table};

/// Keys of the tumbling rows at `--scale 1`.
pub const TUMBLING_KEYS: [u64; 3] = [10_000, 100_000, 1_000_000];
/// Events of the session rows at `--scale 1`.
pub const SESSION_EVENTS: [u64; 2] = [10_000, 160_000];
/// The tumbling window's size in ms.
pub const TUMBLING_MS: u64 = 60_000;
/// The session gap.
pub const SESSION_GAP: Duration = Duration::from_millis(1_000);
/// Event time between two session events.
const SESSION_STEP_MS: u64 = 600;
/// Keys of the trigger rows.
pub const TRIGGER_KEYS: u64 = 1_000;
/// Events of the trigger rows at `--scale 1`.
pub const TRIGGER_EVENTS: u64 = 200_000;
/// `trigger-early`'s `every` in the trigger rows.
pub const TRIGGER_EVERY: u64 = 10;
/// The arrival order of each block of 8 session events.
const SESSION_ORDER: [u64; 8] = [0, 2, 1, 3, 5, 4, 7, 6];

/// What a [`WindowInput`] generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One event per key, timestamps spread over the first 60 s window; the
    /// last event is at 60 s.
    OneEventPerKey,
    /// One key, events 600 ms apart, blocks of 8 arriving as 0 2 1 3 5 4 7 6.
    OneSession,
    /// [`TRIGGER_KEYS`] keys in turn, timestamps spread over the first 60 s
    /// window; the last event is at 60 s.
    ManyPerKey,
}

/// A finite source of timestamped events made as they are read.
pub struct WindowInput {
    shape: Shape,
    total: u64,
    produced: u64,
}

impl WindowInput {
    /// `total` events of `shape`.
    pub fn new(shape: Shape, total: u64) -> Self {
        WindowInput {
            shape,
            total,
            produced: 0,
        }
    }

    /// Event `i` (in arrival order).
    pub fn event(&self, i: u64) -> Event {
        match self.shape {
            Shape::OneEventPerKey => {
                let last = self.total.saturating_sub(1).max(1);
                Event::new("1")
                    .with_key(format!("key{i:07}"))
                    .with_timestamp(i * TUMBLING_MS / last)
            }
            Shape::ManyPerKey => {
                let last = self.total.saturating_sub(1).max(1);
                Event::new("1")
                    .with_key(format!("key{:04}", i % TRIGGER_KEYS))
                    .with_timestamp(i * TUMBLING_MS / last)
            }
            Shape::OneSession => {
                let nominal = i - i % 8 + SESSION_ORDER[(i % 8) as usize];
                // A block cut short by the total keeps its events in order.
                let nominal = if nominal < self.total { nominal } else { i };
                Event::new(nominal.to_string())
                    .with_key("user")
                    .with_timestamp(nominal * SESSION_STEP_MS)
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for WindowInput {
    fn describe(&self) -> String {
        format!(
            "generated window input ({:?}, {} events)",
            self.shape, self.total
        )
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
        let events = (self.produced..end).map(|i| self.event(i)).collect();
        self.produced = end;
        Ok(Some((events, Position::Offset(end))))
    }
}

/// The window of `shape`.
pub fn window(shape: Shape) -> Window {
    match shape {
        Shape::OneEventPerKey | Shape::ManyPerKey => {
            Window::tumbling("window", Duration::from_millis(TUMBLING_MS))
                .event_time(EventTime::default())
                .keyed()
        }
        Shape::OneSession => Window::session("window", SESSION_GAP)
            .event_time(EventTime {
                max_out_of_orderness_ms: 2_000,
                ..EventTime::default()
            })
            .keyed(),
    }
}

/// `WindowInput` → the window of `shape` → a discarding sink, exactly-once
/// with fresh memory state.
pub fn pipeline(name: &str, shape: Shape, events: u64, args: &BenchArgs) -> PipelineBuilder {
    pipeline_with(name, shape, events, args, window(shape))
}

/// As [`pipeline`], through `window`.
fn pipeline_with(
    name: &str,
    shape: Shape,
    events: u64,
    args: &BenchArgs,
    window: Window,
) -> PipelineBuilder {
    Pipeline::builder(name)
        .state(Arc::new(MemoryState::new()))
        .delivery(Delivery::ExactlyOnce)
        .checkpoint(CheckpointPolicy::every(Duration::from_millis(
            args.checkpoint_ms,
        )))
        .batch_size(args.batch_size)
        .from(WindowInput::new(shape, events))
        .then(window)
        .to(DiscardSink::new())
}

/// `10000` as `10k`, `1000000` as `1M`.
fn compact(n: u64) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// The tumbling, session and trigger rows.
///
/// # Errors
///
/// A pipeline failed, or `trigger-early` is not built.
pub async fn run(args: &BenchArgs, table: &mut Table) -> Result<(), BenchError> {
    run_native(args, table).await?;
    run_trigger(args, table).await
}

/// The tumbling window of the trigger rows, with and without
/// `trigger-early`: what deciding in a component costs.
///
/// # Errors
///
/// A pipeline failed, or `trigger-early` is not built.
pub async fn run_trigger(args: &BenchArgs, table: &mut Table) -> Result<(), BenchError> {
    let events = scaled(TRIGGER_EVENTS, args.scale).max(TRIGGER_KEYS);
    let scenario = format!(
        "windows trigger {} events {} keys",
        compact(events),
        compact(TRIGGER_KEYS)
    );
    let native = pipeline(
        &format!("{}-native", scenario_name(&scenario)),
        Shape::ManyPerKey,
        events,
        args,
    );
    table.push(measure(scenario.clone(), Engine::Native, 1, vec![native]).await?);
    if will_measure(&scenario, Engine::Wasm) {
        let module = guest(&args.guests, "trigger-early")?;
        let config = serde_json::json!({ "every": TRIGGER_EVERY });
        let triggered = window(Shape::ManyPerKey).with_trigger(TriggerSpec::new(module, &config));
        // A short run first, unmeasured: it compiles the trigger into the
        // cache (the upfront compile of the guests is for pipes only).
        pipeline_with(
            &format!("{}-warmup", scenario_name(&scenario)),
            Shape::ManyPerKey,
            TRIGGER_KEYS,
            args,
            triggered.clone(),
        )
        .run()
        .await?;
        let builder = pipeline_with(
            &format!("{}-trigger", scenario_name(&scenario)),
            Shape::ManyPerKey,
            events,
            args,
            triggered,
        );
        table.push(measure(scenario, Engine::Wasm, 1, vec![builder]).await?);
    }
    Ok(())
}

/// The tumbling and session rows (native windows).
///
/// # Errors
///
/// A pipeline failed.
pub async fn run_native(args: &BenchArgs, table: &mut Table) -> Result<(), BenchError> {
    for keys in TUMBLING_KEYS {
        let keys = scaled(keys, args.scale).max(2);
        let scenario = format!("windows tumbling {} keys", compact(keys));
        let builder = pipeline(&scenario_name(&scenario), Shape::OneEventPerKey, keys, args);
        table.push(measure(scenario, Engine::Native, 1, vec![builder]).await?);
    }
    for events in SESSION_EVENTS {
        let events = scaled(events, args.scale);
        let scenario = format!("windows session {}", compact(events));
        let builder = pipeline(&scenario_name(&scenario), Shape::OneSession, events, args);
        table.push(measure(scenario, Engine::Native, 1, vec![builder]).await?);
    }
    Ok(())
}

/// A pipeline name from a scenario's.
fn scenario_name(scenario: &str) -> String {
    scenario.replace(' ', "-")
}

#[cfg(test)]
mod tests {
    use super::super::tests::read_all;
    use super::*;

    #[tokio::test]
    async fn one_event_per_key_over_the_window_then_its_end() {
        let events = read_all(&mut WindowInput::new(Shape::OneEventPerKey, 1_000), 64).await;
        assert_eq!(events.len(), 1_000);
        let keys: std::collections::HashSet<_> = events.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys.len(), 1_000);
        let times: Vec<u64> = events.iter().filter_map(|e| e.timestamp).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert!(times[..999].iter().all(|&t| t < 60_000));
        assert_eq!(times[999], 60_000);
    }

    #[tokio::test]
    async fn many_events_per_key_in_turn_over_the_window_then_its_end() {
        let events = read_all(&mut WindowInput::new(Shape::ManyPerKey, 5_000), 64).await;
        assert_eq!(events.len(), 5_000);
        let keys: std::collections::HashSet<_> = events.iter().map(|e| e.key.clone()).collect();
        assert_eq!(keys.len(), TRIGGER_KEYS as usize);
        let times: Vec<u64> = events.iter().filter_map(|e| e.timestamp).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times[4_999], 60_000);
    }

    #[tokio::test]
    async fn session_events_cover_every_step_once_partly_out_of_order() {
        for total in [16, 21] {
            let events = read_all(&mut WindowInput::new(Shape::OneSession, total), 5).await;
            let mut times: Vec<u64> = events.iter().filter_map(|e| e.timestamp).collect();
            assert_eq!(times[..4], [0, 1_200, 600, 1_800]);
            times.sort_unstable();
            let expected: Vec<u64> = (0..total).map(|i| i * SESSION_STEP_MS).collect();
            assert_eq!(times, expected, "{total}");
        }
    }

    #[tokio::test]
    async fn the_scenario_releases_every_key_and_one_whole_session() {
        #[derive(clap::Parser)]
        struct Options {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let options: Options =
            clap::Parser::parse_from(["bench", "--scale", "0.001", "--checkpoint-ms", "5"]);
        let args = options.bench;
        let mut table = Table::new(false);
        run_native(&args, &mut table).await.unwrap();
        let rows: Vec<(String, u64, u64)> = table
            .rows()
            .iter()
            .map(|r| (r.scenario.clone(), r.events_in, r.events_out))
            .collect();
        assert_eq!(
            rows,
            [
                ("windows tumbling 10 keys".to_owned(), 10, 10),
                ("windows tumbling 100 keys".to_owned(), 100, 100),
                ("windows tumbling 1k keys".to_owned(), 1_000, 1_000),
                ("windows session 10".to_owned(), 10, 10),
                ("windows session 160".to_owned(), 160, 160),
            ]
        );
    }
}
