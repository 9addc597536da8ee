//! The long-running cluster roles: `haven coordinator`, `haven worker` and `haven dev`
//! (coordinator, worker and optionally a storage node in one process on the embedded
//! store: the single-machine default).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use haven_coordinator::CoordinatorConfig;
use haven_worker::daemon::{
    ClientTlsConfig, HostConfig, StorageKeysConfig, WorkerConfig, run_worker,
};

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

/// Arguments of `haven dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Folder for the embedded store.
    #[arg(long, default_value = "haven-dev")]
    state_dir: PathBuf,
    /// gRPC address of the coordinator.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Address of `/metrics` and `/healthz`.
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
    /// $HAVEN_PASSWORD_COMMAND, or $HAVEN_PASSWORD).
    #[arg(long, env = "HAVEN_PASSWORD_FILE")]
    password_file: Option<PathBuf>,
    /// Also run a storage node (S3) in this process on this data directory, with a
    /// bucket `haven`; repositories then go to
    /// `s3://haven/NAME?endpoint=http://STORAGE_LISTEN`. The keys below are its admin
    /// key (for you, and for the coordinator's manifests as AWS_ACCESS_KEY_ID /
    /// AWS_SECRET_ACCESS_KEY); the worker's jobs get least-privilege keys made at first
    /// start in STATE/storage-keys: `append` for backups and replication, `delete` for
    /// prune and GC.
    #[arg(long, requires_all = ["storage_access_key", "storage_secret_key"])]
    storage_dir: Option<PathBuf>,
    /// Address of the storage node.
    #[arg(long, default_value = "127.0.0.1:7702")]
    storage_listen: SocketAddr,
    /// Access key of the storage node.
    #[arg(long, env = "HAVEN_STORAGE_ACCESS_KEY")]
    storage_access_key: Option<String>,
    /// Secret key of the storage node.
    #[arg(long, env = "HAVEN_STORAGE_SECRET_KEY", hide_env_values = true)]
    storage_secret_key: Option<String>,
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
        println!("{}: ok", args.config.display());
        return Ok(());
    }
    let password = read_password(args.password_file.as_deref())?;
    run_worker(config, password, shutdown_token()).await?;
    Ok(())
}

