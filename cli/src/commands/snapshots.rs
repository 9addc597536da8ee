//! `haven snapshots`.

use anyhow::Result;
use serde::Serialize;

use crate::common::{CatalogRepoArgs, OutputArgs, RepoArgs, human_bytes, print_json};

/// Arguments of `haven snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    #[command(flatten)]
    repo: CatalogRepoArgs,
    /// Only this VM's snapshots.
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Serialize)]
struct SnapshotLine {
    snapshot: String,
    vm: String,
    timestamp: String,
    consistency: haven_repo::Consistency,
    source: String,
    parent: Option<String>,
    disks: Vec<DiskLine>,
}

#[derive(Serialize)]
struct DiskLine {
    name: String,
    size: u64,
    new_bytes: u64,
    uploaded_bytes: u64,
}

/// Lists committed snapshots, oldest first.
pub async fn run(args: SnapshotsArgs) -> Result<()> {
    let Some(repo) = args.repo.repo else {
        let coordinator = crate::common::CoordinatorUrl {
            coordinator: args.repo.coordinator,
            credentials: args.repo.credentials,
        };
        return crate::commands::admin::snapshots(&coordinator, args.vm, args.output.json).await;
    };
    let repo = RepoArgs {
        repo,
        password_file: args.repo.password_file,
    }
    .open()
    .await?;
    let ids = repo.list_snapshots(args.vm.as_deref()).await?;
    let mut lines = Vec::with_capacity(ids.len());
    for id in ids {
        let manifest = repo.read_manifest(&id).await?;
        lines.push(SnapshotLine {
            snapshot: id.to_string(),
            vm: manifest.vm,
            timestamp: manifest.timestamp,
            consistency: manifest.consistency,
            source: format!("{} {}", manifest.source.kind, manifest.source.origin),
            parent: manifest.parent,
            disks: manifest
                .disks
                .into_iter()
                .map(|disk| DiskLine {
                    name: disk.name,
                    size: disk.size,
                    new_bytes: disk.stats.new_bytes,
                    uploaded_bytes: disk.stats.uploaded_bytes,
                })
                .collect(),
        });
    }
    if args.output.json {
        return print_json(&lines);
    }
    if lines.is_empty() {
        println!("no snapshots");
    }
    for line in &lines {
        let disks: Vec<String> = line
            .disks
            .iter()
            .map(|disk| {
                format!(
                    "{} {} (+{} stored)",
                    disk.name,
                    human_bytes(disk.size),
                    human_bytes(disk.uploaded_bytes)
                )
            })
            .collect();
        println!("{}  {}", line.snapshot, disks.join(", "));
    }
    Ok(())
}
