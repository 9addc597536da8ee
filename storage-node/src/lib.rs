//! Haven storage node: an S3-compatible object server built for backup chunks.
//!
//! Workers upload chunks, indexes and manifests over the S3 API so the same
//! code works against AWS S3, Ceph RGW or MinIO; on premises, `haven
//! storage-node` is that S3 server. It is the `s3s` protocol layer over
//! Haven's own on-disk object store ([`store`]), not a proxy.
//!
//! Invariants:
//! - an object is acknowledged only after its bytes and metadata are fsynced
//!   and renamed into place and the directory is fsynced; a crash never
//!   leaves a partial object visible (`tmp/` is emptied at start);
//! - every read verifies per-block CRC-32s before bytes leave the node; a
//!   corrupt object is an error and a metric, never data;
//! - every request is SigV4-signed by a configured key (header or presigned
//!   URL) and limited to that key's buckets; the only unsigned endpoint is
//!   `GET /metrics`;
//! - no key reaches outside its bucket's directory: `.` and `..` segments are
//!   escaped like any other name (S3 allows them in keys), keys with a leading
//!   `/` or NUL are refused.
//!
//! Besides S3 it answers a batch existence query for deduplication
//! ([`exists`]); its client lives in `haven-repo` (`haven_repo::NodeClient`),
//! the crate that uses it.

mod access;
mod aligned_block;
mod bucket_setup;
pub mod config;
mod error;
pub mod extension;
#[doc(hidden)]
pub mod fuzzing;
mod keypath;
mod md5;
mod metrics;
mod object_file;
pub mod permission;
mod s3;
mod server;
pub mod store;

pub use config::Config;
pub use error::StoreError;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

/// Command-line arguments of `haven storage-node`.
#[derive(Debug, clap::Args)]
pub struct StorageNodeArgs {
    /// Configuration file (TOML); flags below override its settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the chosen address is
    /// printed on standard output).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Data directory; repeat the flag for several (objects are spread over
    /// them by a stable hash of bucket and key; the list is fixed once the
    /// store exists).
    #[arg(long)]
    pub data: Vec<PathBuf>,
    /// Access key for a single-key quick start (all buckets, `access = "admin"`
    /// with legal holds; give least-privilege keys in a `--config` file).
    #[arg(long, env = "HAVEN_STORAGE_ACCESS_KEY", requires = "secret_key")]
    pub access_key: Option<String>,
    /// Secret key for the quick-start access key.
    #[arg(
        long,
        env = "HAVEN_STORAGE_SECRET_KEY",
        requires = "access_key",
        hide_env_values = true
    )]
    pub secret_key: Option<String>,
    /// Buckets to create at start when missing (a quick start needs no S3 client).
    #[arg(long = "create-bucket", value_name = "NAME")]
    pub create_buckets: Vec<String>,
    /// Create the `--create-bucket` buckets with Object Lock enabled (it cannot
    /// be enabled later; an existing bucket without it is an error).
    #[arg(long, requires = "create_buckets")]
    pub object_lock: bool,
    /// Default retention of new objects in the `--create-bucket` buckets, as
    /// `GOVERNANCE:30d` or `COMPLIANCE:1y` (needs `--object-lock`).
    #[arg(long, value_name = "MODE:PERIOD", requires = "object_lock")]
    pub default_retention: Option<String>,
    /// A node this one may pull replication batches from
    /// (`http(s)://host[:port]`; adds to `replication.pull_sources`).
    #[arg(long = "pull-source", value_name = "URL")]
    pub pull_sources: Vec<String>,
    /// Serve plain HTTP on a non-loopback `--listen` (warned at every start); without
    /// it such an address needs TLS.
    #[arg(long)]
    pub insecure: bool,
    /// Read and check the configuration (file, flags, TLS certificate and key, pull
    /// CA file), print `ok`, and exit.
    #[arg(long)]
    pub check_config: bool,
}

