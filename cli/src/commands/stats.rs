//! `haven stats`: what the repository holds and what deduplication and compression
//! save, in total and per VM (`haven_repo::repository_stats` says what each figure
//! means). Read-only and safe while backups run.

use anyhow::Result;
use haven_repo::{VmStats, repository_stats};

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};

/// Arguments of `haven stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Only this VM's snapshots (chunks other VMs share still count as shared).
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Prints the statistics.
pub async fn run(args: StatsArgs) -> Result<()> {
    let repo = args.repo.open().await?;
    let stats = repository_stats(&repo, args.vm.as_deref()).await?;
    if args.output.json {
        return print_json(&stats);
    }
    println!(
        "repository: {} in storage; {} unreferenced chunk(s), {} (freed by haven gc)",
        human_bytes(stats.repository_bytes),
        stats.unreferenced_chunks,
        human_bytes(stats.unreferenced_bytes),
    );
    println!("{}", line("total", &stats.total));
    for (vm, vm_stats) in &stats.vms {
        println!(
            "{}, {} only its own",
            line(vm, vm_stats),
            human_bytes(vm_stats.exclusive_bytes)
        );
    }
    Ok(())
}

/// One VM's (or the total's) figures on one line.
fn line(name: &str, stats: &VmStats) -> String {
    format!(
        "{name}: {} snapshot(s), {} of disks ({} data) in {} unique, {} stored; dedup {:.2}x, compression {:.2}x",
        stats.snapshots,
        human_bytes(stats.logical_bytes),
        human_bytes(stats.data_bytes),
        human_bytes(stats.unique_bytes),
        human_bytes(stats.stored_bytes),
        stats.dedup_ratio,
        stats.compression_ratio,
    )
}
