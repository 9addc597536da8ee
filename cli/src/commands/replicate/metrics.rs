//! What `haven replicate --watch --metrics-listen` serves: the lag of each VM as of
//! the last status, and the passes that failed.

use std::sync::{Arc, Mutex, PoisonError};

use haven_metrics::{Counter, Exporter, Registry, SampleWriter, ScrapeTimeMetrics};
use haven_repo::VmReplicationStatus;

/// The metrics of a watching replication, shared by the loop and the server.
pub struct ReplicationMetrics {
    registry: Registry,
    failed_passes: Counter,
    statuses: Arc<Mutex<Vec<VmReplicationStatus>>>,
}

impl ReplicationMetrics {
    /// No status yet and no failed pass.
    pub fn new() -> Self {
        let mut registry = Registry::new();
        registry.register_process_metrics("replicate");
        let failed_passes = registry.register(
            "haven_replication_failed_passes",
            "Replication passes that ended in an error",
            Counter::default(),
        );
        let statuses = Arc::new(Mutex::new(Vec::new()));
        registry.register_scrape_time(LagMetrics(Arc::clone(&statuses)));
        Self {
            registry,
            failed_passes,
            statuses,
        }
    }

    /// Counts one pass that ended in an error.
    pub fn pass_failed(&self) {
        self.failed_passes.inc();
    }

    /// Replaces the statuses served, all VMs at once (a VM no longer listed
    /// disappears from the metrics).
    pub fn set_statuses(&self, statuses: Vec<VmReplicationStatus>) {
        *self.statuses.lock().unwrap_or_else(PoisonError::into_inner) = statuses;
    }
}

impl Exporter for ReplicationMetrics {
    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Writes the latest statuses, one sample per VM.
struct LagMetrics(Arc<Mutex<Vec<VmReplicationStatus>>>);

impl ScrapeTimeMetrics for LagMetrics {
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
        let statuses = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let per_vm = |value: fn(&VmReplicationStatus) -> u64| {
            statuses
                .iter()
                .map(move |status| ([("vm", status.vm.as_str())], value(status)))
        };
        out.gauge(
            "haven_replication_lag_seconds",
            "Age of the newest snapshot at the primary not yet at the secondary (0: up to date)",
            per_vm(|status| status.lag_seconds),
        )?;
        out.gauge(
            "haven_replication_oldest_missing_age_seconds",
            "Age of the oldest snapshot at the primary not yet at the secondary (grows while replication is stuck)",
            per_vm(|status| status.oldest_missing_age_seconds),
        )?;
        out.gauge(
            "haven_replication_missing_snapshots",
            "Snapshots at the primary not yet at the secondary",
            per_vm(|status| status.missing_snapshots as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(vm: &str, missing: usize, lag: u64, oldest: u64) -> VmReplicationStatus {
        VmReplicationStatus {
            vm: vm.to_string(),
            primary_snapshots: 3,
            replicated_snapshots: 3 - missing,
            missing_snapshots: missing,
            oldest_missing: None,
            newest_missing: None,
            lag_seconds: lag,
            oldest_missing_age_seconds: oldest,
        }
    }

    #[test]
    fn renders_the_lag_per_vm_and_the_failed_passes() {
        let metrics = ReplicationMetrics::new();
        metrics.set_statuses(vec![status("a", 2, 3600, 7200), status("b", 0, 0, 0)]);
        metrics.pass_failed();
        let text = metrics.registry().encode().unwrap();
        assert!(text.contains("haven_replication_lag_seconds{vm=\"a\"} 3600\n"));
        assert!(text.contains("haven_replication_oldest_missing_age_seconds{vm=\"a\"} 7200\n"));
        assert!(text.contains("haven_replication_lag_seconds{vm=\"b\"} 0\n"));
        assert!(text.contains("haven_replication_missing_snapshots{vm=\"a\"} 2\n"));
        assert!(text.contains("# TYPE haven_replication_failed_passes_total counter\n"));
        assert!(text.contains("haven_replication_failed_passes_total 1\n"));
        metrics.set_statuses(vec![status("b", 0, 0, 0)]);
        let text = metrics.registry().encode().unwrap();
        assert!(!text.contains("vm=\"a\""), "{text}");
    }
}
