//! Replication lag: how far the secondary is behind the primary, per VM.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use time::OffsetDateTime;

use crate::error::Result;
use crate::format::manifest::SnapshotId;
use crate::repository::list_ids;
use crate::storage::backend::Backend;

/// Where one VM's snapshots stand at the two sites.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VmReplicationStatus {
    /// VM name.
    pub vm: String,
    /// Snapshots committed at the primary.
    pub primary_snapshots: usize,
    /// Snapshots of the primary also present at the secondary, or removed there on
    /// purpose by the replica's own retention (tombstones).
    pub replicated_snapshots: usize,
    /// Snapshots at the primary not yet at the secondary.
    pub missing_snapshots: usize,
    /// Timestamp of the oldest snapshot not yet at the secondary.
    pub oldest_missing: Option<String>,
    /// Timestamp of the newest snapshot not yet at the secondary.
    pub newest_missing: Option<String>,
    /// Replication lag as the issue defines it: age in seconds of the newest snapshot
    /// present at the primary but not at the secondary, 0 when the secondary has every
    /// snapshot.
    pub lag_seconds: u64,
    /// Age in seconds of the oldest snapshot not yet at the secondary, 0 when up to date.
    /// Alert on this one: while replication is stuck it keeps growing, whereas `lag_seconds`
    /// is never older than the backup interval as long as backups keep coming.
    pub oldest_missing_age_seconds: u64,
}

/// Committed snapshots of a site read from the manifest keys alone (no key needed).
pub async fn list_snapshot_ids(backend: &Backend, vm: Option<&str>) -> Result<Vec<SnapshotId>> {
    list_ids(backend, "snapshots", vm, SnapshotId::from_manifest_key).await
}

/// Snapshots a replica's prune removed and replication must not bring back, read from
/// the tombstone keys (`pruned/VM/TIMESTAMP`).
pub async fn list_tombstone_ids(backend: &Backend, vm: Option<&str>) -> Result<Vec<SnapshotId>> {
    list_ids(backend, "pruned", vm, SnapshotId::from_tombstone_key).await
}

/// What the secondary holds of the primary's snapshots: those it has, and those its
/// own prune removed on purpose (tombstones), which replication leaves out and the lag
/// does not count.
pub async fn settled_at_secondary(to: &Backend, vm: Option<&str>) -> Result<Vec<SnapshotId>> {
    let mut ids = list_snapshot_ids(to, vm).await?;
    ids.extend(list_tombstone_ids(to, vm).await?);
    Ok(ids)
}

/// Lag per VM of the primary (VMs only at the secondary are not listed).
pub async fn replication_status(
    from: &Backend,
    to: &Backend,
    vm: Option<&str>,
) -> Result<Vec<VmReplicationStatus>> {
    let primary = list_snapshot_ids(from, vm).await?;
    let secondary = settled_at_secondary(to, vm).await?;
    Ok(compare(&primary, &secondary, OffsetDateTime::now_utc()))
}

/// The pure part of [`replication_status`].
pub fn compare(
    primary: &[SnapshotId],
    secondary: &[SnapshotId],
    now: OffsetDateTime,
) -> Vec<VmReplicationStatus> {
    let present: BTreeSet<&SnapshotId> = secondary.iter().collect();
    let mut per_vm: BTreeMap<&str, Vec<&SnapshotId>> = BTreeMap::new();
    for id in primary {
        per_vm.entry(&id.vm).or_default().push(id);
    }
    per_vm
        .into_iter()
        .map(|(vm, mut ids)| {
            ids.sort_by_key(|id| id.time());
            let missing: Vec<&&SnapshotId> =
                ids.iter().filter(|id| !present.contains(**id)).collect();
            let age = |id: &&&SnapshotId| (now - id.time()).whole_seconds().max(1) as u64;
            let lag_seconds = missing.last().map(age).unwrap_or(0);
            let oldest_missing_age_seconds = missing.first().map(age).unwrap_or(0);
            VmReplicationStatus {
                vm: vm.to_string(),
                primary_snapshots: ids.len(),
                replicated_snapshots: ids.len() - missing.len(),
                missing_snapshots: missing.len(),
                oldest_missing: missing.first().map(|id| id.timestamp.clone()),
                newest_missing: missing.last().map(|id| id.timestamp.clone()),
                lag_seconds,
                oldest_missing_age_seconds,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(vm: &str, timestamp: &str) -> SnapshotId {
        SnapshotId::new(vm, timestamp).unwrap()
    }

    #[test]
    fn lag_is_the_age_of_the_newest_missing_snapshot_and_the_oldest_is_reported_too() {
        let now = crate::format::manifest::parse_timestamp("2026-11-25T12:00:00Z").unwrap();
        let primary = [
            id("a", "2026-11-25T09:00:00Z"),
            id("a", "2026-11-25T10:00:00Z"),
            id("a", "2026-11-25T11:00:00Z"),
            id("b", "2026-11-25T11:59:00Z"),
        ];
        let secondary = [
            id("a", "2026-11-25T09:00:00Z"),
            id("b", "2026-11-25T11:59:00Z"),
            id("c", "2026-11-25T08:00:00Z"),
        ];
        let statuses = compare(&primary, &secondary, now);
        assert_eq!(statuses.len(), 2);
        assert_eq!(statuses[0].vm, "a");
        assert_eq!(statuses[0].missing_snapshots, 2);
        assert_eq!(statuses[0].lag_seconds, 3600);
        assert_eq!(statuses[0].oldest_missing_age_seconds, 7200);
        assert_eq!(
            statuses[0].newest_missing.as_deref(),
            Some("2026-11-25T11:00:00Z")
        );
        assert_eq!(statuses[1].lag_seconds, 0);
    }
}
