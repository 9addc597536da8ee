//! `haven repo init`.

use anyhow::Result;
use haven_repo::{Backend, DEFAULT_CHUNK_SIZE, Repository};
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, print_json};

/// Repository administration.
#[derive(Debug, clap::Subcommand)]
pub enum RepoCommand {
    /// Create a new, empty repository.
    Init(InitArgs),
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
    }
}
