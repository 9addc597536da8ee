//! The one HTTP server for `/metrics`, `/healthz` and a component's own pages.
//!
//! Plain HTTP only on loopback (or where the operator explicitly allows it); off
//! loopback the listener speaks TLS and `/metrics` asks for a client certificate of the
//! cluster's CA whose role covers `viewer`, the role that may read the cluster's state.
//! `/healthz` answers without a certificate: liveness probes (Kubernetes, load
//! balancers) carry none, and it tells nothing but whether the process serves.
//! Every other path goes to [`Exporter::route`] with the request (its body read, at
//! most [`MAX_BODY`]) and the peer (address, TLS, verified certificate identity): the
//! coordinator's web console lives there, on the same listener, and decides itself
//! who may read what.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use haven_tls::listener::{ListenerSettings, PeerCertificate, PeerInfo};
use haven_tls::reload::Reloading;
use haven_tls::{Role, TlsError};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_util::sync::CancellationToken;

use crate::registry::{CONTENT_TYPE, Registry};

/// Longest time a client may take to send its request headers (and, on TLS, to
/// finish its handshake).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time one connection (one scrape) may stay open, so a client that stops
/// reading cannot hold a task forever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections open at once; more are closed on accept. The two timeouts above
/// bound how long a silent connection keeps its slot, so a flood of them delays a
/// scrape by at most [`HEADER_READ_TIMEOUT`] and cannot exhaust memory or tasks.
const MAX_CONNECTIONS: usize = 64;

/// How long shutdown waits for scrapes already being answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Content-Type of the plain text answers (`/healthz`, errors).
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// The role a client certificate must cover to read `/metrics` over TLS.
const METRICS_ROLE: Role = Role::Viewer;

/// Largest request body [`Exporter::route`] is given (a login or an action form is a
/// few hundred bytes); a larger one is answered 413 without calling it.
pub const MAX_BODY: usize = 64 * 1024;

/// A request for a path other than `/metrics` and `/healthz`, its body read.
pub type RouteRequest = Request<Bytes>;
/// The answer to a [`RouteRequest`].
pub type RouteResponse = Response<Bytes>;

/// What one component serves: its registry, and `/healthz` where it has one.
pub trait Exporter: Send + Sync + 'static {
    /// The component's metrics.
    fn registry(&self) -> &Registry;

    /// Brings scrape-time values that need async I/O up to date; called before
    /// every encoding of `/metrics`. Nothing by default.
    fn refresh(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The body of `/healthz` (answered with 200), or `None` where the component
    /// has no such endpoint (answered with 404, like any unknown path).
    fn health(&self) -> impl Future<Output = Option<String>> + Send {
        async { None }
    }

    /// The answer to any other path: a component's own pages, given who is on the
    /// other end of the connection (`peer.certificate` is verified against the
    /// listener's client CA). The component authenticates and authorizes itself:
    /// nothing is checked before this call. 404 by default.
    fn route(
        &self,
        request: RouteRequest,
        peer: &PeerInfo,
    ) -> impl Future<Output = RouteResponse> + Send {
        let _ = (request, peer);
        async { text_response(StatusCode::NOT_FOUND, PLAIN_TEXT, "not found\n".to_owned()) }
    }
}

/// How a metrics listener protects what it serves.
#[derive(Clone)]
pub enum HttpSecurity {
    /// Plain HTTP: refused off loopback unless `insecure`, which warns at every start.
    Plain {
        /// The operator's explicit consent to plain HTTP off loopback.
        insecure: bool,
    },
    /// TLS with a configuration that follows its files. `/metrics` needs a client
    /// certificate naming a role that covers `viewer`, so the configuration must name
    /// a client CA; without one every scrape is refused.
    Tls(Arc<Reloading<rustls::ServerConfig>>),
}

impl HttpSecurity {
    /// TLS from `files`, reloaded when they change until `shutdown`; `what` names the
    /// listener in logs.
    pub fn tls(
        files: &haven_tls::listener::ServerTlsFiles,
        what: &str,
        shutdown: &CancellationToken,
    ) -> Result<Self, TlsError> {
        let reloading = files.reloading_with(what, |config| {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        })?;
        reloading.watch(shutdown.clone());
        Ok(Self::Tls(reloading))
    }
}

/// Why a metrics listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address asked for.
        address: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// Plain HTTP was asked for off loopback without the operator's consent.
    #[error(
        "{address} is not a loopback address: serve metrics over TLS (certificate, key and \
         client CA), or allow plain HTTP explicitly"
    )]
    PlainOffLoopback {
        /// The address bound.
        address: SocketAddr,
    },
}

