//! Counters of ended jobs, updated where the cache learns that a job stopped running
//! ([`State::stopped`](super::state::State::stopped)): the one place every ended
//! attempt passes, whether it failed, completed, committed or lost its worker.
//!
//! They are counters, not gauges over the job history, so an alert on
//! `rate(haven_jobs_total{result="failed"}[1h])` resolves once jobs succeed again
//! instead of staying high until failed records expire. They count what this
//! replica saw while it led: a new leader starts from zero, which `rate` and
//! `increase` read as a counter reset.

use haven_metrics::{Counter, Family, Histogram, Registry};

use crate::model::{JobKind, JobRecord, JobState, SnapshotRecord};

/// Upper bounds (seconds) of the job duration buckets: a GC of a small repository
/// takes seconds, a full backup of a large VM hours.
const DURATION_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
    86400.0,
];

/// Labels of an ended job: its kind and how it ended.
type KindAndResult = [(&'static str, &'static str); 2];

/// Label of a job's kind.
type KindLabel = [(&'static str, &'static str); 1];

/// A duration histogram with [`DURATION_BUCKETS`], as a family constructs it.
type DurationFamily = Family<KindLabel, Histogram, fn() -> Histogram>;

/// Job counters, shared by every leader term of one replica (cheap to clone: the
/// handles point at the same values).
#[derive(Debug, Clone)]
pub struct JobMetrics {
    jobs: Family<KindAndResult, Counter>,
    retries: Family<KindLabel, Counter>,
    duration: DurationFamily,
    read_bytes: Counter,
    new_bytes: Counter,
    uploaded_bytes: Counter,
    boot_tests: Family<ResultLabel, Counter>,
}

/// Label of a boot test's verdict.
type ResultLabel = [(&'static str, &'static str); 1];

impl Default for JobMetrics {
    /// Counters registered nowhere, for leaders whose metrics nobody scrapes (tests,
    /// the scale benchmark).
    fn default() -> Self {
        Self {
            jobs: Family::default(),
            retries: Family::default(),
            duration: DurationFamily::new_with_constructor(|| Histogram::new(DURATION_BUCKETS)),
            read_bytes: Counter::default(),
            new_bytes: Counter::default(),
            uploaded_bytes: Counter::default(),
            boot_tests: Family::default(),
        }
    }
}

impl JobMetrics {
    /// Registers the counters in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        Self {
            jobs: registry.register(
                "haven_jobs",
                "Jobs that ended while this replica led, by kind and result (succeeded or failed)",
                metrics.jobs,
            ),
            retries: registry.register(
                "haven_job_retries",
                "Attempts that ended without finishing their job, which went back to pending, by kind",
                metrics.retries,
            ),
            duration: registry.register(
                "haven_job_duration_seconds",
                "Time from a job's first assignment to its end, by kind",
                metrics.duration,
            ),
            read_bytes: registry.register(
                "haven_backup_read_bytes",
                "Bytes committed backups read from VM disks",
                metrics.read_bytes,
            ),
            new_bytes: registry.register(
                "haven_backup_new_bytes",
                "Plaintext bytes of the chunks committed backups added to their repository",
                metrics.new_bytes,
            ),
            uploaded_bytes: registry.register(
                "haven_backup_uploaded_bytes",
                "Bytes committed backups uploaded (compressed and encrypted)",
                metrics.uploaded_bytes,
            ),
            boot_tests: registry.register(
                "haven_boot_tests",
                "Boot tests that reached a verdict while this replica led, by result (passed or failed)",
                metrics.boot_tests,
            ),
        }
    }

    /// Counts `job`, whose attempt just ended; `snapshot` is the catalog entry a
    /// committed backup wrote.
    pub(super) fn attempt_ended(&self, job: &JobRecord, snapshot: Option<&SnapshotRecord>) {
        let kind = kind_name(job.kind);
        let result = match job.state {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Pending => {
                self.retries.get_or_create(&[("kind", kind)]).inc();
                return;
            }
            JobState::Assigned | JobState::Committing => return,
        };
        self.jobs
            .get_or_create(&[("kind", kind), ("result", result)])
            .inc();
        let started = job
            .attempts
            .first()
            .map_or(job.created_unix_ms, |attempt| attempt.assigned_unix_ms);
        let seconds = job.finished_unix_ms.saturating_sub(started) as f64 / 1000.0;
        self.duration
            .get_or_create(&[("kind", kind)])
            .observe(seconds);
        if let Some(passed) = job.boot_passed.filter(|_| job.state == JobState::Succeeded) {
            let result = if passed { "passed" } else { "failed" };
            self.boot_tests.get_or_create(&[("result", result)]).inc();
        }
        if let Some(snapshot) = snapshot.filter(|_| job.state == JobState::Succeeded) {
            self.read_bytes.inc_by(snapshot.bytes_read);
            self.new_bytes.inc_by(snapshot.bytes_new);
            self.uploaded_bytes.inc_by(snapshot.bytes_uploaded);
        }
    }
}

