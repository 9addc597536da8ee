//! Repair from a replica: replace a bad object with the replica's copy.
//!
//! The replica is a second repository holding the same repository (same `config` id,
//! hence the same master key: replication copies `config` and `keys/`). A replacement is
//! fetched from it, checked with the primary's keys exactly as a read would check it
//! (frame, AEAD bound to the object's name, chunk digest, index digest from the manifest),
//! only then written over the bad object ([`crate::Backend::overwrite_for_repair`], the
//! one non-create-only write in Haven), and finally read back from the primary and
//! checked again, so a repair that did not take is reported as a failure.

use std::sync::Arc;

use crate::error::join_error;
use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::index::FixedIndex;
use crate::format::manifest::{DiskEntry, Manifest, SnapshotId};
use crate::repository::Repository;

/// Refuses a replica that is not the same repository (same id, so same key).
pub fn check_same_repository(primary: &Repository, replica: &Repository) -> Result<()> {
    if primary.config().id != replica.config().id {
        return Err(RepoError::InvalidArgument(format!(
            "{} holds repository {}, not {} ({})",
            replica.backend().location(),
            replica.config().id,
            primary.config().id,
            primary.backend().location(),
        )));
    }
    Ok(())
}

/// Replaces chunk `id` at the primary with the replica's copy; returns its stored length.
pub(crate) async fn repair_chunk(
    primary: &Arc<Repository>,
    replica: &Arc<Repository>,
    id: ChunkId,
) -> Result<u64> {
    let blob = replica.get_chunk_blob(&id).await?;
    let checker = primary.clone();
    let checked = blob.clone();
    tokio::task::spawn_blocking(move || checker.open_chunk(&id, &checked, None))
        .await
        .map_err(join_error)??;
    primary
        .backend()
        .overwrite_for_repair(&id.object_key(), blob)
        .await?;
    tracing::info!(chunk = %id.object_key(), "chunk repaired from the replica");
    primary.check_chunk(id).await
}

/// Replaces the index of `disk` at the primary with the replica's copy.
pub(crate) async fn repair_index(
    primary: &Repository,
    replica: &Repository,
    disk: &DiskEntry,
) -> Result<FixedIndex> {
    let blob = replica.get_index_blob(disk).await?;
    primary.open_index(disk, &blob)?;
    primary
        .backend()
        .overwrite_for_repair(&disk.index, blob)
        .await?;
    tracing::info!(index = %disk.index, "index repaired from the replica");
    primary.read_index(disk).await
}

/// Replaces the manifest of `id` at the primary with the replica's copy.
pub(crate) async fn repair_manifest(
    primary: &Repository,
    replica: &Repository,
    id: &SnapshotId,
) -> Result<Manifest> {
    let blob = replica.get_manifest_blob(id).await?;
    primary.open_manifest(id, &blob)?;
    primary
        .backend()
        .overwrite_for_repair(&id.manifest_key(), blob)
        .await?;
    tracing::info!(snapshot = %id, "manifest repaired from the replica");
    primary.read_manifest(id).await
}
