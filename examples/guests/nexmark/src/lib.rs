//! The Nexmark queries of `plumber bench` (q0, q1, q2, q5, q7) as one pipe,
//! the query chosen by the config: `{"query": "q0"}`.
//!
//! Events are the comma-separated text of the host's Nexmark generator
//! (`host/cli/src/bench/nexmark.rs`), first field the kind:
//! `B,auction,bidder,price,channel,url,date_time,extra` (persons `P,…`,
//! auctions `A,…`). The host's native baselines implement the same logic;
//! the benchmark's equivalence test checks both give the same output.
//!
//! | query | input | output |
//! | --- | --- | --- |
//! | `q0` | events | the same events (pass-through) |
//! | `q1` | events | bids, price converted to euros (`price * 908 / 1000`) |
//! | `q2` | events | `auction,price` of bids with `auction % 123 == 0` |
//! | `q5-bids` | events | per bid: key = auction, empty value, same timestamp |
//! | `q5` | a sliding window of `q5-bids` | `window_start,auction,count` of the auction(s) with the most bids |
//! | `q7-bids` | events | per bid: `auction,bidder,price,date_time`, same timestamp |
//! | `q7` | a tumbling window of `q7-bids` | `window_end,auction,bidder,price` of the bid(s) with the highest price |
//! | `q3` | events | `name,city,state,auction` of each auction in category 10 whose seller lives in OR, ID or CA (persons kept in state: `p<id>`; auctions whose seller is not there yet wait in `a<id>`) |
//! | `q4` | events | per closed auction (below): `category,average`, the average final price of the closed auctions of its category so far |
//! | `q6` | events | per closed auction: `seller,average`, the average final price of the seller's last 10 closed auctions |
//! | `q11-bids` | events | per bid: key = bidder, empty value, same timestamp |
//! | `q11` | a keyed session window of `q11-bids` (one batch per bidder and session) | `bidder,bids,session_start,session_end` |
//! | `q8-tag` | events | persons: key = id, value `id,name`, header `plumber-input: persons`; auctions: key = seller, value = auction id, header `plumber-input: auctions`; bids dropped |
//! | `q8` | a windowed join of `q8-tag`'s persons and auctions (one batch per window and key) | `id,name,window_start` of each person of the batch, when the batch also has an auction |
//!
//! q4 and q6 follow auctions to their close: an auction is open from its
//! own time to `expires`; a bid for an open auction at a time in between
//! (both ends included) may raise its final price; the auction closes at
//! the first event after `expires` (auctions closing together in the order
//! of `expires`, then id), and counts only if it had a bid. The open
//! auctions are kept in the pipeline's state (`open`), with the per
//! category sums (`c<category>`, q4) and each seller's last prices
//! (`s<seller>`, q6).
//!
//! Fields are found by splitting byte slices and integers parsed by hand,
//! so a bid costs no allocation beyond its output value.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, DefaultHasher};

use plumber_guest::{Batch, BatchReader, BatchWriter, Event, EventRef, Pipe, PipeError, State};

/// What the window aggregators read of an event: owned (`process`) or
/// borrowed from a packed batch (`process_packed`).
trait View {
    fn key(&self) -> Option<&[u8]>;
    fn value(&self) -> &[u8];
    fn timestamp(&self) -> Option<u64>;
}

impl View for Event {
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
    fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

impl View for EventRef<'_> {
    fn key(&self) -> Option<&[u8]> {
        self.key
    }
    fn value(&self) -> &[u8] {
        self.value
    }
    fn timestamp(&self) -> Option<u64> {
        self.timestamp
    }
}

/// Which query the pipe runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    Q0,
    Q1,
    Q2,
    Q3,
    Q4,
    Q6,
    Q5Bids,
    Q5,
    Q7Bids,
    Q7,
    Q8Tag,
    Q8,
    Q11Bids,
    Q11,
}

#[derive(serde::Deserialize)]
struct Config {
    query: String,
}

