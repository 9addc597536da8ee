//! The JSON body of a notification, version 1, and how each event fills it.
//!
//! Every field is always present (`null` when it does not apply), so a receiver can
//! read them without checking for keys; fields are only added within a version.

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::Event;
use super::rpo::RpoChange;
use crate::model::{JobKind, JobRecord};

/// The payload version this coordinator writes.
pub const VERSION: u32 = 1;

/// One notification, as POSTed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Payload version: [`VERSION`].
    pub version: u32,
    /// The same whichever leader sends it (`job_failed/JOB`,
    /// `rpo_breach/VM/LAST_SUCCESS`, `rpo_recovered/VM/LAST_SUCCESS`): the key a
    /// receiver drops duplicates by.
    pub id: String,
    /// What happened.
    pub event: Event,
    /// `[notify] cluster` of the sending coordinator.
    pub cluster: String,
    /// Id of the replica that sent it.
    pub coordinator: String,
    /// When it happened (RFC 3339, UTC): the job's end, or when the leader saw the
    /// RPO crossed.
    pub time: String,
    /// One line for people (chat messages, e-mail subjects).
    pub summary: String,
    /// The VM; `null` for repository-wide jobs (GC, replication).
    pub vm: Option<String>,
    /// The VM's hypervisor host, when known.
    pub host: Option<String>,
    /// The job's policy (a backup's is the first policy selecting its VM, also when
    /// started by `haven job run`), or the VM's policy for RPO events; `null` for
    /// none.
    pub policy: Option<String>,
    /// The repository URL of the job or of the VM's policy.
    pub repository: Option<String>,
    /// The failed job; `null` for RPO events.
    pub job: Option<JobFacts>,
    /// The VM's protection; `null` for job failures.
    pub rpo: Option<RpoFacts>,
}

/// What a failed job was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobFacts {
    /// Job id (`haven job watch ID`).
    pub id: String,
    /// `backup`, `prune`, `gc` or `replicate`.
    pub kind: JobKind,
    /// Attempts it had, the last one included.
    pub attempts: usize,
    /// Why its last attempt failed.
    pub error: String,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it failed (RFC 3339).
    pub finished: String,
    /// A replication's secondary site (`replicate_to`), `null` otherwise.
    pub site: Option<String>,
}

/// A VM's protection when it crossed its RPO.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RpoFacts {
    /// The policy's RPO (`rpo_seconds`).
    pub rpo_seconds: u64,
    /// Seconds since the VM's last success (or since its oldest backup job when it
    /// has none): `haven_vm_rpo_age_seconds`.
    pub age_seconds: u64,
    /// The VM's newest snapshot (RFC 3339), `null` when it has none.
    pub last_success: Option<String>,
}

/// What the sender adds to every notification.
#[derive(Debug, Clone)]
pub(super) struct Context {
    pub cluster: String,
    pub coordinator: String,
}

