//! Following the leader: callers hold a list of coordinator URLs and every call goes
//! to whichever replica leads now.
//!
//! Followers answer `UNAVAILABLE` (with the leader's URL in [`crate::LEADER_METADATA`]
//! metadata when they know it); a dead replica fails to connect. Both make
//! [`LeaderClient::call`] drop its cached channel, find the leader again and retry,
//! with jittered backoff, until a deadline: so a worker or the CLI rides through a failover
//! that takes a few seconds without the caller writing any retry logic.

use crate::backoff::Backoff;
use crate::error_chain::error_chain;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_tls::reload::Reloading;
use tokio::sync::Mutex;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::v1::GetLeaderRequest;
use crate::v1::admin_service_client::AdminServiceClient;

/// Why no leader could be reached.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The URL list was empty or a URL was malformed.
    #[error("bad coordinator URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No replica answered as leader before the deadline.
    #[error("no coordinator leader reachable at {urls} within {seconds} s: {last}")]
    NoLeader {
        /// The URLs tried, comma-separated.
        urls: String,
        /// The deadline.
        seconds: u64,
        /// The last error seen.
        last: String,
    },
}

/// How a client proves who it is and checks the coordinator's certificate.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// TLS for `https://` URLs: the cluster's CA and, for certificate holders
    /// (workers, admins), the client certificate; reloaded when the files change.
    pub tls: Option<Arc<Reloading<rustls::ClientConfig>>>,
    /// An API token sent as `authorization: Bearer TOKEN` on every call.
    pub token: Option<String>,
}

impl ClientSecurity {
    /// Security from files: `ca` (the cluster's CA, for `https://` coordinators),
    /// an optional client certificate and key, an optional file whose first line is
    /// an API token. The certificate files are watched until `watch` is cancelled,
    /// so a rotated certificate is used from the next connection on.
    pub fn from_files(
        ca: Option<&Path>,
        identity: Option<(PathBuf, PathBuf)>,
        token_file: Option<&Path>,
        watch: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Self, haven_tls::TlsError> {
        let tls = match (ca, identity) {
            (Some(ca), identity) => {
                let files = haven_tls::connector::ClientTlsFiles {
                    ca: ca.to_owned(),
                    identity,
                };
                let reloading = files.reloading("coordinator client TLS")?;
                if let Some(shutdown) = watch {
                    reloading.watch(shutdown);
                }
                Some(reloading)
            }
            (None, Some((cert, _))) => {
                return Err(haven_tls::TlsError::Pem {
                    path: cert,
                    reason: "a client certificate needs the CA file of the coordinator too".into(),
                });
            }
            (None, None) => None,
        };
        let token = match token_file {
            Some(path) => {
                let bytes = haven_tls::files::read(path)?;
                let text = String::from_utf8_lossy(&bytes);
                let line = text.lines().next().unwrap_or_default().trim().to_owned();
                if line.is_empty() {
                    return Err(haven_tls::TlsError::Pem {
                        path: path.to_owned(),
                        reason: "the token file is empty".into(),
                    });
                }
                Some(line)
            }
            None => None,
        };
        Ok(Self { tls, token })
    }
}

/// A channel whose calls carry the client's token and trace context.
pub type AuthChannel = InterceptedService<Channel, CallMetadata>;

/// Adds the API token to every request, and the caller's `traceparent` when traces
/// are exported: a worker's commit then shows in its job's trace on the coordinator.
#[derive(Clone)]
pub struct CallMetadata(Option<MetadataValue<Ascii>>);

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        if let Some(value) =
            haven_telemetry::current_traceparent().and_then(|value| value.parse().ok())
        {
            request
                .metadata_mut()
                .insert(haven_telemetry::TRACEPARENT, value);
        }
        Ok(request)
    }
}

/// Pauses between tries of a call while no leader answers: up to 100 ms after the
/// first failure, doubling to at most 1 s, with full jitter so the workers a failover
/// cut off together do not all ask the new leader at the same instant.
const CALL_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(1),
};

/// A cached channel to the leader, re-resolved when a call says it moved or when the
/// client's certificate files were reloaded.
pub struct LeaderClient {
    urls: Vec<String>,
    retry_for: Duration,
    tls: Option<Arc<Reloading<rustls::ClientConfig>>>,
    token: CallMetadata,
    current: Mutex<Option<Cached>>,
}

/// The leader's channel and the TLS configuration current when it was found.
///
/// An HTTP/2 channel lives as long as the coordinator keeps it open, so a rotated
/// certificate would otherwise reach the coordinator only after a failover; comparing
/// the configuration makes the next call after a reload connect with the new one
/// (calls in flight finish on the old connection).
struct Cached {
    channel: AuthChannel,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for LeaderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderClient")
            .field("urls", &self.urls)
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.0.is_some())
            .finish()
    }
}