/// The `kind` label of a job kind.
pub(super) fn kind_name(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Backup => "backup",
        JobKind::Prune => "prune",
        JobKind::Gc => "gc",
        JobKind::Replicate => "replicate",
        JobKind::BootTest => "boot_test",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{assigned_job, finished_job};
    use crate::model::Attempt;

    fn snapshot() -> SnapshotRecord {
        SnapshotRecord {
            vm: "vm-a".into(),
            timestamp: "2026-12-06T10:00:00Z".into(),
            repository: "file:///p".into(),
            disks: Vec::new(),
            bytes_uploaded: 30,
            job_id: "a".into(),
            bytes_read: 100,
            bytes_new: 40,
            committed_unix_ms: 0,
        }
    }

    #[test]
    fn ends_are_counted_by_kind_and_result_and_retries_apart() {
        let mut registry = Registry::new();
        let metrics = JobMetrics::register(&mut registry);
        let mut committed = finished_job("a", JobState::Succeeded, 91_000);
        committed.attempts.push(Attempt {
            number: 1,
            worker: "w".into(),
            lease: 1,
            token: 1,
            assigned_unix_ms: 1_000,
            ended_unix_ms: 91_000,
            outcome: "succeeded".into(),
            traceparent: String::new(),
        });
        metrics.attempt_ended(&committed, Some(&snapshot()));
        let mut failed = finished_job("b", JobState::Failed, 2_000);
        failed.kind = JobKind::Replicate;
        metrics.attempt_ended(&failed, None);
        let mut booted = finished_job("d", JobState::Succeeded, 2_000);
        booted.kind = JobKind::BootTest;
        booted.boot_passed = Some(false);
        metrics.attempt_ended(&booted, None);
        let mut requeued = assigned_job("c", JobKind::Gc, "", "w");
        requeued.state = JobState::Pending;
        metrics.attempt_ended(&requeued, None);
        let text = registry.encode().unwrap();
        for line in [
            "haven_jobs_total{kind=\"backup\",result=\"succeeded\"} 1\n",
            "haven_jobs_total{kind=\"replicate\",result=\"failed\"} 1\n",
            "haven_job_retries_total{kind=\"gc\"} 1\n",
            // 90 s from assignment to the end: in the 120 s bucket, not the 60 s one.
            "haven_job_duration_seconds_bucket{kind=\"backup\",le=\"60\"} 0\n",
            "haven_job_duration_seconds_bucket{kind=\"backup\",le=\"120\"} 1\n",
            "haven_job_duration_seconds_sum{kind=\"backup\"} 90.0\n",
            "haven_backup_read_bytes_total 100\n",
            "haven_backup_new_bytes_total 40\n",
            "haven_backup_uploaded_bytes_total 30\n",
            "haven_jobs_total{kind=\"boot_test\",result=\"succeeded\"} 1\n",
            "haven_boot_tests_total{result=\"failed\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in {text}");
        }
        assert!(!text.contains("kind=\"gc\",result"), "{text}");
    }
}
