//! `haven completions SHELL` and `haven man --dir DIR`: shell completion scripts and
//! manual pages, generated from the same clap definition that parses the command
//! line, so they cannot drift from it. Packagers run both at build time; a person can
//! `source <(haven completions bash)`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Arguments of `haven completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `haven man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Folder to write the pages into (created if missing): haven.1, and one page per
    /// subcommand such as haven-backup-image.1.
    #[arg(long)]
    dir: PathBuf,
}

/// Writes the completion script for `args.shell` on standard output.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "haven", &mut std::io::stdout());
    Ok(())
}

/// Writes one manual page (section 1) per command and subcommand into `args.dir`.
pub fn man(args: ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    clap_mangen::generate_to(crate::Cli::command(), &args.dir)
        .with_context(|| format!("cannot write manual pages into {}", args.dir.display()))?;
    let pages = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot list {}", args.dir.display()))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".1"))
        .count();
    println!("{pages} manual pages in {}", args.dir.display());
    Ok(())
}