impl LeaderClient {
    /// A client over `urls` (each `https://HOST:PORT`, or `http://` on loopback)
    /// retrying failovers for `retry_for`.
    pub fn new(
        urls: Vec<String>,
        retry_for: Duration,
        security: ClientSecurity,
    ) -> Result<Self, LeaderError> {
        if urls.is_empty() {
            return Err(LeaderError::BadUrl {
                url: String::new(),
                reason: "no coordinator URL given".into(),
            });
        }
        for url in &urls {
            let bad = |reason: String| LeaderError::BadUrl {
                url: url.clone(),
                reason,
            };
            let (_, tls) = haven_tls::connector::endpoint(url).map_err(bad)?;
            if tls && security.tls.is_none() {
                return Err(bad(
                    "an https:// coordinator needs the cluster's CA certificate (--ca-file)".into(),
                ));
            }
        }
        let token = match security.token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| LeaderError::BadUrl {
                        url: String::new(),
                        reason: "the API token has characters a header cannot carry".into(),
                    })?,
            ),
            None => None,
        };
        Ok(Self {
            urls,
            retry_for,
            tls: security.tls,
            token: CallMetadata(token),
            current: Mutex::new(None),
        })
    }

    /// Runs `call` against the leader, finding it first and again after every
    /// `UNAVAILABLE` (a follower, a dead replica or a failover in progress).
    ///
    /// Any other status is the call's answer and is returned as is.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut failures = 0;
        loop {
            let status = match self.channel().await {
                Ok(channel) => match call(channel).await {
                    Err(status) if is_retryable(&status) => status,
                    other => return other,
                },
                Err(status) if is_refusal(&status) => return Err(status),
                Err(status) => status,
            };
            *self.current.lock().await = None;
            failures += 1;
            let pause = CALL_BACKOFF.pause(failures);
            if Instant::now() + pause > deadline {
                return Err(Status::unavailable(format!(
                    "no coordinator leader reachable at {} within {} s: {}",
                    self.urls.join(","),
                    self.retry_for.as_secs(),
                    status.message()
                )));
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// One unary call: the service client `make` builds on the leader's channel gets a
    /// clone of `request` on every try; returns the reply message.
    ///
    /// `client.unary(AdminServiceClient::new, request, |mut c, r| async move { c.list_vms(r).await })`
    pub async fn unary<C, Req, Resp, Fut>(
        &self,
        make: fn(AuthChannel) -> C,
        request: Req,
        call: impl Fn(C, Req) -> Fut,
    ) -> Result<Resp, Status>
    where
        Req: Clone,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(|channel| call(make(channel), request.clone()))
            .await
            .map(tonic::Response::into_inner)
    }

    /// The cached leader channel, or a fresh search for it.
    async fn channel(&self) -> Result<AuthChannel, Status> {
        let mut current = self.current.lock().await;
        let tls = self.tls.as_ref().map(|tls| tls.current());
        if let Some(cached) = current.as_ref() {
            let same_tls = match (&cached.tls, &tls) {
                (Some(then), Some(now)) => Arc::ptr_eq(then, now),
                _ => true,
            };
            if same_tls {
                return Ok(cached.channel.clone());
            }
            tracing::info!("client certificate reloaded; connecting to the coordinator again");
        }
        let found = self.find_leader().await?;
        *current = Some(Cached {
            channel: found.clone(),
            tls,
        });
        Ok(found)
    }

    /// Asks each URL in turn who leads; the first leader's channel.
    async fn find_leader(&self) -> Result<AuthChannel, Status> {
        let mut last = Status::unavailable("no coordinator URL answered");
        for url in &self.urls {
            match self.probe(url).await {
                Ok(Probe::Leader(channel)) => return Ok(channel),
                Ok(Probe::Follower(Some(leader))) => match self.probe(&leader).await {
                    Ok(Probe::Leader(channel)) => return Ok(channel),
                    Ok(_) => last = Status::unavailable(format!("{leader} no longer leads")),
                    Err(status) if is_refusal(&status) => return Err(status),
                    Err(status) => last = status,
                },
                Ok(Probe::Follower(None)) => {
                    last = Status::unavailable(format!("{url} follows; no leader elected yet"));
                }
                Err(status) if is_refusal(&status) => return Err(status),
                Err(status) => last = status,
            }
        }
        Err(last)
    }
}

enum Probe {
    Leader(AuthChannel),
    Follower(Option<String>),
}

impl LeaderClient {
    /// Connects to one replica and asks who leads.
    async fn probe(&self, url: &str) -> Result<Probe, Status> {
        let (endpoint, tls) = haven_tls::connector::endpoint(url)
            .map_err(|error| Status::invalid_argument(format!("bad URL {url}: {error}")))?;
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(120));
        let tls = if tls { self.tls.clone() } else { None };
        let channel = haven_tls::connector::connect(endpoint, tls)
            .await
            .map_err(|error| {
                Status::unavailable(format!("cannot connect to {url}: {}", error_chain(&error)))
            })?;
        let channel = InterceptedService::new(channel, self.token.clone());
        let reply = AdminServiceClient::new(channel.clone())
            .get_leader(GetLeaderRequest {})
            .await
            .map_err(|status| explained(url, status))?
            .into_inner();
        if reply.is_leader {
            Ok(Probe::Leader(channel))
        } else if reply.leader_url.is_empty() || reply.leader_url == url {
            Ok(Probe::Follower(None))
        } else {
            Ok(Probe::Follower(Some(reply.leader_url)))
        }
    }
}

/// The coordinator refused this client: no other replica will accept it either.
fn is_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument
    )
}

/// A transport failure with its causes spelled out: a TLS refusal (an unknown CA, an
/// expired certificate) is otherwise only "transport error".
///
/// A TLS alert or an untrusted server certificate is a refusal, not a failover
/// symptom: retrying cannot help, so it ends the call at once as UNAUTHENTICATED.
fn explained(url: &str, status: Status) -> Status {
    use std::error::Error;
    match status.source() {
        Some(source) if !is_refusal(&status) => {
            let chain = error_chain(source);
            let refused = chain.contains("received fatal alert")
                || chain.contains("invalid peer certificate");
            let code = if refused {
                Code::Unauthenticated
            } else {
                status.code()
            };
            Status::new(code, format!("{url}: {chain}"))
        }
        _ => status,
    }
}

/// Failover symptoms worth another try: a follower's answer, a dead or unreachable
/// replica, a connection cut by a dying one, and a call whose stream a replica that
/// was shutting down reset (`Cancelled`: no replica answers it on purpose, and every
/// call Haven retries is safe to repeat, a commit included).
fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Cancelled)
        || (status.code() == Code::Unknown && status.message().contains("transport"))
}
