//! The worker's metrics, served on `metrics_listen` (`worker.toml`) through
//! `haven-metrics`, the registry and HTTP server every Haven component shares.

use std::sync::Arc;

use haven_metrics::{Counter, Exporter, Family, Gauge, HttpSecurity, MetricsServer, Registry};
use haven_proto::v1;
use haven_tls::listener::ServerTlsFiles;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, WorkerError};

/// Labels of a finished job (its kind and how it ended), and of a job error (where
/// it came from and whether the coordinator retries the job).
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
#[derive(Debug, Clone)]
pub(crate) struct WorkerMetrics {
    registry: Arc<Registry>,
    jobs: Family<JobLabels, Counter>,
    running: Gauge,
    bytes_read: Counter,
    bytes_uploaded: Counter,
    errors: Family<JobLabels, Counter>,
}

impl WorkerMetrics {
    /// Registers every metric of the worker.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::new();
        registry.register_process_metrics("worker");
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
        let bytes_uploaded = registry.register(
            "haven_worker_uploaded_bytes",
            "Bytes committed backups of this worker uploaded (compressed and encrypted)",
            Counter::default(),
        );
        let errors = registry.register(
            "haven_worker_job_errors",
            "Jobs of this worker that failed, by the source of the error (nbd, storage, hypervisor, tool, coordinator, input, io, cancelled) and whether the coordinator retries them",
            Family::<JobLabels, Counter>::default(),
        );
        Self {
            registry: Arc::new(registry),
            jobs,
            running,
            bytes_read,
            bytes_uploaded,
            errors,
        }
    }

    /// Adds bytes a running job read since the last call, so the read throughput
    /// (`rate(haven_worker_read_bytes_total[1m])`) follows a long backup as it runs
    /// instead of jumping when it ends. `counted` holds what this job already added.
    pub(crate) fn read_progress(&self, done: u64, counted: &std::sync::atomic::AtomicU64) {
        let before = counted.swap(done, std::sync::atomic::Ordering::Relaxed);
        self.bytes_read.inc_by(done.saturating_sub(before));
    }

    /// A backup committed after uploading `bytes` bytes.
    pub(crate) fn uploaded(&self, bytes: u64) {
        self.bytes_uploaded.inc_by(bytes);
    }

    /// A job failed with `error`.
    pub(crate) fn job_error(&self, error: &WorkerError) {
        let retryable = if error.is_retryable() {
            "true"
        } else {
            "false"
        };
        self.errors
            .get_or_create(&[("source", error_source(error)), ("retryable", retryable)])
            .inc();
    }

    /// A job started.
    pub(crate) fn job_started(&self) {
        self.running.inc();
    }

    /// A job of `kind` ended with `result`.
    pub(crate) fn job_ended(&self, kind: i32, result: JobResult) {
        self.running.dec();
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

/// The `source` label of a job error: which part of the data path failed.
fn error_source(error: &WorkerError) -> &'static str {
    match error {
        WorkerError::Nbd(_) => "nbd",
        WorkerError::Repo(_) | WorkerError::AlreadyCommitted(_) => "storage",
        WorkerError::Qmp(_)
        | WorkerError::Vsphere(_)
        | WorkerError::Hypervisor { .. }
        | WorkerError::Unreachable(_) => "hypervisor",
        WorkerError::Tool { .. } => "tool",
        WorkerError::Refused { .. } | WorkerError::JobMoved(_) => "coordinator",
        WorkerError::InvalidInput(_) => "input",
        WorkerError::Io { .. } => "io",
        WorkerError::Cancelled(_) | WorkerError::ShuttingDown => "cancelled",
    }
}

/// The `kind` label of a job kind from the wire.
pub(crate) fn kind_name(kind: i32) -> &'static str {
    match v1::JobKind::try_from(kind) {
        Ok(v1::JobKind::Backup) => "backup",
        Ok(v1::JobKind::Prune) => "prune",
        Ok(v1::JobKind::Gc) => "gc",
        Ok(v1::JobKind::Replicate) => "replicate",
        Ok(v1::JobKind::BootTest) => "boot_test",
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
        let counted = std::sync::atomic::AtomicU64::new(0);
        metrics.read_progress(1000, &counted);
        metrics.read_progress(1024, &counted);
        metrics.uploaded(300);
        metrics.job_ended(v1::JobKind::Backup as i32, JobResult::Succeeded);
        metrics.job_ended(99, JobResult::Failed);
        metrics.job_error(&WorkerError::Nbd(haven_nbd::NbdError::Closed));
        metrics.job_error(&WorkerError::InvalidInput("no such disk".into()));
        let text = metrics.registry.encode().expect("encode");
        for line in [
            "haven_worker_jobs_total{kind=\"backup\",result=\"succeeded\"} 1\n",
            "haven_worker_jobs_total{kind=\"unknown\",result=\"failed\"} 1\n",
            "haven_worker_jobs_running 0\n",
            "haven_worker_read_bytes_total 1024\n",
            "haven_worker_uploaded_bytes_total 300\n",
            "haven_worker_job_errors_total{source=\"nbd\",retryable=\"true\"} 1\n",
            "haven_worker_job_errors_total{source=\"input\",retryable=\"false\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }
}
