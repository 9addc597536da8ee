//! A read-only NBD server, so any NBD client (QEMU, `qemu-img`, `nbdcopy`, libnbd)
//! can read a disk that exists only as chunks in a repository.
//!
//! It speaks the fixed newstyle handshake with `NBD_OPT_GO`, `NBD_OPT_INFO`,
//! `NBD_OPT_EXPORT_NAME`, `NBD_OPT_LIST`, `NBD_OPT_STRUCTURED_REPLY` and
//! `NBD_OPT_SET_META_CONTEXT`/`NBD_OPT_LIST_META_CONTEXT` (`base:allocation`), then
//! READ, BLOCK_STATUS, FLUSH, CACHE and DISC. Writes are refused with `EPERM`. Extended
//! headers are not offered.
//!
//! With [`ServerConfig::tls`] set, every connection must start TLS with
//! `NBD_OPT_STARTTLS` before anything else, as QEMU's server does with `--tls-creds`
//! (X.509 credentials in QEMU's directory layout, [`ServerTls::from_x509_dir`]); QEMU,
//! `qemu-img` and libnbd's `nbds://` clients connect unchanged.
//!
//! # Invariants
//!
//! - Clients are untrusted: every length is bounded before anything is allocated
//!   (option data 64 KiB, requests 32 MiB), malformed options get `NBD_REP_ERR_INVALID`,
//!   framing violations close that connection only, and nothing a client sends can make
//!   the server panic.
//! - Memory per client is bounded: at most [`ServerConfig::max_requests_per_client`]
//!   requests and [`ServerConfig::max_bytes_per_client`] bytes of replies in flight; the
//!   server stops reading a client's requests until it has room again.
//! - Each handshake (options, STARTTLS and the TLS handshake together) and each reply
//!   write runs under a timeout, so a client that stalls cannot pin a connection slot
//!   for ever (idle connections between requests are fine).
//! - With TLS configured, no option but STARTTLS and ABORT is served and no byte of
//!   the export leaves the server before the TLS handshake, including the client's
//!   certificate check, has succeeded.
//! - Shutdown stops accepting, lets in-flight replies finish for a grace period, then
//!   closes every connection.

mod handshake;
mod pattern;
mod tls;
mod transmission;
mod wire;

pub use pattern::{PATTERN_BLOCK, PatternExport};
pub use tls::{PeerVerification, ServerTls, TlsCredentialsError};

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::endpoint::Endpoint;
use crate::error::NbdError;
use handshake::{BeforeTls, Negotiated, Transport};

/// A disk the server exports: its size, its bytes and which ranges are holes.
pub trait ExportSource: Send + Sync + 'static {
    /// Size of the export in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`; the server has checked the range lies
    /// inside the export. Errors reach the client as `EIO` with the error's message.
    fn read<'a>(
        &'a self,
        offset: u64,
        buf: &'a mut [u8],
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'a;

    /// `base:allocation` runs covering `[offset, offset + length)` as
    /// `(length, flags)` with [`crate::STATE_HOLE`]/[`crate::STATE_ZERO`] bits; must be
    /// cheap (no I/O), non-empty and in order. The server clamps and bounds the list.
    fn allocation(&self, offset: u64, length: u32) -> Vec<(u32, u32)>;
}

/// Limits and names of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Name of the one export; clients asking for `""` get it too.
    pub export_name: String,
    /// Human-readable description sent on `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// Preferred request size advertised to clients (a power of two up to 32 MiB).
    pub preferred_block_size: u32,
    /// Connections served at once; further connections are closed at once.
    pub max_clients: usize,
    /// Requests of one client processed concurrently.
    pub max_requests_per_client: usize,
    /// Bytes of read replies of one client in flight (at least 32 MiB, the largest request).
    pub max_bytes_per_client: u32,
    /// Bound on the whole handshake of a connection.
    pub handshake_timeout: Duration,
    /// Bound on writing one reply to a client.
    pub reply_timeout: Duration,
    /// How long in-flight requests may run on after shutdown was asked.
    pub shutdown_grace: Duration,
    /// TLS every client must start before negotiating (`None`: plain connections).
    pub tls: Option<ServerTls>,
}

