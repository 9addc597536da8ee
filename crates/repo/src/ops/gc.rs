//! Garbage collection: remove chunks and indexes no snapshot needs, safely while
//! backups run.
//!
//! 1. Take the collection lock (`locks/gc-ID`; see [`crate::ops::lease`]).
//! 2. Ask the [`PinSource`] for running backups; the cutoff is
//!    `min(now, oldest running backup's start) - margin`: nothing modified after it is
//!    removed.
//! 3. Mark: every chunk id of every index named by a manifest, of every index no
//!    manifest names yet that is younger than the cutoff (a backup between index and
//!    manifest), and of indexes under a pinned base snapshot. Ids go into sorted run
//!    files ([`external_sort`]), not into memory.
//! 4. List every chunk object (id, modification time, size) into sorted runs too.
//! 5. Sweep: one merge of the two sorted streams ([`sweep`]); a stored chunk that no
//!    marked index names and that is older than the cutoff is deleted, after
//!    `gc/generation` announces the deletions. Unreferenced indexes older than the
//!    cutoff are deleted last. A delete refused by object lock is counted, not fatal.
//!
//! Anything that could make the mark incomplete (an unreadable manifest or index that
//! still exists) stops the collection before it deletes anything. Why concurrent
//! backups never lose a chunk is argued in `ARCHITECTURE.md`.

mod external_sort;
mod sweep;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::error::join_error;
use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::index::FixedIndex;
use crate::format::manifest::format_timestamp;
use crate::ops::lease::{GcLock, PinSource};
use crate::repository::Repository;
use external_sort::{Merged, RunWriter};
use sweep::{LISTED_LEN, listed_record};

/// Default safety margin: unreferenced objects younger than this are kept.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);
/// Default memory for each sort buffer.
pub const DEFAULT_SORT_MEMORY: usize = 64 << 20;
/// Records handed to a blocking sort task at once.
const BATCH: usize = 16 * 1024;

/// A point of a collection's progress, reported to [`GcOptions::on_phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcPhase {
    /// Marking and listing are done; nothing has been deleted yet.
    Marked,
    /// The collection has deleted this many chunks so far.
    Deleted(u64),
    /// Every deletion is done; the lock is still held.
    Swept,
}

/// A callback told of each [`GcPhase`].
pub type PhaseHook = Arc<dyn Fn(GcPhase) + Send + Sync>;

/// How to collect.
#[derive(Clone)]
pub struct GcOptions {
    /// Unreferenced objects modified less than this long before the cutoff are kept.
    /// Must exceed any clock difference between this host and the storage.
    pub margin: Duration,
    /// Report what would be removed, remove nothing, take no lock.
    pub dry_run: bool,
    /// Bytes of memory for each sort buffer.
    pub sort_memory: usize,
    /// Where sorted runs are written (default: the system's temporary directory).
    pub temp_dir: Option<PathBuf>,
    /// Deletions in flight.
    pub concurrency: usize,
    /// Called at each [`GcPhase`] (progress output, fault-injection tests).
    pub on_phase: Option<PhaseHook>,
}

impl std::fmt::Debug for GcOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcOptions")
            .field("margin", &self.margin)
            .field("dry_run", &self.dry_run)
            .field("sort_memory", &self.sort_memory)
            .field("temp_dir", &self.temp_dir)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        Self {
            margin: DEFAULT_MARGIN,
            dry_run: false,
            sort_memory: DEFAULT_SORT_MEMORY,
            temp_dir: None,
            concurrency: 32,
            on_phase: None,
        }
    }
}

/// What a collection found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    /// Nothing was removed.
    pub dry_run: bool,
    /// Objects modified at or after this time were kept whatever they are.
    pub cutoff: String,
    /// Running backups that pinned (lease keys or job names).
    pub pinned_by: Vec<String>,
    /// Snapshots whose indexes were marked.
    pub snapshots: u64,
    /// Indexes marked (named by manifests, in flight or pinned).
    pub indexes_marked: u64,
    /// Of those, indexes no manifest names yet (backups committing).
    pub indexes_in_flight: u64,
    /// Chunk objects in storage.
    pub chunks_stored: u64,
    /// Stored chunks some marked index names.
    pub chunks_referenced: u64,
    /// Ids named by a marked index but not stored: damage (run `haven verify`).
    pub chunks_missing: u64,
    /// Unreferenced chunks kept because they are younger than the cutoff.
    pub chunks_too_young: u64,
    /// Chunks removed (with `dry_run`: that would be removed).
    pub chunks_removed: u64,
    /// Stored bytes of those chunks.
    pub bytes_removed: u64,
    /// Unreferenced chunks whose deletion the storage refused (object lock).
    pub chunks_locked: u64,
    /// Unreferenced indexes removed (or that would be).
    pub indexes_removed: u64,
    /// Unreferenced indexes whose deletion the storage refused (object lock).
    pub indexes_locked: u64,
    /// Manifests that exist but name an index that does not: damage, reported.
    pub missing_indexes: Vec<String>,
    /// Sorted run files written (marks and listing).
    pub sort_runs: u64,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
}

