//! Prune, GC and replication jobs: the repository operations a coordinator schedules
//! besides backups.

use std::time::Duration;

use haven_proto::v1;
use haven_repo::{Backend, Progress, Repository};

use super::pins::ClusterPins;
use crate::error::Result;

/// What a job needs of the other site.
#[derive(Clone, Copy)]
pub(super) struct Sites<'a> {
    /// The primary a replica's prune compares with (`None` for jobs at the primary).
    pub primary: Option<&'a Backend>,
    /// The key that signs replication's writes at the secondary.
    pub secondary_key: Option<&'a haven_repo::S3Credentials>,
}

/// Runs a prune, GC or replication job; returns its summary and, for a prune, the
/// snapshots it removed.
pub(super) async fn run_maintenance(
    repo: &Repository,
    job: &v1::JobAssignment,
    pins: &ClusterPins,
    progress: &Progress,
    sites: Sites<'_>,
) -> Result<(String, Vec<String>)> {
    if job.kind == v1::JobKind::Prune as i32 {
        let rules = job.retention.unwrap_or_default();
        let policy = haven_repo::RetentionPolicy::from_counts([
            rules.keep_last,
            rules.keep_hourly,
            rules.keep_daily,
            rules.keep_weekly,
            rules.keep_monthly,
            rules.keep_yearly,
        ]);
        let (decisions, at) = match sites.primary {
            None => (
                haven_repo::prune_snapshots(repo, Some(&job.vm), &policy, pins, false).await?,
                String::new(),
            ),
            Some(primary) => {
                let report =
                    haven_repo::prune_replica(repo, primary, &job.vm, &policy, pins).await?;
                let at = format!(
                    " at the replica ({} tombstones of snapshots gone from the primary cleared)",
                    report.tombstones_cleared
                );
                (report.decisions, at)
            }
        };
        let removed: Vec<String> = decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.id.to_string())
            .collect();
        let summary = format!(
            "pruned {}{at}: kept {}, removed {} ({})",
            job.vm,
            decisions.len() - removed.len(),
            removed.len(),
            policy.describe()
        );
        Ok((summary, removed))
    } else if job.kind == v1::JobKind::Gc as i32 {
        let options = haven_repo::GcOptions {
            margin: Duration::from_secs(job.gc_margin_seconds),
            ..haven_repo::GcOptions::default()
        };
        let report = haven_repo::collect_garbage(repo, pins, &options).await?;
        Ok((
            format!(
                "gc: removed {} chunks ({} bytes) and {} indexes; {} referenced, {} too young, {} missing",
                report.chunks_removed,
                report.bytes_removed,
                report.indexes_removed,
                report.chunks_referenced,
                report.chunks_too_young,
                report.chunks_missing
            ),
            Vec::new(),
        ))
    } else {
        // The secondary site has keys of its own: `storage.secondary_key_file`, else
        // the environment, as for `haven replicate`.
        let secondary = match sites.secondary_key {
            Some(key) => Some(key.clone()),
            None => haven_repo::S3Credentials::secondary_from_env()?,
        };
        let to = Backend::from_url_with_credentials(&job.replicate_to, true, secondary.as_ref())?;
        let report = haven_repo::replicate(
            repo.backend(),
            &to,
            &haven_repo::ReplicateOptions::default(),
            progress,
        )
        .await?;
        Ok((
            format!(
                "replicated to {}: {} chunks, {} indexes, {} manifests copied",
                job.replicate_to,
                report.chunks_copied,
                report.indexes_copied,
                report.manifests_copied
            ),
            Vec::new(),
        ))
    }
}
