//! The pins of a cluster's GC and prune jobs: what running backups build on.

use std::sync::Arc;

use futures::future::BoxFuture;
use haven_proto::LeaderClient;
use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_repo::{PinSource, Pins, Repository, RepositoryLeases, SnapshotId};

/// A GC or prune job's pins: the repository's own backup leases plus what the
/// coordinator's job records say running backups build on (the etcd pins). Either
/// alone keeps running backups safe; both together also cover a backup that has not
/// written its lease yet.
pub(super) struct ClusterPins {
    pub(super) client: Arc<LeaderClient>,
    pub(super) identity: v1::WorkerIdentity,
    pub(super) repository: String,
}

impl PinSource for ClusterPins {
    fn pins<'a>(&'a self, repo: &'a Repository) -> BoxFuture<'a, haven_repo::Result<Pins>> {
        Box::pin(async move {
            let mut pins = RepositoryLeases.pins(repo).await?;
            let request = v1::ListPinsRequest {
                worker: Some(self.identity.clone()),
                repository: self.repository.clone(),
            };
            let reply = self
                .client
                .unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.list_pins(r).await },
                )
                .await
                .map_err(|status| {
                    haven_repo::RepoError::Busy(format!(
                        "cannot learn the coordinator's pins: {}",
                        status.message()
                    ))
                })?;
            for base in &reply.bases {
                if let Some((vm, timestamp)) = base.split_once('@')
                    && let Ok(id) = SnapshotId::new(vm, timestamp)
                {
                    pins.bases.insert(id);
                }
            }
            if reply.oldest_start_unix_ms > 0 {
                let start = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(reply.oldest_start_unix_ms) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                pins.oldest_start = Some(pins.oldest_start.map_or(start, |s| s.min(start)));
            }
            pins.holders.extend(reply.holders);
            Ok(pins)
        })
    }
}
