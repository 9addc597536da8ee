//! `/healthz` and `/metrics` of a replica, served by the shared `haven-metrics`
//! server.
//!
//! Everything exported is read from the replica when scraped, through the leader's
//! public queries: whether this replica leads and, on the leader only, the jobs by
//! state, the live workers and the metadata store's request counters. A follower
//! exports only `haven_coordinator_is_leader`, so a dashboard summing jobs over the
//! replicas counts them once.

use std::sync::{Arc, Mutex, PoisonError};

use haven_metrics::{Exporter, NO_LABELS, Registry, SampleWriter, ScrapeTimeMetrics};

use crate::model::JobState;
use crate::replica::{Replica, Role};
use crate::store::StoreStats;

/// Job states in the order exported, with their label values.
const JOB_STATES: [(JobState, &str); 5] = [
    (JobState::Pending, "pending"),
    (JobState::Assigned, "assigned"),
    (JobState::Committing, "committing"),
    (JobState::Succeeded, "succeeded"),
    (JobState::Failed, "failed"),
];

/// What one scrape read from the replica.
#[derive(Debug, Default)]
struct ReplicaReading {
    is_leader: bool,
    /// `None` on a follower.
    leader: Option<LeaderReading>,
}

/// What one scrape read from the leader.
#[derive(Debug)]
struct LeaderReading {
    /// Jobs per entry of [`JOB_STATES`].
    jobs: [usize; JOB_STATES.len()],
    workers: usize,
    store: StoreStats,
    /// Records the leader could not decode when it loaded the store.
    unreadable_records: u64,
}

impl ReplicaReading {
    async fn read(replica: &Replica) -> Self {
        let Role::Leader(leader) = replica.role().await else {
            return Self::default();
        };
        let jobs = leader.jobs(None, 0).await;
        let count = |state: JobState| jobs.iter().filter(|(job, _)| job.state == state).count();
        Self {
            is_leader: true,
            leader: Some(LeaderReading {
                jobs: JOB_STATES.map(|(state, _)| count(state)),
                workers: leader.workers().await.len(),
                store: leader.store_stats(),
                unreadable_records: leader.unreadable_records(),
            }),
        }
    }
}

/// The replica's HTTP endpoints: its metrics registry and its health.
pub struct ReplicaEndpoints {
    replica: Arc<Replica>,
    registry: Registry,
    latest: Arc<Mutex<ReplicaReading>>,
}

impl ReplicaEndpoints {
    /// Endpoints reading `replica` at every scrape.
    pub fn new(replica: Arc<Replica>) -> Self {
        let latest = Arc::new(Mutex::new(ReplicaReading::default()));
        let mut registry = Registry::new();
        registry.register_process_metrics("coordinator");
        registry.register_scrape_time(ReplicaMetrics(Arc::clone(&latest)));
        Self {
            replica,
            registry,
            latest,
        }
    }
}

impl Exporter for ReplicaEndpoints {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn refresh(&self) {
        let reading = ReplicaReading::read(&self.replica).await;
        *self.latest.lock().unwrap_or_else(PoisonError::into_inner) = reading;
    }

    async fn health(&self) -> Option<String> {
        let role = match self.replica.role().await {
            Role::Leader(_) => "ok: leader\n".to_string(),
            Role::Follower(Some(url)) => format!("ok: follower of {url}\n"),
            Role::Follower(None) => "ok: no leader elected yet\n".to_string(),
        };
        let store = match self.replica.store_reachable().await {
            Ok(()) => "store: reachable\n".to_string(),
            Err(error) => format!("store: unreachable: {error}\n"),
        };
        Some(role + &store)
    }
}

/// Writes the latest [`ReplicaReading`].
struct ReplicaMetrics(Arc<Mutex<ReplicaReading>>);

impl ScrapeTimeMetrics for ReplicaMetrics {
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
        let reading = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        out.gauge(
            "haven_coordinator_is_leader",
            "1 if this replica leads",
            [(NO_LABELS, u64::from(reading.is_leader))],
        )?;
        let Some(leader) = &reading.leader else {
            return Ok(());
        };
        out.gauge(
            "haven_jobs",
            "Jobs by state",
            JOB_STATES
                .iter()
                .zip(leader.jobs)
                .map(|((_, name), count)| ([("state", *name)], count as u64)),
        )?;
        out.gauge(
            "haven_workers",
            "Live workers",
            [(NO_LABELS, leader.workers as u64)],
        )?;
        out.gauge(
            "haven_store_unreadable_records",
            "Records the leader skipped at load because it could not decode them",
            [(NO_LABELS, leader.unreadable_records)],
        )?;
        out.counter(
            "haven_store_requests",
            "Metadata store requests",
            [
                ([("kind", "read")], leader.store.reads),
                ([("kind", "write")], leader.store.writes),
                ([("kind", "lease")], leader.store.lease_calls),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(reading: ReplicaReading) -> String {
        let mut registry = Registry::new();
        registry.register_scrape_time(ReplicaMetrics(Arc::new(Mutex::new(reading))));
        registry.encode().unwrap()
    }

    #[test]
    fn a_follower_exports_only_whether_it_leads() {
        assert_eq!(
            render(ReplicaReading::default()),
            "# HELP haven_coordinator_is_leader 1 if this replica leads.\n\
             # TYPE haven_coordinator_is_leader gauge\n\
             haven_coordinator_is_leader 0\n"
        );
    }

    #[test]
    fn the_leader_exports_jobs_workers_and_store_requests() {
        let text = render(ReplicaReading {
            is_leader: true,
            leader: Some(LeaderReading {
                jobs: [1, 2, 0, 4, 5],
                workers: 3,
                store: StoreStats {
                    reads: 10,
                    writes: 11,
                    lease_calls: 12,
                },
                unreadable_records: 2,
            }),
        });
        for line in [
            "haven_coordinator_is_leader 1\n",
            "# TYPE haven_jobs gauge\n",
            "haven_jobs{state=\"pending\"} 1\n",
            "haven_jobs{state=\"assigned\"} 2\n",
            "haven_jobs{state=\"committing\"} 0\n",
            "haven_jobs{state=\"succeeded\"} 4\n",
            "haven_jobs{state=\"failed\"} 5\n",
            "haven_workers 3\n",
            "haven_store_unreadable_records 2\n",
            "# TYPE haven_store_requests_total counter\n",
            "haven_store_requests_total{kind=\"read\"} 10\n",
            "haven_store_requests_total{kind=\"write\"} 11\n",
            "haven_store_requests_total{kind=\"lease\"} 12\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
    }
}
