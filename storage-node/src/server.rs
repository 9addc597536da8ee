//! The HTTP(S) front: accepts connections, serves `/metrics`, and hands every
//! other request to the s3s service while recording metrics.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use haven_tls::reload::Reloading;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as ConnectionBuilder;
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tracing::Instrument;

mod connections;
mod in_flight_body;
mod request_id;
mod spooled_body;

use connections::ConnectionTable;
use in_flight_body::InFlightBody;

use crate::access::OperationSlot;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::store::Store;

pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, s3s::StdError>;

/// Bodies up to this size (with a Content-Length) are read before the
/// request is handled.
const BUFFERED_BODY_BYTES: u64 = 64 * 1024;

/// Pause after a failed `accept`.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Longest time a client may take to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Shared {
    /// The s3s service over Haven's store.
    pub s3: s3s::service::S3Service,
    /// The store (for disk usage in `/metrics`).
    pub store: Arc<Store>,
    /// Metrics of this node.
    pub metrics: Arc<Metrics>,
    /// Largest chunked body of unknown length that is spooled
    /// (`limits.max_object_size`).
    pub max_spooled_body: u64,
}

/// Whether a request carries any SigV4 or SigV2 authentication.
fn is_signed<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(hyper::header::AUTHORIZATION)
        || req
            .uri()
            .query()
            .is_some_and(|q| q.contains("X-Amz-Credential") || q.contains("Signature="))
}

/// Marks a response whose status must be `206 Partial Content` though s3s
/// answers its operation with `200` (HeadObject of a part or a range, as AWS
/// answers it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PartialContent;

/// A complete body as the boxed body every answer has.
fn boxed(body: Full<Bytes>) -> ResponseBody {
    body.map_err(|never| match never {}).boxed_unsync()
}

fn full(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    id: &str,
) -> Response<ResponseBody> {
    let mut response = Response::new(boxed(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(id) {
        response.headers_mut().insert(request_id::HEADER, value);
    }
    response
}

/// An S3 error document for a request refused before s3s saw it.
fn s3_error(status: StatusCode, code: &str, message: &str, id: &str) -> Response<ResponseBody> {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{escaped}</Message><RequestId>{id}</RequestId></Error>"
    );
    full(status, "application/xml", body, id)
}

/// Handles one request. An unsigned `GET /metrics` is the Prometheus
/// endpoint; a signed one is an ordinary ListObjects on a bucket `metrics`.
///
/// While traces are exported, the request runs in a `request` span, the child of
/// the client's span when it sent a `traceparent` (Haven's workers do): a backup's
/// uploads show in its job's trace.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    if !haven_telemetry::is_enabled() {
        return handle_request(shared, req).await;
    }
    let span = tracing::info_span!(
        parent: None,
        "request",
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        op = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        bytes_in = tracing::field::Empty,
    );
    haven_telemetry::set_parent_from_headers(&span, req.headers());
    handle_request(shared, req).instrument(span).await
}

/// [`handle`] without its span.
async fn handle_request(
    shared: Arc<Shared>,
    mut req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" && !is_signed(&req) {
        shared.metrics.refresh_bucket_usage(&shared.store);
        let registry = shared.metrics.with_disk_usage(shared.store.disk_usage());
        return Ok(haven_metrics::exposition(registry).map(boxed));
    }
    let started = Instant::now();
    let id = request_id::new_id();
    let slot = OperationSlot::default();
    req.extensions_mut().insert(slot.clone());
    // Counted from Content-Length: wrapping the body would hide its exact
    // size from s3s, which needs it for signature checks.
    let length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    shared.metrics.bytes_in(length);
    // A small body is read completely before the request is answered: an
    // early error (bad key, no bucket) would otherwise close the connection
    // with the body still unread, and the kernel then resets the connection
    // (RST) so the client may lose the error response itself.
    let has_length = req.headers().contains_key(hyper::header::CONTENT_LENGTH);
    let req = if has_length && (1..=BUFFERED_BODY_BYTES).contains(&length) {
        let (parts, body) = req.into_parts();
        match body.collect().await {
            Ok(collected) => Request::from_parts(parts, s3s::Body::from(collected.to_bytes())),
            Err(error) => {
                tracing::debug!(%error, "request body ended early");
                shared.metrics.request(slot.get(), 400, started.elapsed());
                return Ok(full(
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    "incomplete body\n".to_owned(),
                    &id,
                ));
            }
        }
    } else if spooled_body::needs_spooling(&req) {
        match spooled_body::spool(req, shared.store.spool_path(), shared.max_spooled_body).await {
            Ok(req) => req,
            Err(error) => {
                tracing::debug!(%error, "chunked request body refused");
                let (status, code) = match error {
                    spooled_body::SpoolError::TooLarge(_) => {
                        (StatusCode::BAD_REQUEST, "EntityTooLarge")
                    }
                    spooled_body::SpoolError::Incomplete(_) => {
                        (StatusCode::BAD_REQUEST, "IncompleteBody")
                    }
                    spooled_body::SpoolError::Io(_) => {
                        (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
                    }
                };
                shared
                    .metrics
                    .request(slot.get(), status.as_u16(), started.elapsed());
                return Ok(s3_error(status, code, &error.to_string(), &id));
            }
        }
    } else {
        req.map(s3s::Body::from)
    };
    let mut response = match shared.s3.call(req).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(request_id = %id, ?error, "request failed");
            shared.metrics.request(slot.get(), 500, started.elapsed());
            return Ok(full(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "internal error\n".to_owned(),
                &id,
            ));
        }
    };
    if response.extensions().get::<PartialContent>().is_some() {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    request_id::stamp(&mut response, &id);
    let status = response.status().as_u16();
    let op = slot.get();
    shared.metrics.request(op, status, started.elapsed());
    // Fields of the request span, if there is one.
    let span = tracing::Span::current();
    span.record("op", op);
    span.record("http.response.status_code", status);
    span.record("bytes_in", length);
    tracing::debug!(
        request_id = %id,
        op,
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    let out_metrics = Arc::clone(&shared.metrics);
    Ok(response.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                out_metrics.bytes_out(data.len() as u64);
            }
            frame
        })
        .boxed_unsync()
    }))
}

