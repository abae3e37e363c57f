//! Join results against straightforward references (nested loops and
//! grouping over every event, with the watermark followed event by
//! event), restarts from a checkpoint, bounds and idle inputs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::state::MemoryState;
use crate::streams::channel_sink;

const LEFT: &str = "bids";
const RIGHT: &str = "auctions";
/// How far the right input's times run behind the left's, ms.
const RIGHT_LAG: u64 = 150;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn header<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event
        .headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An event of `input` with `key` at `ts`, its value unique (`<input>-<n>`).
fn event(input: &str, key: &str, ts: u64, n: usize) -> Event {
    let mut event = Event::new(format!("{input}-{n}"))
        .with_key(key)
        .with_timestamp(ts);
    event
        .headers
        .push((INPUT_HEADER.to_owned(), input.to_owned()));
    event
}

/// A small deterministic generator (xorshift).
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `count` events of both inputs over `keys` keys, time advancing 7 ms an
/// event, each up to `disorder` ms out of order, and about one in twenty
/// `late_by` ms behind (late for sure once the watermark has started). The
/// right input runs [`RIGHT_LAG`] ms behind the left, so that its watermark
/// is the lower one.
fn generate(seed: u64, count: usize, keys: u64, disorder: u64, late_by: u64) -> Vec<Event> {
    let mut random = Random(seed);
    (0..count)
        .map(|n| {
            let now = 1_000_000 + 7 * n as u64;
            let input = if random.below(2) == 0 { LEFT } else { RIGHT };
            let key = format!("k{}", random.below(keys));
            let now = if input == RIGHT { now - RIGHT_LAG } else { now };
            let ts = if n > 40 && random.below(20) == 0 {
                now - late_by
            } else {
                now - random.below(disorder + 1)
            };
            event(input, &key, ts, n)
        })
        .collect()
}

fn side_of(event: &Event) -> usize {
    match header(event, INPUT_HEADER) {
        Some(LEFT) => 0,
        _ => 1,
    }
}

