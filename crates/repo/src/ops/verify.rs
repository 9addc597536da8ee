//! Verification: re-read every object a snapshot depends on and check it end to end.
//!
//! A snapshot verifies when its manifest and indexes authenticate and every chunk they
//! name exists, passes its checksum, decrypts, and hashes back to its id. Chunks are read
//! in parallel (`buffer_unordered`, at most `concurrency` in flight) and the CPU work
//! runs on blocking threads.
//!
//! Memory is bounded by the largest snapshot, not by the repository: snapshots are taken
//! one at a time, in (VM, time) order; a snapshot's distinct chunk ids are a sorted,
//! deduplicated `Vec` (32 bytes per chunk, 64 MiB for a 1 TiB disk of 512 KiB chunks),
//! and the only state carried over is the previous snapshot's sorted ids of the same VM:
//! an id already checked there (and found good) is not read again. Incrementals share
//! nearly all their chunks with their predecessor, so each chunk is read about once; a
//! chunk shared by snapshots of different VMs may be read once per VM.
//!
//! Each snapshot's verdict is stored as a verify record ([`crate::ops::verify_record`]), which
//! the backup path consults before building on a snapshot. With a replica (a second
//! repository with the same key), bad objects are repaired ([`crate::ops::repair`]).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::manifest::SnapshotId;
use crate::ops::repair::{repair_chunk, repair_index, repair_manifest};
use crate::ops::verify_record::{
    MAX_RECORDED_FAILURES, VERIFY_RECORD_VERSION, VerifyOutcome, VerifyRecord, write_verify_record,
};
use crate::progress::Progress;
use crate::repository::Repository;

/// One object that failed verification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Key of the bad or missing object.
    pub object: String,
    /// What was wrong with it.
    pub reason: String,
}

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Chunks read and checked at once.
    pub concurrency: usize,
    /// Percentage (0 < p ≤ 100) of each snapshot's distinct chunks to check; chunks are
    /// picked by a per-run random seed, so repeated runs cover different chunks.
    pub sample_percent: f64,
    /// A replica holding the same repository: bad objects are copied from it, checked,
    /// written over the bad ones and checked again.
    pub repair_from: Option<Arc<Repository>>,
    /// Store a verify record per snapshot (off only for read-only inspection).
    pub record: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            concurrency: 8,
            sample_percent: 100.0,
            repair_from: None,
            record: true,
        }
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotVerdict {
    /// `VM@TIME`.
    pub snapshot: String,
    /// Passed or failed.
    pub outcome: VerifyOutcome,
    /// Chunks read for this snapshot.
    pub chunks_checked: u64,
    /// Objects repaired from the replica.
    pub repaired: u64,
    /// Failures left after repair.
    pub failures: usize,
    /// Key of the stored verify record, if one was written.
    pub record: Option<String>,
}

/// Outcome of a verification run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots examined, as `VM@TIME`.
    pub snapshots: Vec<String>,
    /// Verdict per snapshot, in the same order.
    pub verdicts: Vec<SnapshotVerdict>,
    /// Distinct chunks read and checked.
    pub chunks_checked: u64,
    /// Stored bytes of those chunks.
    pub bytes_checked: u64,
    /// Objects rewritten from the replica (each then re-verified).
    pub repaired: Vec<String>,
    /// Everything that failed and was not repaired; empty when the snapshots verify.
    pub failures: Vec<VerifyFailure>,
    /// Snapshots asked for whose manifest was gone once their objects had failed: a
    /// prune or `forget` removed them during the run (and a collection their chunks),
    /// which is no damage. They have no verdict and no record.
    pub removed: Vec<String>,
    /// Verdicts that could not be stored in the repository (`SNAPSHOT: error`).
    pub record_errors: Vec<String>,
}

