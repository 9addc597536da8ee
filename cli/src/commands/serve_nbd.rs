//! `haven serve-nbd`: instant recovery, a snapshot's disk as a read-only NBD export.
//!
//! QEMU (or any NBD client) reads the disk while its chunks are fetched on demand; a
//! qcow2 overlay backed by the export lets a VM run at once and `block-stream` pull the
//! rest in the background.
//!
//! Over TCP the export is encrypted with NBD's STARTTLS and X.509 credentials in QEMU's
//! directory layout (`--tls-creds`); plain TCP is allowed only on loopback, or with
//! `--insecure` (see `listen`).

mod listen;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use haven_nbd::{Endpoint, NbdServer, PeerVerification, ServerConfig, ServerListener, ServerTls};
use haven_repo::SnapshotRef;
use haven_worker::{ReaderOptions, SnapshotExport, SnapshotReader};
use tokio::sync::watch;

use crate::common::{RepoArgs, human_bytes};

/// Arguments of `haven serve-nbd`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "TLS: with --tls-creds DIR every client must start TLS (NBD_OPT_STARTTLS) \
before anything else, as with qemu-nbd --tls-creds. DIR is in QEMU's x509 layout: \
ca-cert.pem, server-cert.pem, server-key.pem (and ca-crl.pem if present). Clients \
connect with e.g. qemu-img --object tls-creds-x509,id=tls0,dir=CLIENTDIR,endpoint=client \
--image-opts driver=nbd,host=HOST,port=PORT,export=DISK,tls-creds=tls0, or \
nbdcopy 'nbds://HOST:PORT/DISK?tls-certificates=CLIENTDIR'."
)]
pub struct ServeNbdArgs {
    /// Snapshot: VM@TIMESTAMP, VM@latest or VM.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    /// Disk to export (may be left out when the snapshot has one disk).
    #[arg(long)]
    disk: Option<String>,
    /// Where to listen: unix:PATH or tcp:HOST:PORT. Plain TCP is refused on an address
    /// other machines can reach, unless --tls-creds or --insecure is given.
    #[arg(long)]
    listen: String,
    /// Require TLS with the X.509 credentials in DIR (QEMU's layout: ca-cert.pem,
    /// server-cert.pem, server-key.pem). Clients must present a certificate issued by
    /// ca-cert.pem unless --tls-no-verify-peer is given.
    #[arg(long, value_name = "DIR")]
    tls_creds: Option<PathBuf>,
    /// With --tls-creds: accept clients without a certificate (still encrypted; like
    /// QEMU's verify-peer=off). Anyone who can connect reads the disk.
    #[arg(long, requires = "tls_creds")]
    tls_no_verify_peer: bool,
    /// Serve plain NBD on a network address: anyone who can connect reads the
    /// decrypted disk. A warning is logged at every start.
    #[arg(long, conflicts_with = "tls_creds")]
    insecure: bool,
    /// Memory for decoded chunks, in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mib: u64,
    /// Chunks fetched ahead of a sequential reader.
    #[arg(long, default_value_t = 4)]
    read_ahead: usize,
    /// Clients served at once.
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: ServeNbdArgs) -> Result<()> {
    let endpoint = listen::parse_listen(&args.listen)?;
    let tls = match &args.tls_creds {
        Some(dir) => {
            let verification = if args.tls_no_verify_peer {
                PeerVerification::Off
            } else {
                PeerVerification::Required
            };
            Some(ServerTls::from_x509_dir(dir, verification).context("--tls-creds")?)
        }
        None => None,
    };
    let addresses = match &endpoint {
        Endpoint::Tcp(address) => tokio::net::lookup_host(address.as_str())
            .await
            .with_context(|| format!("cannot resolve --listen tcp:{address}"))?
            .collect(),
        Endpoint::Unix(_) => Vec::new(),
    };
    let exposure = listen::exposure(&endpoint, &addresses, tls.is_some(), args.insecure)?;
    if exposure == listen::Exposure::InsecureNetwork {
        tracing::warn!(
            listen = %args.listen,
            "--insecure: serving the decrypted disk without TLS on a network address; \
             anyone who can connect reads it"
        );
    }
    let repo = args.repo.open().await?;
    let chunk_size = u64::from(repo.chunk_size());
    let options = ReaderOptions {
        cache_chunks: (args.cache_mib * 1024 * 1024 / chunk_size).max(1) as usize,
        read_ahead: args.read_ahead.min(64),
    };
    let reader = SnapshotReader::open(repo, &args.snapshot, args.disk.as_deref(), options).await?;
    let mut config = ServerConfig::new(reader.disk());
    config.description = format!(
        "haven snapshot {} disk {}",
        reader.snapshot(),
        reader.disk()
    );
    config.max_clients = args.max_clients.max(1);
    // Renewed credentials apply to new connections; the watch ends with the process.
    if let Some(tls) = &tls {
        tls.watch(tokio_util::sync::CancellationToken::new());
    }
    config.tls = tls;
    let listener = ServerListener::bind(&endpoint)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let scheme = if config.tls.is_some() { "nbds" } else { "nbd" };
    let uri = match listener.endpoint() {
        Endpoint::Unix(path) => format!(
            "{scheme}+unix:///{}?socket={}",
            reader.disk(),
            path.display()
        ),
        Endpoint::Tcp(address) => format!("{scheme}://{address}/{}", reader.disk()),
    };
    let termination = termination_signal();
    println!(
        "serving {} disk {} ({}) read-only at {uri}",
        reader.snapshot(),
        reader.disk(),
        human_bytes(reader.size())
    );

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        termination.await;
        let _ = stop.send(true);
    });
    let server = NbdServer::new(Arc::new(SnapshotExport(reader.clone())), config);
    server.serve(listener, shutdown).await?;
    let stats = reader.stats();
    println!(
        "stopped: {} chunks fetched, {} cache hits, {} zero reads",
        stats.chunks_fetched, stats.cache_hits, stats.zero_reads
    );
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now, before "serving" is printed (a
/// supervisor or test may stop the server as soon as it reads that line), and returns
/// a future that ends at the first of them.
fn termination_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut interrupt), Ok(mut terminate)) = handlers else {
            // Without signal handlers the process still dies on a signal, just not cleanly.
            std::future::pending::<()>().await;
            return;
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    }
}
