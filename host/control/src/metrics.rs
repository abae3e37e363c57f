//! `GET /metrics` through `prometheus-client`: the Prometheus text
//! exposition format 0.0.4, written by the library's encoder.
//!
//! Nothing is pushed into a registry while pipelines run. The engine keeps
//! plain atomics and [`Histogram`](plumber_engine::histogram::Histogram)s; at each
//! scrape a collector (see [`Supervisor`](crate::supervisor::Supervisor))
//! reads them into a [`Scrape`], which groups the series into families and
//! hands them to `prometheus-client`'s encoder.
//!
//! ```
//! use plumber_control::metrics::Scrape;
//!
//! let mut scrape = Scrape::new();
//! scrape.counter(
//!     "plumber_events_in_total",
//!     "Events read from the source.",
//!     &[("pipeline", "orders")],
//!     3,
//! );
//! assert!(scrape.render().contains("plumber_events_in_total{pipeline=\"orders\"} 3\n"));
//! ```

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use plumber_engine::histogram::HistogramSnapshot;

/// The `Content-Type` of what [`render`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One series' value.
#[derive(Debug, Clone)]
enum Value {
    Count(u64),
    Int(i64),
    Float(f64),
    Histogram(HistogramSnapshot),
}

/// A label set, sorted by label name so that the order callers pass labels
/// in does not create distinct series.
type LabelSet = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<LabelSet, Value>,
}

/// The families of one scrape: what the engine's counters read at this
/// moment.
#[derive(Debug, Default)]
pub struct Scrape {
    families: BTreeMap<&'static str, Family>,
}

impl Scrape {
    /// An empty scrape.
    #[must_use]
    pub fn new() -> Scrape {
        Scrape::default()
    }

    /// Adds `value` to the counter series `name{labels}`. Counter names end
    /// in `_total`, as Prometheus expects (the encoder adds it otherwise).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        self.series(name, help, Kind::Counter, labels, |old| match old {
            Some(Value::Count(before)) => Value::Count(before.saturating_add(value)),
            _ => Value::Count(value),
        });
    }

    /// Sets the gauge series `name{labels}` to a whole number.
    pub fn gauge_int(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: i64,
    ) {
        self.series(name, help, Kind::Gauge, labels, |_| Value::Int(value));
    }

    /// Sets the gauge series `name{labels}`.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
    ) {
        self.series(name, help, Kind::Gauge, labels, |_| Value::Float(value));
    }

    /// Sets the histogram series `name{labels}`.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        snapshot: HistogramSnapshot,
    ) {
        self.series(name, help, Kind::Histogram, labels, |_| {
            Value::Histogram(snapshot)
        });
    }

    /// The scrape in the Prometheus text format 0.0.4 (through a registry
    /// of its own).
    #[must_use]
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        render(&registry)
    }

    fn series(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
        value: impl FnOnce(Option<Value>) -> Value,
    ) {
        let mut key: LabelSet = labels.iter().map(|(n, v)| (*n, (*v).to_owned())).collect();
        // Stable sort, then keep the first of any repeated label name: a
        // series with two values for one label is not valid exposition.
        key.sort_by(|a, b| a.0.cmp(b.0));
        key.dedup_by(|later, earlier| later.0 == earlier.0);
        let family = self.families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        if family.kind != kind {
            tracing::warn!(
                metric = name,
                registered = family.kind.as_str(),
                requested = kind.as_str(),
                "metric requested with a different type than registered; not exported"
            );
            return;
        }
        let old = family.series.remove(&key);
        family.series.insert(key, value(old));
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, family) in &self.families {
            if family.series.is_empty() {
                continue;
            }
            let (name, metric_type) = match family.kind {
                // The encoder appends `_total` to a counter's name.
                Kind::Counter => (
                    name.strip_suffix("_total").unwrap_or(name),
                    MetricType::Counter,
                ),
                Kind::Gauge => (*name, MetricType::Gauge),
                Kind::Histogram => (*name, MetricType::Histogram),
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, metric_type)?;
            for (labels, value) in &family.series {
                let mut series = metric.encode_family(labels)?;
                match value {
                    Value::Count(count) => {
                        series.encode_counter::<NoLabelSet, _, u64>(count, None)?;
                    }
                    Value::Int(value) => series.encode_gauge(value)?,
                    Value::Float(value) => series.encode_gauge(value)?,
                    Value::Histogram(snapshot) => series.encode_histogram::<NoLabelSet>(
                        snapshot.sum(),
                        snapshot.count(),
                        &snapshot.buckets(),
                        None,
                    )?,
                }
            }
        }
        Ok(())
    }
}

