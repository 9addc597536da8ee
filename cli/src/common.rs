//! Arguments and helpers every command shares: reaching a repository, reaching the
//! coordinator and its catalog, and printing. Commands import from here, never the
//! other way round.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use haven_proto::LeaderClient;
use haven_proto::v1::{self, admin_service_client::AdminServiceClient};
use haven_repo::{Backend, Repository};

use crate::exit::CliError;

/// How to reach and open a repository.
#[derive(Debug, clap::Args)]
pub struct RepoArgs {
    /// Repository URL: file:///path, s3://bucket/prefix?endpoint=http://host:port
    #[arg(long, env = "HAVEN_REPO")]
    pub repo: String,
    /// File whose first line is the repository password (otherwise the output of
    /// $HAVEN_PASSWORD_COMMAND, or $HAVEN_PASSWORD).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
}

impl RepoArgs {
    /// The password, from the file or the environment.
    pub fn password(&self) -> Result<Vec<u8>> {
        read_password(self.password_file.as_deref())
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Arc<Repository>> {
        let password = self.password()?;
        let backend = Backend::from_url(&self.repo, false)?;
        Ok(Arc::new(Repository::open(backend, &password).await?))
    }
}

/// Where the coordinator is.
#[derive(Debug, Clone, clap::Args)]
pub struct CoordinatorUrl {
    /// Coordinator gRPC URLs, comma-separated (any replica; the leader is found):
    /// `https://HOST:PORT`, or `http://` on loopback.
    #[arg(
        long,
        env = "HAVEN_COORDINATOR",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    pub coordinator: Vec<String>,
    #[command(flatten)]
    pub credentials: CoordinatorCredentials,
}

/// How the CLI proves who it is to the coordinator.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoordinatorCredentials {
    /// The cluster's CA certificate (PEM), to check an https:// coordinator.
    #[arg(long, env = "HAVEN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate naming haven://ROLE/NAME (`haven pki issue`).
    #[arg(long, env = "HAVEN_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    #[arg(long, env = "HAVEN_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// File whose first line is an API token (`haven token create`).
    #[arg(long, env = "HAVEN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl CoordinatorUrl {
    /// A client that follows the leader among these URLs.
    pub fn client(&self) -> Result<LeaderClient> {
        let credentials = &self.credentials;
        let security = haven_proto::ClientSecurity::from_files(
            credentials.ca_file.as_deref(),
            credentials
                .cert_file
                .clone()
                .zip(credentials.key_file.clone()),
            credentials.token_file.as_deref(),
            None,
        )?;
        Ok(LeaderClient::new(
            self.coordinator.clone(),
            Duration::from_secs(20),
            security,
        )?)
    }
}

/// The cluster's snapshot catalog, optionally of one VM.
pub async fn catalog(
    coordinator: &CoordinatorUrl,
    vm: Option<String>,
) -> Result<Vec<v1::SnapshotInfo>> {
    let client = coordinator.client()?;
    let request = v1::ListSnapshotsRequest {
        vm: vm.unwrap_or_default(),
    };
    Ok(client
        .unary(AdminServiceClient::new, request, |mut c, r| async move {
            c.list_snapshots(r).await
        })
        .await?
        .snapshots)
}

/// How `snapshots` and `restore` reach a repository: by URL, or through the cluster
/// coordinator's catalog, which knows which repository holds each VM's snapshots.
#[derive(Debug, clap::Args)]
pub struct CatalogRepoArgs {
    /// Repository URL: file:///path, s3://bucket/prefix?endpoint=http://host:port
    #[arg(long, env = "HAVEN_REPO", required_unless_present = "coordinator")]
    pub repo: Option<String>,
    /// File whose first line is the repository password (otherwise the output of
    /// $HAVEN_PASSWORD_COMMAND, or $HAVEN_PASSWORD).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// Coordinator URLs (comma-separated): find the repository in the cluster's catalog.
    #[arg(long, value_delimiter = ',', conflicts_with = "repo")]
    pub coordinator: Vec<String>,
    #[command(flatten)]
    pub credentials: CoordinatorCredentials,
}

impl CatalogRepoArgs {
    /// Opens the repository given, or the one the catalog says holds `snapshot`
    /// (for `VM@latest`: the repository of the VM's newest snapshot).
    pub async fn open_for(&self, snapshot: &haven_repo::SnapshotRef) -> Result<Arc<Repository>> {
        let repo = match &self.repo {
            Some(url) => url.clone(),
            None => {
                let coordinator = CoordinatorUrl {
                    coordinator: self.coordinator.clone(),
                    credentials: self.credentials.clone(),
                };
                let mut list = catalog(&coordinator, Some(snapshot.vm.clone())).await?;
                list.retain(|s| {
                    snapshot
                        .timestamp
                        .as_ref()
                        .is_none_or(|t| &s.timestamp == t)
                });
                list.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
                match list.pop() {
                    Some(entry) => entry.repository,
                    None => {
                        return Err(CliError::NotFound(format!(
                            "the coordinator's catalog has no snapshot {}",
                            describe(snapshot)
                        ))
                        .into());
                    }
                }
            }
        };
        RepoArgs {
            repo,
            password_file: self.password_file.clone(),
        }
        .open()
        .await
    }
}

