//! The cluster's way to publish a snapshot: the coordinator's fenced commit.

use std::sync::Arc;

use haven_proto::LeaderClient;
use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_repo::{Manifest, Repository};

use super::metrics::WorkerMetrics;
use crate::error::{Result, WorkerError};
use crate::pipeline::snapshot::ManifestPublisher;

/// The cluster's [`ManifestPublisher`]: the coordinator accepts the sealed manifest
/// only while `token` still owns the job; a fenced token is [`WorkerError::JobMoved`].
#[derive(Debug)]
pub(super) struct FencedCommit {
    pub(super) client: Arc<LeaderClient>,
    pub(super) identity: v1::WorkerIdentity,
    pub(super) job_id: String,
    pub(super) token: i64,
    pub(super) repository: String,
    /// Counts the bytes of the snapshots it commits.
    pub(super) metrics: WorkerMetrics,
}

#[async_trait::async_trait]
impl ManifestPublisher for FencedCommit {
    async fn publish(&self, repo: &Repository, manifest: &Manifest) -> Result<()> {
        let (id, blob) = repo.seal_manifest(manifest)?;
        let request = v1::CommitSnapshotRequest {
            worker: Some(self.identity.clone()),
            job_id: self.job_id.clone(),
            fencing_token: self.token,
            manifest_key: id.manifest_key(),
            manifest_blob: blob,
            snapshot: Some(v1::SnapshotInfo {
                vm: id.vm.clone(),
                timestamp: id.timestamp.clone(),
                repository: self.repository.clone(),
                disks: manifest
                    .disks
                    .iter()
                    .map(|disk| v1::Disk {
                        name: disk.name.clone(),
                        size_bytes: disk.size,
                    })
                    .collect(),
                bytes_uploaded: manifest.disks.iter().map(|d| d.stats.uploaded_bytes).sum(),
                job_id: self.job_id.clone(),
                bytes_read: manifest.disks.iter().map(|d| d.stats.bytes_read).sum(),
                bytes_new: manifest.disks.iter().map(|d| d.stats.new_bytes).sum(),
            }),
        };
        let reply = self
            .client
            .unary(
                WorkerServiceClient::new,
                request.clone(),
                |mut c, r| async move { c.commit_snapshot(r).await },
            )
            .await;
        reply.map_err(|status| WorkerError::from_coordinator("commit", &status))?;
        self.metrics
            .uploaded(manifest.disks.iter().map(|d| d.stats.uploaded_bytes).sum());
        Ok(())
    }
}
