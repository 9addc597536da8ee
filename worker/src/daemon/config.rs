//! `worker.toml`.
//!
//! ```toml
//! id = "worker-1"
//! coordinators = ["https://10.0.0.1:7700", "https://10.0.0.2:7700"]
//! max_jobs = 2
//! scratch_dir = "/var/tmp"            # fleecing overlays; QEMU must be able to write here
//! connections = 4                     # NBD connections per disk
//! read_limit_bytes_per_second = 0     # cap on reads from the hypervisors (0: none)
//! inventory_interval_seconds = 30
//! drain_seconds = 120                  # on SIGTERM: time running jobs get to finish
//! metrics_listen = "127.0.0.1:9465"   # optional: /metrics and /healthz; off loopback
//!                                     # only with [metrics_tls] (/metrics: viewer certs)
//! # token_file = "/etc/haven/worker.token"  # instead of a certificate: an API token
//!
//! [tls]                               # for https:// coordinators
//! ca = "/etc/haven/ca.pem"
//! cert = "/etc/haven/worker-1.pem"    # names haven://worker/worker-1 (`haven pki issue`)
//! key = "/etc/haven/worker-1-key.pem"
//!
//! [metrics_tls]                       # TLS of metrics_listen (`haven pki issue worker
//! cert = "/etc/haven/worker-1.pem"    #   worker-1 --dns HOST` serves both uses)
//! key = "/etc/haven/worker-1-key.pem"
//! client_ca = "/etc/haven/ca.pem"     # scrapers' viewer certificates
//!
//! [[hosts]]
//! name = "kvm-1"
//! qmp_dir = "/run/haven/kvm-1"        # every NAME.qmp socket in it is VM NAME (and a
//!                                     # NAME.nbd beside it, that QEMU's own NBD server;
//!                                     # a NAME.qga, its guest agent: backups freeze)
//! labels = { rack = "a" }             # labels of every VM on this host
//!
//! [[hosts]]
//! name = "kvm-2"
//! vms = [{ name = "db-1", qmp = "/run/qemu/db-1.qmp", nbd_server = "/run/qemu/db-1.nbd",
//!         guest_agent = "/run/qemu/db-1.qga" }]
//!
//! [[hosts]]
//! name = "kvm-3"
//! libvirt = "qemu+ssh://root@kvm-3/system"   # every running domain is a VM
//! qemu_user = "libvirt-qemu"                 # owns the scratch files there
//!
//! [[hosts]]
//! name = "vc-1"
//! vcenter = "https://vcenter.example/sdk"     # every VM of the vCenter (or ESXi host),
//!                                             # backed up through the vSphere API
//! vcenter_credentials_file = "/etc/haven/vcenter.toml"  # user = "…", password = "…"
//! vcenter_ca_file = "/etc/haven/vcenter-ca.pem"        # optional: else the system's CAs
//!
//! [snapshot]                          # around the snapshot point of live backups
//! freeze_limit_seconds = 10           # guest file systems frozen at most this long
//!                                     # (freeze + snapshot point); thawed when it runs out
//! pre_hook = "/etc/haven/hooks/pre"   # sh -c, before the freeze (HAVEN_VM, HAVEN_HOOK)
//! post_hook = "/etc/haven/hooks/post" # after the thaw, always (HAVEN_RESULT=ok|failed|cancelled)
//! hook_timeout_seconds = 60           # a hook running longer is killed (its whole group)
//!
//! [boot_tests]                        # boot-test jobs (policies' `boot_test`)
//! max_running = 1                     # at once on this worker (each is a QEMU)
//! max_cpus = 2                        # per guest, whatever its configuration asks
//! max_memory_mib = 2048
//! dir = "/var/tmp"                    # sandbox folders (default: scratch_dir)
//!
//! [storage]                                   # optional: a storage key per job kind
//! append_key_file = "/etc/haven/storage-append.toml"   # backup, replicate
//! delete_key_file = "/etc/haven/storage-delete.toml"   # prune, gc
//! secondary_key_file = "/etc/haven/dr-append.toml"     # replication's destination
//! ```
//!
//! The repository password comes from `HAVEN_PASSWORD` or `--password-file`, not from
//! this file, so the file can be world-readable.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Deserialize;

