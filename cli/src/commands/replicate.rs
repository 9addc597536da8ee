//! `haven replicate`: copy a repository to a secondary site, once or continuously, and
//! report how far behind the secondary is.

mod metrics;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use haven_metrics::{HttpSecurity, MetricsServer};
use haven_repo::{
    Backend, Phase, Progress, ReplicateOptions, S3Credentials, VmReplicationStatus, parse_rate,
    replicate, replication_status,
};
use haven_tls::listener::ServerTlsFiles;
use tokio_util::sync::CancellationToken;

use metrics::ReplicationMetrics;

use crate::common::{OutputArgs, human_bytes, print_json};
use crate::progress::ProgressLine;

/// The two sites.
#[derive(Debug, Clone, clap::Args)]
pub struct Sites {
    /// Primary repository URL (read only; no password needed).
    #[arg(long, value_name = "URL", required = true)]
    from: Option<String>,
    /// Secondary repository URL (created on first use). S3 credentials:
    /// HAVEN_SECONDARY_AWS_ACCESS_KEY_ID/_SECRET_ACCESS_KEY if set, else AWS_*.
    #[arg(long, value_name = "URL", required = true)]
    to: Option<String>,
}

impl Sites {
    /// Opens both; a missing local secondary directory is created.
    fn open(&self) -> Result<(Backend, Backend)> {
        let (Some(from), Some(to)) = (&self.from, &self.to) else {
            usage!("--from and --to are required");
        };
        if from == to {
            usage!("--from and --to name the same repository");
        }
        let secondary = S3Credentials::secondary_from_env()?;
        Ok((
            Backend::from_url(from, false)?,
            Backend::from_url_with_credentials(to, true, secondary.as_ref())?,
        ))
    }
}

/// Arguments of `haven replicate`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ReplicateArgs {
    #[command(subcommand)]
    command: Option<ReplicateCommand>,
    #[command(flatten)]
    sites: Sites,
    /// Bandwidth limit in bytes per second written to the secondary (K, M, G: ×1024).
    #[arg(long, value_name = "BYTES/s", value_parser = rate_value)]
    limit_rate: Option<u64>,
    /// Objects copied at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Copy only this VM's snapshots (chunks are copied for all VMs: without the key
    /// they cannot be told apart).
    #[arg(long)]
    vm: Option<String>,
    /// Replicate continuously, one pass every INTERVAL (for example 30s, 5m, 1h).
    #[arg(long, value_name = "INTERVAL", value_parser = interval_value)]
    watch: Option<Duration>,
    /// With --watch: serve Prometheus metrics on ADDR (/metrics): plain HTTP on a
    /// loopback address, elsewhere HTTPS with the three --metrics-* files below.
    #[arg(long, value_name = "ADDR", requires = "watch")]
    metrics_listen: Option<String>,
    /// Certificate of the metrics listener (PEM); makes it HTTPS.
    #[arg(long, value_name = "FILE", requires_all = ["metrics_listen", "metrics_key", "metrics_client_ca"])]
    metrics_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, value_name = "FILE", requires = "metrics_cert")]
    metrics_key: Option<PathBuf>,
    /// CA of the scrapers' client certificates (role viewer or above).
    #[arg(long, value_name = "FILE", requires = "metrics_cert")]
    metrics_client_ca: Option<PathBuf>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Debug, clap::Subcommand)]
