//! [`Recent`]: the last few things that happened, for people to look at
//! (the admin console's checkpoint and swap histories). Bounded: the
//! oldest entry goes when a new one comes past the capacity.

use std::collections::VecDeque;
use std::sync::Mutex;

/// A bounded ring of the most recent entries, oldest first.
///
/// Pushed to where things happen rarely (a checkpoint commit, a module
/// swap), never per event.
#[derive(Debug)]
pub struct Recent<T> {
    capacity: usize,
    entries: Mutex<VecDeque<T>>,
}

impl<T: Clone> Recent<T> {
    /// An empty ring keeping at most `capacity` entries (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Recent {
            capacity,
            entries: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Adds `entry`, dropping the oldest one when full.
    pub fn push(&self, entry: T) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() == self.capacity {
            entries.pop_front();
        }
        entries.push_back(entry);
    }

    /// Adds `entries` in order (one lock for all), dropping the oldest
    /// when full.
    pub fn extend(&self, entries: impl IntoIterator<Item = T>) {
        let mut kept = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            if kept.len() == self.capacity {
                kept.pop_front();
            }
            kept.push_back(entry);
        }
    }

    /// The entries kept, oldest first.
    #[must_use]
    pub fn snapshot(&self) -> Vec<T> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// How many entries it keeps at most.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
#[must_use]
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_in_order() {
        let recent = Recent::new(3);
        assert!(recent.snapshot().is_empty());
        for i in 0..10u32 {
            recent.push(i);
            // Reference: the last min(i + 1, 3) numbers pushed so far.
            let first = (i + 1).saturating_sub(3);
            let expected: Vec<u32> = (first..=i).collect();
            assert_eq!(recent.snapshot(), expected, "after pushing {i}");
        }
    }

    #[test]
    fn extend_is_pushes_in_order() {
        let extended = Recent::new(4);
        let pushed = Recent::new(4);
        for chunk in [vec![1, 2], vec![3, 4, 5, 6, 7], vec![8]] {
            extended.extend(chunk.clone());
            chunk.into_iter().for_each(|n| pushed.push(n));
            assert_eq!(extended.snapshot(), pushed.snapshot());
        }
        assert_eq!(extended.snapshot(), vec![5, 6, 7, 8]);
    }

    #[test]
    fn a_zero_capacity_keeps_one() {
        let recent = Recent::new(0);
        recent.push("a");
        recent.push("b");
        assert_eq!(recent.capacity(), 1);
        assert_eq!(recent.snapshot(), vec!["b"]);
    }
}
