//! `haven key list|add|remove|passwd`: the repository's passwords, one key slot each.
//!
//! The current password comes as for every command (`--password-file` or
//! `$HAVEN_PASSWORD`), a new one from `--new-password-file` or `$HAVEN_NEW_PASSWORD`.
//! The rules and the crash safety are `haven_repo`'s (`ops/keys.rs`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use haven_repo::{Backend, KeySlot};
use serde::Serialize;

use crate::common::{OutputArgs, RepoArgs, print_json, read_secret};

/// `haven key …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// List the key slots, marking (*) the one the current password opens.
    List(ListArgs),
    /// Add a key slot for a new password; the current one keeps working.
    Add(NewPasswordArgs),
    /// Remove a key slot (not the last usable one; the current one only with --force).
    Remove(RemoveArgs),
    /// Replace the current password's key slot with one for a new password.
    Passwd(NewPasswordArgs),
}

/// Arguments of `haven key list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `haven key add` and `haven key passwd`.
#[derive(Debug, clap::Args)]
pub struct NewPasswordArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// File whose first line is the new password (otherwise $HAVEN_NEW_PASSWORD).
    #[arg(long)]
    new_password_file: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

/// Arguments of `haven key remove`.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// Key id as `haven key list` shows it, or a unique prefix of it.
    id: String,
    /// Also remove the key the current password opens (that password stops working).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    output: OutputArgs,
}

impl NewPasswordArgs {
    /// The current and the new password, refusing a "new" one that is the same.
    fn passwords(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let current = self.repo.password()?;
        let new = read_secret(
            self.new_password_file.as_deref(),
            "HAVEN_NEW_PASSWORD",
            "set HAVEN_NEW_PASSWORD or pass --new-password-file",
        )?;
        if new == current {
            bail!("the new password is the current one");
        }
        Ok((current, new))
    }
}

#[derive(Serialize)]
struct Added {
    added: String,
}

#[derive(Serialize)]
struct Removed {
    removed: String,
}

/// Runs a `haven key` subcommand.
pub async fn run(command: KeyCommand) -> Result<()> {
    match command {
        KeyCommand::List(args) => {
            let backend = Backend::from_url(&args.repo.repo, false)?;
            let slots = haven_repo::list_keys(&backend, &args.repo.password()?).await?;
            if args.output.json {
                return print_json(&slots);
            }
            println!("  {:<32}  {:<20}  {:<24}  ARGON2ID", "ID", "CREATED", "BY");
            for slot in &slots {
                println!("{}", slot_line(slot));
            }
        }
        KeyCommand::Add(args) => {
            let (current, new) = args.passwords()?;
            let backend = Backend::from_url(&args.repo.repo, false)?;
            let added = haven_repo::add_key(&backend, &current, &new).await?;
            if args.output.json {
                return print_json(&Added { added });
            }
            println!("added key {added}: the new password opens the repository");
        }
        KeyCommand::Passwd(args) => {
            let (current, new) = args.passwords()?;
            let backend = Backend::from_url(&args.repo.repo, false)?;
            let change = haven_repo::change_password(&backend, &current, &new).await?;
            if args.output.json {
                return print_json(&change);
            }
            println!(
                "password changed: key {} replaces key {}",
                change.added, change.removed
            );
        }
        KeyCommand::Remove(args) => {
            let backend = Backend::from_url(&args.repo.repo, false)?;
            let removed =
                haven_repo::remove_key(&backend, &args.repo.password()?, &args.id, args.force)
                    .await?;
            if args.output.json {
                return print_json(&Removed { removed });
            }
            println!("removed key {removed}");
        }
    }
    Ok(())
}

/// One line of `haven key list`.
fn slot_line(slot: &KeySlot) -> String {
    let marker = if slot.current { '*' } else { ' ' };
    let (created, by) = match &slot.label {
        Some(label) => {
            let by = match (label.user.as_str(), label.host.as_str()) {
                ("", "") => "-".to_string(),
                (user, "") => user.to_string(),
                (user, host) => format!("{user}@{host}"),
            };
            (label.created.as_str(), by)
        }
        None => ("-", "-".to_string()),
    };
    let cost = if slot.memory_kib == 0 {
        "-".to_string()
    } else {
        let passes = if slot.iterations == 1 {
            "pass"
        } else {
            "passes"
        };
        let lanes = if slot.parallelism == 1 {
            "lane"
        } else {
            "lanes"
        };
        format!(
            "{} KiB, {} {passes}, {} {lanes}",
            slot.memory_kib, slot.iterations, slot.parallelism
        )
    };
    let mut line = format!("{marker} {:<32}  {created:<20}  {by:<24}  {cost}", slot.id);
    if let Some(reason) = &slot.refused {
        line.push_str(&format!("  REFUSED: {reason}"));
    }
    line
}
