//! Following the leader: callers hold a list of coordinator URLs and every call goes
//! to whichever replica leads now.
//!
//! Followers answer `UNAVAILABLE` (with the leader's URL in [`crate::LEADER_METADATA`]
//! metadata when they know it); a dead replica fails to connect. Both make
//! [`LeaderClient::call`] drop its cached channel, find the leader again and retry,
//! with backoff, until a deadline: so a worker or the CLI rides through a failover
//! that takes a few seconds without the caller writing any retry logic.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};
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

/// A cached channel to the leader, re-resolved when a call says it moved.
#[derive(Debug)]
pub struct LeaderClient {
    urls: Vec<String>,
    retry_for: Duration,
    current: Mutex<Option<Channel>>,
}

impl LeaderClient {
    /// A client over `urls` (each `http://HOST:PORT`) retrying failovers for `retry_for`.
    pub fn new(urls: Vec<String>, retry_for: Duration) -> Result<Self, LeaderError> {
        if urls.is_empty() {
            return Err(LeaderError::BadUrl {
                url: String::new(),
                reason: "no coordinator URL given".into(),
            });
        }
        for url in &urls {
            Endpoint::from_shared(url.clone()).map_err(|error| LeaderError::BadUrl {
                url: url.clone(),
                reason: error.to_string(),
            })?;
        }
        Ok(Self {
            urls,
            retry_for,
            current: Mutex::new(None),
        })
    }

    /// Runs `call` against the leader, finding it first and again after every
    /// `UNAVAILABLE` (a follower, a dead replica or a failover in progress).
    ///
    /// Any other status is the call's answer and is returned as is.
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let deadline = Instant::now() + self.retry_for;
        let mut backoff = Duration::from_millis(100);
        loop {
            let status = match self.channel().await {
                Ok(channel) => match call(channel).await {
                    Err(status) if is_retryable(&status) => status,
                    other => return other,
                },
                Err(status) => status,
            };
            *self.current.lock().await = None;
            if Instant::now() + backoff > deadline {
                return Err(Status::unavailable(format!(
                    "no coordinator leader reachable at {} within {} s: {}",
                    self.urls.join(","),
                    self.retry_for.as_secs(),
                    status.message()
                )));
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One unary call: the service client `make` builds on the leader's channel gets a
    /// clone of `request` on every try; returns the reply message.
    ///
    /// `client.unary(AdminServiceClient::new, request, |mut c, r| async move { c.list_vms(r).await })`
    pub async fn unary<C, Req, Resp, Fut>(
        &self,
        make: fn(Channel) -> C,
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
    async fn channel(&self) -> Result<Channel, Status> {
        let mut current = self.current.lock().await;
        if let Some(channel) = current.as_ref() {
            return Ok(channel.clone());
        }
        let mut last = Status::unavailable("no coordinator URL answered");
        for url in &self.urls {
            match probe(url).await {
                Ok(Probe::Leader(channel)) => {
                    *current = Some(channel.clone());
                    return Ok(channel);
                }
                Ok(Probe::Follower(Some(leader))) => match probe(&leader).await {
                    Ok(Probe::Leader(channel)) => {
                        *current = Some(channel.clone());
                        return Ok(channel);
                    }
                    Ok(_) => last = Status::unavailable(format!("{leader} no longer leads")),
                    Err(status) => last = status,
                },
                Ok(Probe::Follower(None)) => {
                    last = Status::unavailable(format!("{url} follows; no leader elected yet"));
                }
                Err(status) => last = status,
            }
        }
        Err(last)
    }
}

enum Probe {
    Leader(Channel),
    Follower(Option<String>),
}

/// Connects to one replica and asks who leads.
async fn probe(url: &str) -> Result<Probe, Status> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| Status::invalid_argument(format!("bad URL {url}: {error}")))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(120));
    let channel = endpoint
        .connect()
        .await
        .map_err(|error| Status::unavailable(format!("cannot connect to {url}: {error}")))?;
    let reply = AdminServiceClient::new(channel.clone())
        .get_leader(GetLeaderRequest {})
        .await?
        .into_inner();
    if reply.is_leader {
        Ok(Probe::Leader(channel))
    } else if reply.leader_url.is_empty() || reply.leader_url == url {
        Ok(Probe::Follower(None))
    } else {
        Ok(Probe::Follower(Some(reply.leader_url)))
    }
}

/// Failover symptoms worth another try: a follower's answer, a dead or unreachable
/// replica, a connection cut by a dying one.
fn is_retryable(status: &Status) -> bool {
    status.code() == Code::Unavailable
        || (status.code() == Code::Unknown && status.message().contains("transport"))
}
