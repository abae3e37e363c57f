//! The Nexmark scenario of `plumber bench`: a Nexmark event generator and
//! queries q0–q8 and q11, each as WASM pipes (the `nexmark` example
//! guest) and as native steps, around the same native windows.
//!
//! # The generator
//!
//! [`NexmarkSource`] follows the standard Nexmark generator (Beam's and
//! nexmark-flink's `GeneratorConfig`, `PersonGenerator`,
//! `AuctionGenerator`, `BidGenerator`) with its default configuration:
//!
//! - Per 50 events (by `event_id % 50`): 1 person, 3 auctions, 46 bids.
//!   Person and auction ids start at 1000 and follow the event id as in
//!   the reference (`lastBase0PersonId`, `lastBase0AuctionId`).
//! - 1000 active people and 100 in-flight auctions, with the reference's
//!   id leads of 10; hot auction ratio 2 (half the bids go to the hot
//!   auction `(last_auction_id / 100) * 100`), hot bidder ratio 4 (three in
//!   four bids come from the hot bidder `(last_person_id / 100) * 100 + 1`),
//!   hot seller ratio 4; 5 categories from 10.
//! - Price `round(10^(rand * 6) * 100)` cents; reserve = initial bid + a
//!   second price; expiry within twice the time the next 100 auctions take
//!   to appear (the reference's horizon, in closed form at a constant rate).
//! - Channels: half of the bids on one of 4 hot channels (Google,
//!   Facebook, Baidu, Apple), the rest on `channel-<n>`, n < 10,000; URLs
//!   `https://www.nexmark.com/<5>/<5>/<5>/item.htm?query=1`, with
//!   `&channel_id=<reversed n>` for 9 in 10 channels, fixed per channel.
//! - Names from the reference's first and last names, the 10 US cities and
//!   6 states; emails, item names and descriptions are random
//!   lower-case-and-space strings of the reference's lengths.
//! - `date_time` = base time + event id × 0.1 ms: the default first event
//!   rate of 10,000 events/s, in event time, whatever the real rate.
//!
//! Where it deviates, and why:
//!
//! - Each event gets its own random stream, seeded from `(seed, event id)`
//!   (the reference seeds `java.util.Random` with the event id), so the
//!   output is deterministic per seed and a seek is free; the PRNG is
//!   splitmix64, so the values are not the Java generator's.
//! - Event time starts at a fixed base (2015-07-15T00:00:00Z) instead of
//!   the wall clock, so runs are reproducible and windows align with it;
//!   the rate is constant (no rate shapes) and events are in order (the
//!   reference's default out-of-order group size of 1).
//! - The `extra` field pads the *encoded* event to Nexmark's average sizes
//!   (bids 100 bytes, persons 200, auctions 500) with the reference's rule
//!   (target − size so far, ±20 %); the reference counts 8 bytes per
//!   number and ignores channel and URL instead. The URL alone makes most
//!   bids longer than 100 bytes, so bids have little or no extra: measured
//!   averages (seed 42) are 111 bytes per bid, 199 per person, 497 per
//!   auction.
//!
//! Events are comma-separated text (no commas inside fields), first field
//! the kind, with `timestamp` = `date_time` and no key:
//!
//! ```text
//! B,auction,bidder,price,channel,url,date_time,extra
//! P,id,name,email,credit_card,city,state,date_time,extra
//! A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,extra
//! ```
//!
//! # The queries
//!
//! | row | pipeline |
//! | --- | --- |
//! | `nexmark source` | source → sink |
//! | `nexmark q0` | pass-through |
//! | `nexmark q1` | bids with the price in euros (`price * 908 / 1000`) |
//! | `nexmark q2` | `auction,price` of bids with `auction % 123 == 0` |
//! | `nexmark q3` | auctions of category 10 joined with their sellers of OR, ID or CA (persons kept in state; auctions whose seller is yet to come wait): `name,city,state,auction` |
//! | `nexmark q4` | auctions followed to their close (open from their time to `expires`, bids in between raise the final price, closed by the first event after `expires`, counted if they had a bid): per closed auction `category,average` of its category's final prices so far |
//! | `nexmark q6` | the same closed auctions: per closed auction `seller,average` of the seller's last 10 final prices |
//! | `nexmark q5` | bids keyed by auction → sliding window 10 s / 2 s (event time) → the auction(s) with the most bids: `window_start,auction,count` |
//! | `nexmark q8` | persons keyed by id and auctions by seller, each tagged with its input (`plumber-input`) → native windowed join, tumbling 10 s (event time), inner → `id,name,window_start` of each person who opened an auction in the window they joined in |
//! | `nexmark q11` | bids keyed by bidder → keyed session window, gap 10 s (event time) → `bidder,bids,session_start,session_end` per session |
//! | `nexmark q7` | `auction,bidder,price,date_time` of bids → tumbling window 10 s (event time) → the bid(s) at the highest price: `window_end,auction,bidder,price` |
//! | `nexmark q5 (aggregate)`, `nexmark q7 (aggregate)` | q5 and q7 with the window aggregating (the `nexmark-aggregate` guest: an accumulator per pane or window instead of the bids); WASM only, its ratio against the native q5 and q7 |
//!
//! The native steps implement the logic of the guest line for line (the
//! guest is a separate crate, so the parsing helpers are duplicated), and
//! `tests/tests/bench.rs` checks that both give the same output.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use plumber::checkpoint::{CheckpointPolicy, Position};
use plumber::pipeline::{Pipeline, PipelineBuilder};
use plumber::runtime::Runtime;
use plumber::state::MemoryState;
use plumber::step::{NativeStep, WasmPipe};
use plumber::streams::{DiscardSink, Source, StreamError};
use plumber::window::{AggregateSpec, EventTime, Window};
use plumber::{Batch, Event};

use super::{guest, measure, scaled, will_measure, BenchArgs, BenchError, Engine, Table};

/// Events of the full-scale scenario (`--scale 1`).
pub const EVENTS: u64 = 5_000_000;

/// Event time of event 0: 2015-07-15T00:00:00Z, in ms (a multiple of the
/// window sizes, so windows start at the first event).
pub const BASE_TIME_MS: u64 = 1_436_918_400_000;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const FIRST_CATEGORY_ID: u64 = 10;
const NUM_CATEGORIES: u64 = 5;
const NUM_ACTIVE_PEOPLE: u64 = 1000;
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// One in `HOT_*_RATIO` ids is "hot": a multiple of this.
const HOT_ID_STEP: u64 = 100;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDERS_RATIO: u64 = 4;
const HOT_SELLERS_RATIO: u64 = 4;
const HOT_CHANNELS_RATIO: u64 = 2;
const CHANNELS: u64 = 10_000;
/// 10,000 events/s: 100 µs between events in event time.
const INTER_EVENT_US: u64 = 100;
const AVG_BID_BYTES: usize = 100;
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;

const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];

/// The kind of a Nexmark event, from its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A new person (1 in 50).
    Person,
    /// A new auction (3 in 50).
    Auction,
    /// A bid (46 in 50).
    Bid,
}

