//! The lookup-table join: a table kept in state, one row per key, fed by a
//! changelog input (the right side: insert, update or delete by key, the
//! operation in [`OP_HEADER`]); each event of the left input is emitted
//! with the table's row for its key as it stands when the event arrives.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{How, JoinKey, Operator, Side, OP_HEADER};
use crate::state::KeyHasher;
use crate::{Batch, Event};

/// What a changelog event does to its key's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// Insert, update or upsert: the event becomes the row.
    Set,
    /// The row is removed.
    Delete,
}

fn op_of(event: &Event) -> Result<Op, String> {
    match event
        .headers
        .iter()
        .find(|(name, _)| name == OP_HEADER)
        .map(|(_, value)| value.as_str())
    {
        None | Some("insert" | "update" | "upsert") => Ok(Op::Set),
        Some("delete") => Ok(Op::Delete),
        Some(other) => Err(format!(
            "a changelog event whose `{OP_HEADER}` is `{other}`: expected insert, update, upsert or delete"
        )),
    }
}

/// One row and when it was last set (for `drop_oldest`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    set_at: u64,
    event: Event,
}

/// The table of a lookup join.
pub(super) struct LookupTable {
    how: How,
    rows: HashMap<Vec<u8>, Row, KeyHasher>,
    /// Rows by `(set_at, key)`: the least recently set first.
    by_age: BTreeSet<(u64, Vec<u8>)>,
    /// The next `set_at`.
    sequence: u64,
    dirty: HashSet<JoinKey, KeyHasher>,
    /// Output since the last flush.
    enriched: Vec<Event>,
}

impl LookupTable {
    pub(super) fn new(how: How) -> Self {
        LookupTable {
            how,
            rows: HashMap::default(),
            by_age: BTreeSet::new(),
            sequence: 0,
            dirty: HashSet::default(),
            enriched: Vec::new(),
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.rows.remove(key) {
            Some(row) => {
                self.by_age.remove(&(row.set_at, key.to_vec()));
                self.dirty.insert(Some(key.to_vec()));
                true
            }
            None => false,
        }
    }
}

impl Operator for LookupTable {
    fn timed(&self) -> bool {
        false
    }

    fn reject(&self, side: Side, key: &JoinKey, event: &Event) -> Option<String> {
        if side == Side::Left {
            return None;
        }
        if key.is_none() {
            return Some("a changelog event without a key".to_owned());
        }
        op_of(event).err()
    }

    fn is_late(&self, _key: &JoinKey, _time: u64, _watermark: Option<u64>) -> bool {
        false
    }

    fn copies(&self, side: Side, key: &JoinKey, _time: u64, _watermark: Option<u64>) -> usize {
        match (side, key) {
            (Side::Right, Some(key)) if !self.rows.contains_key(key) => 1,
            _ => 0,
        }
    }

    fn add(&mut self, side: Side, key: JoinKey, _time: u64, event: Event, _watermark: Option<u64>) {
        match side {
            Side::Left => {
                let row = key.as_ref().and_then(|key| self.rows.get(key));
                match (row, self.how) {
                    (Some(row), _) => {
                        self.enriched.push(event);
                        self.enriched.push(row.event.clone());
                    }
                    (None, How::Left) => self.enriched.push(event),
                    (None, How::Inner) => {}
                }
            }
            Side::Right => {
                // `reject` has refused a changelog event without a key.
                let Some(key) = key else { return };
                self.remove(&key);
                if op_of(&event) == Ok(Op::Set) {
                    let set_at = self.sequence;
                    self.sequence += 1;
                    self.by_age.insert((set_at, key.clone()));
                    self.rows.insert(key.clone(), Row { set_at, event });
                    self.dirty.insert(Some(key));
                }
            }
        }
    }

    fn flush(&mut self, out: &mut Vec<Batch>) {
        if !self.enriched.is_empty() {
            out.push(Batch {
                events: std::mem::take(&mut self.enriched),
                window: None,
            });
        }
    }

    fn advance(&mut self, _watermark: u64, _out: &mut Vec<Batch>) {}

    fn finish(&mut self, out: &mut Vec<Batch>) {
        self.flush(out);
    }

    fn evict_oldest(&mut self) -> usize {
        match self.by_age.first().map(|(_, key)| key.clone()) {
            Some(key) => usize::from(self.remove(&key)),
            None => 0,
        }
    }

    fn buffered(&self) -> usize {
        self.rows.len()
    }

    fn take_dirty(&mut self) -> HashSet<JoinKey, KeyHasher> {
        std::mem::take(&mut self.dirty)
    }

    fn mark_dirty(&mut self, key: JoinKey) {
        self.dirty.insert(key);
    }

    fn encode(&self, key: &JoinKey) -> Option<Result<Vec<u8>, postcard::Error>> {
        let row = self.rows.get(key.as_ref()?)?;
        Some(postcard::to_allocvec(row))
    }

    fn load(&mut self, key: JoinKey, bytes: &[u8]) -> Result<(), postcard::Error> {
        let row: Row = postcard::from_bytes(bytes)?;
        // Keyless entries are never written.
        let Some(key) = key else { return Ok(()) };
        self.sequence = self.sequence.max(row.set_at.saturating_add(1));
        self.by_age.insert((row.set_at, key.clone()));
        self.rows.insert(key, row);
        Ok(())
    }
}