/// A worker's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Unique worker id.
    pub id: String,
    /// gRPC URLs of the coordinator replicas.
    pub coordinators: Vec<String>,
    /// Jobs run at once.
    #[serde(default = "default_max_jobs")]
    pub max_jobs: u32,
    /// Folder for fleecing overlays.
    #[serde(default = "std::env::temp_dir")]
    pub scratch_dir: PathBuf,
    /// NBD connections per disk.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Cap on bytes read from the hypervisors per second, all jobs together (0: none).
    #[serde(default)]
    pub read_limit_bytes_per_second: u64,
    /// Seconds between inventory reports.
    #[serde(default = "default_inventory_interval")]
    pub inventory_interval_seconds: u64,
    /// On SIGTERM the worker takes no new job and gives its running jobs this long to
    /// finish; those still running then are handed back (failed as retryable) rather
    /// than left to the lease's expiry. The orchestrator's grace period
    /// (`stop_grace_period`, `terminationGracePeriodSeconds`) must be longer.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// Where `/metrics` and `/healthz` are served; none when absent. Plain HTTP only
    /// on loopback: elsewhere `[metrics_tls]` is required.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TLS of `metrics_listen`; its `client_ca` signs the scrapers' viewer certificates.
    #[serde(default)]
    pub metrics_tls: Option<haven_tls::listener::ServerTlsFiles>,
    /// Hypervisor hosts this worker reaches.
    #[serde(default)]
    pub hosts: Vec<HostConfig>,
    /// The worker's certificate and the cluster's CA.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// File whose first line is a worker API token (for workers without a
    /// certificate, on loopback).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Storage key files per job kind (`super::storage_keys`); without them jobs
    /// use the `AWS_*` environment.
    #[serde(default)]
    pub storage: super::storage_keys::StorageKeysConfig,
    /// Limits of boot-test jobs.
    #[serde(default)]
    pub boot_tests: BootTestsConfig,
    /// The freeze limit and hooks around live backups' snapshot points.
    #[serde(default)]
    pub snapshot: SnapshotConfig,
}

/// `[snapshot]`: what a live backup does around its snapshot point on this worker.
/// Worker-side, not in a policy: the hooks are commands run on this machine, which
/// only its operator may choose.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// The longest a guest's file systems stay frozen (the guest agent's freeze and
    /// the snapshot point); the guest is thawed when it runs out.
    #[serde(default = "default_freeze_limit")]
    pub freeze_limit_seconds: u64,
    /// Shell command run before the freeze; a failure makes the snapshot
    /// crash-consistent.
    #[serde(default)]
    pub pre_hook: Option<String>,
    /// Shell command run after the thaw, on every path.
    #[serde(default)]
    pub post_hook: Option<String>,
    /// How long a hook may run before it is killed.
    #[serde(default = "default_hook_timeout")]
    pub hook_timeout_seconds: u64,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            freeze_limit_seconds: default_freeze_limit(),
            pre_hook: None,
            post_hook: None,
            hook_timeout_seconds: default_hook_timeout(),
        }
    }
}

impl SnapshotConfig {
    /// The hooks as the backup driver runs them.
    pub fn hooks(&self) -> crate::adapters::hooks::SnapshotHooks {
        crate::adapters::hooks::SnapshotHooks {
            pre: self.pre_hook.clone(),
            post: self.post_hook.clone(),
            timeout: std::time::Duration::from_secs(self.hook_timeout_seconds),
        }
    }
}

fn default_freeze_limit() -> u64 {
    10
}
fn default_hook_timeout() -> u64 {
    60
}

