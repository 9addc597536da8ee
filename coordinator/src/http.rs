//! `/healthz` and `/metrics` of a replica, served by the shared `haven-metrics`
//! server, which hands every other path to this module: `/readyz` (Kubernetes'
//! readiness probe, like `/healthz` open without a certificate) is answered here, the
//! rest by the web console (`console.rs`).
//!
//! Everything exported is read from the replica when scraped: whether this replica
//! leads, the counters of jobs that ended while it led (registered by `lib.rs` and
//! shared with every leader term, see `leader/job_metrics.rs`) and, on the leader
//! only, the summary of its cache (`leader/summary.rs`: jobs by state, workers, each
//! VM's last success, last attempt and RPO age, each policy's RPO, replication lag
//! per VM and site, the catalog per repository). Every replica exports its metadata
//! store's request and error counters: a follower's campaign sees a failing store
//! too, and there is no leader while it is down. A follower exports only what it
//! knows (whether it leads, its own counters, its store, its process), so a
//! dashboard summing jobs over the replicas counts them once.

use std::sync::{Arc, Mutex, PoisonError};

use haven_metrics::{
    Exporter, NO_LABELS, Registry, RouteRequest, RouteResponse, SampleWriter, ScrapeTimeMetrics,
};
use haven_tls::listener::PeerInfo;

use crate::console::Console;

use crate::leader::MetricsSummary;
use crate::model::now_ms;
use crate::replica::{Replica, Role};
use crate::store::StoreStats;

/// Label values of [`MetricsSummary::jobs_by_state`], in its order.
const JOB_STATES: [&str; 5] = ["pending", "assigned", "committing", "succeeded", "failed"];

/// What one scrape read from the replica.
#[derive(Debug, Default)]
struct ReplicaReading {
    is_leader: bool,
    /// The replica's metadata store requests.
    store: StoreStats,
    /// `None` on a follower.
    leader: Option<LeaderReading>,
}

/// What one scrape read from the leader.
#[derive(Debug)]
struct LeaderReading {
    summary: MetricsSummary,
    /// Records the leader could not decode when it loaded the store.
    unreadable_records: u64,
}

impl ReplicaReading {
    async fn read(replica: &Replica) -> Self {
        let store = replica.store_stats();
        let Role::Leader(leader) = replica.role().await else {
            return Self {
                store,
                ..Self::default()
            };
        };
        Self {
            is_leader: true,
            store,
            leader: Some(LeaderReading {
                summary: leader.metrics_summary(now_ms()),
                unreadable_records: leader.unreadable_records(),
            }),
        }
    }
}

/// The replica's HTTP endpoints: its metrics registry, its health and its console.
pub struct ReplicaEndpoints {
    replica: Arc<Replica>,
    registry: Registry,
    latest: Arc<Mutex<ReplicaReading>>,
    console: Console,
}

impl ReplicaEndpoints {
    /// Endpoints reading `replica` at every scrape, serving `registry` (which holds
    /// the replica's job counters) with the process metrics and the replica's own,
    /// and `console` on every other path.
    pub fn new(replica: Arc<Replica>, mut registry: Registry, console: Console) -> Self {
        let latest = Arc::new(Mutex::new(ReplicaReading::default()));
        registry.register_process_metrics("coordinator");
        registry.register_scrape_time(ReplicaMetrics(Arc::clone(&latest)));
        Self {
            replica,
            registry,
            latest,
            console,
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

    async fn route(&self, request: RouteRequest, peer: &PeerInfo) -> RouteResponse {
        if request.uri().path() == READY_PATH {
            let store = self.replica.store_reachable().await;
            let leader = match self.replica.role().await {
                Role::Leader(_) => Some("this replica".to_string()),
                Role::Follower(leader) => leader,
            };
            return readiness(store, leader);
        }
        self.console.handle(request, peer).await
    }
}

/// The readiness probe's path.
const READY_PATH: &str = "/readyz";

/// `/readyz`: 200 once the replica's metadata store answers and a leader is known
/// (this replica or another), 503 saying what is missing otherwise. Unlike
/// `/healthz` (alive, whatever the cluster's state), it is what a rolling update and a
/// PodDisruptionBudget wait for: a replica that cannot reach the store or has seen no
/// election could neither take over nor name the leader to clients.
fn readiness(store: Result<(), String>, leader: Option<String>) -> RouteResponse {
    let (status, text) = match (store, leader) {
        (Ok(()), Some(leader)) => (http::StatusCode::OK, format!("ready: leader is {leader}\n")),
        (Ok(()), None) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader elected yet\n".to_string(),
        ),
        (Err(error), _) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: store unreachable: {error}\n"),
        ),
    };
    let mut response = RouteResponse::new(bytes::Bytes::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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
        out.counter(
            "haven_store_requests",
            "Metadata store requests of this replica",
            [
                ([("kind", "read")], reading.store.reads),
                ([("kind", "write")], reading.store.writes),
                ([("kind", "lease")], reading.store.lease_calls),
            ],
        )?;
        out.counter(
            "haven_store_errors",
            "Metadata store requests of this replica that failed",
            [(NO_LABELS, reading.store.errors)],
        )?;
        let Some(leader) = &reading.leader else {
            return Ok(());
        };
        write_summary(out, &leader.summary)?;
        out.gauge(
            "haven_store_unreadable_records",
            "Records the leader skipped at load because it could not decode them",
            [(NO_LABELS, leader.unreadable_records)],
        )
    }
}

