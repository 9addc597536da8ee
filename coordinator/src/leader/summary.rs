//! What `/metrics` exports from the leader's cache: per VM, per policy, per
//! replication site and per repository, computed in one pass over the catalog and
//! the jobs under the state lock, without cloning a job or a snapshot record (a
//! scrape of a cluster with 100,000 snapshots walks them once and copies only the
//! few strings it exports).
//!
//! Definitions (also in `docs/operations.md`):
//!
//! - A VM's **last success** is its newest snapshot in the catalog (the snapshot's
//!   own timestamp: the point in time it restores to), in any repository.
//! - Its **RPO age** is now − last success; for a VM without any snapshot, now − the
//!   creation of its oldest backup job still in the history (how long it has been
//!   waiting for a first good backup), or nothing when it never had a job.
//! - Its **policy** is the first policy, by name, that selects it; `""` for a VM no
//!   policy selects (backed up by hand only).
//! - A replication `(repository, site)`'s **watermark** is the start of the last
//!   successful attempt of its newest successful `replicate_to` job: every snapshot
//!   committed before it is at the site. A VM's **replication lag** is now − the
//!   newest of its snapshots in the repository committed before the watermark; when
//!   none is (no successful replication yet, or all its snapshots are newer), now −
//!   its oldest snapshot there, a lower bound that keeps growing while nothing
//!   reaches the site. A VM whose snapshots go to two repositories replicated to
//!   the same site gets the larger of the two lags.
//! - Its **last boot-verified snapshot** is the newest snapshot (its timestamp) a
//!   boot-test job in the history passed; its **last boot verdict** is the verdict of
//!   its most recently ended boot-test job that reached one. Both come from the job
//!   history, so they go once those jobs expire.

use std::collections::{BTreeMap, HashMap};

use super::Leader;
use super::state::State;
use crate::model::{JobKind, JobRecord, JobState, SnapshotRecord};
use crate::policy::Policy;

/// Everything `/metrics` exports from the leader's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSummary {
    /// Jobs by state: pending, assigned, committing, succeeded, failed.
    pub jobs_by_state: [u64; 5],
    /// Live workers.
    pub workers: u64,
    /// Every VM known from the inventory or the catalog, by name.
    pub vms: Vec<VmSummary>,
    /// Each policy's name and RPO in seconds (0: unknown, applied by an older version).
    pub policy_rpo_seconds: Vec<(String, u64)>,
    /// Replication lag per VM and secondary site.
    pub replication: Vec<VmReplication>,
    /// The catalog per repository.
    pub repositories: Vec<RepositorySummary>,
}

/// One VM's protection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSummary {
    /// VM name.
    pub vm: String,
    /// The first policy (by name) selecting it; empty for none.
    pub policy: String,
    /// Unix seconds of its newest snapshot.
    pub last_success_seconds: Option<i64>,
    /// Whether its most recently ended backup job succeeded.
    pub last_attempt_succeeded: Option<bool>,
    /// Seconds since the last success (see the module documentation).
    pub rpo_age_seconds: Option<u64>,
    /// Unix seconds of its newest snapshot that passed a boot test.
    pub last_boot_verified_seconds: Option<i64>,
    /// Whether its most recently ended boot test passed.
    pub last_boot_test_passed: Option<bool>,
}

/// How far one VM's copy at a secondary site lags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmReplication {
    /// VM name.
    pub vm: String,
    /// The secondary repository (`replicate_to`).
    pub site: String,
    /// Seconds since the newest snapshot known at the site (see the module
    /// documentation).
    pub lag_seconds: u64,
}

/// One repository's catalog.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepositorySummary {
    /// Repository URL.
    pub repository: String,
    /// Snapshots in the catalog.
    pub snapshots: u64,
    /// Sum of the disk sizes of those snapshots (what restoring all would write).
    pub logical_bytes: u64,
    /// Bytes the backups that wrote them uploaded.
    pub uploaded_bytes: u64,
    /// Bytes they read over plaintext bytes they added: `None` until a snapshot
    /// recorded both (older records did not).
    pub dedup_ratio: Option<f64>,
}

/// Job states in the order of [`MetricsSummary::jobs_by_state`].
const STATES: [JobState; 5] = [
    JobState::Pending,
    JobState::Assigned,
    JobState::Committing,
    JobState::Succeeded,
    JobState::Failed,
];

/// Unix seconds of a snapshot's timestamp; `None` for one that does not parse.
fn snapshot_seconds(snapshot: &SnapshotRecord) -> Option<i64> {
    haven_repo::parse_timestamp(&snapshot.timestamp)
        .ok()
        .map(|time| time.unix_timestamp())
}

