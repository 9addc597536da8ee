//! `haven forget VM@TIME`: remove one snapshot, named by its time.
//!
//! The removal is prune's (`haven_repo::forget_snapshot`): manifest first, then
//! indexes, and refused for a protected snapshot, one a running backup builds on, or
//! one locked in storage. Chunks stay until `haven gc`. `VM@latest` is refused: which
//! snapshot is newest can change between listing and forgetting, and forgetting is
//! not undone.

use anyhow::Result;
use haven_repo::{RepositoryLeases, SnapshotId, SnapshotRef, forget_snapshot};
use serde_json::json;

use crate::common::{OutputArgs, RepoArgs, print_json};

/// Arguments of `haven forget`.
#[derive(Debug, clap::Args)]
pub struct ForgetArgs {
    /// The snapshot, `VM@TIME` as `haven snapshots` lists it.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    output: OutputArgs,
}

/// Removes the snapshot.
pub async fn run(args: ForgetArgs) -> Result<()> {
    let Some(timestamp) = &args.snapshot.timestamp else {
        usage!(
            "name the snapshot by its time, {}@TIME as `haven snapshots` lists it: forget \
             does not pick the latest for you",
            args.snapshot.vm
        );
    };
    let id = SnapshotId::new(&args.snapshot.vm, timestamp)?;
    let repo = args.repo.open().await?;
    forget_snapshot(&repo, &id, &RepositoryLeases).await?;
    if args.output.json {
        return print_json(&json!({ "forgotten": id.to_string() }));
    }
    println!("forgot {id}; its chunks are freed by garbage collection (haven gc)");
    Ok(())
}