impl Kind {
    /// The kind of event `event_id`.
    pub fn of(event_id: u64) -> Kind {
        let rem = event_id % TOTAL_PROPORTION;
        if rem < PERSON_PROPORTION {
            Kind::Person
        } else if rem < PERSON_PROPORTION + AUCTION_PROPORTION {
            Kind::Auction
        } else {
            Kind::Bid
        }
    }
}

/// splitmix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// splitmix64: fast, and good enough for generated data.
struct Rng(u64);

impl Rng {
    /// The stream of one event (or of one channel's URL).
    fn new(seed: u64, stream: u64) -> Rng {
        Rng(mix(seed ^ mix(stream.wrapping_add(0x9E37_79B9_7F4A_7C15))))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (`n` > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// The reference's `lastBase0PersonId`: persons created up to `event_id`, minus one.
// The reference's formula, general in the proportions (with one person per
// 50 events the `min` is always 0).
#[allow(clippy::unnecessary_min_or_max)]
fn last_base0_person_id(event_id: u64) -> u64 {
    let epoch = event_id / TOTAL_PROPORTION;
    let offset = (event_id % TOTAL_PROPORTION).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

/// The reference's `nextBase0PersonId`: a recently created (active) person.
fn next_base0_person_id(event_id: u64, rng: &mut Rng) -> u64 {
    let people = last_base0_person_id(event_id) + 1;
    let active = people.min(NUM_ACTIVE_PEOPLE);
    people - active + rng.below(active + PERSON_ID_LEAD)
}

/// The reference's `lastBase0AuctionId`: the last auction created up to `event_id`.
fn last_base0_auction_id(event_id: u64) -> u64 {
    let mut epoch = event_id / TOTAL_PROPORTION;
    let mut offset = event_id % TOTAL_PROPORTION;
    if offset < PERSON_PROPORTION {
        // Before this epoch's auctions: the last one of the previous epoch
        // (the reference returns -1 for the very first event; 0 here).
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

/// The reference's `nextBase0AuctionId`: an auction still in flight.
fn next_base0_auction_id(event_id: u64, rng: &mut Rng) -> u64 {
    let max = last_base0_auction_id(event_id);
    let min = max.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min + rng.below(max - min + 1 + AUCTION_ID_LEAD)
}

fn next_price(rng: &mut Rng) -> u64 {
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64
}

/// The event time of `event_id`, in ms.
pub fn date_time_ms(event_id: u64) -> u64 {
    BASE_TIME_MS + event_id * INTER_EVENT_US / 1000
}

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(digits(n, &mut [0; 20]));
}

/// `n` in decimal, written into the end of `buf`.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// Appends `len` random lower-case letters, with a space about one time in
/// 13 when `spaces` (the reference's `nextString`); 8 characters per draw.
fn push_letters(out: &mut Vec<u8>, rng: &mut Rng, len: usize, spaces: bool) {
    let mut left = len;
    while left > 0 {
        let bits = rng.next().to_le_bytes();
        for &b in bits.iter().take(left.min(8)) {
            out.push(if spaces && b % 13 == 0 {
                b' '
            } else {
                b'a' + ((u32::from(b) * 26) >> 8) as u8
            });
        }
        left = left.saturating_sub(8);
    }
}

/// The reference's `nextString(maxLength)`: 3 to `max_len - 1` characters.
fn push_string(out: &mut Vec<u8>, rng: &mut Rng, max_len: u64) {
    let len = 3 + rng.below(max_len - 3);
    push_letters(out, rng, len as usize, true);
}

/// The reference's `nextExtra`: pads towards `average` bytes, ±20 %.
fn push_extra(out: &mut Vec<u8>, rng: &mut Rng, average: usize) {
    let Some(desired) = average.checked_sub(out.len()) else {
        return;
    };
    let delta = (desired as f64 * 0.2).round() as u64;
    let len = desired as u64 - delta + if delta == 0 { 0 } else { rng.below(2 * delta) };
    push_letters(out, rng, len as usize, true);
}

/// The URL of a channel: fixed per channel (hot channels are 0..4).
fn push_url(out: &mut Vec<u8>, seed: u64, channel: u64, hot: bool) {
    // A stream apart from the events' (which are seeded by event ids).
    let mut rng = Rng::new(
        seed ^ 0x5EED_0FC4_A77E_15AB,
        channel | (u64::from(hot) << 63),
    );
    out.extend_from_slice(b"https://www.nexmark.com/");
    for _ in 0..3 {
        push_letters(out, &mut rng, 5, false);
        out.push(b'/');
    }
    out.extend_from_slice(b"item.htm?query=1");
    if !hot && rng.below(10) > 0 {
        out.extend_from_slice(b"&channel_id=");
        // The reference's Math.abs(Integer.reverse(n)).
        let reversed = ((channel as u32).reverse_bits() as i32).unsigned_abs();
        push_u64(out, u64::from(reversed));
    }
}

fn bid(event_id: u64, seed: u64, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
        (last_base0_auction_id(event_id) / HOT_ID_STEP) * HOT_ID_STEP
    } else {
        next_base0_auction_id(event_id, rng)
    } + FIRST_AUCTION_ID;
    let bidder = if rng.below(HOT_BIDDERS_RATIO) > 0 {
        (last_base0_person_id(event_id) / HOT_ID_STEP) * HOT_ID_STEP + 1
    } else {
        next_base0_person_id(event_id, rng)
    } + FIRST_PERSON_ID;
    out.extend_from_slice(b"B,");
    push_u64(&mut out, auction);
    out.push(b',');
    push_u64(&mut out, bidder);
    out.push(b',');
    push_u64(&mut out, next_price(rng));
    out.push(b',');
    if rng.below(HOT_CHANNELS_RATIO) > 0 {
        let channel = rng.below(HOT_CHANNELS.len() as u64);
        out.extend_from_slice(HOT_CHANNELS[channel as usize].as_bytes());
        out.push(b',');
        push_url(&mut out, seed, channel, true);
    } else {
        let channel = rng.below(CHANNELS);
        out.extend_from_slice(b"channel-");
        push_u64(&mut out, channel);
        out.push(b',');
        push_url(&mut out, seed, channel, false);
    }
    out.push(b',');
    push_u64(&mut out, date_time_ms(event_id));
    out.push(b',');
    push_extra(&mut out, rng, AVG_BID_BYTES);
    out
}

fn person(event_id: u64, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"P,");
    push_u64(&mut out, last_base0_person_id(event_id) + FIRST_PERSON_ID);
    out.push(b',');
    out.extend_from_slice(rng.pick(&FIRST_NAMES).as_bytes());
    out.push(b' ');
    out.extend_from_slice(rng.pick(&LAST_NAMES).as_bytes());
    out.push(b',');
    push_string(&mut out, rng, 7);
    out.push(b'@');
    push_string(&mut out, rng, 5);
    out.extend_from_slice(b".com,");
    for group in 0..4 {
        if group > 0 {
            out.push(b' ');
        }
        // %04d
        let n = rng.below(10_000);
        let mut buf = [0; 20];
        let d = digits(n, &mut buf);
        out.extend(std::iter::repeat_n(b'0', 4 - d.len()));
        out.extend_from_slice(d);
    }
    out.push(b',');
    out.extend_from_slice(rng.pick(&US_CITIES).as_bytes());
    out.push(b',');
    out.extend_from_slice(rng.pick(&US_STATES).as_bytes());
    out.push(b',');
    push_u64(&mut out, date_time_ms(event_id));
    out.push(b',');
    push_extra(&mut out, rng, AVG_PERSON_BYTES);
    out
}

fn auction(event_id: u64, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(640);
    let date_time = date_time_ms(event_id);
    out.extend_from_slice(b"A,");
    push_u64(&mut out, last_base0_auction_id(event_id) + FIRST_AUCTION_ID);
    out.push(b',');
    push_string(&mut out, rng, 20);
    out.push(b',');
    push_string(&mut out, rng, 100);
    out.push(b',');
    let initial_bid = next_price(rng);
    push_u64(&mut out, initial_bid);
    out.push(b',');
    push_u64(&mut out, initial_bid + next_price(rng));
    out.push(b',');
    push_u64(&mut out, date_time);
    out.push(b',');
    // The reference's horizon: twice the event time the next 100 auctions take.
    let horizon_ms =
        NUM_IN_FLIGHT_AUCTIONS * TOTAL_PROPORTION / AUCTION_PROPORTION * INTER_EVENT_US / 1000;
    push_u64(&mut out, date_time + 1 + rng.below((horizon_ms * 2).max(1)));
    out.push(b',');
    let seller = if rng.below(HOT_SELLERS_RATIO) > 0 {
        (last_base0_person_id(event_id) / HOT_ID_STEP) * HOT_ID_STEP
    } else {
        next_base0_person_id(event_id, rng)
    } + FIRST_PERSON_ID;
    push_u64(&mut out, seller);
    out.push(b',');
    push_u64(&mut out, FIRST_CATEGORY_ID + rng.below(NUM_CATEGORIES));
    out.push(b',');
    push_extra(&mut out, rng, AVG_AUCTION_BYTES);
    out
}

/// Event `event_id` of the Nexmark stream of `seed`.
pub fn nexmark_event(seed: u64, event_id: u64) -> Event {
    let mut rng = Rng::new(seed, event_id);
    let value = match Kind::of(event_id) {
        Kind::Person => person(event_id, &mut rng),
        Kind::Auction => auction(event_id, &mut rng),
        Kind::Bid => bid(event_id, seed, &mut rng),
    };
    Event {
        key: None,
        value,
        timestamp: Some(date_time_ms(event_id)),
        headers: Vec::new(),
    }
}

/// A finite source of Nexmark events, generated as they are read (the
/// input costs no memory); see the module's documentation.
pub struct NexmarkSource {
    total: u64,
    seed: u64,
    /// The id of the next event to read.
    next: u64,
}

impl NexmarkSource {
    /// `total` events from `seed`.
    pub fn new(total: u64, seed: u64) -> Self {
        NexmarkSource {
            total,
            seed,
            next: 0,
        }
    }
}

#[async_trait::async_trait]
impl Source for NexmarkSource {
    fn describe(&self) -> String {
        format!(
            "Nexmark generator ({} events, seed {})",
            self.total, self.seed
        )
    }

    async fn seek(&mut self, position: &Position) -> Result<(), StreamError> {
        // Every event has its own random stream: no need to replay the ones before.
        self.next = position
            .offset()
            .map_err(|e| StreamError::seek(self.describe(), position, e))?
            .min(self.total);
        Ok(())
    }

    async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Option<(Vec<Event>, Position)>, StreamError> {
        let count = (self.total - self.next).min(max as u64);
        if count == 0 {
            return Ok(None);
        }
        let events = (self.next..self.next + count)
            .map(|id| nexmark_event(self.seed, id))
            .collect();
        self.next += count;
        Ok(Some((events, Position::Offset(self.next))))
    }
}

// ---- The queries, natively: the same logic as examples/guests/nexmark. ----

// Bid fields: B,auction,bidder,price,channel,url,date_time,extra
const AUCTION: usize = 1;
const BIDDER: usize = 2;
const PRICE: usize = 3;
const DATE_TIME: usize = 6;

/// The byte ranges of the first `N` comma-separated fields of `line`;
/// `None` when it has fewer.
fn fields<const N: usize>(line: &[u8]) -> Option<[(usize, usize); N]> {
    let mut out = [(0, 0); N];
    let mut start = 0;
    let mut i = 0;
    for (pos, &byte) in line.iter().enumerate() {
        if byte == b',' {
            out[i] = (start, pos);
            i += 1;
            if i == N {
                return Some(out);
            }
            start = pos + 1;
        }
    }
    // The last field runs to the end of the line.
    out[i] = (start, line.len());
    (i + 1 == N).then_some(out)
}

/// A decimal integer without sign; `None` when empty, not digits, or too big.
fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

fn is_bid(value: &[u8]) -> bool {
    value.starts_with(b"B,")
}

fn bid_fields(value: &[u8], index: usize) -> Result<[(usize, usize); 7], String> {
    fields::<7>(value).ok_or_else(|| format!("malformed bid (event {index}): fewer than 7 fields"))
}

fn number(value: &[u8], range: (usize, usize), what: &str, index: usize) -> Result<u64, String> {
    parse_u64(&value[range.0..range.1])
        .ok_or_else(|| format!("malformed bid (event {index}): {what} is not a number"))
}

fn q1(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::with_capacity(events.len());
    for (index, mut event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        let price = number(&event.value, f[PRICE], "price", index)?;
        // Rewrite the price in place: the euro price never has more digits.
        let mut buf = [0; 20];
        let euros = digits(price * 908 / 1000, &mut buf);
        event
            .value
            .splice(f[PRICE].0..f[PRICE].1, euros.iter().copied());
        out.push(event);
    }
    Ok(out)
}

fn q2(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    for (index, mut event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        let auction = number(&event.value, f[AUCTION], "auction", index)?;
        if auction % 123 != 0 {
            continue;
        }
        let price = number(&event.value, f[PRICE], "price", index)?;
        // Reuse the bid's buffer for the (shorter) output.
        event.value.clear();
        push_u64(&mut event.value, auction);
        event.value.push(b',');
        push_u64(&mut event.value, price);
        out.push(event);
    }
    Ok(out)
}

fn q5_bids(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        let (start, end) = f[AUCTION];
        number(&event.value, f[AUCTION], "auction", index)?;
        // A new, exact-size key, as the WASM pipe's output is.
        out.push(Event {
            key: Some(event.value[start..end].to_vec()),
            value: Vec::new(),
            timestamp: event.timestamp,
            headers: Vec::new(),
        });
    }
    Ok(out)
}

fn q5(events: &[Event], start: u64, end: u64) -> Result<Vec<Event>, String> {
    // SipHash with fixed keys: std's random keys would import wasi:random in the guest.
    let mut counts: HashMap<u64, u64, BuildHasherDefault<DefaultHasher>> = HashMap::default();
    for (index, event) in events.iter().enumerate() {
        let auction = event
            .key
            .as_deref()
            .and_then(parse_u64)
            .ok_or_else(|| format!("q5: the key of event {index} is not an auction id"))?;
        *counts.entry(auction).or_default() += 1;
    }
    let Some(max) = counts.values().copied().max() else {
        return Ok(Vec::new());
    };
    let mut hot: Vec<u64> = counts
        .into_iter()
        .filter(|&(_, c)| c == max)
        .map(|(a, _)| a)
        .collect();
    hot.sort_unstable();
    Ok(hot
        .into_iter()
        .map(|auction| {
            let mut value = Vec::with_capacity(40);
            push_u64(&mut value, start);
            value.push(b',');
            push_u64(&mut value, auction);
            value.push(b',');
            push_u64(&mut value, max);
            Event::new(value).with_timestamp(end)
        })
        .collect())
}

fn q7_bids(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        number(&event.value, f[PRICE], "price", index)?;
        // auction, bidder and price are adjacent fields.
        let head = &event.value[f[AUCTION].0..f[PRICE].1];
        let date_time = &event.value[f[DATE_TIME].0..f[DATE_TIME].1];
        let mut value = Vec::with_capacity(head.len() + 1 + date_time.len());
        value.extend_from_slice(head);
        value.push(b',');
        value.extend_from_slice(date_time);
        out.push(Event {
            key: None,
            value,
            timestamp: event.timestamp,
            headers: Vec::new(),
        });
    }
    Ok(out)
}

fn q7(events: &[Event], end: u64) -> Result<Vec<Event>, String> {
    // q7-bids fields: auction,bidder,price,date_time
    let mut max = None;
    for (index, event) in events.iter().enumerate() {
        let price = fields::<4>(&event.value)
            .and_then(|f| parse_u64(&event.value[f[2].0..f[2].1]))
            .ok_or_else(|| format!("q7: event {index} is not auction,bidder,price,date_time"))?;
        max = max.max(Some(price));
    }
    let Some(max) = max else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for event in events {
        let Some(f) = fields::<4>(&event.value) else {
            continue;
        };
        if parse_u64(&event.value[f[2].0..f[2].1]) == Some(max) {
            let head = &event.value[..f[2].1];
            let mut value = Vec::with_capacity(21 + head.len());
            push_u64(&mut value, end);
            value.push(b',');
            value.extend_from_slice(head);
            out.push(Event::new(value).with_timestamp(end));
        }
    }
    Ok(out)
}

/// The states q3 selects.
const Q3_STATES: [&[u8]; 3] = [b"OR", b"ID", b"CA"];

/// q3's join state, natively: persons by id (`-` for those of other
/// states) and auctions waiting for their seller.
#[derive(Default)]
struct Q3Join {
    persons: HashMap<u64, Vec<u8>, BuildHasherDefault<DefaultHasher>>,
    waiting: HashMap<u64, Vec<u8>, BuildHasherDefault<DefaultHasher>>,
}

impl Q3Join {
    fn apply(&mut self, events: Vec<Event>) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        let answer = |row: &[u8], auction: &[u8], timestamp: Option<u64>| {
            let mut value = Vec::with_capacity(row.len() + 1 + auction.len());
            value.extend_from_slice(row);
            value.push(b',');
            value.extend_from_slice(auction);
            Event {
                key: None,
                value,
                timestamp,
                headers: Vec::new(),
            }
        };
        for (index, event) in events.iter().enumerate() {
            let v = &event.value;
            if v.starts_with(b"P,") {
                // P,id,name,email,credit_card,city,state,date_time,extra
                let f =
                    fields::<7>(v).ok_or_else(|| format!("malformed person (event {index})"))?;
                let id = number(v, f[1], "id", index)?;
                let selected = Q3_STATES.contains(&&v[f[6].0..f[6].1]);
                let mut row = Vec::new();
                if selected {
                    row.extend_from_slice(&v[f[2].0..f[2].1]);
                    for field in [f[5], f[6]] {
                        row.push(b',');
                        row.extend_from_slice(&v[field.0..field.1]);
                    }
                } else {
                    row.push(b'-');
                }
                if let Some(auctions) = self.waiting.remove(&id) {
                    if selected {
                        for auction in auctions.split(|&b| b == b',') {
                            out.push(answer(&row, auction, event.timestamp));
                        }
                    }
                }
                self.persons.insert(id, row);
            } else if v.starts_with(b"A,") {
                // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,…
                let f =
                    fields::<10>(v).ok_or_else(|| format!("malformed auction (event {index})"))?;
                if number(v, f[9], "category", index)? != 10 {
                    continue;
                }
                let seller = number(v, f[8], "seller", index)?;
                let auction = &v[f[1].0..f[1].1];
                match self.persons.get(&seller) {
                    Some(row) if row == b"-" => {}
                    Some(row) => out.push(answer(row, auction, event.timestamp)),
                    None => {
                        let auctions = self.waiting.entry(seller).or_default();
                        if !auctions.is_empty() {
                            auctions.push(b',');
                        }
                        auctions.extend_from_slice(auction);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// An auction still open (q4, q6).
#[derive(Debug, Clone, Copy)]
struct OpenAuction {
    id: u64,
    category: u64,
    seller: u64,
    start: u64,
    expires: u64,
    /// The highest bid so far (0: none).
    best: u64,
}

/// q4 and q6 natively: the open auctions (in id order), the per-category
/// sums and counts (q4) and each seller's last ten final prices (q6).
#[derive(Default)]
struct ClosedAuctions {
    open: Vec<OpenAuction>,
    categories: HashMap<u64, (u64, u64), BuildHasherDefault<DefaultHasher>>,
    sellers: HashMap<u64, std::collections::VecDeque<u64>, BuildHasherDefault<DefaultHasher>>,
}

impl ClosedAuctions {
    fn apply(&mut self, events: &[Event], q4: bool) -> Result<Vec<Event>, String> {
        let mut out = Vec::new();
        for (index, event) in events.iter().enumerate() {
            let v = &event.value;
            let time = event.timestamp.unwrap_or_default();
            if self.open.iter().any(|a| a.expires < time) {
                let (mut closing, still): (Vec<OpenAuction>, Vec<OpenAuction>) =
                    self.open.drain(..).partition(|a| a.expires < time);
                self.open = still;
                closing.sort_by_key(|a| (a.expires, a.id));
                for auction in closing.iter().filter(|a| a.best > 0) {
                    out.push(self.closed(auction, q4, time));
                }
            }
            if v.starts_with(b"A,") {
                // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,…
                let f =
                    fields::<10>(v).ok_or_else(|| format!("malformed auction (event {index})"))?;
                self.open.push(OpenAuction {
                    id: number(v, f[1], "id", index)?,
                    category: number(v, f[9], "category", index)?,
                    seller: number(v, f[8], "seller", index)?,
                    start: number(v, f[6], "date_time", index)?,
                    expires: number(v, f[7], "expires", index)?,
                    best: 0,
                });
            } else if is_bid(v) {
                let f = bid_fields(v, index)?;
                let auction = number(v, f[AUCTION], "auction", index)?;
                let at = number(v, f[DATE_TIME], "date_time", index)?;
                // Auctions open in id order (ids grow), so `open` stays sorted.
                if let Ok(found) = self.open.binary_search_by_key(&auction, |a| a.id) {
                    let open = &mut self.open[found];
                    if open.start <= at && at <= open.expires {
                        open.best = open.best.max(number(v, f[PRICE], "price", index)?);
                    }
                }
            }
        }
        Ok(out)
    }

    fn closed(&mut self, auction: &OpenAuction, q4: bool, time: u64) -> Event {
        let mut value = Vec::with_capacity(48);
        if q4 {
            let (sum, count) = self.categories.entry(auction.category).or_default();
            *sum += auction.best;
            *count += 1;
            push_u64(&mut value, auction.category);
            value.push(b',');
            push_u64(&mut value, *sum / *count);
        } else {
            let prices = self.sellers.entry(auction.seller).or_default();
            prices.push_back(auction.best);
            if prices.len() > 10 {
                prices.pop_front();
            }
            push_u64(&mut value, auction.seller);
            value.push(b',');
            push_u64(&mut value, prices.iter().sum::<u64>() / prices.len() as u64);
        }
        Event::new(value).with_timestamp(time)
    }
}

fn q11_bids(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        number(&event.value, f[BIDDER], "bidder", index)?;
        out.push(Event {
            key: Some(event.value[f[BIDDER].0..f[BIDDER].1].to_vec()),
            value: Vec::new(),
            timestamp: event.timestamp,
            headers: Vec::new(),
        });
    }
    Ok(out)
}

fn q11(events: &[Event], start: u64, end: u64) -> Vec<Event> {
    let Some(bidder) = events.first().and_then(|e| e.key.as_deref()) else {
        return Vec::new();
    };
    let mut value = Vec::with_capacity(bidder.len() + 48);
    value.extend_from_slice(bidder);
    value.push(b',');
    push_u64(&mut value, events.len() as u64);
    value.push(b',');
    push_u64(&mut value, start);
    value.push(b',');
    push_u64(&mut value, end);
    vec![Event::new(value).with_timestamp(end)]
}

/// The header that names the input an event of a join comes from.
const INPUT_HEADER: &str = "plumber-input";

fn q8_tag(events: Vec<Event>) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let v = &event.value;
        let tagged = if v.starts_with(b"P,") {
            // P,id,name,email,credit_card,city,state,date_time,extra
            let f = fields::<3>(v).ok_or_else(|| format!("malformed person (event {index})"))?;
            number(v, f[1], "id", index)?;
            Event {
                key: Some(v[f[1].0..f[1].1].to_vec()),
                value: v[f[1].0..f[2].1].to_vec(),
                timestamp: event.timestamp,
                headers: vec![(INPUT_HEADER.to_owned(), "persons".to_owned())],
            }
        } else if v.starts_with(b"A,") {
            // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,…
            let f = fields::<9>(v).ok_or_else(|| format!("malformed auction (event {index})"))?;
            number(v, f[8], "seller", index)?;
            Event {
                key: Some(v[f[8].0..f[8].1].to_vec()),
                value: v[f[1].0..f[1].1].to_vec(),
                timestamp: event.timestamp,
                headers: vec![(INPUT_HEADER.to_owned(), "auctions".to_owned())],
            }
        } else {
            continue;
        };
        out.push(tagged);
    }
    Ok(out)
}

fn q8(events: &[Event], start: u64, end: u64) -> Vec<Event> {
    let from = |event: &Event, input: &str| {
        event
            .headers
            .iter()
            .any(|(name, value)| name == INPUT_HEADER && value == input)
    };
    if !events.iter().any(|e| from(e, "auctions")) {
        return Vec::new();
    }
    events
        .iter()
        .filter(|e| from(e, "persons"))
        .map(|event| {
            let mut value = Vec::with_capacity(event.value.len() + 21);
            value.extend_from_slice(&event.value);
            value.push(b',');
            push_u64(&mut value, start);
            Event::new(value).with_timestamp(end)
        })
        .collect()
}

/// One step of a query: a config of the `nexmark` guest, or the same logic
/// as a native step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Pass-through.
    Q0,
    /// Bids with the price in euros.
    Q1,
    /// `auction,price` of bids with `auction % 123 == 0`.
    Q2,
    /// Auctions of category 10 joined with their sellers of OR, ID or CA:
    /// `name,city,state,auction` (the guest keeps the persons in the
    /// pipeline's state, the native step in a map).
    Q3,
    /// Per closed auction, the average final price of its category so far:
    /// `category,average`.
    Q4,
    /// Per closed auction, the average final price of its seller's last 10
    /// closed auctions: `seller,average`.
    Q6,
    /// Bids as key = auction, empty value (before q5's window).
    Q5Bids,
    /// The auction(s) with the most bids in a window: `window_start,auction,count`.
    Q5,
    /// Bids as `auction,bidder,price,date_time` (before q7's window).
    Q7Bids,
    /// The bid(s) at a window's highest price: `window_end,auction,bidder,price`.
    Q7,
    /// Persons keyed by id, auctions keyed by seller, each with its input's
    /// name (before q8's join).
    Q8Tag,
    /// The persons of a window of the join who opened an auction in it:
    /// `id,name,window_start`.
    Q8,
    /// Bids keyed by bidder, empty value (before q11's session window).
    Q11Bids,
    /// One bidder's session: `bidder,bids,session_start,session_end`.
    Q11,
}

impl Stage {
    /// The guest's `query` config and the step's name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Q0 => "q0",
            Stage::Q1 => "q1",
            Stage::Q2 => "q2",
            Stage::Q3 => "q3",
            Stage::Q4 => "q4",
            Stage::Q6 => "q6",
            Stage::Q5Bids => "q5-bids",
            Stage::Q5 => "q5",
            Stage::Q7Bids => "q7-bids",
            Stage::Q7 => "q7",
            Stage::Q8Tag => "q8-tag",
            Stage::Q8 => "q8",
            Stage::Q11Bids => "q11-bids",
            Stage::Q11 => "q11",
        }
    }

