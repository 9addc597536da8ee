//! Where pending jobs go: a pure function, so its rules are tested without a cluster.
//!
//! Rules, in order: a job goes only to a live worker that reaches the VM's host; the
//! host may not run more than the policy's `max_per_host` jobs at once, the worker not
//! more than its own `max_jobs` nor the policy's `max_per_worker`; among the workers
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
}

/// Decides placements for `pending` (oldest first); `host_running` counts the active
/// jobs per host. Returns `(job id, worker id)` pairs.
pub fn place(
    pending: &[PendingJob],
    workers: &[WorkerLoad],
    host_running: &HashMap<String, u32>,
) -> Vec<(String, String)> {
    let mut host_running = host_running.clone();
    let mut load: BTreeMap<&str, (u32, HashMap<String, u32>)> = workers
        .iter()
        .map(|w| (w.id.as_str(), (w.running, w.running_by_policy.clone())))
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
                let (running, by_policy) = load.get(w.id.as_str())?;
                let of_policy = by_policy.get(&job.policy).copied().unwrap_or(0);
                (*running < w.max_jobs && of_policy < job.max_per_worker)
                    .then_some((*running, w.id.as_str()))
            })
            .min();
        let Some((_, worker)) = best else { continue };
        if let Some((running, by_policy)) = load.get_mut(worker) {
            *running += 1;
            *by_policy.entry(job.policy.clone()).or_default() += 1;
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
        }
    }

    fn worker(id: &str, hosts: &[&str], max: u32) -> WorkerLoad {
        WorkerLoad {
            id: id.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            max_jobs: max,
            running: 0,
            running_by_policy: HashMap::new(),
        }
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
