//! The `haven` command: every Haven role and verb in one binary.
//!
//! Thin by design: argument parsing and printing live here, everything else in the
//! library crates, so the coordinator and workers run exactly the code the CLI tests.

// First: its `usage!` macro is used by the modules below.
#[macro_use]
mod exit;
mod commands;
mod common;
mod logging;
mod progress;
mod usage;

use clap::{Parser, Subcommand};

use commands::{
    admin, backup, catalog, cluster, dev, diff, files, forget, gc, key, manual, protect, prune,
    replicate, repo, restore, security, serve_nbd, snapshots, stats, verify,
};

#[derive(Parser)]
#[command(
    name = "haven",
    version,
    about = "Haven: VM backup and disaster recovery"
)]
struct Cli {
    /// Export traces over OTLP/gRPC to this collector (`http://HOST:4317`); otherwise
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` decides, and without either nothing is exported.
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// How log lines on standard error are written: text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "HAVEN_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create and manage repositories.
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Manage the repository's passwords (one key slot each).
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Back up a VM's disks into a repository.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// List committed snapshots.
    Snapshots(snapshots::SnapshotsArgs),
    /// Repository size, deduplication and compression, in total and per VM.
    Stats(stats::StatsArgs),
    /// Restore a disk of a snapshot to a file.
    Restore(restore::RestoreArgs),
    /// What changed between two snapshots of a VM: byte ranges per disk, and files.
    Diff(diff::DiffArgs),
    /// Re-read and check snapshots end to end.
    Verify(verify::VerifyArgs),
    /// Remove snapshots a retention policy does not keep (chunks stay until GC).
    Prune(prune::PruneArgs),
    /// Remove one snapshot, VM@TIME (refused if protected; chunks stay until GC).
    Forget(forget::ForgetArgs),
    /// Remove chunks and indexes no snapshot needs (safe while backups run).
    Gc(gc::GcArgs),
    /// Keep a snapshot whatever prune's rules say, optionally locked in storage.
    Protect(protect::ProtectArgs),
    /// Remove a snapshot's protection (refused while its storage lock holds).
    Unprotect(protect::UnprotectArgs),
    /// Copy a repository to a secondary site (no password needed), or show the lag.
    Replicate(replicate::ReplicateArgs),
    /// Export a snapshot's disk as a read-only NBD server (instant recovery).
    ServeNbd(serve_nbd::ServeNbdArgs),
    /// List, find and restore single files of a snapshot without mounting.
    #[command(subcommand)]
    Files(files::FilesCommand),
    /// Run an S3-compatible storage node.
    StorageNode(haven_storage_node::StorageNodeArgs),
    /// Run a coordinator replica (etcd or the embedded store).
    Coordinator(cluster::CoordinatorArgs),
    /// Run a worker that takes backup jobs from the coordinator.
    Worker(cluster::WorkerArgs),
    /// Run a coordinator, a worker and optionally a storage node in one process, with
    /// no configuration (a default repository and policy are made at the first start).
    Dev(dev::DevArgs),
    /// VMs known to the coordinator.
    #[command(subcommand)]
    Vm(admin::VmCommand),
    /// Backup policies of the cluster.
    #[command(subcommand)]
    Policy(admin::PolicyCommand),
    /// The coordinator's snapshot catalog (rebuilt from a repository at a DR site).
    #[command(subcommand)]
    Catalog(catalog::CatalogCommand),
    /// Backup jobs of the cluster.
    #[command(subcommand)]
    Job(admin::JobCommand),
    /// A private CA and certificates for the cluster's components and people.
    #[command(subcommand)]
    Pki(security::PkiCommand),
    /// API tokens of the cluster.
    #[command(subcommand)]
    Token(security::TokenCommand),
    /// The audit log of mutating calls to the coordinator.
    Audit(security::AuditArgs),
    /// Print a shell completion script: `source <(haven completions bash)`.
    Completions(manual::CompletionsArgs),
    /// Write manual pages, one per command and subcommand.
    Man(manual::ManArgs),
}

impl Command {
    /// The `service.name` of this process's traces.
    fn telemetry_service(&self) -> haven_telemetry::Service {
        match self {
            Command::Coordinator(_) => haven_telemetry::Service::Coordinator,
            Command::Worker(_) => haven_telemetry::Service::Worker,
            Command::StorageNode(_) => haven_telemetry::Service::StorageNode,
            _ => haven_telemetry::Service::Cli,
        }
    }

    /// Servers log what they do; one-shot commands print their results and stay quiet.
    fn log_role(&self) -> logging::Role {
        match self {
            Command::StorageNode(_)
            | Command::Coordinator(_)
            | Command::Worker(_)
            | Command::Dev(_)
            | Command::ServeNbd(_) => logging::Role::Daemon,
            Command::Replicate(args) if args.runs_continuously() => logging::Role::Daemon,
            _ => logging::Role::OneShot,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage::report(error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Export runs on the runtime; the exporter is dropped (and flushed) before it.
    let telemetry = match haven_telemetry::Telemetry::start(
        cli.command.telemetry_service(),
        cli.otlp_endpoint.as_deref(),
        runtime.handle(),
    ) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    logging::init(cli.command.log_role(), cli.log_format, telemetry.as_ref());
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Repo(command) => repo::run(command).await,
            Command::Key(command) => key::run(command).await,
            Command::Backup(command) => backup::run(command).await,
            Command::Snapshots(args) => snapshots::run(args).await,
            Command::Stats(args) => stats::run(args).await,
            Command::Restore(args) => restore::run(args).await,
            Command::Diff(args) => diff::run(args).await,
            Command::Verify(args) => verify::run(args).await,
            Command::Prune(args) => prune::run(args).await,
            Command::Forget(args) => forget::run(args).await,
            Command::Gc(args) => gc::run(args).await,
            Command::Protect(args) => protect::protect(args).await,
            Command::Unprotect(args) => protect::unprotect(args).await,
            Command::Replicate(args) => replicate::run(args).await,
            Command::ServeNbd(args) => serve_nbd::run(args).await,
            Command::Files(command) => files::run(command).await,
            Command::StorageNode(args) => haven_storage_node::run(args).await,
            Command::Coordinator(args) => cluster::coordinator(args).await,
            Command::Worker(args) => cluster::worker(args).await,
            Command::Pki(command) => security::pki(command),
            Command::Token(command) => security::token(command).await,
            Command::Audit(args) => security::audit(args).await,
            Command::Dev(args) => dev::run(args).await,
            Command::Vm(command) => admin::vm(command).await,
            Command::Policy(command) => admin::policy(command).await,
            Command::Catalog(command) => catalog::run(command).await,
            Command::Job(command) => admin::job(command).await,
            Command::Completions(args) => manual::completions(args),
            Command::Man(args) => manual::man(args),
        }
    });
    // The last spans leave while the runtime still runs.
    drop(telemetry);
    match result {
        Ok(()) => exit::Exit::Success.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            exit::Exit::of(&error).into()
        }
    }
}