/// `[boot_tests]`: how many boot tests a worker runs at once and how big each
/// sandbox may be. A boot test is a whole guest: a worker that backs up VMs must not
/// run more of them than it has CPUs and memory to spare.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootTestsConfig {
    /// Boot tests running at once; the coordinator is told, and hands out no more.
    #[serde(default = "default_max_boot_tests")]
    pub max_running: u32,
    /// Most virtual CPUs a guest gets.
    #[serde(default = "default_boot_cpus")]
    pub max_cpus: u32,
    /// Most memory a guest gets, in MiB.
    #[serde(default = "default_boot_memory")]
    pub max_memory_mib: u64,
    /// Folder of the sandboxes (overlays, serial logs); none: `scratch_dir`. Folders a
    /// killed worker left are removed when it starts again.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl Default for BootTestsConfig {
    fn default() -> Self {
        Self {
            max_running: default_max_boot_tests(),
            max_cpus: default_boot_cpus(),
            max_memory_mib: default_boot_memory(),
            dir: None,
        }
    }
}

fn default_max_boot_tests() -> u32 {
    1
}
fn default_boot_cpus() -> u32 {
    crate::boot::resources::Limits::default().max_cpus
}
fn default_boot_memory() -> u64 {
    crate::boot::resources::Limits::default().max_memory_mib
}

/// A client's TLS files: the CA its coordinators' certificates chain to, and its own
/// certificate (whose `haven://worker/ID` identity must be this worker's id).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTlsConfig {
    /// CA bundle (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    #[serde(default)]
    pub key: Option<PathBuf>,
}

/// A hypervisor host and how its VMs are reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Host name (shared by every worker that reaches it).
    pub name: String,
    /// Folder of `NAME.qmp` sockets, one per VM, each with `NAME.nbd` beside it when
    /// that QEMU already runs an NBD server.
    #[serde(default)]
    pub qmp_dir: Option<PathBuf>,
    /// VMs listed one by one.
    #[serde(default)]
    pub vms: Vec<VmConfig>,
    /// libvirt connection URI: every running domain is a VM, backed up through
    /// libvirt's backup API.
    #[serde(default)]
    pub libvirt: Option<String>,
    /// The user QEMU runs as under libvirt (it must own the scratch folder).
    #[serde(default = "default_qemu_user")]
    pub qemu_user: String,
    /// vSphere SDK endpoint (`https://HOST/sdk`) of a vCenter or ESXi host: every VM
    /// it holds is a VM of this host, backed up through the vSphere API
    /// (`docs/vsphere.md`).
    #[serde(default)]
    pub vcenter: Option<String>,
    /// The vSphere credentials file (`user`, `password`; TOML) of `vcenter`.
    #[serde(default)]
    pub vcenter_credentials_file: Option<PathBuf>,
    /// PEM file of the CAs that sign `vcenter`'s certificate (default: the system's).
    #[serde(default)]
    pub vcenter_ca_file: Option<PathBuf>,
    /// Labels of every VM on the host.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_qemu_user() -> String {
    "libvirt-qemu".into()
}

/// One VM and its QMP socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// VM name.
    pub name: String,
    /// QMP socket of its QEMU or qemu-storage-daemon.
    pub qmp: PathBuf,
    /// Unix socket of the NBD server that QEMU already runs (QEMU has only one);
    /// none: Haven starts its own.
    #[serde(default)]
    pub nbd_server: Option<PathBuf>,
    /// Unix socket of the VM's guest agent channel: backups freeze the guest's file
    /// systems through it (application-consistent); none: crash-consistent.
    #[serde(default)]
    pub guest_agent: Option<PathBuf>,
}

fn default_max_jobs() -> u32 {
    2
}
fn default_connections() -> usize {
    4
}
fn default_inventory_interval() -> u64 {
    30
}

fn default_drain_seconds() -> u64 {
    120
}

impl WorkerConfig {
    /// The folder of boot-test sandboxes.
    pub fn boot_dir(&self) -> PathBuf {
        self.boot_tests
            .dir
            .clone()
            .unwrap_or_else(|| self.scratch_dir.clone())
    }

