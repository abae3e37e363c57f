//! A small Prometheus registry: counters and gauges, rendered in the text
//! exposition format 0.0.4 for `GET /metrics`.
//!
//! The registry only takes its lock to create, remove or render series;
//! the [`Counter`] and [`Gauge`] handles it hands out update an atomic, so
//! hot paths fetch their handles once and then never lock.
//!
//! ```
//! let metrics = plumber_control::metrics::Metrics::new();
//! let events = metrics.counter(
//!     "plumber_events_in_total",
//!     "Events read from the source.",
//!     &[("pipeline", "orders")],
//! );
//! events.add(3);
//! assert!(metrics.render().contains("plumber_events_in_total{pipeline=\"orders\"} 3\n"));
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The kind of a metric family, printed on its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A label set, sorted by label name so that the order callers pass labels
/// in does not create distinct series.
type LabelSet = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, Arc<AtomicU64>>,
    /// Whether a request for this name with the other kind was already
    /// reported (warned once, not on every call).
    warned_kind_mismatch: bool,
}

/// A process-wide registry of counter and gauge families.
///
/// Create it once with [`Metrics::new`] and share the `Arc`; the handles it
/// returns are cheap to clone and update lock-free.
#[derive(Debug, Default)]
pub struct Metrics {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

impl Metrics {
    /// An empty registry, shared.
    #[must_use]
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The counter series `name{labels}`, created at zero on first use.
    ///
    /// The same name and labels (in any order) always give handles on the
    /// same value. `help` is taken from the first call for a name. If `name`
    /// is already a gauge, this logs a warning (once per name) and returns a
    /// [`Counter::detached`] handle rather than panicking.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        self.series(name, help, Kind::Counter, labels)
            .map_or_else(Counter::detached, Counter)
    }