pub struct Nexmark {
    query: Query,
}

impl Pipe for Nexmark {
    fn init(config: &str) -> Result<Self, PipeError> {
        let config: Config = plumber_guest::parse_config(config)?;
        let query = match config.query.as_str() {
            "q0" => Query::Q0,
            "q1" => Query::Q1,
            "q2" => Query::Q2,
            "q3" => Query::Q3,
            "q4" => Query::Q4,
            "q6" => Query::Q6,
            "q5-bids" => Query::Q5Bids,
            "q5" => Query::Q5,
            "q7-bids" => Query::Q7Bids,
            "q7" => Query::Q7,
            "q8-tag" => Query::Q8Tag,
            "q8" => Query::Q8,
            "q11-bids" => Query::Q11Bids,
            "q11" => Query::Q11,
            other => {
                return Err(PipeError::new(format!(
                    "unknown query `{other}`: expected q0, q1, q2, q3, q4, q6, q5-bids, q5, q7-bids, q7, \
                     q8-tag, q8, q11-bids or q11"
                )))
            }
        };
        Ok(Nexmark { query })
    }

    fn process_packed(
        &mut self,
        batch: BatchReader<'_>,
        out: &mut Vec<u8>,
        state: &mut State,
    ) -> Result<(), PipeError> {
        self.packed(&batch, out, state)
    }

    fn process(&mut self, batch: Batch, state: &mut State) -> Result<Vec<Event>, PipeError> {
        match self.query {
            Query::Q3 => q3(batch.events, state),
            Query::Q4 | Query::Q6 => closed_auctions(&batch.events, self.query, state),
            Query::Q0 => Ok(batch.events),
            Query::Q1 => q1(batch.events),
            Query::Q2 => q2(batch.events),
            Query::Q5Bids => q5_bids(batch.events),
            Query::Q7Bids => q7_bids(batch.events),
            Query::Q8Tag => q8_tag(batch.events),
            Query::Q11Bids => q11_bids(batch.events),
            Query::Q11 => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new("q11 must follow a session window: the batch has no window-info")
                })?;
                Ok(q11(&batch.events, window.start, window.end))
            }
            Query::Q8 => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new("q8 must follow a windowed join: the batch has no window-info")
                })?;
                q8(&batch.events, window.start, window.end)
            }
            Query::Q5 | Query::Q7 => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new("q5 and q7 must follow a window: the batch has no window-info")
                })?;
                if self.query == Query::Q5 {
                    q5(&batch.events, window.start, window.end)
                } else {
                    q7(&batch.events, window.end)
                }
            }
        }
    }
}

