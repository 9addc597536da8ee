//! Records for the leader's table tests, built with the fewest fields that matter.

use super::jobs::NewJob;
use super::state::State;
use crate::model::{Attempt, JobKind, JobParams, JobRecord, JobState, VmRecord, WorkerRecord};
use crate::policy::{Policy, Retention, Selector};

/// Repository of every fixture job.
pub(crate) const REPOSITORY: &str = "file:///p";

/// A VM with one disk and no labels.
pub(super) fn vm(name: &str, host: &str) -> VmRecord {
    VmRecord {
        name: name.into(),
        host: host.into(),
        disks: vec![("vda".into(), 1 << 20)],
        labels: Default::default(),
    }
}

/// A policy selecting every VM, hourly, into `file:///NAME`, without retention,
/// replication or GC.
pub(super) fn policy(name: &str) -> Policy {
    Policy {
        name: name.into(),
        schedule: "0 * * * *".into(),
        repository: format!("file:///{name}"),
        select: Selector::default(),
        max_per_host: 10,
        max_per_worker: 10,
        retention: Retention::default(),
        replicate_to: None,
        replica_retention: None,
        gc_schedule: None,
        gc_margin_seconds: 3600,
        rpo_seconds: 7200,
        job_timeout_seconds: crate::policy::DEFAULT_JOB_TIMEOUT_SECONDS,
        boot_test: None,
    }
}

/// A live worker under lease 1.
pub(super) fn worker(id: &str, hosts: &[&str], max_jobs: u32) -> WorkerRecord {
    WorkerRecord {
        id: id.into(),
        instance: format!("instance-{id}"),
        lease: 1,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        max_jobs,
        max_boot_tests: 0,
        registered_unix_ms: 0,
    }
}

/// A manual pending job on `host` ("" for any worker) created at `created`.
pub(crate) fn pending_job(id: &str, kind: JobKind, host: &str, created: u64) -> JobRecord {
    let new = NewJob {
        kind,
        vm: if host.is_empty() {
            String::new()
        } else {
            format!("vm-{id}")
        },
        host: host.into(),
        policy: None,
        repository: REPOSITORY.into(),
        params: JobParams::default(),
    };
    JobRecord {
        id: id.into(),
        ..new.into_record(created)
    }
}

/// A manual job of `vm` (on host `h1`; "" for a repository job) in its first attempt
/// on `worker`, under lease 1 with token 1.
pub(crate) fn assigned_job(id: &str, kind: JobKind, vm: &str, worker: &str) -> JobRecord {
    let mut job = pending_job(id, kind, if vm.is_empty() { "" } else { "h1" }, 1);
    job.vm = vm.into();
    job.state = JobState::Assigned;
    job.attempts.push(Attempt {
        number: 1,
        worker: worker.into(),
        lease: 1,
        token: 1,
        assigned_unix_ms: 1,
        ended_unix_ms: 0,
        outcome: String::new(),
        traceparent: String::new(),
    });
    job
}

/// A backup that ended in `state` at `finished` (0: never recorded).
pub(super) fn finished_job(id: &str, state: JobState, finished: u64) -> JobRecord {
    let mut job = pending_job(id, JobKind::Backup, "h1", 1);
    job.state = state;
    job.finished_unix_ms = finished;
    job
}

/// A state with these VMs, policies and jobs and nothing else.
pub(super) fn state_with(vms: &[VmRecord], policies: &[Policy], jobs: &[JobRecord]) -> State {
    State {
        vms: vms.iter().map(|vm| (vm.name.clone(), vm.clone())).collect(),
        policies: policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect(),
        jobs: jobs
            .iter()
            .map(|job| (job.id.clone(), job.clone()))
            .collect(),
        ..State::default()
    }
}
