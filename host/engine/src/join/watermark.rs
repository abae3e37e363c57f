//! The watermark of a step with several inputs.

use super::Side;

/// The watermark of a join's two inputs: each input's own watermark trails
/// the highest timestamp seen on it by `max_out_of_orderness_ms`; the
/// join's is the minimum over the inputs. An input that sent nothing for
/// `idle_timeout_ms` (processing time) is left out until it sends again;
/// when every input is idle, the highest of their watermarks holds. An
/// input that has sent nothing yet and is not idle holds the watermark
/// back: nothing fires before every input has spoken or gone quiet. The
/// watermark never goes back.
#[derive(Debug, Clone)]
pub struct InputWatermarks {
    max_out_of_orderness_ms: u64,
    idle_timeout_ms: Option<u64>,
    max_timestamps: [Option<u64>; 2],
    /// Processing time of each input's last event (or of the start).
    last_arrival_ms: [u64; 2],
    watermark: Option<u64>,
}

impl InputWatermarks {
    /// No input seen yet, at processing time `now_ms`.
    pub fn new(max_out_of_orderness_ms: u64, idle_timeout_ms: Option<u64>, now_ms: u64) -> Self {
        InputWatermarks {
            max_out_of_orderness_ms,
            idle_timeout_ms,
            max_timestamps: [None; 2],
            last_arrival_ms: [now_ms; 2],
            watermark: None,
        }
    }

    /// Restores what a checkpoint saved.
    pub(crate) fn restore(&mut self, max_timestamps: [Option<u64>; 2], watermark: Option<u64>) {
        self.max_timestamps = max_timestamps;
        self.watermark = watermark;
    }

    /// What a checkpoint saves.
    pub(crate) fn saved(&self) -> ([Option<u64>; 2], Option<u64>) {
        (self.max_timestamps, self.watermark)
    }

    /// An event of `side` arrived at processing time `now_ms`.
    pub fn arrived(&mut self, side: Side, now_ms: u64) {
        if let Some(last) = self.last_arrival_ms.get_mut(side.index()) {
            *last = now_ms;
        }
    }

    /// An event of `side` at event time `timestamp` was taken.
    pub fn observe(&mut self, side: Side, timestamp: u64) {
        if let Some(max) = self.max_timestamps.get_mut(side.index()) {
            *max = Some(max.map_or(timestamp, |m| m.max(timestamp)));
        }
    }

    /// The current watermark (`None`: nothing may fire yet).
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    fn idle(&self, side: usize, now_ms: u64) -> bool {
        let last = self.last_arrival_ms.get(side).copied().unwrap_or(now_ms);
        self.idle_timeout_ms
            .is_some_and(|idle| now_ms.saturating_sub(last) >= idle)
    }

    /// Recomputes the watermark at processing time `now_ms`; returns it
    /// when it moved forward.
    pub fn update(&mut self, now_ms: u64) -> Option<u64> {
        let own = |max: Option<u64>| max.map(|m| m.saturating_sub(self.max_out_of_orderness_ms));
        let mut minimum: Option<Option<u64>> = None;
        let mut highest_idle: Option<u64> = None;
        for (side, max) in self.max_timestamps.iter().enumerate() {
            let input = own(*max);
            if self.idle(side, now_ms) {
                highest_idle = highest_idle.max(input);
                continue;
            }
            // An active input without events holds the watermark at `None`.
            minimum = Some(match minimum {
                None => input,
                Some(current) => current.zip(input).map(|(a, b)| a.min(b)),
            });
        }
        let candidate = match minimum {
            Some(active) => active,
            None => highest_idle,
        }?;
        if self.watermark.is_some_and(|w| candidate <= w) {
            return None;
        }
        self.watermark = Some(candidate);
        Some(candidate)
    }

    /// The processing time after `now_ms` at which the next input goes
    /// idle: when the watermark may move without an event. (Deadlines up to
    /// `now_ms` were taken into account by the last [`Self::update`].)
    pub fn next_idle_at(&self, now_ms: u64) -> Option<u64> {
        let idle = self.idle_timeout_ms?;
        self.last_arrival_ms
            .iter()
            .map(|last| last.saturating_add(idle))
            .filter(|at| *at > now_ms)
            .min()
    }
}
