//! The cluster's way to publish a snapshot: the coordinator's fenced commit.

use std::sync::Arc;

use haven_proto::LeaderClient;
use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_repo::{Manifest, Repository, SnapshotId};

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

/// The coordinator's catalog entry of snapshot `id` with `manifest`, in `repository`,
/// made by job `job_id` (empty when not made by a job, as in `haven catalog rebuild`).
pub fn snapshot_info(
    id: &SnapshotId,
    manifest: &Manifest,
    repository: &str,
    job_id: &str,
) -> v1::SnapshotInfo {
    let sum = |field: fn(&haven_repo::DiskStats) -> u64| -> u64 {
        manifest.disks.iter().map(|disk| field(&disk.stats)).sum()
    };
    v1::SnapshotInfo {
        vm: id.vm.clone(),
        timestamp: id.timestamp.clone(),
        repository: repository.to_string(),
        disks: manifest
            .disks
            .iter()
            .map(|disk| v1::Disk {
                name: disk.name.clone(),
                size_bytes: disk.size,
            })
            .collect(),
        bytes_uploaded: sum(|stats| stats.uploaded_bytes),
        job_id: job_id.to_string(),
        bytes_read: sum(|stats| stats.bytes_read),
        bytes_new: sum(|stats| stats.new_bytes),
    }
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
            snapshot: Some(snapshot_info(&id, manifest, &self.repository, &self.job_id)),
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
