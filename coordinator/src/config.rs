//! `coordinator.toml`.
//!
//! ```toml
//! id = "coord-1"
//! listen = "127.0.0.1:7700"               # gRPC
//! advertise_url = "https://10.0.0.1:7700" # default: https://LISTEN (http:// without TLS)
//! http_listen = "127.0.0.1:7701"          # /metrics and /healthz (optional; over [tls]
//!                                         # when present: /metrics needs a viewer cert)
//! etcd = ["https://10.0.0.2:2379"]        # absent or empty: embedded store
//! state_path = "/var/lib/haven/coordinator.redb"   # the embedded store's file
//! worker_lease_seconds = 10
//! leader_lease_seconds = 5
//! tick_ms = 500
//! default_max_per_host = 2                # limits of `haven job run` jobs
//! default_max_per_worker = 2
//! job_history_hours = 168                 # finished jobs are forgotten after this
//! inventory_grace_minutes = 60            # a VM its host no longer reports is forgotten after this
//! allowed_repositories = ["s3://haven/*"]  # globs; policies and jobs may use only these
//! audit_retention_days = 365
//! history_revisions = 10000               # etcd: revisions of history kept, older compacted
//! compaction_seconds = 300                # etcd: how often the leader compacts
//! insecure = false                        # true: allow plain gRPC/HTTP off loopback (warns)
//!
//! [tls]                                   # required unless `listen` is loopback
//! cert = "/etc/haven/coordinator.pem"
//! key = "/etc/haven/coordinator-key.pem"
//! client_ca = "/etc/haven/ca.pem"          # client certificates (workers, admins)
//!
//! [etcd_security]                         # TLS and auth towards etcd (etcd_security.rs)
//! ca_file = "/etc/haven/etcd-ca.pem"
//! cert_file = "/etc/haven/etcd-client.pem"
//! key_file = "/etc/haven/etcd-client-key.pem"
//! user = "haven"
//! password_file = "/etc/haven/etcd-password"
//!
//! [notify]                                # webhooks on job failure and RPO breach
//! cluster = "prod-eu"                      # (notify.rs)
//! [[notify.webhook]]
//! url = "https://hooks.example.com/haven"
//! secret_file = "/etc/haven/webhook-secret"
//! ```

mod etcd_security;
mod notify;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

pub use etcd_security::{EtcdSecurity, EtcdTransport};
pub use notify::{NotifyConfig, WebhookConfig};

/// A coordinator replica's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Replica id.
    #[serde(default = "default_id")]
    pub id: String,
    /// gRPC address.
    pub listen: SocketAddr,
    /// URL others reach this replica at.
    #[serde(default)]
    pub advertise_url: Option<String>,
    /// Address of `/metrics` and `/healthz`.
    #[serde(default)]
    pub http_listen: Option<SocketAddr>,
    /// etcd endpoints; empty for the embedded store.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// File of the embedded store.
    #[serde(default = "default_state_path")]
    pub state_path: PathBuf,
    /// Worker lease.
    #[serde(default = "default_worker_lease")]
    pub worker_lease_seconds: u64,
    /// Leader lease.
    #[serde(default = "default_leader_lease")]
    pub leader_lease_seconds: u64,
    /// Pause between scheduling passes.
    #[serde(default = "default_tick")]
    pub tick_ms: u64,
    /// Host limit of manual jobs.
    #[serde(default = "default_limit")]
    pub default_max_per_host: u32,
    /// Worker limit of manual jobs.
    #[serde(default = "default_limit")]
    pub default_max_per_worker: u32,
    /// How long finished jobs stay listed: without a limit every job ever run would
    /// stay in etcd (whose database is capped, 2 GiB by default) and in the leader's
    /// memory.
    #[serde(default = "default_job_history")]
    pub job_history_hours: u64,
    /// How long a VM may be missing from its host's inventory before its record is
    /// deleted: a VM deleted on its host would otherwise get a failing job every
    /// round. The grace keeps a VM that misses a report or two (its QMP socket busy,
    /// libvirt restarting) from being forgotten; 0 forgets at the first report
    /// without it.
    #[serde(default = "default_inventory_grace")]
    pub inventory_grace_minutes: u64,
    /// Repository URL globs policies and `haven job run` may name.
    #[serde(default)]
    pub allowed_repositories: Vec<String>,
    /// How long audit records are kept.
    #[serde(default = "default_audit_retention")]
    pub audit_retention_days: u64,
    /// Revisions of etcd's history the leader keeps when it compacts: every job
    /// update, heartbeat record and policy write is a revision, and etcd keeps each
    /// until compacted, so without compaction its database only grows.
    #[serde(default = "default_history_revisions")]
    pub history_revisions: u64,
    /// How often the leader compacts etcd's history.
    #[serde(default = "default_compaction_seconds")]
    pub compaction_seconds: u64,
    /// Serve plain gRPC and HTTP on a non-loopback address (logged as a warning at
    /// every start).
    #[serde(default)]
    pub insecure: bool,
    /// TLS of the gRPC listener and of `http_listen`.
    #[serde(default)]
    pub tls: Option<haven_tls::listener::ServerTlsFiles>,
    /// TLS and credentials towards etcd: plain TCP only on loopback otherwise.
    #[serde(default)]
    pub etcd_security: EtcdSecurity,
    /// Webhooks called on job failures and RPO breaches.
    #[serde(default)]
    pub notify: NotifyConfig,
}

