//! Nexmark q5 and q7 as window aggregators (the plumber:pipe aggregator
//! world, `wit/aggregate.wit`): the same output lines as the buffering
//! `nexmark` pipe after its window, from an accumulator per window (per
//! pane for q5's sliding window) instead of the window's events. The
//! config picks the query: `{"query": "q5"}`.
//!
//! | query | input (the `nexmark` pipe's projection) | accumulator | output |
//! | --- | --- | --- | --- |
//! | `q5` | `q5-bids`: key = auction, empty value | bids per auction: `(auction, count)` pairs, by auction | `window_start,auction,count` of the auction(s) with the most bids, by auction |
//! | `q7` | `q7-bids`: `auction,bidder,price,date_time` | the highest price and the `auction,bidder,price` of each bid at it, in arrival order | `window_end,auction,bidder,price` of each |
//!
//! Accumulators are little-endian integers: q5 `n` then `n` pairs of
//! u64; q7 the price (u64), then each bid as a u32 length and its bytes.

// The generated canonical-ABI glue takes one argument per flattened value.
#![allow(clippy::too_many_arguments)]

wit_bindgen::generate!({
    world: "aggregator",
    path: "../../../wit",
});

use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    query: String,
}

const Q5: u8 = 5;
const Q7: u8 = 7;
static QUERY: AtomicU8 = AtomicU8::new(0);

