//! [`MetaStore`] on a real etcd cluster through `etcd-client`.
//!
//! Every call has a deadline: without quorum etcd blocks linearizable requests instead
//! of failing them, and the coordinator must see "unavailable" (and stop scheduling)
//! rather than hang.
//!
//! With `[etcd_security]` the connection uses TLS (with a client certificate when one
//! is configured) and etcd auth ([`credentials`]); a request etcd refuses for lack of
//! permission is [`StoreError::Denied`], never "unavailable".
//!
//! Those files rotate without a restart ([`EtcdStore::follow_credentials`]): etcd-client
//! fixes its certificate when it builds its channel, so a rotation builds a new
//! client, checks it reaches etcd, and swaps it in for the requests that follow.

mod credentials;

pub use credentials::{CredentialsError, EtcdCredentials};

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, CompactionOptions, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions,
    PutOptions, Txn, TxnOp,
};

use haven_tls::reload::{FileStamps, WatchTicks};

use crate::config::{EtcdSecurity, EtcdTransport};

use super::{
    Compare, Counters, KeyValue, LeaseId, MetaStore, Op, Result, Revision, StoreError, StoreStats,
    TxnOutcome,
};

/// Deadline of one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster.
pub struct EtcdStore {
    /// Replaced when the credential files rotate; each request clones the current one.
    client: RwLock<Client>,
    counters: Counters,
}

impl EtcdStore {
    /// The client for one request.
    fn client(&self) -> Client {
        self.client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    /// One keep-alive of lease `id`: its first reply says whether the lease lives.
    async fn keep_alive_once(&self, id: LeaseId) -> Result<()> {
        // etcd-client reads the first reply itself and reports a lease that is gone
        // (TTL 0) as this error: that is `LeaseNotFound`, not an unavailable store.
        let opened = bounded(|| {
            let mut lease = self.client().lease_client();
            async move {
                match lease.keep_alive(id).await {
                    Err(etcd_client::Error::LeaseKeepAliveError(message))
                        if message == "lease not found" =>
                    {
                        Ok(None)
                    }
                    other => other.map(Some),
                }
            }
        })
        .await?;
        let Some((mut keeper, mut stream)) = opened else {
            return Err(StoreError::LeaseNotFound(id));
        };
        // On the open stream: no reconnecting here.
        bounded_once(keeper.keep_alive()).await?;
        match bounded_once(stream.message()).await? {
            Some(reply) if reply.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// Connects to the cluster at `endpoints` (`http://HOST:PORT` or
    /// `https://HOST:PORT`, comma-separated lists split by the caller) with the TLS
    /// settings and credentials of `security`. Plain endpoints off loopback are refused
    /// unless `security.insecure`, and then logged as a warning.
    pub async fn connect(endpoints: &[String], security: &EtcdSecurity) -> Result<Self> {
        let credentials = EtcdCredentials::load(security, endpoints)?;
        if let EtcdTransport::Insecure(plain) = credentials.transport() {
            tracing::warn!(
                endpoints = %plain.join(","),
                "etcd is reached over plain http:// off loopback (etcd_security.insecure = \
                 true): anyone on that network can read and rewrite Haven's state"
            );
        }
        Ok(Self {
            client: RwLock::new(open_client(endpoints, credentials).await?),
            counters: Counters::default(),
        })
    }

    /// Follows the files of `security` for as long as the store lives: when one
    /// changes (or on SIGHUP), connects again with what they now hold and, once that
    /// client has answered etcd, sends every new request through it. Until then —
    /// a key written before its certificate, an unreachable cluster — the previous
    /// client stays and the new files are tried again at the next look.
    /// Requests in flight finish on the client they started with.
    pub fn follow_credentials(self: &Arc<Self>, endpoints: &[String], security: &EtcdSecurity) {
        let files = security.files();
        if files.is_empty() {
            return;
        }
        let store = Arc::downgrade(self);
        let endpoints = endpoints.to_vec();
        let security = security.clone();
        tokio::spawn(async move {
            let mut stamps = FileStamps::new(files);
            let mut ticks = WatchTicks::new();
            let mut rotation = Rotation::default();
            loop {
                let forced = ticks.next().await;
                let Some(store) = store.upgrade() else {
                    return;
                };
                if stamps.changed() || forced {
                    rotation = Rotation::Pending { warned: false };
                }
                let Rotation::Pending { warned } = rotation else {
                    continue;
                };
                match reconnect(&endpoints, &security).await {
                    Ok(client) => {
                        *store.client.write().unwrap_or_else(PoisonError::into_inner) = client;
                        rotation = Rotation::Done;
                        tracing::info!("etcd credentials reloaded; new requests use them");
                    }
                    Err(error) => {
                        if !warned {
                            tracing::warn!(
                                %error,
                                files = %display_paths(&security.files()),
                                "etcd credentials changed but cannot be used yet; keeping \
                                 the previous connection and trying again"
                            );
                        }
                        rotation = Rotation::Pending { warned: true };
                    }
                }
            }
        });
    }
}

/// Where a rotation of the credential files stands.
#[derive(Debug, Clone, Copy, Default)]
enum Rotation {
    /// The current client uses the files as they are.
    #[default]
    Done,
    /// The files changed and no client has been built from them yet.
    Pending {
        /// Whether the failure to use them was logged (once per change).
        warned: bool,
    },
}

/// A client for `endpoints` with `credentials`, within [`REQUEST_TIMEOUT`].
async fn open_client(endpoints: &[String], credentials: EtcdCredentials) -> Result<Client> {
    let options = credentials.apply(
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2)),
    );
    tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(options)))
        .await
        .map_err(|_| unavailable("timed out connecting to etcd"))?
        .map_err(etcd_error)
}

