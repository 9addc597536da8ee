//! One coordinator replica: campaigns for leadership in the store, and while it leads,
//! runs the scheduling loop over a [`Leader`] built fresh from the store.
//!
//! Election: the replica that creates the leader key (create-only, under its own
//! lease) leads; its leadership is that key's revision, checked by every write it
//! makes. It renews the lease every second; if renewal fails for as long as the lease
//! lasts (store unreachable, quorum lost), it steps down before the lease can expire
//! elsewhere, so two replicas never both believe they lead for longer than the clock
//! skew between them, and even then the stale one's writes fail the revision check.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::leader::{Leader, LeaderError, LeaderSettings};
use crate::model;
use crate::store::{Compare, MetaStore, Op};

/// What this replica is now.
#[derive(Clone)]
pub enum Role {
    /// Another replica (named when known) leads, or none does yet.
    Follower(Option<String>),
    /// This replica leads.
    Leader(Arc<Leader>),
}

/// Settings of a replica.
#[derive(Debug, Clone)]
pub struct ReplicaSettings {
    /// Id in logs and `GetLeader`.
    pub id: String,
    /// URL other replicas, workers and the CLI reach this replica at.
    pub advertise_url: String,
    /// Lease of the leader key: the longest a dead leader is waited for.
    pub leader_lease: Duration,
    /// Pause between scheduling passes.
    pub tick: Duration,
    /// Settings of the leader's decisions.
    pub leader: LeaderSettings,
}

/// A replica and its current role.
pub struct Replica {
    store: Arc<dyn MetaStore>,
    settings: ReplicaSettings,
    role: RwLock<Role>,
}

impl Replica {
    /// A replica that has not campaigned yet.
    pub fn new(store: Arc<dyn MetaStore>, settings: ReplicaSettings) -> Arc<Self> {
        Arc::new(Self {
            store,
            settings,
            role: RwLock::new(Role::Follower(None)),
        })
    }

    /// The current role.
    pub async fn role(&self) -> Role {
        self.role.read().await.clone()
    }

    /// Whether the metadata store answers a read within two seconds, for `/healthz`.
    pub async fn store_reachable(&self) -> Result<(), String> {
        match tokio::time::timeout(
            Duration::from_secs(2),
            self.store.get(&crate::model::leader_key()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("no answer within 2 s".into()),
        }
    }

    /// Requests this replica's metadata store served and failed, for `/metrics`: on
    /// every replica, since a follower's campaign sees the store fail too (and there
    /// is no leader when the store is down).
    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    /// This replica's settings.
    pub fn settings(&self) -> &ReplicaSettings {
        &self.settings
    }

    /// Campaigns, leads and steps down until `shutdown`; resigns on the way out.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match self.campaign().await {
                Ok(Some((lease, revision))) => {
                    tracing::info!(replica = self.settings.id, revision, "leading");
                    self.lead(lease, revision, &shutdown).await;
                    *self.role.write().await = Role::Follower(None);
                    if shutdown.is_cancelled() {
                        let _ = self.store.revoke(lease).await;
                        return;
                    }
                    tracing::warn!(replica = self.settings.id, "stepped down");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "cannot campaign; is the store reachable?");
                    *self.role.write().await = Role::Follower(None);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Tries once to become leader: `Some((lease, revision))` on success; otherwise
    /// records who leads.
    async fn campaign(&self) -> Result<Option<(i64, i64)>, LeaderError> {
        let key = model::leader_key();
        if let Some(current) = self.store.get(&key).await? {
            let url = String::from_utf8_lossy(&current.value).into_owned();
            *self.role.write().await = Role::Follower(Some(url));
            return Ok(None);
        }
        let lease = self.store.grant_lease(self.settings.leader_lease).await?;
        let outcome = self
            .store
            .txn(
                vec![Compare::Absent(key.clone())],
                vec![Op::put_leased(
                    key,
                    self.settings.advertise_url.clone(),
                    lease,
                )],
            )
            .await?;
        if outcome.succeeded {
            Ok(Some((lease, outcome.revision)))
        } else {
            let _ = self.store.revoke(lease).await;
            Ok(None)
        }
    }

    /// Leads until the lease cannot be renewed, the state cannot be loaded, a write
    /// finds leadership lost, or shutdown.
    async fn lead(&self, lease: i64, revision: i64, shutdown: &CancellationToken) {
        let leader =
            match Leader::load(self.store.clone(), revision, self.settings.leader.clone()).await {
                Ok(leader) => Arc::new(leader),
                Err(error) => {
                    tracing::warn!(%error, "cannot load the state; resigning");
                    let _ = self.store.revoke(lease).await;
                    return;
                }
            };
        *self.role.write().await = Role::Leader(leader.clone());
        // Renewal runs on its own task: a long scheduling pass must never delay it.
        let lost = shutdown.child_token();
        let renewal = tokio::spawn(renew_lease(
            self.store.clone(),
            lease,
            self.settings.leader_lease,
            lost.clone(),
        ));
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = lost.cancelled() => break,
                _ = tick.tick() => {
                    match leader.tick().await {
                        Ok(report)
                            if report.created + report.assigned + report.requeued + report.expired
                                > 0 =>
                        {
                            tracing::debug!(?report, "scheduling pass");
                        }
                        Ok(_) => {}
                        Err(LeaderError::NotLeader) => break,
                        Err(error) => tracing::warn!(%error, "scheduling pass failed"),
                    }
                }
            }
        }
        lost.cancel();
        let _ = renewal.await;
    }
}

/// Renews the leader lease every quarter of its length; cancels `lost` when renewal has
/// failed for long enough that the lease may run out (stepping down with a margin).
async fn renew_lease(
    store: Arc<dyn MetaStore>,
    lease: i64,
    length: Duration,
    lost: CancellationToken,
) {
    let every = (length / 4).max(Duration::from_millis(200));
    let mut last_renewal = Instant::now();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tick.tick() => {}
        }
        match store.keep_alive(lease).await {
            Ok(()) => last_renewal = Instant::now(),
            Err(error) => {
                tracing::warn!(%error, "cannot renew the leader lease");
                if matches!(error, crate::store::StoreError::LeaseNotFound(_))
                    || last_renewal.elapsed() + every * 2 >= length
                {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}
