//! Where pending jobs go: a pure function, so its rules are tested without a cluster.
//!
//! Rules, in order: a job goes only to a live worker that reaches the VM's host; the
//! host may not run more than the policy's `max_per_host` jobs at once, the worker not
//! more than its own `max_jobs` nor the policy's `max_per_worker`, and a boot test goes
//! only to a worker running fewer than its `max_boot_tests` (a boot test waiting on
//! the worker for its slot would hold one of the worker's jobs); among the workers
//! left, the least loaded wins (ties: the id that sorts first, so decisions are
//! reproducible). Jobs are considered oldest first, so none starves.

use std::collections::{BTreeMap, HashMap};

/// A job waiting for a worker.
#[derive(Debug, Clone)]
pub struct PendingJob {
    /// Job id.
    pub id: String,
    /// The VM's host.
    pub host: String,
    /// Limit of running jobs on the host.
    pub max_per_host: u32,
    /// Limit of running jobs of this policy on one worker.
    pub max_per_worker: u32,
    /// Policy name ("" for manual jobs).
    pub policy: String,
    /// A boot test (limited by the workers' `max_boot_tests` too).
    pub boot_test: bool,
}

/// A live worker and its load.
#[derive(Debug, Clone)]
pub struct WorkerLoad {
    /// Worker id.
    pub id: String,
    /// Hosts it reaches.
    pub hosts: Vec<String>,
    /// Its own limit.
    pub max_jobs: u32,
    /// Jobs it runs now.
    pub running: u32,
    /// Jobs it runs now, per policy.
    pub running_by_policy: HashMap<String, u32>,
    /// Its own limit of boot tests at once; 0: none said.
    pub max_boot_tests: u32,
    /// Boot tests it runs now.
    pub running_boot_tests: u32,
}

/// Decides placements for `pending` (oldest first); `host_running` counts the active
/// jobs per host. Returns `(job id, worker id)` pairs.
pub fn place(
    pending: &[PendingJob],
    workers: &[WorkerLoad],
    host_running: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut host_running = host_running.clone();
    let mut load: BTreeMap<&str, (u32, HashMap<String, u32>, u32)> = workers
        .iter()
        .map(|w| {
            let load = (w.running, w.running_by_policy.clone(), w.running_boot_tests);
            (w.id.as_str(), load)
        })
        .collect();
    let mut placed = Vec::new();
    for job in pending {
        // Jobs without a host (prune, GC, replication) need only the repository.
        let any_host = job.host.is_empty();
        let on_host = host_running.get(&job.host).copied().unwrap_or(0);
        if !any_host && on_host >= job.max_per_host {
            continue;
        }
        let best = workers
            .iter()
            .filter(|w| any_host || w.hosts.iter().any(|h| h == &job.host))
            .filter_map(|w| {
                let (running, by_policy, boot_tests) = load.get(w.id.as_str())?;
                let of_policy = by_policy.get(&job.policy).copied().unwrap_or(0);
                let boot_slot =
                    !job.boot_test || w.max_boot_tests == 0 || *boot_tests < w.max_boot_tests;
                (*running < w.max_jobs && of_policy < job.max_per_worker && boot_slot)
                    .then_some((*running, w.id.as_str()))
            })
            .min();
        let Some((_, worker)) = best else { continue };
        if let Some((running, by_policy, boot_tests)) = load.get_mut(worker) {
            *running += 1;
            *by_policy.entry(job.policy.clone()).or_default() += 1;
            *boot_tests += u32::from(job.boot_test);
        }
        if !any_host {
            *host_running.entry(job.host.clone()).or_default() += 1;
        }
        placed.push((job.id.clone(), worker.to_string()));
    }
    placed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, host: &str, per_host: u32) -> PendingJob {
        PendingJob {
            id: id.into(),
            host: host.into(),
            max_per_host: per_host,
            max_per_worker: 10,
            policy: "p".into(),
            boot_test: false,
        }
    }

    fn worker(id: &str, hosts: &[&str], max: u32) -> WorkerLoad {
        WorkerLoad {
            id: id.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_jobs: max,
            running: 0,
            running_by_policy: HashMap::new(),
            max_boot_tests: 0,
            running_boot_tests: 0,
        }
    }

    #[test]
    fn a_boot_test_waits_for_a_worker_with_a_free_boot_slot() {
        let mut boots: Vec<_> = (0..3).map(|i| job(&format!("b{i}"), "", 10)).collect();
        for boot in &mut boots {
            boot.boot_test = true;
        }
        let backup = job("j0", "h1", 10);
        let mut pending = boots.clone();
        pending.push(backup);
        let mut a = worker("a", &["h1"], 3);
        a.max_boot_tests = 1;
        // One boot test at a time: the others stay pending and the worker's other
        // slots go to the backup.
        assert_eq!(
            place(&pending, std::slice::from_ref(&a), &HashMap::new()),
            vec![("b0".into(), "a".into()), ("j0".into(), "a".into())]
        );
        a.running = 1;
        a.running_boot_tests = 1;
        assert_eq!(
            place(&pending, std::slice::from_ref(&a), &HashMap::new()),
            vec![("j0".into(), "a".into())],
            "its one boot slot is taken"
        );
        // A worker that says no limit takes boot tests up to its max_jobs.
        a.max_boot_tests = 0;
        assert_eq!(place(&boots, &[a], &HashMap::new()).len(), 2);
    }

    #[test]
    fn respects_reach_and_host_limit_and_balances() {
        let pending: Vec<_> = (0..6).map(|i| job(&format!("j{i}"), "h1", 2)).collect();
        let workers = [
            worker("a", &["h1"], 4),
            worker("b", &["h1"], 4),
            worker("c", &["h2"], 4),
        ];
        let placed = place(&pending, &workers, &HashMap::new());
        assert_eq!(
            placed,
            vec![("j0".into(), "a".into()), ("j1".into(), "b".into())],
            "two per host, spread, never to a worker that cannot reach h1"
        );
        let busy: HashMap<String, u32> = [("h1".to_string(), 2)].into();
        assert!(place(&pending, &workers, &busy).is_empty());
    }

    #[test]
    fn respects_worker_limits() {
        let pending: Vec<_> = (0..5).map(|i| job(&format!("j{i}"), "h1", 10)).collect();
        let mut w = worker("a", &["h1"], 3);
        w.running = 1;
        assert_eq!(place(&pending, &[w.clone()], &HashMap::new()).len(), 2);
        let mut strict = pending.clone();
        for j in &mut strict {
            j.max_per_worker = 1;
        }
        w.running = 0;
        assert_eq!(place(&strict, &[w], &HashMap::new()).len(), 1);
    }

    #[test]
    fn jobs_without_host_go_to_any_worker() {
        let mut gc = job("gc", "", 1);
        gc.policy = "p".into();
        let placed = place(&[gc], &[worker("a", &["h1"], 1)], &HashMap::new());
        assert_eq!(placed, vec![("gc".into(), "a".into())]);
    }

    #[test]
    fn no_worker_no_placement() {
        assert!(
            place(
                &[job("j", "h9", 1)],
                &[worker("a", &["h1"], 1)],
                &HashMap::new()
            )
            .is_empty()
        );
    }
}

