//! `haven backup libvirt`: a running libvirt domain, through `virsh` pull-mode backups.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use haven_worker::{LibvirtBackupReport, LibvirtBackupRequest, backup_libvirt};

use super::live_backup::LiveArgs;
use crate::common::disk_figures;

/// Arguments of `haven backup libvirt`.
#[derive(Debug, clap::Args)]
pub struct LibvirtArgs {
    /// libvirt domain name.
    #[arg(long)]
    domain: String,
    /// libvirt connection URI (default: virsh's default connection).
    #[arg(long)]
    uri: Option<String>,
    /// VM name the snapshot is filed under (default: the domain name).
    #[arg(long)]
    vm: Option<String>,
    /// User QEMU runs as; it gets the scratch folder.
    #[arg(long, default_value = "libvirt-qemu")]
    qemu_user: String,
    /// Freeze the guest's file systems through the QEMU guest agent at the snapshot
    /// point (falls back to crash-consistent when the agent does not answer).
    #[arg(long)]
    quiesce: bool,
    /// Seconds allowed for each virsh call.
    #[arg(long, default_value_t = 60)]
    virsh_timeout: u64,
    /// Folder for the scratch files and the NBD socket.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    scratch_dir: PathBuf,
    #[command(flatten)]
    live: LiveArgs,
}

/// Runs the backup; Ctrl-C or SIGTERM cancels it, ends the libvirt job and drops its checkpoint.
pub async fn run(args: LibvirtArgs) -> Result<()> {
    let vm = args.vm.clone().unwrap_or_else(|| args.domain.clone());
    let request = LibvirtBackupRequest {
        live: args.live.options(vm),
        domain: args.domain.clone(),
        uri: args.uri.clone(),
        scratch_dir: args.scratch_dir.clone(),
        qemu_user: Some(args.qemu_user.clone()).filter(|user| !user.is_empty()),
        quiesce: args.quiesce,
        virsh_timeout: Duration::from_secs(args.virsh_timeout.max(1)),
    };
    args.live
        .run(
            |repo, progress, shutdown| backup_libvirt(repo, &request, progress, shutdown),
            print_report,
        )
        .await
}

fn print_report(report: &LibvirtBackupReport) -> Result<()> {
    println!(
        "snapshot {} committed (domain {}, checkpoint {}, backup-begin {:.1} ms)",
        report.backup.snapshot, report.domain, report.checkpoint, report.snapshot_point_ms
    );
    for (disk, mode) in report.backup.disks.iter().zip(&report.modes) {
        println!("  {}: {}; {}", disk.name, disk_figures(disk), mode.read);
    }
    if !report.deleted_checkpoints.is_empty() {
        println!(
            "  older checkpoints deleted: {}",
            report.deleted_checkpoints.join(", ")
        );
    }
    Ok(())
}
