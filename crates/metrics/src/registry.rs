//! The registry a component registers its metrics in, and its encoding.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, prometheus_text};
use prometheus_client::registry::Metric;

use crate::sample_writer::SampleWriter;

/// `Content-Type` of every `/metrics` answer: the Prometheus text format 0.0.4.
///
/// Prometheus 3 refuses to scrape a body without a `Content-Type` it knows.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The metrics could not be encoded (a scrape-time writer failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the metrics")]
pub struct EncodeError;

/// Metrics whose values are read from a component's state when scraped.
///
/// Implement it for values the component already holds (disk usage, replication
/// status, job counts): writing them at scrape time cannot go stale, and families
/// whose label sets come and go (VMs, job states) need no clean-up.
pub trait ScrapeTimeMetrics: Send + Sync + 'static {
    /// Writes the current samples.
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result;
}

/// All metrics of one component: registered instruments and scrape-time writers.
///
/// Built once at start-up (registration needs `&mut`), then shared read-only: the
/// instruments it hands out are handles updated lock-free by the code they measure.
#[derive(Debug, Default)]
pub struct Registry {
    inner: prometheus_client::registry::Registry,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` (a [`crate::Counter`], [`crate::Gauge`],
    /// [`crate::Histogram`] or a [`crate::Family`] of them) and returns it, so the
    /// caller keeps the handle it updates. `name` carries no `_total`; `help` no final
    /// full stop (see the crate documentation).
    pub fn register<M: Metric + Clone>(&mut self, name: &str, help: &str, metric: M) -> M {
        self.inner.register(name, help, metric.clone());
        metric
    }

    /// Adds metrics written at every scrape.
    pub fn register_scrape_time(&mut self, metrics: impl ScrapeTimeMetrics) {
        self.inner
            .register_collector(Box::new(ScrapeTimeCollector(metrics)));
    }

    /// Adds `haven_build_info{component,version}` and the standard `process_*`
    /// metrics (CPU seconds, resident and virtual memory, open and maximum file
    /// descriptors, start time), read from `/proc/self` at each scrape: every
    /// component calls it once so each exports the same set.
    pub fn register_process_metrics(&mut self, component: &'static str) {
        self.register_scrape_time(crate::process::ProcessMetrics::new(component));
    }

    /// Encodes every metric in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, EncodeError> {
        let mut text = String::new();
        prometheus_text::encode(&mut text, &self.inner).map_err(|_| EncodeError)?;
        Ok(text)
    }
}

/// Adapts a [`ScrapeTimeMetrics`] to `prometheus-client`'s collector interface.
struct ScrapeTimeCollector<T>(T);

impl<T> std::fmt::Debug for ScrapeTimeCollector<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ScrapeTimeCollector")
    }
}

impl<T: ScrapeTimeMetrics> Collector for ScrapeTimeCollector<T> {
    fn encode(&self, encoder: DescriptorEncoder) -> std::fmt::Result {
        self.0.write(&mut SampleWriter::new(encoder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Counter, Family, Gauge, Histogram, NO_LABELS};

    type OperationAndStatus = ([(&'static str, &'static str); 1], [(&'static str, u16); 1]);

    struct Fixed;

    impl ScrapeTimeMetrics for Fixed {
        fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
            out.gauge(
                "haven_test_free_bytes",
                "Free bytes",
                [([("dir", "/a\"b")], 7u64)],
            )?;
            out.counter("haven_test_reads", "Reads", [(NO_LABELS, 3u64)])
        }
    }

    #[test]
    fn renders_the_classic_text_format_with_suffixes_help_and_escaped_labels() {
        let mut registry = Registry::new();
        let requests = registry.register(
            "haven_test_requests",
            "Requests by operation and status",
            Family::<OperationAndStatus, Counter>::default(),
        );
        let up = registry.register("haven_test_up", "1 when up", Gauge::<i64>::default());
        let latency = registry.register(
            "haven_test_duration_seconds",
            "Latency",
            Histogram::new([0.005, 1.0]),
        );
        registry.register_scrape_time(Fixed);
        requests
            .get_or_create(&([("op", "GetObject")], [("status", 500)]))
            .inc();
        up.set(1);
        latency.observe(0.003);
        let text = registry.encode().unwrap();
        assert!(
            text.contains("# HELP haven_test_requests_total Requests by operation and status.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE haven_test_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("haven_test_requests_total{op=\"GetObject\",status=\"500\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("haven_test_up 1\n"), "{text}");
        assert!(
            text.contains("haven_test_duration_seconds_bucket{le=\"0.005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("haven_test_duration_seconds_bucket{le=\"1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("haven_test_duration_seconds_bucket{le=\"+Inf\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP haven_test_free_bytes Free bytes.\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE haven_test_free_bytes gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("haven_test_free_bytes{dir=\"/a\\\"b\"} 7\n"),
            "{text}"
        );
        assert!(text.contains("haven_test_reads_total 3\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn an_empty_family_is_left_out() {
        let mut registry = Registry::new();
        registry.register(
            "haven_test_empty",
            "Nothing yet",
            Family::<[(&'static str, String); 1], Gauge>::default(),
        );
        assert_eq!(registry.encode().unwrap(), "");
    }
}