impl VerifyReport {
    /// Whether everything verified.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// What checking one snapshot found.
#[derive(Default)]
struct SnapshotFindings {
    failures: Vec<VerifyFailure>,
    repaired: Vec<String>,
    chunks_checked: u64,
    bytes_checked: u64,
}

/// Verifies `snapshots` (any order; they are processed sorted by VM and time).
///
/// Object-level problems are collected in the report and the records, and so are
/// records that could not be stored; only failures to run at all are errors.
pub async fn verify_snapshots(
    repo: Arc<Repository>,
    snapshots: &[SnapshotId],
    options: &VerifyOptions,
    progress: &Progress,
) -> Result<VerifyReport> {
    let mut ordered = snapshots.to_vec();
    ordered.sort_by(|a, b| (&a.vm, a.time()).cmp(&(&b.vm, b.time())));
    ordered.dedup();
    let sampler = Sampler::new(options.sample_percent)?;
    let mut report = VerifyReport::default();
    // Sorted ids of the previous snapshot of the same VM that were found good (or not
    // sampled, which the same sampler would skip again).
    let mut previous: Option<(String, Vec<ChunkId>)> = None;
    for id in &ordered {
        let carried: &[ChunkId] = match &previous {
            Some((vm, ids)) if *vm == id.vm => ids,
            _ => &[],
        };
        let (findings, good_ids) =
            verify_one(&repo, id, carried, &sampler, options, progress).await;
        // Without a replica to repair from (which would bring a removed snapshot back),
        // failures of a snapshot whose manifest is gone now are its removal racing this
        // run, not damage: a listed manifest is only ever missing that way.
        if !findings.failures.is_empty()
            && options.repair_from.is_none()
            && removed_meanwhile(&repo, id).await
        {
            tracing::info!(snapshot = %id, "snapshot removed while it was verified");
            report.removed.push(id.to_string());
            previous = None;
            continue;
        }
        let outcome = if findings.failures.is_empty() {
            VerifyOutcome::Passed
        } else {
            VerifyOutcome::Failed
        };
        let record = if options.record {
            let record = VerifyRecord {
                version: VERIFY_RECORD_VERSION,
                vm: id.vm.clone(),
                snapshot: id.timestamp.clone(),
                verified_at: String::new(),
                outcome,
                sample_percent: options.sample_percent,
                chunks_checked: findings.chunks_checked,
                repaired: findings.repaired.len() as u64,
                failures_total: findings.failures.len() as u64,
                failures: findings
                    .failures
                    .iter()
                    .take(MAX_RECORDED_FAILURES)
                    .cloned()
                    .collect(),
            };
            // A verdict that cannot be stored (a read-only key, a full disk) does not
            // hide the verdict itself: it is reported, and the run goes on.
            match write_verify_record(&repo, id, record).await {
                Ok(key) => Some(key),
                Err(error) => {
                    tracing::warn!(snapshot = %id, %error, "verify record not stored");
                    report.record_errors.push(format!("{id}: {error}"));
                    None
                }
            }
        } else {
            None
        };
        if outcome == VerifyOutcome::Failed {
            tracing::info!(snapshot = %id, failures = findings.failures.len(), "snapshot failed verification");
        }
        report.snapshots.push(id.to_string());
        report.verdicts.push(SnapshotVerdict {
            snapshot: id.to_string(),
            outcome,
            chunks_checked: findings.chunks_checked,
            repaired: findings.repaired.len() as u64,
            failures: findings.failures.len(),
            record,
        });
        report.chunks_checked += findings.chunks_checked;
        report.bytes_checked += findings.bytes_checked;
        report.repaired.extend(findings.repaired);
        report.failures.extend(findings.failures);
        previous = Some((id.vm.clone(), good_ids));
    }
    report.failures.sort_by(|a, b| a.object.cmp(&b.object));
    report.failures.dedup();
    Ok(report)
}

/// Whether the manifest of `id` is gone (a read that answers "not found").
async fn removed_meanwhile(repo: &Repository, id: &SnapshotId) -> bool {
    matches!(repo.read_manifest(id).await, Err(RepoError::NotFound(_)))
}

/// Checks one snapshot; returns the findings and its sorted good chunk ids.
async fn verify_one(
    repo: &Arc<Repository>,
    id: &SnapshotId,
    carried: &[ChunkId],
    sampler: &Sampler,
    options: &VerifyOptions,
    progress: &Progress,
) -> (SnapshotFindings, Vec<ChunkId>) {
    let mut findings = SnapshotFindings::default();
    let replica = options.repair_from.as_ref();
    let manifest = match read_until_settled(FIRST_REREAD_DELAY, || repo.read_manifest(id)).await {
        Ok(manifest) => Some(manifest),
        Err(error) => {
            let key = id.manifest_key();
            match replica {
                Some(replica) => match repair_manifest(repo, replica, id).await {
                    Ok(manifest) => {
                        findings.repaired.push(key);
                        Some(manifest)
                    }
                    Err(repair) => {
                        findings
                            .failures
                            .push(failure_after_repair(&key, error, &repair));
                        None
                    }
                },
                None => {
                    findings.failures.push(failure(&key, error));
                    None
                }
            }
        }
    };
    let mut ids: Vec<ChunkId> = Vec::new();
    for disk in manifest.iter().flat_map(|manifest| &manifest.disks) {
        let index = match read_until_settled(FIRST_REREAD_DELAY, || repo.read_index(disk)).await {
            Ok(index) => index,
            Err(error) => match replica {
                Some(replica) => match repair_index(repo, replica, disk).await {
                    Ok(index) => {
                        findings.repaired.push(disk.index.clone());
                        index
                    }
                    Err(repair) => {
                        findings
                            .failures
                            .push(failure_after_repair(&disk.index, error, &repair));
                        continue;
                    }
                },
                None => {
                    findings.failures.push(failure(&disk.index, error));
                    continue;
                }
            },
        };
        ids.extend(index.slots().iter().filter(|id| !id.is_zero()));
    }
    ids.sort_unstable();
    ids.dedup();

    let todo: Vec<ChunkId> = ids
        .iter()
        .filter(|id| carried.binary_search(id).is_err() && sampler.picks(id))
        .copied()
        .collect();
    let chunk_size = u64::from(repo.chunk_size());
    progress.add_total(todo.len() as u64 * chunk_size);
    let mut checks = futures::stream::iter(todo)
        .map(|chunk| {
            let repo = repo.clone();
            let replica = replica.cloned();
            async move {
                let checked =
                    read_until_settled(FIRST_REREAD_DELAY, || repo.check_chunk(chunk)).await;
                let outcome = match (checked, replica) {
                    (Ok(len), _) => ChunkOutcome::Good(len),
                    (Err(error), None) => ChunkOutcome::Bad(failure(&chunk.object_key(), error)),
                    (Err(error), Some(replica)) => {
                        match repair_chunk(&repo, &replica, chunk).await {
                            Ok(len) => ChunkOutcome::Repaired(len),
                            Err(repair) => ChunkOutcome::Bad(failure_after_repair(
                                &chunk.object_key(),
                                error,
                                &repair,
                            )),
                        }
                    }
                };
                (chunk, outcome)
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut bad: Vec<ChunkId> = Vec::new();
    while let Some((chunk, outcome)) = checks.next().await {
        findings.chunks_checked += 1;
        progress.add_done(chunk_size);
        match outcome {
            ChunkOutcome::Good(len) => findings.bytes_checked += len,
            ChunkOutcome::Repaired(len) => {
                findings.bytes_checked += len;
                findings.repaired.push(chunk.object_key());
            }
            ChunkOutcome::Bad(failure) => {
                findings.failures.push(failure);
                bad.push(chunk);
            }
        }
    }
    bad.sort_unstable();
    ids.retain(|id| bad.binary_search(id).is_err());
    findings.failures.sort_by(|a, b| a.object.cmp(&b.object));
    (findings, ids)
}

/// Reads of one object before verify calls it bad.
const READ_ATTEMPTS: u32 = 4;
/// The wait before the second read; doubled before each further one.
const FIRST_REREAD_DELAY: Duration = Duration::from_millis(200);

/// Runs `check` (a read and check of one object) until it succeeds, finds the object
/// missing, or has failed [`READ_ATTEMPTS`] times, waiting `first_delay`, then
/// twice as long, before each new read. A reply cut short in transit or a store
/// failing for a moment must not make verify call an intact object bad: the failed
/// verdict would make the next backup read the whole disk. A missing object is not
/// read again.
async fn read_until_settled<T, F, Fut>(first_delay: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut delay = first_delay;
    let mut attempt = 1;
    loop {
        match check().await {
            Err(error) if !matches!(error, RepoError::NotFound(_)) && attempt < READ_ATTEMPTS => {
                tracing::debug!(%error, attempt, "read failed; reading it again");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            settled => return settled,
        }
    }
}

enum ChunkOutcome {
    Good(u64),
    Repaired(u64),
    Bad(VerifyFailure),
}

/// Picks the sampled subset of chunk ids: ids are keyed hashes, so their first bytes
/// XOR a per-run random seed are uniform, and each id is in or out for the whole run.
struct Sampler {
    seed: u64,
    threshold: u64,
    all: bool,
}

impl Sampler {
    fn new(percent: f64) -> Result<Self> {
        if !(percent > 0.0 && percent <= 100.0) {
            return Err(RepoError::InvalidArgument(format!(
                "sample percentage {percent} is not above 0 and at most 100"
            )));
        }
        let mut seed = [0u8; 8];
        crate::format::crypto::fill_random(&mut seed)?;
        Ok(Self {
            seed: u64::from_le_bytes(seed),
            threshold: (percent / 100.0 * u64::MAX as f64) as u64,
            all: percent >= 100.0,
        })
    }

    fn picks(&self, id: &ChunkId) -> bool {
        if self.all {
            return true;
        }
        let mut head = [0u8; 8];
        head.copy_from_slice(&id.0[..8]);
        (u64::from_le_bytes(head) ^ self.seed) <= self.threshold
    }
}

fn failure(object: &str, error: RepoError) -> VerifyFailure {
    VerifyFailure {
        object: object.to_string(),
        reason: reason(error),
    }
}

fn failure_after_repair(object: &str, error: RepoError, repair: &RepoError) -> VerifyFailure {
    VerifyFailure {
        object: object.to_string(),
        reason: format!("{}; repair failed: {repair}", reason(error)),
    }
}

fn reason(error: RepoError) -> String {
    match error {
        RepoError::NotFound(_) => "missing".to_string(),
        RepoError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk read `failures` times with `error` before it reads well: how many
    /// reads verify made, and its verdict.
    async fn reads(failures: u32, error: fn() -> RepoError) -> (u32, Result<u64>) {
        let made = std::sync::atomic::AtomicU32::new(0);
        let settled = read_until_settled(Duration::ZERO, || {
            let n = made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { if n < failures { Err(error()) } else { Ok(7) } }
        })
        .await;
        (made.into_inner(), settled)
    }

    #[tokio::test]
    async fn a_chunk_is_called_bad_only_after_every_read_failed() {
        let cut = || RepoError::corrupt("chunks/ab/ab", "authentication failed");
        let missing = || RepoError::NotFound("chunks/ab/ab".into());
        let (made, settled) = reads(0, cut).await;
        assert_eq!((made, settled.ok()), (1, Some(7)));
        let (made, settled) = reads(READ_ATTEMPTS - 1, cut).await;
        assert_eq!((made, settled.ok()), (READ_ATTEMPTS, Some(7)));
        let (made, settled) = reads(READ_ATTEMPTS, cut).await;
        assert_eq!(made, READ_ATTEMPTS);
        assert!(
            matches!(settled, Err(RepoError::Corrupt { .. })),
            "{settled:?}"
        );
        let (made, settled) = reads(1, missing).await;
        assert_eq!(made, 1, "a missing chunk is not read again");
        assert!(
            matches!(settled, Err(RepoError::NotFound(_))),
            "{settled:?}"
        );
    }

    #[test]
    fn sampler_picks_about_the_asked_share() {
        let sampler = Sampler::new(10.0).unwrap();
        let picked = (0u32..20_000)
            .filter(|n| sampler.picks(&ChunkId(*blake3::hash(&n.to_le_bytes()).as_bytes())))
            .count();
        assert!((1_500..2_500).contains(&picked), "{picked} of 20000 at 10%");
        assert!(Sampler::new(0.0).is_err());
        assert!(Sampler::new(100.5).is_err());
        assert!(Sampler::new(f64::NAN).is_err());
        let all = Sampler::new(100.0).unwrap();
        assert!(all.picks(&ChunkId([0xff; 32])));
    }
}
