//! `haven verify`.

use std::sync::Arc;

use anyhow::{Result, bail};
use haven_repo::{Progress, SnapshotRef, verify_snapshots};

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};
use crate::progress::ProgressLine;

/// Arguments of `haven verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Snapshot to verify (VM@TIMESTAMP or VM@latest); every snapshot when omitted.
    snapshot: Option<SnapshotRef>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Chunks checked concurrently.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[command(flatten)]
    output: OutputArgs,
}

/// Re-reads and checks every object the chosen snapshots depend on.
pub async fn run(args: VerifyArgs) -> Result<()> {
    let repo = args.repo.open().await?;
    let snapshots = match &args.snapshot {
        Some(reference) => vec![repo.resolve(reference).await?],
        None => repo.list_snapshots(None).await?,
    };
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("verify", progress.clone(), args.output.json);
    let report = verify_snapshots(repo, &snapshots, args.parallel.clamp(1, 64), &progress).await?;
    drop(line);
    if args.output.json {
        print_json(&report)?;
    } else {
        for failure in &report.failures {
            println!("FAILED {}: {}", failure.object, failure.reason);
        }
        println!(
            "{} snapshot(s), {} chunks ({}) checked, {} failure(s)",
            report.snapshots.len(),
            report.chunks_checked,
            human_bytes(report.bytes_checked),
            report.failures.len()
        );
    }
    if !report.is_ok() {
        let first = &report.failures[0];
        bail!(
            "verification failed: {} object(s) bad, first {} ({})",
            report.failures.len(),
            first.object,
            first.reason
        );
    }
    Ok(())
}
