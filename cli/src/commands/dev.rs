//! `haven dev`: a coordinator on the embedded store, a worker for this machine's VMs
//! and optionally a storage node, in one process, working with no configuration.
//!
//! Everything it needs it makes at its first start under the state folder, readable
//! by its owner only, and reads back at every later start without replacing it:
//!
//! | in `STATE/` | what |
//! |---|---|
//! | `pki/` | a CA, the coordinator's, the worker's and an admin's certificates |
//! | `password` | the repository password, unless one is given |
//! | `repository/` | the default repository (`defaults.rs`) |
//! | `default-policy.toml` | the default policy, applied at the first start |
//! | `storage-keys/` | with `--storage-dir`: the node's admin (unless given), append and delete keys |
//! | `coordinator.redb` | the embedded store |
//! | `env` | the CLI's variables for this instance, rewritten at every start |
//!
//! Every listener is on loopback by default; the coordinator speaks mutual TLS.

mod defaults;
mod secrets;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use haven_coordinator::CoordinatorConfig;
use haven_worker::daemon::{
    ClientTlsConfig, HostConfig, StorageKeysConfig, WorkerConfig, run_worker,
};

use crate::common::{
    CoordinatorCredentials, CoordinatorUrl, password_given, read_password, shutdown_token,
};

use defaults::Defaults;
use secrets::{DevPki, DevStorageKeys, ensure_password, private_dir, write_private};

/// Arguments of `haven dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Folder of everything `haven dev` makes and keeps: the embedded store,
    /// certificates, keys, the generated password, the default repository.
    #[arg(long, default_value = "haven-dev")]
    state_dir: PathBuf,
    /// gRPC address of the coordinator.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address of `/metrics`, `/healthz` and the web console.
    #[arg(long, default_value = "127.0.0.1:7701")]
    http_listen: SocketAddr,
    /// Cap on the worker's reads from the VMs' disks, bytes per second (0: none).
    #[arg(long, default_value_t = 0, value_name = "BYTES_PER_SECOND")]
    read_limit: u64,
    /// Address of the worker's `/metrics` (loopback only); none: not served.
    #[arg(long)]
    worker_metrics_listen: Option<SocketAddr>,
    /// Folder of `NAME.qmp` sockets: the local host's VMs.
    #[arg(long)]
    qmp_dir: Option<PathBuf>,
    /// Name of the local host.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// File whose first line is the repository password (otherwise the output of
    /// $HAVEN_PASSWORD_COMMAND, or $HAVEN_PASSWORD; without any, one is made at the
    /// first start in STATE/password).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Also run a storage node (S3) in this process on this data directory, with a
    /// bucket `haven`: repositories `s3://haven/NAME?endpoint=http://STORAGE_LISTEN`.
    /// The worker's jobs sign with least-privilege keys made at the first start in
    /// STATE/storage-keys: `append` for backups and replication, `delete` for prune
    /// and GC.
    #[arg(long)]
    storage_dir: Option<PathBuf>,
    /// Address of the storage node.
    #[arg(long, default_value = "127.0.0.1:7702")]
    storage_listen: SocketAddr,
    /// Admin access key of the storage node (for you, never for jobs); without it one
    /// is made at the first start in STATE/storage-keys/admin.toml.
    #[arg(
        long,
        env = "HAVEN_STORAGE_ACCESS_KEY",
        requires = "storage_secret_key"
    )]
    storage_access_key: Option<String>,
    /// Secret of the admin access key.
    #[arg(
        long,
        env = "HAVEN_STORAGE_SECRET_KEY",
        hide_env_values = true,
        requires = "storage_access_key"
    )]
    storage_secret_key: Option<String>,
}

