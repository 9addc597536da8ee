//! What the coordinator stores, and under which keys.
//!
//! ```text
//! /haven/leader             URL of the leading replica      (leader's lease)
//! /haven/workers/ID         WorkerRecord                    (worker's lease)
//! /haven/vms/NAME           VmRecord: last reported inventory
//! /haven/policies/NAME      Policy
//! /haven/policy-rounds/NAME last scheduled round, Unix ms
//! /haven/jobs/ID            JobRecord
//! /haven/owners/ID          worker id                       (worker's lease; the
//!                           key's mod_revision is the job's fencing token)
//! /haven/snapshots/VM/TS    SnapshotRecord: the catalog
//! ```
//!
//! Values are JSON: small, debuggable with `etcdctl get`, and tolerant of added fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::store::LeaseId;

/// Root of every key.
pub const ROOT: &str = "/haven/";

/// The leader key.
pub fn leader_key() -> String {
    format!("{ROOT}leader")
}

/// Key of a worker's registration.
pub fn worker_key(id: &str) -> String {
    format!("{ROOT}workers/{id}")
}

/// Key of a VM's inventory record.
pub fn vm_key(name: &str) -> String {
    format!("{ROOT}vms/{name}")
}

/// Key of a policy.
pub fn policy_key(name: &str) -> String {
    format!("{ROOT}policies/{name}")
}

/// Key of a policy's last scheduled round.
pub fn round_key(name: &str) -> String {
    format!("{ROOT}policy-rounds/{name}")
}

/// Key of a job record.
pub fn job_key(id: &str) -> String {
    format!("{ROOT}jobs/{id}")
}

/// Key of a job's ownership (bound to the owner's lease).
pub fn owner_key(id: &str) -> String {
    format!("{ROOT}owners/{id}")
}

/// Key of a catalog entry.
pub fn snapshot_key(vm: &str, timestamp: &str) -> String {
    format!("{ROOT}snapshots/{vm}/{timestamp}")
}

/// Key of an API token's record.
pub fn token_key(name: &str) -> String {
    format!("{ROOT}tokens/{name}")
}

/// Largest time an audit key can hold (milliseconds, 15 digits: the year 33658).
const AUDIT_MAX_MS: u64 = 999_999_999_999_999;

/// Key of an audit record: the time counted back from [`AUDIT_MAX_MS`] (zero-padded),
/// so keys sort **newest first**. `haven audit` wants the newest records, and a store
/// serves the first keys of a range cheaply (etcd sorts a descending read in memory
/// over the whole range); expiry reads the oldest from the other end.
pub fn audit_key(unix_ms: u64, unique: &str) -> String {
    format!(
        "{ROOT}audit/{:015}-{unique}",
        AUDIT_MAX_MS - unix_ms.min(AUDIT_MAX_MS)
    )
}

/// The audit keys of records at `unix_ms` and later sort before this bound (`.`
/// sorts after the `-` that follows the time); those before `unix_ms` sort after it.
pub fn audit_bound(unix_ms: u64) -> String {
    format!(
        "{ROOT}audit/{:015}.",
        AUDIT_MAX_MS - unix_ms.min(AUDIT_MAX_MS)
    )
}

/// The first key after every audit key.
pub fn audit_end() -> String {
    format!("{ROOT}audit0")
}

/// Prefix of a kind of record (`"jobs/"`, `"workers/"`, ...).
pub fn prefix(kind: &str) -> String {
    format!("{ROOT}{kind}")
}

/// A live worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    /// Worker id from its configuration.
    pub id: String,
    /// Random per worker process.
    pub instance: String,
    /// The lease its ownerships live under.
    pub lease: LeaseId,
    /// Hypervisor hosts it reaches.
    pub hosts: Vec<String>,
    /// Jobs it runs at once.
    pub max_jobs: u32,
    /// Boot tests it runs at once (among `max_jobs`); 0: not limited here.
    #[serde(default)]
    pub max_boot_tests: u32,
    /// When it registered.
    pub registered_unix_ms: u64,
}

/// A VM as last reported by a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    /// VM name (unique in the cluster).
    pub name: String,
    /// Hypervisor host.
    pub host: String,
    /// Disks, name and size in bytes.
    pub disks: Vec<(String, u64)>,
    /// Labels for policy selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Lifecycle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Pending,
    /// Owned by the worker of the last attempt.
    Assigned,
    /// Commit accepted; manifest being published.
    Committing,
    /// Snapshot published.
    Succeeded,
    /// Given up.
    Failed,
}

impl JobState {
    /// Its name in records and the web console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Assigned => "assigned",
            Self::Committing => "committing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Pending, assigned or committing: the VM has a job in progress.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Assigned | Self::Committing)
    }
}

/// What a job does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Back up a VM (needs a worker that reaches its host).
    #[default]
    Backup,
    /// Apply the policy's retention to the VM's snapshots.
    Prune,
    /// Collect garbage in the repository.
    Gc,
    /// Copy the repository to the policy's secondary site.
    Replicate,
    /// Boot a snapshot in a sandbox and record whether it came up.
    BootTest,
}