impl Nexmark {
    /// `process` on a packed batch: bids are read in place and answers
    /// written straight into the output buffer.
    fn packed(
        &self,
        batch: &BatchReader<'_>,
        out: &mut Vec<u8>,
        state: &mut State,
    ) -> Result<(), PipeError> {
        let malformed = |e: plumber_guest::wire::DecodeError| PipeError::new(e.to_string());
        let mut writer = BatchWriter::new(out, None);
        let mut value = Vec::with_capacity(256);
        match self.query {
            Query::Q4 | Query::Q6 => {
                // Read in place: every bid counts.
                let events: Vec<EventRef<'_>> = batch
                    .events()
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
                for event in &closed_auctions(&events, self.query, state)? {
                    writer.push(None, &event.value, event.timestamp, []);
                }
            }
            Query::Q11 => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new("q11 must follow a session window: the batch has no window-info")
                })?;
                let events: Vec<EventRef<'_>> = batch
                    .events()
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
                for event in &q11(&events, window.start, window.end) {
                    writer.push(None, &event.value, event.timestamp, []);
                }
            }
            Query::Q3 | Query::Q8Tag | Query::Q8 => {
                // Persons and auctions are few (4 in 50 events): the owned
                // path, written back.
                // Bids take no part in q3 and q8-tag: left in the buffer.
                let wanted = |event: &Result<EventRef<'_>, _>| match event {
                    Ok(event) => self.query == Query::Q8 || !is_bid(event.value),
                    Err(_) => true,
                };
                let events: Vec<Event> = batch
                    .events()
                    .filter(wanted)
                    .map(|event| {
                        event.and_then(|event| {
                            Ok(Event {
                                key: event.key.map(<[u8]>::to_vec),
                                value: event.value.to_vec(),
                                timestamp: event.timestamp,
                                headers: event
                                    .headers()
                                    .map(|h| h.map(|(n, v)| (n.to_owned(), v.to_owned())))
                                    .collect::<Result<_, _>>()?,
                            })
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
                let answer = if self.query == Query::Q3 {
                    q3(events, state)?
                } else if self.query == Query::Q8Tag {
                    q8_tag(events)?
                } else {
                    let window = batch.window.ok_or_else(|| {
                        PipeError::new(
                            "q8 must follow a windowed join: the batch has no window-info",
                        )
                    })?;
                    q8(&events, window.start, window.end)?
                };
                for event in &answer {
                    writer.push(
                        event.key.as_deref(),
                        &event.value,
                        event.timestamp,
                        event.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                    );
                }
            }
            Query::Q5 | Query::Q7 => {
                let window = batch.window.ok_or_else(|| {
                    PipeError::new("q5 and q7 must follow a window: the batch has no window-info")
                })?;
                let events: Vec<EventRef<'_>> = batch
                    .events()
                    .collect::<Result<_, _>>()
                    .map_err(malformed)?;
                let answer = if self.query == Query::Q5 {
                    q5(&events, window.start, window.end)?
                } else {
                    q7(&events, window.end)?
                };
                for event in &answer {
                    writer.push(event.key.as_deref(), &event.value, event.timestamp, []);
                }
            }
            query => {
                for (index, event) in batch.events().enumerate() {
                    let event = event.map_err(malformed)?;
                    if query == Query::Q0 {
                        writer.push_copy(&event);
                        continue;
                    }
                    if !is_bid(event.value) {
                        continue;
                    }
                    let v = event.value;
                    let f = bid_fields(v, index)?;
                    value.clear();
                    match query {
                        Query::Q1 => {
                            let price = number(v, f[PRICE], "price", index)?;
                            value.extend_from_slice(&v[..f[PRICE].0]);
                            push_u64(&mut value, price * 908 / 1000);
                            value.extend_from_slice(&v[f[PRICE].1..]);
                            let headers = event
                                .headers()
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(malformed)?;
                            writer.push(event.key, &value, event.timestamp, headers);
                        }
                        Query::Q2 => {
                            let auction = number(v, f[AUCTION], "auction", index)?;
                            if auction % 123 != 0 {
                                continue;
                            }
                            let price = number(v, f[PRICE], "price", index)?;
                            push_u64(&mut value, auction);
                            value.push(b',');
                            push_u64(&mut value, price);
                            let headers = event
                                .headers()
                                .collect::<Result<Vec<_>, _>>()
                                .map_err(malformed)?;
                            writer.push(event.key, &value, event.timestamp, headers);
                        }
                        Query::Q5Bids => {
                            number(v, f[AUCTION], "auction", index)?;
                            let (start, end) = f[AUCTION];
                            writer.push(Some(&v[start..end]), &[], event.timestamp, []);
                        }
                        Query::Q11Bids => {
                            number(v, f[BIDDER], "bidder", index)?;
                            let (start, end) = f[BIDDER];
                            writer.push(Some(&v[start..end]), &[], event.timestamp, []);
                        }
                        _ => {
                            // q7-bids: auction, bidder and price are adjacent fields.
                            number(v, f[PRICE], "price", index)?;
                            value.extend_from_slice(&v[f[AUCTION].0..f[PRICE].1]);
                            value.push(b',');
                            value.extend_from_slice(&v[f[DATE_TIME].0..f[DATE_TIME].1]);
                            writer.push(None, &value, event.timestamp, []);
                        }
                    }
                }
            }
        }
        writer.finish();
        Ok(())
    }
}