/// A bound listener for `/metrics` (and `/healthz`).
///
/// Binding is separate from serving so the caller can report the address (port 0
/// picks a free one) and fail at start-up when the address is taken or unsafe.
pub struct MetricsServer {
    listener: TcpListener,
    security: HttpSecurity,
}

impl MetricsServer {
    /// Binds `address`, refusing plain HTTP off loopback unless `security` allows it.
    pub async fn bind(
        address: impl ToSocketAddrs + std::fmt::Display,
        security: HttpSecurity,
    ) -> Result<Self, BindError> {
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| BindError::Listen {
                address: address.to_string(),
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| BindError::Listen {
            address: address.to_string(),
            source,
        })?;
        if let HttpSecurity::Plain { insecure } = security
            && !bound.ip().is_loopback()
        {
            if !insecure {
                return Err(BindError::PlainOffLoopback { address: bound });
            }
            tracing::warn!(address = %bound, "serving metrics over plain HTTP off loopback: anyone on the network can read them");
        }
        Ok(Self { listener, security })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `shutdown` is cancelled, then waits up to a few
    /// seconds for the answers in progress.
    ///
    /// HTTP/1.1 with one request per connection: a scrape is one request every few
    /// seconds at most, and closing after it means a client that reads to the end
    /// of the stream gets its answer and no idle connection holds a task.
    pub async fn serve<E: Exporter>(self, exporter: Arc<E>, shutdown: CancellationToken) {
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let graceful = GracefulShutdown::new();
        let tls = match self.security {
            HttpSecurity::Plain { .. } => None,
            HttpSecurity::Tls(config) => Some(config),
        };
        let needs_certificate = tls.is_some();
        let settings = ListenerSettings {
            max_connections: MAX_CONNECTIONS,
            handshake_timeout: HEADER_READ_TIMEOUT,
        };
        let incoming =
            haven_tls::listener::incoming(self.listener, tls, settings, shutdown.clone());
        futures::pin_mut!(incoming);
        loop {
            let connection = tokio::select! {
                () = shutdown.cancelled() => break,
                connection = incoming.next() => match connection {
                    Some(Ok(connection)) => connection,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "metrics listener cannot accept");
                        continue;
                    }
                    None => break,
                },
            };
            let peer = Arc::new(connection.peer().clone());
            let may_read_metrics = !needs_certificate || covers_metrics_role(&peer);
            let exporter = Arc::clone(&exporter);
            let remote = peer.remote;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let exporter = Arc::clone(&exporter);
                let peer = Arc::clone(&peer);
                async move {
                    let path = request.uri().path().to_owned();
                    let response = match path.as_str() {
                        "/metrics" if !may_read_metrics => forbidden(),
                        "/metrics" | "/healthz" => respond(exporter.as_ref(), &path).await,
                        _ => match read_body(request).await {
                            Ok(request) => exporter.route(request, &peer).await.map(Full::new),
                            Err(response) => response,
                        },
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection =
                graceful.watch(http.serve_connection(TokioIo::new(connection), service));
            tokio::spawn(async move {
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(?remote, %error, "metrics connection ended with an error");
                    }
                    Err(_) => tracing::debug!(?remote, "metrics connection timed out"),
                }
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(SHUTDOWN_GRACE) => {
                tracing::warn!("metrics connections still open at shutdown; stopping anyway");
            }
        }
    }
}

/// `request` with its body read, or the error answer: 413 beyond [`MAX_BODY`], 400
/// when the client stops sending it.
async fn read_body(request: Request<Incoming>) -> Result<RouteRequest, Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(Request::from_parts(parts, collected.to_bytes())),
        Err(error) if error.is::<LengthLimitError>() => Err(text_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            PLAIN_TEXT,
            format!("the request body is larger than {MAX_BODY} bytes\n"),
        )
        .map(Full::new)),
        Err(error) => Err(text_response(
            StatusCode::BAD_REQUEST,
            PLAIN_TEXT,
            format!("cannot read the request body: {error}\n"),
        )
        .map(Full::new)),
    }
}

/// Whether `peer` presented a certificate of the trusted CA whose role may read metrics.
fn covers_metrics_role(peer: &PeerInfo) -> bool {
    matches!(&peer.certificate, PeerCertificate::Identity(identity) if identity.role.covers(METRICS_ROLE))
}

fn forbidden() -> Response<Full<Bytes>> {
    full(text_response(
        StatusCode::FORBIDDEN,
        PLAIN_TEXT,
        format!(
            "/metrics needs a client certificate of the cluster's CA with role {METRICS_ROLE} or above\n"
        ),
    ))
}

