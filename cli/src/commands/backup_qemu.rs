//! `haven backup qemu`: a running QEMU or qemu-storage-daemon, through QMP.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use haven_worker::{QemuBackupReport, QemuBackupRequest, backup_qemu};

use super::live_backup::LiveArgs;
use crate::common::disk_figures;

/// Arguments of `haven backup qemu`.
#[derive(Debug, clap::Args)]
pub struct QemuArgs {
    /// QMP socket of the running QEMU or qemu-storage-daemon.
    #[arg(long)]
    qmp: PathBuf,
    /// VM name the snapshot is filed under.
    #[arg(long)]
    pub(super) vm: String,
    /// QEMU guest agent socket: freeze file systems at the snapshot point.
    #[arg(long)]
    guest_agent: Option<PathBuf>,
    /// Unix socket of the NBD server QEMU already runs (QEMU runs at most one);
    /// without it Haven starts its own on a private socket.
    #[arg(long)]
    nbd_server: Option<PathBuf>,
    /// Seconds allowed for each QMP command.
    #[arg(long, default_value_t = 30)]
    qmp_timeout: u64,
    /// The freeze limit in seconds: the guest's file systems stay frozen at most this
    /// long (the freeze and the snapshot point), and are thawed when it runs out.
    #[arg(long, default_value_t = 10)]
    freeze_timeout: u64,
    /// Folder for the temporary overlays; QEMU must be able to write there.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    scratch_dir: PathBuf,
    #[command(flatten)]
    live: LiveArgs,
}

/// Runs the backup; Ctrl-C or SIGTERM cancels it and leaves QEMU as it was.
pub async fn run(args: QemuArgs) -> Result<()> {
    let request = QemuBackupRequest {
        live: args.live.options(args.vm.clone()),
        qmp: args.qmp.clone(),
        guest_agent: args.guest_agent.clone(),
        nbd_server: args.nbd_server.clone(),
        scratch_dir: args.scratch_dir.clone(),
        qmp_timeout: Duration::from_secs(args.qmp_timeout.max(1)),
        freeze_timeout: Duration::from_secs(args.freeze_timeout.max(1)),
    };
    args.live
        .run(
            |repo, progress, shutdown| backup_qemu(repo, &request, progress, shutdown),
            print_report,
        )
        .await
}

fn print_report(report: &QemuBackupReport) -> Result<()> {
    println!(
        "snapshot {} committed ({}; snapshot point {:.1} ms, guest i/o held {:.1} ms)",
        report.backup.snapshot,
        serde_json::to_value(report.consistency)?
            .as_str()
            .unwrap_or("unknown"),
        report.transaction_ms,
        report.io_blocked_ms
    );
    for warning in &report.backup.warnings {
        println!("  warning: {warning}");
    }
    for (disk, mode) in report.backup.disks.iter().zip(&report.modes) {
        println!(
            "  {} [{}]: {}; {}",
            disk.name,
            mode.node,
            disk_figures(disk),
            mode.read
        );
    }
    Ok(())
}
