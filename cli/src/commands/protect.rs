//! `haven protect` and `haven unprotect`: keep a snapshot whatever prune's rules say,
//! optionally locked in storage (S3 Object Lock) so the storage credentials cannot
//! delete it either. The records and locks are `haven_repo::protect_snapshot`'s job.

use std::time::Duration;

use anyhow::Result;
use haven_repo::{LockMode, SnapshotRef, parse_timestamp, protect_snapshot, unprotect_snapshot};
use time::OffsetDateTime;

use crate::common::{OutputArgs, RepoArgs, print_json};

/// Object-lock modes on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LockArg {
    /// Only keys allowed to bypass governance, asking to, may delete before the date.
    Governance,
    /// Nobody may delete before the date; it can only be extended.
    Compliance,
}

/// Arguments of `haven protect`.
#[derive(Debug, clap::Args)]
pub struct ProtectArgs {
    /// The snapshot, `VM@TIME` or `VM@latest`.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    /// Protect until this time (RFC 3339); default: until `haven unprotect`.
    #[arg(long, conflicts_with = "days")]
    until: Option<String>,
    /// Protect for this many days from now.
    #[arg(long)]
    days: Option<u32>,
    /// Also lock the snapshot's objects in storage until that date (s3:// with object
    /// lock enabled on the bucket).
    #[arg(long, value_enum)]
    lock: Option<LockArg>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `haven unprotect`.
#[derive(Debug, clap::Args)]
pub struct UnprotectArgs {
    /// The snapshot, `VM@TIME` or `VM@latest`.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
}

/// Protects a snapshot.
pub async fn protect(args: ProtectArgs) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let until = match (&args.until, args.days) {
        (Some(text), _) => Some(parse_timestamp(text)?),
        (None, Some(days)) => Some(now + Duration::from_secs(u64::from(days) * 86400)),
        (None, None) => None,
    };
    if until.is_some_and(|until| until <= now) {
        usage!("--until must be in the future");
    }
    let lock = match args.lock {
        None => None,
        Some(_) if until.is_none() => usage!("--lock needs --until or --days"),
        Some(LockArg::Governance) => Some(LockMode::Governance),
        Some(LockArg::Compliance) => Some(LockMode::Compliance),
    };
    let repo = args.repo.open().await?;
    let id = repo.resolve(&args.snapshot).await?;
    let report = protect_snapshot(&repo, &id, until, lock).await?;
    if args.output.json {
        return print_json(&report);
    }
    let until = report
        .protection
        .until
        .as_deref()
        .map_or("until unprotected".to_string(), |until| {
            format!("until {until}")
        });
    match report.protection.lock_mode {
        Some(mode) => println!(
            "protected {id} {until}; {} object(s) locked in storage ({mode:?})",
            report.objects_locked
        ),
        None => println!("protected {id} {until}"),
    }
    Ok(())
}

/// Removes a snapshot's protection (refused while its storage lock holds).
pub async fn unprotect(args: UnprotectArgs) -> Result<()> {
    let repo = args.repo.open().await?;
    let id = repo.resolve(&args.snapshot).await?;
    if unprotect_snapshot(&repo, &id).await? {
        println!("unprotected {id}");
    } else {
        println!("{id} was not protected");
    }
    Ok(())
}
