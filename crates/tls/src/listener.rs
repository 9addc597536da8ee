//! The control plane's listener: TLS (or plain on loopback) connections, each
//! carrying who is on the other end.
//!
//! Accepting and handshaking are separate: the accept loop only takes a connection
//! slot and spawns the handshake, which must finish within
//! [`ListenerSettings::handshake_timeout`]; so a client that opens a socket and says
//! nothing costs one slot for a few seconds and never delays anyone else. Beyond
//! [`ListenerSettings::max_connections`] new connections are closed at once: a flood
//! of idle sockets cannot use up the process's file descriptors, and established
//! clients keep being served.
//!
//! A connection lives no longer than its client certificate: at the certificate's
//! `notAfter` the server reads end of file and closes it. The handshake checks
//! validity only once, so without this a client could keep an expired (or rotated
//! out) certificate in use for as long as it kept its HTTP/2 connection open; with
//! it, the client has to connect again and present a certificate valid now.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::reload::Reloading;
use crate::{Identity, TlsError, files};

/// The files of a server's TLS configuration; also the `[tls]` table of the
/// configuration files that have one (`cert`, `key`, optional `client_ca`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; without it, no client
    /// certificate is asked for (callers then authenticate with tokens).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// A rustls configuration from the files, offering HTTP/2 (gRPC) and HTTP/1.1.
    /// Client certificates are verified when presented but not required, so token
    /// holders can connect too; whether a caller is authenticated at all is decided
    /// per call.
    pub fn build(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = crate::provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TlsError::Rustls {
                context: "TLS versions".into(),
                source,
            })?;
        let builder = match &self.client_ca {
            Some(ca) => {
                let roots = Arc::new(files::root_store(ca)?);
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                        .allow_unauthenticated()
                        .build()
                        .map_err(|error| TlsError::Pem {
                            path: ca.clone(),
                            reason: format!("unusable as a client CA: {error}"),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                files::certificates(&self.cert)?,
                files::private_key(&self.key)?,
            )
            .map_err(|source| TlsError::Rustls {
                context: format!(
                    "certificate {} with key {}",
                    self.cert.display(),
                    self.key.display()
                ),
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// The configuration, rebuilt when a file changes.
    pub fn reloading(&self, what: &str) -> Result<Arc<Reloading<rustls::ServerConfig>>, TlsError> {
        self.reloading_with(what, |_| {})
    }

    /// Like [`ServerTlsFiles::reloading`], with `adjust` applied to every configuration
    /// built: an HTTP/1.1-only server, say, offers only `http/1.1` in ALPN.
    pub fn reloading_with(
        &self,
        what: &str,
        adjust: impl Fn(&mut rustls::ServerConfig) + Send + Sync + 'static,
    ) -> Result<Arc<Reloading<rustls::ServerConfig>>, TlsError> {
        let files = [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let this = self.clone();
        Reloading::new(what, files, move || {
            let mut config = this.build()?;
            adjust(&mut config);
            Ok(config)
        })
    }
}

/// Limits of a listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSettings {
    /// Open connections at most; more are closed on accept.
    pub max_connections: usize,
    /// Time a new connection has to finish its TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ListenerSettings {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What the TLS handshake said about the client's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCertificate {
    /// None presented (or a plain connection).
    None,
    /// A certificate of the trusted CA naming this identity.
    Identity(Identity),
    /// A certificate of the trusted CA that names no usable identity.
    Unusable(String),
}

/// Who is on the other end of a connection; tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The client certificate's identity.
    pub certificate: PeerCertificate,
}

enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// One accepted connection; holds its slot until dropped.
pub struct Connection {
    transport: Transport,
    peer: PeerInfo,
    /// When the client certificate expires; reads end there (see the module doc).
    expires: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the expiry was logged.
    expired: bool,
    _slot: OwnedSemaphorePermit,
}

/// Serves `listener`'s connections until `shutdown`, TLS when `tls` is given.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    settings: ListenerSettings,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static {
    let (sender, receiver) = mpsc::channel::<Connection>(64);
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(%remote, limit = settings.max_connections, "connection limit reached; closing a new connection");
                continue;
            };
            let _ = stream.set_nodelay(true);
            let sender = sender.clone();
            let tls = tls.as_ref().map(|tls| tls.current());
            tokio::spawn(async move {
                let connection = match tls {
                    None => Connection {
                        transport: Transport::Plain(stream),
                        peer: PeerInfo {
                            remote: Some(remote),
                            tls: false,
                            certificate: PeerCertificate::None,
                        },
                        expires: None,
                        expired: false,
                        _slot: slot,
                    },
                    Some(config) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(config);
                        let handshake = tokio::time::timeout(
                            settings.handshake_timeout,
                            acceptor.accept(stream),
                        );
                        let stream = match handshake.await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake timed out");
                                return;
                            }
                        };
                        let certificate = peer_certificate(&stream);
                        let expires = certificate_expiry(&stream).map(|at| {
                            let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                            Box::pin(tokio::time::sleep(left))
                        });
                        Connection {
                            transport: Transport::Tls(Box::new(stream)),
                            peer: PeerInfo {
                                remote: Some(remote),
                                tls: true,
                                certificate,
                            },
                            expires,
                            expired: false,
                            _slot: slot,
                        }
                    }
                };
                let _ = sender.send(connection).await;
            });
        }
    });
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|connection| (Ok(connection), receiver))
    })
}

fn peer_certificate(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> PeerCertificate {
    let (_, session) = stream.get_ref();
    match session.peer_certificates().and_then(|chain| chain.first()) {
        None => PeerCertificate::None,
        Some(leaf) => match Identity::from_certificate(leaf) {
            Ok(identity) => PeerCertificate::Identity(identity),
            Err(error) => PeerCertificate::Unusable(error.to_string()),
        },
    }
}

impl Connection {
    /// Who is on the other end, for servers other than tonic's (which reads it through
    /// [`tonic::transport::server::Connected`]).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }
}

/// When the client's certificate stops being valid; none without one.
fn certificate_expiry(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Option<SystemTime> {
    let (_, session) = stream.get_ref();
    let leaf = session.peer_certificates()?.first()?;
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let seconds = certificate.validity().not_after.timestamp();
    let seconds = u64::try_from(seconds).unwrap_or(0);
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
}

impl tonic::transport::server::Connected for Connection {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(expires) = this.expires.as_mut()
            && expires.as_mut().poll(cx).is_ready()
        {
            if !this.expired {
                this.expired = true;
                tracing::info!(remote = ?this.peer.remote, "client certificate expired; closing its connection");
            }
            // End of file: the HTTP server closes the connection.
            return Poll::Ready(Ok(()));
        }
        match &mut this.transport {
            Transport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Transport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
