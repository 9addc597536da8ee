//! Assignment: which pending job goes to which worker (a plan over the state, decided
//! by [`crate::placement`]), the two writes that give it, and workers' polls.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::state::State;
use super::tick::TickReport;
use super::workers::check_worker;
use super::writes::{OPS_PER_TXN, job_puts};
use super::{Leader, Mutating, Result};
use crate::model::{self, Attempt, JobKind, JobRecord, JobState};
use crate::placement::{self, PendingJob, WorkerLoad};
use crate::store::{Compare, LeaseId, Op};

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The job.
    pub job: JobRecord,
    /// Its fencing token, which the worker's reports and commit must carry.
    pub token: i64,
}

/// Where pending jobs go at `now`: job ids per worker id, oldest job first, skipping
/// jobs still in their retry backoff. Manual jobs take the default limits; policy jobs
/// their policy's.
pub(super) fn plan_assignment(
    state: &State,
    now: u64,
    default_max_per_host: u32,
    default_max_per_worker: u32,
) -> BTreeMap<String, Vec<String>> {
    let mut plan: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let running = running_replications(state);
    let mut pending: Vec<&JobRecord> = state
        .jobs
        .values()
        .filter(|j| j.state == JobState::Pending && j.not_before_unix_ms <= now)
        .filter(|j| !waits_for_running_replication(&running, j))
        .collect();
    if pending.is_empty() || state.workers.is_empty() {
        return plan;
    }
    pending.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
    let pending_jobs: Vec<PendingJob> = pending
        .iter()
        .map(|job| {
            let (max_per_host, max_per_worker) = job
                .policy
                .as_ref()
                .and_then(|p| state.policies.get(p))
                .map(|p| (p.max_per_host, p.max_per_worker))
                .unwrap_or((default_max_per_host, default_max_per_worker));
            PendingJob {
                id: job.id.clone(),
                host: job.host.clone(),
                max_per_host,
                max_per_worker,
                policy: job.policy.clone().unwrap_or_default(),
                boot_test: job.kind == JobKind::BootTest,
            }
        })
        .collect();
    let mut host_running: HashMap<String, u32> = HashMap::new();
    let mut worker_running: HashMap<String, (u32, HashMap<String, u32>, u32)> = HashMap::new();
    for job in state
        .jobs
        .values()
        .filter(|j| matches!(j.state, JobState::Assigned | JobState::Committing))
    {
        *host_running.entry(job.host.clone()).or_default() += 1;
        if let Some(attempt) = job.current() {
            let entry = worker_running.entry(attempt.worker.clone()).or_default();
            entry.0 += 1;
            *entry
                .1
                .entry(job.policy.clone().unwrap_or_default())
                .or_default() += 1;
            entry.2 += u32::from(job.kind == JobKind::BootTest);
        }
    }
    let workers: Vec<WorkerLoad> = state
        .workers
        .values()
        .map(|w| {
            let (running, by_policy, boot_tests) = worker_running.remove(&w.id).unwrap_or_default();
            WorkerLoad {
                id: w.id.clone(),
                hosts: w.hosts.clone(),
                max_jobs: w.max_jobs,
                running,
                running_by_policy: by_policy,
                max_boot_tests: w.max_boot_tests,
                running_boot_tests: boot_tests,
            }
        })
        .collect();
    for (job, worker) in placement::place(&pending_jobs, &workers, &host_running) {
        plan.entry(worker).or_default().push(job);
    }
    plan
}

/// The (repository, secondary) pairs a replication is running for, found once per
/// plan rather than once per pending job.
fn running_replications(state: &State) -> HashSet<(&str, &str)> {
    state
        .jobs
        .values()
        .filter(|job| {
            job.kind == JobKind::Replicate
                && matches!(job.state, JobState::Assigned | JobState::Committing)
        })
        .filter_map(|job| Some((job.repository.as_str(), job.params.replicate_to.as_deref()?)))
        .collect()
}

/// Whether `job` is a replication queued behind one of the same repository to the same
/// secondary that is still running (`running`, from [`running_replications`]): two at
/// once would copy the same objects twice, and the queued one exists to copy what the
/// running one's listing missed.
fn waits_for_running_replication(running: &HashSet<(&str, &str)>, job: &JobRecord) -> bool {
    job.kind == JobKind::Replicate
        && job
            .params
            .replicate_to
            .as_deref()
            .is_some_and(|to| running.contains(&(job.repository.as_str(), to)))
}

/// The span of one job's assignment: the root of the job's trace (whatever span the
/// leader's tick runs in), which the worker's job span continues. Its `traceparent`
/// goes into the attempt.
fn assignment_span(job: &JobRecord, worker: &str) -> tracing::Span {
    tracing::info_span!(
        parent: None,
        "assign",
        job = job.id,
        vm = job.vm,
        kind = ?job.kind,
        worker,
        attempt = job.attempts.len() + 1,
    )
}

