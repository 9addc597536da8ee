//! The audit log: one record per call of a mutating admin method, allowed or not.
//!
//! Each record is a structured log line (target `haven::audit`, for the site's log
//! pipeline) and a JSON value under `/haven/audit/REVERSEDMS-RANDOM` that `haven audit`
//! lists, so the trail survives the process and is shared by every replica. Keys sort
//! newest first ([`model::audit_key`]), so listing reads only the records it returns
//! (a ranged read with a limit), and expiry reads the oldest from the other end in
//! bounded batches; neither reads the whole trail. Expiry runs on the leading replica
//! only. (The layout changed from oldest-first keys before any release.)

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model;
use crate::store::{MetaStore, Op, StoreError};

/// One audited call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, milliseconds since the epoch.
    pub unix_ms: u64,
    /// The caller (`ROLE NAME`), or `anonymous`.
    pub who: String,
    /// How the caller authenticated (`certificate`, `token`, or empty).
    pub credential: String,
    /// The client's address.
    pub remote: String,
    /// The RPC, `Service/Method`.
    pub method: String,
    /// `OK`, or the gRPC code of the refusal or failure.
    pub result: String,
    /// What the call did or why it failed, in the service's words (never a secret).
    #[serde(default)]
    pub detail: String,
}

/// Writes and reads audit records.
pub struct AuditLog {
    store: Arc<dyn MetaStore>,
}

impl AuditLog {
    /// An audit log kept in `store`.
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self { store }
    }

    /// Logs and persists `record`. A record that cannot be persisted is still logged,
    /// with the store error, so nothing is silently lost from the trail.
    pub async fn record(&self, record: AuditRecord) {
        tracing::info!(
            target: "haven::audit",
            who = %record.who,
            credential = %record.credential,
            remote = %record.remote,
            method = %record.method,
            result = %record.result,
            detail = %record.detail,
            "audit"
        );
        let key = model::audit_key(record.unix_ms, &hex::encode(rand::random::<[u8; 4]>()));
        let stored = match serde_json::to_vec(&record) {
            Ok(value) => self
                .store
                .txn(vec![], vec![Op::put(key, value)])
                .await
                .map(drop),
            Err(error) => Err(StoreError::Invalid(error.to_string())),
        };
        if let Err(error) = stored {
            tracing::error!(target: "haven::audit", %error, method = %record.method, "cannot persist an audit record");
        }
    }

    /// Records since `since_unix_ms`, oldest first, at most `limit` (the newest): one
    /// ranged read of at most `limit` keys. A record that cannot be decoded is logged
    /// with its key and left out.
    pub async fn list(
        &self,
        since_unix_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let newest_first = self
            .store
            .range(
                &model::prefix("audit/"),
                &model::audit_bound(since_unix_ms),
                limit,
            )
            .await?;
        let mut records: Vec<AuditRecord> = newest_first
            .into_iter()
            .filter_map(|kv| match serde_json::from_slice(&kv.value) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::warn!(key = %kv.key, %error, "unreadable audit record");
                    None
                }
            })
            .collect();
        records.reverse();
        Ok(records)
    }

    /// Deletes records older than `before_unix_ms`, [`EXPIRY_BATCH`] keys per read
    /// and transaction; how many.
    pub async fn expire(&self, before_unix_ms: u64) -> Result<usize, StoreError> {
        let (start, end) = (model::audit_bound(before_unix_ms), model::audit_end());
        let mut count = 0;
        loop {
            let old = self.store.range(&start, &end, EXPIRY_BATCH).await?;
            let read = old.len();
            if read == 0 {
                return Ok(count);
            }
            let deletes = old.into_iter().map(|kv| Op::Delete(kv.key)).collect();
            self.store.txn(vec![], deletes).await?;
            count += read;
            if read < EXPIRY_BATCH {
                return Ok(count);
            }
        }
    }
}

/// Audit keys read and deleted at once by expiry (under etcd's default limit of 128
/// operations per transaction).
pub const EXPIRY_BATCH: usize = 100;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn record(unix_ms: u64) -> AuditRecord {
        AuditRecord {
            unix_ms,
            who: "admin alice".into(),
            credential: "certificate".into(),
            remote: "127.0.0.1:1".into(),
            method: "AdminService/RunJob".into(),
            result: "Ok".into(),
            detail: String::new(),
        }
    }

    #[tokio::test]
    async fn lists_the_newest_since_a_time_and_expires_the_oldest_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("state.redb"))
            .await
            .unwrap();
        let log = AuditLog::new(store.clone());
        let times: Vec<u64> = (0..250).map(|i| 1_000_000 + i * 10).collect();
        for &at in times.iter().rev() {
            log.record(record(at)).await;
        }
        let times_of = |records: Vec<AuditRecord>| -> Vec<u64> {
            records.iter().map(|record| record.unix_ms).collect()
        };
        assert_eq!(
            times_of(log.list(0, 3).await.unwrap()),
            [1_002_470, 1_002_480, 1_002_490],
            "the newest, oldest first"
        );
        assert_eq!(
            times_of(log.list(1_002_480, 10).await.unwrap()),
            [1_002_480, 1_002_490],
            "since is included"
        );
        assert_eq!(log.list(0, 1000).await.unwrap().len(), 250);
        let reads = store.stats().reads;
        log.list(0, 5).await.unwrap();
        assert_eq!(store.stats().reads, reads + 1, "one ranged read");

        // 150 records before 1_001_500: two batches.
        assert_eq!(log.expire(1_001_500).await.unwrap(), 150);
        let left = times_of(log.list(0, 1000).await.unwrap());
        assert_eq!(left, times[150..]);
        assert_eq!(log.expire(1_001_500).await.unwrap(), 0);
    }
}
