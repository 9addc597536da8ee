//! Policies and the jobs they create: backup rounds when a policy's schedule is due,
//! GC rounds when its `gc_schedule` is, and the prune, replication and boot-test jobs
//! that follow a committed backup.

use crate::cron::Schedule;
use crate::model::{self, JobKind, JobParams, JobRecord, JobState, now_ms};
use crate::policy::Policy;

use super::jobs::{JobPlan, NewJob};
use super::state::State;
use super::tick::TickReport;
use super::writes::put_json;
use super::{Leader, LeaderError, Mutating, Result};

/// A Unix time in milliseconds as a UTC date-time.
fn unix_ms_time(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Whether `schedule` fired after the round `round` last ran and by `now`; a round
/// never run counts as run now.
fn is_due(state: &State, schedule: &Schedule, round: &str, now: u64) -> bool {
    let last = state.rounds.get(round).copied().unwrap_or(now);
    schedule
        .next_after(unix_ms_time(last))
        .is_some_and(|due| due <= unix_ms_time(now))
}

/// The policies whose backup round is due at `now`. A schedule that does not parse is
/// never due (policies are checked when applied).
pub(super) fn due_rounds(state: &State, now: u64) -> Vec<String> {
    state
        .policies
        .values()
        .filter(|policy| {
            Schedule::parse(&policy.schedule)
                .is_ok_and(|schedule| is_due(state, &schedule, &policy.name, now))
        })
        .map(|policy| policy.name.clone())
        .collect()
}

/// A round of each of `policies`: a backup of every VM it selects that has no active
/// backup (a VM two policies select gets one), and the rounds to record.
pub(super) fn round_jobs(state: &State, policies: &[String]) -> JobPlan {
    let mut plan = JobPlan::default();
    let mut busy: std::collections::HashSet<&str> = state
        .jobs
        .values()
        .filter(|j| j.kind == JobKind::Backup && j.state.is_active())
        .map(|j| j.vm.as_str())
        .collect();
    for name in policies {
        let Some(policy) = state.policies.get(name) else {
            continue;
        };
        plan.rounds.push(name.clone());
        for vm in state.vms.values() {
            if policy.select.matches(&vm.name, &vm.host, &vm.labels)
                && busy.insert(vm.name.as_str())
            {
                plan.jobs.push(NewJob::backup(
                    vm,
                    Some(name.clone()),
                    policy.repository.clone(),
                ));
            }
        }
    }
    plan
}

/// Name of a policy's GC round.
fn gc_round(policy: &Policy) -> String {
    format!("{}#gc", policy.name)
}

/// GC rounds at `now`: one GC job per repository whose policy's `gc_schedule` is due
/// (the policy's repository and its replication secondary), unless one is already
/// active there; a GC round seen for the first time is recorded as run now, so it
/// first fires at its next time.
pub(super) fn gc_rounds(state: &State, now: u64) -> JobPlan {
    let mut plan = JobPlan::default();
    for policy in state.policies.values() {
        let Some(schedule) = policy
            .gc_schedule
            .as_deref()
            .and_then(|s| Schedule::parse(s).ok())
        else {
            continue;
        };
        let round = gc_round(policy);
        if !is_due(state, &schedule, &round, now) {
            if !state.rounds.contains_key(&round) {
                plan.rounds.push(round);
            }
            continue;
        }
        plan.rounds.push(round);
        let primary = (policy.repository.as_str(), None);
        let secondary = policy
            .replicate_to
            .as_deref()
            .map(|to| (to, Some(policy.repository.clone())));
        for (repository, replica_of) in std::iter::once(primary).chain(secondary) {
            let busy = state
                .active_job(|j| j.kind == JobKind::Gc && j.repository == repository)
                .is_some()
                || plan.jobs.iter().any(|j| j.repository == repository);
            if !busy {
                plan.jobs.push(NewJob::repository_wide(
                    JobKind::Gc,
                    "",
                    Some(policy.name.clone()),
                    repository.to_string(),
                    JobParams {
                        gc_margin_seconds: policy.gc_margin_seconds,
                        replica_of,
                        ..JobParams::default()
                    },
                ));
            }
        }
    }
    plan
}

/// Name of the round that records a VM's last boot test under a policy.
fn boot_round(policy: &Policy, vm: &str) -> String {
    format!("{}#boot:{vm}", policy.name)
}

/// The boot test of the snapshot `backup` committed, when its policy has a
/// `boot_test` whose `every` has passed since the VM's last one (or there was none)
/// and no boot test of the VM is active; with the round it records.
fn boot_test_job(
    state: &State,
    policy: &Policy,
    backup: &JobRecord,
    now: u64,
) -> Option<(String, NewJob)> {
    let setting = policy.boot_test.as_ref()?;
    let (_, timestamp) = backup.snapshot.as_deref()?.split_once('@')?;
    let round = boot_round(policy, &backup.vm);
    let due = state
        .rounds
        .get(&round)
        .is_none_or(|last| now.saturating_sub(*last) >= setting.every_seconds.saturating_mul(1000));
    let active = state
        .active_job(|j| j.kind == JobKind::BootTest && j.vm == backup.vm)
        .is_some();
    (due && !active).then(|| {
        let job = NewJob::repository_wide(
            JobKind::BootTest,
            &backup.vm,
            Some(policy.name.clone()),
            backup.repository.clone(),
            JobParams {
                boot: Some(model::BootTestParams {
                    snapshot: timestamp.to_string(),
                    check: setting.check.clone(),
                    timeout_seconds: setting.timeout_seconds,
                }),
                ..JobParams::default()
            },
        );
        (round, job)
    })
}

/// The follow-up jobs of a committed backup at `now`: prune of the VM by its policy's
/// retention, replication of the repository to the policy's secondary (unless one is
/// waiting to start), prune of the VM's copies there by the replica's retention (unless
/// one is already active),
/// and a boot test of the new snapshot when the policy's `boot_test` is due. The
/// replica's prune sees what earlier replications copied, so it trails the primary's
/// by one backup.
pub(super) fn follow_up_jobs(state: &State, backup: &JobRecord, now: u64) -> JobPlan {
    let mut plan = JobPlan::default();
    let Some(policy) = backup.policy.as_ref().and_then(|p| state.policies.get(p)) else {
        return plan;
    };
    let pruning = |repository: &str| {
        state
            .active_job(|j| {
                j.kind == JobKind::Prune && j.repository == repository && j.vm == backup.vm
            })
            .is_some()
    };
    let prune = |repository: &str, rules: crate::policy::Retention, replica_of: Option<String>| {
        (rules.to_repo().keeps_something() && !pruning(repository)).then(|| {
            NewJob::repository_wide(
                JobKind::Prune,
                &backup.vm,
                Some(policy.name.clone()),
                repository.to_string(),
                JobParams {
                    retention: Some(rules),
                    replica_of,
                    ..JobParams::default()
                },
            )
        })
    };
    let mut jobs = Vec::new();
    jobs.extend(prune(&backup.repository, policy.retention, None));
    if let Some((to, rules)) = policy.replica() {
        let to = to.to_string();
        // A replication already running may have listed the snapshots before this one
        // was published, so only one still waiting to start covers it; a second waits
        // for the first to end (`assignment::plan_assignment`).
        if !replication_queued(state, &backup.repository, &to) {
            jobs.push(NewJob::repository_wide(
                JobKind::Replicate,
                "",
                Some(policy.name.clone()),
                backup.repository.clone(),
                JobParams {
                    replicate_to: Some(to.clone()),
                    ..JobParams::default()
                },
            ));
        }
        jobs.extend(prune(&to, rules, Some(backup.repository.clone())));
    }
    if let Some((round, job)) = boot_test_job(state, policy, backup, now) {
        plan.rounds.push(round);
        jobs.push(job);
    }
    plan.jobs = jobs;
    plan
}

/// Whether a replication of `repository` to `to` is waiting to start: it will list
/// every snapshot published until then.
fn replication_queued(state: &State, repository: &str, to: &str) -> bool {
    state
        .jobs
        .values()
        .any(|job| job.state == JobState::Pending && is_replication_of(job, repository, to))
}

/// Whether `job` replicates `repository` to `to`.
fn is_replication_of(job: &JobRecord, repository: &str, to: &str) -> bool {
    job.kind == JobKind::Replicate
        && job.repository == repository
        && job.params.replicate_to.as_deref() == Some(to)
}

impl Leader {
    /// Replaces the policy set; a new policy's rounds count from now.
    pub async fn apply_policies(&self, policies: Vec<Policy>) -> Result<Vec<String>> {
        let _mutating = self.mutating().await;
        let now = now_ms();
        let ops = {
            let state = self.state();
            let mut ops: Vec<crate::store::Op> = state
                .policies
                .keys()
                .filter(|name| !policies.iter().any(|p| &p.name == *name))
                .map(|name| crate::store::Op::Delete(model::policy_key(name)))
                .collect();
            for policy in &policies {
                ops.push(put_json(model::policy_key(&policy.name), policy)?);
                if !state.rounds.contains_key(&policy.name) {
                    ops.push(put_json(model::round_key(&policy.name), &now)?);
                }
            }
            ops
        };
        self.write_batched(ops).await?;
        let mut state = self.state();
        state.policies = policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        for policy in &policies {
            state.rounds.entry(policy.name.clone()).or_insert(now);
        }
        Ok(policies.into_iter().map(|p| p.name).collect())
    }

    /// Starts a round of `policy` now.
    pub async fn run_policy(&self, policy: &str) -> Result<Vec<String>> {
        let mutating = self.mutating().await;
        let plan = {
            let state = self.state();
            if !state.policies.contains_key(policy) {
                return Err(LeaderError::NotFound(format!("unknown policy {policy:?}")));
            }
            round_jobs(&state, &[policy.to_string()])
        };
        self.apply_plan(&mutating, plan, now_ms()).await
    }

    /// Starts the due backup and GC rounds.
    pub(super) async fn start_rounds(&self, report: &mut TickReport) -> Result<()> {
        let mutating = self.mutating().await;
        let now = now_ms();
        let due = due_rounds(&self.state(), now);
        if !due.is_empty() {
            let plan = round_jobs(&self.state(), &due);
            report.created += self.apply_plan(&mutating, plan, now).await?.len();
        }
        let plan = gc_rounds(&self.state(), now);
        report.created += self.apply_plan(&mutating, plan, now).await?.len();
        Ok(())
    }

    /// Creates the follow-up jobs of a backup that just succeeded.
    pub(super) async fn create_follow_ups(
        &self,
        mutating: &Mutating<'_>,
        backup: &JobRecord,
    ) -> Result<()> {
        let now = now_ms();
        let plan = follow_up_jobs(&self.state(), backup, now);
        if plan.jobs.is_empty() {
            return Ok(());
        }
        self.apply_plan(mutating, plan, now).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{REPOSITORY, assigned_job, policy, state_with, vm};

    const MINUTE: u64 = 60 * 1000;
    /// An hour boundary (hours since the epoch start on one).
    const BASE: u64 = 500_000 * 60 * MINUTE;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_round_is_due_once_its_schedule_fired_after_the_last_one() {
        let mut broken = policy("broken");
        broken.schedule = "every hour".into();
        let mut state = state_with(&[], &[policy("hourly"), policy("new"), broken], &[]);
        state.rounds.insert("hourly".into(), BASE + 30 * MINUTE);
        state.rounds.insert("broken".into(), 0);
        // (now, expected due rounds)
        let cases = [
            (BASE + 59 * MINUTE, vec![]),
            (BASE + 60 * MINUTE, names(&["hourly"])),
            (BASE + 300 * MINUTE, names(&["hourly"])),
        ];
        for (now, expected) in cases {
            assert_eq!(due_rounds(&state, now), expected, "at {now}");
        }
    }

    #[test]
    fn a_round_backs_up_each_selected_vm_without_an_active_backup_once() {
        let mut only_vm1 = policy("only-vm1");
        only_vm1.select.names = vec!["vm1".into()];
        let busy = assigned_job("busy", JobKind::Backup, "vm3", "w1");
        let state = state_with(
            &[vm("vm1", "h1"), vm("vm2", "h2"), vm("vm3", "h1")],
            &[policy("all"), only_vm1],
            &[busy],
        );
        // (policies, expected rounds recorded, expected (VM, policy) of new backups)
        let cases = [
            (
                names(&["all"]),
                names(&["all"]),
                vec![("vm1", "all"), ("vm2", "all")],
            ),
            (
                names(&["only-vm1"]),
                names(&["only-vm1"]),
                vec![("vm1", "only-vm1")],
            ),
            (
                names(&["only-vm1", "all"]),
                names(&["only-vm1", "all"]),
                vec![("vm1", "only-vm1"), ("vm2", "all")],
            ),
            (names(&["unknown"]), vec![], vec![]),
        ];
        for (policies, rounds, jobs) in cases {
            let plan = round_jobs(&state, &policies);
            assert_eq!(plan.rounds, rounds, "{policies:?}");
            let made: Vec<(&str, &str)> = plan
                .jobs
                .iter()
                .map(|j| (j.vm.as_str(), j.policy.as_deref().unwrap_or_default()))
                .collect();
            assert_eq!(made, jobs, "{policies:?}");
            assert!(
                plan.jobs
                    .iter()
                    .all(|j| j.kind == JobKind::Backup && !j.host.is_empty())
            );
        }
    }

    #[test]
    fn gc_rounds_create_one_job_per_repository_when_due() {
        let with_gc = |name: &str, repository: &str| {
            let mut p = policy(name);
            p.gc_schedule = Some("0 * * * *".into());
            p.repository = repository.into();
            p.gc_margin_seconds = 60;
            p
        };
        let now = BASE + 60 * MINUTE;
        let last = BASE + 30 * MINUTE;
        let active_gc = assigned_job("gc", JobKind::Gc, "", "w1");
        // (case, policies, rounds already run, jobs, expected rounds, expected GC repositories)
        let cases = [
            (
                "no gc_schedule",
                vec![policy("p")],
                vec![],
                vec![],
                vec![],
                vec![],
            ),
            (
                "first sight: recorded, not run",
                vec![with_gc("a", "file:///a")],
                vec![],
                vec![],
                names(&["a#gc"]),
                vec![],
            ),
            (
                "not due yet",
                vec![with_gc("a", "file:///a")],
                vec![("a#gc", now)],
                vec![],
                vec![],
                vec![],
            ),
            (
                "due",
                vec![with_gc("a", "file:///a")],
                vec![("a#gc", last)],
                vec![],
                names(&["a#gc"]),
                vec!["file:///a"],
            ),
            (
                "due, one active",
                vec![with_gc("a", REPOSITORY)],
                vec![("a#gc", last)],
                vec![active_gc],
                names(&["a#gc"]),
                vec![],
            ),
            (
                "due, with a replica: both sites collected",
                vec![{
                    let mut p = with_gc("a", "file:///a");
                    p.replicate_to = Some("file:///copy".into());
                    p
                }],
                vec![("a#gc", last)],
                vec![],
                names(&["a#gc"]),
                vec!["file:///a", "file:///copy"],
            ),
            (
                "two policies, one repository",
                vec![with_gc("a", "file:///r"), with_gc("b", "file:///r")],
                vec![("a#gc", last), ("b#gc", last)],
                vec![],
                names(&["a#gc", "b#gc"]),
                vec!["file:///r"],
            ),
        ];
        for (case, policies, rounds, jobs, expected_rounds, repositories) in cases {
            let mut state = state_with(&[], &policies, &jobs);
            for (round, at) in rounds {
                state.rounds.insert(round.to_string(), at);
            }
            let plan = gc_rounds(&state, now);
            assert_eq!(plan.rounds, expected_rounds, "{case}");
            let made: Vec<&str> = plan.jobs.iter().map(|j| j.repository.as_str()).collect();
            assert_eq!(made, repositories, "{case}");
            assert!(
                plan.jobs.iter().all(|j| j.kind == JobKind::Gc
                    && j.host.is_empty()
                    && j.params.gc_margin_seconds == 60
                    && (j.params.replica_of.is_some() == (j.repository == "file:///copy"))),
                "{case}"
            );
        }
    }

    #[test]
    fn a_backup_is_followed_by_its_policys_prune_and_replication() {
        const COPY: &str = "file:///copy";
        let mut keeping = policy("p");
        keeping.repository = REPOSITORY.into();
        keeping.retention.keep_last = 3;
        let mut replicating = keeping.clone();
        replicating.retention.keep_last = 0;
        replicating.replicate_to = Some(COPY.into());
        let mut both = keeping.clone();
        both.replicate_to = Some(COPY.into());
        let mut replica_only = replicating.clone();
        replica_only.replica_retention = Some(crate::policy::Retention {
            keep_daily: 30,
            ..Default::default()
        });
        let mut backup = assigned_job("b", JobKind::Backup, "vm1", "w1");
        backup.policy = Some("p".into());
        let manual = assigned_job("m", JobKind::Backup, "vm1", "w1");
        let active_prune = |repository: &str| {
            let mut job = assigned_job("prune", JobKind::Prune, "vm1", "w1");
            job.policy = Some("p".into());
            job.repository = repository.into();
            job
        };
        let replicating_now = |state: JobState| {
            let mut job = assigned_job("replicate", JobKind::Replicate, "", "w1");
            job.state = state;
            job.params.replicate_to = Some(COPY.into());
            job
        };
        let primary_prune = (JobKind::Prune, REPOSITORY, "vm1");
        let replication = (JobKind::Replicate, REPOSITORY, "");
        let replica_prune = (JobKind::Prune, COPY, "vm1");
        // (case, policy, backup, other jobs, expected follow-ups: kind, repository, VM)
        let cases = [
            ("manual backup", keeping.clone(), &manual, vec![], vec![]),
            (
                "retention",
                keeping.clone(),
                &backup,
                vec![],
                vec![primary_prune],
            ),
            (
                "replication, nothing kept: no prune anywhere",
                replicating.clone(),
                &backup,
                vec![],
                vec![replication],
            ),
            (
                "both: the replica follows the policy's retention",
                both.clone(),
                &backup,
                vec![],
                vec![primary_prune, replication, replica_prune],
            ),
            (
                "a retention of the replica's own",
                replica_only,
                &backup,
                vec![],
                vec![replication, replica_prune],
            ),
            (
                "prune already active at the primary",
                both.clone(),
                &backup,
                vec![active_prune(REPOSITORY)],
                vec![replication, replica_prune],
            ),
            (
                "prune already active at the replica",
                both,
                &backup,
                vec![active_prune(COPY)],
                vec![primary_prune, replication],
            ),
            (
                // Its listing may predate this backup: one more is queued behind it
                // (found by bench/compose-round.py: two VMs never reached site B).
                "replication running",
                replicating.clone(),
                &backup,
                vec![replicating_now(JobState::Assigned)],
                vec![replication],
            ),
            (
                "replication waiting to start: it will list this backup",
                replicating,
                &backup,
                vec![replicating_now(JobState::Pending)],
                vec![],
            ),
        ];
        for (case, policy, backup, jobs, expected) in cases {
            let state = state_with(&[], &[policy], &jobs);
            let follow_ups = follow_up_jobs(&state, backup, BASE).jobs;
            let made: Vec<(JobKind, &str, &str)> = follow_ups
                .iter()
                .map(|j| (j.kind, j.repository.as_str(), j.vm.as_str()))
                .collect();
            assert_eq!(made, expected, "{case}");
            for job in &follow_ups {
                let at_replica = job.repository == COPY;
                assert_eq!(
                    job.params.replica_of.as_deref(),
                    at_replica.then_some(REPOSITORY),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn a_backup_is_boot_tested_when_its_policys_boot_test_is_due() {
        let mut testing = policy("p");
        testing.boot_test = Some(crate::policy::BootTest {
            every_seconds: 3600,
            timeout_seconds: 300,
            check: "agent".into(),
        });
        let mut backup = assigned_job("b", JobKind::Backup, "vm1", "w1");
        backup.policy = Some("p".into());
        backup.repository = "file:///p".into();
        backup.snapshot = Some("vm1@2026-12-07T00:00:00Z".into());
        let active = assigned_job("t", JobKind::BootTest, "vm1", "w1");
        let round = "p#boot:vm1";
        // (case, policy, last boot test of the VM, other jobs, expected boot test)
        let cases = [
            ("no boot_test", policy("p"), None, vec![], false),
            ("never tested", testing.clone(), None, vec![], true),
            (
                "tested within `every`",
                testing.clone(),
                Some(BASE - 59 * MINUTE),
                vec![],
                false,
            ),
            (
                "tested `every` ago",
                testing.clone(),
                Some(BASE - 60 * MINUTE),
                vec![],
                true,
            ),
            ("one active", testing, None, vec![active], false),
        ];
        for (case, policy, last, jobs, expected) in cases {
            let mut state = state_with(&[], &[policy], &jobs);
            if let Some(last) = last {
                state.rounds.insert(round.into(), last);
            }
            let plan = follow_up_jobs(&state, &backup, BASE);
            let tests: Vec<&NewJob> = plan
                .jobs
                .iter()
                .filter(|j| j.kind == JobKind::BootTest)
                .collect();
            assert_eq!(tests.len(), usize::from(expected), "{case}");
            if expected {
                assert_eq!(plan.rounds, names(&[round]), "{case}");
                let params = tests[0].params.boot.as_ref().unwrap();
                assert_eq!(params.snapshot, "2026-12-07T00:00:00Z", "{case}");
                assert_eq!(
                    (params.check.as_str(), params.timeout_seconds),
                    ("agent", 300)
                );
                assert_eq!(tests[0].vm, "vm1", "{case}");
                assert!(tests[0].host.is_empty(), "{case}");
            } else {
                assert!(plan.rounds.is_empty(), "{case}");
            }
        }
    }
}
