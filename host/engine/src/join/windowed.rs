//! The windowed join: both sides' events per key and window, released as
//! one batch when the watermark passes the window's end.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{How, JoinKey, JoinWindow, Operator, Side};
use crate::state::KeyHasher;
use crate::{Batch, Event, WindowInfo};

/// One window of one key: its events of each side, in arrival order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pane {
    start: u64,
    end: u64,
    left: Vec<Event>,
    right: Vec<Event>,
}

impl Pane {
    fn new(start: u64, end: u64) -> Self {
        Pane {
            start,
            end,
            left: Vec::new(),
            right: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.left.len() + self.right.len()
    }

    fn push(&mut self, side: Side, event: Event) {
        match side {
            Side::Left => self.left.push(event),
            Side::Right => self.right.push(event),
        }
    }
}

/// The open windows of a windowed join.
pub(super) struct WindowedJoin {
    window: JoinWindow,
    how: How,
    /// Each key's open windows, ordered by start.
    open: HashMap<JoinKey, Vec<Pane>, KeyHasher>,
    /// Every open window by `(end, start, key)`: what fires next, in release order.
    due: BTreeSet<(u64, u64, JoinKey)>,
    buffered: usize,
    dirty: HashSet<JoinKey, KeyHasher>,
}

impl WindowedJoin {
    pub(super) fn new(window: JoinWindow, how: How) -> Self {
        WindowedJoin {
            window,
            how,
            open: HashMap::default(),
            due: BTreeSet::new(),
            buffered: 0,
            dirty: HashSet::default(),
        }
    }

    /// The windows `[start, end)` of a tumbling or sliding join that cover
    /// `time`, oldest first (none for a session join); no allocation, as
    /// it runs for every event.
    fn assign(&self, time: u64) -> impl Iterator<Item = (u64, u64)> {
        let (size, slide) = match self.window {
            JoinWindow::Tumbling { size_ms } => (size_ms, size_ms),
            JoinWindow::Sliding { size_ms, slide_ms } => (size_ms, slide_ms),
            // No window covers anything: an empty range.
            JoinWindow::Session { .. } => (1, 1),
        };
        let session = matches!(self.window, JoinWindow::Session { .. });
        let last_start = time - time % slide;
        // The earliest start whose window still covers `time`.
        let span = size.saturating_sub(1) / slide * slide;
        let first_start = last_start.saturating_sub(span);
        let count = if session {
            0
        } else {
            (last_start - first_start) / slide + 1
        };
        (0..count)
            .map(move |n| first_start + n * slide)
            .filter(move |start| start.saturating_add(size) > time)
            .map(move |start| (start, start.saturating_add(size)))
    }