/// Runs a coordinator (embedded store), a worker for the local host and optionally a
/// storage node in one process until SIGTERM or Ctrl-C.
pub async fn run(args: DevArgs) -> Result<()> {
    let state = std::path::absolute(&args.state_dir)
        .with_context(|| format!("cannot resolve {}", args.state_dir.display()))?;
    private_dir(&state)?;
    let mut banner = Banner::default();
    let password = if password_given(args.password_file.as_deref()) {
        banner.password_file = args.password_file.clone();
        read_password(args.password_file.as_deref())?
    } else {
        let (file, made) = ensure_password(&state)?;
        banner.say(format!(
            "repository password in {}{}",
            file.display(),
            if made {
                " (made now: keep a copy, no backup can be read without it)"
            } else {
                ""
            }
        ));
        let password = read_password(Some(&file))?;
        banner.password_file = Some(file);
        password
    };
    let pki = DevPki::ensure(&state.join("pki"), args.listen)?;
    let store_path = state.join("coordinator.redb");
    let defaults = Defaults::plan(&state, &store_path)?;
    let config = CoordinatorConfig::parse(
        "haven dev",
        &format!(
            "id = \"dev\"\nlisten = \"{}\"\nhttp_listen = \"{}\"\nstate_path = {:?}\n\
             allowed_repositories = [\"*\"]\n\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            args.listen,
            args.http_listen,
            store_path,
            pki.file("coordinator.pem"),
            pki.file("coordinator-key.pem"),
            pki.file("ca.pem"),
        ),
    )
    .map_err(anyhow::Error::msg)?;
    let store = haven_coordinator::open_store(&config).await?;
    let shutdown = shutdown_token();
    let mut storage = StorageKeysConfig::default();
    if let Some(dir) = &args.storage_dir {
        storage = start_storage_node(&args, dir, &state, &mut banner)?;
    }
    let coordinator = tokio::spawn(haven_coordinator::run(config, store, shutdown.clone()));
    let worker = WorkerConfig {
        id: "dev-worker".into(),
        coordinators: vec![format!("https://{}", args.listen)],
        max_jobs: 2,
        scratch_dir: std::env::temp_dir(),
        connections: 4,
        read_limit_bytes_per_second: args.read_limit,
        inventory_interval_seconds: 10,
        // The coordinator stops with the worker, in the same process: nothing to
        // drain towards.
        drain_seconds: 0,
        metrics_listen: args.worker_metrics_listen,
        metrics_tls: None,
        hosts: vec![HostConfig {
            name: args.host.clone(),
            qmp_dir: args.qmp_dir.clone(),
            vms: Vec::new(),
            libvirt: None,
            qemu_user: "libvirt-qemu".into(),
            vcenter: None,
            vcenter_credentials_file: None,
            vcenter_ca_file: None,
            labels: Default::default(),
        }],
        tls: Some(ClientTlsConfig {
            ca: pki.file("ca.pem"),
            cert: Some(pki.file("dev-worker.pem")),
            key: Some(pki.file("dev-worker-key.pem")),
        }),
        token_file: None,
        storage,
        boot_tests: Default::default(),
        snapshot: Default::default(),
    };
    let admin = CoordinatorUrl {
        coordinator: vec![format!("https://{}", args.listen)],
        credentials: CoordinatorCredentials {
            ca_file: Some(pki.file("ca.pem")),
            cert_file: Some(pki.file("admin.pem")),
            key_file: Some(pki.file("admin-key.pem")),
            token_file: None,
        },
    };
    banner.print(&args, &state, &admin)?;
    let first_start = async {
        let Some(defaults) = defaults else {
            return Ok(());
        };
        let made = defaults.create(&password, &admin).await;
        if made.is_err() {
            shutdown.cancel();
        }
        made
    };
    let (worker, first_start) = tokio::join!(
        run_worker(worker, password.clone(), shutdown.clone()),
        first_start
    );
    shutdown.cancel();
    coordinator.await.context("coordinator task")??;
    first_start?;
    worker?;
    Ok(())
}