fn describe(snapshot: &haven_repo::SnapshotRef) -> String {
    format!(
        "{}@{}",
        snapshot.vm,
        snapshot.timestamp.as_deref().unwrap_or("latest")
    )
}

/// The environment variable naming a command whose output is the repository password.
const PASSWORD_COMMAND: &str = "HAVEN_PASSWORD_COMMAND";

/// The repository password: the first line of `file`, else the output of
/// `$HAVEN_PASSWORD_COMMAND`, else `$HAVEN_PASSWORD`. A file and a command both given
/// is refused rather than one of them silently ignored.
pub fn read_password(file: Option<&std::path::Path>) -> Result<Vec<u8>> {
    let command = std::env::var(PASSWORD_COMMAND)
        .ok()
        .filter(|command| !command.trim().is_empty());
    match (file, command) {
        (Some(path), Some(_)) => Err(CliError::Usage(format!(
            "both a password file ({}) and {PASSWORD_COMMAND} are given: keep one",
            path.display()
        ))
        .into()),
        (None, Some(command)) => password_from_command(&command),
        (file, None) => read_secret(
            file,
            "HAVEN_PASSWORD",
            "set HAVEN_PASSWORD or HAVEN_PASSWORD_COMMAND, or pass --password-file",
        ),
    }
}

/// Whether a password is given at all (a file, `$HAVEN_PASSWORD_COMMAND` or
/// `$HAVEN_PASSWORD`), for `haven dev`, which makes one when none is.
pub fn password_given(file: Option<&std::path::Path>) -> bool {
    // The same tests as `read_password`'s.
    let command = std::env::var(PASSWORD_COMMAND).is_ok_and(|command| !command.trim().is_empty());
    let variable = std::env::var("HAVEN_PASSWORD").is_ok_and(|password| !password.is_empty());
    file.is_some() || command || variable
}

/// Runs `command` with `sh -c` (so a pipeline works: `pass show haven | head -n1`) and
/// returns its standard output less one trailing newline. Its standard input and error
/// stay the terminal's, so it can prompt and its own errors are seen.
fn password_from_command(command: &str) -> Result<Vec<u8>> {
    let failed = |why: String| CliError::Password(format!("{PASSWORD_COMMAND} {command:?} {why}"));
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|error| failed(format!("could not be run: {error}")))?;
    if !output.status.success() {
        return Err(failed(format!("failed ({})", output.status)).into());
    }
    let mut password = output.stdout;
    if password.last() == Some(&b'\n') {
        password.pop();
        if password.last() == Some(&b'\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(failed("printed no password".into()).into());
    }
    Ok(password)
}

/// A secret: the first line of `file`, else the environment variable `variable`;
/// `hint` says how to give one in the error when neither is given.
pub fn read_secret(file: Option<&std::path::Path>, variable: &str, hint: &str) -> Result<Vec<u8>> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|error| {
            CliError::Password(format!(
                "cannot read password file {}: {error}",
                path.display()
            ))
        })?;
        let line = text.lines().next().unwrap_or_default();
        if line.is_empty() {
            return Err(
                CliError::Password(format!("password file {} is empty", path.display())).into(),
            );
        }
        return Ok(line.as_bytes().to_vec());
    }
    match std::env::var(variable) {
        Ok(password) if !password.is_empty() => Ok(password.into_bytes()),
        _ => Err(CliError::Password(format!("no password: {hint}")).into()),
    }
}

/// A token cancelled on Ctrl-C or SIGTERM: how long-running roles stop cleanly.
pub fn shutdown_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        stop_signal().await;
        cancel.cancel();
    });
    token
}

/// `--json` switch shared by commands that print data.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct OutputArgs {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What every backup command prints about one disk: its size, the bytes read, the new
/// chunks and what they stored, the chunks reused from the base.
pub fn disk_figures(disk: &haven_worker::DiskReport) -> String {
    format!(
        "{} disk, {} read, {} new chunks ({} stored), {} reused",
        human_bytes(disk.size),
        human_bytes(disk.stats.bytes_read),
        disk.stats.new_chunks,
        human_bytes(disk.stats.uploaded_bytes),
        disk.stats.reused_chunks,
    )
}

/// Formats a byte count with binary units.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Resolves with the signal's name on Ctrl-C (SIGINT) or SIGTERM: how a service
/// manager or a person stops a command, and the cancellation of live backups (which
/// must tear down what they set up in the hypervisor). Both handlers are installed at
/// once, so neither signal kills the process from then on; where they cannot be
/// installed this never resolves, and such a run is simply not cancellable.
pub fn stop_signal() -> impl Future<Output = &'static str> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async move {
        let received = |signal: Option<tokio::signal::unix::Signal>| async move {
            match signal {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = received(interrupt) => "SIGINT",
            () = received(terminate) => "SIGTERM",
        }
    }
}