/// The documented watermark, followed event by event: the minimum over
/// the two inputs of (highest timestamp - `disorder`), `None` until both
/// have sent, never going back. Calls `visit` with each event and the
/// watermark it met; `visit` says whether the event was taken (a late
/// event does not move its input's highest timestamp).
fn follow_watermark(
    events: &[Event],
    disorder: u64,
    mut visit: impl FnMut(&Event, Option<u64>) -> bool,
) {
    let mut highest: [Option<u64>; 2] = [None, None];
    let mut watermark: Option<u64> = None;
    for event in events {
        let ts = event.timestamp.unwrap();
        if visit(event, watermark) {
            let side = side_of(event);
            highest[side] = Some(highest[side].map_or(ts, |h| h.max(ts)));
        }
        if let [Some(l), Some(r)] = highest {
            let candidate = l.min(r).saturating_sub(disorder);
            watermark = Some(watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }
}

/// A released window as (key, start, end, left values, right values), values sorted.
type Released = (String, u64, u64, Vec<String>, Vec<String>);

fn released_windows(batches: &[Batch]) -> Vec<Released> {
    let mut all: Vec<Released> = batches
        .iter()
        .map(|batch| {
            let info = batch.window.as_ref().expect("window info");
            let mut sides = [Vec::new(), Vec::new()];
            let mut seen_right = false;
            for event in &batch.events {
                let side = header(event, SIDE_HEADER).expect("side header");
                // The left events come first, then the right ones.
                assert!(!(seen_right && side == "left"), "left after right");
                seen_right |= side == "right";
                let index = usize::from(side == "right");
                assert_eq!(index, side_of(event), "side header matches the input");
                sides[index].push(text(&event.value));
            }
            let [mut left, mut right] = sides;
            left.sort();
            right.sort();
            (
                text(info.key.as_deref().unwrap_or_default()),
                info.start,
                info.end,
                left,
                right,
            )
        })
        .collect();
    all.sort();
    all
}

/// The windows covering `ts`: `[start, start + size)` for starts every `slide`.
fn covering(ts: u64, size: u64, slide: u64) -> Vec<(u64, u64)> {
    (0..=ts / slide)
        .map(|k| k * slide)
        .filter(|start| start + size > ts)
        .map(|start| (start, start + size))
        .collect()
}

/// The reference of a tumbling or sliding join: every taken event in every
/// window covering it that the watermark had not passed; per key and
/// window, released by `how`.
fn reference_windows(
    events: &[Event],
    size: u64,
    slide: u64,
    disorder: u64,
    how: How,
) -> Vec<Released> {
    let mut groups: BTreeMap<(String, u64, u64), [Vec<String>; 2]> = BTreeMap::new();
    follow_watermark(events, disorder, |event, watermark| {
        let ts = event.timestamp.unwrap();
        let open: Vec<(u64, u64)> = covering(ts, size, slide)
            .into_iter()
            .filter(|(_, end)| watermark.is_none_or(|w| *end > w))
            .collect();
        for (start, end) in &open {
            let key = text(event.key.as_deref().unwrap());
            groups.entry((key, *start, *end)).or_default()[side_of(event)].push(text(&event.value));
        }
        !open.is_empty()
    });
    released_by(groups, how)
}

fn released_by(groups: BTreeMap<(String, u64, u64), [Vec<String>; 2]>, how: How) -> Vec<Released> {
    let mut all: Vec<Released> = groups
        .into_iter()
        .filter(|(_, [left, right])| match how {
            How::Inner => !left.is_empty() && !right.is_empty(),
            How::Left => !left.is_empty(),
        })
        .map(|((key, start, end), [mut left, mut right])| {
            left.sort();
            right.sort();
            (key, start, end, left, right)
        })
        .collect();
    all.sort();
    all
}

/// The reference of a session join on data whose only late events are far
/// behind every session: per key, the taken events sorted by time, a new
/// session wherever the next event is more than `gap` after the session's
/// last one.
fn reference_sessions(events: &[Event], gap: u64, disorder: u64, how: How) -> Vec<Released> {
    let mut taken: BTreeMap<String, Vec<(u64, usize, String)>> = BTreeMap::new();
    follow_watermark(events, disorder, |event, watermark| {
        let ts = event.timestamp.unwrap();
        let key = text(event.key.as_deref().unwrap());
        let near_taken = taken
            .get(&key)
            .is_some_and(|list| list.iter().any(|(t, _, _)| t.abs_diff(ts) <= gap));
        let late = watermark.is_some_and(|w| ts + gap <= w) && !near_taken;
        if !late {
            taken
                .entry(key)
                .or_default()
                .push((ts, side_of(event), text(&event.value)));
        }
        !late
    });
    let mut groups: BTreeMap<(String, u64, u64), [Vec<String>; 2]> = BTreeMap::new();
    for (key, mut list) in taken {
        list.sort();
        let mut session: Option<(u64, u64, [Vec<String>; 2])> = None;
        for (ts, side, value) in list {
            match &mut session {
                Some((_, end, sides)) if ts <= *end => {
                    *end = (*end).max(ts + gap);
                    sides[side].push(value);
                }
                _ => {
                    if let Some((start, end, sides)) = session.take() {
                        groups.insert((key.clone(), start, end), sides);
                    }
                    let mut sides = [Vec::new(), Vec::new()];
                    sides[side].push(value);
                    session = Some((ts, ts + gap, sides));
                }
            }
        }
        if let Some((start, end, sides)) = session {
            groups.insert((key.clone(), start, end), sides);
        }
    }
    released_by(groups, how)
}

/// A pair as (key, left value, right value).
type Pair = (String, String, String);

fn released_pairs(batches: &[Batch]) -> Vec<Pair> {
    let mut pairs = Vec::new();
    for batch in batches {
        assert!(batch.window.is_none());
        assert_eq!(batch.events.len() % 2, 0);
        for pair in batch.events.chunks(2) {
            let [left, right] = pair else { unreachable!() };
            assert_eq!(header(left, SIDE_HEADER), Some("left"));
            assert_eq!(header(right, SIDE_HEADER), Some("right"));
            assert_eq!(left.key, right.key);
            pairs.push((
                text(left.key.as_deref().unwrap()),
                text(&left.value),
                text(&right.value),
            ));
        }
    }
    pairs.sort();
    pairs
}

/// The reference of an interval join: an event is late when its time is
/// below the watermark; every pair of taken events of one key within the
/// bounds, by nested loops.
fn reference_pairs(events: &[Event], lower: u64, upper: u64, disorder: u64) -> Vec<Pair> {
    let mut taken = Vec::new();
    follow_watermark(events, disorder, |event, watermark| {
        let late = watermark.is_some_and(|w| event.timestamp.unwrap() < w);
        if !late {
            taken.push(event.clone());
        }
        !late
    });
    let mut pairs = Vec::new();
    for a in taken.iter().filter(|e| side_of(e) == 0) {
        for b in taken.iter().filter(|e| side_of(e) == 1) {
            let (at, bt) = (a.timestamp.unwrap(), b.timestamp.unwrap());
            if a.key == b.key && at.saturating_sub(lower) <= bt && bt <= at + upper {
                pairs.push((
                    text(a.key.as_deref().unwrap()),
                    text(&a.value),
                    text(&b.value),
                ));
            }
        }
    }
    pairs.sort();
    pairs
}

async fn start(join: Join, state: &SharedState, restore: bool) -> JoinStep {
    let options = JoinOptions {
        restore,
        checkpoint_on_close: None,
    };
    JoinStep::restore(join, "t", "p", state, None, &options)
        .await
        .expect("join starts")
}

/// Feeds `events` in batches of 1 to 16 and finishes; returns the output.
async fn run(join: Join, events: &[Event]) -> Vec<Batch> {
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = start(join, &state, true).await;
    let mut out = Vec::new();
    for batch in batches(events) {
        step.process(batch, &mut out).await.expect("process");
    }
    step.finish(&mut out).await.expect("finish");
    out
}

fn batches(events: &[Event]) -> Vec<Batch> {
    let mut random = Random(99);
    let mut batches = Vec::new();
    let mut rest = events;
    while !rest.is_empty() {
        let n = (1 + random.below(16) as usize).min(rest.len());
        let (head, tail) = rest.split_at(n);
        batches.push(Batch::new(head.to_vec()));
        rest = tail;
    }
    batches
}

fn tumbling(how: How) -> Join {
    Join::window("j", LEFT, RIGHT, JoinWindow::Tumbling { size_ms: 100 })
        .how(how)
        .keyed()
        .max_out_of_orderness_ms(30)
}

#[tokio::test]
async fn tumbling_joins_match_the_reference() {
    for how in [How::Inner, How::Left] {
        for seed in [1, 2, 3] {
            let events = generate(seed, 2_000, 5, 30, 400);
            let out = run(tumbling(how), &events).await;
            let expected = reference_windows(&events, 100, 100, 30, how);
            assert!(expected.len() > 50, "the data has windows to join");
            assert_eq!(released_windows(&out), expected, "{how:?} seed {seed}");
            let info = out[0].window.as_ref().unwrap();
            assert!(info.key.is_some() && info.end - info.start == 100);
        }
    }
}

#[tokio::test]
async fn inner_and_left_differ_where_only_the_left_side_has_events() {
    let events = generate(7, 2_000, 5, 30, 400);
    let inner = released_windows(&run(tumbling(How::Inner), &events).await);
    let left = released_windows(&run(tumbling(How::Left), &events).await);
    assert!(left.len() > inner.len());
    assert!(left.iter().any(|(_, _, _, _, right)| right.is_empty()));
    assert!(inner
        .iter()
        .all(|(_, _, _, l, r)| !l.is_empty() && !r.is_empty()));
}

#[tokio::test]
async fn sliding_joins_match_the_reference() {
    for how in [How::Inner, How::Left] {
        let events = generate(11, 1_500, 4, 30, 400);
        let join = Join::window(
            "j",
            LEFT,
            RIGHT,
            JoinWindow::Sliding {
                size_ms: 100,
                slide_ms: 25,
            },
        )
        .how(how)
        .keyed()
        .max_out_of_orderness_ms(30);
        let out = run(join, &events).await;
        let expected = reference_windows(&events, 100, 25, 30, how);
        assert!(expected.len() > 100);
        assert_eq!(released_windows(&out), expected, "{how:?}");
    }
}

#[tokio::test]
async fn session_joins_match_the_reference() {
    for how in [How::Inner, How::Left] {
        // Ten keys make gaps; late events are far behind every session.
        let events = generate(5, 2_000, 10, 20, 500_000);
        let join = Join::window("j", LEFT, RIGHT, JoinWindow::Session { gap_ms: 40 })
            .how(how)
            .keyed()
            .max_out_of_orderness_ms(20);
        let out = run(join, &events).await;
        let expected = reference_sessions(&events, 40, 20, how);
        assert!(expected.len() > 20);
        assert_eq!(released_windows(&out), expected, "{how:?}");
    }
}

#[tokio::test]
async fn interval_joins_match_the_reference() {
    for (lower, upper) in [(20, 50), (0, 0), (100, 10)] {
        let events = generate(3, 2_000, 5, 30, 400);
        let join = Join::interval("j", LEFT, RIGHT, lower, upper)
            .keyed()
            .max_out_of_orderness_ms(30);
        let counters = join.counters();
        let out = run(join, &events).await;
        let expected = reference_pairs(&events, lower, upper, 30);
        assert!(lower == 0 || expected.len() > 100, "{}", expected.len());
        assert_eq!(released_pairs(&out), expected, "[{lower}, {upper}]");
        assert!(counters.late.load(Ordering::Relaxed) > 0);
    }
}

#[tokio::test]
async fn late_events_are_counted_per_the_watermark() {
    let events = generate(1, 2_000, 5, 30, 400);
    let mut late = 0;
    follow_watermark(&events, 30, |event, watermark| {
        let ts = event.timestamp.unwrap();
        let is_late = watermark.is_some_and(|w| ts - ts % 100 + 100 <= w);
        late += usize::from(is_late);
        !is_late
    });
    let join = tumbling(How::Inner);
    let counters = join.counters();
    run(join, &events).await;
    assert!(late > 10);
    assert_eq!(counters.late.load(Ordering::Relaxed), late as u64);
}

/// Commits `writes` to `state` as a checkpoint would.
async fn commit(state: &SharedState, writes: WriteSet) {
    for (key, value) in writes {
        match value {
            Some(value) => state.set(&key, &value).await.unwrap(),
            None => state.delete(&key).await.unwrap(),
        }
    }
}

/// Runs `events` with checkpoints every few batches, stops without a
/// checkpoint after `crash_after` batches (what came after the last
/// checkpoint is lost, output included), restarts from the state and
/// replays from the last checkpoint; returns the output the sink kept.
async fn run_with_restart(
    make: impl Fn() -> Join,
    events: &[Event],
    crash_after: usize,
) -> Vec<Batch> {
    let state: SharedState = Arc::new(MemoryState::new());
    let batches = batches(events);
    let mut committed_output = Vec::new();
    let mut checkpoint = 0;
    {
        let mut step = start(make(), &state, true).await;
        let mut out = Vec::new();
        for (n, batch) in batches.iter().enumerate().take(crash_after) {
            step.process(batch.clone(), &mut out).await.unwrap();
            if n % 5 == 4 {
                commit(&state, step.take_writes()).await;
                committed_output.append(&mut out);
                checkpoint = n + 1;
            }
        }
        // Crash: `out` since the checkpoint is lost.
    }
    let mut step = start(make(), &state, true).await;
    let mut out = Vec::new();
    for batch in &batches[checkpoint..] {
        step.process(batch.clone(), &mut out).await.unwrap();
    }
    step.finish(&mut out).await.unwrap();
    committed_output.append(&mut out);
    committed_output
}

#[tokio::test]
async fn a_restart_from_a_checkpoint_continues_exactly() {
    let events = generate(21, 1_200, 6, 30, 400);
    let kinds: Vec<Box<dyn Fn() -> Join>> = vec![
        Box::new(|| tumbling(How::Left)),
        Box::new(|| {
            Join::window(
                "j",
                LEFT,
                RIGHT,
                JoinWindow::Sliding {
                    size_ms: 100,
                    slide_ms: 50,
                },
            )
            .keyed()
            .max_out_of_orderness_ms(30)
        }),
        Box::new(|| {
            Join::window("j", LEFT, RIGHT, JoinWindow::Session { gap_ms: 30 })
                .keyed()
                .max_out_of_orderness_ms(30)
        }),
        Box::new(|| {
            Join::interval("j", LEFT, RIGHT, 30, 60)
                .keyed()
                .max_out_of_orderness_ms(30)
        }),
    ];
    for make in kinds {
        let whole = run(make(), &events).await;
        for crash_after in [3, 37, 61] {
            let restarted = run_with_restart(&make, &events, crash_after).await;
            assert_eq!(
                restarted,
                whole,
                "{:?}, crash after {crash_after} batches",
                make().kind
            );
        }
    }
}

#[tokio::test]
async fn a_restart_without_restore_deletes_what_was_saved() {
    let state: SharedState = Arc::new(MemoryState::new());
    let events = generate(2, 300, 4, 30, 400);
    let mut step = start(tumbling(How::Inner), &state, true).await;
    let mut out = Vec::new();
    step.process(Batch::new(events), &mut out).await.unwrap();
    commit(&state, step.take_writes()).await;
    let prefix = Namespace::for_join("t", "p", "j");
    assert!(state.scan_prefix(prefix.prefix()).await.unwrap().len() > 1);
    let mut fresh = start(tumbling(How::Inner), &state, false).await;
    assert_eq!(fresh.buffered_events(), Some(0));
    commit(&state, fresh.take_writes()).await;
    assert!(state.scan_prefix(prefix.prefix()).await.unwrap().is_empty());
}

#[tokio::test]
async fn only_changed_keys_are_written_at_a_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = start(tumbling(How::Inner), &state, true).await;
    let mut out = Vec::new();
    let first = vec![
        event(LEFT, "a", 10, 0),
        event(LEFT, "b", 10, 1),
        event(RIGHT, "c", 10, 2),
    ];
    step.process(Batch::new(first), &mut out).await.unwrap();
    let writes = step.take_writes();
    // Three keys and the watermarks.
    assert_eq!(writes.len(), 4);
    commit(&state, writes).await;
    // Not past the right input's highest time: the watermarks stay.
    step.process(Batch::new(vec![event(RIGHT, "a", 5, 3)]), &mut out)
        .await
        .unwrap();
    let writes = step.take_writes();
    let namespace = Namespace::for_join("t", "p", "j");
    assert_eq!(
        writes.keys().cloned().collect::<Vec<_>>(),
        vec![key_entry(&namespace, &Some(b"a".to_vec()))]
    );
}

#[tokio::test]
async fn the_bound_fails_the_pipeline_by_default() {
    let join = tumbling(How::Inner).max_buffered_events(50);
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = start(join, &state, true).await;
    let mut out = Vec::new();
    // One input only: the watermark never moves, nothing is released.
    let events: Vec<Event> = (0..51)
        .map(|n| event(LEFT, "k", 10 * n as u64, n))
        .collect();
    let error = step
        .process(Batch::new(events), &mut out)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("max_buffered_events = 50"), "{error}");
    assert!(error.contains("`j`"), "{error}");
}

