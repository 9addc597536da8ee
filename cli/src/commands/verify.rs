//! `haven verify`.

use std::sync::Arc;

use anyhow::{Context, Result};
use haven_repo::{
    Backend, Phase, Progress, Repository, SnapshotRef, VerifyOptions, VerifyOutcome,
    check_same_repository, verify_snapshots,
};

mod boot;

use haven_worker::boot::BootCheck;

use crate::commands::gc::parse_duration;
use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};
use crate::exit::CliError;
use crate::progress::ProgressLine;

/// Arguments of `haven verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Snapshot to verify (VM@TIMESTAMP or VM@latest); every snapshot when omitted.
    #[arg(conflicts_with = "vm")]
    snapshot: Option<SnapshotRef>,
    /// Verify every snapshot of this VM only.
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    repo: RepoArgs,
    /// Chunks checked concurrently.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Check only this percentage (0 < P ≤ 100) of each snapshot's distinct chunks,
    /// picked at random; manifests and indexes are always checked.
    #[arg(long, value_name = "PERCENT", default_value_t = 100.0)]
    sample: f64,
    /// A replica of this repository (same password): bad or missing objects are copied
    /// from it, checked, written over the bad ones and checked again. S3 credentials:
    /// HAVEN_SECONDARY_AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY if set, else AWS_*.
    #[arg(long, value_name = "URL")]
    repair_from: Option<String>,
    #[command(flatten)]
    boot: BootArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// `haven verify --boot`: the options of a boot test.
#[derive(Debug, clap::Args)]
pub struct BootArgs {
    /// Boot the snapshot in a sandbox instead of re-reading its chunks: QEMU on
    /// read-only NBD exports under throw-away overlays, no network (an isolated one
    /// for `--check tcp:PORT`), the kernel and initrd from the snapshot's /boot. The verdict, serial log and screenshot are
    /// stored beside the snapshot.
    #[arg(long, requires = "snapshot", conflicts_with_all = ["sample", "repair_from"])]
    pub(crate) boot: bool,
    /// What decides that the guest came up: `agent` (the QEMU guest agent answers
    /// guest-ping), `serial:TEXT` (the serial console prints TEXT) or `tcp:PORT` (the
    /// guest accepts a TCP connection on PORT; the sandbox then gives it an isolated
    /// network).
    #[arg(long, requires = "boot", default_value = "agent", value_name = "CHECK")]
    pub(crate) check: BootCheck,
    /// How long the guest has to pass the check (30s, 5m, …).
    #[arg(long, requires = "boot", default_value = "5m", value_parser = parse_duration)]
    pub(crate) timeout: std::time::Duration,
    /// At most this many virtual CPUs (the recorded configuration's count otherwise, or 1).
    #[arg(long, requires = "boot", default_value_t = 2)]
    pub(crate) max_cpus: u32,
    /// At most this much memory in MiB (the recorded configuration's otherwise, or 512).
    #[arg(long, requires = "boot", default_value_t = 2048)]
    pub(crate) max_memory: u64,
    /// Also write the evidence (serial.log, screen.png) into this folder.
    #[arg(long, requires = "boot", value_name = "DIR")]
    pub(crate) evidence: Option<std::path::PathBuf>,
}

/// Re-reads and checks every object the chosen snapshots depend on, records the verdict
/// per snapshot in the repository, and optionally repairs from a replica.
pub async fn run(args: VerifyArgs) -> Result<()> {
    if args.boot.boot {
        let Some(snapshot) = args.snapshot else {
            usage!("--boot needs a snapshot: haven verify --boot VM@TIME");
        };
        let repo = args.repo.open().await?;
        return boot::run(repo, snapshot, args.boot, args.output.json).await;
    }
    let repo = args.repo.open().await?;
    let snapshots = match (&args.snapshot, &args.vm) {
        (Some(reference), _) => vec![repo.resolve(reference).await?],
        (None, vm) => repo.list_snapshots(vm.as_deref()).await?,
    };
    let repair_from = match &args.repair_from {
        None => None,
        Some(url) => {
            let credentials = haven_repo::S3Credentials::secondary_from_env()?;
            let backend = Backend::from_url_with_credentials(url, false, credentials.as_ref())?;
            let replica = Repository::open(backend, &args.repo.password()?)
                .await
                .with_context(|| format!("cannot open the replica {url}"))?;
            check_same_repository(&repo, &replica)?;
            Some(Arc::new(replica))
        }
    };
    let options = VerifyOptions {
        concurrency: args.parallel.clamp(1, 256),
        sample_percent: args.sample,
        repair_from,
        record: true,
    };
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("verify", Phase::Verify, progress.clone(), args.output.json);
    let report = verify_snapshots(repo, &snapshots, &options, &progress).await?;
    line.finish(report.is_ok());
    if args.output.json {
        print_json(&report)?;
    } else {
        for object in &report.repaired {
            println!("REPAIRED {object}");
        }
        for failure in &report.failures {
            println!("FAILED {}: {}", failure.object, failure.reason);
        }
        for error in &report.record_errors {
            eprintln!("warning: verdict not recorded: {error}");
        }
        for verdict in &report.verdicts {
            if verdict.outcome == VerifyOutcome::Failed {
                println!("snapshot {} FAILED", verdict.snapshot);
            }
        }
        for snapshot in &report.removed {
            println!("snapshot {snapshot} removed while it was verified (prune or forget)");
        }
        println!(
            "{} snapshot(s), {} chunks ({}) checked, {} repaired, {} failure(s)",
            report.snapshots.len(),
            report.chunks_checked,
            human_bytes(report.bytes_checked),
            report.repaired.len(),
            report.failures.len()
        );
    }
    if !report.is_ok() {
        let first = &report.failures[0];
        return Err(CliError::Partial(format!(
            "verification failed: {} object(s) bad, first {} ({})",
            report.failures.len(),
            first.object,
            first.reason
        ))
        .into());
    }
    Ok(())
}