/// Collects garbage in `repo`, keeping what `pins` says running backups need.
pub async fn collect_garbage(
    repo: &Repository,
    pins: &dyn PinSource,
    options: &GcOptions,
) -> Result<GcReport> {
    let started = Instant::now();
    let lock = if options.dry_run {
        None
    } else {
        Some(GcLock::acquire(repo.backend()).await?)
    };
    let result = collect_locked(repo, pins, options, lock.as_ref()).await;
    if let Some(lock) = &lock
        && let Err(error) = lock.release().await
    {
        tracing::warn!(%error, "cannot remove the garbage collection lock; it expires by age");
    }
    let mut report = result?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn collect_locked(
    repo: &Repository,
    pins: &dyn PinSource,
    options: &GcOptions,
    lock: Option<&GcLock>,
) -> Result<GcReport> {
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let now = OffsetDateTime::now_utc();
    let pins = pins.pins(repo).await?;
    let newest_allowed = match pins.oldest_start {
        Some(oldest) if oldest < now => oldest,
        _ => now,
    };
    let cutoff = newest_allowed - options.margin;
    report.cutoff = format_timestamp(cutoff);
    report.pinned_by = pins.holders.clone();

    let temp = match &options.temp_dir {
        Some(dir) => tempfile::Builder::new().prefix("haven-gc-").tempdir_in(dir),
        None => tempfile::Builder::new().prefix("haven-gc-").tempdir(),
    }
    .map_err(|source| RepoError::Io {
        context: "cannot create a temporary directory for sorting".into(),
        source,
    })?;

    // Mark from manifests.
    let mut marks = RunWriter::<32>::new(temp.path(), "marks", options.sort_memory);
    let mut referenced_indexes: HashSet<String> = HashSet::new();
    for id in repo.list_snapshots(None).await? {
        let manifest = match repo.read_manifest(&id).await {
            Ok(manifest) => manifest,
            // Pruned between the listing and the read.
            Err(RepoError::NotFound(_)) => continue,
            Err(error) => return Err(refuse(&id.manifest_key(), error)),
        };
        report.snapshots += 1;
        for disk in &manifest.disks {
            referenced_indexes.insert(disk.index.clone());
            match repo.read_index(disk).await {
                Ok(index) => {
                    report.indexes_marked += 1;
                    marks = mark_index(marks, index).await?;
                }
                Err(RepoError::NotFound(_)) => {
                    if repo.backend().exists(&id.manifest_key()).await? {
                        report.missing_indexes.push(disk.index.clone());
                    }
                }
                Err(error) => return Err(refuse(&disk.index, error)),
            }
        }
    }

    // Indexes no manifest names: in flight (young or pinned) are marked, old ones go.
    let pinned_prefixes: Vec<String> = pins
        .bases
        .iter()
        .map(|base| format!("indexes/{}/{}/", base.vm, base.timestamp))
        .collect();
    let cutoff_unix = cutoff.unix_timestamp();
    let mut orphan_indexes = Vec::new();
    let mut listing = repo.backend().list_meta("indexes");
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let key = meta.location.to_string();
        if referenced_indexes.contains(&key) {
            continue;
        }
        let pinned = pinned_prefixes.iter().any(|prefix| key.starts_with(prefix));
        if pinned || meta.last_modified.timestamp() >= cutoff_unix {
            match repo.read_unreferenced_index(&key).await {
                Ok(index) => {
                    report.indexes_marked += 1;
                    report.indexes_in_flight += 1;
                    marks = mark_index(marks, index).await?;
                }
                Err(RepoError::NotFound(_)) => {}
                Err(error) => return Err(refuse(&key, error)),
            }
        } else {
            orphan_indexes.push(key);
        }
    }
    drop(listing);
    report.sort_runs += marks.runs_written() as u64;
    let marked = tokio::task::spawn_blocking(move || marks.finish())
        .await
        .map_err(join_error)?
        .map_err(sort_error)?;

    // List every chunk object.
    let mut stored = RunWriter::<LISTED_LEN>::new(temp.path(), "stored", options.sort_memory);
    let mut batch = Vec::with_capacity(BATCH);
    let mut listing = repo.backend().list_meta("chunks");
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        let Some(id) = ChunkId::from_object_key(meta.location.as_ref()) else {
            continue;
        };
        batch.push(listed_record(
            &id,
            meta.last_modified.timestamp(),
            meta.size,
        ));
        if batch.len() >= BATCH {
            stored = push_batch(stored, std::mem::take(&mut batch)).await?;
        }
    }
    drop(listing);
    stored = push_batch(stored, batch).await?;
    report.chunks_stored = stored.pushed();
    report.sort_runs += stored.runs_written() as u64;
    let stored = tokio::task::spawn_blocking(move || stored.finish())
        .await
        .map_err(join_error)?
        .map_err(sort_error)?;
    phase(options, GcPhase::Marked);

    if let Some(lock) = lock {
        lock.ensure_fresh()?;
        lock.announce_deletions(repo.backend()).await?;
    }
    sweep_chunks(
        repo,
        options,
        lock,
        marked,
        stored,
        cutoff_unix,
        &mut report,
    )
    .await?;

    for key in orphan_indexes {
        report.indexes_removed += 1;
        if let Some(lock) = lock {
            lock.ensure_fresh()?;
            match repo.backend().delete(&key).await {
                Ok(()) => {}
                Err(error) if is_locked(&error) => {
                    report.indexes_removed -= 1;
                    report.indexes_locked += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
    phase(options, GcPhase::Swept);
    Ok(report)
}

/// Merges marks and listing on a blocking thread; deletes the garbage it finds here.
async fn sweep_chunks(
    repo: &Repository,
    options: &GcOptions,
    lock: Option<&GcLock>,
    marked: Merged<32>,
    stored: Merged<LISTED_LEN>,
    cutoff_unix: i64,
    report: &mut GcReport,
) -> Result<()> {
    let (sender, mut receiver) = mpsc::channel::<(ChunkId, u64)>(1024);
    let classifier = tokio::task::spawn_blocking(move || {
        sweep::classify(marked, stored, cutoff_unix, |id, size| {
            sender.blocking_send((id, size)).is_ok()
        })
    });
    let garbage = futures::stream::poll_fn(move |cx| receiver.poll_recv(cx));
    let mut deletions = garbage
        .map(|(id, size)| async move {
            if let Some(lock) = lock {
                lock.ensure_fresh()?;
                repo.backend().delete(&id.object_key()).await.map(|()| size)
            } else {
                Ok(size)
            }
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut outcome = Ok(());
    while let Some(result) = deletions.next().await {
        match result {
            Ok(size) => {
                report.chunks_removed += 1;
                report.bytes_removed += size;
                phase(options, GcPhase::Deleted(report.chunks_removed));
            }
            Err(error) if is_locked(&error) => report.chunks_locked += 1,
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    // Dropping the stream closes the channel, which stops the classifier early.
    drop(deletions);
    let counts = classifier.await.map_err(join_error)?.map_err(sort_error)?;
    outcome?;
    report.chunks_referenced = counts.referenced;
    report.chunks_missing = counts.missing;
    report.chunks_too_young = counts.young;
    Ok(())
}

async fn mark_index(marks: RunWriter<32>, index: FixedIndex) -> Result<RunWriter<32>> {
    tokio::task::spawn_blocking(move || {
        let mut marks = marks;
        let mut previous = ChunkId::ZERO;
        for id in index.slots() {
            // Runs of one id (and zero slots) are common; skip the obvious repeats.
            if id.is_zero() || *id == previous {
                continue;
            }
            previous = *id;
            marks.push(id.0)?;
        }
        Ok(marks)
    })
    .await
    .map_err(join_error)?
    .map_err(sort_error)
}

async fn push_batch(
    stored: RunWriter<LISTED_LEN>,
    batch: Vec<[u8; LISTED_LEN]>,
) -> Result<RunWriter<LISTED_LEN>> {
    tokio::task::spawn_blocking(move || {
        let mut stored = stored;
        for record in batch {
            stored.push(record)?;
        }
        Ok(stored)
    })
    .await
    .map_err(join_error)?
    .map_err(sort_error)
}

/// Whether a delete was refused by the storage (object lock): a 403 on a single
/// DELETE, or an `AccessDenied` entry in a DeleteObjects answer, which `object_store`
/// reports as a generic error carrying the S3 code.
fn is_locked(error: &RepoError) -> bool {
    let RepoError::Storage { error, .. } = error else {
        return false;
    };
    match error.as_ref() {
        object_store::Error::PermissionDenied { .. } => true,
        error @ object_store::Error::Generic { .. } => {
            error.to_string().contains("(code: AccessDenied)")
        }
        _ => false,
    }
}

fn refuse(key: &str, error: RepoError) -> RepoError {
    RepoError::Io {
        context: format!("cannot read {key}, so the mark would be incomplete; nothing was removed"),
        source: std::io::Error::other(error),
    }
}

fn sort_error(source: std::io::Error) -> RepoError {
    RepoError::Io {
        context: "sorting chunk ids in the temporary directory failed".into(),
        source,
    }
}

fn phase(options: &GcOptions, phase: GcPhase) {
    if let Some(hook) = &options.on_phase {
        hook(phase);
    }
}
