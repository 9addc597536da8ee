//! `haven serve-nbd`: instant recovery, a snapshot's disk as a read-only NBD export.
//!
//! QEMU (or any NBD client) reads the disk while its chunks are fetched on demand; a
//! qcow2 overlay backed by the export lets a VM run at once and `block-stream` pull the
//! rest in the background.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use haven_nbd::{
    Endpoint, ExportSource, NbdServer, STATE_HOLE, STATE_ZERO, ServerConfig, ServerListener,
};
use haven_repo::SnapshotRef;
use haven_worker::{ReaderOptions, SnapshotReader};
use tokio::sync::watch;

use crate::common::{RepoArgs, human_bytes};

/// Arguments of `haven serve-nbd`.
#[derive(Debug, clap::Args)]
pub struct ServeNbdArgs {
    /// Snapshot: VM@TIMESTAMP, VM@latest or VM.
    snapshot: SnapshotRef,
    #[command(flatten)]
    repo: RepoArgs,
    /// Disk to export (may be left out when the snapshot has one disk).
    #[arg(long)]
    disk: Option<String>,
    /// Where to listen: unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    listen: String,
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

/// The snapshot reader as an NBD export.
struct SnapshotExport(SnapshotReader);

impl ExportSource for SnapshotExport {
    fn size(&self) -> u64 {
        self.0.size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        Ok(self.0.read_at(offset, buf).await?)
    }

    fn allocation(&self, offset: u64, length: u32) -> Vec<(u32, u32)> {
        self.0
            .extents(offset, u64::from(length))
            .into_iter()
            .map(|(run, is_zero)| {
                // Runs lie inside the request, whose length is a u32.
                let flags = if is_zero { STATE_HOLE | STATE_ZERO } else { 0 };
                (run as u32, flags)
            })
            .collect()
    }
}

fn parse_listen(text: &str) -> Result<Endpoint> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            bail!("--listen unix: needs a socket path");
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(address) = text.strip_prefix("tcp:") {
        if address.is_empty() {
            bail!("--listen tcp: needs HOST:PORT");
        }
        return Ok(Endpoint::Tcp(address.to_string()));
    }
    bail!("--listen {text:?}: expected unix:PATH or tcp:HOST:PORT")
}

/// Serves until SIGINT or SIGTERM.
pub async fn run(args: ServeNbdArgs) -> Result<()> {
    let endpoint = parse_listen(&args.listen)?;
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
    let listener = ServerListener::bind(&endpoint)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let uri = match listener.endpoint() {
        Endpoint::Unix(path) => format!("nbd+unix:///{}?socket={}", reader.disk(), path.display()),
        Endpoint::Tcp(address) => format!("nbd://{address}/{}", reader.disk()),
    };
    println!(
        "serving {} disk {} ({}) read-only at {uri}",
        reader.snapshot(),
        reader.disk(),
        human_bytes(reader.size())
    );

    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without signal handlers the process still dies on a signal, just not cleanly.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
