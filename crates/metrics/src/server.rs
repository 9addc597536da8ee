//! The one HTTP server for `/metrics` and `/healthz`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::registry::{CONTENT_TYPE, Registry};

/// Longest time a client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest time one connection (one scrape) may stay open, so a client that stops
/// reading cannot hold a task forever.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Most connections answered at once. Beyond it, accepting waits until one ends,
/// which the two timeouts above bound: a flood of silent connections delays a
/// scrape by at most [`HEADER_READ_TIMEOUT`] and cannot exhaust memory or tasks.
const MAX_CONNECTIONS: usize = 64;

/// How long shutdown waits for scrapes already being answered.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Pause after a failed `accept` (out of file descriptors, say), so the loop does
/// not spin while the condition lasts.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Content-Type of the plain text answers (`/healthz`, errors).
const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

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
}

/// A bound listener for `/metrics` (and `/healthz`).
///
/// Binding is separate from serving so the caller can report the address (port 0
/// picks a free one) and fail at start-up when the address is taken.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `address`.
    pub async fn bind(address: impl ToSocketAddrs) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(address).await?,
        })
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
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "metrics listener cannot accept");
                        tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                        continue;
                    }
                },
            };
            let exporter = Arc::clone(&exporter);
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let exporter = Arc::clone(&exporter);
                let path = request.uri().path().to_owned();
                async move { Ok::<_, Infallible>(respond(exporter.as_ref(), &path).await) }
            });
            let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "metrics connection ended with an error");
                    }
                    Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
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

/// The answer to a request for `path`: `/metrics`, `/healthz` where the exporter
/// has one, 404 for anything else.
pub async fn respond<E: Exporter>(exporter: &E, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/metrics" => {
            exporter.refresh().await;
            exposition(exporter.registry())
        }
        "/healthz" => match exporter.health().await {
            Some(text) => text_response(StatusCode::OK, PLAIN_TEXT, text),
            None => not_found(),
        },
        _ => not_found(),
    }
}

/// The `/metrics` answer for `registry`, with the [`CONTENT_TYPE`] scrapers require;
/// for components with their own HTTP front.
pub fn exposition(registry: &Registry) -> Response<Full<Bytes>> {
    match registry.encode() {
        Ok(text) => text_response(StatusCode::OK, CONTENT_TYPE, text),
        Err(error) => {
            tracing::warn!(%error, "metrics scrape failed");
            text_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                PLAIN_TEXT,
                format!("{error}\n"),
            )
        }
    }
}

fn not_found() -> Response<Full<Bytes>> {
    text_response(StatusCode::NOT_FOUND, PLAIN_TEXT, "not found\n".to_owned())
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
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
        let server = MetricsServer::bind("127.0.0.1:0").await.unwrap();
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
}
