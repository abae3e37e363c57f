//! Histograms the engine records into as it runs, read at scrape time.
//!
//! A [`Histogram`] is a fixed set of atomic bucket counters: recording is a
//! binary search over about twenty bounds and three relaxed atomic
//! operations, with no lock and no allocation, so the engine records once
//! per batch, call or checkpoint on its hot path. A scrape (or a run's
//! report) takes a [`HistogramSnapshot`], which the metrics endpoint
//! exports as a Prometheus histogram and the bench reads quantiles from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What a histogram's values count, and so how they are exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unit {
    /// Durations, recorded in nanoseconds and exported in seconds.
    #[default]
    Nanoseconds,
    /// Plain counts (events), exported as they are.
    Count,
}

impl Unit {
    /// Recorded values per exported one. Dividing by it (not multiplying
    /// by its inverse, which is not exact in binary) keeps a bound of 30 s
    /// `30`, not `30.000000000000004`, in the exported bucket labels.
    fn per_exported(self) -> f64 {
        match self {
            Unit::Nanoseconds => 1e9,
            Unit::Count => 1.0,
        }
    }
}

/// Upper bounds for durations, in nanoseconds: 10 µs to 60 s in 1-2-5 steps.
const DURATION_BOUNDS: [u64; 22] = [
    10_000,
    20_000,
    50_000,
    100_000,
    200_000,
    500_000,
    1_000_000,
    2_000_000,
    5_000_000,
    10_000_000,
    20_000_000,
    50_000_000,
    100_000_000,
    200_000_000,
    500_000_000,
    1_000_000_000,
    2_000_000_000,
    5_000_000_000,
    10_000_000_000,
    20_000_000_000,
    30_000_000_000,
    60_000_000_000,
];

/// Upper bounds for batch sizes, in events: 1 to 100 000 in 1-2-5 steps.
const SIZE_BOUNDS: [u64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];

/// A histogram with fixed buckets, updated lock-free.
#[derive(Debug)]
pub struct Histogram {
    unit: Unit,
    /// Inclusive upper bounds of the buckets, ascending; one more bucket
    /// (`+Inf`) follows the last.
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// A histogram of durations (10 µs to 60 s buckets, exported in seconds).
    #[must_use]
    pub fn durations() -> Histogram {
        Histogram::with_bounds(Unit::Nanoseconds, &DURATION_BOUNDS)
    }

    /// A histogram of sizes in events (1 to 100 000 buckets).
    #[must_use]
    pub fn sizes() -> Histogram {
        Histogram::with_bounds(Unit::Count, &SIZE_BOUNDS)
    }