plumber_guest::export_pipe!(Nexmark);

/// The states q3 selects.
const Q3_STATES: [&[u8]; 3] = [b"OR", b"ID", b"CA"];

/// q3, a join of auctions with their sellers kept in state: a person in
/// one of [`Q3_STATES`] is stored as `p<id>` = `name,city,state` (others as
/// `-`, so that their auctions need not wait), and answers the auctions
/// that waited for them in `a<id>`; an auction of category 10 is answered
/// at once when its seller is known, else waits.
fn q3(events: Vec<Event>, state: &mut State) -> Result<Vec<Event>, PipeError> {
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
                fields::<7>(v).ok_or_else(|| PipeError::new("malformed person").at_event(index))?;
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
            state.set(&format!("p{id}"), &row)?;
            let waiting = format!("a{id}");
            if let Some(auctions) = state.get(&waiting)? {
                if selected {
                    for auction in auctions.split(|&b| b == b',') {
                        out.push(answer(&row, auction, event.timestamp));
                    }
                }
                state.delete(&waiting)?;
            }
        } else if v.starts_with(b"A,") {
            // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,…
            let f = fields::<10>(v)
                .ok_or_else(|| PipeError::new("malformed auction").at_event(index))?;
            if number(v, f[9], "category", index)? != 10 {
                continue;
            }
            let seller = number(v, f[8], "seller", index)?;
            let auction = &v[f[1].0..f[1].1];
            match state.get(&format!("p{seller}"))? {
                Some(row) if row == b"-" => {}
                Some(row) => out.push(answer(&row, auction, event.timestamp)),
                None => {
                    let waiting = format!("a{seller}");
                    let mut auctions = state.get(&waiting)?.unwrap_or_default();
                    if !auctions.is_empty() {
                        auctions.push(b',');
                    }
                    auctions.extend_from_slice(auction);
                    state.set(&waiting, &auctions)?;
                }
            }
        }
    }
    Ok(out)
}

/// An auction still open (q4, q6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Open {
    id: u64,
    category: u64,
    seller: u64,
    start: u64,
    expires: u64,
    /// The highest bid so far (0: none).
    best: u64,
}

/// The open auctions as stored: `id,category,seller,start,expires,best`
/// joined by `;`.
fn load_open(state: &mut State) -> Result<Vec<Open>, PipeError> {
    let Some(bytes) = state.get("open")? else {
        return Ok(Vec::new());
    };
    let mut open = Vec::new();
    for record in bytes.split(|&b| b == b';').filter(|r| !r.is_empty()) {
        let n: Vec<u64> = record
            .split(|&b| b == b',')
            .map(parse_u64)
            .collect::<Option<_>>()
            .filter(|n: &Vec<u64>| n.len() == 6)
            .ok_or_else(|| PipeError::new("the stored open auctions are corrupt"))?;
        open.push(Open {
            id: n[0],
            category: n[1],
            seller: n[2],
            start: n[3],
            expires: n[4],
            best: n[5],
        });
    }
    Ok(open)
}

fn save_open(state: &mut State, open: &[Open]) -> Result<(), PipeError> {
    let mut bytes = Vec::with_capacity(open.len() * 48);
    for auction in open {
        for (i, n) in [
            auction.id,
            auction.category,
            auction.seller,
            auction.start,
            auction.expires,
            auction.best,
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                bytes.push(b',');
            }
            push_u64(&mut bytes, n);
        }
        bytes.push(b';');
    }
    state.set("open", &bytes)?;
    Ok(())
}

