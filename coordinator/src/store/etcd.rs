//! [`MetaStore`] on a real etcd cluster through `etcd-client`.
//!
//! Every call has a deadline: without quorum etcd blocks linearizable requests instead
//! of failing them, and the coordinator must see "unavailable" (and stop scheduling)
//! rather than hang.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp,
};

use super::{
    Compare, Counters, KeyValue, LeaseId, MetaStore, Op, Result, StoreError, StoreStats, TxnOutcome,
};

/// Deadline of one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster.
pub struct EtcdStore {
    client: Client,
    counters: Counters,
}

impl EtcdStore {
    /// Connects to the cluster at `endpoints` (`http://HOST:PORT`, comma-separated
    /// lists split by the caller).
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect(endpoints, Some(options)))
                .await
                .map_err(|_| unavailable("timed out connecting to etcd"))?
                .map_err(etcd_error)?;
        Ok(Self {
            client,
            counters: Counters::default(),
        })
    }
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable(reason.into())
}

fn etcd_error(error: etcd_client::Error) -> StoreError {
    match error {
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

/// Retries of a request that could not connect to its endpoint.
const CONNECT_RETRIES: u32 = 4;

/// Runs one etcd request under [`REQUEST_TIMEOUT`], retrying it while it never reached
/// a member.
///
/// The client spreads requests over every endpoint, and one whose member is down fails
/// at once with a connection error, while the others would answer. Such a request was
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
            Ok(Err(error)) if retries < CONNECT_RETRIES && never_sent(&error) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(20 * u64::from(retries))).await;
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

/// Whether `error` says the request could not even connect to its endpoint.
fn never_sent(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable && status.message().contains("connect")
        }
        etcd_client::Error::TransportError(error) => error.to_string().contains("connect"),
        _ => false,
    }
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
        let response = bounded(|| {
            let mut kv = self.client.kv_client();
            async move { kv.get(key, None).await }
        })
        .await?;
        response.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.counters.read();
        let response = bounded(|| {
            let mut kv = self.client.kv_client();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
        response.kvs().iter().map(convert).collect()
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        self.counters.write();
        let compares: Vec<EtcdCompare> = compares
            .into_iter()
            .map(|compare| match compare {
                Compare::Absent(key) => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
                Compare::ModRevision(key, revision) => {
                    EtcdCompare::mod_revision(key, CompareOp::Equal, revision)
                }
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
        let response = bounded(|| {
            let mut kv = self.client.kv_client();
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
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
        let granted = bounded(|| {
            let mut lease = self.client.lease_client();
            async move { lease.grant(seconds, None).await }
        })
        .await?;
        Ok(granted.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let (mut keeper, mut stream) = bounded(|| {
            let mut lease = self.client.lease_client();
            async move { lease.keep_alive(id).await }
        })
        .await?;
        // On the open stream: no reconnecting here.
        bounded_once(keeper.keep_alive()).await?;
        match bounded_once(stream.message()).await? {
            Some(reply) if reply.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let revoked = bounded(|| {
            let mut lease = self.client.lease_client();
            async move { lease.revoke(id).await }
        })
        .await;
        match revoked {
            Ok(_) => Ok(()),
            Err(StoreError::Invalid(message)) if message.contains("not found") => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}
