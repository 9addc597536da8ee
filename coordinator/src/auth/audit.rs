//! The audit log: one record per call of a mutating admin method, allowed or not.
//!
//! Each record is a structured log line (target `haven::audit`, for the site's log
//! pipeline) and a JSON value under `/haven/audit/UNIXMS-RANDOM` that `haven audit`
//! lists, so the trail survives the process and is shared by every replica. Records
//! older than the retention are removed by the leader's expiry.

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

    /// Records since `since_unix_ms`, oldest first, at most `limit` (the newest).
    pub async fn list(
        &self,
        since_unix_ms: u64,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records: Vec<AuditRecord> = self
            .store
            .list(&model::prefix("audit/"))
            .await?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .filter(|record: &AuditRecord| record.unix_ms >= since_unix_ms)
            .collect();
        records.sort_by_key(|record| record.unix_ms);
        let skip = records.len().saturating_sub(limit);
        Ok(records.split_off(skip))
    }

    /// Deletes records older than `before_unix_ms`; how many.
    pub async fn expire(&self, before_unix_ms: u64) -> Result<usize, StoreError> {
        let old: Vec<Op> = self
            .store
            .list(&model::prefix("audit/"))
            .await?
            .into_iter()
            .filter(|kv| audit_time(&kv.key).is_some_and(|at| at < before_unix_ms))
            .map(|kv| Op::Delete(kv.key))
            .collect();
        let count = old.len();
        for batch in old.chunks(100) {
            self.store.txn(vec![], batch.to_vec()).await?;
        }
        Ok(count)
    }
}

/// The time in an audit key.
fn audit_time(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.split('-').next()?.parse().ok()
}
