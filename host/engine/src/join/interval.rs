//! The interval join: every pair `left.ts - lower <= right.ts <= left.ts +
//! upper`, emitted as soon as its second event is there; each buffered
//! event expires once the watermark has passed the last time a partner
//! could have.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{JoinKey, Operator, Side};
use crate::state::KeyHasher;
use crate::{Batch, Event};

/// An event's place in a side: its time, then a sequence number that
/// keeps events of the same time apart (and in arrival order).
type Stamp = (u64, u64);

/// One key's buffered events, each side by time.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Sides {
    left: BTreeMap<Stamp, Event>,
    right: BTreeMap<Stamp, Event>,
}

impl Sides {
    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<Stamp, Event> {
        match side {
            Side::Left => &mut self.left,
            Side::Right => &mut self.right,
        }
    }

    fn is_empty(&self) -> bool {
        self.left.is_empty() && self.right.is_empty()
    }
}

/// `(expires after, side, stamp, key)`: an event that no later event can
/// pair with once the watermark is past its first field.
type Expiry = (u64, Side, Stamp, JoinKey);

/// The buffered events of an interval join.
pub(super) struct IntervalJoin {
    lower_ms: u64,
    upper_ms: u64,
    open: HashMap<JoinKey, Sides, KeyHasher>,
    expiry: BTreeSet<Expiry>,
    /// The next sequence number.
    sequence: u64,
    buffered: usize,
    dirty: HashSet<JoinKey, KeyHasher>,
    /// Pairs found since the last flush: left, right, left, right, …
    pairs: Vec<Event>,
}

impl IntervalJoin {
    pub(super) fn new(lower_ms: u64, upper_ms: u64) -> Self {
        IntervalJoin {
            lower_ms,
            upper_ms,
            open: HashMap::default(),
            expiry: BTreeSet::new(),
            sequence: 0,
            buffered: 0,
            dirty: HashSet::default(),
            pairs: Vec::new(),
        }
    }

    /// The time after which no event still to come can pair with an event
    /// of `side` at `time`: later events are at or after the watermark,
    /// and a left event pairs with right ones up to `time + upper`, a
    /// right one with left ones up to `time + lower`.
    fn expires_after(&self, side: Side, time: u64) -> u64 {
        match side {
            Side::Left => time.saturating_add(self.upper_ms),
            Side::Right => time.saturating_add(self.lower_ms),
        }
    }

    fn remove(&mut self, (_, side, stamp, key): &Expiry) -> bool {
        let Some(sides) = self.open.get_mut(key) else {
            return false;
        };
        let removed = sides.side_mut(*side).remove(stamp).is_some();
        if sides.is_empty() {
            self.open.remove(key);
        }
        if removed {
            self.buffered = self.buffered.saturating_sub(1);
            self.dirty.insert(key.clone());
        }
        removed
    }
}

impl Operator for IntervalJoin {
    fn is_late(&self, _key: &JoinKey, time: u64, watermark: Option<u64>) -> bool {
        watermark.is_some_and(|w| time < w)
    }

    fn copies(&self, _side: Side, _key: &JoinKey, _time: u64, _watermark: Option<u64>) -> usize {
        1
    }

    fn add(&mut self, side: Side, key: JoinKey, time: u64, event: Event, _watermark: Option<u64>) {
        let sides = self.open.entry(key.clone()).or_default();
        match side {
            Side::Left => {
                let from = time.saturating_sub(self.lower_ms);
                let to = time.saturating_add(self.upper_ms);
                for partner in sides
                    .right
                    .range((from, 0)..=(to, u64::MAX))
                    .map(|(_, e)| e)
                {
                    self.pairs.push(event.clone());
                    self.pairs.push(partner.clone());
                }
            }
            Side::Right => {
                let from = time.saturating_sub(self.upper_ms);
                let to = time.saturating_add(self.lower_ms);
                for partner in sides.left.range((from, 0)..=(to, u64::MAX)).map(|(_, e)| e) {
                    self.pairs.push(partner.clone());
                    self.pairs.push(event.clone());
                }
            }
        }
        let stamp = (time, self.sequence);
        self.sequence += 1;
        sides.side_mut(side).insert(stamp, event);
        self.expiry
            .insert((self.expires_after(side, time), side, stamp, key.clone()));
        self.buffered += 1;
        self.dirty.insert(key);
    }

    fn flush(&mut self, out: &mut Vec<Batch>) {
        if !self.pairs.is_empty() {
            out.push(Batch {
                events: std::mem::take(&mut self.pairs),
                window: None,
            });
        }
    }

    fn advance(&mut self, watermark: u64, _out: &mut Vec<Batch>) {
        while self.expiry.first().is_some_and(|(at, ..)| *at < watermark) {
            if let Some(expired) = self.expiry.pop_first() {
                self.remove(&expired);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Batch>) {
        self.flush(out);
    }

    fn evict_oldest(&mut self) -> usize {
        match self.expiry.pop_first() {
            Some(oldest) => usize::from(self.remove(&oldest)),
            None => 0,
        }
    }

    fn buffered(&self) -> usize {
        self.buffered
    }

    fn take_dirty(&mut self) -> HashSet<JoinKey, KeyHasher> {
        std::mem::take(&mut self.dirty)
    }

    fn mark_dirty(&mut self, key: JoinKey) {
        self.dirty.insert(key);
    }

    fn encode(&self, key: &JoinKey) -> Option<Result<Vec<u8>, postcard::Error>> {
        self.open.get(key).map(postcard::to_allocvec)
    }

    fn load(&mut self, key: JoinKey, bytes: &[u8]) -> Result<(), postcard::Error> {
        let sides: Sides = postcard::from_bytes(bytes)?;
        for (side, events) in [(Side::Left, &sides.left), (Side::Right, &sides.right)] {
            for &(time, sequence) in events.keys() {
                self.expiry.insert((
                    self.expires_after(side, time),
                    side,
                    (time, sequence),
                    key.clone(),
                ));
                self.sequence = self.sequence.max(sequence.saturating_add(1));
                self.buffered += 1;
            }
        }
        if !sides.is_empty() {
            self.open.insert(key, sides);
        }
        Ok(())
    }
}
