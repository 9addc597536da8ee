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

/// Runs one etcd request under [`REQUEST_TIMEOUT`].
async fn bounded<T>(
    request: impl Future<Output = std::result::Result<T, etcd_client::Error>>,
) -> Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .map_err(|_| unavailable("etcd request timed out (no quorum?)"))?
        .map_err(etcd_error)
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
        let mut kv = self.client.kv_client();
        let response = bounded(kv.get(key, None)).await?;
        response.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.counters.read();
        let mut kv = self.client.kv_client();
        let response = bounded(kv.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
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
        let mut kv = self.client.kv_client();
        let response = bounded(kv.txn(txn)).await?;
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
        let mut lease = self.client.lease_client();
        Ok(bounded(lease.grant(seconds, None)).await?.id())
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let mut lease = self.client.lease_client();
        let (mut keeper, mut stream) = bounded(lease.keep_alive(id)).await?;
        bounded(keeper.keep_alive()).await?;
        match bounded(stream.message()).await? {
            Some(reply) if reply.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let mut lease = self.client.lease_client();
        match bounded(lease.revoke(id)).await {
            Ok(_) => Ok(()),
            Err(StoreError::Invalid(message)) if message.contains("not found") => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}
