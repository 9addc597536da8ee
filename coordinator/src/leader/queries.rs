//! Read-only views of the cache for the API, `/metrics`, the web console and garbage
//! collection's pins.
//! They take the state lock only, never `mutations`, so they never wait for store I/O.

use super::state::State;
use super::{Leader, Progress};
use crate::model::{self, JobKind, JobRecord, JobState, SnapshotRecord, VmRecord, WorkerRecord};
use crate::policy::Policy;

/// What running backups into `repository` need a collection to keep: the newest
/// catalogued snapshot of each such VM (the base its backup builds on), the start of
/// the oldest of them (0: none), and who holds these pins.
pub(super) fn pins(state: &State, repository: &str) -> (Vec<String>, u64, Vec<String>) {
    let mut bases = Vec::new();
    let mut oldest = 0u64;
    let mut holders = Vec::new();
    for job in state
        .jobs
        .values()
        .filter(|j| j.kind == JobKind::Backup && j.repository == repository && j.state.is_active())
    {
        holders.push(format!("job {} ({})", job.id, job.vm));
        let started = job
            .attempts
            .first()
            .map(|a| a.assigned_unix_ms)
            .unwrap_or(job.created_unix_ms);
        oldest = if oldest == 0 {
            started
        } else {
            oldest.min(started)
        };
        if let Some(base) = state
            .snapshots
            .values()
            .filter(|s| s.vm == job.vm && s.repository == repository)
            .map(|s| &s.timestamp)
            .max()
        {
            bases.push(format!("{}@{base}", job.vm));
        }
    }
    (bases, oldest, holders)
}

impl Leader {
    /// What running backups into `repository` need a collection to keep: the newest
    /// catalogued snapshot of each such VM (the base its backup builds on) and the
    /// start of the oldest of them.
    pub async fn pins(&self, repository: &str) -> (Vec<String>, u64, Vec<String>) {
        pins(&self.state(), repository)
    }

    /// Every known VM with the workers that reach its host.
    pub async fn vms(&self) -> Vec<(VmRecord, Vec<String>)> {
        let state = self.state();
        state
            .vms
            .values()
            .map(|vm| (vm.clone(), state.workers_reaching(&vm.host)))
            .collect()
    }

    /// Live workers with their running job counts.
    pub async fn workers(&self) -> Vec<(WorkerRecord, u32)> {
        let state = self.state();
        let mut list: Vec<(WorkerRecord, u32)> = state
            .workers
            .values()
            .map(|w| {
                let running = state
                    .jobs
                    .values()
                    .filter(|j| j.state == JobState::Assigned)
                    .filter(|j| j.current().is_some_and(|a| a.worker == w.id))
                    .count() as u32;
                (w.clone(), running)
            })
            .collect();
        list.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        list
    }

    /// Jobs (newest first), optionally of one VM, with live progress; `limit` 0: all.
    /// Only the jobs returned are cloned.
    pub async fn jobs(&self, vm: Option<&str>, limit: usize) -> Vec<(JobRecord, Progress)> {
        let state = self.state();
        newest_first(&state, |j| vm.is_none_or(|vm| j.vm == vm), limit)
    }

    /// The jobs pending, running or committing, newest first, with live progress.
    pub fn active_jobs(&self) -> Vec<(JobRecord, Progress)> {
        newest_first(&self.state(), |j| j.state.is_active(), 0)
    }

    /// The `limit` failed jobs that ended last, newest first.
    pub fn recent_failures(&self, limit: usize) -> Vec<JobRecord> {
        let state = self.state();
        let mut failed: Vec<&JobRecord> = state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Failed)
            .collect();
        failed.sort_by(|a, b| (b.finished_unix_ms, &b.id).cmp(&(a.finished_unix_ms, &a.id)));
        failed.into_iter().take(limit).cloned().collect()
    }

    /// The policy named `name`.
    pub fn policy(&self, name: &str) -> Option<Policy> {
        self.state().policies.get(name).cloned()
    }

    /// A VM of the inventory with the workers that reach its host.
    pub fn vm(&self, name: &str) -> Option<(VmRecord, Vec<String>)> {
        let state = self.state();
        let vm = state.vms.get(name)?;
        Some((vm.clone(), state.workers_reaching(&vm.host)))
    }

    /// One job with its live progress.
    pub async fn job(&self, id: &str) -> Option<(JobRecord, Progress)> {
        let state = self.state();
        let job = state.jobs.get(id)?.clone();
        let progress = state.progress.get(id).copied().unwrap_or_default();
        Some((job, progress))
    }

    /// The snapshot catalog, optionally of one VM (a range of the catalog, oldest
    /// first).
    pub async fn snapshots(&self, vm: Option<&str>) -> Vec<SnapshotRecord> {
        let state = self.state();
        match vm {
            Some(vm) => vm_snapshots(&state, vm).cloned().collect(),
            None => state.snapshots.values().cloned().collect(),
        }
    }
}

/// The jobs `keep` accepts, newest first, at most `limit` (0: all), with live
/// progress; only those returned are cloned.
fn newest_first(
    state: &State,
    keep: impl Fn(&JobRecord) -> bool,
    limit: usize,
) -> Vec<(JobRecord, Progress)> {
    let mut list: Vec<&JobRecord> = state.jobs.values().filter(|j| keep(j)).collect();
    list.sort_by(|a, b| (b.created_unix_ms, &b.id).cmp(&(a.created_unix_ms, &a.id)));
    if limit > 0 {
        list.truncate(limit);
    }
    list.into_iter()
        .map(|j| {
            let progress = state.progress.get(&j.id).copied().unwrap_or_default();
            (j.clone(), progress)
        })
        .collect()
}

/// One VM's snapshots, oldest first: the catalog is keyed `snapshots/VM/TIMESTAMP`,
/// so they are one range of it (a VM name holds no `/`), found in O(log n).
pub(super) fn vm_snapshots<'a>(
    state: &'a State,
    vm: &str,
) -> impl Iterator<Item = &'a SnapshotRecord> + 'a {
    let start = model::snapshot_key(vm, "");
    // `0` is the character after `/`: the end of the VM's range.
    let end = format!("{}0", start.trim_end_matches('/'));
    state
        .snapshots
        .range(start..end)
        .map(|(_, snapshot)| snapshot)
}