#[tokio::test]
async fn drop_oldest_keeps_the_buffers_within_the_bound() {
    for join in [
        tumbling(How::Inner),
        Join::interval("j", LEFT, RIGHT, 50, 50).keyed(),
    ] {
        let counters = join.counters();
        let join = join
            .max_buffered_events(40)
            .on_overflow(JoinOverflow::DropOldest);
        let state: SharedState = Arc::new(MemoryState::new());
        let mut step = start(join, &state, true).await;
        let mut out = Vec::new();
        // The right input is silent: without the bound everything stays.
        for n in 0..1_000 {
            let batch = Batch::new(vec![event(LEFT, &format!("k{}", n % 7), 10 * n as u64, n)]);
            step.process(batch, &mut out).await.unwrap();
            assert!(step.buffered_events().unwrap() <= 40);
        }
        assert!(counters.overflow_dropped.load(Ordering::Relaxed) >= 900);
        assert_eq!(counters.high_water.load(Ordering::Relaxed), 40);
    }
}

#[tokio::test]
async fn drop_oldest_drops_the_oldest_window() {
    let join = tumbling(How::Left)
        .max_buffered_events(2)
        .on_overflow(JoinOverflow::DropOldest);
    let events = vec![
        event(LEFT, "a", 10, 0),
        event(LEFT, "b", 110, 1),
        event(LEFT, "c", 210, 2),
    ];
    let out = run(join, &events).await;
    let windows: Vec<u64> = released_windows(&out).iter().map(|w| w.1).collect();
    assert_eq!(windows, vec![100, 200]);
}

