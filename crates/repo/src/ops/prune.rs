//! Removing the snapshots a retention policy does not keep: what `haven prune` and the
//! coordinator's prune jobs run.
//!
//! The plan comes from the pure [`crate::plan_retention`]. Removing a snapshot deletes
//! its manifest first (the commit point: once it is gone the snapshot no longer
//! exists), then its indexes. Chunks are never touched: freeing them is garbage
//! collection's job. A snapshot is always kept when its manifest carries the label
//! `protected=true`, when it has an active protection record, or when a running backup
//! builds on it (`pins`).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{RepoError, Result};
use crate::format::manifest::SnapshotId;
use crate::ops::lease::PinSource;
use crate::ops::protect::{Protection, protected_snapshots};
use crate::ops::replicate::{list_snapshot_ids, list_tombstone_ids};
use crate::ops::retention::{Decision, RetentionPolicy, plan_retention};
use crate::repository::Repository;
use crate::storage::backend::{Backend, Durability};

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
    let guards = Guards::load(repo, pins).await?;
    let mut input: Vec<(SnapshotId, bool)> = Vec::with_capacity(ids.len());
    for id in ids {
        let protected = guards.why_kept(repo, &id).await?.is_some();
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

/// What [`prune_replica`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaPruneReport {
    /// Every decision of the replica's retention, kept and removed.
    pub decisions: Vec<Decision>,
    /// Tombstones deleted because the primary no longer has their snapshot.
    pub tombstones_cleared: usize,
}

/// Prunes `vm`'s snapshots at a replication secondary by `policy`, its own retention.
///
/// Replication copies every snapshot the primary has and the secondary lacks, so a
/// snapshot removed here would come back with the next replication while the primary
/// keeps it. Each removal therefore leaves a tombstone first (`pruned/VM/TIMESTAMP`,
/// create-only), which replication and its lag leave out. Tombstones of snapshots the
/// primary no longer has can never matter again; they are deleted, so their number
/// stays that of the snapshots the primary keeps longer than the replica.
pub async fn prune_replica(
    replica: &Repository,
    primary: &Backend,
    vm: &str,
    policy: &RetentionPolicy,
    pins: &dyn PinSource,
) -> Result<ReplicaPruneReport> {
    let decisions = prune_snapshots(replica, Some(vm), policy, pins, true).await?;
    let backend = replica.backend();
    for decision in decisions.iter().filter(|decision| !decision.keep) {
        backend
            .put_if_absent(
                &decision.id.tombstone_key(),
                bytes::Bytes::new(),
                Durability::Immediate,
            )
            .await?;
        remove_snapshot(backend, &decision.id).await?;
    }
    let at_primary: BTreeSet<SnapshotId> = list_snapshot_ids(primary, Some(vm))
        .await?
        .into_iter()
        .collect();
    let mut tombstones_cleared = 0;
    for id in list_tombstone_ids(backend, Some(vm)).await? {
        if !at_primary.contains(&id) {
            backend.delete(&id.tombstone_key()).await?;
            tombstones_cleared += 1;
        }
    }
    Ok(ReplicaPruneReport {
        decisions,
        tombstones_cleared,
    })
}

/// Removes one committed snapshot (`haven forget VM@TIME`), as prune removes those
/// its policy does not keep, and under the same guards: a snapshot labelled
/// protected or with an active protection record is refused
/// ([`RepoError::Protected`]), one a running backup builds on too
/// ([`RepoError::Busy`]); an object lock or legal hold in storage refuses the delete
/// itself. Chunks stay until garbage collection.
pub async fn forget_snapshot(
    repo: &Repository,
    id: &SnapshotId,
    pins: &dyn PinSource,
) -> Result<()> {
    if !repo.list_snapshots(Some(&id.vm)).await?.contains(id) {
        return Err(RepoError::NoSuchSnapshot(id.to_string()));
    }
    let guards = Guards::load(repo, pins).await?;
    match guards.why_kept(repo, id).await? {
        None => remove_snapshot(repo.backend(), id).await,
        Some(Kept::Pinned) => Err(RepoError::Busy(format!(
            "a running backup builds on {id}; forget it once that backup ends"
        ))),
        Some(Kept::Protected) => Err(RepoError::Protected(id.to_string())),
    }
}

/// Why a snapshot must stay.
enum Kept {
    /// Its manifest is labelled `protected=true`, or it has an active protection record.
    Protected,
    /// A running backup builds on it (its lease names it as base).
    Pinned,
}

/// What keeps snapshots whatever is asked: protection records and running backups'
/// bases, read once per run.
struct Guards {
    protections: BTreeMap<SnapshotId, Protection>,
    pinned: BTreeSet<SnapshotId>,
}

impl Guards {
    async fn load(repo: &Repository, pins: &dyn PinSource) -> Result<Self> {
        Ok(Self {
            protections: protected_snapshots(repo.backend()).await?,
            pinned: pins.pins(repo).await?.bases,
        })
    }

    /// Why `id` must stay, if it must (reads its manifest for the label).
    async fn why_kept(&self, repo: &Repository, id: &SnapshotId) -> Result<Option<Kept>> {
        if self.pinned.contains(id) {
            return Ok(Some(Kept::Pinned));
        }
        if self.protections.contains_key(id) {
            return Ok(Some(Kept::Protected));
        }
        let manifest = repo.read_manifest(id).await?;
        let labelled = manifest
            .labels
            .get("protected")
            .is_some_and(|value| value == "true");
        Ok(labelled.then_some(Kept::Protected))
    }
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
