//! `haven backup vsphere`: a VMware VM through the vSphere API (snapshot, changed block
//! tracking, ranged reads of its flat disks over HTTPS).

use std::path::PathBuf;

use anyhow::Result;
use haven_vsphere::{ConnectOptions, Credentials};
use haven_worker::{VsphereBackupReport, VsphereBackupRequest, backup_vsphere};

use super::live_backup::LiveArgs;
use crate::common::{disk_figures, human_bytes};

/// Arguments of `haven backup vsphere`.
#[derive(Debug, clap::Args)]
pub struct VsphereArgs {
    /// vCenter or ESXi SDK endpoint, `https://HOST/sdk`.
    #[arg(long)]
    url: String,
    /// The VM's name in vSphere.
    #[arg(long = "vm")]
    vm_name: String,
    /// VM name the snapshot is filed under (default: the vSphere name).
    #[arg(long = "name")]
    name: Option<String>,
    /// TOML file with `user = "…"` and `password = "…"` (default: HAVEN_VSPHERE_USER
    /// and HAVEN_VSPHERE_PASSWORD from the environment).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// PEM file of the CA(s) to trust for vSphere's certificate instead of the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    live: LiveArgs,
}

/// Runs the backup; Ctrl-C or SIGTERM cancels it and removes the vSphere snapshot.
pub async fn run(args: VsphereArgs) -> Result<()> {
    let credentials = match &args.credentials {
        Some(file) => Credentials::from_file(file)?,
        None => Credentials::from_env()?,
    };
    let request = VsphereBackupRequest {
        connect: ConnectOptions {
            url: args.url.clone(),
            credentials,
            ca_file: args.ca_file.clone(),
        },
        live: args
            .live
            .options(args.name.clone().unwrap_or_else(|| args.vm_name.clone())),
        vm_name: args.vm_name.clone(),
    };
    args.live
        .run(
            |repo, progress, shutdown| backup_vsphere(repo, &request, progress, shutdown),
            print_report,
        )
        .await
}

fn print_report(report: &VsphereBackupReport) -> Result<()> {
    println!(
        "snapshot {} committed ({:?}, vSphere snapshot {} removed)",
        report.backup.snapshot, report.consistency, report.vsphere_snapshot
    );
    if report.enabled_change_tracking {
        println!("  change tracking turned on");
    }
    if !report.removed_leftovers.is_empty() {
        println!(
            "  snapshots an earlier run left, removed: {}",
            report.removed_leftovers.join(", ")
        );
    }
    for (disk, mode) in report.backup.disks.iter().zip(&report.modes) {
        println!(
            "  {}: {}; {} ({} in vSphere's areas)",
            disk.name,
            disk_figures(disk),
            mode.read,
            human_bytes(mode.area_bytes)
        );
    }
    Ok(())
}