fn error(message: impl Into<String>) -> PipeError {
    PipeError {
        message: message.into(),
        retryable: false,
        event_index: None,
    }
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

fn read_u64(bytes: &[u8], at: &mut usize) -> Result<u64, PipeError> {
    let word = bytes
        .get(*at..*at + 8)
        .ok_or_else(|| error("corrupt accumulator"))?;
    *at += 8;
    let mut buf = [0; 8];
    buf.copy_from_slice(word);
    Ok(u64::from_le_bytes(buf))
}

/// q5: bids per auction.
type Counts = BTreeMap<u64, u64>;

fn decode_counts(bytes: &[u8]) -> Result<Counts, PipeError> {
    let mut at = 0;
    let n = read_u64(bytes, &mut at)?;
    let mut counts = Counts::new();
    for _ in 0..n {
        let auction = read_u64(bytes, &mut at)?;
        let count = read_u64(bytes, &mut at)?;
        counts.insert(auction, count);
    }
    Ok(counts)
}

fn encode_counts(counts: &Counts) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 16 * counts.len());
    out.extend_from_slice(&(counts.len() as u64).to_le_bytes());
    for (auction, count) in counts {
        out.extend_from_slice(&auction.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
    out
}

/// q7: the highest price and the bids at it (`auction,bidder,price`).
#[derive(Default)]
struct Highest {
    price: Option<u64>,
    bids: Vec<Vec<u8>>,
}

impl Highest {
    fn decode(bytes: &[u8]) -> Result<Highest, PipeError> {
        let mut at = 0;
        let price = read_u64(bytes, &mut at)?;
        let mut bids = Vec::new();
        while at < bytes.len() {
            let len = bytes
                .get(at..at + 4)
                .ok_or_else(|| error("corrupt accumulator"))?;
            let mut buf = [0; 4];
            buf.copy_from_slice(len);
            at += 4;
            let len = u32::from_le_bytes(buf) as usize;
            let bid = bytes
                .get(at..at + len)
                .ok_or_else(|| error("corrupt accumulator"))?;
            at += len;
            bids.push(bid.to_vec());
        }
        Ok(Highest {
            price: Some(price),
            bids,
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.price.unwrap_or(0).to_le_bytes());
        for bid in &self.bids {
            out.extend_from_slice(&(bid.len() as u32).to_le_bytes());
            out.extend_from_slice(bid);
        }
        out
    }

    /// A bid at `price`.
    fn offer(&mut self, price: u64, bid: &[u8]) {
        match self.price {
            Some(max) if price < max => {}
            Some(max) if price == max => self.bids.push(bid.to_vec()),
            _ => {
                self.price = Some(price);
                self.bids.clear();
                self.bids.push(bid.to_vec());
            }
        }
    }

    /// `self` then `later`.
    fn merge(&mut self, later: Highest) {
        match (self.price, later.price) {
            (_, None) => {}
            (Some(a), Some(b)) if a > b => {}
            (Some(a), Some(b)) if a == b => self.bids.extend(later.bids),
            _ => *self = later,
        }
    }
}

/// `auction,bidder,price` and the price of a `q7-bids` value
/// (`auction,bidder,price,date_time`).
fn q7_bid(value: &[u8]) -> Option<(&[u8], u64)> {
    let mut commas = value.iter().enumerate().filter(|(_, b)| **b == b',');
    let (_, _) = commas.next()?;
    let (second, _) = commas.next()?;
    let (third, _) = commas.next()?;
    let price = parse_u64(&value[second + 1..third])?;
    Some((&value[..third], price))
}

fn query() -> u8 {
    QUERY.load(Ordering::Relaxed)
}

struct NexmarkAggregate;

impl Guest for NexmarkAggregate {
    fn init(config: String) -> Result<(), PipeError> {
        let config: Config =
            serde_json::from_str(&config).map_err(|e| error(format!("bad config: {e}")))?;
        let query = match config.query.as_str() {
            "q5" => Q5,
            "q7" => Q7,
            other => return Err(error(format!("unknown query `{other}`: expected q5 or q7"))),
        };
        QUERY.store(query, Ordering::Relaxed);
        Ok(())
    }

    fn add(calls: Vec<AddCall>) -> Result<Vec<Vec<u8>>, PipeError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            if query() == Q5 {
                let mut counts = match &call.accumulator {
                    Some(bytes) => decode_counts(bytes)?,
                    None => Counts::new(),
                };
                for event in &call.events {
                    let auction = event
                        .key
                        .as_deref()
                        .and_then(parse_u64)
                        .ok_or_else(|| error("q5: the event's key is not an auction id"))?;
                    *counts.entry(auction).or_default() += 1;
                }
                out.push(encode_counts(&counts));
            } else {
                let mut highest = match &call.accumulator {
                    Some(bytes) => Highest::decode(bytes)?,
                    None => Highest::default(),
                };
                for event in &call.events {
                    let (bid, price) = q7_bid(&event.value)
                        .ok_or_else(|| error("q7: expected auction,bidder,price,date_time"))?;
                    highest.offer(price, bid);
                }
                out.push(highest.encode());
            }
        }
        Ok(out)
    }

    fn merge(calls: Vec<MergeCall>) -> Result<Vec<Vec<u8>>, PipeError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            if query() == Q5 {
                let mut total = Counts::new();
                for part in &call.accumulators {
                    for (auction, count) in decode_counts(part)? {
                        *total.entry(auction).or_default() += count;
                    }
                }
                out.push(encode_counts(&total));
            } else {
                let mut highest = Highest::default();
                for part in &call.accumulators {
                    highest.merge(Highest::decode(part)?);
                }
                out.push(highest.encode());
            }
        }
        Ok(out)
    }

    fn emit(calls: Vec<EmitCall>) -> Result<Vec<Vec<Event>>, PipeError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let start = call.window.start;
            let end = call.window.end;
            let line = |value: String| Event {
                key: None,
                value: value.into_bytes(),
                timestamp: Some(end),
                headers: Vec::new(),
            };
            if query() == Q5 {
                let counts = decode_counts(&call.accumulator)?;
                let max = counts.values().copied().max();
                out.push(
                    counts
                        .iter()
                        .filter(|(_, c)| Some(**c) == max)
                        .map(|(auction, count)| line(format!("{start},{auction},{count}")))
                        .collect(),
                );
            } else {
                let highest = Highest::decode(&call.accumulator)?;
                out.push(
                    highest
                        .bids
                        .iter()
                        .map(|bid| line(format!("{end},{}", String::from_utf8_lossy(bid))))
                        .collect(),
                );
            }
        }
        Ok(out)
    }
}

export!(NexmarkAggregate);