    /// How to reach each `vcenter` host, by host name, every credentials file read
    /// now: at the worker's start and by `--check-config`, so a missing or bad file
    /// is found before any job needs it.
    pub fn vcenter_connections(
        &self,
    ) -> Result<HashMap<String, haven_vsphere::ConnectOptions>, String> {
        let mut connections = HashMap::new();
        for host in &self.hosts {
            if let Some(connect) = host.vcenter_connection()? {
                connections.insert(host.name.clone(), connect);
            }
        }
        Ok(connections)
    }

    /// Parses a configuration; errors name the line.
    pub fn parse(file_name: &str, text: &str) -> Result<Self, String> {
        let config: Self = haven_config::parse(file_name, text)?;
        if config.coordinators.is_empty() {
            return Err(format!(
                "{file_name}: coordinators must list at least one URL"
            ));
        }
        if config.max_jobs == 0 {
            return Err(format!("{file_name}: max_jobs must be at least 1"));
        }
        if config.snapshot.freeze_limit_seconds == 0 || config.snapshot.hook_timeout_seconds == 0 {
            return Err(format!(
                "{file_name}: [snapshot] freeze_limit_seconds and hook_timeout_seconds must be \
                 at least 1"
            ));
        }
        let boot = &config.boot_tests;
        if boot.max_running == 0 || boot.max_cpus == 0 {
            return Err(format!(
                "{file_name}: [boot_tests] max_running and max_cpus must be at least 1"
            ));
        }
        if boot.max_memory_mib < crate::boot::resources::MIN_MEMORY_MIB {
            return Err(format!(
                "{file_name}: [boot_tests] max_memory_mib must be at least {} (a smaller \
                 guest does not boot)",
                crate::boot::resources::MIN_MEMORY_MIB
            ));
        }
        if let Some(tls) = &config.metrics_tls
            && tls.client_ca.is_none()
        {
            return Err(format!(
                "{file_name}: [metrics_tls] needs client_ca: /metrics over TLS is read with \
                 viewer certificates of that CA"
            ));
        }
        if let Some(tls) = &config.tls
            && tls.cert.is_some() != tls.key.is_some()
        {
            return Err(format!(
                "{file_name}: [tls] needs both cert and key, or neither"
            ));
        }
        for host in &config.hosts {
            host.check()
                .map_err(|reason| format!("{file_name}: host {}: {reason}", host.name))?;
        }
        Ok(config)
    }

    /// How the worker authenticates to the coordinators; certificate files are
    /// watched until `shutdown`.
    pub fn security(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Result<haven_proto::ClientSecurity, haven_tls::TlsError> {
        let (ca, identity) = match &self.tls {
            Some(tls) => (
                Some(tls.ca.as_path()),
                tls.cert.clone().zip(tls.key.clone()),
            ),
            None => (None, None),
        };
        haven_proto::ClientSecurity::from_files(
            ca,
            identity,
            self.token_file.as_deref(),
            Some(shutdown.clone()),
        )
    }
}

impl HostConfig {
    /// A `vcenter` host lists its VMs itself and needs its credentials; the vCenter
    /// options are refused elsewhere so a typo cannot silently drop them.
    fn check(&self) -> Result<(), String> {
        match &self.vcenter {
            Some(_) if self.qmp_dir.is_some() || !self.vms.is_empty() || self.libvirt.is_some() => {
                Err("a vcenter host cannot also have qmp_dir, vms or libvirt".into())
            }
            Some(_) if self.vcenter_credentials_file.is_none() => {
                Err("vcenter needs vcenter_credentials_file".into())
            }
            None if self.vcenter_credentials_file.is_some() || self.vcenter_ca_file.is_some() => {
                Err("vcenter_credentials_file and vcenter_ca_file need vcenter".into())
            }
            _ => Ok(()),
        }
    }

