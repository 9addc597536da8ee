//! A real webhook receiver: a hyper HTTP/1.1 server on 127.0.0.1, over plain HTTP or
//! TLS (a certificate of the test's own CA), that keeps every request it is sent and
//! answers 500 to the first ones a test chooses, then 200. Stopped when dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// One request as received, with the status it was answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method and path, `POST /hook?x=1`.
    pub target: String,
    /// Headers, names in lower case.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    /// The header `name` (lower case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// What the server shares with its connections.
#[derive(Default)]
struct Log {
    received: Mutex<Vec<Received>>,
    /// Requests answered 500 before the first 200.
    failures: usize,
}

/// A running receiver.
pub struct Receiver {
    url: String,
    log: Arc<Log>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Plain HTTP on a free loopback port, answering 500 to the first `failures`
    /// requests.
    pub fn http(failures: usize) -> Self {
        Self::start(failures, None)
    }

    /// HTTPS with the certificate `cert` and key `key` (which must name 127.0.0.1),
    /// answering 500 to the first `failures` requests.
    pub fn https(failures: usize, cert: &Path, key: &Path) -> Self {
        let config = rustls::ServerConfig::builder_with_provider(haven_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                haven_tls::files::certificates(cert).unwrap(),
                haven_tls::files::private_key(key).unwrap(),
            )
            .unwrap();
        Self::start(
            failures,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
    }

    fn start(failures: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", 0)))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let log = Arc::new(Log {
            failures,
            ..Log::default()
        });
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let served = Arc::clone(&log);
        runtime.spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                };
                let log = Arc::clone(&served);
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let log = Arc::clone(&log);
                        async move { Ok::<_, Infallible>(answer(&log, request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), service).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://127.0.0.1:{port}"),
            log,
            stop: Some(stop),
            runtime: Some(runtime),
        }
    }

    /// `SCHEME://127.0.0.1:PORT`, to which a test appends a path.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.log
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests once `done` holds for them; fails the test with what arrived
    /// after `limit`.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {limit:?}; received: {received:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Records `request` and answers it: 500 while fewer than `failures` came before.
async fn answer(log: &Log, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let target = format!("{} {}", request.method(), request.uri());
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let mut received = log.received.lock().unwrap_or_else(PoisonError::into_inner);
    let status = if received.len() < log.failures {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    received.push(Received {
        target,
        headers,
        body,
        status: status.as_u16(),
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}