/// Whether `host` names this machine only: `localhost` or a loopback address.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

fn default_id() -> String {
    "coordinator".into()
}
fn default_state_path() -> PathBuf {
    PathBuf::from("haven-coordinator.redb")
}
fn default_worker_lease() -> u64 {
    10
}
fn default_leader_lease() -> u64 {
    5
}
fn default_tick() -> u64 {
    500
}
fn default_job_history() -> u64 {
    7 * 24
}
fn default_inventory_grace() -> u64 {
    60
}
fn default_audit_retention() -> u64 {
    365
}
fn default_history_revisions() -> u64 {
    10_000
}
fn default_compaction_seconds() -> u64 {
    300
}
fn default_limit() -> u32 {
    2
}

impl CoordinatorConfig {
    /// Parses a configuration file's text; errors name the line.
    pub fn parse(file_name: &str, text: &str) -> Result<Self, String> {
        let config: Self = haven_config::parse(file_name, text)?;
        if config.worker_lease_seconds < 2 || config.leader_lease_seconds < 2 {
            return Err(format!("{file_name}: leases must be at least 2 seconds"));
        }
        if config.tick_ms == 0 {
            return Err(format!("{file_name}: tick_ms must be positive"));
        }
        if config.compaction_seconds == 0 {
            return Err(format!("{file_name}: compaction_seconds must be positive"));
        }
        if config.job_history_hours == 0 {
            return Err(format!("{file_name}: job_history_hours must be positive"));
        }
        if config.tls.is_none() && !config.listen.ip().is_loopback() && !config.insecure {
            return Err(format!(
                "{file_name}: listen = {} is not loopback: add a [tls] table (see `haven pki`), \
                 or set insecure = true to serve plain gRPC anyway",
                config.listen
            ));
        }
        if let Some(http) = config.http_listen {
            match &config.tls {
                Some(tls) if tls.client_ca.is_none() => {
                    return Err(format!(
                        "{file_name}: http_listen is served over [tls], where /metrics is read \
                         with a viewer certificate: add client_ca to [tls]"
                    ));
                }
                None if !http.ip().is_loopback() && !config.insecure => {
                    return Err(format!(
                        "{file_name}: http_listen = {http} is not loopback: add a [tls] table \
                         (see `haven pki`), or set insecure = true to serve plain HTTP anyway"
                    ));
                }
                _ => {}
            }
        }
        config
            .etcd_transport()
            .map_err(|error| format!("{file_name}: {error}"))?;
        config
            .notify
            .check()
            .map_err(|error| format!("{file_name}: {error}"))?;
        Ok(config)
    }

    /// Checks `[etcd_security]` against the etcd endpoints (call it again after
    /// replacing them, as `--etcd` does).
    pub fn etcd_transport(&self) -> Result<EtcdTransport, String> {
        self.etcd_security.check(&self.etcd)
    }

    /// The URL to advertise.
    pub fn advertise_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.advertise_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.listen))
    }
}