    fn with_bounds(unit: Unit, bounds: &'static [u64]) -> Histogram {
        Histogram {
            unit,
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value (in the histogram's [`Unit`]).
    pub fn record(&self, value: u64) {
        let index = self.bounds.partition_point(|bound| *bound < value);
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Records a duration (for a histogram of durations).
    pub fn record_duration(&self, duration: Duration) {
        self.record(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The values recorded so far.
    #[must_use]
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            unit: self.unit,
            bounds: self.bounds.to_vec(),
            counts: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            sum: self.sum.load(Ordering::Relaxed),
            max: self.max.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    unit: Unit,
    bounds: Vec<u64>,
    /// One count per bound, then the count above the last bound.
    counts: Vec<u64>,
    sum: u64,
    max: u64,
}

impl HistogramSnapshot {
    /// How many values were recorded.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the values, in exported units (seconds for durations).
    #[must_use]
    pub fn sum(&self) -> f64 {
        self.sum as f64 / self.unit.per_exported()
    }

    /// The largest value, in exported units.
    #[must_use]
    pub fn max(&self) -> f64 {
        self.max as f64 / self.unit.per_exported()
    }

    /// Each bucket's upper bound (exported units, `+Inf` last) and how many
    /// values fell in it (not cumulative), as `prometheus-client` takes them.
    #[must_use]
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        let per_exported = self.unit.per_exported();
        self.bounds
            .iter()
            .map(|bound| *bound as f64 / per_exported)
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts.iter().copied())
            .collect()
    }

    /// An estimate of the `q`-quantile (`0.0..=1.0`), in exported units, the
    /// way Prometheus' `histogram_quantile` makes one: linear within the
    /// bucket the rank falls in, and never above the largest value seen.
    /// `None` when nothing was recorded.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below: u64 = 0;
        let mut lower = 0.0;
        for (upper, in_bucket) in self.buckets() {
            if in_bucket > 0 && (below + in_bucket) as f64 >= rank {
                let upper = upper.min(self.max());
                let within = (rank - below as f64) / in_bucket as f64;
                return Some(lower + (upper - lower).max(0.0) * within.clamp(0.0, 1.0));
            }
            below += in_bucket;
            lower = upper;
        }
        Some(self.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_bucket_of_their_upper_bound() {
        let histogram = Histogram::sizes();
        for value in [0, 1, 2, 3, 1_000, 1_001, 100_000, 100_001, u64::MAX / 2] {
            histogram.record(value);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 9);
        let buckets = snapshot.buckets();
        assert_eq!(buckets.len(), SIZE_BOUNDS.len() + 1);
        let count_at = |bound: f64| buckets.iter().find(|(b, _)| *b == bound).unwrap().1;
        assert_eq!(count_at(1.0), 2, "0 and 1");
        assert_eq!(count_at(2.0), 1);
        assert_eq!(count_at(5.0), 1, "3");
        assert_eq!(count_at(1_000.0), 1);
        assert_eq!(count_at(2_000.0), 1, "1 001");
        assert_eq!(count_at(100_000.0), 1);
        assert_eq!(count_at(f64::INFINITY), 2, "above the last bound");
        assert_eq!(snapshot.max(), (u64::MAX / 2) as f64);
    }

    #[test]
    fn durations_are_exported_in_seconds() {
        let histogram = Histogram::durations();
        histogram.record_duration(Duration::from_millis(3));
        histogram.record_duration(Duration::from_millis(7));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 2);
        assert!((snapshot.sum() - 0.010).abs() < 1e-12, "{}", snapshot.sum());
        let buckets = snapshot.buckets();
        assert!(buckets.contains(&(0.005, 1)), "{buckets:?}");
        assert!(buckets.contains(&(0.01, 1)), "{buckets:?}");
    }

    #[test]
    fn duration_bounds_are_exported_as_their_decimal_seconds() {
        // The bucket labels of `/metrics` print these: `30`, not
        // `30.000000000000004`.
        let buckets = Histogram::durations().snapshot().buckets();
        for (bound, (exported, _)) in DURATION_BOUNDS.iter().zip(&buckets) {
            let decimal = format!("{}.{:09}", bound / 1_000_000_000, bound % 1_000_000_000);
            let seconds: f64 = decimal.parse().unwrap();
            assert_eq!(*exported, seconds, "the bound of {bound} ns");
            assert_eq!(exported.to_string().parse::<f64>().unwrap(), seconds);
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets_and_stop_at_the_max() {
        let histogram = Histogram::durations();
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        // 100 pauses: 90 of 1.5 ms, 10 of 40 ms.
        for _ in 0..90 {
            histogram.record_duration(Duration::from_micros(1_500));
        }
        for _ in 0..10 {
            histogram.record_duration(Duration::from_millis(40));
        }
        let snapshot = histogram.snapshot();
        let p50 = snapshot.quantile(0.5).unwrap();
        // In the (1 ms, 2 ms] bucket, capped by nothing.
        assert!(p50 > 0.001 && p50 <= 0.002, "{p50}");
        let p99 = snapshot.quantile(0.99).unwrap();
        // In the (20 ms, 50 ms] bucket, but never above the 40 ms seen.
        assert!(p99 > 0.020 && p99 <= 0.040, "{p99}");
        assert_eq!(snapshot.quantile(1.0).unwrap(), 0.040);
    }

    #[test]
    fn concurrent_records_are_not_lost() {
        let histogram = std::sync::Arc::new(Histogram::sizes());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let histogram = histogram.clone();
                std::thread::spawn(move || {
                    for value in 0..10_000 {
                        histogram.record(value % 300);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 40_000);
        let expected: u64 = 4 * (0..10_000u64).map(|v| v % 300).sum::<u64>();
        assert_eq!(snapshot.sum(), expected as f64);
    }
}