/// Seconds from `seconds` to `now_ms`, never negative.
fn age(now_ms: u64, seconds: i64) -> u64 {
    let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    u64::try_from(now.saturating_sub(seconds)).unwrap_or(0)
}

/// Whether `snapshot` was committed before `watermark_ms`; a record of an older
/// version has no commit time, and its timestamp (the backup's start) stands in.
fn committed_before(snapshot: &SnapshotRecord, watermark_ms: u64) -> bool {
    if snapshot.committed_unix_ms != 0 {
        return snapshot.committed_unix_ms < watermark_ms;
    }
    snapshot_seconds(snapshot)
        .is_some_and(|seconds| seconds.saturating_mul(1000) < watermark_ms as i64)
}

/// The start of the attempt that completed a successful job.
fn successful_attempt_start(job: &JobRecord) -> u64 {
    job.current()
        .map_or(job.created_unix_ms, |attempt| attempt.assigned_unix_ms)
}

/// What one VM's row is computed from; gathered for every VM in one pass by
/// [`summarize`], or for one VM by [`vm_summary`].
#[derive(Default)]
struct VmHistory<'a> {
    /// Its newest snapshot in the catalog.
    newest: Option<&'a SnapshotRecord>,
    /// (finished, succeeded) of its newest ended backup job.
    last_ended: Option<(u64, bool)>,
    /// Creation of its oldest backup job.
    oldest_job: Option<u64>,
    /// Its boot tests.
    boot: BootHistory,
}

/// What a VM's boot tests in the job history say.
#[derive(Debug, Clone, Copy, Default)]
struct BootHistory {
    /// Unix seconds of the newest snapshot a boot test passed.
    newest_passed: Option<i64>,
    /// (finished, passed) of the newest boot test with a verdict.
    last_verdict: Option<(u64, bool)>,
}

impl BootHistory {
    /// Takes `job` into account if it is a boot test that reached a verdict.
    fn observe(&mut self, job: &JobRecord) {
        let (JobKind::BootTest, Some(passed), Some(params)) =
            (job.kind, job.boot_passed, job.params.boot.as_ref())
        else {
            return;
        };
        if self
            .last_verdict
            .is_none_or(|(finished, _)| job.finished_unix_ms > finished)
        {
            self.last_verdict = Some((job.finished_unix_ms, passed));
        }
        if passed && let Ok(time) = haven_repo::parse_timestamp(&params.snapshot) {
            let seconds = time.unix_timestamp();
            self.newest_passed = Some(self.newest_passed.map_or(seconds, |n| n.max(seconds)));
        }
    }
}

/// The policy that selects `vm`: the first by name (see the module documentation).
fn policy_of<'a>(state: &'a State, vm: &str) -> Option<&'a Policy> {
    let record = state.vms.get(vm)?;
    state
        .policies
        .values()
        .find(|p| p.select.matches(&record.name, &record.host, &record.labels))
}

/// One VM's row, the definitions of the module documentation written once.
fn vm_row(state: &State, vm: &str, history: &VmHistory<'_>, now_ms: u64) -> VmSummary {
    let last_success_seconds = history.newest.and_then(snapshot_seconds);
    let rpo_age_seconds = match last_success_seconds {
        Some(seconds) => Some(age(now_ms, seconds)),
        None => history
            .oldest_job
            .map(|created| now_ms.saturating_sub(created) / 1000),
    };
    VmSummary {
        vm: vm.to_string(),
        policy: policy_of(state, vm)
            .map(|p| p.name.clone())
            .unwrap_or_default(),
        last_success_seconds,
        last_attempt_succeeded: history.last_ended.map(|(_, succeeded)| succeeded),
        rpo_age_seconds,
        last_boot_verified_seconds: history.boot.newest_passed,
        last_boot_test_passed: history.boot.last_verdict.map(|(_, passed)| passed),
    }
}

/// The row of one VM, as [`summarize`] computes it, from its own snapshots (a range
/// of the catalog) and one pass over the jobs without cloning any: what a page about
/// one VM needs, without summarizing every other.
pub(super) fn vm_summary(state: &State, vm: &str, now_ms: u64) -> VmSummary {
    let mut history = VmHistory {
        newest: super::queries::vm_snapshots(state, vm)
            .max_by(|a, b| a.timestamp.cmp(&b.timestamp)),
        ..VmHistory::default()
    };
    for job in state.jobs.values().filter(|job| job.vm == vm) {
        history.boot.observe(job);
        if job.kind != JobKind::Backup {
            continue;
        }
        let oldest = history.oldest_job.get_or_insert(job.created_unix_ms);
        *oldest = (*oldest).min(job.created_unix_ms);
        if matches!(job.state, JobState::Succeeded | JobState::Failed) {
            let ended = (job.finished_unix_ms, job.state == JobState::Succeeded);
            if history.last_ended.is_none_or(|newest| ended.0 > newest.0) {
                history.last_ended = Some(ended);
            }
        }
    }
    vm_row(state, vm, &history, now_ms)
}

