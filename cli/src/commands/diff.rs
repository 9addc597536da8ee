//! `haven diff A B`: what changed between two snapshots of one VM. Per disk, the byte
//! ranges that differ, from the two snapshots' indexes alone (equal chunk ids are
//! equal bytes, so no data is read); for a disk that changed, where its file system
//! is readable, the files added, removed and modified, from the two directory trees
//! (the chunks of file system structures are fetched, not the whole disk), and for a
//! modified file of the same size the bytes themselves when it is small.

use std::sync::Arc;

use anyhow::Result;
use haven_files::{
    BlockDevice, Change, Content, EntryKind, FileChange, FsKind, Partition, Volume, diff_entries,
    partitions,
};
use haven_repo::{ChangedRange, Repository, SnapshotId, SnapshotRef, changed_ranges};
use haven_worker::{ReaderOptions, SnapshotReader};
use serde::Serialize;

use crate::commands::files::SnapshotDevice;
use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};

/// Files up to this size whose metadata changed but not their size are read from both
/// snapshots to tell a content change from a touch.
const CONTENT_LIMIT: u64 = 16 * 1024 * 1024;

/// Arguments of `haven diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The older snapshot: VM@TIMESTAMP (or VM@latest).
    from: SnapshotRef,
    /// The newer snapshot of the same VM: VM@TIMESTAMP, VM@latest or VM.
    to: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    /// Only this disk.
    #[arg(long)]
    disk: Option<String>,
    /// Changed ranges only: do not read the file systems.
    #[arg(long)]
    no_files: bool,
    #[command(flatten)]
    output: OutputArgs,
}

/// What `diff` found, as `--json` prints it.
#[derive(Serialize)]
struct DiffReport {
    from: String,
    to: String,
    disks: Vec<DiskDiff>,
}

/// One disk's changes.
#[derive(Serialize)]
struct DiskDiff {
    name: String,
    /// `changed`, `unchanged`, `added` (only in the newer snapshot) or `removed`.
    status: &'static str,
    /// Size in the older snapshot, if it has the disk.
    size_from: Option<u64>,
    /// Size in the newer snapshot, if it has the disk.
    size_to: Option<u64>,
    /// Bytes in `ranges`.
    changed_bytes: u64,
    ranges: Vec<ChangedRange>,
    /// Per readable file system of a changed disk; empty when unchanged or not read.
    file_systems: Vec<FileSystemDiff>,
    /// Why files were not compared on a changed disk, if they were not.
    #[serde(skip_serializing_if = "Option::is_none")]
    files_not_compared: Option<String>,
}

/// The files of one partition that differ.
#[derive(Serialize)]
struct FileSystemDiff {
    partition: u32,
    filesystem: FsKind,
    changes: Vec<FileChange>,
}

/// Runs `haven diff`.
pub async fn run(args: DiffArgs) -> Result<()> {
    if args.from.vm != args.to.vm {
        usage!(
            "diff compares two snapshots of one VM, not {} and {}",
            args.from.vm,
            args.to.vm
        );
    }
    let repo = args.repo.open().await?;
    let (from, to) = (
        repo.resolve(&args.from).await?,
        repo.resolve(&args.to).await?,
    );
    let (old, new) = (
        repo.read_manifest(&from).await?,
        repo.read_manifest(&to).await?,
    );
    let mut names: Vec<&str> = new.disks.iter().map(|d| d.name.as_str()).collect();
    for disk in &old.disks {
        if !names.contains(&disk.name.as_str()) {
            names.push(&disk.name);
        }
    }
    if let Some(wanted) = &args.disk {
        if !names.contains(&wanted.as_str()) {
            return Err(crate::exit::CliError::NotFound(format!(
                "neither {from} nor {to} has a disk {wanted}"
            ))
            .into());
        }
        names.retain(|name| name == wanted);
    }
    let mut disks = Vec::new();
    for name in names {
        let size = |manifest: &haven_repo::Manifest| {
            manifest
                .disks
                .iter()
                .find(|d| d.name == name)
                .map(|d| d.size)
        };
        let (size_from, size_to) = (size(&old), size(&new));
        let mut disk = DiskDiff {
            name: name.to_string(),
            status: "changed",
            size_from,
            size_to,
            changed_bytes: 0,
            ranges: Vec::new(),
            file_systems: Vec::new(),
            files_not_compared: None,
        };
        if size_from.is_none() || size_to.is_none() {
            disk.status = if size_from.is_none() {
                "added"
            } else {
                "removed"
            };
            disks.push(disk);
            continue;
        }
        let older = reader(&repo, &from, name).await?;
        let newer = reader(&repo, &to, name).await?;
        disk.ranges = changed_ranges(older.index(), newer.index());
        disk.changed_bytes = disk.ranges.iter().map(|r| r.length).sum();
        if disk.ranges.is_empty() {
            disk.status = "unchanged";
        } else if args.no_files {
            disk.files_not_compared = Some("--no-files".into());
        } else {
            match tokio::task::spawn_blocking(move || file_systems(&older, &newer)).await? {
                Ok(found) => disk.file_systems = found,
                Err(why) => disk.files_not_compared = Some(why),
            }
        }
        disks.push(disk);
    }
    let report = DiffReport {
        from: from.to_string(),
        to: to.to_string(),
        disks,
    };
    if args.output.json {
        return print_json(&report);
    }
    print_text(&report);
    Ok(())
}