impl ServerConfig {
    /// Defaults suitable for serving one disk to a handful of clients.
    pub fn new(export_name: impl Into<String>) -> Self {
        Self {
            export_name: export_name.into(),
            description: String::new(),
            preferred_block_size: 64 * 1024,
            max_clients: 64,
            max_requests_per_client: 16,
            max_bytes_per_client: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// A bound listening socket, Unix or TCP.
#[derive(Debug)]
pub enum ServerListener {
    /// A Unix socket; the file is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl ServerListener {
    /// Binds `endpoint`. A stale Unix socket file nobody listens on is replaced; one in
    /// use is an error.
    pub async fn bind(endpoint: &Endpoint) -> Result<Self, NbdError> {
        match endpoint {
            Endpoint::Unix(path) => {
                if path.exists() {
                    if tokio::net::UnixStream::connect(path).await.is_ok() {
                        return Err(NbdError::InvalidArgument(format!(
                            "{} is in use by another server",
                            path.display()
                        )));
                    }
                    std::fs::remove_file(path)?;
                }
                Ok(Self::Unix(UnixListener::bind(path)?, path.clone()))
            }
            Endpoint::Tcp(address) => Ok(Self::Tcp(TcpListener::bind(address).await?)),
        }
    }

    /// Where clients reach the listener (with the real port for `tcp:HOST:0`).
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Unix(_, path) => Endpoint::Unix(path.clone()),
            Self::Tcp(listener) => Endpoint::Tcp(
                listener
                    .local_addr()
                    .map(|address| address.to_string())
                    .unwrap_or_default(),
            ),
        }
    }
}

impl Drop for ServerListener {
    fn drop(&mut self) {
        if let Self::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The server: one export, any number of listeners' connections.
pub struct NbdServer<S> {
    source: Arc<S>,
    config: Arc<ServerConfig>,
}

impl<S> Clone for NbdServer<S> {
    fn clone(&self) -> Self {
        Self {
            source: self.source.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: ExportSource> NbdServer<S> {
    /// A server exporting `source`.
    pub fn new(source: Arc<S>, config: ServerConfig) -> Self {
        Self {
            source,
            config: Arc::new(config),
        }
    }

    /// Accepts connections until `shutdown` turns true, then drains them within the
    /// grace period. Errors of single connections are logged, not returned.
    pub async fn serve(
        &self,
        listener: ServerListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError> {
        let slots = Arc::new(Semaphore::new(self.config.max_clients.max(1)));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                changed = shutdown.wait_for(|stop| *stop) => {
                    let _ = changed;
                    break;
                }
                accepted = accept(&listener) => accepted,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            };
            let stream = match accepted {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(%error, "nbd server: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max_clients = self.config.max_clients,
                    "nbd server: too many clients, closing a new connection"
                );
                continue;
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                if let Err(error) = server.serve_stream(stream, shutdown).await {
                    tracing::info!(%error, "nbd server: connection ended with an error");
                }
            });
        }
        drop(listener);
        let drained = tokio::time::timeout(self.config.shutdown_grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.shutdown().await;
        }
        Ok(())
    }

    /// Serves one connected client until it disconnects, misbehaves or `shutdown` turns
    /// true.
    pub async fn serve_stream<T>(
        &self,
        stream: T,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), NbdError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let established =
            match tokio::time::timeout(self.config.handshake_timeout, self.handshake(stream)).await
            {
                Ok(result) => result?,
                Err(_) => {
                    return Err(NbdError::Timeout {
                        operation: "handshake",
                        after: self.config.handshake_timeout,
                    });
                }
            };
        let Some((stream, negotiated)) = established else {
            return Ok(());
        };
        let (reader, writer) = tokio::io::split(stream);
        transmission::serve(
            reader,
            writer,
            self.source.clone(),
            self.config.clone(),
            negotiated,
            shutdown,
        )
        .await
    }

    /// Greets, runs STARTTLS and the TLS handshake when TLS is configured, and
    /// negotiates; returns the stream transmission runs on (encrypted or not).
    async fn handshake<T>(
        &self,
        mut stream: T,
    ) -> Result<Option<(BoxedStream, Negotiated)>, NbdError>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let greeted = handshake::greet(&mut stream).await?;
        let Some(tls) = &self.config.tls else {
            let negotiated = handshake::negotiate(
                &mut stream,
                &*self.source,
                &self.config,
                greeted,
                Transport::Plain,
            )
            .await?;
            return Ok(negotiated.map(|negotiated| (Box::new(stream) as BoxedStream, negotiated)));
        };
        if handshake::until_starttls(&mut stream).await? == BeforeTls::Abort {
            return Ok(None);
        }
        let mut stream = tls.accept(stream).await.map_err(NbdError::TlsHandshake)?;
        let negotiated = handshake::negotiate(
            &mut stream,
            &*self.source,
            &self.config,
            greeted,
            Transport::Tls,
        )
        .await?;
        Ok(negotiated.map(|negotiated| (Box::new(stream) as BoxedStream, negotiated)))
    }
}

/// An accepted connection of either kind.
type BoxedStream = Box<dyn AsyncStream>;

/// What a connection needs: both directions, movable to a task.
trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

async fn accept(listener: &ServerListener) -> std::io::Result<BoxedStream> {
    match listener {
        ServerListener::Unix(listener, _) => {
            let (stream, _) = listener.accept().await?;
            Ok(Box::new(stream))
        }
        ServerListener::Tcp(listener) => {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(Box::new(stream))
        }
    }
}

#[cfg(test)]
mod tests;
