//! Prometheus metrics of the node, rendered in the text exposition format.
//!
//! Hand-written rather than a registry crate: the set is small and fixed, and
//! the hot path is a few atomic adds plus one short mutex for the labelled
//! request counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::store::DiskUsage;

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Requests {
    by_op_status: BTreeMap<(&'static str, u16), u64>,
    latency_by_op: BTreeMap<&'static str, Histogram>,
}

/// Counters shared by the server, the S3 layer and the store.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Requests>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    checksum_failures: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn request(&self, op: &'static str, status: u16, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let Ok(mut requests) = self.requests.lock() else {
            return;
        };
        *requests.by_op_status.entry((op, status)).or_default() += 1;
        let histogram = requests.latency_by_op.entry(op).or_default();
        histogram.count += 1;
        histogram.sum += seconds;
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// Adds request body bytes received.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds response body bytes sent.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts one object that failed checksum verification.
    pub fn checksum_failure(&self) {
        self.checksum_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Checksum failures so far.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.load(Ordering::Relaxed)
    }

    /// Renders all metrics, with the disk usage of each data directory.
    pub fn render(&self, disk: &[DiskUsage]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP haven_storage_requests_total S3 requests by operation and HTTP status."
        );
        let _ = writeln!(out, "# TYPE haven_storage_requests_total counter");
        if let Ok(requests) = self.requests.lock() {
            for ((op, status), count) in &requests.by_op_status {
                let _ = writeln!(
                    out,
                    "haven_storage_requests_total{{op=\"{op}\",status=\"{status}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "# HELP haven_storage_request_duration_seconds Request latency by operation."
            );
            let _ = writeln!(
                out,
                "# TYPE haven_storage_request_duration_seconds histogram"
            );
            for (op, histogram) in &requests.latency_by_op {
                for (count, bound) in histogram.buckets.iter().zip(LATENCY_BUCKETS) {
                    let _ = writeln!(
                        out,
                        "haven_storage_request_duration_seconds_bucket{{op=\"{op}\",le=\"{bound}\"}} {count}"
                    );
                }
                let _ = writeln!(
                    out,
                    "haven_storage_request_duration_seconds_bucket{{op=\"{op}\",le=\"+Inf\"}} {}",
                    histogram.count
                );
                let _ = writeln!(
                    out,
                    "haven_storage_request_duration_seconds_sum{{op=\"{op}\"}} {}",
                    histogram.sum
                );
                let _ = writeln!(
                    out,
                    "haven_storage_request_duration_seconds_count{{op=\"{op}\"}} {}",
                    histogram.count
                );
            }
        }
        let counters = [
            (
                "haven_storage_received_bytes_total",
                "Request body bytes received.",
                &self.bytes_in,
            ),
            (
                "haven_storage_sent_bytes_total",
                "Response body bytes sent.",
                &self.bytes_out,
            ),
            (
                "haven_storage_checksum_failures_total",
                "Stored objects that failed checksum verification (never served).",
                &self.checksum_failures,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        if !disk.is_empty() {
            let _ = writeln!(
                out,
                "# HELP haven_storage_disk_used_bytes Bytes used on the file system of each data directory.\n# TYPE haven_storage_disk_used_bytes gauge"
            );
            for usage in disk {
                let _ = writeln!(
                    out,
                    "haven_storage_disk_used_bytes{{dir=\"{}\"}} {}",
                    label_value(&usage.dir.to_string_lossy()),
                    usage.used
                );
            }
            let _ = writeln!(
                out,
                "# HELP haven_storage_disk_available_bytes Bytes available on the file system of each data directory.\n# TYPE haven_storage_disk_available_bytes gauge"
            );
            for usage in disk {
                let _ = writeln!(
                    out,
                    "haven_storage_disk_available_bytes{{dir=\"{}\"}} {}",
                    label_value(&usage.dir.to_string_lossy()),
                    usage.available
                );
            }
        }
        out
    }
}

/// Escapes a Prometheus label value (backslash, double quote, newline).
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms() {
        let metrics = Metrics::default();
        metrics.request("PutObject", 200, Duration::from_millis(3));
        metrics.request("PutObject", 200, Duration::from_millis(30));
        metrics.checksum_failure();
        metrics.bytes_in(10);
        let disk = [
            DiskUsage {
                dir: "/srv/a".into(),
                used: 1,
                available: 2,
            },
            DiskUsage {
                dir: "/srv/\"b\"".into(),
                used: 3,
                available: 4,
            },
        ];
        let text = metrics.render(&disk);
        assert!(text.contains("haven_storage_requests_total{op=\"PutObject\",status=\"200\"} 2"));
        assert!(text.contains(
            "haven_storage_request_duration_seconds_bucket{op=\"PutObject\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("haven_storage_request_duration_seconds_count{op=\"PutObject\"} 2"));
        assert!(text.contains("haven_storage_checksum_failures_total 1"));
        assert!(text.contains("haven_storage_received_bytes_total 10"));
        assert!(text.contains("haven_storage_disk_used_bytes{dir=\"/srv/a\"} 1"));
        assert!(text.contains("haven_storage_disk_available_bytes{dir=\"/srv/a\"} 2"));
        assert!(text.contains("haven_storage_disk_available_bytes{dir=\"/srv/\\\"b\\\"\"} 4"));
        assert_eq!(
            text.matches("# TYPE haven_storage_disk_used_bytes").count(),
            1
        );
    }
}