/// `registry` in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        // Writing to a String does not fail; a collector's own error would.
        tracing::warn!("cannot encode the metrics: {error}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumber_engine::histogram::Histogram;

    #[test]
    fn renders_families_sorted_with_help_and_type() {
        let mut scrape = Scrape::new();
        scrape.counter("b_total", "Bees.", &[("pipeline", "p2")], 5);
        scrape.gauge("a_value", "An a.", &[], 2.5);
        scrape.counter("b_total", "ignored help", &[("pipeline", "p1")], 1);
        scrape.gauge_int("c_ratio", "Cs.", &[("x", "1")], 3);
        assert_eq!(
            scrape.render(),
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
    fn labels_are_sorted_by_name_deduplicated_and_counters_add_up() {
        let mut scrape = Scrape::new();
        scrape.counter("x_total", "X.", &[("b", "2"), ("a", "1")], 1);
        scrape.counter("x_total", "X.", &[("a", "1"), ("b", "2")], 2);
        scrape.counter("y_total", "Y.", &[("a", "first"), ("a", "second")], 1);
        let text = scrape.render();
        assert!(text.contains("x_total{a=\"1\",b=\"2\"} 3\n"), "{text}");
        assert!(text.contains("y_total{a=\"first\"} 1\n"), "{text}");
    }

    #[test]
    fn escapes_label_values_and_help() {
        let mut scrape = Scrape::new();
        scrape.counter(
            "e_total",
            "Help with \\ and\nnewline \"q\".",
            &[("v", "a\\b\"c\nd")],
            1,
        );
        assert_eq!(
            scrape.render(),
            "# HELP e_total Help with \\\\ and\\nnewline \"q\".\n\
             # TYPE e_total counter\n\
             e_total{v=\"a\\\\b\\\"c\\nd\"} 1\n"
        );
    }

    #[test]
    fn gauges_print_special_values() {
        let mut scrape = Scrape::new();
        scrape.gauge("g", "G.", &[("k", "nan")], f64::NAN);
        scrape.gauge("g", "G.", &[("k", "pinf")], f64::INFINITY);
        scrape.gauge("g", "G.", &[("k", "ninf")], f64::NEG_INFINITY);
        scrape.gauge("g", "G.", &[("k", "neg")], -0.25);
        let text = scrape.render();
        assert!(text.contains("g{k=\"nan\"} NaN\n"), "{text}");
        assert!(text.contains("g{k=\"pinf\"} +Inf\n"), "{text}");
        assert!(text.contains("g{k=\"ninf\"} -Inf\n"), "{text}");
        assert!(text.contains("g{k=\"neg\"} -0.25\n"), "{text}");
    }

    #[test]
    fn histograms_have_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::sizes();
        for size in [1, 3, 3, 700] {
            histogram.record(size);
        }
        let mut scrape = Scrape::new();
        scrape.histogram(
            "plumber_pipe_batch_events",
            "Events per batch.",
            &[("step", "s")],
            histogram.snapshot(),
        );
        let text = scrape.render();
        for line in [
            "# TYPE plumber_pipe_batch_events histogram\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"1\"} 1\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"2\"} 1\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"5\"} 3\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"500\"} 3\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"1000\"} 4\n",
            "plumber_pipe_batch_events_bucket{step=\"s\",le=\"+Inf\"} 4\n",
            "plumber_pipe_batch_events_sum{step=\"s\"} 707.0\n",
            "plumber_pipe_batch_events_count{step=\"s\"} 4\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn a_kind_mismatch_is_not_exported() {
        let mut scrape = Scrape::new();
        scrape.counter("m_total", "M.", &[], 4);
        scrape.gauge("m_total", "M.", &[("other", "x")], 99.0);
        assert_eq!(
            scrape.render(),
            "# HELP m_total M.\n# TYPE m_total counter\nm_total 4\n"
        );
    }

    #[test]
    fn an_empty_scrape_renders_nothing() {
        assert_eq!(Scrape::new().render(), "");
    }
}