    /// Runs the stage natively on one batch.
    ///
    /// # Errors
    ///
    /// A malformed bid, or q5/q7 on a batch that no window released.
    pub fn apply(self, batch: Batch) -> Result<Vec<Event>, String> {
        match self {
            // One batch alone: a fresh join (the step keeps one across batches).
            Stage::Q3 => Q3Join::default().apply(batch.events),
            Stage::Q4 | Stage::Q6 => {
                ClosedAuctions::default().apply(&batch.events, self == Stage::Q4)
            }
            Stage::Q0 => Ok(batch.events),
            Stage::Q1 => q1(batch.events),
            Stage::Q2 => q2(batch.events),
            Stage::Q5Bids => q5_bids(batch.events),
            Stage::Q7Bids => q7_bids(batch.events),
            Stage::Q8Tag => q8_tag(batch.events),
            Stage::Q11Bids => q11_bids(batch.events),
            Stage::Q11 => {
                let window = batch.window.as_ref().ok_or_else(|| {
                    "q11 must follow a session window: the batch has no window-info".to_owned()
                })?;
                Ok(q11(&batch.events, window.start, window.end))
            }
            Stage::Q8 => {
                let window = batch.window.as_ref().ok_or_else(|| {
                    "q8 must follow a windowed join: the batch has no window-info".to_owned()
                })?;
                Ok(q8(&batch.events, window.start, window.end))
            }
            Stage::Q5 | Stage::Q7 => {
                let window = batch.window.as_ref().ok_or_else(|| {
                    "q5 and q7 must follow a window: the batch has no window-info".to_owned()
                })?;
                if self == Stage::Q5 {
                    q5(&batch.events, window.start, window.end)
                } else {
                    q7(&batch.events, window.end)
                }
            }
        }
    }