/// Starts the in-process storage node on `dir` with the keys of `STATE/storage-keys`
/// (the admin key given or made there); returns the worker's `[storage]`.
fn start_storage_node(
    args: &DevArgs,
    dir: &Path,
    state: &Path,
    banner: &mut Banner,
) -> Result<StorageKeysConfig> {
    let keys = DevStorageKeys::ensure(&state.join("storage-keys"), args.storage_listen)?;
    let (access_key, secret_key) = match (&args.storage_access_key, &args.storage_secret_key) {
        (Some(access), Some(secret)) => (access.clone(), secret.clone()),
        _ => {
            let (file, pair, made) = keys.admin()?;
            banner.say(format!(
                "storage node admin key in {}{}",
                file.display(),
                if made { " (made now)" } else { "" }
            ));
            banner.storage_admin_file = Some(file);
            (pair.access_key_id, pair.secret_access_key)
        }
    };
    banner.say(format!(
        "storage node on http://{} (data in {}, bucket haven): repositories \
         s3://haven/NAME?endpoint=http://{}",
        args.storage_listen,
        dir.display(),
        args.storage_listen
    ));
    let node = haven_storage_node::StorageNodeArgs {
        config: Some(keys.node_config()),
        listen: Some(args.storage_listen),
        data: vec![dir.to_owned()],
        access_key: Some(access_key),
        secret_key: Some(secret_key),
        create_buckets: vec!["haven".into()],
        object_lock: false,
        default_retention: None,
        pull_sources: Vec::new(),
        insecure: false,
        check_config: false,
    };
    // Stops on the same signals as the rest of the process.
    tokio::spawn(async move {
        if let Err(error) = haven_storage_node::run(node).await {
            eprintln!("error: storage node: {error:#}");
        }
    });
    Ok(keys.worker_config())
}

/// What `haven dev` tells people at start, on standard error, every line beginning
/// `haven dev: ` (so a JSON log reader can skip them): where everything is and what
/// this start made.
#[derive(Default)]
struct Banner {
    lines: Vec<String>,
    /// The password file, for the CLI's `HAVEN_PASSWORD_FILE`.
    password_file: Option<PathBuf>,
    /// The storage node's admin key file, when `haven dev` holds it.
    storage_admin_file: Option<PathBuf>,
}

impl Banner {
    fn say(&mut self, line: String) {
        self.lines.push(line);
    }

    /// Writes `STATE/env` (the CLI's variables) and prints every line.
    fn print(&self, args: &DevArgs, state: &Path, admin: &CoordinatorUrl) -> Result<()> {
        let credentials = &admin.credentials;
        let mut variables: Vec<(&str, String)> =
            vec![("HAVEN_COORDINATOR", admin.coordinator[0].clone())];
        for (name, file) in [
            ("HAVEN_CA_FILE", &credentials.ca_file),
            ("HAVEN_CERT_FILE", &credentials.cert_file),
            ("HAVEN_KEY_FILE", &credentials.key_file),
            ("HAVEN_PASSWORD_FILE", &self.password_file),
        ] {
            if let Some(file) = file {
                variables.push((name, file.display().to_string()));
            }
        }
        let env = state.join("env");
        let mut text =
            String::from("# The haven CLI as the admin of this `haven dev`: . THIS_FILE\n");
        for (name, value) in &variables {
            text.push_str(&format!("export {name}={}\n", shell_quote(value)));
        }
        if let Some(file) = &self.storage_admin_file {
            text.push_str(&format!(
                "# the storage node's admin key is in {}\n",
                file.display()
            ));
        }
        write_private(&env, &text)?;
        eprintln!(
            "haven dev: coordinator on https://{} (metrics https://{}/metrics with the admin \
             certificate), worker for host {:?}",
            args.listen, args.http_listen, args.host
        );
        eprintln!(
            "haven dev: web console on https://{}/ (log in with a token from `haven token \
             create NAME --role operator`, run as admin)",
            args.http_listen
        );
        for line in &self.lines {
            eprintln!("haven dev: {line}");
        }
        eprintln!(
            "haven dev: the CLI as admin: . {}  (or export {})",
            env.display(),
            variables
                .iter()
                .map(|(name, value)| format!("{name}={}", shell_quote(value)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        Ok(())
    }
}

/// `value` as one POSIX shell word.
fn shell_quote(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:@,=+".contains(c))
    {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "'\\''"))
}