/// Accepts connections until `shutdown` resolves, then drains for up to 10 s.
///
/// Slow and idle clients are bounded by `limits`: request headers must arrive
/// within `header_read_timeout_secs` (HTTP/1; hyper runs the same timer while a
/// keep-alive connection waits for its next request), a connection with no
/// request in progress for `idle_timeout_secs` is closed, and at most
/// `max_connections` are open, the longest idle giving way to a new one
/// ([`connections`]).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    shared: Arc<Shared>,
    limits: &Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut builder = ConnectionBuilder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(limits.max_header_bytes.max(8192))
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    let idle_timeout = Duration::from_secs(limits.idle_timeout_secs);
    let table = ConnectionTable::new(limits.max_connections);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    // Out of file descriptors, say: do not spin while it lasts.
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = tokio::select! {
            slot = table.admit() => Arc::new(slot),
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let (shared, slot) = (Arc::clone(&shared), Arc::clone(&slot));
            hyper::service::service_fn(move |req| {
                let in_flight = slot.request();
                let response = handle(Arc::clone(&shared), req);
                async move {
                    let response = response.await?;
                    Ok::<_, Infallible>(
                        response.map(|body| InFlightBody::new(body, in_flight).boxed_unsync()),
                    )
                }
            })
        };
        match &tls {
            None => {
                let connection = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    tokio::select! {
                        result = connection => if let Err(error) = result {
                            tracing::debug!(%peer, %error, "connection ended with an error");
                        },
                        reason = slot.closing(idle_timeout) => {
                            tracing::debug!(%peer, ?reason, "connection closed by the node");
                        }
                    }
                });
            }
            Some(config) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
                let builder = builder.clone();
                tokio::spawn(async move {
                    // A peer that never finishes the handshake (or speaks
                    // plain HTTP) must not hold a task forever.
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let stream = match handshake.await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            return;
                        }
                    };
                    tokio::select! {
                        result = builder.serve_connection(TokioIo::new(stream), service) => {
                            if let Err(error) = result {
                                tracing::debug!(%peer, %error, "connection ended with an error");
                            }
                        }
                        reason = slot.closing(idle_timeout) => {
                            tracing::debug!(%peer, ?reason, "connection closed by the node");
                        }
                    }
                });
            }
        }
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10 s; stopping anyway");
        }
    }
}

/// The node's TLS configuration from its PEM files, rebuilt when they change (checked
/// every 2 s, or on SIGHUP) until `shutdown`: a renewed certificate is served to new
/// connections without a restart, and a broken renewal keeps the previous one.
pub fn tls_config(
    config: &crate::config::TlsConfig,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Arc<Reloading<rustls::ServerConfig>>, haven_tls::TlsError> {
    let files = haven_tls::listener::ServerTlsFiles {
        cert: config.cert.clone(),
        key: config.key.clone(),
        client_ca: None,
    };
    let reloading = files.reloading("storage node TLS")?;
    reloading.watch(shutdown.clone());
    Ok(reloading)
}