    /// The gauge series `name{labels}`, created at `0.0` on first use.
    ///
    /// Same rules as [`Metrics::counter`]: if `name` is already a counter,
    /// this warns once and returns a [`Gauge::detached`] handle.
    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        self.series(name, help, Kind::Gauge, labels)
            .map_or_else(Gauge::detached, Gauge)
    }

    /// Removes every series, of every family, whose labels include
    /// `label="value"` (for a pipeline that stopped or a module version that
    /// was replaced).
    ///
    /// Handles already given out for those series keep working but are no
    /// longer rendered; asking for the same series again starts a new one at
    /// zero. Families keep their type and help even when left empty.
    pub fn remove_matching(&self, label: &str, value: &str) {
        let mut families = self.lock();
        for family in families.values_mut() {
            family
                .series
                .retain(|labels, _| !labels.iter().any(|(n, v)| *n == label && v == value));
        }
    }

    /// The registry in the Prometheus text exposition format 0.0.4.
    ///
    /// Families are sorted by name, each with one `# HELP` and one `# TYPE`
    /// line, and their series sorted by label set. Families without series
    /// are left out.
    #[must_use]
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::new();
        for (name, family) in families.iter() {
            if family.series.is_empty() {
                continue;
            }
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP {name} {}", escape_help(family.help));
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            for (labels, value) in &family.series {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (label, value)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
                    }
                    out.push('}');
                }
                out.push(' ');
                let bits = value.load(Ordering::Relaxed);
                match family.kind {
                    Kind::Counter => {
                        let _ = write!(out, "{bits}");
                    }
                    Kind::Gauge => out.push_str(&format_f64(f64::from_bits(bits))),
                }
                out.push('\n');
            }
        }
        out
    }

    /// The atomic behind `name{labels}`, or `None` if `name` has the other
    /// kind.
    fn series(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
    ) -> Option<Arc<AtomicU64>> {
        let mut key: LabelSet = labels.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
        // Stable sort, then keep the first of any repeated label name: a
        // series with two values for one label is not valid exposition.
        key.sort_by(|a, b| a.0.cmp(b.0));
        key.dedup_by(|later, earlier| later.0 == earlier.0);

        let mut families = self.lock();
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
            warned_kind_mismatch: false,
        });
        if family.kind != kind {
            if !family.warned_kind_mismatch {
                family.warned_kind_mismatch = true;
                tracing::warn!(
                    metric = name,
                    registered = family.kind.as_str(),
                    requested = kind.as_str(),
                    "metric requested with a different type than registered; \
                     its updates will not be exported"
                );
            }
            return None;
        }
        Some(Arc::clone(family.series.entry(key).or_default()))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Family>> {
        // A panic while holding the lock cannot leave a family half-updated
        // in a way that matters for metrics, so keep serving them.
        self.families.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A monotonically increasing count; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A counter that belongs to no registry (for library use without
    /// metrics); it counts but is never rendered.
    #[must_use]
    pub fn detached() -> Counter {
        Counter(Arc::default())
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down; clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicU64>);

impl Gauge {
    /// A gauge that belongs to no registry (for library use without
    /// metrics); it holds its value but is never rendered.
    #[must_use]
    pub fn detached() -> Gauge {
        // 0 is the bit pattern of 0.0.
        Gauge(Arc::default())
    }

    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }

    /// Adds `delta` (negative to subtract) atomically.
    pub fn add(&self, delta: f64) {
        // No atomic f64 add: retry compare-and-swap until no other writer
        // got in between. The closure always returns Some, so this cannot
        // fail.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + delta).to_bits())
            });
    }

    /// The current value.
    #[must_use]
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A sample value as Prometheus spells it.
fn format_f64(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        // Display never uses an exponent and prints whole numbers without
        // `.0`, both of which Prometheus parses.
        value.to_string()
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and newline (quotes are literal there).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_sorted_with_help_and_type() {
        let metrics = Metrics::new();
        let b = metrics.counter("b_total", "Bees.", &[("pipeline", "p2")]);
        let a = metrics.gauge("a_value", "An a.", &[]);
        let b1 = metrics.counter("b_total", "ignored help", &[("pipeline", "p1")]);
        b.add(5);
        b1.inc();
        a.set(2.5);
        metrics.gauge("c_ratio", "Cs.", &[("x", "1")]).set(3.0);
        assert_eq!(
            metrics.render(),
            "# HELP a_value An a.\n\
             # TYPE a_value gauge\n\
             a_value 2.5\n\
             # HELP b_total Bees.\n\
             # TYPE b_total counter\n\
             b_total{pipeline=\"p1\"} 1\n\
             b_total{pipeline=\"p2\"} 5\n\
             # HELP c_ratio Cs.\n\
             # TYPE c_ratio gauge\n\
             c_ratio{x=\"1\"} 3\n"
        );
    }

    #[test]
    fn labels_are_sorted_by_name_and_deduplicated() {
        let metrics = Metrics::new();
        let one = metrics.counter("x_total", "X.", &[("b", "2"), ("a", "1")]);
        let two = metrics.counter("x_total", "X.", &[("a", "1"), ("b", "2")]);
        one.inc();
        two.add(2);
        assert_eq!(one.get(), 3);
        assert_eq!(two.get(), 3);
        assert!(metrics.render().contains("x_total{a=\"1\",b=\"2\"} 3\n"));

        let repeated = metrics.counter("y_total", "Y.", &[("a", "first"), ("a", "second")]);
        repeated.inc();
        assert!(metrics.render().contains("y_total{a=\"first\"} 1\n"));
    }

    #[test]
    fn escapes_label_values_and_help() {
        let metrics = Metrics::new();
        metrics
            .counter(
                "e_total",
                "Help with \\ and\nnewline \"q\".",
                &[("v", "a\\b\"c\nd")],
            )
            .inc();
        assert_eq!(
            metrics.render(),
            "# HELP e_total Help with \\\\ and\\nnewline \"q\".\n\
             # TYPE e_total counter\n\
             e_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn gauges_print_special_values() {
        let metrics = Metrics::new();
        metrics.gauge("g", "G.", &[("k", "nan")]).set(f64::NAN);
        metrics
            .gauge("g", "G.", &[("k", "pinf")])
            .set(f64::INFINITY);
        metrics
            .gauge("g", "G.", &[("k", "ninf")])
            .set(f64::NEG_INFINITY);
        metrics.gauge("g", "G.", &[("k", "neg")]).set(-0.25);
        let text = metrics.render();
        assert!(text.contains("g{k=\"nan\"} NaN\n"), "{text}");
        assert!(text.contains("g{k=\"pinf\"} +Inf\n"), "{text}");
        assert!(text.contains("g{k=\"ninf\"} -Inf\n"), "{text}");
        assert!(text.contains("g{k=\"neg\"} -0.25\n"), "{text}");
    }

    #[test]
    fn gauge_add_and_set() {
        let gauge = Gauge::detached();
        assert_eq!(gauge.get(), 0.0);
        gauge.add(1.5);
        gauge.add(-0.5);
        assert_eq!(gauge.get(), 1.0);
        gauge.set(-7.0);
        assert_eq!(gauge.get(), -7.0);
    }

    #[test]
    fn remove_matching_drops_series_of_every_family() {
        let metrics = Metrics::new();
        let kept = metrics.counter("in_total", "In.", &[("pipeline", "a")]);
        let dropped = metrics.counter("in_total", "In.", &[("pipeline", "b")]);
        metrics
            .gauge("lag", "Lag.", &[("pipeline", "b"), ("pipe", "x")])
            .set(1.0);
        kept.inc();
        dropped.add(10);

        metrics.remove_matching("pipeline", "b");
        let text = metrics.render();
        assert_eq!(
            text,
            "# HELP in_total In.\n# TYPE in_total counter\nin_total{pipeline=\"a\"} 1\n"
        );

        // Old handles keep counting on their own; a new request starts again.
        dropped.inc();
        assert_eq!(dropped.get(), 11);
        let again = metrics.counter("in_total", "In.", &[("pipeline", "b")]);
        assert_eq!(again.get(), 0);
        assert!(metrics.render().contains("in_total{pipeline=\"b\"} 0\n"));
    }

    #[test]
    fn kind_mismatch_returns_a_detached_handle() {
        let metrics = Metrics::new();
        metrics.counter("m", "M.", &[]).add(4);
        let gauge = metrics.gauge("m", "M.", &[]);
        gauge.set(99.0);
        let gauge_again = metrics.gauge("m", "M.", &[]);
        assert_eq!(gauge_again.get(), 0.0, "detached handles are not shared");
        assert_eq!(metrics.render(), "# HELP m M.\n# TYPE m counter\nm 4\n");
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let metrics = Metrics::new();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let metrics = Arc::clone(&metrics);
                std::thread::spawn(move || {
                    let counter = metrics.counter("c_total", "C.", &[("k", "v")]);
                    let gauge = metrics.gauge("g", "G.", &[]);
                    for _ in 0..10_000 {
                        counter.inc();
                        gauge.add(1.0);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(
            metrics.counter("c_total", "C.", &[("k", "v")]).get(),
            80_000
        );
        assert_eq!(metrics.gauge("g", "G.", &[]).get(), 80_000.0);
    }

    #[test]
    fn empty_registry_renders_nothing() {
        assert_eq!(Metrics::new().render(), "");
    }
}