/// The answer to a request for `path`: `/metrics`, `/healthz` where the exporter
/// has one, 404 for anything else.
pub async fn respond<E: Exporter>(exporter: &E, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            exporter.refresh().await;
            exposition(exporter.registry())
        }
        "/healthz" => match exporter.health().await {
            Some(text) => full(text_response(StatusCode::OK, PLAIN_TEXT, text)),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// The `/metrics` answer for `registry`, with the [`CONTENT_TYPE`] scrapers require;
/// for components with their own HTTP front.
pub fn exposition(registry: &Registry) -> Response<Full<Bytes>> {
    full(match registry.encode() {
        Ok(text) => text_response(StatusCode::OK, CONTENT_TYPE, text),
        Err(error) => {
            tracing::warn!(%error, "metrics scrape failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                PLAIN_TEXT,
                format!("{error}\n"),
            )
        }
    })
}

fn not_found() -> Response<Full<Bytes>> {
    full(text_response(
        StatusCode::NOT_FOUND,
        PLAIN_TEXT,
        "not found\n".to_owned(),
    ))
}

fn full(response: Response<Bytes>) -> Response<Full<Bytes>> {
    response.map(Full::new)
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<Bytes> {
    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Counter, NO_LABELS, SampleWriter, ScrapeTimeMetrics};

    /// An exporter with a registered counter, a value refreshed before each scrape,
    /// and optionally `/healthz`.
    struct Fixture {
        registry: Registry,
        scrapes: Counter,
        refreshed: Arc<AtomicU64>,
        health: Option<&'static str>,
    }

    struct Refreshed(Arc<AtomicU64>);

    impl ScrapeTimeMetrics for Refreshed {
        fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
            let value = self.0.load(Ordering::Relaxed);
            out.gauge("haven_test_refreshes", "Refreshes", [(NO_LABELS, value)])
        }
    }

    impl Fixture {
        fn new(health: Option<&'static str>) -> Self {
            let mut registry = Registry::new();
            let scrapes = registry.register("haven_test_scrapes", "Scrapes", Counter::default());
            let refreshed = Arc::new(AtomicU64::new(0));
            registry.register_scrape_time(Refreshed(Arc::clone(&refreshed)));
            Self {
                registry,
                scrapes,
                refreshed,
                health,
            }
        }
    }

    impl Exporter for Fixture {
        fn registry(&self) -> &Registry {
            &self.registry
        }

        async fn refresh(&self) {
            self.refreshed.fetch_add(1, Ordering::Relaxed);
        }

        async fn health(&self) -> Option<String> {
            self.health.map(str::to_owned)
        }

        /// `/page...` echoes the method, path, body and whether the peer used TLS.
        async fn route(&self, request: RouteRequest, peer: &PeerInfo) -> RouteResponse {
            if !request.uri().path().starts_with("/page") {
                return text_response(StatusCode::NOT_FOUND, PLAIN_TEXT, String::new());
            }
            let body = String::from_utf8_lossy(request.body()).into_owned();
            let text = format!(
                "{} {} tls={} body={body}",
                request.method(),
                request.uri().path(),
                peer.tls
            );
            text_response(StatusCode::OK, PLAIN_TEXT, text)
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn metrics_are_refreshed_and_served_with_the_text_format_content_type() {
        let fixture = Fixture::new(None);
        fixture.scrapes.inc();
        let response = respond(&fixture, "/metrics").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[CONTENT_TYPE_HEADER],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let text = body(response).await;
        assert!(text.contains("haven_test_scrapes_total 1\n"), "{text}");
        assert!(text.contains("haven_test_refreshes 1\n"), "{text}");
    }

    #[tokio::test]
    async fn other_paths_and_a_missing_healthz_are_not_found() {
        let fixture = Fixture::new(None);
        for path in ["/", "/healthz", "/metrics/", "/metricsx"] {
            let response = respond(&fixture, path).await;
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        }
        let healthy = Fixture::new(Some("ok: leader\n"));
        let response = respond(&healthy, "/healthz").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "ok: leader\n");
    }

    /// Sends `request` over a real socket and reads until the server closes.
    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn a_scrape_over_tcp_is_answered_and_the_connection_closed() {
        let server = MetricsServer::bind("127.0.0.1:0", HttpSecurity::Plain { insecure: false })
            .await
            .unwrap();
        let address = server.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.serve(Arc::new(Fixture::new(None)), shutdown.clone()));
        // No `Connection: close`: the server closes after one answer anyway, as a
        // client reading to the end of the stream needs.
        let answer = exchange(address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{answer}"
        );
        assert!(answer.contains("haven_test_refreshes 1\n"), "{answer}");
        let answer = exchange(address, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        // Other paths go to the component's routes, with the body read.
        let answer = exchange(
            address,
            b"POST /page/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with("POST /page/1 tls=false body=hello"),
            "{answer}"
        );
        let too_large = format!(
            "POST /page HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}",
            MAX_BODY + 1,
            "x".repeat(MAX_BODY + 1)
        );
        let answer = exchange(address, too_large.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{answer}"
        );
        // Garbage instead of a request gets an error status, not a crash.
        let answer = exchange(address, b"\x00\x01 not http\r\n\r\n").await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer}"
        );
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "still listening after shutdown"
        );
    }
    #[tokio::test]
    async fn plain_http_off_loopback_needs_the_operators_consent() {
        let refused =
            MetricsServer::bind("0.0.0.0:0", HttpSecurity::Plain { insecure: false }).await;
        assert!(
            matches!(refused, Err(BindError::PlainOffLoopback { .. })),
            "plain HTTP on 0.0.0.0 was accepted"
        );
        let allowed =
            MetricsServer::bind("0.0.0.0:0", HttpSecurity::Plain { insecure: true }).await;
        assert!(allowed.is_ok(), "insecure = true was not honoured");
    }

    /// A CA, the server's certificate and clients of several roles, in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
        authority: haven_tls::pki::CertificateAuthority,
    }

    impl Pki {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (authority, ca) =
                haven_tls::pki::CertificateAuthority::generate("test CA", 1).unwrap();
            ca.write(dir.path(), "ca", false).unwrap();
            let mut server = haven_tls::pki::LeafRequest::new("metrics", 1);
            server.ip_addresses.push("127.0.0.1".parse().unwrap());
            authority
                .issue(&server)
                .unwrap()
                .write(dir.path(), "server", false)
                .unwrap();
            Self { dir, authority }
        }

        fn server_files(&self) -> haven_tls::listener::ServerTlsFiles {
            haven_tls::listener::ServerTlsFiles {
                cert: self.dir.path().join("server.pem"),
                key: self.dir.path().join("server-key.pem"),
                client_ca: Some(self.dir.path().join("ca.pem")),
            }
        }

        /// A client configuration presenting a certificate of `role`, or none.
        fn client(&self, role: Option<Role>) -> tokio_rustls::TlsConnector {
            let identity = role.map(|role| {
                let identity = haven_tls::Identity::new(role, "scraper").unwrap();
                let stem = format!("client-{role}");
                self.authority
                    .issue(&haven_tls::pki::LeafRequest::client(identity, 1))
                    .unwrap()
                    .write(self.dir.path(), &stem, true)
                    .unwrap()
            });
            let files = haven_tls::connector::ClientTlsFiles {
                ca: self.dir.path().join("ca.pem"),
                identity,
            };
            let mut config = files.build().unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    /// `GET path` over TLS; the status line of the answer.
    async fn tls_status(
        address: SocketAddr,
        client: &tokio_rustls::TlsConnector,
        path: &str,
    ) -> String {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut stream = client.connect(name, tcp).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        // The server closes without close_notify after answering; what was read counts.
        let _ = stream.read_to_string(&mut answer).await;
        answer.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn over_tls_metrics_need_a_viewer_certificate_and_health_needs_none() {
        let pki = Pki::new();
        let shutdown = CancellationToken::new();
        let security = HttpSecurity::tls(&pki.server_files(), "test metrics", &shutdown).unwrap();
        let server = MetricsServer::bind("127.0.0.1:0", security).await.unwrap();
        let address = server.local_addr().unwrap();
        let serving =
            tokio::spawn(server.serve(Arc::new(Fixture::new(Some("ok\n"))), shutdown.clone()));
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let status = tls_status(address, &pki.client(Some(role)), "/metrics").await;
            assert_eq!(status, "HTTP/1.1 200 OK", "{role}");
        }
        let status = tls_status(address, &pki.client(Some(Role::Worker)), "/metrics").await;
        assert_eq!(
            status, "HTTP/1.1 403 Forbidden",
            "a worker certificate read metrics"
        );
        let anonymous = pki.client(None);
        assert_eq!(
            tls_status(address, &anonymous, "/metrics").await,
            "HTTP/1.1 403 Forbidden"
        );
        assert_eq!(
            tls_status(address, &anonymous, "/healthz").await,
            "HTTP/1.1 200 OK"
        );
        // Plain HTTP to the TLS port gets no answer.
        let mut plain = tokio::net::TcpStream::connect(address).await.unwrap();
        plain
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("haven_test"), "{answer}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), serving)
            .await
            .unwrap()
            .unwrap();
    }
}
