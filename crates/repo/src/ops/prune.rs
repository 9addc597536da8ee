//! Removing the snapshots a retention policy does not keep: what `haven prune` and the
//! coordinator's prune jobs run.
//!
//! The plan comes from the pure [`crate::plan_retention`]. Removing a snapshot deletes
//! its manifest first (the commit point: once it is gone the snapshot no longer
//! exists), then its indexes. Chunks are never touched: freeing them is garbage
//! collection's job. A snapshot is always kept when its manifest carries the label
//! `protected=true`, when it has an active protection record, or when a running backup
//! builds on it (`pins`).

use crate::error::{RepoError, Result};
use crate::format::manifest::SnapshotId;
use crate::ops::lease::PinSource;
use crate::ops::protect::protected_snapshots;
use crate::ops::retention::{Decision, RetentionPolicy, plan_retention};
use crate::repository::Repository;
use crate::storage::backend::Backend;

/// Plans `policy` per VM (only `vm`'s snapshots when given) and, unless `dry_run`,
/// removes what it does not keep. Returns every decision, kept and removed.
pub async fn prune_snapshots(
    repo: &Repository,
    vm: Option<&str>,
    policy: &RetentionPolicy,
    pins: &dyn PinSource,
    dry_run: bool,
) -> Result<Vec<Decision>> {
    if !policy.keeps_something() {
        return Err(RepoError::InvalidArgument(
            "refusing to prune without a retention rule that keeps something".into(),
        ));
    }
    let ids = repo.list_snapshots(vm).await?;
    let protections = protected_snapshots(repo.backend()).await?;
    let pinned = pins.pins(repo).await?.bases;
    let mut input: Vec<(SnapshotId, bool)> = Vec::with_capacity(ids.len());
    for id in ids {
        let manifest = repo.read_manifest(&id).await?;
        let protected = manifest
            .labels
            .get("protected")
            .is_some_and(|value| value == "true")
            || protections.contains_key(&id)
            || pinned.contains(&id);
        input.push((id, protected));
    }
    let decisions = plan_retention(&input, policy);
    if !dry_run {
        for decision in decisions.iter().filter(|decision| !decision.keep) {
            remove_snapshot(repo.backend(), &decision.id).await?;
        }
    }
    Ok(decisions)
}

/// Manifest first (the commit point), then the snapshot's indexes.
async fn remove_snapshot(backend: &Backend, id: &SnapshotId) -> Result<()> {
    backend.delete(&id.manifest_key()).await?;
    let prefix = format!("indexes/{}/{}", id.vm, id.timestamp);
    for key in backend.list(&prefix).await? {
        backend.delete(&key).await?;
    }
    Ok(())
}