fn build_config(args: StorageNodeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Some(Config::from_file(path)?),
        None => None,
    };
    let listen = args.listen.or(config.as_ref().map(|c| c.listen));
    let has_data = !args.data.is_empty() || config.is_some();
    let (Some(listen), true) = (listen, has_data) else {
        anyhow::bail!(
            "--listen and --data (or a --config file with listen and data_dir or data_dirs) are required"
        );
    };
    let mut config = config.take().unwrap_or_else(|| Config {
        listen,
        data_dir: None,
        data_dirs: Vec::new(),
        region: "us-east-1".to_owned(),
        keys: Vec::new(),
        tls: None,
        insecure: false,
        limits: config::Limits::default(),
        replication: config::ReplicationConfig::default(),
    });
    config.listen = listen;
    config.insecure |= args.insecure;
    config.replication.pull_sources.extend(args.pull_sources);
    if !args.data.is_empty() {
        config.data_dir = None;
        config.data_dirs = args.data;
    }
    if let (Some(access_key), Some(secret_key)) = (args.access_key, args.secret_key) {
        config.keys.retain(|k| k.access_key != access_key);
        let mut key =
            config::AccessKeyConfig::new(access_key, secret_key, permission::AccessKind::Admin);
        key.legal_hold = true;
        config.keys.push(key);
    }
    config.validate()?;
    Ok(config)
}

/// Runs the storage node until it is asked to stop (Ctrl-C or SIGTERM). Logs go to
/// whatever subscriber the process installed (the `haven` binary sets up logging for
/// every role in one place).
pub async fn run(args: StorageNodeArgs) -> anyhow::Result<()> {
    let create_buckets = args.create_buckets.clone();
    let bucket_setup =
        bucket_setup::BucketSetup::from_flags(args.object_lock, args.default_retention.as_deref())?;
    let check_only = args.check_config;
    let config = Arc::new(build_config(args)?);
    if check_only {
        // The certificate and key must load too, as they will at start.
        let never = tokio_util::sync::CancellationToken::new();
        if let Some(tls) = &config.tls {
            server::tls_config(tls, &never)?;
        }
        never.cancel();
        println!("storage node configuration: ok");
        return Ok(());
    }
    raise_open_file_limit(config.limits.max_connections);
    let metrics = Arc::new(metrics::Metrics::default());
    let directories = config.directories();
    for dir in &directories {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    }
    let store = Arc::new(store::Store::open(&directories, Arc::clone(&metrics))?);
    for bucket in &create_buckets {
        bucket_setup.apply(&store, bucket).await?;
    }

    let mut builder = s3s::service::S3ServiceBuilder::new(s3::HavenS3::new(
        Arc::clone(&store),
        Arc::clone(&config),
    ));
    builder.set_auth(access::ConfigAuth(Arc::clone(&config)));
    builder.set_access(access::KeyAccess(Arc::clone(&config)));
    let pull_http = extension::pull_client(config.replication.pull_roots()?)
        .context("cannot set up the client for batch pulls")?;
    builder.set_route(extension::ExtensionRoute::new(
        Arc::clone(&store),
        Arc::clone(&config),
        pull_http,
    ));
    let shared = Arc::new(server::Shared {
        s3: builder.build(),
        store,
        metrics,
        max_spooled_body: config.limits.max_object_size,
    });

    let stop_reloading = tokio_util::sync::CancellationToken::new();
    let tls = match &config.tls {
        Some(files) => Some(server::tls_config(files, &stop_reloading)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(address = %local, "insecure = true: serving plain HTTP off loopback; object bytes and names cross the network in clear");
    }
    println!("haven storage-node listening on {scheme}://{local}");
    tracing::info!(address = %local, data_dirs = ?directories, keys = config.keys.len(), "storage node started");
    server::serve(listener, tls, shared, &config.limits, shutdown_signal()).await;
    stop_reloading.cancel();
    tracing::info!("storage node stopped");
    Ok(())
}

/// File descriptors kept beside connections (data files, listeners, clients).
const SPARE_FILE_DESCRIPTORS: u64 = 256;

/// Raises the soft limit of open files towards the hard limit, so that
/// `limits.max_connections` connections fit (the usual soft limit, 1024, would
/// not); warns when even the hard limit is too low.
fn raise_open_file_limit(max_connections: usize) {
    let wanted = (max_connections as u64).saturating_add(SPARE_FILE_DESCRIPTORS);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < wanted && limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    if limit.rlim_cur < wanted {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections,
            "the open-file limit is below limits.max_connections plus spare descriptors; raise it (ulimit -n) or lower max_connections"
        );
    }
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