/// A reader of one disk of one snapshot; file system walks need no read-ahead.
async fn reader(repo: &Arc<Repository>, id: &SnapshotId, disk: &str) -> Result<SnapshotReader> {
    let reference = SnapshotRef {
        vm: id.vm.clone(),
        timestamp: Some(id.timestamp.clone()),
    };
    let options = ReaderOptions {
        cache_chunks: 64,
        read_ahead: 0,
    };
    Ok(SnapshotReader::open(repo.clone(), &reference, Some(disk), options).await?)
}

/// The file changes of every partition whose file system both snapshots can read, or
/// why there are none. Runs on a blocking thread (the drivers read synchronously).
fn file_systems(
    older: &SnapshotReader,
    newer: &SnapshotReader,
) -> Result<Vec<FileSystemDiff>, String> {
    let handle = tokio::runtime::Handle::current();
    let device = |reader: &SnapshotReader| -> Arc<dyn BlockDevice> {
        Arc::new(SnapshotDevice::new(reader.clone(), handle.clone()))
    };
    let (old_device, new_device) = (device(older), device(newer));
    let old_table = partitions(&*old_device).map_err(|error| error.to_string())?;
    let new_table = partitions(&*new_device).map_err(|error| error.to_string())?;
    let mut found = Vec::new();
    let mut last_error = None;
    for partition in &new_table {
        let Some(before) = old_table.iter().find(|p| p.number == partition.number) else {
            continue;
        };
        match compare_partition(&old_device, before, &new_device, partition) {
            Ok(diff) => found.push(diff),
            Err(error) => last_error = Some(error),
        }
    }
    match (found.is_empty(), last_error) {
        (true, Some(error)) => Err(format!("no readable file system: {error}")),
        (true, None) => Err("no partition in both snapshots".into()),
        (false, _) => Ok(found),
    }
}

/// Lists both trees of one partition, diffs them, and reads small files whose size is
/// unchanged but metadata is not.
fn compare_partition(
    old_device: &Arc<dyn BlockDevice>,
    before: &Partition,
    new_device: &Arc<dyn BlockDevice>,
    after: &Partition,
) -> haven_files::Result<FileSystemDiff> {
    let old = Volume::open(old_device.clone(), before)?;
    let new = Volume::open(new_device.clone(), after)?;
    let mut changes = diff_entries(&old.find("/", "*")?, &new.find("/", "*")?);
    for change in &mut changes {
        let small_file = change.change == Change::Modified
            && change.kind == EntryKind::File
            && change.content.is_none()
            && !change.differs.contains(&"kind");
        if !small_file {
            continue;
        }
        if new.stat(&change.path)?.size > CONTENT_LIMIT {
            continue;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        old.copy_file(&change.path, &mut a)?;
        new.copy_file(&change.path, &mut b)?;
        change.content = Some(if a == b {
            Content::Same
        } else {
            Content::Changed
        });
    }
    Ok(FileSystemDiff {
        partition: after.number,
        filesystem: new.kind(),
        changes,
    })
}

fn print_text(report: &DiffReport) {
    println!("{} -> {}", report.from, report.to);
    for disk in &report.disks {
        match disk.status {
            "added" | "removed" => {
                println!("disk {}: {}", disk.name, disk.status);
                continue;
            }
            "unchanged" => {
                println!("disk {}: unchanged", disk.name);
                continue;
            }
            _ => {}
        }
        println!(
            "disk {}: {} in {} range(s) changed{}",
            disk.name,
            human_bytes(disk.changed_bytes),
            disk.ranges.len(),
            match (disk.size_from, disk.size_to) {
                (Some(a), Some(b)) if a != b =>
                    format!(" (size {} -> {})", human_bytes(a), human_bytes(b)),
                _ => String::new(),
            }
        );
        for range in &disk.ranges {
            println!(
                "  {:#014x}..{:#014x} {}",
                range.offset,
                range.offset + range.length,
                human_bytes(range.length)
            );
        }
        if let Some(why) = &disk.files_not_compared {
            println!("  files not compared: {why}");
        }
        for fs in &disk.file_systems {
            println!(
                "  partition {} ({}): {} change(s)",
                fs.partition,
                format!("{:?}", fs.filesystem).to_lowercase(),
                fs.changes.len()
            );
            for change in &fs.changes {
                println!("    {}", change_line(change));
            }
        }
    }
}

/// `+ /path`, `- /path`, or `M /path (size, mtime; content changed)`.
fn change_line(change: &FileChange) -> String {
    match change.change {
        Change::Added => format!("+ {}", change.path),
        Change::Removed => format!("- {}", change.path),
        Change::Modified => {
            let content = match change.content {
                Some(Content::Changed) => "; content changed",
                Some(Content::Same) => "; content same",
                None => "",
            };
            format!("M {} ({}{content})", change.path, change.differs.join(", "))
        }
    }
}
