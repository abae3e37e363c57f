//! The open windows of a window step: one [`Buffer`] per window, grouped
//! per key in [`KeyWindows`] (ordered by start, so a session finds the
//! sessions an event touches in O(log n)).

use std::collections::{BTreeMap, VecDeque};

use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize};

use crate::Event;

/// The key a window groups by: the event key when keyed, else `None`.
pub(crate) type WindowKey = Option<Vec<u8>>;

/// One open window of one key.
///
/// Its saved form is the one every version wrote (a deque is written as a
/// sequence, like the vector of earlier versions).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Buffer {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Arrival order; a session's in time order. A deque, so that merging
    /// a smaller session before a larger one moves only the smaller one.
    pub(crate) events: VecDeque<Event>,
    pub(crate) bytes: usize,
    /// Fired at least once and not extended since (event time with allowed
    /// lateness keeps it until the lateness has passed).
    pub(crate) fired: bool,
}

impl Buffer {
    pub(crate) fn new(start: u64, end: u64) -> Self {
        Buffer {
            start,
            end,
            // Room for one event: most keyed windows hold a few events, and
            // a deque's first push would make room for four.
            events: VecDeque::with_capacity(1),
            bytes: 0,
            fired: false,
        }
    }

    /// The events, for a release that keeps the buffer.
    pub(crate) fn copy_events(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }

    /// Adds `event` in time order (a session's events) and returns how many
    /// events moved to make room: none for an event in order, otherwise the
    /// events on the shorter side of where it goes.
    ///
    /// An event without a timestamp counted at the highest timestamp seen,
    /// so it goes last; an out-of-order event goes after it.
    pub(crate) fn insert_in_time_order(&mut self, event: Event) -> usize {
        let Some(time) = event.timestamp else {
            self.events.push_back(event);
            return 0;
        };
        let in_order = self
            .events
            .back()
            .is_none_or(|last| last.timestamp.is_none_or(|t| t <= time));
        if in_order {
            self.events.push_back(event);
            return 0;
        }
        let at = self
            .events
            .partition_point(|e| e.timestamp.is_none_or(|t| t <= time));
        let moved = at.min(self.events.len() - at);
        self.events.insert(at, event);
        moved
    }
}

/// Merges sessions of one key, given in start order (so their events are
/// in time order one after the other), into one; returns it and how many
/// events moved. The largest keeps its events in place and the others are
/// added before and after it, so a merge moves only the smaller sessions.
pub(crate) fn merge_sessions(mut parts: Vec<Buffer>) -> Option<(Buffer, usize)> {
    let largest = parts
        .iter()
        .enumerate()
        .max_by_key(|(_, b)| b.events.len())
        .map(|(i, _)| i)?;
    let after = parts.split_off(largest + 1);
    let mut merged = parts.pop()?;
    let mut moved = 0;
    for part in parts.into_iter().rev() {
        moved += part.events.len();
        for event in part.events.into_iter().rev() {
            merged.events.push_front(event);
        }
        merged.start = merged.start.min(part.start);
        merged.end = merged.end.max(part.end);
        merged.bytes += part.bytes;
    }
    for part in after {
        moved += part.events.len();
        merged.events.extend(part.events);
        merged.start = merged.start.min(part.start);
        merged.end = merged.end.max(part.end);
        merged.bytes += part.bytes;
    }
    merged.fired = false;
    Some((merged, moved))
}

/// The open windows of one key, by start. Most keys have one window, which
/// is kept inline (a map per key would cost a node per key).
#[derive(Debug, Clone)]
pub(crate) enum KeyWindows {
    One(Buffer),
    /// Two or more.
    Many(BTreeMap<u64, Buffer>),
}

impl KeyWindows {
    /// The windows of saved `buffers`; `None` when there are none.
    pub(crate) fn from_buffers(buffers: Vec<Buffer>) -> Option<Self> {
        let mut buffers = buffers.into_iter();
        let mut windows = KeyWindows::One(buffers.next()?);
        for buffer in buffers {
            windows.insert(buffer);
        }
        Some(windows)
    }

    pub(crate) fn get(&self, start: u64) -> Option<&Buffer> {
        match self {
            KeyWindows::One(buffer) => (buffer.start == start).then_some(buffer),
            KeyWindows::Many(map) => map.get(&start),
        }
    }

    pub(crate) fn get_mut(&mut self, start: u64) -> Option<&mut Buffer> {
        match self {
            KeyWindows::One(buffer) => (buffer.start == start).then_some(buffer),
            KeyWindows::Many(map) => map.get_mut(&start),
        }
    }

    /// The earliest window's start.
    pub(crate) fn first_start(&self) -> Option<u64> {
        match self {
            KeyWindows::One(buffer) => Some(buffer.start),
            KeyWindows::Many(map) => map.keys().next().copied(),
        }
    }

    /// Adds `buffer`, replacing a window with the same start.
    pub(crate) fn insert(&mut self, buffer: Buffer) {
        match self {
            KeyWindows::One(only) if only.start == buffer.start => *only = buffer,
            KeyWindows::One(_) => {
                if let KeyWindows::One(only) =
                    std::mem::replace(self, KeyWindows::Many(BTreeMap::new()))
                {
                    if let KeyWindows::Many(map) = self {
                        map.insert(only.start, only);
                        map.insert(buffer.start, buffer);
                    }
                }
            }
            KeyWindows::Many(map) => {
                map.insert(buffer.start, buffer);
            }
        }
    }