    /// The starts of `key`'s sessions that `[time, time + gap)` overlaps or touches.
    fn touching(&self, key: &JoinKey, time: u64, gap: u64) -> Vec<u64> {
        let end = time.saturating_add(gap);
        self.open
            .get(key)
            .map(|panes| {
                panes
                    .iter()
                    .filter(|pane| pane.start <= end && time <= pane.end)
                    .map(|pane| pane.start)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn pane_mut(&mut self, key: &JoinKey, start: u64, end: u64) -> Option<&mut Pane> {
        // The key is copied only for a key's first window, not per event.
        if !self.open.contains_key(key) {
            self.open.insert(key.clone(), Vec::new());
        }
        let panes = self.open.get_mut(key)?;
        let at = match panes.binary_search_by_key(&start, |pane| pane.start) {
            Ok(at) => at,
            Err(at) => {
                panes.insert(at, Pane::new(start, end));
                self.due.insert((end, start, key.clone()));
                at
            }
        };
        panes.get_mut(at)
    }

    fn take(&mut self, key: &JoinKey, start: u64) -> Option<Pane> {
        let panes = self.open.get_mut(key)?;
        let at = panes.binary_search_by_key(&start, |pane| pane.start).ok()?;
        let pane = panes.remove(at);
        if panes.is_empty() {
            self.open.remove(key);
        }
        self.due.remove(&(pane.end, pane.start, key.clone()));
        self.buffered = self.buffered.saturating_sub(pane.len());
        self.dirty.insert(key.clone());
        Some(pane)
    }

    /// The window's batch, when `how` releases it: the left events, then
    /// the right ones.
    fn release(&self, key: JoinKey, pane: Pane, out: &mut Vec<Batch>) {
        let released = match self.how {
            How::Inner => !pane.left.is_empty() && !pane.right.is_empty(),
            How::Left => !pane.left.is_empty(),
        };
        if !released {
            return;
        }
        let mut events = pane.left;
        events.extend(pane.right);
        out.push(Batch {
            events,
            window: Some(WindowInfo {
                start: pane.start,
                end: pane.end,
                key,
            }),
        });
    }
}

impl Operator for WindowedJoin {
    fn is_late(&self, key: &JoinKey, time: u64, watermark: Option<u64>) -> bool {
        let Some(watermark) = watermark else {
            return false;
        };
        match self.window {
            JoinWindow::Tumbling { .. } | JoinWindow::Sliding { .. } => {
                // The last window that covers `time` has closed.
                self.assign(time)
                    .last()
                    .is_none_or(|(_, end)| end <= watermark)
            }
            JoinWindow::Session { gap_ms } => {
                time.saturating_add(gap_ms) <= watermark
                    && self.touching(key, time, gap_ms).is_empty()
            }
        }
    }

    fn copies(&self, _side: Side, _key: &JoinKey, time: u64, watermark: Option<u64>) -> usize {
        match self.window {
            JoinWindow::Session { .. } => 1,
            _ => self
                .assign(time)
                .filter(|(_, end)| watermark.is_none_or(|w| *end > w))
                .count(),
        }
    }

    fn add(&mut self, side: Side, key: JoinKey, time: u64, event: Event, watermark: Option<u64>) {
        match self.window {
            JoinWindow::Tumbling { .. } | JoinWindow::Sliding { .. } => {
                // The last window covering `time` always ends after the
                // watermark (the event is not late), so the event moves
                // into it and is copied into the earlier open ones.
                let Some((last_start, last_end)) = self.assign(time).last() else {
                    return;
                };
                let earlier = self.assign(time).filter(|(start, end)| {
                    *start < last_start && watermark.is_none_or(|w| *end > w)
                });
                for (start, end) in earlier {
                    if let Some(pane) = self.pane_mut(&key, start, end) {
                        pane.push(side, event.clone());
                        self.buffered += 1;
                    }
                }
                if let Some(pane) = self.pane_mut(&key, last_start, last_end) {
                    pane.push(side, event);
                    self.buffered += 1;
                }
            }
            JoinWindow::Session { gap_ms } => {
                let mut merged = Pane::new(time, time.saturating_add(gap_ms));
                for start in self.touching(&key, time, gap_ms) {
                    if let Some(part) = self.take(&key, start) {
                        merged.start = merged.start.min(part.start);
                        merged.end = merged.end.max(part.end);
                        merged.left.extend(part.left);
                        merged.right.extend(part.right);
                    }
                }
                merged.push(side, event);
                self.buffered += merged.len();
                let (start, end) = (merged.start, merged.end);
                if let Some(pane) = self.pane_mut(&key, start, end) {
                    *pane = merged;
                }
            }
        }
        self.dirty.insert(key);
    }

    fn advance(&mut self, watermark: u64, out: &mut Vec<Batch>) {
        while self
            .due
            .first()
            .is_some_and(|(end, _, _)| *end <= watermark)
        {
            let Some((_, start, key)) = self.due.pop_first() else {
                break;
            };
            if let Some(pane) = self.take(&key, start) {
                self.release(key, pane, out);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<Batch>) {
        self.advance(u64::MAX, out);
    }

    fn evict_oldest(&mut self) -> usize {
        let Some((_, start, key)) = self.due.pop_first() else {
            return 0;
        };
        self.take(&key, start).map_or(0, |pane| pane.len())
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
        let mut panes: Vec<Pane> = postcard::from_bytes(bytes)?;
        panes.sort_by_key(|pane| pane.start);
        for pane in &panes {
            self.buffered += pane.len();
            self.due.insert((pane.end, pane.start, key.clone()));
        }
        if !panes.is_empty() {
            self.open.insert(key, panes);
        }
        Ok(())
    }
}
