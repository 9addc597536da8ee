//! `haven files`: list, find and restore single files from a snapshot without mounting.
//!
//! The disk is read through the snapshot reader, so only the chunks holding the file
//! system structures and the files asked for are fetched, each verified.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use haven_files::{
    BlockDevice, Entry, EntryKind, ExtractOptions, Partition, Volume, extract, partitions,
};
use haven_repo::SnapshotRef;
use haven_worker::{ReaderOptions, ReaderStats, SnapshotReader};
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, print_json};
use crate::exit::CliError;

/// `haven files …`.
#[derive(Debug, clap::Subcommand)]
pub enum FilesCommand {
    /// List a directory (or one file): VM@TIME[:DISK]:/path.
    Ls(LsArgs),
    /// Restore a file or a whole directory with its metadata: VM@TIME[:DISK]:/path.
    Get(GetArgs),
    /// Find entries by name under a directory: VM@TIME[:DISK][:/path].
    Find(FindArgs),
}

/// What every `files` verb shares.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// VM@TIME[:DISK]:/path (VM@latest and VM work too).
    spec: String,
    #[command(flatten)]
    repo: RepoArgs,
    /// Partition number when the disk holds several file systems.
    #[arg(long)]
    partition: Option<u32>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `haven files ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    #[command(flatten)]
    target: Target,
}

/// Arguments of `haven files get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    target: Target,
    /// Destination: an existing directory to restore into, or a new path.
    #[arg(long)]
    to: PathBuf,
    /// Give restored entries the guest's uid and gid (root only; otherwise they
    /// belong to you). Setuid, setgid and sticky bits are never restored.
    #[arg(long)]
    same_owner: bool,
}

/// Arguments of `haven files find`.
#[derive(Debug, clap::Args)]
pub struct FindArgs {
    #[command(flatten)]
    target: Target,
    /// Name pattern with `*` and `?`.
    #[arg(long)]
    name: String,
}

/// Splits `VM@TIME[:DISK][:/path]`.
fn parse_spec(spec: &str) -> Result<(SnapshotRef, Option<String>, String)> {
    let (snapshot, path) = match spec.find(":/") {
        Some(at) => (&spec[..at], spec[at + 1..].to_string()),
        None => (spec, "/".to_string()),
    };
    if let Ok(reference) = snapshot.parse::<SnapshotRef>() {
        return Ok((reference, None, path));
    }
    let Some((reference, disk)) = snapshot.rsplit_once(':') else {
        usage!("{spec:?}: expected VM@TIME[:DISK]:/path");
    };
    let reference = reference
        .parse::<SnapshotRef>()
        .with_context(|| format!("{spec:?}: expected VM@TIME[:DISK]:/path"))?;
    haven_repo::validate_name(disk)?;
    Ok((reference, Some(disk.to_string()), path))
}

pub(crate) use haven_worker::SnapshotDevice;

/// Chunk figures printed with `--json`, to show how little was read.
#[derive(Debug, Serialize)]
struct Fetched {
    chunks_fetched: u64,
    data_chunks: usize,
    total_chunks: usize,
}

fn fetched(reader: &SnapshotReader, stats: ReaderStats) -> Fetched {
    Fetched {
        chunks_fetched: stats.chunks_fetched,
        data_chunks: reader.data_slots(),
        total_chunks: reader.index().len(),
    }
}

/// Opens the snapshot's disk and the one file system to use.
async fn open(target: &Target) -> Result<(SnapshotReader, Arc<dyn BlockDevice>, String)> {
    let (reference, disk, path) = parse_spec(&target.spec)?;
    let repo = target.repo.open().await?;
    // Read-ahead would fetch chunks a file system walk does not need.
    let options = ReaderOptions {
        cache_chunks: 64,
        read_ahead: 0,
    };
    let reader = SnapshotReader::open(repo, &reference, disk.as_deref(), options).await?;
    let device: Arc<dyn BlockDevice> = Arc::new(SnapshotDevice::new(
        reader.clone(),
        tokio::runtime::Handle::current(),
    ));
    Ok((reader, device, path))
}

fn choose_volume(device: Arc<dyn BlockDevice>, wanted: Option<u32>) -> Result<(Partition, Volume)> {
    let table = partitions(&*device)?;
    if let Some(number) = wanted {
        let Some(partition) = table.iter().find(|p| p.number == number) else {
            let numbers: Vec<String> = table.iter().map(|p| p.number.to_string()).collect();
            return Err(CliError::NotFound(format!(
                "no partition {number} (the disk has {})",
                numbers.join(", ")
            ))
            .into());
        };
        let volume = Volume::open(device, partition)?;
        return Ok((partition.clone(), volume));
    }
    let mut opened = Vec::new();
    let mut last_error = None;
    for partition in &table {
        match Volume::open(device.clone(), partition) {
            Ok(volume) => opened.push((partition.clone(), volume)),
            Err(error) => last_error = Some(error),
        }
    }
    match opened.len() {
        1 => Ok(opened.remove(0)),
        0 => match last_error {
            Some(error) => Err(error.into()),
            None => bail!("the disk has no partitions"),
        },
        _ => {
            let numbers: Vec<String> = opened
                .iter()
                .map(|(p, v)| format!("{} ({:?})", p.number, v.kind()).to_lowercase())
                .collect();
            usage!(
                "the disk holds several file systems, on partitions {}: choose one with --partition",
                numbers.join(", ")
            )
        }
    }
}

