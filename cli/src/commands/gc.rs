//! `haven gc`: remove chunks and indexes no snapshot needs.
//!
//! The collection itself, its memory bound and its safety with running backups are in
//! `haven_repo::collect_garbage` (argued in `ARCHITECTURE.md`); this prints its report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use haven_repo::{GcOptions, GcPhase, PhaseHook, RepositoryLeases, collect_garbage};

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};

/// Test hook: `marked`, `deleted:N` or `swept` pauses the collection there (printing a
/// line on stderr) so a test can kill it at that point, or race a backup against it.
const PAUSE_ENV: &str = "HAVEN_GC_TEST_PAUSE";
/// With the pause: resume after this many seconds instead of never.
const PAUSE_SECONDS_ENV: &str = "HAVEN_GC_TEST_PAUSE_SECONDS";

/// Arguments of `haven gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Keep unreferenced objects modified within this time before the start of the
    /// collection or of the oldest running backup (e.g. 1h, 30m, 10s, 0s). Must exceed
    /// any clock difference between this host and the storage.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    margin: Duration,
    /// Report what would be removed without removing anything.
    #[arg(long)]
    dry_run: bool,
    /// Memory for each sort buffer, in MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    sort_memory: usize,
    /// Directory for the sorted run files (default: the system's temporary directory).
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Deletions in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    #[command(flatten)]
    output: OutputArgs,
}

pub use haven_config::parse_duration;

/// Runs a collection and prints what it freed.
pub async fn run(args: GcArgs) -> Result<()> {
    if args.sort_memory == 0 {
        usage!("--sort-memory must be at least 1 MiB");
    }
    let repo = args.repo.open().await?;
    let options = GcOptions {
        margin: args.margin,
        dry_run: args.dry_run,
        sort_memory: args.sort_memory << 20,
        temp_dir: args.temp_dir.clone(),
        concurrency: args.concurrency.clamp(1, 256),
        on_phase: pause_hook()?,
    };
    let report = collect_garbage(&repo, &RepositoryLeases, &options)
        .await
        .context("garbage collection failed")?;
    if args.output.json {
        return print_json(&report);
    }
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {} chunk(s) ({}) and {} unreferenced index(es)",
        report.chunks_removed,
        human_bytes(report.bytes_removed),
        report.indexes_removed
    );
    println!(
        "kept {} referenced chunk(s) of {} snapshot(s), {} unreferenced but newer than {}",
        report.chunks_referenced, report.snapshots, report.chunks_too_young, report.cutoff
    );
    if !report.pinned_by.is_empty() {
        println!("running backups: {}", report.pinned_by.join(", "));
    }
    if report.chunks_locked + report.indexes_locked > 0 {
        println!(
            "skipped {} chunk(s) and {} index(es) locked by the storage (object lock)",
            report.chunks_locked, report.indexes_locked
        );
    }
    if report.chunks_missing > 0 || !report.missing_indexes.is_empty() {
        println!(
            "warning: {} referenced chunk(s) and {} index(es) are missing; run `haven verify`",
            report.chunks_missing,
            report.missing_indexes.len()
        );
    }
    Ok(())
}

/// The fault-injection hook of the tests, from [`PAUSE_ENV`].
fn pause_hook() -> Result<Option<PhaseHook>> {
    let Ok(spec) = std::env::var(PAUSE_ENV) else {
        return Ok(None);
    };
    let target = match spec.as_str() {
        "marked" => GcPhase::Marked,
        "swept" => GcPhase::Swept,
        other => match other.strip_prefix("deleted:").map(str::parse::<u64>) {
            Some(Ok(count)) => GcPhase::Deleted(count),
            _ => bail!("{PAUSE_ENV}={spec:?}: use marked, deleted:N or swept"),
        },
    };
    let resume_after = match std::env::var(PAUSE_SECONDS_ENV) {
        Ok(text) => Some(Duration::from_secs(text.parse().with_context(|| {
            format!("{PAUSE_SECONDS_ENV}={text:?} is not a number of seconds")
        })?)),
        Err(_) => None,
    };
    Ok(Some(Arc::new(move |phase| {
        if phase != target {
            return;
        }
        eprintln!("haven gc paused at {phase:?}");
        // Blocks this worker thread: the test kills the process, or it resumes.
        match resume_after {
            Some(pause) => std::thread::sleep(pause),
            None => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
        }
    })))
}