/// The notification of `job`, which failed for good.
pub(super) fn job_failed(context: &Context, job: &JobRecord) -> Notification {
    let kind = serde_json::to_value(job.kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    let error = job.error.clone().unwrap_or_default();
    let subject = match job.vm.as_str() {
        "" => format!("{kind} job {} of {}", job.id, job.repository),
        vm => format!("{kind} job {} of {vm}", job.id),
    };
    let attempts = job.attempts.len();
    let plural = if attempts == 1 { "" } else { "s" };
    Notification {
        version: VERSION,
        id: format!("{}/{}", Event::JobFailed.name(), job.id),
        event: Event::JobFailed,
        cluster: context.cluster.clone(),
        coordinator: context.coordinator.clone(),
        time: rfc3339_ms(job.finished_unix_ms),
        summary: format!("{subject} failed after {attempts} attempt{plural}: {error}"),
        vm: non_empty(&job.vm),
        host: non_empty(&job.host),
        policy: job.policy.clone(),
        repository: non_empty(&job.repository),
        job: Some(JobFacts {
            id: job.id.clone(),
            kind: job.kind,
            attempts,
            error,
            created: rfc3339_ms(job.created_unix_ms),
            finished: rfc3339_ms(job.finished_unix_ms),
            site: job.params.replicate_to.clone(),
        }),
        rpo: None,
    }
}

/// The notification of an RPO crossing seen at `now_ms`.
pub(super) fn rpo_change(context: &Context, change: &RpoChange, now_ms: u64) -> Notification {
    let last_success = change.last_success_seconds.map(rfc3339_seconds);
    let summary = match change.event {
        Event::RpoRecovered => format!(
            "{} is within its RPO of {} s again (policy {}): last success {}",
            change.vm,
            change.rpo_seconds,
            change.policy,
            last_success.as_deref().unwrap_or("none"),
        ),
        _ => format!(
            "{} has had no successful backup for {} s, past its RPO of {} s (policy {})",
            change.vm, change.age_seconds, change.rpo_seconds, change.policy
        ),
    };
    let since = change
        .last_success_seconds
        .map_or_else(|| "never".to_owned(), |seconds| seconds.to_string());
    Notification {
        version: VERSION,
        id: format!("{}/{}/{since}", change.event.name(), change.vm),
        event: change.event,
        cluster: context.cluster.clone(),
        coordinator: context.coordinator.clone(),
        time: rfc3339_ms(now_ms),
        summary,
        vm: Some(change.vm.clone()),
        host: change.host.clone(),
        policy: Some(change.policy.clone()),
        repository: change.repository.clone(),
        job: None,
        rpo: Some(RpoFacts {
            rpo_seconds: change.rpo_seconds,
            age_seconds: change.age_seconds,
            last_success,
        }),
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// RFC 3339 of Unix milliseconds, to the second.
fn rfc3339_ms(unix_ms: u64) -> String {
    rfc3339_seconds(i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX))
}

/// RFC 3339 of Unix seconds; the epoch for a time out of range.
fn rfc3339_seconds(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::assigned_job;
    use crate::model::JobState;

    /// Unix ms of `2026-12-06T10:00:00Z`.
    const TEN_AM: u64 = 1_796_551_200_000;

    /// A backup of `web1` by policy `gold` that failed on its second attempt.
    fn failed_backup() -> JobRecord {
        let mut job = assigned_job("j1", JobKind::Backup, "web1", "w1");
        job.policy = Some("gold".into());
        job.repository = "file:///r".into();
        job.attempts.push(job.attempts[0].clone());
        job.state = JobState::Failed;
        job.created_unix_ms = TEN_AM;
        job.finished_unix_ms = TEN_AM + 100_000;
        job.error = Some("qmp: connection refused".into());
        job
    }

    fn context() -> Context {
        Context {
            cluster: "prod".into(),
            coordinator: "c1".into(),
        }
    }

    #[test]
    fn a_failed_job_names_what_a_receiver_needs() {
        let job = failed_backup();
        let body = serde_json::to_value(job_failed(&context(), &job)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "version": 1,
                "id": "job_failed/j1",
                "event": "job_failed",
                "cluster": "prod",
                "coordinator": "c1",
                "time": "2026-12-06T10:01:40Z",
                "summary": "backup job j1 of web1 failed after 2 attempts: qmp: connection refused",
                "vm": "web1",
                "host": "h1",
                "policy": "gold",
                "repository": "file:///r",
                "job": {
                    "id": "j1",
                    "kind": "backup",
                    "attempts": 2,
                    "error": "qmp: connection refused",
                    "created": "2026-12-06T10:00:00Z",
                    "finished": "2026-12-06T10:01:40Z",
                    "site": null,
                },
                "rpo": null,
            })
        );
    }

    #[test]
    fn rpo_ids_are_the_same_whichever_leader_sends_them() {
        let change = RpoChange {
            event: Event::RpoBreach,
            vm: "web1".into(),
            policy: "gold".into(),
            rpo_seconds: 60,
            age_seconds: 61,
            last_success_seconds: None,
            host: Some("h1".into()),
            repository: Some("file:///r".into()),
        };
        let breach = rpo_change(&context(), &change, TEN_AM);
        assert_eq!(breach.id, "rpo_breach/web1/never");
        assert_eq!(breach.time, "2026-12-06T10:00:00Z");
        assert_eq!(
            breach.summary,
            "web1 has had no successful backup for 61 s, past its RPO of 60 s (policy gold)"
        );
        let recovered = RpoChange {
            event: Event::RpoRecovered,
            last_success_seconds: Some((TEN_AM / 1000) as i64),
            age_seconds: 5,
            ..change
        };
        let recovered = rpo_change(&context(), &recovered, TEN_AM + 5_000);
        assert_eq!(recovered.id, "rpo_recovered/web1/1796551200");
        assert_eq!(
            recovered.rpo.unwrap().last_success.as_deref(),
            Some("2026-12-06T10:00:00Z")
        );
    }
}
