//! `haven backup vsphere`: a VMware VM through the vSphere API (snapshot, changed block
//! tracking, ranged reads of its flat disks over HTTPS).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use haven_vsphere::ConnectOptions;
use haven_worker::{VsphereBackupReport, VsphereBackupRequest, backup_vsphere};

use super::live_backup::LiveArgs;
use crate::common::{disk_figures, human_bytes};

/// Environment variable holding the vSphere user name.
const USER_ENV: &str = "HAVEN_VSPHERE_USER";
/// Environment variable holding the vSphere password.
const PASSWORD_ENV: &str = "HAVEN_VSPHERE_PASSWORD";

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
    /// File with `user=` and `password=` lines (default: HAVEN_VSPHERE_USER and
    /// HAVEN_VSPHERE_PASSWORD from the environment).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// PEM file of the CA(s) to trust for vSphere's certificate instead of the system's.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[command(flatten)]
    live: LiveArgs,
}

/// Runs the backup; Ctrl-C cancels it and removes the vSphere snapshot.
pub async fn run(args: VsphereArgs) -> Result<()> {
    let (user, password) = credentials(args.credentials.as_deref())?;
    let request = VsphereBackupRequest {
        connect: ConnectOptions {
            url: args.url.clone(),
            user,
            password,
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

/// The user name and password, from `file` or the environment.
fn credentials(file: Option<&Path>) -> Result<(String, String)> {
    let Some(file) = file else {
        let user = std::env::var(USER_ENV).ok();
        let password = std::env::var(PASSWORD_ENV).ok();
        return match (user, password) {
            (Some(user), Some(password)) => Ok((user, password)),
            _ => bail!(
                "vSphere credentials: set {USER_ENV} and {PASSWORD_ENV}, or pass --credentials FILE"
            ),
        };
    };
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the credentials file {}", file.display()))?;
    let mut user = None;
    let mut password = None;
    for line in text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
    {
        match line.split_once('=') {
            Some(("user", value)) => user = Some(value.trim().to_string()),
            Some(("password", value)) => password = Some(value.to_string()),
            _ => bail!(
                "credentials file {}: lines must be user=... or password=...",
                file.display()
            ),
        }
    }
    match (user, password) {
        (Some(user), Some(password)) => Ok((user, password)),
        _ => bail!(
            "credentials file {} needs a user= and a password= line",
            file.display()
        ),
    }
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
