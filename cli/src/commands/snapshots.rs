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
    /// Why it is only crash-consistent although a freeze was asked, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    consistency_reason: Option<String>,
    source: String,
    parent: Option<String>,
    disks: Vec<DiskLine>,
    /// The newest boot test (`haven verify --boot`), if any.
    boot: Option<BootLine>,
}

#[derive(Serialize)]
struct BootLine {
    outcome: haven_repo::BootOutcome,
    booted_at: String,
    check: String,
    duration_ms: u64,
    detail: String,
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
        // One unreadable boot record must not hide the list: it is reported instead.
        let record = haven_repo::latest_boot_record(&repo, &id)
            .await
            .unwrap_or_else(|error| {
                eprintln!("warning: boot record of {id} unreadable: {error}");
                None
            });
        let boot = record.map(|record| BootLine {
            outcome: record.outcome,
            booted_at: record.booted_at,
            check: record.check,
            duration_ms: record.duration_ms,
            detail: record.detail,
        });
        lines.push(SnapshotLine {
            snapshot: id.to_string(),
            vm: manifest.vm,
            timestamp: manifest.timestamp,
            consistency: manifest.consistency,
            consistency_reason: manifest.consistency_reason,
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
            boot,
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
        let boot = match &line.boot {
            Some(boot) => format!(
                "  boot {} {}",
                match boot.outcome {
                    haven_repo::BootOutcome::Passed => "passed",
                    haven_repo::BootOutcome::Failed => "FAILED",
                },
                boot.booted_at
            ),
            None => String::new(),
        };
        let consistency = match (line.consistency, &line.consistency_reason) {
            (haven_repo::Consistency::ApplicationConsistent, _) => {
                "  application-consistent".into()
            }
            (_, Some(reason)) => format!("  crash-consistent ({reason})"),
            _ => String::new(),
        };
        println!("{}  {}{consistency}{boot}", line.snapshot, disks.join(", "));
    }
    Ok(())
}
