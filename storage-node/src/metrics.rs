//! Prometheus metrics of the node, in Haven's shared registry (`haven-metrics`).
//!
//! The hot path is a few atomic adds plus a read lock on each labelled family; the
//! disk usage is measured per scrape by the server and written by a scrape-time
//! writer, so a data directory whose file system cannot be read is left out
//! instead of showing an old value. Objects and bytes per bucket cost a walk of the
//! whole tree, so a scrape starts one in the background when the last is older than
//! [`BUCKET_USAGE_INTERVAL`] and exports the last result with the time it was taken
//! (`haven_storage_objects_counted_timestamp_seconds`); a walk that fails drops the
//! values rather than keeping old ones.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use haven_metrics::{
    Counter, Family, Histogram, NO_LABELS, Registry, SampleWriter, ScrapeTimeMetrics,
};

use crate::store::{BucketUsage, DiskUsage, Store};

/// Least time between two walks counting the objects of every bucket.
pub const BUCKET_USAGE_INTERVAL: Duration = Duration::from_secs(60);

/// The last count of objects per bucket, and whether one runs now.
#[derive(Debug, Default)]
struct BucketCount {
    /// When the last walk started (monotonic), to space them.
    started: Option<Instant>,
    running: bool,
    /// Unix seconds of the last successful walk, and what it found.
    counted: Option<(f64, Vec<BucketUsage>)>,
}

/// Upper bounds (seconds) of the latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Labels of a request count: its S3 operation, then its HTTP status (dashboards
/// and tests match `op="GetObject",status="500"` in this order).
type RequestLabels = ([(&'static str, &'static str); 1], [(&'static str, u16); 1]);

/// Labels of a latency histogram: the S3 operation.
type OperationLabel = [(&'static str, &'static str); 1];

/// A latency histogram with [`LATENCY_BUCKETS`], as a family constructs it.
type LatencyFamily = Family<OperationLabel, Histogram, fn() -> Histogram>;

/// Counters shared by the server, the S3 layer and the store.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    bytes_in: Counter,
    bytes_out: Counter,
    checksum_failures: Counter,
    disk: Arc<Mutex<Vec<DiskUsage>>>,
    buckets: Arc<Mutex<BucketCount>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::new();
        registry.register_process_metrics("storage-node");
        let requests = registry.register(
            "haven_storage_requests",
            "S3 requests by operation and HTTP status",
            Family::default(),
        );
        let latency = registry.register(
            "haven_storage_request_duration_seconds",
            "Request latency by operation",
            LatencyFamily::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        );
        let bytes_in = registry.register(
            "haven_storage_received_bytes",
            "Request body bytes received",
            Counter::default(),
        );
        let bytes_out = registry.register(
            "haven_storage_sent_bytes",
            "Response body bytes sent",
            Counter::default(),
        );
        let checksum_failures = registry.register(
            "haven_storage_checksum_failures",
            "Stored objects that failed checksum verification (never served)",
            Counter::default(),
        );
        let disk = Arc::new(Mutex::new(Vec::new()));
        registry.register_scrape_time(DiskUsageMetrics(Arc::clone(&disk)));
        let buckets = Arc::new(Mutex::new(BucketCount::default()));
        registry.register_scrape_time(BucketUsageMetrics(Arc::clone(&buckets)));
        Self {
            registry,
            requests,
            latency,
            bytes_in,
            bytes_out,
            checksum_failures,
            disk,
            buckets,
        }
    }
}

impl Metrics {
    /// Records one finished request.
    pub fn request(&self, op: &'static str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&([("op", op)], [("status", status)]))
            .inc();
        self.latency
            .get_or_create(&[("op", op)])
            .observe(elapsed.as_secs_f64());
    }

    /// Adds request body bytes received.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.inc_by(n);
    }

    /// Adds response body bytes sent.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.inc_by(n);
    }

    /// Counts one object that failed checksum verification.
    pub fn checksum_failure(&self) {
        self.checksum_failures.inc();
    }

    /// Checksum failures so far.
    pub fn checksum_failures(&self) -> u64 {
        self.checksum_failures.get()
    }

    /// Starts a background count of the objects of every bucket in `store` unless
    /// one runs or the last started less than [`BUCKET_USAGE_INTERVAL`] ago.
    pub fn refresh_bucket_usage(&self, store: &Arc<Store>) {
        {
            let mut count = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            if count.running
                || count
                    .started
                    .is_some_and(|started| started.elapsed() < BUCKET_USAGE_INTERVAL)
            {
                return;
            }
            count.running = true;
            count.started = Some(Instant::now());
        }
        let store = Arc::clone(store);
        let buckets = Arc::clone(&self.buckets);
        tokio::task::spawn_blocking(move || {
            let result = store.bucket_usage();
            let mut count = buckets.lock().unwrap_or_else(PoisonError::into_inner);
            count.running = false;
            count.counted = match result {
                Ok(usage) => Some((unix_seconds_now(), usage)),
                Err(error) => {
                    tracing::warn!(%error, "cannot count the objects of the buckets");
                    None
                }
            };
        });
    }

    /// Takes the disk usage of each data directory measured for this scrape and
    /// returns the registry to encode.
    pub fn with_disk_usage(&self, disk: Vec<DiskUsage>) -> &Registry {
        *self.disk.lock().unwrap_or_else(PoisonError::into_inner) = disk;
        &self.registry
    }
}