    /// The stage as a native step.
    pub fn native_step(self) -> NativeStep {
        if self == Stage::Q3 {
            let mut join = Q3Join::default();
            return NativeStep::batch(self.name(), move |batch| join.apply(batch.events));
        }
        if matches!(self, Stage::Q4 | Stage::Q6) {
            let mut auctions = ClosedAuctions::default();
            let q4 = self == Stage::Q4;
            return NativeStep::batch(self.name(), move |batch| auctions.apply(&batch.events, q4));
        }
        NativeStep::batch(self.name(), move |batch| self.apply(batch))
    }

    /// The stage as the `nexmark` guest at `guest`.
    pub fn wasm_pipe(self, guest: &Path) -> WasmPipe {
        WasmPipe::new(self.name(), guest).config(serde_json::json!({ "query": self.name() }))
    }
}

/// A Nexmark query of the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// Pass-through.
    Q0,
    /// Currency conversion.
    Q1,
    /// Selection.
    Q2,
    /// Local item suggestion (auctions joined with their sellers).
    Q3,
    /// Average price per category (closed auctions).
    Q4,
    /// Average selling price per seller (closed auctions).
    Q6,
    /// Hot items (sliding window).
    Q5,
    /// Highest bid (tumbling window).
    Q7,
    /// Monitor new users (a windowed join of persons and auctions).
    Q8,
    /// User sessions (a keyed session window per bidder).
    Q11,
}

