//! Verify records: what `haven verify` found about one snapshot, kept in the repository.
//!
//! Manifests are create-only, so a verification result cannot be written into the
//! snapshot it judges. It lives beside it instead, as its own sealed object
//! `verify/VM/SNAPSHOT/VERIFIED_AT` (blob kind 4, bound to its key like an index), one
//! per run, the newest (by `VERIFIED_AT`) being the current verdict. The backup path
//! reads it through [`latest_verify_record`] so a snapshot that failed verification is
//! never used as the base of an incremental. Records are local to a repository: the
//! verdict is about this site's copies, so replication does not copy them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{RepoError, Result};
use crate::format::blob::{self, BlobKind};
use crate::format::manifest::{SnapshotId, format_timestamp, parse_timestamp};
use crate::ops::verify::VerifyFailure;
use crate::repository::Repository;
use crate::storage::backend::{Durability, PutOutcome};

/// Version of the verify record document.
pub const VERIFY_RECORD_VERSION: u32 = 1;
/// At most this many failures are kept in a record (the count is always exact).
pub const MAX_RECORDED_FAILURES: usize = 100;
const MAX_RECORD_LEN: u64 = 1024 * 1024;

/// Verdict of one verification of one snapshot.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyOutcome {
    /// Every object checked was intact (possibly after repair).
    Passed,
    /// At least one object was missing or corrupt and was not repaired.
    Failed,
}

/// The stored result of verifying one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyRecord {
    /// Document version, [`VERIFY_RECORD_VERSION`].
    pub version: u32,
    /// VM of the snapshot.
    pub vm: String,
    /// Timestamp of the snapshot.
    pub snapshot: String,
    /// When the verification finished (RFC 3339 UTC, whole seconds); also the key's last
    /// segment.
    pub verified_at: String,
    /// The verdict.
    pub outcome: VerifyOutcome,
    /// Percentage of the snapshot's distinct chunks that were eligible for checking
    /// (100 unless `--sample`).
    pub sample_percent: f64,
    /// Chunks read in this run for this snapshot (chunks already checked for the
    /// previous snapshot of the VM in the same run are not read twice).
    pub chunks_checked: u64,
    /// Objects rewritten from a replica.
    pub repaired: u64,
    /// Number of failures (exact).
    pub failures_total: u64,
    /// The first [`MAX_RECORDED_FAILURES`] failures.
    pub failures: Vec<VerifyFailure>,
}

impl VerifyRecord {
    /// Whether the snapshot must not be trusted as a base.
    pub fn is_failed(&self) -> bool {
        self.outcome == VerifyOutcome::Failed
    }
}

fn record_prefix(snapshot: &SnapshotId) -> String {
    format!("verify/{}/{}", snapshot.vm, snapshot.timestamp)
}

/// Stores a record for `snapshot`, create-only; a record of the same second is not
/// replaced: the time moves one second later instead.
pub async fn write_verify_record(
    repo: &Repository,
    snapshot: &SnapshotId,
    mut record: VerifyRecord,
) -> Result<String> {
    let mut time = OffsetDateTime::now_utc();
    for _ in 0..10 {
        record.verified_at = format_timestamp(time);
        let key = format!("{}/{}", record_prefix(snapshot), record.verified_at);
        let plain = serde_json::to_vec(&record).map_err(|error| RepoError::Io {
            context: "json encoding failed".into(),
            source: std::io::Error::other(error),
        })?;
        let sealed = blob::seal(
            repo.keys().blob_cipher(),
            BlobKind::VerifyRecord,
            key.as_bytes(),
            &plain,
        )?;
        match repo
            .backend()
            .put_if_absent(&key, sealed.into(), Durability::Immediate)
            .await?
        {
            PutOutcome::Created => return Ok(key),
            PutOutcome::AlreadyExisted => time += std::time::Duration::from_secs(1),
        }
    }
    Err(RepoError::AlreadyExists(record_prefix(snapshot)))
}

/// The key `prefix/TIME SUFFIX` with the newest `TIME` (a canonical timestamp), the
/// newest run of a per-snapshot record (verify's, a boot test's); keys of another
/// shape are skipped.
pub(super) async fn newest_run(
    repo: &Repository,
    prefix: &str,
    suffix: &str,
) -> Result<Option<String>> {
    let mut newest: Option<(OffsetDateTime, String)> = None;
    for key in repo.backend().list(prefix).await? {
        let Some(time) = key
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('/'))
            .and_then(|rest| rest.strip_suffix(suffix))
            .and_then(|run| parse_timestamp(run).ok())
        else {
            continue;
        };
        if newest.as_ref().is_none_or(|(best, _)| time > *best) {
            newest = Some((time, key));
        }
    }
    Ok(newest.map(|(_, key)| key))
}

/// The newest verify record of `snapshot`, `None` if it was never verified.
///
/// An unreadable or forged record is an error: callers deciding whether to trust a
/// snapshot treat that as doubt.
pub async fn latest_verify_record(
    repo: &Repository,
    snapshot: &SnapshotId,
) -> Result<Option<VerifyRecord>> {
    let prefix = record_prefix(snapshot);
    let Some(key) = newest_run(repo, &prefix, "").await? else {
        return Ok(None);
    };
    let stored = repo.backend().get(&key, MAX_RECORD_LEN).await?;
    let plain = blob::open(
        repo.keys().blob_cipher(),
        &key,
        BlobKind::VerifyRecord,
        key.as_bytes(),
        &stored,
        MAX_RECORD_LEN,
    )?;
    let record: VerifyRecord = serde_json::from_slice(&plain)
        .map_err(|error| RepoError::corrupt(&key, format!("bad verify record: {error}")))?;
    if record.version != VERIFY_RECORD_VERSION
        || record.vm != snapshot.vm
        || record.snapshot != snapshot.timestamp
    {
        return Err(RepoError::corrupt(
            &key,
            "verify record names another snapshot or version",
        ));
    }
    Ok(Some(record))
}
