//! Pins: what running backups need a collection to keep, and where it learns them.

use std::collections::BTreeSet;

use futures::future::BoxFuture;
use time::OffsetDateTime;

use super::live_records;
use crate::error::Result;
use crate::format::manifest::SnapshotId;
use crate::repository::Repository;

/// What running backups need kept: the oldest start among them and their base
/// snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins {
    /// Start of the oldest running backup; nothing modified after it (minus the
    /// margin) is removed.
    pub oldest_start: Option<OffsetDateTime>,
    /// Base snapshots running backups reuse chunks from.
    pub bases: BTreeSet<SnapshotId>,
    /// Who pins, for the report (`locks/backup-ID` or a job name).
    pub holders: Vec<String>,
}

/// Where a collection learns about running backups. In single-machine mode that is the
/// repository's own leases ([`RepositoryLeases`]); the cluster coordinator supplies
/// the pins it keeps in etcd through the same trait.
pub trait PinSource: Send + Sync {
    /// The pins at this moment.
    fn pins<'a>(&'a self, repo: &'a Repository) -> BoxFuture<'a, Result<Pins>>;
}

/// Pins from the live `locks/backup-*` leases of the repository.
#[derive(Debug, Clone, Copy, Default)]
pub struct RepositoryLeases;

impl PinSource for RepositoryLeases {
    fn pins<'a>(&'a self, repo: &'a Repository) -> BoxFuture<'a, Result<Pins>> {
        Box::pin(async move {
            let mut pins = Pins::default();
            for record in live_records(repo.backend(), "backup").await? {
                let started = record.started_at();
                pins.oldest_start = Some(match pins.oldest_start {
                    Some(oldest) if oldest <= started => oldest,
                    _ => started,
                });
                if let (Some(vm), Some(base)) = (&record.vm, &record.base)
                    && let Ok(id) = SnapshotId::new(vm, base)
                {
                    pins.bases.insert(id);
                }
                pins.holders.push(record.key());
            }
            Ok(pins)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::lease::BackupLease;
    use crate::storage::backend::Backend;

    #[tokio::test]
    async fn live_leases_pin_their_start_and_base_and_released_ones_do_not() {
        let repo = Repository::init(Backend::memory(), b"pw", 1 << 20)
            .await
            .unwrap();
        assert_eq!(RepositoryLeases.pins(&repo).await.unwrap(), Pins::default());
        let first = BackupLease::acquire(repo.backend(), "web1", Some("2026-01-02T03:04:05Z"))
            .await
            .unwrap();
        let second = BackupLease::acquire(repo.backend(), "db1", None)
            .await
            .unwrap();
        let pins = RepositoryLeases.pins(&repo).await.unwrap();
        let earliest = first
            .record()
            .started_at()
            .min(second.record().started_at());
        assert_eq!(pins.oldest_start, Some(earliest));
        assert_eq!(
            pins.bases.into_iter().collect::<Vec<_>>(),
            vec![SnapshotId::new("web1", "2026-01-02T03:04:05Z").unwrap()]
        );
        assert_eq!(pins.holders.len(), 2);
        first.release().await.unwrap();
        second.release().await.unwrap();
        assert_eq!(RepositoryLeases.pins(&repo).await.unwrap(), Pins::default());
    }
}