impl Query {
    /// Every query, in the order of the table.
    pub const ALL: [Query; 10] = [
        Query::Q0,
        Query::Q1,
        Query::Q2,
        Query::Q3,
        Query::Q4,
        Query::Q5,
        Query::Q6,
        Query::Q7,
        Query::Q8,
        Query::Q11,
    ];

    /// `q0`, `q1`, …
    pub fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q6 => "q6",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
            Query::Q11 => "q11",
        }
    }

    /// Adds the query's steps to `builder`: WASM pipes of the `nexmark`
    /// guest at `guest` for [`Engine::Wasm`] (and through the canonical ABI
    /// only for [`Engine::WasmCanonical`]), native steps for
    /// [`Engine::Native`] (`guest` unused), nothing for [`Engine::SourceOnly`].
    /// Windows are native in both.
    pub fn add_steps(
        self,
        builder: PipelineBuilder,
        engine: Engine,
        guest: &Path,
    ) -> PipelineBuilder {
        let step = |builder: PipelineBuilder, stage: Stage| match engine {
            Engine::Native => builder.then(stage.native_step()),
            Engine::Wasm => builder.then(stage.wasm_pipe(guest)),
            Engine::WasmCanonical => builder.then(stage.wasm_pipe(guest).packed(false)),
            Engine::SourceOnly => builder,
        };
        if engine == Engine::SourceOnly {
            return builder;
        }
        // The generator's timestamps are in order: the watermark need not trail.
        let event_time = EventTime {
            max_out_of_orderness_ms: 0,
            ..EventTime::default()
        };
        match self {
            Query::Q0 => step(builder, Stage::Q0),
            Query::Q1 => step(builder, Stage::Q1),
            Query::Q2 => step(builder, Stage::Q2),
            Query::Q3 => step(builder, Stage::Q3),
            Query::Q4 => step(builder, Stage::Q4),
            Query::Q6 => step(builder, Stage::Q6),
            Query::Q5 => {
                // Nexmark-Flink's HOP(2 s, 10 s).
                let window =
                    Window::sliding("q5-window", Duration::from_secs(10), Duration::from_secs(2))
                        .event_time(event_time);
                step(step(builder, Stage::Q5Bids).then(window), Stage::Q5)
            }
            Query::Q7 => {
                let window =
                    Window::tumbling("q7-window", Duration::from_secs(10)).event_time(event_time);
                step(step(builder, Stage::Q7Bids).then(window), Stage::Q7)
            }
            Query::Q8 => {
                // Nexmark's q8: persons ⋈ auctions on id = seller, tumbling 10 s.
                let join = plumber::join::Join::window(
                    "q8-join",
                    "persons",
                    "auctions",
                    plumber::join::JoinWindow::Tumbling { size_ms: 10_000 },
                )
                .keyed();
                step(step(builder, Stage::Q8Tag).then(join), Stage::Q8)
            }
            Query::Q11 => {
                // Nexmark's q11: a session per bidder, closed after 10 s without a bid.
                let window = Window::session("q11-window", Duration::from_secs(10))
                    .keyed()
                    .event_time(event_time);
                step(step(builder, Stage::Q11Bids).then(window), Stage::Q11)
            }
        }
    }
}