/// `job` as assigned to `worker` under `lease`, with fencing token `token`, at `now`,
/// by the span whose context is `traceparent`.
fn assigned(
    job: &JobRecord,
    worker: &str,
    lease: LeaseId,
    token: i64,
    now: u64,
    traceparent: String,
) -> JobRecord {
    let mut job = job.clone();
    job.state = JobState::Assigned;
    job.attempts.push(Attempt {
        number: job.attempts.len() as u32 + 1,
        worker: worker.to_string(),
        lease,
        token,
        assigned_unix_ms: now,
        ended_unix_ms: 0,
        outcome: String::new(),
        traceparent,
    });
    job
}

impl Leader {
    /// Gives pending jobs to workers: one transaction per batch of a worker's jobs
    /// writes the ownership keys under the worker's lease, each guarded by being
    /// absent; its revision is the fencing token, which a second write puts in the job
    /// records.
    pub(super) async fn assign(&self, report: &mut TickReport) -> Result<()> {
        let mutating = self.mutating().await;
        let now = model::now_ms();
        let plan = plan_assignment(
            &self.state(),
            now,
            self.settings.default_max_per_host,
            self.settings.default_max_per_worker,
        );
        for (worker, jobs) in plan {
            let Some(lease) = self.state().workers.get(&worker).map(|w| w.lease) else {
                continue;
            };
            for chunk in jobs.chunks(OPS_PER_TXN / 2) {
                // One span per job, open over the two writes that assign it.
                let spans: HashMap<&str, tracing::Span> = {
                    let state = self.state();
                    chunk
                        .iter()
                        .filter_map(|id| Some((id.as_str(), state.jobs.get(id)?)))
                        .map(|(id, job)| (id, assignment_span(job, &worker)))
                        .collect()
                };
                let compares = chunk
                    .iter()
                    .map(|id| Compare::Absent(model::owner_key(id)))
                    .collect();
                let ops = chunk
                    .iter()
                    .map(|id| Op::put_leased(model::owner_key(id), worker.clone(), lease))
                    .collect();
                // The token is the transaction's revision, known only afterwards: write
                // the ownership first, then the job records that name it.
                let Some(token) = self.write_at(compares, ops).await? else {
                    let cleared = self.clear_stale_owners(&mutating, chunk).await?;
                    tracing::warn!(
                        worker,
                        cleared,
                        "ownership keys of pending jobs existed; cleared, retrying next tick"
                    );
                    continue;
                };
                let records: Vec<JobRecord> = {
                    let state = self.state();
                    chunk
                        .iter()
                        .filter_map(|id| state.jobs.get(id))
                        .map(|job| {
                            let traceparent = spans
                                .get(job.id.as_str())
                                .and_then(haven_telemetry::traceparent_of)
                                .unwrap_or_default();
                            assigned(job, &worker, lease, token, now, traceparent)
                        })
                        .collect()
                };
                self.write_batched(job_puts(&records)?).await?;
                report.assigned += records.len();
                self.state().insert_jobs(records);
            }
        }
        Ok(())
    }

