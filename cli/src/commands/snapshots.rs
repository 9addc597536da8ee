//! `haven snapshots`.

use anyhow::Result;
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};

/// Arguments of `haven snapshots`.
#[derive(Debug, clap::Args)]
pub struct SnapshotsArgs {
    /// Repository URL: file:///path, s3://bucket/prefix?endpoint=http://host:port
    #[arg(long, env = "HAVEN_REPO", required_unless_present = "coordinator")]
    repo: Option<String>,
    /// File whose first line is the repository password (otherwise $HAVEN_PASSWORD).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    password_file: Option<std::path::PathBuf>,
    /// List the cluster's catalog from these coordinator URLs instead (no password).
    #[arg(long, value_delimiter = ',', conflicts_with = "repo")]
    coordinator: Vec<String>,
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
    let Some(repo) = args.repo else {
        let coordinator = crate::commands::admin::CoordinatorUrl {
            coordinator: args.coordinator,
        };
        return crate::commands::admin::snapshots(&coordinator, args.vm, args.output.json).await;
    };
    let repo = RepoArgs {
        repo,
        password_file: args.password_file,
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