impl Query {
    /// The queries that also run with an aggregating window.
    pub const AGGREGATED: [Query; 2] = [Query::Q5, Query::Q7];

    /// Adds q5's or q7's steps to `builder` with the window aggregating
    /// instead of buffering: the `nexmark` guest at `guest` projects the
    /// bids, and the window keeps an accumulator per pane (q5) or window
    /// (q7) of the `nexmark-aggregate` guest at `aggregator`, which emits
    /// the buffering query's output lines. Another query gets its WASM
    /// steps ([`Query::add_steps`]).
    pub fn add_aggregated_steps(
        self,
        builder: PipelineBuilder,
        guest: &Path,
        aggregator: &Path,
    ) -> PipelineBuilder {
        let event_time = EventTime {
            max_out_of_orderness_ms: 0,
            ..EventTime::default()
        };
        let spec = AggregateSpec::new(aggregator, &serde_json::json!({ "query": self.name() }));
        match self {
            Query::Q5 => builder.then(Stage::Q5Bids.wasm_pipe(guest)).then(
                Window::sliding("q5-window", Duration::from_secs(10), Duration::from_secs(2))
                    .event_time(event_time)
                    .with_aggregate(spec),
            ),
            Query::Q7 => builder.then(Stage::Q7Bids.wasm_pipe(guest)).then(
                Window::tumbling("q7-window", Duration::from_secs(10))
                    .event_time(event_time)
                    .with_aggregate(spec),
            ),
            other => other.add_steps(builder, Engine::Wasm, guest),
        }
    }
}