    /// How to connect to this host's vCenter, its credentials read now; `None` for a
    /// host that is not a vCenter.
    pub fn vcenter_connection(&self) -> Result<Option<haven_vsphere::ConnectOptions>, String> {
        let Some(url) = &self.vcenter else {
            return Ok(None);
        };
        let file = self
            .vcenter_credentials_file
            .as_deref()
            .ok_or_else(|| format!("host {}: vcenter needs vcenter_credentials_file", self.name))?;
        let credentials = haven_vsphere::Credentials::from_file(file)
            .map_err(|error| format!("host {}: {error}", self.name))?;
        Ok(Some(haven_vsphere::ConnectOptions {
            url: url.clone(),
            credentials,
            ca_file: self.vcenter_ca_file.clone(),
        }))
    }

    /// Every VM on the host now, listed ones first.
    pub fn vm_sockets(&self) -> Vec<(String, PathBuf)> {
        self.vm_endpoints()
            .into_iter()
            .map(|vm| (vm.name, vm.qmp))
            .collect()
    }

    /// Every VM on the host now with how to reach it; a listed VM wins over a socket of
    /// the same name in `qmp_dir`.
    pub fn vm_endpoints(&self) -> Vec<VmConfig> {
        let mut list: Vec<VmConfig> = self.vms.clone();
        if let Some(dir) = &self.qmp_dir
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "qmp")
                    && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                    && !list.iter().any(|vm| vm.name == stem)
                {
                    // A QEMU runs one NBD server: when it already runs its own, its
                    // socket beside the monitor's is where Haven adds its exports.
                    let nbd = path.with_extension("nbd");
                    let agent = path.with_extension("qga");
                    list.push(VmConfig {
                        name: stem.to_string(),
                        qmp: path.clone(),
                        nbd_server: nbd.exists().then_some(nbd),
                        guest_agent: agent.exists().then_some(agent),
                    });
                }
            }
        }
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }
}

#[cfg(test)]
mod qmp_dir_tests {
    use super::*;

    #[test]
    fn a_vcenter_host_needs_its_credentials_and_nothing_of_kvm() {
        let parse = |host: &str| {
            WorkerConfig::parse(
                "worker.toml",
                &format!(
                    "id = \"w\"\ncoordinators = [\"http://127.0.0.1:1\"]\n[[hosts]]\nname = \"vc\"\n{host}"
                ),
            )
        };
        let good = parse(
            "vcenter = \"https://vc/sdk\"\nvcenter_credentials_file = \"/etc/haven/vc.toml\"\n",
        )
        .unwrap();
        assert_eq!(good.hosts[0].vcenter.as_deref(), Some("https://vc/sdk"));
        for (host, expected) in [
            (
                "vcenter = \"https://vc/sdk\"\n",
                "needs vcenter_credentials_file",
            ),
            (
                "vcenter = \"https://vc/sdk\"\nvcenter_credentials_file = \"/c\"\nlibvirt = \"qemu:///system\"\n",
                "cannot also have",
            ),
            ("vcenter_ca_file = \"/ca.pem\"\n", "need vcenter"),
        ] {
            let error = parse(host).unwrap_err();
            assert!(
                error.contains("host vc: ") && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn a_qmp_dir_lists_each_socket_as_a_vm_with_its_nbd_server_when_there_is_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["web.qmp", "db.qmp", "db.nbd", "db.qga", "notes.txt"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let host: HostConfig =
            toml::from_str(&format!("name = \"h\"\nqmp_dir = {:?}\n", dir.path())).unwrap();
        type Found = (String, Option<PathBuf>, Option<PathBuf>);
        let found: Vec<Found> = host
            .vm_endpoints()
            .into_iter()
            .map(|vm| (vm.name, vm.nbd_server, vm.guest_agent))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    "db".to_string(),
                    Some(dir.path().join("db.nbd")),
                    Some(dir.path().join("db.qga"))
                ),
                ("web".to_string(), None, None),
            ]
        );
    }
}
