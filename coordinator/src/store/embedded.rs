//! [`MetaStore`] in one file on local disk: the single-machine default (no etcd).
//!
//! The whole key space is small (workers, VMs, policies, jobs), so it lives in memory
//! in a `BTreeMap` and every transaction is also committed to a `redb` database before
//! it is acknowledged: reads never touch the disk, writes are crash-safe. Revisions
//! and compare semantics match etcd's, so the coordinator's fencing logic is the same
//! on both stores.
//!
//! Leases are kept in memory only. Keys still bound to a lease when the process
//! stopped are deleted when the store is opened again, exactly as if the lease had
//! expired: their owners (workers of the previous run) are gone anyway.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Compare, Counters, KeyValue, LeaseId, MetaStore, Op, Result, Revision, StoreError, StoreStats,
    TxnOutcome,
};

/// Key → (mod_revision, lease, value), encoded by [`encode`].
const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
/// `"revision"` → the store revision.
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// The embedded store. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Mutex<Inner>>,
    counters: Counters,
}

struct Inner {
    path: PathBuf,
    db: Database,
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    leases: HashMap<LeaseId, Lease>,
    next_lease: LeaseId,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
}

/// Locks the store's state; a poisoned lock (a panic while it was held) is an error,
/// never a panic of every later caller.
fn lock_inner(inner: &Mutex<Inner>) -> Result<std::sync::MutexGuard<'_, Inner>> {
    inner
        .lock()
        .map_err(|_| StoreError::Invalid("embedded store lock poisoned".into()))
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`, dropping keys of leases from a
    /// previous run, and starts the task that expires leases.
    pub async fn open(path: &Path) -> Result<Arc<Self>> {
        let path = path.to_path_buf();
        let inner = tokio::task::spawn_blocking(move || Inner::open(path))
            .await
            .map_err(|error| StoreError::Invalid(format!("store task failed: {error}")))??;
        let store = Arc::new(Self {
            inner: Arc::new(Mutex::new(inner)),
            counters: Counters::default(),
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                if let Err(error) = store.expire_leases().await {
                    tracing::warn!(%error, "cannot expire leases of the embedded store");
                }
            }
        });
        Ok(store)
    }

    /// Deletes the keys of every lease past its deadline.
    async fn expire_leases(&self) -> Result<()> {
        self.blocking(|inner| {
            let now = Instant::now();
            let expired: Vec<LeaseId> = inner
                .leases
                .iter()
                .filter(|(_, lease)| lease.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            for id in expired {
                inner.drop_lease(id)?;
            }
            Ok(())
        })
        .await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = lock_inner(&inner)?;
            work(&mut guard)
        })
        .await
        .map_err(|error| StoreError::Invalid(format!("store task failed: {error}")))?
    }
}

impl Inner {
    fn open(path: PathBuf) -> Result<Self> {
        let db = Database::create(&path).map_err(|error| embedded(&path, &error))?;
        let mut inner = Self {
            revision: 0,
            keys: BTreeMap::new(),
            leases: HashMap::new(),
            next_lease: 1,
            db,
            path,
        };
        inner.load()?;
        let orphans: Vec<String> = inner
            .keys
            .values()
            .filter(|kv| kv.lease != 0)
            .map(|kv| kv.key.clone())
            .collect();
        if !orphans.is_empty() {
            inner.apply(orphans.into_iter().map(Op::Delete).collect())?;
        }
        Ok(inner)
    }

    fn load(&mut self) -> Result<()> {
        let path = self.path.clone();
        let fail = |error: &dyn std::fmt::Display| embedded(&path, error);
        let read = self.db.begin_read().map_err(|e| fail(&e))?;
        match read.open_table(META) {
            Ok(meta) => {
                self.revision = meta
                    .get("revision")
                    .map_err(|e| fail(&e))?
                    .map(|value| value.value())
                    .unwrap_or(0);
            }
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(fail(&error)),
        }
        let table = match read.open_table(KEYS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(fail(&error)),
        };
        for entry in table.iter().map_err(|e| fail(&e))? {
            let (key, value) = entry.map_err(|e| fail(&e))?;
            let key = key.value().to_string();
            let kv = decode(&key, value.value())
                .ok_or_else(|| fail(&format!("corrupt record for key {key:?}")))?;
            self.keys.insert(key, kv);
        }
        Ok(())
    }

    /// Applies `ops` at a new revision: first to disk, then to memory.
    fn apply(&mut self, ops: Vec<Op>) -> Result<Revision> {
        let revision = self.revision + 1;
        let path = self.path.clone();
        let fail = |error: &dyn std::fmt::Display| embedded(&path, error);
        let write = self.db.begin_write().map_err(|e| fail(&e))?;
        let mut changes: Vec<(String, Option<KeyValue>)> = Vec::with_capacity(ops.len());
        {
            let mut table = write.open_table(KEYS).map_err(|e| fail(&e))?;
            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let kv = KeyValue {
                            key: key.clone(),
                            value,
                            mod_revision: revision,
                            lease,
                        };
                        table
                            .insert(key.as_str(), encode(&kv).as_slice())
                            .map_err(|e| fail(&e))?;
                        changes.push((key, Some(kv)));
                    }
                    Op::Delete(key) => {
                        table.remove(key.as_str()).map_err(|e| fail(&e))?;
                        changes.push((key, None));
                    }
                }
            }
            let mut meta = write.open_table(META).map_err(|e| fail(&e))?;
            meta.insert("revision", revision).map_err(|e| fail(&e))?;
        }
        write.commit().map_err(|e| fail(&e))?;
        self.revision = revision;
        for (key, kv) in changes {
            match kv {
                Some(kv) => self.keys.insert(key, kv),
                None => self.keys.remove(&key),
            };
        }
        Ok(revision)
    }

    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::Absent(key) => !self.keys.contains_key(key),
            Compare::ModRevision(key, revision) => self
                .keys
                .get(key)
                .is_some_and(|kv| kv.mod_revision == *revision),
        }
    }

    fn drop_lease(&mut self, id: LeaseId) -> Result<()> {
        self.leases.remove(&id);
        let keys: Vec<Op> = self
            .keys
            .values()
            .filter(|kv| kv.lease == id)
            .map(|kv| Op::Delete(kv.key.clone()))
            .collect();
        if !keys.is_empty() {
            self.apply(keys)?;
        }
        Ok(())
    }
}

fn embedded(path: &Path, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::Embedded {
        path: path.display().to_string(),
        reason: error.to_string(),
    }
}

/// `mod_revision (8, LE) | lease (8, LE) | value`.
fn encode(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + kv.value.len());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.lease.to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn decode(key: &str, bytes: &[u8]) -> Option<KeyValue> {
    let mod_revision = i64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let lease = i64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some(KeyValue {
        key: key.to_string(),
        value: bytes.get(16..)?.to_vec(),
        mod_revision,
        lease,
    })
}

#[async_trait]
impl MetaStore for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.counters.read();
        let inner = lock_inner(&self.inner)?;
        Ok(inner.keys.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.counters.read();
        let inner = lock_inner(&self.inner)?;
        Ok(inner
            .keys
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect())
    }

    async fn range(&self, start: &str, end: &str, limit: usize) -> Result<Vec<KeyValue>> {
        self.counters.read();
        if start >= end {
            return Ok(Vec::new());
        }
        let inner = lock_inner(&self.inner)?;
        Ok(inner
            .keys
            .range(start.to_string()..end.to_string())
            .take(limit)
            .map(|(_, kv)| kv.clone())
            .collect())
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        self.counters.write();
        self.blocking(move |inner| {
            if !compares.iter().all(|compare| inner.holds(compare)) {
                return Ok(TxnOutcome {
                    succeeded: false,
                    revision: inner.revision,
                });
            }
            for op in &ops {
                if let Op::Put { lease, key, .. } = op
                    && *lease != 0
                    && !inner.leases.contains_key(lease)
                {
                    return Err(StoreError::Invalid(format!(
                        "put of {key} under unknown lease {lease}"
                    )));
                }
            }
            let revision = if ops.is_empty() {
                inner.revision
            } else {
                inner.apply(ops)?
            };
            Ok(TxnOutcome {
                succeeded: true,
                revision,
            })
        })
        .await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.counters.lease();
        let mut inner = lock_inner(&self.inner)?;
        let id = inner.next_lease;
        inner.next_lease += 1;
        inner.leases.insert(
            id,
            Lease {
                ttl,
                deadline: Instant::now() + ttl,
            },
        );
        Ok(id)
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        let mut inner = lock_inner(&self.inner)?;
        let now = Instant::now();
        match inner.leases.get_mut(&id) {
            Some(lease) if lease.deadline > now => {
                lease.deadline = now + lease.ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    async fn revoke(&self, id: LeaseId) -> Result<()> {
        self.counters.lease();
        self.blocking(move |inner| inner.drop_lease(id)).await
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `path` again once the previous handle is gone: the lease-expiry task may
    /// still hold it for the length of one pass after the test dropped its own.
    async fn reopen(path: &Path) -> Arc<EmbeddedStore> {
        for _ in 0..100 {
            if let Ok(store) = EmbeddedStore::open(path).await {
                return store;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        EmbeddedStore::open(path).await.unwrap()
    }

    #[tokio::test]
    async fn compares_revisions_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = EmbeddedStore::open(&path).await.unwrap();
            let first = store
                .txn(vec![Compare::Absent("a".into())], vec![Op::put("a", "1")])
                .await
                .unwrap();
            assert!(first.succeeded);
            let again = store
                .txn(vec![Compare::Absent("a".into())], vec![Op::put("a", "2")])
                .await
                .unwrap();
            assert!(!again.succeeded, "create-only must fail on an existing key");
            let stale = store
                .txn(
                    vec![Compare::ModRevision("a".into(), first.revision + 7)],
                    vec![Op::put("a", "3")],
                )
                .await
                .unwrap();
            assert!(!stale.succeeded, "a stale revision must not win");
            let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
            store
                .txn(vec![], vec![Op::put_leased("owned", "w1", lease)])
                .await
                .unwrap();
        }
        let store = reopen(&path).await;
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!(a.value, b"1");
        assert!(
            store.get("owned").await.unwrap().is_none(),
            "keys of a previous run's leases are gone"
        );
        let next = store.txn(vec![], vec![Op::put("b", "x")]).await.unwrap();
        assert!(next.revision > a.mod_revision, "revisions keep growing");
    }

    #[tokio::test]
    async fn expired_lease_deletes_its_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb"))
            .await
            .unwrap();
        let lease = store.grant_lease(Duration::from_millis(300)).await.unwrap();
        store
            .txn(vec![], vec![Op::put_leased("jobs/1/owner", "w", lease)])
            .await
            .unwrap();
        store.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(store.get("jobs/1/owner").await.unwrap().is_none());
        assert!(matches!(
            store.keep_alive(lease).await,
            Err(StoreError::LeaseNotFound(_))
        ));
        assert_eq!(store.list("jobs/").await.unwrap(), vec![]);
    }
}
