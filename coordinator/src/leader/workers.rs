//! Workers: registration under a lease, heartbeats, inventory, and what happens to the
//! jobs of a worker whose lease ran out.

use std::collections::HashMap;

use super::inventory::{warn_taken, without_taken_names};
use super::jobs::retry_or_fail;
use super::state::State;
use super::tick::TickReport;
use super::writes::{job_puts, json, put_json};
use super::{Leader, LeaderError, Result, check_name};
use crate::model::{self, JobRecord, JobState, VmRecord, WorkerRecord, now_ms};
use crate::store::{Compare, LeaseId, Op, StoreError};

/// Puts of the reported VMs that differ from the cache.
fn inventory_ops(state: &State, hosts: &[(String, Vec<VmRecord>)]) -> Result<Vec<Op>> {
    hosts
        .iter()
        .flat_map(|(_, vms)| vms)
        .filter(|vm| state.vms.get(&vm.name) != Some(vm))
        .map(|vm| put_json(model::vm_key(&vm.name), vm))
        .collect()
}

/// Checks that `(id, instance, lease)` is the registered worker.
pub(super) fn check_worker(state: &State, id: &str, instance: &str, lease: LeaseId) -> Result<()> {
    match state.workers.get(id) {
        Some(record) if record.instance == instance && record.lease == lease => Ok(()),
        Some(record) if record.instance != instance => Err(LeaderError::AlreadyExists(format!(
            "worker id {id:?} belongs to another process"
        ))),
        _ => Err(LeaderError::NotFound(format!(
            "worker {id:?} has no live lease {lease}: register again"
        ))),
    }
}

/// The assigned jobs whose worker no longer holds the lease they were assigned under,
/// as they become at `now`: pending again after a backoff (each with its own draw of
/// `jitter`, see [`retry_or_fail`]), or failed once out of attempts.
pub(super) fn orphaned_jobs(
    jobs: &HashMap<String, JobRecord>,
    workers: &HashMap<String, WorkerRecord>,
    now: u64,
    mut jitter: impl FnMut() -> f64,
) -> Vec<JobRecord> {
    jobs.values()
        .filter(|job| job.state == JobState::Assigned)
        .filter(|job| {
            job.current().is_some_and(|attempt| {
                workers
                    .get(&attempt.worker)
                    .is_none_or(|w| w.lease != attempt.lease)
            })
        })
        .map(|job| {
            let mut moved = job.clone();
            retry_or_fail(
                &mut moved,
                now,
                "lease lost".into(),
                true,
                "worker lease lost too many times".into(),
                jitter(),
            );
            moved
        })
        .collect()
}

impl Leader {
    /// Registers a worker under a fresh lease, refusing an id another live process holds.
    pub async fn register(
        &self,
        id: &str,
        instance: &str,
        hosts: Vec<(String, Vec<VmRecord>)>,
        max_jobs: u32,
        max_boot_tests: u32,
    ) -> Result<WorkerRecord> {
        check_name("worker id", id)?;
        if instance.is_empty() {
            return Err(LeaderError::Invalid("instance_id must not be empty".into()));
        }
        let _mutating = self.mutating().await;
        let key = model::worker_key(id);
        let existing = self.store.get(&key).await?;
        if let Some(kv) = &existing
            && let Ok(record) = serde_json::from_slice::<WorkerRecord>(&kv.value)
            && record.instance != instance
        {
            // The key lives under the holder's lease, so it exists only while that lease
            // does: no keep-alive to ask (which would also extend a dead holder's lease).
            return Err(LeaderError::AlreadyExists(format!(
                "worker id {id:?} is held by another live process (registered {} ms ago)",
                now_ms().saturating_sub(record.registered_unix_ms)
            )));
        }
        let (hosts, taken) = without_taken_names(&self.state(), hosts);
        warn_taken(&taken);
        let inventory = inventory_ops(&self.state(), &hosts)?;
        let lease: LeaseId = self.store.grant_lease(self.settings.worker_lease).await?;
        let record = WorkerRecord {
            id: id.to_string(),
            instance: instance.to_string(),
            lease,
            hosts: hosts.iter().map(|(host, _)| host.clone()).collect(),
            max_jobs: max_jobs.max(1),
            max_boot_tests,
            registered_unix_ms: now_ms(),
        };
        let guard = match &existing {
            Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
            None => Compare::Absent(key.clone()),
        };
        let value = match json(&record) {
            Ok(value) => value,
            Err(error) => {
                let _ = self.store.revoke(lease).await;
                return Err(error);
            }
        };
        let mut ops = vec![Op::put_leased(key, value, lease)];
        ops.extend(inventory);
        if !self.write(vec![guard], ops).await? {
            let _ = self.store.revoke(lease).await;
            return Err(LeaderError::AlreadyExists(format!(
                "worker id {id:?} registered concurrently by another process"
            )));
        }
        let replaced = {
            let mut state = self.state();
            state.record_inventory(hosts, now_ms());
            state.workers.insert(id.to_string(), record.clone())
        };
        if let Some(old) = replaced
            && old.lease != lease
        {
            let _ = self.store.revoke(old.lease).await;
        }
        Ok(record)
    }