/// The summary of `state` at `now_ms`.
pub(super) fn summarize(state: &State, now_ms: u64) -> MetricsSummary {
    let mut jobs_by_state = [0u64; 5];
    // Per VM: (finished, succeeded) of its newest ended backup, and the creation of
    // its oldest backup job.
    let mut last_ended: HashMap<&str, (u64, bool)> = HashMap::new();
    let mut oldest_job: HashMap<&str, u64> = HashMap::new();
    let mut boot: HashMap<&str, BootHistory> = HashMap::new();
    // Per (repository, site): the watermark.
    let mut watermarks: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for job in state.jobs.values() {
        if let Some(index) = STATES.iter().position(|s| *s == job.state) {
            jobs_by_state[index] += 1;
        }
        match job.kind {
            JobKind::Backup => {
                let oldest = oldest_job.entry(&job.vm).or_insert(job.created_unix_ms);
                *oldest = (*oldest).min(job.created_unix_ms);
                if matches!(job.state, JobState::Succeeded | JobState::Failed) {
                    let ended = (job.finished_unix_ms, job.state == JobState::Succeeded);
                    let newest = last_ended.entry(&job.vm).or_insert(ended);
                    if ended.0 > newest.0 {
                        *newest = ended;
                    }
                }
            }
            JobKind::Replicate if job.state == JobState::Succeeded => {
                if let Some(site) = &job.params.replicate_to {
                    let mark = watermarks.entry((&job.repository, site)).or_insert(0);
                    *mark = (*mark).max(successful_attempt_start(job));
                }
            }
            JobKind::BootTest if job.boot_passed.is_some() => {
                boot.entry(&job.vm).or_default().observe(job);
            }
            _ => {}
        }
    }
    // Sites of the current policies count even before a first successful replication.
    for policy in state.policies.values() {
        if let Some(site) = &policy.replicate_to {
            watermarks.entry((&policy.repository, site)).or_insert(0);
        }
    }

    // One pass over the catalog, sorted by VM then timestamp (`snapshots/VM/TS`).
    let mut newest: HashMap<&str, &SnapshotRecord> = HashMap::new();
    let mut repositories: BTreeMap<&str, RepositorySummary> = BTreeMap::new();
    let mut reduction: HashMap<&str, (u64, u64)> = HashMap::new();
    // Per (VM, repository, site): (newest replicated, oldest) snapshot.
    type Replicated<'a> = (Option<&'a SnapshotRecord>, &'a SnapshotRecord);
    let mut replicated: BTreeMap<(&str, &str, &str), Replicated<'_>> = BTreeMap::new();
    for snapshot in state.snapshots.values() {
        let entry = newest.entry(&snapshot.vm).or_insert(snapshot);
        if snapshot.timestamp > entry.timestamp {
            *entry = snapshot;
        }
        let repository =
            repositories
                .entry(&snapshot.repository)
                .or_insert_with(|| RepositorySummary {
                    repository: snapshot.repository.clone(),
                    ..RepositorySummary::default()
                });
        repository.snapshots += 1;
        repository.logical_bytes += snapshot.disks.iter().map(|(_, size)| size).sum::<u64>();
        repository.uploaded_bytes += snapshot.bytes_uploaded;
        if snapshot.bytes_new > 0 {
            let (read, new) = reduction.entry(&snapshot.repository).or_default();
            *read += snapshot.bytes_read;
            *new += snapshot.bytes_new;
        }
        for (&(repository, site), &watermark) in
            watermarks.range((snapshot.repository.as_str(), "")..)
        {
            if repository != snapshot.repository {
                break;
            }
            let done = committed_before(snapshot, watermark).then_some(snapshot);
            replicated
                .entry((&snapshot.vm, repository, site))
                .and_modify(|(newest_done, oldest)| {
                    if done.is_some_and(|s| newest_done.is_none_or(|n| s.timestamp > n.timestamp)) {
                        *newest_done = done;
                    }
                    if snapshot.timestamp < oldest.timestamp {
                        *oldest = snapshot;
                    }
                })
                .or_insert((done, snapshot));
        }
    }
    for (url, (read, new)) in reduction {
        if let Some(repository) = repositories.get_mut(url) {
            repository.dedup_ratio = Some(read as f64 / new as f64);
        }
    }

    let mut names: Vec<&str> = state.vms.keys().map(String::as_str).collect();
    names.extend(newest.keys().filter(|vm| !state.vms.contains_key(**vm)));
    names.sort_unstable();
    let vms = names
        .into_iter()
        .map(|vm| {
            let history = VmHistory {
                newest: newest.get(vm).copied(),
                last_ended: last_ended.get(vm).copied(),
                oldest_job: oldest_job.get(vm).copied(),
                boot: boot.get(vm).copied().unwrap_or_default(),
            };
            vm_row(state, vm, &history, now_ms)
        })
        .collect();
    // A VM in two repositories replicated to one site is one series: the larger lag.
    let mut lags: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for ((vm, _, site), (newest_done, oldest)) in replicated {
        if let Some(reference) = snapshot_seconds(newest_done.unwrap_or(oldest)) {
            let lag = lags.entry((vm, site)).or_insert(0);
            *lag = (*lag).max(age(now_ms, reference));
        }
    }
    let replication = lags
        .into_iter()
        .map(|((vm, site), lag_seconds)| VmReplication {
            vm: vm.to_string(),
            site: site.to_string(),
            lag_seconds,
        })
        .collect();
    MetricsSummary {
        jobs_by_state,
        workers: state.workers.len() as u64,
        vms,
        policy_rpo_seconds: state
            .policies
            .values()
            .map(|p| (p.name.clone(), p.rpo_seconds))
            .collect(),
        replication,
        repositories: repositories.into_values().collect(),
    }
}