/// A client built from the files of `security` as they are now, once etcd answered
/// it: building one does not contact etcd without a user, and a certificate etcd
/// refuses must not replace one it accepts.
async fn reconnect(endpoints: &[String], security: &EtcdSecurity) -> Result<Client> {
    let credentials = EtcdCredentials::load(security, endpoints)?;
    let client = open_client(endpoints, credentials).await?;
    let mut maintenance = client.maintenance_client();
    tokio::time::timeout(REQUEST_TIMEOUT, maintenance.status())
        .await
        .map_err(|_| unavailable("timed out asking etcd for its status"))?
        .map_err(etcd_error)?;
    Ok(client)
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable(reason.into())
}

fn etcd_error(error: etcd_client::Error) -> StoreError {
    match error {
        etcd_client::Error::GRpcStatus(status) if is_refusal(&status) => {
            StoreError::Denied(status.message().to_string())
        }
        etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::InvalidArgument => {
            StoreError::Invalid(status.message().to_string())
        }
        etcd_client::Error::GRpcStatus(status)
            if status.code() == tonic::Code::NotFound
                || status.message().contains("requested lease not found") =>
        {
            StoreError::Invalid(status.message().to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Whether etcd refused the request for its credentials: a role without permission,
/// an unknown user (a client certificate's common name is taken as the user when no
/// token is sent), a wrong password, or no credentials at all on a cluster with auth.
fn is_refusal(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => true,
        tonic::Code::InvalidArgument => {
            let message = status.message();
            message.contains("authentication failed") || message.contains("user name is empty")
        }
        _ => false,
    }
}

/// Pauses between retries of a request that could not connect to its endpoint: up to
/// 10 ms after the first, doubling to at most 200 ms, jittered so the replicas' and
/// requests' retries do not line up.
const RETRY_BACKOFF: haven_proto::Backoff = haven_proto::Backoff {
    first: Duration::from_millis(10),
    max: Duration::from_millis(200),
};

/// Runs one etcd request under [`REQUEST_TIMEOUT`], retrying it (until that deadline)
/// while it never reached a member.
///
/// The client spreads requests over every endpoint, and one whose member is down fails
/// at once with a connection error, while the others would answer; the balancer even
/// favours the dead endpoint, which never has requests in flight. Such a request was
/// never sent, so repeating it is safe even for a write; anything else (a reply, a
/// timeout, a broken connection mid-request) is returned as is, because a write may
/// have been applied.
async fn bounded<T, F, Fut>(mut request: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    let mut retries = 0;
    loop {
        match tokio::time::timeout_at(deadline, request()).await {
            Err(_) => return Err(unavailable("etcd request timed out (no quorum?)")),
            Ok(Ok(reply)) => return Ok(reply),
            Ok(Err(error)) if never_sent(&error) => {
                retries += 1;
                let pause = RETRY_BACKOFF.pause(retries);
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(etcd_error(error));
                }
                tokio::time::sleep(pause).await;
            }
            Ok(Err(error)) => return Err(etcd_error(error)),
        }
    }
}

/// Runs one request on an established stream under [`REQUEST_TIMEOUT`].
async fn bounded_once<T>(
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| unavailable("etcd request timed out (no quorum?)"))?
        .map_err(etcd_error)
}

/// Whether `error` says the request could not even connect to its endpoint: the
/// connection was refused, or tonic's connector failed ("tcp connect error"). A broken
/// connection ("connection reset", "connection closed") is not: the request may have
/// reached etcd.
fn never_sent(error: &etcd_client::Error) -> bool {
    let status = match error {
        etcd_client::Error::GRpcStatus(status) => status,
        _ => return false,
    };
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    if status.message().starts_with("tcp connect error") {
        return true;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = error.source();
    }
    false
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|_| StoreError::Invalid("non-UTF-8 key in etcd".into()))?
            .to_string(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

#[async_trait]
impl MetaStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.counters.read();
        let response = self.counters.outcome(
            bounded(|| {
                let mut kv = self.client().kv_client();
                async move { kv.get(key, None).await }
            })
            .await,
        )?;
        response.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.counters.read();
        let response = self.counters.outcome(
            bounded(|| {
                let mut kv = self.client().kv_client();
                async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await,
        )?;
        response.kvs().iter().map(convert).collect()
    }

    async fn range(&self, start: &str, end: &str, limit: usize) -> Result<Vec<KeyValue>> {
        self.counters.read();
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let response = bounded(|| {
            let mut kv = self.client().kv_client();
            let options = GetOptions::new().with_range(end).with_limit(limit);
            async move { kv.get(start, Some(options)).await }
        })
        .await?;
        response.kvs().iter().map(convert).collect()
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        self.counters.write();
        let compares: Vec<EtcdCompare> = compares
            .into_iter()
            .flat_map(|compare| match compare {
                Compare::Absent(key) => {
                    vec![EtcdCompare::create_revision(key, CompareOp::Equal, 0)]
                }
                // etcd compares a missing key's mod_revision as 0; `ModRevision` also
                // requires the key to exist (the conformance suite checks revision 0).
                Compare::ModRevision(key, revision) => vec![
                    EtcdCompare::create_revision(key.clone(), CompareOp::Greater, 0),
                    EtcdCompare::mod_revision(key, CompareOp::Equal, revision),
                ],
            })
            .collect();
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                    TxnOp::put(key, value, options)
                }
                Op::Delete(key) => TxnOp::delete(key, None),
            })
            .collect();
        let txn = Txn::new().when(compares).and_then(ops);
        let response = self.counters.outcome(
            bounded(|| {
                let mut kv = self.client().kv_client();
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await,
        )?;
        let revision = response
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| unavailable("etcd transaction reply without header"))?;
        Ok(TxnOutcome {
            succeeded: response.succeeded(),
            revision,
        })
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.counters.lease();
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self.counters.outcome(
            bounded(|| {
                let mut lease = self.client().lease_client();
                async move { lease.grant(seconds, None).await }
            })
            .await,
        )?;
        Ok(granted.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        self.counters.outcome(self.keep_alive_once(id).await)
    }

    async fn compact_history(&self, keep: u64) -> Result<Option<Revision>> {
        self.counters.write();
        // The current revision is in every reply's header; a count-only read of one
        // key costs etcd nothing.
        let current = self
            .counters
            .outcome(
                bounded(|| {
                    let mut kv = self.client().kv_client();
                    async move { kv.get("/", Some(GetOptions::new().with_count_only())).await }
                })
                .await,
            )?
            .header()
            .map(|header| header.revision())
            .ok_or_else(|| unavailable("etcd reply without header"))?;
        let keep = Revision::try_from(keep).unwrap_or(Revision::MAX);
        let target = current.saturating_sub(keep);
        if target <= 1 {
            return Ok(None);
        }
        let compacted = bounded(|| {
            let mut kv = self.client().kv_client();
            async move { kv.compact(target, Some(CompactionOptions::new())).await }
        })
        .await;
        match compacted {
            Ok(_) => Ok(Some(target)),
            // Another replica (or an earlier term) compacted at least this far.
            Err(StoreError::Unavailable(message) | StoreError::Invalid(message))
                if message.contains("compacted") =>
            {
                Ok(None)
            }
            Err(error) => self.counters.outcome(Err(error)),
        }
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let revoked = bounded(|| {
            let mut lease = self.client().lease_client();
            async move { lease.revoke(id).await }
        })
        .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(StoreError::Invalid(message)) if message.contains("not found") => Ok(()),
            Err(error) => self.counters.outcome(Err(error)),
        }
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn status(status: tonic::Status) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(status)
    }

    #[test]
    fn only_requests_that_never_left_are_retried() {
        assert!(never_sent(&status(tonic::Status::unavailable(
            "tcp connect error"
        ))));
        let mut refused = tonic::Status::unavailable("transport error");
        refused.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert!(never_sent(&status(refused)));

        // The request may have been applied: never repeated.
        let mut reset = tonic::Status::unavailable("transport error");
        reset.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(!never_sent(&status(reset)));
        assert!(!never_sent(&status(tonic::Status::unavailable(
            "connection closed before message completed"
        ))));
        assert!(!never_sent(&status(tonic::Status::deadline_exceeded(
            "tcp connect error"
        ))));
        assert!(!never_sent(&etcd_client::Error::InvalidArgs("x".into())));
    }
}
