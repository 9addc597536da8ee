//! `haven backup image`.

use std::path::PathBuf;

use anyhow::Result;
use haven_repo::Phase;
use haven_worker::BackupReport;
use haven_worker::{ImageBackupRequest, ImageDisk, ImageReader, backup_images};
use tracing::Instrument;

use crate::common::{OutputArgs, RepoArgs, disk_figures, human_bytes};
use crate::progress::run_and_report;

/// Sources a backup can read from.
#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up disk image files (qcow2, raw, vmdk, vhdx, ...) as one snapshot.
    Image(ImageArgs),
    /// Back up a running QEMU or qemu-storage-daemon through QMP (consistent, incremental).
    Qemu(super::backup_qemu::QemuArgs),
    /// Back up a running libvirt domain (pull-mode backup-begin, checkpoints, incremental).
    Libvirt(super::backup_libvirt::LibvirtArgs),
    /// Back up a VMware VM through the vSphere API (snapshot, changed block tracking).
    Vsphere(super::backup_vsphere::VsphereArgs),
}

/// Arguments of `haven backup image`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Image files, one per disk of the VM.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    repo: RepoArgs,
    /// VM name the snapshot is filed under.
    #[arg(long)]
    vm: String,
    /// Disk names, in the order of the paths (default vda, vdb, ...).
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Image format (default: probed with qemu-img).
    #[arg(long)]
    format: Option<String>,
    /// Reads in flight per disk (NBD connections, or threads reading a raw image).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How images are read: `auto` reads raw images in place and every other format
    /// through qemu-nbd; `nbd` reads every format, raw too, through qemu-nbd.
    #[arg(long, value_enum, default_value_t = ReaderArg::Auto)]
    reader: ReaderArg,
    #[command(flatten)]
    output: OutputArgs,
}

/// `--reader` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ReaderArg {
    Auto,
    Nbd,
}

/// Runs a `haven backup` subcommand.
///
/// It runs in a `backup` span, the root of its trace when traces are exported (the
/// cluster's equivalent is the coordinator's `assign`), so its phases and the storage
/// node's requests form one trace.
pub async fn run(command: BackupCommand) -> Result<()> {
    let span = tracing::info_span!("backup", vm = tracing::field::Empty);
    match command {
        BackupCommand::Image(args) => {
            span.record("vm", args.vm.as_str());
            backup_image(args).instrument(span).await
        }
        BackupCommand::Qemu(args) => {
            span.record("vm", args.vm.as_str());
            super::backup_qemu::run(args).instrument(span).await
        }
        BackupCommand::Libvirt(args) => super::backup_libvirt::run(args).instrument(span).await,
        BackupCommand::Vsphere(args) => super::backup_vsphere::run(args).instrument(span).await,
    }
}

async fn backup_image(args: ImageArgs) -> Result<()> {
    if !args.disks.is_empty() && args.disks.len() != args.paths.len() {
        usage!(
            "{} --disk names for {} images: give one per image or none",
            args.disks.len(),
            args.paths.len()
        );
    }
    let disks = args
        .paths
        .iter()
        .enumerate()
        .map(|(position, path)| ImageDisk {
            path: path.clone(),
            name: args
                .disks
                .get(position)
                .cloned()
                .unwrap_or_else(|| default_disk_name(position)),
            format: args.format.clone(),
        })
        .collect();
    let request = ImageBackupRequest {
        vm: args.vm.clone(),
        disks,
        connections: args.connections.clamp(1, 16),
        reader: match args.reader {
            ReaderArg::Auto => ImageReader::Auto,
            ReaderArg::Nbd => ImageReader::Nbd,
        },
    };
    let repo = args.repo.open().await?;
    run_and_report(
        "backup",
        Phase::Starting,
        args.output.json,
        |progress| backup_images(repo, &request, progress),
        print_backup_report,
    )
    .await
}

/// `vda`, `vdb`, ... as virtio disks are named.
fn default_disk_name(position: usize) -> String {
    let letter = (b'a' + (position % 26) as u8) as char;
    format!("vd{letter}")
}

fn print_backup_report(report: &BackupReport) -> Result<()> {
    println!("snapshot {} committed", report.snapshot);
    for disk in &report.disks {
        let rate = disk.size as f64 / report.elapsed_seconds.max(0.001);
        println!(
            "  {}: {}, {} already stored, {} zero; {}/s",
            disk.name,
            disk_figures(disk),
            disk.stats.existing_chunks,
            disk.stats.zero_chunks,
            human_bytes(rate as u64)
        );
    }
    Ok(())
}