#[cfg(test)]
mod properties {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn jobs() -> impl Strategy<Value = Vec<PendingJob>> {
        proptest::collection::vec((0usize..4, 1u32..3, 1u32..3, 0usize..2), 0..20).prop_map(
            |rows| {
                rows.into_iter()
                    .enumerate()
                    .map(|(n, (host, per_host, per_worker, policy))| PendingJob {
                        id: format!("j{n}"),
                        // Host 3 stands for jobs without a host (prune, GC).
                        host: if host == 3 {
                            String::new()
                        } else {
                            format!("h{host}")
                        },
                        max_per_host: per_host,
                        max_per_worker: per_worker,
                        policy: format!("p{policy}"),
                        boot_test: false,
                    })
                    .collect()
            },
        )
    }

    fn workers() -> impl Strategy<Value = Vec<WorkerLoad>> {
        proptest::collection::vec(
            (
                proptest::collection::btree_set(0usize..3, 0..3),
                0u32..4,
                0u32..3,
            ),
            0..5,
        )
        .prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(|(n, (hosts, max_jobs, running))| WorkerLoad {
                    id: format!("w{n}"),
                    hosts: hosts.into_iter().map(|h| format!("h{h}")).collect(),
                    max_jobs,
                    running,
                    running_by_policy: HashMap::new(),
                    max_boot_tests: 0,
                    running_boot_tests: 0,
                })
                .collect()
        })
    }

    proptest! {
        /// Each job placed at most once, on a worker that reaches its host, with no
        /// worker past its own limit, no host past its limit, no worker past a
        /// policy's per-worker limit; and a job is left pending only if no worker
        /// could take it once the others were placed.
        #[test]
        fn placements_respect_every_limit(
            pending in jobs(),
            workers in workers(),
            host_load in proptest::array::uniform3(0u32..3),
        ) {
            let host_running: HashMap<String, u32> =
                (0..3).map(|h| (format!("h{h}"), host_load[h])).collect();
            let placed = place(&pending, &workers, &host_running);
            let ids: BTreeSet<&String> = placed.iter().map(|(job, _)| job).collect();
            prop_assert_eq!(ids.len(), placed.len());
            let mut per_worker: HashMap<&str, u32> = HashMap::new();
            let mut per_host = host_running.clone();
            let mut per_policy: HashMap<(&str, &str), u32> = HashMap::new();
            for (job_id, worker_id) in &placed {
                let job = pending.iter().find(|j| &j.id == job_id).unwrap();
                let worker = workers.iter().find(|w| &w.id == worker_id).unwrap();
                prop_assert!(job.host.is_empty() || worker.hosts.contains(&job.host));
                let load = per_worker.entry(worker_id).or_insert(worker.running);
                *load += 1;
                prop_assert!(*load <= worker.max_jobs, "{} over its limit", worker_id);
                let of_policy = per_policy.entry((worker_id, &job.policy)).or_default();
                *of_policy += 1;
                prop_assert!(*of_policy <= job.max_per_worker);
                if !job.host.is_empty() {
                    let on_host = per_host.entry(job.host.clone()).or_default();
                    *on_host += 1;
                    prop_assert!(*on_host <= job.max_per_host, "{} over the host limit", job.host);
                }
            }
            // Nothing left that fits: every unplaced job is blocked by a limit or reach.
            for job in pending.iter().filter(|j| !ids.contains(&j.id)) {
                let host_full = !job.host.is_empty()
                    && per_host.get(&job.host).copied().unwrap_or(0) >= job.max_per_host;
                let some_worker_fits = workers.iter().any(|w| {
                    (job.host.is_empty() || w.hosts.contains(&job.host))
                        && per_worker.get(w.id.as_str()).copied().unwrap_or(w.running) < w.max_jobs
                        && per_policy.get(&(w.id.as_str(), job.policy.as_str())).copied().unwrap_or(0)
                            < job.max_per_worker
                });
                prop_assert!(host_full || !some_worker_fits, "{} left pending", job.id);
            }
        }
    }
}