/// The most events held at once over `count` generated events.
async fn high_water(join: Join, count: usize) -> u64 {
    let counters = join.counters();
    run(join, &generate(8, count, 20, 30, 400)).await;
    counters.high_water.load(Ordering::Relaxed)
}

#[tokio::test]
async fn buffers_stay_flat_as_the_input_grows() {
    let makers: [fn() -> Join; 3] = [
        || tumbling(How::Inner),
        || {
            Join::window("j", LEFT, RIGHT, JoinWindow::Session { gap_ms: 20 })
                .keyed()
                .max_out_of_orderness_ms(30)
        },
        || {
            Join::interval("j", LEFT, RIGHT, 40, 40)
                .keyed()
                .max_out_of_orderness_ms(30)
        },
    ];
    for make in makers {
        let short = high_water(make(), 2_000).await;
        let long = high_water(make(), 40_000).await;
        // A window of 100 ms holds about 15 events at 7 ms an event.
        assert!(short > 5 && short < 200, "{short}");
        assert!(
            long <= short + short / 2,
            "{short} events held over 2 000, {long} over 40 000"
        );
    }
}

fn dead_letter_sink() -> (DeadLetters, tokio::sync::mpsc::Receiver<Event>) {
    let (sink, letters) = channel_sink(64);
    let recent = Arc::new(crate::recent::Recent::new(4));
    let (dead_letters, _task) = crate::dead_letter::spawn(Box::new(sink), recent);
    (dead_letters, letters)
}