    /// Deletes the ownership keys of jobs that are still pending.
    ///
    /// Assignment takes two writes (the ownership keys, then the job records that name
    /// the token), and the store can fail between them, or fail to answer a write it
    /// applied. A pending job's ownership key then lives on under the worker's live
    /// lease and would block every later assignment of the job. No worker was ever
    /// given that token (polls serve only assigned jobs), so deleting the key, guarded
    /// by its revision, loses nothing.
    async fn clear_stale_owners(&self, _mutating: &Mutating<'_>, ids: &[String]) -> Result<usize> {
        let mut cleared = 0;
        for id in ids {
            let pending = self.state().jobs.get(id).map(|job| job.state) == Some(JobState::Pending);
            if !pending {
                continue;
            }
            let key = model::owner_key(id);
            let Some(owner) = self.store.get(&key).await? else {
                continue;
            };
            if self
                .write(
                    vec![Compare::ModRevision(key.clone(), owner.mod_revision)],
                    vec![Op::Delete(key)],
                )
                .await?
            {
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    /// Jobs assigned to a worker's current lease, except those it says it runs.
    pub async fn poll(
        &self,
        id: &str,
        instance: &str,
        lease: LeaseId,
        running: &HashSet<String>,
    ) -> Result<Vec<Assignment>> {
        let state = self.state();
        check_worker(&state, id, instance, lease)?;
        Ok(state
            .jobs
            .values()
            .filter(|job| job.state == JobState::Assigned && !running.contains(&job.id))
            .filter_map(|job| {
                let attempt = job.current()?;
                (attempt.worker == id && attempt.lease == lease).then(|| Assignment {
                    job: job.clone(),
                    token: attempt.token,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{assigned_job, pending_job, policy, state_with, vm, worker};

    /// A plan as `(worker, [jobs])` pairs.
    type Plan = Vec<(String, Vec<String>)>;

    /// When the plans are made.
    const NOW: u64 = 1_000;

    /// The plan at [`NOW`] for `jobs` (created in this order) and `workers`, with
    /// default limits of 2 per host and 2 per worker, as `(worker, [jobs])`.
    fn plan(jobs: Vec<JobRecord>, workers: &[WorkerRecord]) -> Plan {
        let mut state = state_with(&[vm("vm1", "h1")], &[policy("p")], &jobs);
        state.workers = workers.iter().map(|w| (w.id.clone(), w.clone())).collect();
        plan_assignment(&state, NOW, 2, 2).into_iter().collect()
    }

    /// A pending job on `h1` whose retry backoff ends at `not_before`.
    fn backing_off(id: &str, created: u64, not_before: u64) -> JobRecord {
        let mut job = pending_job(id, JobKind::Backup, "h1", created);
        job.not_before_unix_ms = not_before;
        job
    }

    fn ids(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    use crate::model::{JobKind, WorkerRecord};

    #[test]
    fn a_replication_waits_for_the_running_one_of_the_same_pair() {
        let replication = |id: &str, to: &str| {
            let mut job = pending_job(id, JobKind::Replicate, "", 1);
            job.params.replicate_to = Some(to.into());
            job
        };
        let running = |to: &str, state: JobState| {
            let mut job = replication("running", to);
            job.state = state;
            job
        };
        let w1 = worker("w1", &["h1"], 4);
        // (case, jobs, expected plan)
        let cases: Vec<(&str, Vec<JobRecord>, Plan)> = vec![
            (
                "alone",
                vec![replication("q", "s3://b")],
                vec![("w1".into(), ids(&["q"]))],
            ),
            (
                "behind a running one to the same secondary",
                vec![
                    running("s3://b", JobState::Assigned),
                    replication("q", "s3://b"),
                ],
                vec![],
            ),
            (
                "behind one being committed",
                vec![
                    running("s3://b", JobState::Committing),
                    replication("q", "s3://b"),
                ],
                vec![],
            ),
            (
                "after the running one ended",
                vec![
                    running("s3://b", JobState::Succeeded),
                    replication("q", "s3://b"),
                ],
                vec![("w1".into(), ids(&["q"]))],
            ),
            (
                "another secondary runs",
                vec![
                    running("s3://c", JobState::Assigned),
                    replication("q", "s3://b"),
                ],
                vec![("w1".into(), ids(&["q"]))],
            ),
        ];
        for (case, jobs, expected) in cases {
            assert_eq!(plan(jobs, std::slice::from_ref(&w1)), expected, "{case}");
        }
    }

    #[test]
    fn plans_follow_age_reach_and_limits() {
        let on =
            |id: &str, host: &str, created: u64| pending_job(id, JobKind::Backup, host, created);
        let w1 = worker("w1", &["h1"], 4);
        let w2 = worker("w2", &["h1", "h2"], 4);
        // (case, jobs, workers, expected plan)
        let cases: Vec<(&str, Vec<JobRecord>, Vec<WorkerRecord>, Plan)> = vec![
            ("no workers", vec![on("a", "h1", 1)], vec![], vec![]),
            (
                "no pending jobs",
                vec![assigned_job("r", JobKind::Backup, "vm1", "w1")],
                vec![w1.clone()],
                vec![],
            ),
            (
                "oldest first, two per host, spread",
                vec![on("c", "h1", 3), on("a", "h1", 1), on("b", "h1", 2)],
                vec![w1.clone(), w2.clone()],
                vec![("w1".into(), ids(&["a"])), ("w2".into(), ids(&["b"]))],
            ),
            (
                "only workers that reach the host",
                vec![on("x", "h2", 1)],
                vec![w1.clone(), w2.clone()],
                vec![("w2".into(), ids(&["x"]))],
            ),
            (
                "running jobs count against the host limit",
                vec![
                    assigned_job("r1", JobKind::Backup, "vm1", "w1"),
                    assigned_job("r2", JobKind::Backup, "vm1", "w1"),
                    on("a", "h1", 1),
                ],
                vec![w1.clone()],
                vec![],
            ),
            (
                "a job in its retry backoff waits; its backoff over, it goes",
                vec![
                    backing_off("early", 1, NOW + 1),
                    backing_off("due", 2, NOW),
                    on("new", "h1", 3),
                ],
                vec![w1.clone()],
                vec![("w1".into(), ids(&["due", "new"]))],
            ),
            (
                "repository jobs go to any worker",
                vec![pending_job("g", JobKind::Gc, "", 1)],
                vec![w1.clone()],
                vec![("w1".into(), ids(&["g"]))],
            ),
        ];
        for (case, jobs, workers, expected) in cases {
            assert_eq!(plan(jobs, &workers), expected, "{case}");
        }
    }

    #[test]
    fn an_assignment_is_a_new_attempt_with_its_token() {
        let job = pending_job("a", JobKind::Backup, "h1", 1);
        let given = assigned(&job, "w1", 9, 77, 1000, "00-trace".into());
        assert_eq!(given.state, JobState::Assigned);
        let attempt = given.current().cloned();
        assert_eq!(
            attempt.map(|a| (
                a.number,
                a.worker,
                a.lease,
                a.token,
                a.assigned_unix_ms,
                a.traceparent
            )),
            Some((1, "w1".to_string(), 9, 77, 1000, "00-trace".to_string()))
        );
    }
}
