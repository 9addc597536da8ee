//! `haven catalog rebuild`: teaches a coordinator the snapshots a repository holds.
//!
//! A coordinator's catalog is written by its own commits, so a coordinator at the
//! disaster-recovery site starts empty while the replica holds every VM's history.
//! This reads the replica's manifests (with the repository password, which the
//! coordinator never holds) and imports what they say; afterwards
//! `haven restore --coordinator … VM` works at that site as it did at the primary.

use anyhow::Result;
use futures::{StreamExt, TryStreamExt};
use haven_proto::v1::{self, admin_service_client::AdminServiceClient};
use haven_worker::daemon::snapshot_info;

use crate::common::{CoordinatorUrl, OutputArgs, RepoArgs, print_json};

/// Snapshots imported per request (the coordinator accepts at most 1,000).
const PER_REQUEST: usize = 500;
/// Manifests read at once.
const READS_AHEAD: usize = 16;

/// `haven catalog`.
#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Import every snapshot of a repository the coordinator's catalog lacks (the
    /// disaster-recovery site's replica, after a failover). Existing entries stay.
    Rebuild {
        #[command(flatten)]
        repo: RepoArgs,
        /// Only this VM's snapshots.
        #[arg(long)]
        vm: Option<String>,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Runs `haven catalog`.
pub async fn run(command: CatalogCommand) -> Result<()> {
    let CatalogCommand::Rebuild {
        repo: repo_args,
        vm,
        coordinator,
        output,
    } = command;
    let repo = repo_args.open().await?;
    let ids = repo.list_snapshots(vm.as_deref()).await?;
    let found = ids.len();
    // Streamed by batch: memory holds one batch of records, whatever the history.
    let mut batches = futures::stream::iter(ids)
        .map(|id| {
            let repo = repo.clone();
            let repository = repo_args.repo.clone();
            async move {
                let manifest = repo.read_manifest(&id).await?;
                anyhow::Ok(snapshot_info(&id, &manifest, &repository, ""))
            }
        })
        .buffered(READS_AHEAD)
        .try_chunks(PER_REQUEST);
    let client = coordinator.client()?;
    let (mut added, mut present) = (0, 0);
    while let Some(snapshots) = batches.try_next().await.map_err(|error| error.1)? {
        let request = v1::ImportSnapshotsRequest { snapshots };
        let reply = client
            .unary(AdminServiceClient::new, request, |mut c, r| async move {
                c.import_snapshots(r).await
            })
            .await?;
        added += reply.added;
        present += reply.present;
    }
    if output.json {
        return print_json(&serde_json::json!({
            "repository": repo_args.repo, "found": found, "added": added, "present": present,
        }));
    }
    println!(
        "{found} snapshots in {}: {added} added to the catalog, {present} already in it",
        repo_args.repo
    );
    Ok(())
}