#[tokio::test]
async fn late_and_foreign_events_go_to_the_dead_letter_with_their_input() {
    let (dead_letters, mut letters) = dead_letter_sink();
    let state: SharedState = Arc::new(MemoryState::new());
    let join = tumbling(How::Inner).late(LatePolicy::DeadLetter);
    let mut step = JoinStep::restore(
        join,
        "t",
        "p",
        &state,
        Some(dead_letters),
        &JoinOptions::default(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let events = vec![
        event(LEFT, "a", 1_000, 0),
        event(RIGHT, "a", 1_000, 1),
        // The watermark is 970: window [800, 900) has closed.
        event(RIGHT, "a", 850, 2),
        event("persons", "a", 1_000, 3),
        Event::new("untagged").with_timestamp(1_000),
        {
            let mut untimed = Event::new("untimed").with_key("a");
            untimed
                .headers
                .push((INPUT_HEADER.to_owned(), LEFT.to_owned()));
            untimed
        },
    ];
    step.process(Batch::new(events), &mut out).await.unwrap();
    let late = letters.recv().await.unwrap();
    assert_eq!(text(&late.value), format!("{RIGHT}-2"));
    assert_eq!(
        header(&late, crate::dead_letter::REASON_HEADER),
        Some(format!("late event of input `{RIGHT}`").as_str())
    );
    assert_eq!(header(&late, crate::dead_letter::STEP_HEADER), Some("j"));
    let foreign = letters.recv().await.unwrap();
    assert!(header(&foreign, crate::dead_letter::REASON_HEADER)
        .unwrap()
        .contains("input `persons`, which is neither side"));
    let untagged = letters.recv().await.unwrap();
    assert!(header(&untagged, crate::dead_letter::REASON_HEADER)
        .unwrap()
        .contains("without the `plumber-input` header"));
    let untimed = letters.recv().await.unwrap();
    assert_eq!(
        header(&untimed, crate::dead_letter::REASON_HEADER),
        Some(format!("event without a timestamp of input `{LEFT}`").as_str())
    );
}

#[tokio::test]
async fn a_foreign_event_without_a_dead_letter_sink_fails() {
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = start(tumbling(How::Inner), &state, true).await;
    let error = step
        .process(
            Batch::new(vec![event("persons", "a", 1, 0)]),
            &mut Vec::new(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("input `persons`"), "{error}");
    assert!(error.contains("no dead-letter sink"), "{error}");
}

#[test]
fn the_watermark_is_the_minimum_over_active_inputs() {
    let mut marks = InputWatermarks::new(10, Some(1_000), 0);
    marks.arrived(Side::Left, 0);
    marks.observe(Side::Left, 500);
    // The right input has not spoken and is not idle yet.
    assert_eq!(marks.update(100), None);
    // At 1 000 both have been quiet for the idle timeout: the highest holds.
    assert_eq!(marks.update(1_000), Some(490));
    marks.arrived(Side::Left, 1_200);
    marks.observe(Side::Left, 700);
    assert_eq!(marks.update(1_200), Some(690));
    // The right input sends again: the minimum holds, and never goes back.
    marks.arrived(Side::Right, 1_300);
    marks.observe(Side::Right, 300);
    assert_eq!(marks.update(1_300), None);
    assert_eq!(marks.watermark(), Some(690));
    marks.arrived(Side::Left, 1_400);
    marks.observe(Side::Left, 900);
    marks.arrived(Side::Right, 1_400);
    marks.observe(Side::Right, 800);
    assert_eq!(marks.update(1_400), Some(790));
    // Both quiet: the highest holds.
    assert_eq!(marks.update(2_400), Some(890));
    assert_eq!(marks.next_idle_at(1_400), Some(2_400));
    assert_eq!(marks.next_idle_at(2_400), None);
}

#[test]
fn without_an_idle_timeout_a_silent_input_holds_the_watermark() {
    let mut marks = InputWatermarks::new(0, None, 0);
    marks.arrived(Side::Left, 0);
    marks.observe(Side::Left, 500);
    assert_eq!(marks.update(1_000_000), None);
    assert_eq!(marks.next_idle_at(0), None);
}

#[tokio::test(start_paused = true)]
async fn an_idle_input_lets_the_windows_close_on_a_timer() {
    let clock = WindowClock::starting_at(0);
    let join = tumbling(How::Left).idle_timeout_ms(1_000).clock(clock);
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = start(join, &state, true).await;
    let mut out = Vec::new();
    let events = vec![event(LEFT, "a", 10, 0), event(LEFT, "a", 250, 1)];
    step.process(Batch::new(events), &mut out).await.unwrap();
    // The right input has not spoken: nothing closes yet.
    assert!(out.is_empty());
    let at = step.timer().expect("a timer for the idle input");
    assert_eq!(at, clock.instant_at(1_000));
    tokio::time::sleep_until(at).await;
    step.wake(&mut out).await.unwrap();
    // Both inputs are idle now: the left's watermark (220) closes [0, 100).
    let windows = released_windows(&out);
    assert_eq!(windows.len(), 1);
    assert_eq!((windows[0].1, windows[0].2), (0, 100));
    assert_eq!(step.timer(), None);
    // Without the timeout the window stays open.
    let join = tumbling(How::Left).clock(WindowClock::starting_at(0));
    let mut step = start(join, &state, false).await;
    let mut out = Vec::new();
    let events = vec![event(LEFT, "a", 10, 0), event(LEFT, "a", 250, 1)];
    step.process(Batch::new(events), &mut out).await.unwrap();
    assert_eq!(step.timer(), None);
    tokio::time::sleep(Duration::from_secs(60)).await;
    step.wake(&mut out).await.unwrap();
    assert!(out.is_empty());
}

#[test]
fn settings_that_cannot_work_name_their_field() {
    let cases = [
        (
            Join::window("j", "a", "a", JoinWindow::Tumbling { size_ms: 1 }),
            "right",
        ),
        (
            Join::window("j", "", "b", JoinWindow::Tumbling { size_ms: 1 }),
            "left",
        ),
        (
            Join::window("j", "a", "b", JoinWindow::Tumbling { size_ms: 0 }),
            "size_ms",
        ),
        (
            Join::window(
                "j",
                "a",
                "b",
                JoinWindow::Sliding {
                    size_ms: 10,
                    slide_ms: 20,
                },
            ),
            "slide_ms",
        ),
        (
            Join::window("j", "a", "b", JoinWindow::Session { gap_ms: 0 }),
            "gap_ms",
        ),
        (
            Join::interval("j", "a", "b", 1, 1).max_buffered_events(0),
            "max_buffered_events",
        ),
        (
            Join::interval("j", "a", "b", 1, 1).idle_timeout_ms(0),
            "idle_timeout_ms",
        ),
    ];
    for (join, field) in cases {
        assert_eq!(join.validate().unwrap_err().field, field);
    }
}

/// `events` with the right input made a changelog: one in five deletes
/// its key's row, the others insert, update or upsert it (or say nothing,
/// which upserts).
fn as_changelog(mut events: Vec<Event>) -> Vec<Event> {
    let mut random = Random(5);
    for event in events.iter_mut().filter(|e| side_of(e) == 1) {
        let op = ["delete", "insert", "update", "upsert", ""][random.below(5) as usize];
        if !op.is_empty() {
            event.headers.push((OP_HEADER.to_owned(), op.to_owned()));
        }
    }
    events
}

/// What a lookup join emits, as (key, stream value, row value).
type Lookup = (String, String, Option<String>);

fn released_lookups(batches: &[Batch]) -> Vec<Lookup> {
    let mut all = Vec::new();
    let events: Vec<&Event> = batches.iter().flat_map(|b| &b.events).collect();
    let mut at = 0;
    while at < events.len() {
        let stream = events[at];
        assert_eq!(header(stream, SIDE_HEADER), Some("left"));
        let row = events
            .get(at + 1)
            .filter(|next| header(next, SIDE_HEADER) == Some("right"));
        if let Some(row) = row {
            assert_eq!(row.key, stream.key);
        }
        all.push((
            text(stream.key.as_deref().unwrap()),
            text(&stream.value),
            row.map(|row| text(&row.value)),
        ));
        at += 1 + usize::from(row.is_some());
    }
    all
}

/// The reference of a lookup join: the events in order, a map from key
/// to the last row set and not deleted since.
fn reference_lookups(events: &[Event], how: How) -> Vec<Lookup> {
    let mut table: BTreeMap<String, String> = BTreeMap::new();
    let mut all = Vec::new();
    for event in events {
        let key = text(event.key.as_deref().unwrap());
        if side_of(event) == 1 {
            if header(event, OP_HEADER) == Some("delete") {
                table.remove(&key);
            } else {
                table.insert(key, text(&event.value));
            }
            continue;
        }
        let row = table.get(&key).cloned();
        if row.is_some() || how == How::Left {
            all.push((key, text(&event.value), row));
        }
    }
    all
}

#[tokio::test]
async fn lookup_joins_match_the_reference() {
    for how in [How::Inner, How::Left] {
        let events = as_changelog(generate(17, 2_000, 8, 30, 400));
        let out = run(Join::lookup_table("j", LEFT, RIGHT).how(how), &events).await;
        let expected = reference_lookups(&events, how);
        assert!(expected.iter().filter(|l| l.2.is_some()).count() > 300);
        assert_eq!(released_lookups(&out), expected, "{how:?}");
        assert!(out.iter().all(|batch| batch.window.is_none()));
    }
    let events = as_changelog(generate(17, 2_000, 8, 30, 400));
    let left = reference_lookups(&events, How::Left);
    assert!(
        left.iter().any(|l| l.2.is_none()),
        "some events find no row"
    );
}

#[tokio::test]
async fn a_lookup_table_survives_a_restart() {
    let events = as_changelog(generate(23, 1_200, 6, 30, 400));
    let make = || Join::lookup_table("j", LEFT, RIGHT).how(How::Left);
    let whole = run(make(), &events).await;
    for crash_after in [3, 37, 61] {
        assert_eq!(run_with_restart(make, &events, crash_after).await, whole);
    }
}

#[tokio::test]
async fn a_full_lookup_table_drops_the_least_recently_set_row() {
    let join = Join::lookup_table("j", LEFT, RIGHT)
        .how(How::Left)
        .max_buffered_events(3)
        .on_overflow(JoinOverflow::DropOldest);
    let counters = join.counters();
    let events = vec![
        event(RIGHT, "k1", 1, 0),
        event(RIGHT, "k2", 1, 1),
        event(RIGHT, "k3", 1, 2),
        // Set again: no longer the oldest.
        event(RIGHT, "k1", 1, 3),
        event(RIGHT, "k4", 1, 4),
        event(LEFT, "k1", 1, 5),
        event(LEFT, "k2", 1, 6),
        event(LEFT, "k4", 1, 7),
    ];
    let out = run(join, &events).await;
    let rows: Vec<Option<String>> = released_lookups(&out).into_iter().map(|l| l.2).collect();
    assert_eq!(
        rows,
        vec![Some(format!("{RIGHT}-3")), None, Some(format!("{RIGHT}-4"))]
    );
    assert_eq!(counters.overflow_dropped.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn changelog_events_without_a_key_or_with_an_unknown_op_are_refused() {
    let (dead_letters, mut letters) = dead_letter_sink();
    let state: SharedState = Arc::new(MemoryState::new());
    let join = Join::lookup_table("j", LEFT, RIGHT);
    let mut step = JoinStep::restore(
        join,
        "t",
        "p",
        &state,
        Some(dead_letters),
        &JoinOptions::default(),
    )
    .await
    .unwrap();
    let mut keyless = Event::new("row");
    keyless
        .headers
        .push((INPUT_HEADER.to_owned(), RIGHT.to_owned()));
    let mut unknown = event(RIGHT, "k", 1, 1);
    unknown
        .headers
        .push((OP_HEADER.to_owned(), "merge".to_owned()));
    // Events without a timestamp are fine: a lookup has no event time.
    let mut stream = Event::new("bid").with_key("k");
    stream
        .headers
        .push((INPUT_HEADER.to_owned(), LEFT.to_owned()));
    step.process(Batch::new(vec![keyless, unknown, stream]), &mut Vec::new())
        .await
        .unwrap();
    let reason = |event: &Event| {
        header(event, crate::dead_letter::REASON_HEADER)
            .unwrap()
            .to_owned()
    };
    assert!(reason(&letters.recv().await.unwrap()).contains("without a key"));
    assert!(reason(&letters.recv().await.unwrap()).contains("`merge`"));
    assert_eq!(step.buffered_events(), Some(0));
}

#[tokio::test]
async fn a_release_asks_for_a_checkpoint_when_windows_close_checkpoints() {
    let requests = Arc::new(tokio::sync::Notify::new());
    let options = JoinOptions {
        restore: true,
        checkpoint_on_close: Some(requests.clone()),
    };
    let state: SharedState = Arc::new(MemoryState::new());
    let mut step = JoinStep::restore(tumbling(How::Inner), "t", "p", &state, None, &options)
        .await
        .unwrap();
    let asked = || async {
        tokio::time::timeout(Duration::from_millis(10), requests.notified())
            .await
            .is_ok()
    };
    let mut out = Vec::new();
    let open = vec![event(LEFT, "a", 10, 0), event(RIGHT, "a", 20, 1)];
    step.process(Batch::new(open), &mut out).await.unwrap();
    assert!(out.is_empty());
    assert!(!asked().await, "nothing released, no checkpoint asked");
    let close = vec![event(LEFT, "a", 500, 2), event(RIGHT, "a", 500, 3)];
    step.process(Batch::new(close), &mut out).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(asked().await, "a released window asks for a checkpoint");
}

#[tokio::test]
async fn an_unkeyed_join_joins_every_event_with_every_other() {
    let events = generate(13, 1_500, 5, 30, 400);
    let join = Join::window("j", LEFT, RIGHT, JoinWindow::Tumbling { size_ms: 100 })
        .max_out_of_orderness_ms(30);
    let out = run(join, &events).await;
    assert!(out.iter().all(|b| b.window.as_ref().unwrap().key.is_none()));
    // The reference on the same events with one key for all.
    let mut one_key = events.clone();
    for event in &mut one_key {
        event.key = Some(Vec::new());
    }
    let expected = reference_windows(&one_key, 100, 100, 30, How::Inner);
    assert!(expected.len() > 50);
    assert_eq!(released_windows(&out), expected);
}