    /// Removes the window starting at `start` from a key with several
    /// (a key's last window goes with the key: see the window step).
    pub(crate) fn remove_from_many(&mut self, start: u64) -> Option<Buffer> {
        let KeyWindows::Many(map) = self else {
            return None;
        };
        let removed = map.remove(&start)?;
        if map.len() == 1 {
            if let Some((_, only)) = map.pop_first() {
                *self = KeyWindows::One(only);
            }
        }
        Some(removed)
    }

    /// Whether this key has no window left (a map emptied by a removal).
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, KeyWindows::Many(map) if map.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            KeyWindows::One(_) => 1,
            KeyWindows::Many(map) => map.len(),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Buffer> {
        let (one, many) = match self {
            KeyWindows::One(buffer) => (Some(buffer), None),
            KeyWindows::Many(map) => (None, Some(map.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    pub(crate) fn into_buffers(self) -> Vec<Buffer> {
        match self {
            KeyWindows::One(buffer) => vec![buffer],
            KeyWindows::Many(map) => map.into_values().collect(),
        }
    }

    /// The starts of the sessions that overlap or touch `[start, end]`.
    /// Sessions of a key never overlap, so their ends grow with their
    /// starts: walk back from the last that starts by `end`.
    pub(crate) fn touching(&self, start: u64, end: u64) -> Vec<u64> {
        let touches = |b: &Buffer| b.start <= end && start <= b.end;
        match self {
            KeyWindows::One(buffer) => {
                if touches(buffer) {
                    vec![buffer.start]
                } else {
                    Vec::new()
                }
            }
            KeyWindows::Many(map) => {
                let mut starts: Vec<u64> = map
                    .range(..=end)
                    .rev()
                    .take_while(|(_, b)| b.end >= start)
                    .map(|(s, _)| *s)
                    .collect();
                starts.reverse();
                starts
            }
        }
    }
}

impl Serialize for KeyWindows {
    // The saved form of a key's windows: a sequence of buffers.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // postcard writes the length first: give it (a chained iterator's
        // length is not exact).
        let mut seq = serializer.serialize_seq(Some(self.len()))?;
        for buffer in self.iter() {
            seq.serialize_element(buffer)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(times: &[u64], gap: u64) -> Buffer {
        let mut buffer = Buffer::new(times[0], times[times.len() - 1] + gap);
        for &t in times {
            buffer.insert_in_time_order(Event::new(t.to_string()).with_timestamp(t));
        }
        buffer
    }

    fn times(buffer: &Buffer) -> Vec<u64> {
        buffer.events.iter().filter_map(|e| e.timestamp).collect()
    }

    #[test]
    fn events_go_in_time_order_moving_only_the_shorter_side() {
        let mut buffer = session(&[10, 20, 30, 40, 50], 5);
        assert_eq!(
            buffer.insert_in_time_order(Event::new("").with_timestamp(45)),
            1
        );
        assert_eq!(
            buffer.insert_in_time_order(Event::new("").with_timestamp(15)),
            1
        );
        assert_eq!(
            buffer.insert_in_time_order(Event::new("").with_timestamp(60)),
            0
        );
        // Equal timestamps keep their arrival order: after the earlier one.
        assert_eq!(
            buffer.insert_in_time_order(Event::new("second").with_timestamp(20)),
            3
        );
        assert_eq!(times(&buffer), [10, 15, 20, 20, 30, 40, 45, 50, 60]);
        assert_eq!(buffer.events[3].value, b"second");
    }

    #[test]
    fn merging_keeps_time_order_and_moves_the_smaller_sessions() {
        let before = session(&[1, 2], 3);
        let largest = session(&[10, 11, 12, 13], 3);
        let after = session(&[20], 3);
        let (merged, moved) = merge_sessions(vec![before, largest, after]).unwrap();
        assert_eq!((merged.start, merged.end), (1, 23));
        assert_eq!(times(&merged), [1, 2, 10, 11, 12, 13, 20]);
        assert_eq!(moved, 3);
        assert!(!merged.fired);
    }

    #[test]
    fn a_key_holds_one_window_inline_and_several_by_start() {
        let mut windows = KeyWindows::One(Buffer::new(10, 20));
        windows.insert(Buffer::new(0, 10));
        windows.insert(Buffer::new(30, 40));
        assert_eq!(windows.first_start(), Some(0));
        assert_eq!(windows.touching(20, 25), vec![10]);
        assert_eq!(windows.touching(8, 31), vec![0, 10, 30]);
        assert_eq!(windows.touching(21, 29), Vec::<u64>::new());
        assert_eq!(windows.remove_from_many(10).map(|b| b.end), Some(20));
        assert_eq!(windows.remove_from_many(0).map(|b| b.end), Some(10));
        assert!(matches!(windows, KeyWindows::One(ref b) if b.start == 30));
        let starts: Vec<u64> = windows.iter().map(|b| b.start).collect();
        assert_eq!(starts, [30]);
    }
}
