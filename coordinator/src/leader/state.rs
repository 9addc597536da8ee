//! The leader's cache of the store, and how it is loaded when a replica starts to lead.

use std::collections::{BTreeMap, HashMap};

use serde::de::DeserializeOwned;

use super::Result;
use super::job_metrics::JobMetrics;
use super::jobs::Progress;
use crate::model::{self, JobRecord, JobState, SnapshotRecord, VmRecord, WorkerRecord};
use crate::notify::Notifier;
use crate::policy::Policy;
use crate::store::{KeyValue, MetaStore};

/// Everything the leader decides from: the store's records plus live progress.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Live workers by id.
    pub(super) workers: HashMap<String, WorkerRecord>,
    /// Last reported inventory by VM name.
    pub(super) vms: BTreeMap<String, VmRecord>,
    /// VMs a report of their host left out, and since when (Unix ms): memory only, so
    /// a new leader's grace starts at the first report it receives without them.
    pub(super) missing_since: HashMap<String, u64>,
    /// Policies by name.
    pub(super) policies: BTreeMap<String, Policy>,
    /// Last round by name (`POLICY` for backups, `POLICY#gc` for GC), Unix ms.
    pub(super) rounds: HashMap<String, u64>,
    /// Jobs by id, active and finished (until they expire).
    pub(super) jobs: HashMap<String, JobRecord>,
    /// The snapshot catalog by store key.
    pub(super) snapshots: BTreeMap<String, SnapshotRecord>,
    /// Live progress of running jobs: memory only.
    pub(super) progress: HashMap<String, Progress>,
    /// Counters of ended jobs, updated by [`State::stopped`].
    pub(super) metrics: JobMetrics,
    /// Told by [`State::stopped`] of jobs that failed for good.
    pub(super) notifier: Notifier,
}

impl State {
    /// The ids of the live workers that reach `host`, sorted.
    pub(super) fn workers_reaching(&self, host: &str) -> Vec<String> {
        let mut workers: Vec<String> = self
            .workers
            .values()
            .filter(|worker| worker.hosts.iter().any(|reached| reached == host))
            .map(|worker| worker.id.clone())
            .collect();
        workers.sort();
        workers
    }

    /// Reads every record from the store: the state and how many records could not be
    /// decoded (each logged with its key and the reason, then skipped).
    pub(super) async fn load(
        store: &dyn MetaStore,
        metrics: JobMetrics,
        notifier: Notifier,
    ) -> Result<(Self, u64)> {
        let mut decoder = Decoder::default();
        let state = State {
            workers: decoder
                .records(store, "workers/", |w: &WorkerRecord| w.id.clone())
                .await?,
            vms: decoder
                .records(store, "vms/", |vm: &VmRecord| vm.name.clone())
                .await?,
            policies: decoder
                .records(store, "policies/", |p: &Policy| p.name.clone())
                .await?,
            rounds: decoder.rounds(store).await?,
            jobs: decoder
                .records(store, "jobs/", |job: &JobRecord| job.id.clone())
                .await?,
            snapshots: decoder.snapshots(store).await?,
            progress: HashMap::new(),
            missing_since: HashMap::new(),
            metrics,
            notifier,
        };
        Ok((state, decoder.unreadable))
    }

    /// The first active job `matches` accepts: the guard against starting a second
    /// job where one is already pending or running.
    pub(super) fn active_job(&self, matches: impl Fn(&JobRecord) -> bool) -> Option<&JobRecord> {
        self.jobs
            .values()
            .find(|job| job.state.is_active() && matches(job))
    }

    /// Records the VMs a worker reported at `now`: each reported VM is current, each
    /// known VM of a reported host that the report leaves out is missing from now on
    /// (unless it already was).
    pub(super) fn record_inventory(&mut self, hosts: Vec<(String, Vec<VmRecord>)>, now: u64) {
        for (host, vms) in hosts {
            let reported: std::collections::HashSet<&str> =
                vms.iter().map(|vm| vm.name.as_str()).collect();
            for vm in self.vms.values() {
                if vm.host == host && !reported.contains(vm.name.as_str()) {
                    self.missing_since.entry(vm.name.clone()).or_insert(now);
                }
            }
            for vm in vms {
                self.missing_since.remove(&vm.name);
                self.vms.insert(vm.name.clone(), vm);
            }
        }
    }

    /// Puts new or changed job records in the cache.
    pub(super) fn insert_jobs(&mut self, jobs: impl IntoIterator<Item = JobRecord>) {
        for job in jobs {
            self.jobs.insert(job.id.clone(), job);
        }
    }

    /// Puts a job that stopped running in the cache, dropping its live progress,
    /// counts how it ended, and notifies a job that failed for good (an attempt after
    /// which the job went back to pending is not a failure to notify).
    pub(super) fn stopped(&mut self, job: JobRecord) {
        self.progress.remove(&job.id);
        let snapshot = job
            .snapshot
            .as_deref()
            .and_then(|name| name.split_once('@'))
            .and_then(|(vm, timestamp)| self.snapshots.get(&model::snapshot_key(vm, timestamp)));
        self.metrics.attempt_ended(&job, snapshot);
        if job.state == JobState::Failed {
            self.notifier.job_failed(&job);
        }
        self.jobs.insert(job.id.clone(), job);
    }
}

/// Decodes stored records, counting those it cannot read.
#[derive(Default)]
struct Decoder {
    unreadable: u64,
}

impl Decoder {
    /// The record under `kv`, or `None` (logged and counted) if it cannot be decoded.
    fn decode<T: DeserializeOwned>(&mut self, kv: &KeyValue) -> Option<T> {
        match serde_json::from_slice(&kv.value) {
            Ok(record) => Some(record),
            Err(error) => {
                tracing::warn!(key = kv.key, %error, "skipping an unreadable record");
                self.unreadable += 1;
                None
            }
        }
    }

    /// The readable records of a kind (`"jobs/"`, ...) with their store keys.
    async fn listing<T: DeserializeOwned>(
        &mut self,
        store: &dyn MetaStore,
        kind: &str,
    ) -> Result<Vec<(String, T)>> {
        let listed = store.list(&model::prefix(kind)).await?;
        Ok(listed
            .into_iter()
            .filter_map(|kv| Some((kv.key.clone(), self.decode(&kv)?)))
            .collect())
    }

    /// The readable records of a kind, by the id `id_of` reads from each.
    async fn records<T: DeserializeOwned, M: FromIterator<(String, T)>>(
        &mut self,
        store: &dyn MetaStore,
        kind: &str,
        id_of: impl Fn(&T) -> String,
    ) -> Result<M> {
        let listed = self.listing::<T>(store, kind).await?;
        Ok(listed
            .into_iter()
            .map(|(_, record)| (id_of(&record), record))
            .collect())
    }

    /// Last rounds by name, the last segment of their key.
    async fn rounds(&mut self, store: &dyn MetaStore) -> Result<HashMap<String, u64>> {
        let listed = self.listing::<u64>(store, "policy-rounds/").await?;
        Ok(listed
            .into_iter()
            .map(|(key, ms)| {
                let name = key.rsplit('/').next().unwrap_or_default().to_string();
                (name, ms)
            })
            .collect())
    }

    /// The catalog by store key.
    async fn snapshots(
        &mut self,
        store: &dyn MetaStore,
    ) -> Result<BTreeMap<String, SnapshotRecord>> {
        Ok(self
            .listing::<SnapshotRecord>(store, "snapshots/")
            .await?
            .into_iter()
            .collect())
    }
}
