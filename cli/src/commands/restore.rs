//! `haven restore`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use haven_repo::{Phase, SnapshotRef};
use haven_worker::restore::nbd::{NbdRestoreRequest, restore_to_nbd};
use haven_worker::restore::vm::{
    DomainTarget, LibvirtTarget, VmRestoreRequest, restore_for_qemu, restore_libvirt_domain,
};
use haven_worker::restore::{RestoreFormat, RestoreReport, RestoreRequest, restore_disk};

use crate::common::{CatalogRepoArgs, OutputArgs, human_bytes};
use crate::progress::run_and_report;

/// Arguments of `haven restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Snapshot: VM@TIMESTAMP, VM@latest or VM.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: CatalogRepoArgs,
    /// Disk to restore (may be left out when the snapshot has one disk).
    #[arg(long)]
    disk: Option<String>,
    /// Output file, or an existing disk exported over NBD
    /// (`nbd+unix:///EXPORT?socket=PATH`, `nbd://HOST[:PORT]/EXPORT`) of the same size;
    /// with --libvirt-define or --print-qemu, the folder for every disk of the snapshot.
    #[arg(long)]
    to: String,
    /// Restore every disk into the folder --to (as NAME-DISK.raw|qcow2) and define a new
    /// libvirt domain NAME on them: from the snapshot's domain XML (new UUID and MACs),
    /// or from a vSphere VM's recorded hardware mapped onto KVM (virtio, same MACs).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["disk", "only_changed", "force", "print_qemu"])]
    libvirt_define: Option<String>,
    /// libvirt connection URI for --libvirt-define (default: virsh's).
    #[arg(long, requires = "libvirt_define")]
    uri: Option<String>,
    /// libvirt domain type of a VM from vSphere: kvm, or qemu (emulation, no KVM).
    #[arg(long, value_enum, default_value_t = DomainTypeArg::Kvm, requires = "libvirt_define")]
    domain_type: DomainTypeArg,
    /// The libvirt network the NICs of a VM from vSphere join.
    #[arg(long, default_value = "default", requires = "libvirt_define")]
    network: String,
    /// Put the NICs of a VM from vSphere on QEMU's user-mode network instead (no host
    /// set-up, outbound only).
    #[arg(long, conflicts_with = "network", requires = "libvirt_define")]
    user_network: bool,
    /// Restore every disk of a QEMU snapshot into the folder --to (as VM-DISK.raw|qcow2)
    /// and print the -blockdev/-device arguments and QMP commands that attach them.
    #[arg(long, conflicts_with_all = ["disk", "only_changed", "force"])]
    print_qemu: bool,
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
enum DomainTypeArg {
    Kvm,
    Qemu,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FormatArg {
    Raw,
    Qcow2,
}

/// Restores one disk of a snapshot.
pub async fn run(args: RestoreArgs) -> Result<()> {
    if args.libvirt_define.is_some() || args.print_qemu {
        return run_vm(args).await;
    }
    if is_nbd_uri(&args.to) {
        return run_nbd(args).await;
    }
    if args.only_changed {
        usage!("--only-changed needs an NBD target (--to nbd+unix://... or nbd://...)");
    }
    let repo = args.repo.open_for(&args.snapshot).await?;
    let request = RestoreRequest {
        snapshot: args.snapshot.clone(),
        disk: args.disk.clone(),
        to: PathBuf::from(&args.to),
        format: restore_format(args.format),
        force: args.force,
        in_flight: args.parallel.clamp(1, 64),
    };
    run_and_report(
        "restore",
        Phase::Write,
        args.output.json,
        |progress| restore_disk(repo, &request, progress),
        |report| {
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
        },
    )
    .await
}

fn restore_format(format: FormatArg) -> RestoreFormat {
    match format {
        FormatArg::Raw => RestoreFormat::Raw,
        FormatArg::Qcow2 => RestoreFormat::Qcow2,
    }
}

/// Restores every disk into a folder and defines a libvirt domain or prints the QEMU
/// arguments.
async fn run_vm(args: RestoreArgs) -> Result<()> {
    if is_nbd_uri(&args.to) {
        usage!("--libvirt-define and --print-qemu restore into a folder, not an NBD export");
    }
    let repo = args.repo.open_for(&args.snapshot).await?;
    let request = VmRestoreRequest {
        snapshot: args.snapshot.clone(),
        dir: PathBuf::from(&args.to),
        name: args
            .libvirt_define
            .clone()
            .unwrap_or_else(|| args.snapshot.vm.clone()),
        format: restore_format(args.format),
        in_flight: args.parallel.clamp(1, 64),
    };
    if args.libvirt_define.is_some() {
        let target = LibvirtTarget {
            uri: args.uri.clone(),
            virsh_timeout: Duration::from_secs(60),
            mapped: DomainTarget {
                domain_type: match args.domain_type {
                    DomainTypeArg::Kvm => "kvm",
                    DomainTypeArg::Qemu => "qemu",
                }
                .into(),
                network: (!args.user_network).then(|| args.network.clone()),
            },
        };
        return run_and_report(
            "restore",
            Phase::Write,
            args.output.json,
            |progress| restore_libvirt_domain(repo, &request, &target, progress),
            |report| {
                print_restored_disks(&report.snapshot, &report.disks, |line| println!("{line}"));
                for dropped in &report.dropped_disks {
                    println!("left out disk {dropped}: the snapshot has no data for it");
                }
                println!(
                    "defined libvirt domain {} (uuid {}) from {}",
                    report.domain, report.uuid, report.xml_path
                );
                Ok(())
            },
        )
        .await;
    }
    run_and_report(
        "restore",
        Phase::Write,
        args.output.json,
        |progress| restore_for_qemu(repo, &request, progress),
        |report| {
            // Standard output keeps only the arguments, for scripts.
            print_restored_disks(&report.snapshot, &report.disks, |line| eprintln!("{line}"));
            println!("# QEMU arguments attaching the restored disks:");
            let mut pairs = report.args.chunks(2).peekable();
            while let Some(pair) = pairs.next() {
                let end = if pairs.peek().is_some() { " \\" } else { "" };
                println!("{}{end}", shell_words(pair));
            }
            println!("# or, on a running QEMU, these QMP commands:");
            for command in &report.qmp {
                println!("{command}");
            }
            Ok(())
        },
    )
    .await
}

/// Says where each disk of a VM restore went, one line each through `say`.
fn print_restored_disks(snapshot: &str, disks: &[RestoreReport], say: impl Fn(String)) {
    for disk in disks {
        say(format!(
            "restored {snapshot} disk {} to {} ({})",
            disk.disk,
            disk.to,
            human_bytes(disk.size)
        ));
    }
}

/// Quotes arguments for a POSIX shell when they need it.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|word| {
            let plain = word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=,./:+@".contains(&b));
            if plain {
                word.clone()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
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
        usage!("--format and --force apply to file targets only, not to an NBD export");
    }
    let repo = args.repo.open_for(&args.snapshot).await?;
    let request = NbdRestoreRequest {
        snapshot: args.snapshot.clone(),
        disk: args.disk.clone(),
        uri: args.to.clone(),
        only_changed: args.only_changed,
        in_flight: args.parallel.clamp(1, 64),
    };
    run_and_report(
        "restore",
        Phase::Write,
        args.output.json,
        |progress| restore_to_nbd(repo, &request, progress),
        |report| {
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
        },
    )
    .await
}
