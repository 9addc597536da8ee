//! A [`MetaStore`] that misbehaves on purpose, for tests of the leader under store
//! faults (the object-store twin is `haven_testkit::unreliable`).
//!
//! [`UnreliableMetaStore`] wraps another store and, per call, draws from a seeded
//! generator whether to fail it before it reaches the store (reads, transactions,
//! lease calls: etcd unreachable), to apply a transaction and lose its reply (the
//! case etcd clients cannot tell from a failure), or to delay it. It lives in the
//! library, beside the trait, so that the leader's own unit tests can use it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{
    Compare, KeyValue, LeaseId, MetaStore, Op, Result, Revision, StoreError, StoreStats, TxnOutcome,
};

/// Probabilities per call, each in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreFaultRates {
    /// A call fails before it reaches the store.
    pub error: f64,
    /// A transaction is applied and its reply lost (drawn after `error`).
    pub lost_reply: f64,
    /// A call waits up to `max_delay` first.
    pub delay: f64,
    /// The longest injected delay.
    pub max_delay: Duration,
}

/// Faults injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFaultCounts {
    /// Calls failed before reaching the store.
    pub errors: u64,
    /// Transactions applied whose reply was lost.
    pub lost_replies: u64,
    /// Calls delayed.
    pub delays: u64,
}

/// A store that injects faults into the calls it passes to another.
pub struct UnreliableMetaStore {
    inner: Arc<dyn MetaStore>,
    rates: StoreFaultRates,
    rng: Mutex<StdRng>,
    enabled: AtomicBool,
    errors: AtomicU64,
    lost_replies: AtomicU64,
    delays: AtomicU64,
}

/// What one call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    LostReply,
}

impl UnreliableMetaStore {
    /// Wraps `inner`; faults at `rates` from a generator seeded with `seed`, on from
    /// the start.
    pub fn new(inner: Arc<dyn MetaStore>, rates: StoreFaultRates, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            inner,
            rates,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            enabled: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            lost_replies: AtomicU64::new(0),
            delays: AtomicU64::new(0),
        })
    }

    /// Turns fault injection on or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Faults injected so far.
    pub fn counts(&self) -> StoreFaultCounts {
        StoreFaultCounts {
            errors: self.errors.load(Ordering::Relaxed),
            lost_replies: self.lost_replies.load(Ordering::Relaxed),
            delays: self.delays.load(Ordering::Relaxed),
        }
    }

    /// Draws the call's fault (a lost reply only where `can_lose_reply`), waits out
    /// any delay, and fails a call drawn to fail before reaching the store.
    async fn before(&self, can_lose_reply: bool) -> Result<Fault> {
        if !self.enabled.load(Ordering::SeqCst) {
            return Ok(Fault::None);
        }
        let (pick, delay_pick, delay_len) = {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            (
                rng.random::<f64>(),
                rng.random::<f64>(),
                rng.random::<f64>(),
            )
        };
        if delay_pick < self.rates.delay {
            self.delays.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.rates.max_delay.mul_f64(delay_len)).await;
        }
        if pick < self.rates.error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(
                "injected fault: store unreachable".into(),
            ));
        }
        if can_lose_reply && pick < self.rates.error + self.rates.lost_reply {
            return Ok(Fault::LostReply);
        }
        Ok(Fault::None)
    }
}

#[async_trait]
impl MetaStore for UnreliableMetaStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.before(false).await?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        self.before(false).await?;
        self.inner.list(prefix).await
    }

    async fn range(&self, start: &str, end: &str, limit: usize) -> Result<Vec<KeyValue>> {
        self.before(false).await?;
        self.inner.range(start, end, limit).await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome> {
        let fault = self.before(true).await?;
        let outcome = self.inner.txn(compares, ops).await?;
        if fault == Fault::LostReply {
            self.lost_replies.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Unavailable(
                "injected fault: transaction applied, reply lost".into(),
            ));
        }
        Ok(outcome)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.before(false).await?;
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.before(false).await?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.before(false).await?;
        self.inner.revoke(lease).await
    }

    async fn compact_history(&self, keep: u64) -> Result<Option<Revision>> {
        self.before(false).await?;
        self.inner.compact_history(keep).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}