enum ReplicateCommand {
    /// Show the replication lag per VM.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    #[command(flatten)]
    sites: Sites,
    /// Only this VM.
    #[arg(long)]
    vm: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// A `--limit-rate` value (`50M`, `800K`) in bytes per second.
pub(crate) fn rate_value(text: &str) -> Result<u64, String> {
    parse_rate(text).ok_or_else(|| format!("{text:?} is not a rate such as 50M or 800K"))
}

fn interval_value(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().last() {
        Some((at, 's')) => (&text[..at], 1),
        Some((at, 'm')) => (&text[..at], 60),
        Some((at, 'h')) => (&text[..at], 3600),
        _ => (text, 1),
    };
    match number.parse::<u64>() {
        Ok(value) if value > 0 => Ok(Duration::from_secs(value * unit)),
        _ => Err(format!("{text:?} is not an interval such as 30s, 5m or 1h")),
    }
}

impl ReplicateArgs {
    /// Whether this run is a service (`--watch`), which logs like the daemons.
    pub fn runs_continuously(&self) -> bool {
        self.watch.is_some()
    }
}

/// Runs `haven replicate` or `haven replicate status`.
pub async fn run(args: ReplicateArgs) -> Result<()> {
    if let Some(ReplicateCommand::Status(status)) = args.command {
        return run_status(status).await;
    }
    let (from, to) = args.sites.open()?;
    let options = ReplicateOptions {
        parallel: args.parallel.clamp(1, 256),
        limit_rate: args.limit_rate,
        vm: args.vm.clone(),
    };
    let Some(interval) = args.watch else {
        return replicate_once(&from, &to, &options, args.output.json).await;
    };
    let metrics = Arc::new(ReplicationMetrics::new());
    if let Some(address) = &args.metrics_listen {
        // Served until the process ends: the watch loop below never returns.
        let shutdown = CancellationToken::new();
        let (security, scheme) = match (&args.metrics_cert, &args.metrics_key) {
            (Some(cert), Some(key)) => {
                let files = ServerTlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: args.metrics_client_ca.clone(),
                };
                (
                    HttpSecurity::tls(&files, "replication metrics", &shutdown)?,
                    "https",
                )
            }
            _ => (HttpSecurity::Plain { insecure: false }, "http"),
        };
        let server = MetricsServer::bind(address.as_str(), security).await?;
        println!("metrics on {scheme}://{}/metrics", server.local_addr()?);
        tokio::spawn(server.serve(Arc::clone(&metrics), shutdown));
    }
    refresh_metrics(&from, &to, args.vm.as_deref(), &metrics).await;
    loop {
        if let Err(error) = replicate_once(&from, &to, &options, args.output.json).await {
            metrics.pass_failed();
            eprintln!("replication pass failed: {error:#}");
        }
        refresh_metrics(&from, &to, args.vm.as_deref(), &metrics).await;
        tokio::time::sleep(interval).await;
    }
}

/// Recomputes the lag and replaces the statuses `/metrics` serves.
async fn refresh_metrics(
    from: &Backend,
    to: &Backend,
    vm: Option<&str>,
    metrics: &ReplicationMetrics,
) {
    match replication_status(from, to, vm).await {
        Ok(statuses) => metrics.set_statuses(statuses),
        Err(error) => eprintln!("replication status failed: {error}"),
    }
}

async fn replicate_once(
    from: &Backend,
    to: &Backend,
    options: &ReplicateOptions,
    json: bool,
) -> Result<()> {
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start("replicate", Phase::Copy, progress.clone(), json);
    let report = replicate(from, to, options, &progress).await;
    line.finish(report.is_ok());
    let report = report.with_context(|| {
        format!(
            "replication from {} to {} failed (rerun to continue)",
            from.location(),
            to.location()
        )
    })?;
    if json {
        return print_json(&report);
    }
    let rate = report.bytes_copied as f64 / report.elapsed_seconds.max(1e-3);
    println!(
        "{} snapshot(s) replicated ({} missing before): {} chunks, {} indexes, {} copied in {:.1} s ({}/s){}",
        report.manifests_copied,
        report.snapshots_missing,
        report.chunks_copied,
        report.indexes_copied,
        human_bytes(report.bytes_copied),
        report.elapsed_seconds,
        human_bytes(rate as u64),
        if report.repository_created {
            "; repository created at the secondary"
        } else {
            ""
        }
    );
    Ok(())
}

async fn run_status(args: StatusArgs) -> Result<()> {
    // A local secondary that does not exist yet is created empty: it lacks everything.
    let (from, to) = args.sites.open()?;
    let statuses = replication_status(&from, &to, args.vm.as_deref()).await?;
    if args.output.json {
        return print_json(&statuses);
    }
    print_status(&statuses);
    Ok(())
}

fn print_status(statuses: &[VmReplicationStatus]) {
    println!(
        "{:<24} {:>9} {:>10} {:>8} {:>10} {:>12}  OLDEST MISSING",
        "VM", "PRIMARY", "REPLICATED", "MISSING", "LAG (s)", "OLDEST (s)"
    );
    for status in statuses {
        println!(
            "{:<24} {:>9} {:>10} {:>8} {:>10} {:>12}  {}",
            status.vm,
            status.primary_snapshots,
            status.replicated_snapshots,
            status.missing_snapshots,
            status.lag_seconds,
            status.oldest_missing_age_seconds,
            status.oldest_missing.as_deref().unwrap_or("-")
        );
    }
}