    /// Renews a worker's lease.
    pub async fn heartbeat(&self, id: &str, instance: &str, lease: LeaseId) -> Result<()> {
        check_worker(&self.state(), id, instance, lease)?;
        match self.store.keep_alive(lease).await {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseNotFound(_)) => {
                self.state().workers.remove(id);
                Err(LeaderError::NotFound(format!(
                    "lease {lease} of worker {id:?} expired: register again"
                )))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Records a worker's inventory.
    pub async fn report_inventory(
        &self,
        id: &str,
        instance: &str,
        lease: LeaseId,
        hosts: Vec<(String, Vec<VmRecord>)>,
    ) -> Result<()> {
        let _mutating = self.mutating().await;
        let (hosts, record, ops) = {
            let state = self.state();
            check_worker(&state, id, instance, lease)?;
            let (hosts, taken) = without_taken_names(&state, hosts);
            warn_taken(&taken);
            let mut record =
                state.workers.get(id).cloned().ok_or_else(|| {
                    LeaderError::NotFound(format!("worker {id:?} is not registered"))
                })?;
            let mut ops = inventory_ops(&state, &hosts)?;
            let host_names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
            if record.hosts != host_names {
                record.hosts = host_names;
                ops.push(Op::put_leased(model::worker_key(id), json(&record)?, lease));
            }
            (hosts, record, ops)
        };
        if ops.is_empty() {
            // Nothing to write, but a VM the report leaves out is missing from now.
            self.state().record_inventory(hosts, now_ms());
            return Ok(());
        }
        self.write_batched(ops).await?;
        let mut state = self.state();
        state.workers.insert(id.to_string(), record);
        state.record_inventory(hosts, now_ms());
        Ok(())
    }

    /// Replaces the cached workers by the store's live ones (a worker's key vanishes
    /// with its lease) and moves the jobs of dead workers back to pending.
    pub(super) async fn reap_workers(&self, report: &mut TickReport) -> Result<()> {
        // Listed under `mutations`: a registration finishing between the listing and
        // the replacement below would otherwise be undone (its worker's heartbeats
        // refused, its jobs moved) until the next tick.
        let _mutating = self.mutating().await;
        // A worker record that cannot be decoded counts as absent: its jobs move, as
        // they would if it had died (`load` reports such records).
        let live: HashMap<String, WorkerRecord> = self
            .store
            .list(&model::prefix("workers/"))
            .await?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice::<WorkerRecord>(&kv.value).ok())
            .map(|w| (w.id.clone(), w))
            .collect();
        let orphans_of =
            |state: &State| orphaned_jobs(&state.jobs, &state.workers, now_ms(), rand::random);
        let orphans = {
            let mut state = self.state();
            state.workers = live;
            orphans_of(&state)
        };
        if orphans.is_empty() {
            return Ok(());
        }
        self.read_back(orphans.iter().map(|job| job.id.clone()).collect())
            .await?;
        let orphans = orphans_of(&self.state());
        if orphans.is_empty() {
            return Ok(());
        }
        self.write_batched(job_puts(&orphans)?).await?;
        report.requeued += orphans.len();
        let mut state = self.state();
        for job in orphans {
            tracing::info!(
                job = job.id,
                vm = job.vm,
                "worker lease lost; job goes back to pending"
            );
            state.stopped(job);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{assigned_job, worker};
    use crate::leader::jobs::MAX_ATTEMPTS;
    use crate::model::JobKind;

    #[test]
    fn jobs_of_workers_without_their_lease_go_back_to_pending() {
        let live: HashMap<String, WorkerRecord> =
            [("w1".to_string(), worker("w1", &["h1"], 4))].into();
        let mut renewed = worker("w2", &["h1"], 4);
        renewed.lease += 1;
        let live_with_new_lease: HashMap<String, WorkerRecord> =
            [("w2".to_string(), renewed)].into();
        let mut exhausted = assigned_job("tired", JobKind::Backup, "vm3", "gone");
        let attempt = exhausted.attempts[0].clone();
        exhausted.attempts = vec![attempt; MAX_ATTEMPTS as usize];
        let mut pending = assigned_job("waiting", JobKind::Backup, "vm4", "gone");
        pending.state = JobState::Pending;
        // (job, live workers, expected state after reaping; None: untouched)
        let cases = [
            (
                assigned_job("alive", JobKind::Backup, "vm1", "w1"),
                &live,
                None,
            ),
            (
                assigned_job("dead", JobKind::Backup, "vm2", "gone"),
                &live,
                Some(JobState::Pending),
            ),
            (
                assigned_job("moved", JobKind::Gc, "", "w2"),
                &live_with_new_lease,
                Some(JobState::Pending),
            ),
            (exhausted, &live, Some(JobState::Failed)),
            (pending, &live, None),
        ];
        for (job, workers, expected) in cases {
            let id = job.id.clone();
            let jobs: HashMap<String, JobRecord> = [(id.clone(), job)].into();
            let reaped = orphaned_jobs(&jobs, workers, 42, || 0.5);
            assert_eq!(reaped.first().map(|j| j.state), expected, "{id}");
            if let Some(job) = reaped.first() {
                assert_eq!(
                    job.current().map(|a| a.outcome.as_str()),
                    Some("lease lost")
                );
                if job.state == JobState::Pending {
                    assert_eq!(job.not_before_unix_ms, 42 + 2_500, "{id}: backoff");
                }
            }
        }
    }
}