/// Runs a coordinator (embedded store) and a worker for the local host in one process.
pub async fn dev(args: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("cannot create {}", args.state_dir.display()))?;
    let password = read_password(args.password_file.as_deref())?;
    let pki = DevPki::ensure(&args.state_dir.join("pki"), args.listen)?;
    let config = CoordinatorConfig::parse(
        "haven dev",
        &format!(
            "id = \"dev\"\nlisten = \"{}\"\nhttp_listen = \"{}\"\nstate_path = {:?}\n\
             allowed_repositories = [\"*\"]\n\
             [tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            args.listen,
            args.http_listen,
            args.state_dir.join("coordinator.redb"),
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
        let keys =
            DevStorageKeys::ensure(&args.state_dir.join("storage-keys"), args.storage_listen)?;
        storage = keys.worker_config();
        let node = haven_storage_node::StorageNodeArgs {
            config: Some(keys.node_config()),
            listen: Some(args.storage_listen),
            data: vec![dir.clone()],
            access_key: args.storage_access_key.clone(),
            secret_key: args.storage_secret_key.clone(),
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
        metrics_listen: args.worker_metrics_listen,
        metrics_tls: None,
        hosts: vec![HostConfig {
            name: args.host.clone(),
            qmp_dir: args.qmp_dir.clone(),
            vms: Vec::new(),
            libvirt: None,
            qemu_user: "libvirt-qemu".into(),
            labels: Default::default(),
        }],
        tls: Some(ClientTlsConfig {
            ca: pki.file("ca.pem"),
            cert: Some(pki.file("dev-worker.pem")),
            key: Some(pki.file("dev-worker-key.pem")),
        }),
        token_file: None,
        storage,
    };
    eprintln!(
        "haven dev: coordinator on https://{} (metrics https://{}/metrics with the admin \
         certificate), worker for host {:?}\n\
         web console: https://{}/ (log in with a token from `haven token create NAME --role \
         operator`, run as admin)\n\
         the CLI as admin: export HAVEN_COORDINATOR=https://{} HAVEN_CA_FILE={} \
         HAVEN_CERT_FILE={} HAVEN_KEY_FILE={}",
        args.listen,
        args.http_listen,
        args.host,
        args.http_listen,
        args.listen,
        pki.file("ca.pem").display(),
        pki.file("admin.pem").display(),
        pki.file("admin-key.pem").display(),
    );
    let worker = run_worker(worker, password, shutdown.clone()).await;
    shutdown.cancel();
    coordinator.await.context("coordinator task")??;
    worker?;
    Ok(())
}

/// The least-privilege keys of `haven dev`'s storage node, made at its first start in
/// `STATE/storage-keys`: `append.toml` and `delete.toml` in the worker's key-file
/// format, and `storage-node.toml`, the node's configuration declaring them. Backups
/// and replication (to the same node, so it is also the destination's key) sign with
/// `append`, which can neither delete nor overwrite; only prune and GC hold `delete`.
struct DevStorageKeys {
    dir: PathBuf,
}

impl DevStorageKeys {
    const KINDS: [&str; 2] = ["append", "delete"];

    fn ensure(dir: &std::path::Path, listen: SocketAddr) -> Result<Self> {
        let keys = Self {
            dir: dir.to_owned(),
        };
        if keys.node_config().exists() {
            return Ok(keys);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut node = format!("listen = \"{listen}\"\n");
        for kind in Self::KINDS {
            let secret = random_hex(20)?;
            let access = format!("dev-{kind}");
            node.push_str(&format!(
                "[[keys]]\naccess_key = {access:?}\nsecret_key = {secret:?}\naccess = {kind:?}\n"
            ));
            let file = format!("access_key_id = {access:?}\nsecret_access_key = {secret:?}\n");
            keys.write(&format!("{kind}.toml"), &file)?;
        }
        // Written last: its presence says the set is complete.
        keys.write("storage-node.toml", &node)?;
        Ok(keys)
    }

    /// Writes `name` readable by its owner only (it holds a secret).
    fn write(&self, name: &str, text: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.dir.join(name);
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn node_config(&self) -> PathBuf {
        self.dir.join("storage-node.toml")
    }

    /// `[storage]` of the in-process worker.
    fn worker_config(&self) -> StorageKeysConfig {
        StorageKeysConfig {
            append_key_file: Some(self.dir.join("append.toml")),
            delete_key_file: Some(self.dir.join("delete.toml")),
            secondary_key_file: Some(self.dir.join("append.toml")),
        }
    }
}

/// `bytes` random bytes in hex, for secrets.
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("cannot read /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The certificates of `haven dev`, made at its first start in `STATE/pki`: a CA,
/// the coordinator's server certificate for the listen address, the in-process
/// worker's and an admin's client certificates. Even on one machine the coordinator
/// is reached over TLS by authenticated callers only.
struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    fn ensure(dir: &std::path::Path, listen: SocketAddr) -> Result<Self> {
        use haven_tls::pki::{CertificateAuthority, LeafRequest};
        use haven_tls::{Identity, Role};
        let pki = Self {
            dir: dir.to_owned(),
        };
        if pki.file("ca.pem").exists() {
            return Ok(pki);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let (authority, ca) = CertificateAuthority::generate("haven dev CA", 3650)?;
        ca.write(dir, "ca", true)?;
        let mut server = LeafRequest::new("coordinator", 3650);
        server.ip_addresses.push(listen.ip());
        server.dns_names.push("localhost".into());
        authority.issue(&server)?.write(dir, "coordinator", true)?;
        for (role, name) in [(Role::Worker, "dev-worker"), (Role::Admin, "admin")] {
            let client = LeafRequest::client(Identity::new(role, name)?, 3650);
            authority.issue(&client)?.write(dir, name, true)?;
        }
        Ok(pki)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
