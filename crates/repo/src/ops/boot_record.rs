//! Boot records: whether a snapshot's disks booted, kept in the repository.
//!
//! `haven verify --boot` starts the snapshot in a sandbox and decides with a check
//! (the guest agent answers, a console pattern appears). Like a verify record, the
//! verdict cannot go into the create-only manifest, so it lives beside it: one run is
//! a folder `boot/VM/SNAPSHOT/BOOTED_AT/` holding the sealed `record` (blob kind 5) and
//! its evidence, the serial log and the screenshot (`serial.log`, `screen.png`, blob
//! kind 6), each bound to its key. The newest run (by `BOOTED_AT`) is the current
//! verdict. A failed boot only adds a record: nothing is ever deleted because of it.
//! Records are local to the repository (replication copies none), as a boot test says
//! something about this site's copies.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{RepoError, Result};
use crate::format::blob::{self, BlobKind};
use crate::format::manifest::{SnapshotId, format_timestamp};
use crate::repository::Repository;
use crate::storage::backend::{Durability, PutOutcome};

/// Version of the boot record document.
pub const BOOT_RECORD_VERSION: u32 = 1;
const MAX_RECORD_LEN: u64 = 1024 * 1024;
/// Largest evidence object read back (a serial log tail or a screenshot).
pub const MAX_EVIDENCE_LEN: u64 = 16 * 1024 * 1024;
/// Name of the serial log in a run's folder.
pub const SERIAL_LOG: &str = "serial.log";
/// Name of the screenshot in a run's folder.
pub const SCREENSHOT: &str = "screen.png";

/// Verdict of one boot test.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BootOutcome {
    /// The check passed before the timeout.
    Passed,
    /// The check did not pass: the guest stopped, the timeout ran out, or the sandbox
    /// could not start it (the reason says which).
    Failed,
}

/// The stored result of boot-testing one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootRecord {
    /// Document version, [`BOOT_RECORD_VERSION`].
    pub version: u32,
    /// VM of the snapshot.
    pub vm: String,
    /// Timestamp of the snapshot.
    pub snapshot: String,
    /// When the test finished (RFC 3339 UTC, whole seconds); also the run's folder.
    pub booted_at: String,
    /// The verdict.
    pub outcome: BootOutcome,
    /// The check that decided, as the user gave it (`agent`, `serial:REGEX`).
    pub check: String,
    /// From the sandbox's start to the verdict, in milliseconds.
    pub duration_ms: u64,
    /// Why it failed, or what passed.
    pub detail: String,
    /// How the guest was started (kernel, root device, CPUs, memory).
    pub sandbox: String,
    /// Keys of the evidence stored with this record (serial log, screenshot).
    pub evidence: Vec<String>,
}

impl BootRecord {
    /// Whether the snapshot failed its boot test.
    pub fn is_failed(&self) -> bool {
        self.outcome == BootOutcome::Failed
    }
}

/// Evidence captured while the guest ran.
#[derive(Debug, Clone, Default)]
pub struct BootEvidence {
    /// The serial console's output (the tail, when it was long).
    pub serial_log: Vec<u8>,
    /// A screenshot of the display (PNG), when QEMU could take one.
    pub screenshot_png: Option<Vec<u8>>,
}

fn snapshot_prefix(snapshot: &SnapshotId) -> String {
    format!("boot/{}/{}", snapshot.vm, snapshot.timestamp)
}

async fn put_sealed(repo: &Repository, key: &str, kind: BlobKind, plain: &[u8]) -> Result<bool> {
    let sealed = blob::seal(repo.keys().blob_cipher(), kind, key.as_bytes(), plain)?;
    Ok(matches!(
        repo.backend()
            .put_if_absent(key, sealed.into(), Durability::Immediate)
            .await?,
        PutOutcome::Created
    ))
}

/// Stores a boot test of `snapshot`: its evidence first, then the record naming it
/// (the record is the commit point, so a listed record's evidence exists). A run of
/// the same second is never replaced: the time moves one second later instead.
/// Returns the record's key.
pub async fn write_boot_record(
    repo: &Repository,
    snapshot: &SnapshotId,
    mut record: BootRecord,
    evidence: &BootEvidence,
) -> Result<String> {
    let mut time = OffsetDateTime::now_utc();
    for _ in 0..10 {
        record.booted_at = format_timestamp(time);
        let folder = format!("{}/{}", snapshot_prefix(snapshot), record.booted_at);
        let record_key = format!("{folder}/record");
        if repo.backend().exists(&record_key).await? {
            time += std::time::Duration::from_secs(1);
            continue;
        }
        record.evidence.clear();
        let pieces = [
            (SERIAL_LOG, Some(&evidence.serial_log)),
            (SCREENSHOT, evidence.screenshot_png.as_ref()),
        ];
        for (name, data) in pieces {
            let Some(data) = data else { continue };
            let key = format!("{folder}/{name}");
            // A leftover of an interrupted run of the same second is simply replaced
            // by a new name: evidence is only reachable through a record.
            if put_sealed(repo, &key, BlobKind::BootEvidence, data).await? {
                record.evidence.push(key);
            }
        }
        let plain = serde_json::to_vec(&record).map_err(|error| RepoError::Io {
            context: "json encoding failed".into(),
            source: std::io::Error::other(error),
        })?;
        if put_sealed(repo, &record_key, BlobKind::BootRecord, &plain).await? {
            return Ok(record_key);
        }
        time += std::time::Duration::from_secs(1);
    }
    Err(RepoError::AlreadyExists(snapshot_prefix(snapshot)))
}

/// The newest boot record of `snapshot`, `None` if it was never boot-tested.
///
/// An unreadable or forged record is an error, never a silent "not tested".
pub async fn latest_boot_record(
    repo: &Repository,
    snapshot: &SnapshotId,
) -> Result<Option<BootRecord>> {
    let prefix = snapshot_prefix(snapshot);
    let Some(key) = super::verify_record::newest_run(repo, &prefix, "/record").await? else {
        return Ok(None);
    };
    let plain = read_sealed(repo, &key, BlobKind::BootRecord, MAX_RECORD_LEN).await?;
    let record: BootRecord = serde_json::from_slice(&plain)
        .map_err(|error| RepoError::corrupt(&key, format!("bad boot record: {error}")))?;
    if record.version != BOOT_RECORD_VERSION
        || record.vm != snapshot.vm
        || record.snapshot != snapshot.timestamp
        || !key.ends_with(&format!("/{}/record", record.booted_at))
    {
        return Err(RepoError::corrupt(
            &key,
            "boot record names another snapshot, run or version",
        ));
    }
    Ok(Some(record))
}

/// Reads one evidence object a [`BootRecord`] names.
pub async fn read_boot_evidence(repo: &Repository, key: &str) -> Result<Vec<u8>> {
    if !key.starts_with("boot/") {
        return Err(RepoError::corrupt(key, "not a boot evidence key"));
    }
    read_sealed(repo, key, BlobKind::BootEvidence, MAX_EVIDENCE_LEN).await
}

async fn read_sealed(repo: &Repository, key: &str, kind: BlobKind, max: u64) -> Result<Vec<u8>> {
    let stored = repo.backend().get(key, max + 1024).await?;
    blob::open(
        repo.keys().blob_cipher(),
        key,
        kind,
        key.as_bytes(),
        &stored,
        max,
    )
}
