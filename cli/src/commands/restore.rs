//! `haven restore`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use haven_repo::{Progress, SnapshotRef};
use haven_worker::restore::nbd::{NbdRestoreRequest, restore_to_nbd};
use haven_worker::restore::{RestoreFormat, RestoreRequest, restore_disk};

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};
use crate::progress::ProgressLine;

/// Arguments of `haven restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot: VM@TIMESTAMP, VM@latest or VM.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    /// Disk to restore (may be left out when the snapshot has one disk).
    #[arg(long)]
    disk: Option<String>,
    /// Output file, or an existing disk exported over NBD
    /// (`nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST[:PORT]/EXPORT`) of the same size.
    #[arg(long)]
    to: String,
    /// With an NBD target: read each slot of the target first and write only the slots
    /// whose content differs.
    #[arg(long)]
    only_changed: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Raw)]
    format: FormatArg,
    /// Replace the output file if it exists.
    #[arg(long)]
    force: bool,
    /// Chunks fetched and written concurrently.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

/// Restores one disk of a snapshot.
pub async fn run(args: RestoreArgs) -> Result<()> {
    if is_nbd_uri(&args.to) {
        return run_nbd(args).await;
    }
    if args.only_changed {
        anyhow::bail!("--only-changed needs an NBD target (--to nbd+unix://... or nbd://...)");
    }
    let repo = args.repo.open().await?;
    let request = RestoreRequest {
        snapshot: args.snapshot.clone(),
        disk: args.disk.clone(),
        to: PathBuf::from(&args.to),
        format: match args.format {
            FormatArg::Raw => RestoreFormat::Raw,
            FormatArg::Qcow2 => RestoreFormat::Qcow2,
        },
        force: args.force,
        in_flight: args.parallel.clamp(1, 64),
    };
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("restore", progress.clone(), args.output.json);
    let report = restore_disk(repo, &request, progress).await?;
    drop(line);
    if args.output.json {
        return print_json(&report);
    }
    println!(
        "restored {} disk {} to {} ({}, {} written, {}/s)",
        report.snapshot,
        report.disk,
        report.to,
        human_bytes(report.size),
        human_bytes(report.bytes_written),
        human_bytes((report.size as f64 / report.elapsed_seconds.max(0.001)) as u64)
    );
    Ok(())
}

/// Whether `--to` names an NBD export rather than a file.
fn is_nbd_uri(to: &str) -> bool {
    [
        "nbd://",
        "nbd+unix://",
        "nbd+tcp://",
        "nbds://",
        "nbds+unix://",
        "nbds+tcp://",
    ]
    .iter()
    .any(|scheme| to.starts_with(scheme))
}

/// Restores into an existing disk exported over NBD.
async fn run_nbd(args: RestoreArgs) -> Result<()> {
    if !matches!(args.format, FormatArg::Raw) || args.force {
        anyhow::bail!("--format and --force apply to file targets only, not to an NBD export");
    }
    let repo = args.repo.open().await?;
    let request = NbdRestoreRequest {
        snapshot: args.snapshot.clone(),
        disk: args.disk.clone(),
        uri: args.to.clone(),
        only_changed: args.only_changed,
        in_flight: args.parallel.clamp(1, 64),
    };
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("restore", progress.clone(), args.output.json);
    let report = restore_to_nbd(repo, &request, progress).await?;
    drop(line);
    if args.output.json {
        return print_json(&report);
    }
    println!(
        "restored {} disk {} into {} ({}, {} written, {} zeroed, {} compared, {} unchanged)",
        report.snapshot,
        report.disk,
        report.to,
        human_bytes(report.size),
        human_bytes(report.bytes_written),
        human_bytes(report.bytes_zeroed),
        human_bytes(report.bytes_compared),
        human_bytes(report.bytes_unchanged)
    );
    Ok(())
}