/// A pipeline reading `source`, as the benchmark runs it: memory state, a
/// checkpoint at the end only, `batch_size` events per batch. Add steps
/// ([`Query::add_steps`]) and a sink.
pub fn builder(
    name: &str,
    source: NexmarkSource,
    batch_size: usize,
    rt: &Runtime,
) -> PipelineBuilder {
    Pipeline::builder(name)
        .state(Arc::new(MemoryState::new()))
        .checkpoint(CheckpointPolicy::at_end_only())
        .batch_size(batch_size)
        .runtime(rt.clone())
        .from(source)
}

/// The Nexmark rows: the source alone, then each query natively and as WASM.
///
/// # Errors
///
/// The `nexmark` guest is missing or a pipeline failed.
pub async fn run(args: &BenchArgs, rt: &Runtime, table: &mut Table) -> Result<(), BenchError> {
    let guest = guest(&args.guests, "nexmark")?;
    let events = scaled(EVENTS, args.scale);
    let pipeline = |name: &str, query: Query, engine: Engine| {
        let builder = builder(
            name,
            NexmarkSource::new(events, args.seed),
            args.batch_size,
            rt,
        );
        query
            .add_steps(builder, engine, &guest)
            .to(DiscardSink::new())
    };
    let row = measure(
        "nexmark source",
        Engine::SourceOnly,
        1,
        vec![pipeline("nexmark-source", Query::Q0, Engine::SourceOnly)],
    )
    .await?;
    table.push(row);
    for query in Query::ALL {
        for engine in [Engine::Native, Engine::Wasm, Engine::WasmCanonical] {
            let name = format!("nexmark-{}", query.name());
            let row = measure(
                format!("nexmark {}", query.name()),
                engine,
                1,
                vec![pipeline(&name, query, engine)],
            )
            .await?;
            table.push(row);
        }
    }
    for query in Query::AGGREGATED {
        let scenario = format!("nexmark {} (aggregate)", query.name());
        if !will_measure(&scenario, Engine::Wasm) {
            continue;
        }
        let aggregator = guest_path(args, "nexmark-aggregate")?;
        let name = format!("nexmark-{}-aggregate", query.name());
        let pipeline = query
            .add_aggregated_steps(
                builder(
                    &name,
                    NexmarkSource::new(events, args.seed),
                    args.batch_size,
                    rt,
                ),
                &guest,
                &aggregator,
            )
            .to(DiscardSink::new());
        table.push(measure(scenario, Engine::Wasm, 1, vec![pipeline]).await?);
    }
    Ok(())
}

fn guest_path(args: &BenchArgs, name: &str) -> Result<std::path::PathBuf, BenchError> {
    guest(&args.guests, name)
}

