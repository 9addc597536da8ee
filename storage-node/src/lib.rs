//! Haven storage node (being built; see issue 3).

use std::path::PathBuf;

/// Command-line arguments of `haven storage-node`.
#[derive(Debug, clap::Args)]
pub struct StorageNodeArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the storage node until it is asked to stop.
pub async fn run(_args: StorageNodeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the storage node is not built yet")
}
