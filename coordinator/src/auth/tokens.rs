//! API tokens: bearer secrets for admins, operators, viewers and tools that do not
//! hold a client certificate.
//!
//! A token reads `haven-token:NAME:SECRET`, SECRET being 32 random bytes in hex. The
//! store keeps only the BLAKE3 hash of the secret under `/haven/tokens/NAME` (with
//! its role and who made it), so a copy of etcd gives no usable token; revoking
//! deletes the record. Replicas cache lookups for [`CACHE_FOR`], the longest a
//! revoked token keeps working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use haven_tls::identity::check_name;
use haven_tls::{Identity, Role};
use serde::{Deserialize, Serialize};

use crate::model;
use crate::store::{Compare, MetaStore, Op, StoreError};

/// How long a looked-up token record is trusted without asking the store again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// Prefix of every token.
const PREFIX: &str = "haven-token:";

/// A stored token: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Name, unique; the caller's name in logs and the audit.
    pub name: String,
    /// Role it grants.
    pub role: String,
    /// BLAKE3 of the secret, hex.
    pub secret_hash: String,
    /// When it was made.
    pub created_unix_ms: u64,
    /// Who made it.
    pub created_by: String,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A token of that name exists.
    #[error("a token named {0:?} exists; revoke it first")]
    Exists(String),
    /// Bad name or role.
    #[error("{0}")]
    Invalid(String),
    /// A stored record could not be read.
    #[error("token record {0:?} is unreadable")]
    Unreadable(String),
}

/// Creates, checks, lists and revokes tokens in the metadata store.
pub struct Tokens {
    store: Arc<dyn MetaStore>,
    cache: Mutex<HashMap<String, (Option<TokenRecord>, Instant)>>,
}

impl Tokens {
    /// Tokens kept in `store`.
    pub fn new(store: Arc<dyn MetaStore>) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The cache of checked tokens. A map of copies stays whole whatever panicked
    /// while it was locked, so a poisoned lock is taken over: a poisoned cache must not
    /// stop `forget` from dropping a revoked token.
    fn cache(&self) -> MutexGuard<'_, HashMap<String, (Option<TokenRecord>, Instant)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes a token; returns its text, shown once.
    pub async fn create(&self, name: &str, role: Role, by: &str) -> Result<String, TokenError> {
        check_name(name).map_err(TokenError::Invalid)?;
        let secret = hex::encode(rand::random::<[u8; 32]>());
        let record = TokenRecord {
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            secret_hash: blake3::hash(secret.as_bytes()).to_hex().to_string(),
            created_unix_ms: model::now_ms(),
            created_by: by.to_owned(),
        };
        let key = model::token_key(name);
        let value = serde_json::to_vec(&record).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let outcome = self
            .store
            .txn(
                vec![Compare::Absent(key.clone())],
                vec![Op::put(key, value)],
            )
            .await?;
        if !outcome.succeeded {
            return Err(TokenError::Exists(name.to_owned()));
        }
        self.forget(name);
        Ok(format!("{PREFIX}{name}:{secret}"))
    }

    /// Deletes a token; whether it existed.
    pub async fn revoke(&self, name: &str) -> Result<bool, TokenError> {
        check_name(name).map_err(TokenError::Invalid)?;
        let key = model::token_key(name);
        let existed = self.store.get(&key).await?.is_some();
        self.store.txn(vec![], vec![Op::Delete(key)]).await?;
        self.forget(name);
        Ok(existed)
    }

    /// Every token record, by name.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        let mut records = Vec::new();
        for kv in self.store.list(&model::prefix("tokens/")).await? {
            let record: TokenRecord = serde_json::from_slice(&kv.value)
                .map_err(|_| TokenError::Unreadable(kv.key.clone()))?;
            records.push(record);
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// The identity a presented token proves, or why it proves none. The message
    /// never repeats the token.
    pub async fn verify(&self, token: &str) -> Result<Identity, String> {
        let (name, secret) = token
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.rsplit_once(':'))
            .filter(|(name, secret)| check_name(name).is_ok() && secret.len() == 64)
            .ok_or_else(|| "malformed API token".to_owned())?;
        let record = self.record(name).await?;
        let invalid = || format!("API token {name:?} is unknown, revoked or wrong");
        let record = record.ok_or_else(invalid)?;
        let stored = blake3::Hash::from_hex(&record.secret_hash).map_err(|_| invalid())?;
        // blake3::Hash compares in constant time.
        if blake3::hash(secret.as_bytes()) != stored {
            return Err(invalid());
        }
        let role = record.role.parse().map_err(|_| invalid())?;
        Identity::new(role, name).map_err(|e| e.to_string())
    }

    async fn record(&self, name: &str) -> Result<Option<TokenRecord>, String> {
        if let Some((record, at)) = self.cache().get(name)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(record.clone());
        }
        let kv = self
            .store
            .get(&model::token_key(name))
            .await
            .map_err(|error| format!("cannot check the API token: {error}"))?;
        let record = match kv {
            Some(kv) => Some(
                serde_json::from_slice::<TokenRecord>(&kv.value)
                    .map_err(|_| format!("token record {name:?} is unreadable"))?,
            ),
            None => None,
        };
        {
            let mut cache = self.cache();
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(name.to_owned(), (record.clone(), Instant::now()));
        }
        Ok(record)
    }

    fn forget(&self, name: &str) {
        self.cache().remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_token_proves_its_identity_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"))
            .await
            .unwrap();
        let tokens = Tokens::new(store);
        let token = tokens
            .create("alice", Role::Operator, "admin root")
            .await
            .unwrap();
        let identity = tokens.verify(&token).await.unwrap();
        assert_eq!(identity, Identity::new(Role::Operator, "alice").unwrap());
        assert!(matches!(
            tokens.create("alice", Role::Admin, "x").await,
            Err(TokenError::Exists(_))
        ));
        let listed = tokens.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(!listed[0].secret_hash.is_empty());
        assert!(!format!("{listed:?}").contains(token.rsplit(':').next().unwrap()));
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 4.., "0000");
        let refused = tokens.verify(&forged).await.unwrap_err();
        assert!(!refused.contains(&forged[forged.len() - 64..]), "{refused}");
        assert!(tokens.revoke("alice").await.unwrap());
        assert!(tokens.verify(&token).await.is_err());
        assert!(tokens.verify("garbage").await.is_err());
    }
}