impl JobKind {
    /// Its name in records and the web console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Prune => "prune",
            Self::Gc => "gc",
            Self::Replicate => "replicate",
            Self::BootTest => "boot_test",
        }
    }
}

/// Parameters of the non-backup kinds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobParams {
    /// Prune: the retention rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<crate::policy::Retention>,
    /// Replicate: the secondary repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicate_to: Option<String>,
    /// GC: the safety margin in seconds.
    #[serde(default)]
    pub gc_margin_seconds: u64,
    /// Prune and GC of a replication secondary: the primary repository it copies.
    /// The job uses the secondary site's keys, and a prune leaves tombstones so the
    /// next replication does not bring back what it removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_of: Option<String>,
    /// Boot test: the snapshot and how it is judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<BootTestParams>,
}

/// What a boot-test job boots and how it decides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTestParams {
    /// Timestamp of the job's VM's snapshot to boot.
    pub snapshot: String,
    /// `agent`, `serial:TEXT` or `tcp:PORT` (see `haven verify --boot`).
    pub check: String,
    /// How long the guest has to pass the check.
    pub timeout_seconds: u64,
}

/// One try of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1, 2, ...
    pub number: u32,
    /// Worker id.
    pub worker: String,
    /// The worker's lease when assigned.
    pub lease: LeaseId,
    /// Revision of the ownership key: the fencing token.
    pub token: i64,
    /// When assigned.
    pub assigned_unix_ms: u64,
    /// When it ended; 0 while running.
    pub ended_unix_ms: u64,
    /// How it ended.
    pub outcome: String,
    /// W3C trace context of the span that assigned it, handed to the worker with the
    /// job so the attempt is one trace; kept in the record because a worker may poll
    /// a later leader than the one that assigned it. Empty when traces are off.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub traceparent: String,
}

/// A manifest accepted by the fenced commit, waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommit {
    /// `snapshots/VM/TS` in the repository.
    pub manifest_key: String,
    /// The sealed manifest, hex.
    pub manifest_hex: String,
    /// The fencing token the commit was accepted under.
    pub token: i64,
}

/// A backup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Job id.
    pub id: String,
    /// What it does.
    #[serde(default)]
    pub kind: JobKind,
    /// Parameters of prune, GC and replication jobs.
    #[serde(default)]
    pub params: JobParams,
    /// What a prune, GC, replication or boot-test job did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// A boot test that completed: whether the snapshot came up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_passed: Option<bool>,
    /// VM backed up or pruned; empty for repository-wide jobs (GC, replication).
    pub vm: String,
    /// The VM's host when the job was created; empty: any worker may run it.
    pub host: String,
    /// Scheduling policy; `None` for `haven job run`.
    pub policy: Option<String>,
    /// Repository URL.
    pub repository: String,
    /// Lifecycle state.
    pub state: JobState,
    /// Tries so far, the last one current.
    pub attempts: Vec<Attempt>,
    /// Creation time.
    pub created_unix_ms: u64,
    /// End time, 0 while active.
    pub finished_unix_ms: u64,
    /// `VM@TS` once committed.
    pub snapshot: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes the worker stored.
    pub bytes_uploaded: u64,
    /// Set while committing.
    pub commit: Option<PendingCommit>,
    /// A pending job is not assigned before this time (Unix ms; 0: at once): the
    /// backoff after a retryable failure, so a short outage does not use up every
    /// attempt in seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub not_before_unix_ms: u64,
}

/// Whether a number field holds its default and need not be stored.
fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl JobRecord {
    /// The current attempt, if assigned at least once.
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last()
    }

    /// Ends the current attempt.
    pub fn end_attempt(&mut self, now: u64, outcome: impl Into<String>) {
        if let Some(attempt) = self.attempts.last_mut()
            && attempt.ended_unix_ms == 0
        {
            attempt.ended_unix_ms = now;
            attempt.outcome = outcome.into();
        }
    }
}

/// A catalog entry written with the commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// VM.
    pub vm: String,
    /// Snapshot timestamp.
    pub timestamp: String,
    /// Repository URL.
    pub repository: String,
    /// Disks, name and size in bytes.
    pub disks: Vec<(String, u64)>,
    /// Bytes stored by the job.
    pub bytes_uploaded: u64,
    /// The job.
    pub job_id: String,
    /// Bytes the job read from the disks (0 in records of older versions).
    #[serde(default)]
    pub bytes_read: u64,
    /// Plaintext bytes of the chunks the job uploaded (0 in older records).
    #[serde(default)]
    pub bytes_new: u64,
    /// When the leader accepted the commit (0 in older records): a replication that
    /// started later copied this snapshot, which the replication lag relies on.
    #[serde(default)]
    pub committed_unix_ms: u64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A fresh random id with a prefix (`job-1a2b...`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", hex::encode(rand::random::<[u8; 8]>()))
}
