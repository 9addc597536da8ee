//! The worker's metrics, served on `metrics_listen` (`worker.toml`) through
//! `haven-metrics`, the registry and HTTP server every Haven component shares.

use std::sync::Arc;

use haven_metrics::{Counter, Exporter, Family, Gauge, HttpSecurity, MetricsServer, Registry};
use haven_proto::v1;
use haven_tls::listener::ServerTlsFiles;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, WorkerError};

/// Labels of a finished job: its kind and how it ended.
type JobLabels = [(&'static str, &'static str); 2];

/// How a job ended, as the `result` label says it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JobResult {
    /// Committed (a backup) or completed (prune, GC, replication).
    Succeeded,
    /// Reported to the coordinator as failed.
    Failed,
    /// Dropped because the job moved to another worker.
    Moved,
}

/// Counters the daemon updates as its jobs run; cheap to clone.
#[derive(Clone)]
pub(crate) struct WorkerMetrics {
    registry: Arc<Registry>,
    jobs: Family<JobLabels, Counter>,
    running: Gauge,
    bytes_read: Counter,
}

impl WorkerMetrics {
    /// Registers every metric of the worker.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::new();
        let jobs = registry.register(
            "haven_worker_jobs",
            "Jobs this worker ended, by kind and result",
            Family::<JobLabels, Counter>::default(),
        );
        let running = registry.register(
            "haven_worker_jobs_running",
            "Jobs running on this worker now",
            Gauge::default(),
        );
        let bytes_read = registry.register(
            "haven_worker_read_bytes",
            "Bytes jobs of this worker read from disks and repositories",
            Counter::default(),
        );
        Self {
            registry: Arc::new(registry),
            jobs,
            running,
            bytes_read,
        }
    }

    /// A job started.
    pub(crate) fn job_started(&self) {
        self.running.inc();
    }

    /// A job of `kind` ended with `result` after reading `bytes_read` bytes.
    pub(crate) fn job_ended(&self, kind: i32, result: JobResult, bytes_read: u64) {
        self.running.dec();
        self.bytes_read.inc_by(bytes_read);
        let result = match result {
            JobResult::Succeeded => "succeeded",
            JobResult::Failed => "failed",
            JobResult::Moved => "moved",
        };
        self.jobs
            .get_or_create(&[("kind", kind_name(kind)), ("result", result)])
            .inc();
    }

    /// Serves `/metrics` and `/healthz` on `address` until `shutdown`: over TLS with
    /// `tls`, else plain HTTP, which only a loopback address accepts.
    pub(crate) async fn serve(
        &self,
        address: std::net::SocketAddr,
        tls: Option<&ServerTlsFiles>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let security = match tls {
            Some(files) => HttpSecurity::tls(files, "worker metrics", &shutdown)
                .map_err(|error| WorkerError::InvalidInput(format!("[metrics_tls]: {error}")))?,
            None => HttpSecurity::Plain { insecure: false },
        };
        let server = MetricsServer::bind(address, security)
            .await
            .map_err(|error| WorkerError::InvalidInput(format!("metrics_listen: {error}")))?;
        tracing::info!(%address, tls = tls.is_some(), "worker metrics listening");
        tokio::spawn(server.serve(Arc::new(self.clone()), shutdown));
        Ok(())
    }
}

impl Exporter for WorkerMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn health(&self) -> Option<String> {
        Some("ok\n".to_string())
    }
}

/// The `kind` label of a job kind from the wire.
pub(crate) fn kind_name(kind: i32) -> &'static str {
    match v1::JobKind::try_from(kind) {
        Ok(v1::JobKind::Backup) => "backup",
        Ok(v1::JobKind::Prune) => "prune",
        Ok(v1::JobKind::Gc) => "gc",
        Ok(v1::JobKind::Replicate) => "replicate",
        Ok(v1::JobKind::Unspecified) | Err(_) => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_jobs_are_counted_by_kind_and_result() {
        let metrics = WorkerMetrics::new();
        metrics.job_started();
        metrics.job_started();
        metrics.job_ended(v1::JobKind::Backup as i32, JobResult::Succeeded, 1000);
        metrics.job_ended(99, JobResult::Failed, 24);
        let text = metrics.registry.encode().expect("encode");
        for line in [
            "haven_worker_jobs_total{kind=\"backup\",result=\"succeeded\"} 1\n",
            "haven_worker_jobs_total{kind=\"unknown\",result=\"failed\"} 1\n",
            "haven_worker_jobs_running 0\n",
            "haven_worker_read_bytes_total 1024\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }
}