/// Runs a `files` verb.
pub async fn run(command: FilesCommand) -> Result<()> {
    match command {
        FilesCommand::Ls(args) => ls(args).await,
        FilesCommand::Get(args) => get(args).await,
        FilesCommand::Find(args) => find(args).await,
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("file system task failed")?
}

/// What every verb prints with `--json`: where it looked, its own result
/// (`found`, flattened) and how many chunks that took.
#[derive(Serialize)]
struct Located<T> {
    snapshot: String,
    disk: String,
    partition: u32,
    path: String,
    #[serde(flatten)]
    found: T,
    stats: Fetched,
}

/// Opens the target's file system and runs `work` on it with the target's
/// path, on a blocking thread (the file system drivers read synchronously).
async fn on_volume<T: Send + 'static>(
    target: &Target,
    work: impl FnOnce(&Volume, &str) -> Result<T> + Send + 'static,
) -> Result<Located<T>> {
    let (reader, device, path) = open(target).await?;
    let wanted = target.partition;
    let looked_in = path.clone();
    let (partition, found) = blocking(move || {
        let (partition, volume) = choose_volume(device, wanted)?;
        let found = work(&volume, &looked_in)?;
        Ok((partition, found))
    })
    .await?;
    Ok(Located {
        snapshot: reader.snapshot().to_string(),
        disk: reader.disk().to_string(),
        partition: partition.number,
        path,
        found,
        stats: fetched(&reader, reader.stats()),
    })
}

/// The entries `ls` and `find` print.
#[derive(Serialize)]
struct Entries {
    entries: Vec<Entry>,
}

async fn ls(args: LsArgs) -> Result<()> {
    let output = on_volume(&args.target, |volume, path| {
        let top = volume.stat(path)?;
        let entries = if top.kind == EntryKind::Dir {
            volume.list(path)?
        } else {
            vec![top]
        };
        Ok(Entries { entries })
    })
    .await?;
    if args.target.output.json {
        return print_json(&output);
    }
    for entry in &output.found.entries {
        println!("{}", long_line(entry));
    }
    Ok(())
}

fn long_line(entry: &Entry) -> String {
    let kind = match entry.kind {
        EntryKind::File => '-',
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::Special => '?',
    };
    let mode = entry
        .mode
        .map_or_else(|| "----".to_string(), |mode| format!("{mode:04o}"));
    let owner = match (entry.uid, entry.gid) {
        (Some(uid), Some(gid)) => format!("{uid}:{gid}"),
        _ => "-".into(),
    };
    let mut line = format!(
        "{kind}{mode} {owner:>11} {:>12} {:>11} {}",
        entry.size,
        entry.mtime.unwrap_or(0),
        entry.name
    );
    if let Some(target) = &entry.target {
        line.push_str(" -> ");
        line.push_str(target);
    }
    line
}

async fn get(args: GetArgs) -> Result<()> {
    let to = args.to.clone();
    let options = extract_options(args.same_owner);
    let output = on_volume(&args.target, move |volume, path| {
        Ok(extract(volume, path, &to, options)?)
    })
    .await?;
    if args.target.output.json {
        return print_json(&output);
    }
    println!(
        "restored {} of {} to {}: {} files, {} directories, {} symlinks, {} bytes ({} of {} chunks fetched)",
        output.path,
        output.snapshot,
        output.found.to,
        output.found.files,
        output.found.directories,
        output.found.symlinks,
        output.found.bytes,
        output.stats.chunks_fetched,
        output.stats.data_chunks
    );
    Ok(())
}

/// Guest owners only when asked for and possible: only root may give files away, so
/// anyone else is told once that their files stay theirs.
fn extract_options(same_owner: bool) -> ExtractOptions {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if same_owner && !root {
        eprintln!("warning: --same-owner needs root: the restored files belong to you");
    }
    ExtractOptions {
        same_owner: same_owner && root,
    }
}

async fn find(args: FindArgs) -> Result<()> {
    let pattern = args.name.clone();
    let output = on_volume(&args.target, move |volume, path| {
        let entries = volume.find(path, &pattern)?;
        Ok(Entries { entries })
    })
    .await?;
    if args.target.output.json {
        return print_json(&output);
    }
    for entry in &output.found.entries {
        println!("{}", entry.path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_spec;

    #[test]
    fn specs() {
        let (reference, disk, path) =
            parse_spec("web1@2026-11-25T17:15:07Z:vdb:/etc/hosts").unwrap();
        assert_eq!(reference.vm, "web1");
        assert_eq!(reference.timestamp.as_deref(), Some("2026-11-25T17:15:07Z"));
        assert_eq!(disk.as_deref(), Some("vdb"));
        assert_eq!(path, "/etc/hosts");
        let (_, disk, path) = parse_spec("web1@2026-11-25T17:15:07Z:/").unwrap();
        assert_eq!((disk, path.as_str()), (None, "/"));
        let (reference, disk, path) = parse_spec("web1:sda").unwrap();
        assert_eq!(
            (reference.timestamp, disk.as_deref(), path.as_str()),
            (None, Some("sda"), "/")
        );
        assert!(parse_spec("web1@yesterday:/x").is_err());
    }
}
