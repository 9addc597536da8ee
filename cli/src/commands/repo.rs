//! `haven repo init` and `haven repo rebalance`.

use anyhow::Result;
use haven_repo::{Backend, DEFAULT_CHUNK_SIZE, RebalanceReport, Repository};
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, human_bytes, print_json};

/// Repository administration.
#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Create a new, empty repository.
    Init(InitArgs),
    /// After the storage nodes of a several-node URL changed: copy every object to
    /// its placement, then remove copies outside it (no password needed).
    Rebalance(RebalanceArgs),
}

/// Arguments of `haven repo rebalance`.
#[derive(Debug, clap::Args)]
pub struct RebalanceArgs {
    /// Repository URL naming the site's current storage nodes:
    /// s3://bucket/prefix?endpoint=URL1&endpoint=URL2&…&replicas=R
    #[arg(long, env = "HAVEN_REPO")]
    repo: String,
    /// Endpoint of a node that left the URL and still holds objects: they are
    /// copied to their placement and removed from it (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    drain: Vec<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `haven repo init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Chunk size in bytes (a power of two from 64 KiB to 16 MiB).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    chunk_size: u32,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Serialize)]
struct InitReport<'a> {
    repository: &'a str,
    id: &'a str,
    chunk_size: u32,
    format_version: u32,
}

/// Runs a `haven repo` subcommand.
pub async fn run(command: RepoCommand) -> Result<()> {
    match command {
        RepoCommand::Init(args) => {
            let password = args.repo.password()?;
            let backend = Backend::from_url(&args.repo.repo, true)?;
            let repo = Repository::init(backend, &password, args.chunk_size).await?;
            let report = InitReport {
                repository: &args.repo.repo,
                id: &repo.config().id,
                chunk_size: repo.chunk_size(),
                format_version: repo.config().version,
            };
            if args.output.json {
                print_json(&report)?;
            } else {
                println!(
                    "created repository {} at {} (chunk size {} KiB)",
                    report.id,
                    report.repository,
                    report.chunk_size / 1024
                );
            }
            Ok(())
        }
        RepoCommand::Rebalance(args) => rebalance(args).await,
    }
}

/// Runs one rebalance pass and prints what it moved.
async fn rebalance(args: RebalanceArgs) -> Result<()> {
    let backend = Backend::from_url(&args.repo, false)?;
    let report: RebalanceReport = backend.rebalance(&args.drain).await?;
    if args.output.json {
        return print_json(&report);
    }
    println!(
        "{} object(s): {} copied ({}), {} removed from nodes outside their placement",
        report.objects,
        report.copied,
        human_bytes(report.copied_bytes),
        report.removed
    );
    Ok(())
}