/// Peak RSS of the windowed queries (q5, q7) as WASM at 1× and 5× the input
/// (1× is a fifth of the suite's Nexmark input): the windows' memory must
/// not grow with the stream.
///
/// # Errors
///
/// The guest is missing or a pipeline failed.
pub async fn run_memory(
    args: &BenchArgs,
    rt: &Runtime,
    table: &mut Table,
) -> Result<(), BenchError> {
    let guest = guest(&args.guests, "nexmark")?;
    let base = scaled(EVENTS / 5, args.scale);
    for query in [Query::Q5, Query::Q7] {
        for factor in [1, 5] {
            let name = format!("nexmark-memory-{}-{factor}x", query.name());
            let pipeline = query
                .add_steps(
                    builder(
                        &name,
                        NexmarkSource::new(base * factor, args.seed),
                        args.batch_size,
                        rt,
                    ),
                    Engine::Wasm,
                    &guest,
                )
                .to(DiscardSink::new());
            let scenario = format!("memory nexmark {} {factor}x", query.name());
            table.push(measure(scenario, Engine::Wasm, 1, vec![pipeline]).await?);
        }
    }
    for query in Query::AGGREGATED {
        for factor in [1, 5] {
            let scenario = format!("memory nexmark {} {factor}x (aggregate)", query.name());
            if !will_measure(&scenario, Engine::Wasm) {
                continue;
            }
            let aggregator = guest_path(args, "nexmark-aggregate")?;
            let name = format!("nexmark-memory-{}-{factor}x-aggregate", query.name());
            let pipeline = query
                .add_aggregated_steps(
                    builder(
                        &name,
                        NexmarkSource::new(base * factor, args.seed),
                        args.batch_size,
                        rt,
                    ),
                    &guest,
                    &aggregator,
                )
                .to(DiscardSink::new());
            table.push(measure(scenario, Engine::Wasm, 1, vec![pipeline]).await?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::read_all;
    use std::collections::BTreeMap;

    use super::*;
    use plumber::streams::channel_sink;

    fn generated(events: u64, seed: u64) -> Vec<Event> {
        (0..events).map(|id| nexmark_event(seed, id)).collect()
    }

    fn text(event: &Event) -> &str {
        std::str::from_utf8(&event.value).unwrap()
    }

    /// A bid's fields, split independently of the code under test.
    struct Bid {
        auction: u64,
        bidder: u64,
        price: u64,
        time: u64,
    }

    fn bids(events: &[Event]) -> Vec<Bid> {
        events
            .iter()
            .map(text)
            .filter(|line| line.starts_with("B,"))
            .map(|line| {
                let f: Vec<&str> = line.split(',').collect();
                Bid {
                    auction: f[1].parse().unwrap(),
                    bidder: f[2].parse().unwrap(),
                    price: f[3].parse().unwrap(),
                    time: f[6].parse().unwrap(),
                }
            })
            .collect()
    }

    /// Runs `query` natively over `events` generated events.
    async fn run_native(query: Query, events: u64, seed: u64) -> Vec<Event> {
        let (sink, mut out) = channel_sink(1_000_000);
        let rt = Runtime::new(None).unwrap();
        let pipeline = query
            .add_steps(
                builder("test", NexmarkSource::new(events, seed), 1000, &rt),
                Engine::Native,
                Path::new("unused"),
            )
            .to(sink);
        pipeline.run().await.unwrap();
        let mut events = Vec::new();
        while let Ok(event) = out.try_recv() {
            events.push(event);
        }
        events
    }

    #[tokio::test]
    async fn the_generator_is_deterministic_for_a_seed() {
        let a = read_all(&mut NexmarkSource::new(2_000, 7), 100).await;
        let b = read_all(&mut NexmarkSource::new(2_000, 7), 33).await;
        let c = read_all(&mut NexmarkSource::new(2_000, 8), 100).await;
        assert_eq!(a.len(), 2_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_mix_is_one_person_three_auctions_46_bids_per_50() {
        let mut kinds: BTreeMap<char, usize> = BTreeMap::new();
        for event in generated(5_000, 42) {
            *kinds
                .entry(text(&event).chars().next().unwrap())
                .or_default() += 1;
        }
        assert_eq!(
            kinds,
            BTreeMap::from([('A', 300), ('B', 4_600), ('P', 100)])
        );
    }

    #[tokio::test]
    async fn seeking_to_an_offset_continues_identically() {
        let all = read_all(&mut NexmarkSource::new(3_000, 42), 7).await;
        let mut source = NexmarkSource::new(3_000, 42);
        source.seek(&Position::Offset(1_234)).await.unwrap();
        let (first, position) = source.next_batch(10).await.unwrap().unwrap();
        assert_eq!(position, Position::Offset(1_244));
        let mut rest = first;
        rest.extend(read_all(&mut source, 64).await);
        assert_eq!(rest, all[1_234..]);
        source.seek(&Position::Offset(10_000)).await.unwrap();
        assert!(source.next_batch(10).await.unwrap().is_none());
    }

    #[test]
    fn events_parse_and_follow_the_reference_distributions() {
        let events = generated(50_000, 42);
        let mut sizes: BTreeMap<char, (usize, usize)> = BTreeMap::new();
        for (id, event) in events.iter().enumerate() {
            let line = text(event);
            let kind = line.chars().next().unwrap();
            let fields: Vec<&str> = line.split(',').collect();
            let expected_fields = match kind {
                'B' => 8,
                'P' => 9,
                'A' => 11,
                other => panic!("unknown kind {other}"),
            };
            assert_eq!(fields.len(), expected_fields, "{line}");
            let date_time = match kind {
                'B' => fields[6],
                'P' => fields[7],
                _ => fields[6],
            };
            assert_eq!(event.timestamp, Some(date_time.parse().unwrap()));
            assert_eq!(event.timestamp, Some(BASE_TIME_MS + id as u64 / 10));
            assert!(event.key.is_none());
            let size = sizes.entry(kind).or_default();
            size.0 += line.len();
            size.1 += 1;
        }
        let average = |kind| sizes[&kind].0 / sizes[&kind].1;
        assert!(
            (100..=130).contains(&average('B')),
            "bids: {}",
            average('B')
        );
        assert!(
            (185..=215).contains(&average('P')),
            "persons: {}",
            average('P')
        );
        assert!(
            (470..=530).contains(&average('A')),
            "auctions: {}",
            average('A')
        );

        let bids = bids(&events);
        assert_eq!(bids.len(), 46_000);
        let last_auction = FIRST_AUCTION_ID + 3 * 1_000;
        let last_person = FIRST_PERSON_ID + 1_000;
        for bid in &bids {
            assert!((FIRST_AUCTION_ID..=last_auction + AUCTION_ID_LEAD).contains(&bid.auction));
            assert!((FIRST_PERSON_ID..=last_person + PERSON_ID_LEAD).contains(&bid.bidder));
            assert!(bid.price >= 100 && bid.price <= 100_000_000);
        }
        // Hot auctions: about half of the bids go to a multiple of 100 (+ 1000).
        let hot = bids.iter().filter(|b| b.auction % 100 == 0).count();
        assert!((22_000..26_000).contains(&hot), "{hot}");
    }

    #[tokio::test]
    async fn q0_passes_every_event() {
        let out = run_native(Query::Q0, 5_000, 1).await;
        assert_eq!(out, generated(5_000, 1));
    }

    #[tokio::test]
    async fn q1_converts_every_bid_price() {
        let input = generated(5_000, 1);
        let out = run_native(Query::Q1, 5_000, 1).await;
        let expected: Vec<String> = input
            .iter()
            .map(text)
            .filter(|line| line.starts_with("B,"))
            .map(|line| {
                let mut f: Vec<String> = line.split(',').map(str::to_owned).collect();
                f[3] = (f[3].parse::<u64>().unwrap() * 908 / 1000).to_string();
                f.join(",")
            })
            .collect();
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), expected);
    }

    #[tokio::test]
    async fn q2_selects_only_auctions_divisible_by_123() {
        let input = generated(100_000, 1);
        let out = run_native(Query::Q2, 100_000, 1).await;
        let expected: Vec<String> = bids(&input)
            .iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| format!("{},{}", b.auction, b.price))
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), expected);
    }

    #[tokio::test]
    async fn q5_finds_the_hottest_auctions_of_each_sliding_window() {
        let input = generated(150_000, 3);
        let out = run_native(Query::Q5, 150_000, 3).await;
        // Every 2 s window start covering each bid, over 10 s.
        let mut counts: BTreeMap<u64, BTreeMap<u64, u64>> = BTreeMap::new();
        for bid in bids(&input) {
            let mut start = bid.time - bid.time % 2_000;
            loop {
                *counts
                    .entry(start)
                    .or_default()
                    .entry(bid.auction)
                    .or_default() += 1;
                if start + 10_000 <= bid.time + 2_000 {
                    break;
                }
                start -= 2_000;
            }
        }
        let mut expected = Vec::new();
        for (start, per_auction) in counts {
            let max = per_auction.values().max().unwrap();
            for (auction, count) in &per_auction {
                if count == max {
                    expected.push(format!("{start},{auction},{count}"));
                }
            }
        }
        let mut lines: Vec<&str> = out.iter().map(text).collect();
        lines.sort_unstable();
        expected.sort_unstable();
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn q7_outputs_only_the_highest_bids_of_each_window() {
        let input = generated(250_000, 5);
        let out = run_native(Query::Q7, 250_000, 5).await;
        let mut windows: BTreeMap<u64, Vec<Bid>> = BTreeMap::new();
        for bid in bids(&input) {
            windows
                .entry(bid.time - bid.time % 10_000)
                .or_default()
                .push(bid);
        }
        assert_eq!(windows.len(), 3);
        let mut expected = Vec::new();
        for (start, bids) in windows {
            let max = bids.iter().map(|b| b.price).max().unwrap();
            for b in bids.iter().filter(|b| b.price == max) {
                expected.push(format!(
                    "{},{},{},{}",
                    start + 10_000,
                    b.auction,
                    b.bidder,
                    b.price
                ));
            }
        }
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), expected);
        assert!(out.iter().all(|e| e.timestamp.is_some()));
    }

    #[test]
    fn window_stages_refuse_a_batch_outside_a_window_and_malformed_bids_fail() {
        assert!(Stage::Q5.apply(Batch::new(vec![])).is_err());
        assert!(Stage::Q7.apply(Batch::new(vec![])).is_err());
        assert!(Stage::Q1
            .apply(Batch::new(vec![Event::new("B,1,2")]))
            .is_err());
        assert!(Stage::Q2
            .apply(Batch::new(vec![Event::new("B,x,2,3,c,u,1,e")]))
            .is_err());
        // Non-bids pass the bid filters untouched by parsing.
        assert!(Stage::Q1
            .apply(Batch::new(vec![Event::new("P,whatever")]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn fields_and_numbers_parse_by_hand() {
        assert_eq!(fields::<3>(b"a,bc,d"), Some([(0, 1), (2, 4), (5, 6)]));
        assert_eq!(fields::<2>(b"a,bc,d"), Some([(0, 1), (2, 4)]));
        assert_eq!(fields::<4>(b"a,bc,d"), None);
        assert_eq!(parse_u64(b"0123"), Some(123));
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"99999999999999999999"), None);
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        push_u64(&mut out, u64::MAX);
        assert_eq!(out, b"018446744073709551615");
    }
}
