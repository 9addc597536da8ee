//! The long-running cluster roles `haven coordinator` and `haven worker` (`haven dev`,
//! both in one process, is in `dev.rs`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use haven_coordinator::CoordinatorConfig;
use haven_worker::daemon::{WorkerConfig, run_worker};

use crate::common::{read_password, shutdown_token};

/// Arguments of `haven coordinator`.
#[derive(Debug, clap::Args)]
pub struct CoordinatorArgs {
    /// coordinator.toml.
    #[arg(long)]
    config: PathBuf,
    /// etcd endpoints (comma-separated), overriding the file; none: embedded store.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[command(flatten)]
    file: ConfigFileArgs,
}

/// Arguments of `haven worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// worker.toml.
    #[arg(long)]
    config: PathBuf,
    /// File whose first line is the repository password (otherwise the output of
    /// $HAVEN_PASSWORD_COMMAND, or $HAVEN_PASSWORD).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    #[command(flatten)]
    file: ConfigFileArgs,
}

/// How a daemon reads its configuration file.
#[derive(Debug, clap::Args)]
struct ConfigFileArgs {
    /// Replace `${NAME}` in the file with environment variables (one file for every pod
    /// of a StatefulSet or node of a DaemonSet).
    #[arg(long)]
    expand_env: bool,
    /// Read and check the configuration, print `FILE: ok`, and exit.
    #[arg(long)]
    check_config: bool,
}

fn read_config<T>(
    path: &PathBuf,
    file: &ConfigFileArgs,
    parse: impl FnOnce(&str, &str) -> Result<T, String>,
) -> Result<T> {
    let name = path.display().to_string();
    let mut text = std::fs::read_to_string(path).with_context(|| format!("cannot read {name}"))?;
    if file.expand_env {
        text = haven_config::expand_env(&name, &text).map_err(anyhow::Error::msg)?;
    }
    parse(&name, &text).map_err(anyhow::Error::msg)
}

/// Runs a coordinator replica until SIGTERM or Ctrl-C.
pub async fn coordinator(args: CoordinatorArgs) -> Result<()> {
    let mut config = read_config(&args.config, &args.file, CoordinatorConfig::parse)?;
    if !args.etcd.is_empty() {
        config.etcd = args.etcd;
        config
            .etcd_transport()
            .map_err(|error| anyhow::anyhow!("{}: {error}", args.config.display()))?;
    }
    if args.file.check_config {
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let store = haven_coordinator::open_store(&config).await?;
    haven_coordinator::run(config, store, shutdown_token()).await?;
    Ok(())
}

/// Runs a worker until SIGTERM or Ctrl-C.
pub async fn worker(args: WorkerArgs) -> Result<()> {
    let config = read_config(&args.config, &args.file, WorkerConfig::parse)?;
    if args.file.check_config {
        config
            .vcenter_connections()
            .map_err(|error| anyhow::anyhow!("{}: {error}", args.config.display()))?;
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let password = read_password(args.password_file.as_deref())?;
    run_worker(config, password, shutdown_token()).await?;
    Ok(())
}
