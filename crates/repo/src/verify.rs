//! Verification: re-read every object a snapshot depends on and check it end to end.
//!
//! A snapshot verifies when its manifest and indexes authenticate and every chunk they
//! name exists, passes its checksum, decrypts, and hashes back to its id. Each chunk is
//! checked once however many snapshots share it.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::chunk::ChunkId;
use crate::error::{RepoError, Result};
use crate::manifest::SnapshotId;
use crate::progress::Progress;
use crate::repository::Repository;

/// One object that failed verification.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VerifyFailure {
    /// Key of the bad or missing object.
    pub object: String,
    /// What was wrong with it.
    pub reason: String,
}

/// Outcome of a verification run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// Snapshots examined, as `VM@TIME`.
    pub snapshots: Vec<String>,
    /// Distinct chunks read and checked.
    pub chunks_checked: u64,
    /// Stored bytes of those chunks.
    pub bytes_checked: u64,
    /// Everything that failed; empty when the snapshots verify.
    pub failures: Vec<VerifyFailure>,
}

impl VerifyReport {
    /// Whether everything verified.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Verifies `snapshots`, reading up to `concurrency` chunks at a time.
///
/// Object-level problems are collected in the report; only failures to run at all
/// (for example the storage being unreachable for the listing) are errors.
pub async fn verify_snapshots(
    repo: Arc<Repository>,
    snapshots: &[SnapshotId],
    concurrency: usize,
    progress: &Progress,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut chunks: HashSet<ChunkId> = HashSet::new();
    for id in snapshots {
        report.snapshots.push(id.to_string());
        let manifest = match repo.read_manifest(id).await {
            Ok(manifest) => manifest,
            Err(error) => {
                report.failures.push(failure(&id.manifest_key(), error));
                continue;
            }
        };
        for disk in &manifest.disks {
            match repo.read_index(disk).await {
                Ok(index) => chunks.extend(index.slots().iter().filter(|id| !id.is_zero())),
                Err(error) => report.failures.push(failure(&disk.index, error)),
            }
        }
    }

    let chunk_size = u64::from(repo.chunk_size());
    progress.add_total(chunks.len() as u64 * chunk_size);
    let mut checks = futures::stream::iter(chunks)
        .map(|id| {
            let repo = repo.clone();
            async move {
                let result = check_chunk(&repo, id).await;
                (id, result)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((id, result)) = checks.next().await {
        report.chunks_checked += 1;
        progress.add_done(chunk_size);
        match result {
            Ok(stored_len) => report.bytes_checked += stored_len,
            Err(error) => report.failures.push(failure(&id.object_key(), error)),
        }
    }
    report.failures.sort_by(|a, b| a.object.cmp(&b.object));
    Ok(report)
}

async fn check_chunk(repo: &Arc<Repository>, id: ChunkId) -> Result<u64> {
    let stored = repo.get_chunk_blob(&id).await?;
    let len = stored.len() as u64;
    let repo = repo.clone();
    tokio::task::spawn_blocking(move || repo.open_chunk(&id, &stored, None).map(|_| len))
        .await
        .map_err(crate::repository::join_error)?
}

fn failure(object: &str, error: RepoError) -> VerifyFailure {
    let reason = match error {
        RepoError::NotFound(_) => "missing".to_string(),
        RepoError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    VerifyFailure {
        object: object.to_string(),
        reason,
    }
}
