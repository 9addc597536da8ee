//! `haven prune`: remove snapshots a retention policy does not keep.
//!
//! The plan comes from the pure [`haven_repo::plan_retention`] (rules, UTC periods and
//! ISO weeks are documented there). Removing a snapshot deletes its manifest first —
//! the commit point: once it is gone the snapshot no longer exists — and then its
//! indexes. Chunks are never touched: freeing them is garbage collection's job, which
//! must account for running backups (`haven gc`). A snapshot is always kept when its
//! manifest carries the label `protected=true`, when it has an active protection record
//! (`haven protect`), or when a running backup builds on it (its lease names it as
//! base).

use anyhow::{Context, Result};
use haven_repo::{RepositoryLeases, RetentionPolicy, prune_snapshots};
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, print_json};

/// What the output says about chunks.
const CHUNK_NOTE: &str =
    "chunks are not removed by prune; space is freed by garbage collection (haven gc)";

/// Arguments of `haven prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N")]
    keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours (UTC).
    #[arg(long, value_name = "N")]
    keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days (UTC).
    #[arg(long, value_name = "N")]
    keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent ISO weeks (UTC).
    #[arg(long, value_name = "N")]
    keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent months (UTC).
    #[arg(long, value_name = "N")]
    keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent years (UTC).
    #[arg(long, value_name = "N")]
    keep_yearly: Option<u32>,
    /// Only this VM's snapshots (default: every VM, each planned on its own).
    #[arg(long)]
    vm: Option<String>,
    /// Print what would be removed without removing anything.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Serialize)]
struct PruneReport {
    dry_run: bool,
    policy: String,
    snapshots: Vec<SnapshotLine>,
    kept: usize,
    removed: usize,
    note: &'static str,
}

#[derive(Serialize)]
struct SnapshotLine {
    snapshot: String,
    vm: String,
    timestamp: String,
    keep: bool,
    reasons: Vec<&'static str>,
}

/// Plans per VM and removes (or, with `--dry-run`, lists) what the policy does not keep.
pub async fn run(args: PruneArgs) -> Result<()> {
    let policy = RetentionPolicy {
        keep_last: args.keep_last,
        keep_hourly: args.keep_hourly,
        keep_daily: args.keep_daily,
        keep_weekly: args.keep_weekly,
        keep_monthly: args.keep_monthly,
        keep_yearly: args.keep_yearly,
    };
    if !policy.keeps_something() {
        usage!(
            "refusing to prune without a retention rule: give at least one --keep-* option above zero"
        );
    }
    let repo = args.repo.open().await?;
    let decisions = prune_snapshots(
        &repo,
        args.vm.as_deref(),
        &policy,
        &RepositoryLeases,
        args.dry_run,
    )
    .await
    .context("prune stopped")?;
    let lines: Vec<SnapshotLine> = decisions
        .into_iter()
        .map(|decision| SnapshotLine {
            snapshot: decision.id.to_string(),
            vm: decision.id.vm.clone(),
            timestamp: decision.id.timestamp.clone(),
            keep: decision.keep,
            reasons: decision.reasons,
        })
        .collect();
    let removed = lines.iter().filter(|line| !line.keep).count();
    let report = PruneReport {
        dry_run: args.dry_run,
        policy: policy.describe(),
        kept: lines.len() - removed,
        removed,
        snapshots: lines,
        note: CHUNK_NOTE,
    };
    if args.output.json {
        return print_json(&report);
    }
    for line in &report.snapshots {
        if line.keep {
            println!("keep    {}  ({})", line.snapshot, line.reasons.join(", "));
        } else if report.dry_run {
            println!("would remove {}", line.snapshot);
        } else {
            println!("removed {}", line.snapshot);
        }
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{}: kept {}, {verb} {} snapshot(s); {}",
        report.policy, report.kept, report.removed, CHUNK_NOTE
    );
    Ok(())
}