/// Writes the disk usage last measured, per data directory.
struct DiskUsageMetrics(Arc<Mutex<Vec<DiskUsage>>>);

impl ScrapeTimeMetrics for DiskUsageMetrics {
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
        let disk = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if disk.is_empty() {
            return Ok(());
        }
        let dir = |usage: &DiskUsage| [("dir", usage.dir.to_string_lossy().into_owned())];
        out.gauge(
            "haven_storage_disk_used_bytes",
            "Bytes used on the file system of each data directory",
            disk.iter().map(|usage| (dir(usage), usage.used)),
        )?;
        out.gauge(
            "haven_storage_disk_available_bytes",
            "Bytes available on the file system of each data directory",
            disk.iter().map(|usage| (dir(usage), usage.available)),
        )?;
        out.gauge(
            "haven_storage_disk_used_ratio",
            "Used over used plus available bytes on the file system of each data directory (df's Use%)",
            disk.iter().map(|usage| (dir(usage), used_ratio(usage))),
        )
    }
}

/// Writes the last count of objects per bucket.
struct BucketUsageMetrics(Arc<Mutex<BucketCount>>);

impl ScrapeTimeMetrics for BucketUsageMetrics {
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
        let count = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((counted_at, buckets)) = &count.counted else {
            return Ok(());
        };
        let bucket = |usage: &BucketUsage| [("bucket", usage.bucket.clone())];
        out.gauge(
            "haven_storage_objects",
            "Objects stored per bucket, at the last count",
            buckets.iter().map(|usage| (bucket(usage), usage.objects)),
        )?;
        out.gauge(
            "haven_storage_object_bytes",
            "Bytes of the object files per bucket on disk (data and headers), at the last count",
            buckets.iter().map(|usage| (bucket(usage), usage.bytes)),
        )?;
        out.gauge(
            "haven_storage_objects_counted_timestamp_seconds",
            "Unix time of the last count of objects per bucket",
            [(NO_LABELS, *counted_at)],
        )
    }
}

/// Unix seconds now.
fn unix_seconds_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// `used / (used + available)`, as `df` computes its Use%: space reserved for root
/// counts as neither, so the node's own full disk reads 1. 0 for an empty file system.
fn used_ratio(usage: &DiskUsage) -> f64 {
    let total = usage.used.saturating_add(usage.available);
    if total == 0 {
        return 0.0;
    }
    usage.used as f64 / total as f64
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
        let disk = vec![
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
        let text = metrics.with_disk_usage(disk).encode().unwrap();
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
        assert!(text.contains("haven_storage_disk_used_ratio{dir=\"/srv/a\"} 0.333"));
        assert!(text.contains("haven_storage_disk_used_ratio{dir=\"/srv/\\\"b\\\"\"} 0.42857"));
        assert_eq!(
            text.matches("# TYPE haven_storage_disk_used_bytes").count(),
            1
        );
    }
}
