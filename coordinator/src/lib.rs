//! The Haven coordinator: inventory, policies, scheduling and fenced job ownership.
//!
//! ```text
//!  CLI ──AdminService──┐                       ┌── etcd (cluster) or
//!                      ▼                       │   EmbeddedStore (one machine)
//!  workers ──WorkerService──▶ Replica ──MetaStore
//!                               │ leads?
//!                               ▼
//!                             Leader: cache of the store + decisions (placement,
//!                             rounds, reaping dead workers, the fenced commit)
//! ```
//!
//! Every replica serves gRPC; only the leader answers, the others point to it. See
//! ARCHITECTURE.md ("The cluster") for the fencing argument.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod console;
pub mod cron;
pub mod http;
pub mod leader;
pub mod model;
pub mod notify;
pub mod placement;
pub mod policy;
pub mod replica;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use haven_metrics::HttpSecurity;
use haven_proto::v1::admin_service_server::AdminServiceServer;
use haven_proto::v1::worker_service_server::WorkerServiceServer;
use tokio_util::sync::CancellationToken;

pub use config::CoordinatorConfig;
use leader::LeaderSettings;
use replica::{Replica, ReplicaSettings};
use service::CoordinatorService;
use store::MetaStore;

/// Why a coordinator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    /// The metadata store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The HTTP listener (`/metrics`, `/healthz`) could not start.
    #[error(transparent)]
    Http(#[from] haven_metrics::BindError),
    /// The TLS files could not be used.
    #[error("TLS: {0}")]
    Tls(#[from] haven_tls::TlsError),
    /// A webhook's files could not be used.
    #[error(transparent)]
    Notify(#[from] notify::NotifyError),
}

/// Longest a unary call may take (the longest is a worker's 30 s long poll).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Calls in flight per connection.
const CONCURRENCY_PER_CONNECTION: usize = 64;
/// HTTP/2 streams per connection (bounds `WatchJob` streams per client connection).
const MAX_STREAMS: u32 = 128;

/// Opens the store a configuration names: etcd when endpoints are given, the
/// embedded file otherwise.
pub async fn open_store(
    config: &CoordinatorConfig,
) -> Result<Arc<dyn MetaStore>, store::StoreError> {
    if config.etcd.is_empty() {
        if config.etcd_security != config::EtcdSecurity::default() {
            tracing::warn!(
                "[etcd_security] is ignored: no etcd endpoints, the embedded store is used"
            );
        }
        Ok(store::embedded::EmbeddedStore::open(&config.state_path).await?)
    } else {
        let store =
            Arc::new(store::etcd::EtcdStore::connect(&config.etcd, &config.etcd_security).await?);
        store.follow_credentials(&config.etcd, &config.etcd_security);
        Ok(store)
    }
}

/// Runs one replica until `shutdown`: gRPC, the HTTP endpoints (with the web
/// console) and the election.
pub async fn run(
    config: CoordinatorConfig,
    store: Arc<dyn MetaStore>,
    shutdown: CancellationToken,
) -> Result<(), CoordinatorError> {
    let mut registry = haven_metrics::Registry::new();
    let job_metrics = leader::JobMetrics::register(&mut registry);
    let notifier = notify::Notifier::start(
        &config.notify,
        &config.id,
        notify::NotifyMetrics::register(&mut registry),
        &shutdown,
    )?;
    let settings = ReplicaSettings {
        id: config.id.clone(),
        advertise_url: config.advertise_url(),
        leader_lease: Duration::from_secs(config.leader_lease_seconds),
        tick: Duration::from_millis(config.tick_ms),
        leader: LeaderSettings {
            worker_lease: Duration::from_secs(config.worker_lease_seconds),
            default_max_per_host: config.default_max_per_host.max(1),
            default_max_per_worker: config.default_max_per_worker.max(1),
            job_history: Duration::from_secs(config.job_history_hours.saturating_mul(3600)),
            inventory_grace: Duration::from_secs(config.inventory_grace_minutes.saturating_mul(60)),
            job_metrics,
            notifier,
        },
    };
    let replica = Replica::new(store.clone(), settings);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| CoordinatorError::Listen {
            address: config.listen.to_string(),
            source,
        })?;
    let tls = match &config.tls {
        Some(tls) => {
            let reloading = tls.reloading("coordinator gRPC")?;
            reloading.watch(shutdown.clone());
            Some(reloading)
        }
        None => {
            if config.insecure && !config.listen.ip().is_loopback() {
                tracing::warn!(listen = %config.listen, "insecure = true: serving plain gRPC off loopback; anyone on the network can read the traffic and steal API tokens");
            }
            None
        }
    };
    let tokens = Arc::new(auth::tokens::Tokens::new(store.clone()));
    let audit = Arc::new(auth::audit::AuditLog::new(store.clone()));
    if let Some(address) = config.http_listen {
        let security = match &config.tls {
            Some(tls) => HttpSecurity::tls(tls, "coordinator HTTP", &shutdown)?,
            None => HttpSecurity::Plain {
                insecure: config.insecure,
            },
        };
        let http = haven_metrics::MetricsServer::bind(address, security).await?;
        let port = http
            .local_addr()
            .map_or(address.port(), |bound| bound.port());
        let console = console::Console::new(replica.clone(), tokens.clone(), audit.clone(), port);
        let endpoints = Arc::new(http::ReplicaEndpoints::new(
            replica.clone(),
            registry,
            console,
        ));
        tokio::spawn(http.serve(endpoints, shutdown.clone()));
    }
    let election = tokio::spawn(replica.clone().run(shutdown.clone()));
    tokio::spawn(compact_history(
        store.clone(),
        replica.clone(),
        config.history_revisions,
        Duration::from_secs(config.compaction_seconds),
        shutdown.clone(),
    ));
    let service = CoordinatorService::new(
        replica.clone(),
        policy::RepositoryAllowlist::new(config.allowed_repositories.clone()),
        tokens.clone(),
        audit.clone(),
    );
    tokio::spawn(expire_audit(
        audit.clone(),
        replica.clone(),
        Duration::from_secs(config.audit_retention_days.saturating_mul(86_400)),
        shutdown.clone(),
    ));
    let incoming = haven_tls::listener::incoming(
        listener,
        tls,
        haven_tls::listener::ListenerSettings::default(),
        shutdown.clone(),
    );
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .concurrency_limit_per_connection(CONCURRENCY_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .layer(auth::AuthLayer::new(tokens, audit))
        .add_service(WorkerServiceServer::new(service.clone()).max_decoding_message_size(4 << 20))
        .add_service(AdminServiceServer::new(service).max_decoding_message_size(4 << 20))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await?;
    let _ = election.await;
    Ok(())
}

/// Runs `pass` every `period` on the leading replica only, until `shutdown`: the
/// upkeep every replica would otherwise repeat for nothing (expiring the same audit
/// records, compacting the same history).
async fn on_leader_every<F, Fut>(
    replica: Arc<replica::Replica>,
    period: Duration,
    shutdown: CancellationToken,
    mut pass: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        if matches!(replica.role().await, replica::Role::Leader(..)) {
            pass().await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// Removes audit records older than `retention`, every five minutes, on the leading
/// replica only. A pass with nothing to expire is one ranged read that returns no key.
async fn expire_audit(
    audit: Arc<auth::audit::AuditLog>,
    replica: Arc<replica::Replica>,
    retention: Duration,
    shutdown: CancellationToken,
) {
    on_leader_every(replica, Duration::from_secs(300), shutdown, || async {
        let before = model::now_ms()
            .saturating_sub(u64::try_from(retention.as_millis()).unwrap_or(u64::MAX));
        match audit.expire(before).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "expired old audit records"),
            Err(error) => tracing::warn!(%error, "cannot expire old audit records"),
        }
    })
    .await;
}

/// Compacts the metadata store's history to its newest `keep` revisions every
/// `period`, on the leading replica only, so etcd's database stays bounded however
/// many job generations pass (a no-op on the embedded store). etcd lets only its root
/// user compact: a coordinator confined to Haven's prefix is refused, says once that
/// etcd's own `--auto-compaction` must do it (as compose and the chart configure),
/// and stops asking.
async fn compact_history(
    store: Arc<dyn MetaStore>,
    replica: Arc<replica::Replica>,
    keep: u64,
    period: Duration,
    shutdown: CancellationToken,
) {
    let refused = std::sync::atomic::AtomicBool::new(false);
    on_leader_every(replica, period, shutdown, || async {
        use std::sync::atomic::Ordering::Relaxed;
        if refused.load(Relaxed) {
            return;
        }
        match store.compact_history(keep).await {
            Ok(Some(revision)) => {
                tracing::debug!(revision, "compacted the metadata store's history")
            }
            Ok(None) => {}
            Err(store::StoreError::Denied(_)) => {
                refused.store(true, Relaxed);
                tracing::info!(
                    "etcd does not let Haven's user compact; etcd's own --auto-compaction \
                     must bound its history"
                );
            }
            Err(error) => tracing::warn!(%error, "cannot compact the metadata store's history"),
        }
    })
    .await;
}