impl Leader {
    /// What `/metrics` exports from the cache, computed at `now_ms` under the state
    /// lock without cloning records (see the module documentation).
    pub fn metrics_summary(&self, now_ms: u64) -> MetricsSummary {
        summarize(&self.state(), now_ms)
    }

    /// One VM's row of [`MetricsSummary::vms`] at `now_ms`, computed from that VM's
    /// records only; `None` for a VM neither the inventory nor the catalog knows.
    pub fn vm_summary(&self, vm: &str, now_ms: u64) -> Option<VmSummary> {
        let state = self.state();
        let known =
            state.vms.contains_key(vm) || super::queries::vm_snapshots(&state, vm).next().is_some();
        known.then(|| vm_summary(&state, vm, now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{REPOSITORY, assigned_job, finished_job, policy, state_with, vm};
    use crate::model::{self, Attempt};

    /// Unix ms of `2026-12-06T10:00:00Z` plus `minutes`.
    fn at(minutes: u64) -> u64 {
        1_796_551_200_000 + minutes * 60_000
    }

    fn snapshot(vm: &str, minutes: u64, committed_minutes: u64) -> (String, SnapshotRecord) {
        let time = time::OffsetDateTime::from_unix_timestamp((at(minutes) / 1000) as i64)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let record = SnapshotRecord {
            vm: vm.into(),
            timestamp: time.clone(),
            repository: REPOSITORY.into(),
            disks: vec![("vda".into(), 1000)],
            bytes_uploaded: 10,
            job_id: String::new(),
            bytes_read: 400,
            bytes_new: 100,
            committed_unix_ms: at(committed_minutes),
        };
        (model::snapshot_key(vm, &time), record)
    }

    fn replication(id: &str, started_minutes: u64) -> JobRecord {
        let mut job = assigned_job(id, JobKind::Replicate, "", "w");
        job.state = JobState::Succeeded;
        job.params.replicate_to = Some("file:///dr".into());
        job.attempts[0] = Attempt {
            assigned_unix_ms: at(started_minutes),
            ..job.attempts[0].clone()
        };
        job
    }

    #[test]
    fn vms_get_their_last_success_attempt_rpo_age_and_policy() {
        let mut gold = policy("gold");
        gold.select.names = vec!["web-*".into()];
        let mut failed = finished_job("f", JobState::Failed, at(50));
        failed.vm = "web-1".into();
        let mut older_success = finished_job("s", JobState::Succeeded, at(20));
        older_success.vm = "web-1".into();
        let mut waiting = finished_job("w", JobState::Failed, at(5));
        waiting.vm = "web-2".into();
        waiting.created_unix_ms = at(1);
        let mut state = state_with(
            &[vm("web-1", "h1"), vm("web-2", "h1"), vm("db-1", "h1")],
            &[gold],
            &[failed, older_success, waiting],
        );
        state.snapshots = [
            snapshot("web-1", 0, 1),
            snapshot("web-1", 10, 11),
            // Known from the catalog only (backed up by hand, since removed from
            // the inventory).
            snapshot("gone", 30, 31),
        ]
        .into();
        let summary = summarize(&state, at(60));
        let row = |name: &str| summary.vms.iter().find(|v| v.vm == name).unwrap();
        assert_eq!(
            row("web-1"),
            &VmSummary {
                vm: "web-1".into(),
                policy: "gold".into(),
                last_success_seconds: Some((at(10) / 1000) as i64),
                last_attempt_succeeded: Some(false),
                rpo_age_seconds: Some(50 * 60),
                last_boot_verified_seconds: None,
                last_boot_test_passed: None,
            }
        );
        // Never backed up: its age counts from its oldest job.
        assert_eq!(row("web-2").last_success_seconds, None);
        assert_eq!(row("web-2").rpo_age_seconds, Some(59 * 60));
        // No job, no snapshot, no policy: nothing to measure yet.
        assert_eq!(
            row("db-1"),
            &VmSummary {
                vm: "db-1".into(),
                ..VmSummary::default()
            }
        );
        assert_eq!(row("gone").policy, "");
        assert_eq!(row("gone").rpo_age_seconds, Some(30 * 60));
        // One VM's row, computed alone, is the same row.
        for row in &summary.vms {
            assert_eq!(&vm_summary(&state, &row.vm, at(60)), row);
        }
        assert_eq!(summary.policy_rpo_seconds, vec![("gold".into(), 7200)]);
        assert_eq!(summary.jobs_by_state, [0, 0, 0, 1, 2]);
        assert_eq!(
            summary.repositories,
            vec![RepositorySummary {
                repository: REPOSITORY.into(),
                snapshots: 3,
                logical_bytes: 3000,
                uploaded_bytes: 30,
                dedup_ratio: Some(4.0),
            }]
        );
    }

    #[test]
    fn the_replication_lag_counts_from_the_newest_snapshot_committed_before_the_watermark() {
        let mut replicated = policy("gold");
        replicated.repository = REPOSITORY.into();
        replicated.replicate_to = Some("file:///dr".into());
        let cases: [(&str, Vec<JobRecord>, Option<u64>); 4] = [
            // Replication started at minute 25: the snapshot of minute 10 (committed
            // at 11) is there, the one of minute 20 committed at 26 is not.
            ("one replication", vec![replication("r1", 25)], Some(50)),
            // The newest successful replication counts.
            (
                "two replications",
                vec![replication("r1", 25), replication("r2", 30)],
                Some(40),
            ),
            // None succeeded yet: the oldest snapshot bounds the lag.
            ("none yet", Vec::new(), Some(60)),
            // A replication to another site says nothing about this one.
            (
                "other site",
                vec![{
                    let mut elsewhere = replication("r1", 59);
                    elsewhere.params.replicate_to = Some("file:///other".into());
                    elsewhere
                }],
                Some(60),
            ),
        ];
        for (name, jobs, lag_minutes) in cases {
            // A second repository replicated to the same site, fully replicated at
            // minute 59: the VM's lag at the site is the larger one, of `REPOSITORY`.
            let mut other = replicated.clone();
            other.name = "other".into();
            other.repository = "file:///other".into();
            let mut other_done = replication("r-other", 59);
            other_done.repository = other.repository.clone();
            let jobs: Vec<JobRecord> = jobs.into_iter().chain([other_done]).collect();
            let mut state = state_with(&[vm("web-1", "h1")], &[replicated.clone(), other], &jobs);
            let (key, mut elsewhere) = snapshot("web-1", 30, 31);
            elsewhere.repository = "file:///other".into();
            state.snapshots = [
                snapshot("web-1", 0, 1),
                snapshot("web-1", 10, 11),
                snapshot("web-1", 20, 26),
            ]
            .into();
            state.snapshots.insert(key, elsewhere);
            let to_dr = summarize(&state, at(60))
                .replication
                .iter()
                .filter(|r| r.site == "file:///dr")
                .count();
            assert_eq!(to_dr, 1, "{name}");
            let summary = summarize(&state, at(60));
            let lag = summary
                .replication
                .iter()
                .find(|r| r.vm == "web-1" && r.site == "file:///dr")
                .map(|r| r.lag_seconds / 60);
            assert_eq!(lag, lag_minutes, "{name}");
        }
    }
}