/// q4 and q6 over one batch: auctions open, bids raise them, and each
/// auction that closes with a bid is answered (see the module docs).
fn closed_auctions<E: View>(
    events: &[E],
    query: Query,
    state: &mut State,
) -> Result<Vec<Event>, PipeError> {
    let mut open = load_open(state)?;
    let mut out = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let v = event.value();
        let time = event.timestamp().unwrap_or_default();
        // Close what expired before this event, in (expires, id) order.
        if open.iter().any(|a| a.expires < time) {
            let (mut closing, still): (Vec<Open>, Vec<Open>) =
                open.into_iter().partition(|a| a.expires < time);
            open = still;
            closing.sort_by_key(|a| (a.expires, a.id));
            for auction in closing.iter().filter(|a| a.best > 0) {
                out.push(closed(auction, query, time, state)?);
            }
        }
        if v.starts_with(b"A,") {
            // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,category,…
            let f = fields::<10>(v)
                .ok_or_else(|| PipeError::new("malformed auction").at_event(index))?;
            open.push(Open {
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
            if let Ok(found) = open.binary_search_by_key(&auction, |a| a.id) {
                let open = &mut open[found];
                if open.start <= at && at <= open.expires {
                    open.best = open.best.max(number(v, f[PRICE], "price", index)?);
                }
            }
        }
    }
    save_open(state, &open)?;
    Ok(out)
}

/// The answer for a closed auction, and the running aggregate it updates.
fn closed(auction: &Open, query: Query, time: u64, state: &mut State) -> Result<Event, PipeError> {
    let mut value = Vec::with_capacity(48);
    if query == Query::Q4 {
        let key = format!("c{}", auction.category);
        let (sum, count) = match state.get_string(&key)? {
            Some(text) => text
                .split_once(',')
                .and_then(|(s, c)| Some((s.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
                .ok_or_else(|| PipeError::new("a stored category sum is corrupt"))?,
            None => (0, 0),
        };
        let (sum, count) = (sum + auction.best, count + 1);
        state.set(&key, format!("{sum},{count}").as_bytes())?;
        push_u64(&mut value, auction.category);
        value.push(b',');
        push_u64(&mut value, sum / count);
    } else {
        let key = format!("s{}", auction.seller);
        let mut prices: Vec<u64> = match state.get_string(&key)? {
            Some(text) => text
                .split(',')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()
                .ok_or_else(|| PipeError::new("a stored seller's prices are corrupt"))?,
            None => Vec::new(),
        };
        prices.push(auction.best);
        if prices.len() > 10 {
            prices.remove(0);
        }
        let text: Vec<String> = prices.iter().map(u64::to_string).collect();
        state.set(&key, text.join(",").as_bytes())?;
        push_u64(&mut value, auction.seller);
        value.push(b',');
        push_u64(&mut value, prices.iter().sum::<u64>() / prices.len() as u64);
    }
    Ok(Event::new(value).with_timestamp(time))
}

/// Bids keyed by bidder, empty value (before q11's session window).
fn q11_bids(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
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

/// One bidder's session: `bidder,bids,session_start,session_end`.
fn q11<E: View>(events: &[E], start: u64, end: u64) -> Vec<Event> {
    let Some(bidder) = events.first().and_then(View::key) else {
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

/// Persons keyed by id and auctions keyed by seller, each tagged with its
/// input's name for the join; bids dropped.
fn q8_tag(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
    let mut out = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let v = &event.value;
        let tagged = if v.starts_with(b"P,") {
            // P,id,name,email,credit_card,city,state,date_time,extra
            let f =
                fields::<3>(v).ok_or_else(|| PipeError::new("malformed person").at_event(index))?;
            number(v, f[1], "id", index)?;
            Event {
                key: Some(v[f[1].0..f[1].1].to_vec()),
                value: v[f[1].0..f[2].1].to_vec(),
                timestamp: event.timestamp,
                headers: vec![(INPUT_HEADER.to_owned(), "persons".to_owned())],
            }
        } else if v.starts_with(b"A,") {
            // A,id,item_name,description,initial_bid,reserve,date_time,expires,seller,…
            let f = fields::<9>(v)
                .ok_or_else(|| PipeError::new("malformed auction").at_event(index))?;
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

/// The persons of one window and key (a person id) who also opened an
/// auction in it: `id,name,window_start`, timestamp the window's end.
fn q8(events: &[Event], start: u64, end: u64) -> Result<Vec<Event>, PipeError> {
    let from = |event: &Event, input: &str| event.header(INPUT_HEADER) == Some(input);
    if !events.iter().any(|e| from(e, "auctions")) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for event in events.iter().filter(|e| from(e, "persons")) {
        let mut value = Vec::with_capacity(event.value.len() + 21);
        value.extend_from_slice(&event.value);
        value.push(b',');
        push_u64(&mut value, start);
        out.push(Event::new(value).with_timestamp(end));
    }
    Ok(out)
}

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

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(digits(n, &mut [0; 20]));
}

fn is_bid(value: &[u8]) -> bool {
    value.starts_with(b"B,")
}

/// The fields of a bid up to its date_time, or an error naming the event.
fn bid_fields(value: &[u8], index: usize) -> Result<[(usize, usize); 7], PipeError> {
    fields::<7>(value)
        .ok_or_else(|| PipeError::new("malformed bid: fewer than 7 fields").at_event(index))
}

fn number(value: &[u8], range: (usize, usize), what: &str, index: usize) -> Result<u64, PipeError> {
    parse_u64(&value[range.0..range.1]).ok_or_else(|| {
        PipeError::new(format!("malformed bid: {what} is not a number")).at_event(index)
    })
}

/// Currency conversion: bids only, price in euros, other fields kept.
fn q1(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
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

/// Selection: `auction,price` of the bids on every 123rd auction.
fn q2(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
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

/// Projection before q5's window: key = auction, no value.
fn q5_bids(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        if !is_bid(&event.value) {
            continue;
        }
        let f = bid_fields(&event.value, index)?;
        let (start, end) = f[AUCTION];
        number(&event.value, f[AUCTION], "auction", index)?;
        out.push(Event {
            key: Some(event.value[start..end].to_vec()),
            value: Vec::new(),
            timestamp: event.timestamp,
            headers: Vec::new(),
        });
    }
    Ok(out)
}

/// Hot items: the auction(s) with the most bids in the window.
fn q5<E: View>(events: &[E], start: u64, end: u64) -> Result<Vec<Event>, PipeError> {
    // SipHash with fixed keys: std's random keys would import wasi:random in the guest.
    let mut counts: HashMap<u64, u64, BuildHasherDefault<DefaultHasher>> = HashMap::default();
    for (index, event) in events.iter().enumerate() {
        let auction = event.key().and_then(parse_u64).ok_or_else(|| {
            PipeError::new("q5: the event's key is not an auction id").at_event(index)
        })?;
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

/// Projection before q7's window: `auction,bidder,price,date_time`.
fn q7_bids(events: Vec<Event>) -> Result<Vec<Event>, PipeError> {
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

/// Highest bid: every bid of the window at the window's highest price.
fn q7<E: View>(events: &[E], end: u64) -> Result<Vec<Event>, PipeError> {
    // q7-bids fields: auction,bidder,price,date_time
    let mut max = None;
    for (index, event) in events.iter().enumerate() {
        let price = fields::<4>(event.value())
            .and_then(|f| parse_u64(&event.value()[f[2].0..f[2].1]))
            .ok_or_else(|| {
                PipeError::new("q7: expected auction,bidder,price,date_time").at_event(index)
            })?;
        max = max.max(Some(price));
    }
    let Some(max) = max else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for event in events {
        let Some(f) = fields::<4>(event.value()) else {
            continue;
        };
        if parse_u64(&event.value()[f[2].0..f[2].1]) == Some(max) {
            let head = &event.value()[..f[2].1];
            let mut value = Vec::with_capacity(21 + head.len());
            push_u64(&mut value, end);
            value.push(b',');
            value.extend_from_slice(head);
            out.push(Event::new(value).with_timestamp(end));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_guest::WindowInfo;

    fn pipe(query: &str) -> Nexmark {
        Nexmark::init(&format!(r#"{{"query":"{query}"}}"#)).unwrap()
    }

    fn bid(auction: u64, bidder: u64, price: u64, time: u64) -> Event {
        Event::new(format!(
            "B,{auction},{bidder},{price},Google,https://www.nexmark.com/abc/def/ghi/item.htm?query=1,{time},xyz"
        ))
        .with_timestamp(time)
    }

    fn person() -> Event {
        Event::new("P,1000,Peter Shultz,abc@def.com,1234 5678 9012 3456,Boise,ID,1436918400000,xx")
            .with_timestamp(1_436_918_400_000)
    }

    fn auction() -> Event {
        Event::new("A,1000,item,description,100,200,1436918400000,1436918400100,1000,10,xx")
            .with_timestamp(1_436_918_400_000)
    }

    fn run(query: &str, batch: Batch) -> Vec<Event> {
        pipe(query).process(batch, &mut State::in_memory()).unwrap()
    }

    fn values(events: &[Event]) -> Vec<&str> {
        events.iter().map(|e| e.value_str().unwrap()).collect()
    }

    fn windowed(events: Vec<Event>, start: u64, end: u64) -> Batch {
        Batch {
            events,
            window: Some(WindowInfo {
                start,
                end,
                key: None,
            }),
        }
    }

    #[test]
    fn q0_passes_everything_through() {
        let input = vec![person(), auction(), bid(1000, 1001, 5, 7)];
        let out = run("q0", Batch::new(input.clone()));
        assert_eq!(values(&out), values(&input));
        assert_eq!(out[2].timestamp, Some(7));
    }

    #[test]
    fn q1_converts_bid_prices_and_drops_the_rest() {
        let out = run(
            "q1",
            Batch::new(vec![
                person(),
                bid(1000, 1001, 12_345, 7),
                auction(),
                bid(1001, 1002, 1, 8),
            ]),
        );
        assert_eq!(
            values(&out),
            [
                "B,1000,1001,11209,Google,https://www.nexmark.com/abc/def/ghi/item.htm?query=1,7,xyz",
                "B,1001,1002,0,Google,https://www.nexmark.com/abc/def/ghi/item.htm?query=1,8,xyz"
            ]
        );
        assert_eq!(out[0].timestamp, Some(7));
    }

    #[test]
    fn q2_selects_auctions_divisible_by_123() {
        // 1107 = 9 × 123, 1230 = 10 × 123.
        let out = run(
            "q2",
            Batch::new(vec![
                bid(1107, 1, 50, 1),
                bid(1108, 1, 60, 2),
                person(),
                bid(1230, 2, 70, 3),
            ]),
        );
        assert_eq!(values(&out), ["1107,50", "1230,70"]);
        assert_eq!(out[1].timestamp, Some(3));
    }

    #[test]
    fn q5_bids_keys_bids_by_auction() {
        let out = run("q5-bids", Batch::new(vec![auction(), bid(1042, 1, 50, 9)]));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key_str(), Some("1042"));
        assert!(out[0].value.is_empty());
        assert_eq!(out[0].timestamp, Some(9));
    }

    #[test]
    fn q5_emits_the_auctions_with_the_most_bids() {
        let keyed = |a: &str| Event::new("").with_key(a);
        let events = ["7", "3", "7", "3", "5"].into_iter().map(keyed).collect();
        let out = run("q5", windowed(events, 100, 200));
        assert_eq!(values(&out), ["100,3,2", "100,7,2"]);
        assert_eq!(out[0].timestamp, Some(200));
        assert!(run("q5", windowed(vec![], 0, 10)).is_empty());
        assert!(pipe("q5")
            .process(Batch::new(vec![]), &mut State::in_memory())
            .is_err());
    }

    #[test]
    fn q7_bids_projects_bids() {
        let out = run(
            "q7-bids",
            Batch::new(vec![person(), bid(1042, 1001, 50, 9)]),
        );
        assert_eq!(values(&out), ["1042,1001,50,9"]);
        assert_eq!(out[0].timestamp, Some(9));
    }

    #[test]
    fn q7_emits_every_bid_at_the_highest_price() {
        let events = ["1,2,30,5", "3,4,90,6", "5,6,10,7", "7,8,90,8"]
            .into_iter()
            .map(Event::new)
            .collect();
        let out = run("q7", windowed(events, 0, 10_000));
        assert_eq!(values(&out), ["10000,3,4,90", "10000,7,8,90"]);
    }

    #[test]
    fn malformed_bids_and_unknown_queries_are_errors() {
        assert!(pipe("q1")
            .process(
                Batch::new(vec![Event::new("B,1,2")]),
                &mut State::in_memory()
            )
            .is_err());
        assert!(pipe("q2")
            .process(
                Batch::new(vec![Event::new("B,x,2,3,c,u,1,e")]),
                &mut State::in_memory()
            )
            .is_err());
        assert!(Nexmark::init(r#"{"query":"q9"}"#).is_err());
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
        push_u64(&mut out, 18_446_744_073_709_551_615);
        assert_eq!(out, b"018446744073709551615");
    }

    #[test]
    fn q8_tag_keys_persons_by_id_and_auctions_by_seller() {
        let out = run(
            "q8-tag",
            Batch::new(vec![person(), bid(7, 1, 2, 3), auction()]),
        );
        assert_eq!(values(&out), ["1000,Peter Shultz", "1000"]);
        assert_eq!(out[0].key_str(), Some("1000"));
        assert_eq!(out[0].header("plumber-input"), Some("persons"));
        // The auction's seller is the key.
        assert_eq!(out[1].key_str(), Some("1000"));
        assert_eq!(out[1].header("plumber-input"), Some("auctions"));
        assert_eq!(out[1].timestamp, Some(1_436_918_400_000));
    }

    #[test]
    fn q8_names_the_persons_of_a_window_that_also_has_their_auction() {
        let tagged = run("q8-tag", Batch::new(vec![person(), auction()]));
        let out = run("q8", windowed(tagged.clone(), 10, 20));
        assert_eq!(values(&out), ["1000,Peter Shultz,10"]);
        assert_eq!(out[0].timestamp, Some(20));
        // A person alone (a left join's batch) is no answer.
        let alone = run("q8", windowed(tagged[..1].to_vec(), 10, 20));
        assert!(alone.is_empty());
    }

    #[test]
    fn q3_answers_an_auction_when_its_seller_is_known_or_when_the_seller_comes() {
        let mut pipe = pipe("q3");
        let mut state = State::in_memory();
        let person = |id: u64, state: &str| {
            Event::new(format!("P,{id},Ann Lee,a@b.c,1234,Boise,{state},1,xx")).with_timestamp(1)
        };
        let auction = |id: u64, seller: u64, category: u64| {
            Event::new(format!("A,{id},item,desc,1,2,3,4,{seller},{category},xx")).with_timestamp(2)
        };
        let first = pipe
            .process(
                Batch::new(vec![
                    person(1000, "ID"),
                    person(1001, "WA"),
                    auction(1, 1000, 10),
                    auction(2, 1001, 10),
                    auction(3, 1000, 11),
                    // Its seller comes later.
                    auction(4, 1002, 10),
                    auction(5, 1002, 10),
                ]),
                &mut state,
            )
            .unwrap();
        assert_eq!(values(&first), ["Ann Lee,Boise,ID,1"]);
        let second = pipe
            .process(Batch::new(vec![person(1002, "CA")]), &mut state)
            .unwrap();
        assert_eq!(
            values(&second),
            ["Ann Lee,Boise,CA,4", "Ann Lee,Boise,CA,5"]
        );
        // Nothing waits any more.
        assert_eq!(state.get("a1002").unwrap(), None);
    }
}