/// Writes the leader's [`MetricsSummary`].
fn write_summary(out: &mut SampleWriter<'_>, summary: &MetricsSummary) -> std::fmt::Result {
    out.gauge(
        "haven_jobs",
        "Jobs in the history by state (finished jobs stay until they expire)",
        JOB_STATES
            .iter()
            .zip(summary.jobs_by_state)
            .map(|(name, count)| ([("state", *name)], count)),
    )?;
    out.gauge(
        "haven_workers",
        "Live workers",
        [(NO_LABELS, summary.workers)],
    )?;
    let vm_labels =
        |vm: &crate::leader::VmSummary| [("vm", vm.vm.clone()), ("policy", vm.policy.clone())];
    out.gauge(
        "haven_vm_last_success_timestamp_seconds",
        "Unix time of the VM's newest snapshot in the catalog",
        summary
            .vms
            .iter()
            .filter_map(|vm| Some((vm_labels(vm), vm.last_success_seconds?))),
    )?;
    out.gauge(
        "haven_vm_last_attempt_success",
        "1 if the VM's most recently ended backup job succeeded, 0 if it failed",
        summary
            .vms
            .iter()
            .filter_map(|vm| Some((vm_labels(vm), u64::from(vm.last_attempt_succeeded?)))),
    )?;
    out.gauge(
        "haven_vm_rpo_age_seconds",
        "Seconds since the VM's newest snapshot (without one: since its oldest backup job)",
        summary
            .vms
            .iter()
            .filter_map(|vm| Some((vm_labels(vm), vm.rpo_age_seconds?))),
    )?;
    out.gauge(
        "haven_vm_last_boot_verified_timestamp_seconds",
        "Unix time of the VM's newest snapshot that passed a boot test",
        summary
            .vms
            .iter()
            .filter_map(|vm| Some((vm_labels(vm), vm.last_boot_verified_seconds?))),
    )?;
    out.gauge(
        "haven_vm_last_boot_test_passed",
        "1 if the VM's most recently ended boot test passed, 0 if its snapshot did not boot",
        summary
            .vms
            .iter()
            .filter_map(|vm| Some((vm_labels(vm), u64::from(vm.last_boot_test_passed?)))),
    )?;
    out.gauge(
        "haven_policy_rpo_seconds",
        "The policy's recovery point objective: the longest a VM may go without a successful backup",
        summary
            .policy_rpo_seconds
            .iter()
            .filter(|(_, rpo)| *rpo > 0)
            .map(|(policy, rpo)| ([("policy", policy.as_str())], *rpo)),
    )?;
    out.gauge(
        "haven_vm_replication_lag_seconds",
        "Seconds since the VM's newest snapshot already at the secondary site (replicate_to)",
        summary.replication.iter().map(|lag| {
            (
                [("vm", lag.vm.as_str()), ("site", lag.site.as_str())],
                lag.lag_seconds,
            )
        }),
    )?;
    let repository = |r: &crate::leader::RepositorySummary| [("repository", r.repository.clone())];
    out.gauge(
        "haven_repository_snapshots",
        "Snapshots in the catalog per repository",
        summary
            .repositories
            .iter()
            .map(|r| (repository(r), r.snapshots)),
    )?;
    out.gauge(
        "haven_repository_logical_bytes",
        "Sum of the disk sizes of the catalog's snapshots per repository",
        summary
            .repositories
            .iter()
            .map(|r| (repository(r), r.logical_bytes)),
    )?;
    out.gauge(
        "haven_repository_uploaded_bytes",
        "Bytes the backups of the catalog's snapshots uploaded, per repository",
        summary
            .repositories
            .iter()
            .map(|r| (repository(r), r.uploaded_bytes)),
    )?;
    out.gauge(
        "haven_repository_dedup_ratio",
        "Bytes the catalog's backups read over the plaintext bytes they added, per repository",
        summary
            .repositories
            .iter()
            .filter_map(|r| Some((repository(r), r.dedup_ratio?))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_a_reachable_store_and_a_known_leader() {
        let cases = [
            (
                Ok(()),
                Some("this replica"),
                200,
                "ready: leader is this replica\n",
            ),
            (
                Ok(()),
                Some("https://c-1:7700"),
                200,
                "ready: leader is https://c-1:7700\n",
            ),
            (Ok(()), None, 503, "not ready: no leader elected yet\n"),
            (
                Err("no answer within 2 s".to_string()),
                Some("https://c-1:7700"),
                503,
                "not ready: store unreachable: no answer within 2 s\n",
            ),
        ];
        for (store, leader, status, text) in cases {
            let response = readiness(store, leader.map(str::to_string));
            assert_eq!(response.status().as_u16(), status, "{text}");
            assert_eq!(response.body().as_ref(), text.as_bytes());
        }
    }

    fn render(reading: ReplicaReading) -> String {
        let mut registry = Registry::new();
        registry.register_scrape_time(ReplicaMetrics(Arc::new(Mutex::new(reading))));
        registry.encode().unwrap()
    }

    #[test]
    fn a_follower_exports_whether_it_leads_and_its_store_requests_only() {
        let text = render(ReplicaReading {
            is_leader: false,
            store: StoreStats {
                reads: 3,
                writes: 0,
                lease_calls: 9,
                errors: 4,
            },
            leader: None,
        });
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "haven_coordinator_is_leader 0",
                "haven_store_requests_total{kind=\"read\"} 3",
                "haven_store_requests_total{kind=\"write\"} 0",
                "haven_store_requests_total{kind=\"lease\"} 9",
                "haven_store_errors_total 4",
            ],
            "{text}"
        );
    }

    #[test]
    fn the_leader_exports_its_summary_and_store_requests() {
        use crate::leader::{RepositorySummary, VmReplication, VmSummary};
        let text = render(ReplicaReading {
            is_leader: true,
            leader: Some(LeaderReading {
                summary: MetricsSummary {
                    jobs_by_state: [1, 2, 0, 4, 5],
                    workers: 3,
                    vms: vec![
                        VmSummary {
                            vm: "web-1".into(),
                            policy: "gold".into(),
                            last_success_seconds: Some(1_700_000_000),
                            last_attempt_succeeded: Some(false),
                            rpo_age_seconds: Some(600),
                            ..VmSummary::default()
                        },
                        VmSummary {
                            vm: "new".into(),
                            ..VmSummary::default()
                        },
                    ],
                    policy_rpo_seconds: vec![("gold".into(), 7200), ("old".into(), 0)],
                    replication: vec![VmReplication {
                        vm: "web-1".into(),
                        site: "s3://dr/gold".into(),
                        lag_seconds: 900,
                    }],
                    repositories: vec![RepositorySummary {
                        repository: "s3://haven/gold".into(),
                        snapshots: 2,
                        logical_bytes: 2000,
                        uploaded_bytes: 100,
                        dedup_ratio: Some(2.5),
                    }],
                },
                unreadable_records: 2,
            }),
            store: StoreStats {
                reads: 10,
                writes: 11,
                lease_calls: 12,
                errors: 1,
            },
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
            "haven_vm_last_success_timestamp_seconds{vm=\"web-1\",policy=\"gold\"} 1700000000\n",
            "haven_vm_last_attempt_success{vm=\"web-1\",policy=\"gold\"} 0\n",
            "haven_vm_rpo_age_seconds{vm=\"web-1\",policy=\"gold\"} 600\n",
            "haven_policy_rpo_seconds{policy=\"gold\"} 7200\n",
            "haven_vm_replication_lag_seconds{vm=\"web-1\",site=\"s3://dr/gold\"} 900\n",
            "haven_repository_snapshots{repository=\"s3://haven/gold\"} 2\n",
            "haven_repository_logical_bytes{repository=\"s3://haven/gold\"} 2000\n",
            "haven_repository_uploaded_bytes{repository=\"s3://haven/gold\"} 100\n",
            "haven_repository_dedup_ratio{repository=\"s3://haven/gold\"} 2.5\n",
            "haven_store_unreadable_records 2\n",
            "# TYPE haven_store_requests_total counter\n",
            "haven_store_requests_total{kind=\"read\"} 10\n",
            "haven_store_requests_total{kind=\"write\"} 11\n",
            "haven_store_requests_total{kind=\"lease\"} 12\n",
            "haven_store_errors_total 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        // Nothing is invented for a VM without data, nor an RPO for a policy without.
        assert!(!text.contains("vm=\"new\""), "{text}");
        assert!(!text.contains("policy=\"old\""), "{text}");
    }
}
