//! Real etcd clusters for tests: each member an `etcd` process (Debian package
//! `etcd-server`) on free loopback ports, with its data in a temporary directory.
//!
//! The members are killed (SIGKILL) and the data removed when the [`Etcd`] is dropped.
//! [`Etcd::kill`] and [`Etcd::restart`] take one member down and bring it back on the
//! same ports and data, for tests of lost quorum and failover.
//!
//! [`Etcd::start_secured`] starts the cluster the way production runs it: clients on
//! `https://` with a client certificate required, and etcd auth on, with a `haven` user
//! whose role covers only Haven's prefix ([`secured`]). Peers stay on plain loopback.
//! Health is read from a separate plain metrics listener either way.

mod secured;

pub use secured::{CLIENT_COMMON_NAME, EtcdCredentialFiles, EtcdctlUser, HAVEN_PREFIX, HAVEN_USER};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use haven_coordinator::store::etcd::EtcdStore;

use crate::FixtureError;
use crate::process::{ChildGuard, free_port, http_get, run, wait_until};

/// How to install etcd, for the error when it is missing.
const INSTALL_HINT: &str = "apt-get install etcd-server";

/// How long [`Etcd::wait_ready`] waits by default.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One member's name and loopback ports.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    /// `http` or `https`.
    client_scheme: &'static str,
    client_port: u16,
    peer_port: u16,
    /// Plain `/health` and `/metrics`.
    metrics_port: u16,
}

impl Member {
    fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// A running etcd cluster; stopped and deleted on drop.
#[derive(Debug)]
pub struct Etcd {
    /// One guard per member, `None` while the member is killed. Declared before `dir`
    /// so the processes die before their data is removed.
    guards: Vec<Option<ChildGuard>>,
    members: Vec<Member>,
    /// Certificates and password of a secured cluster.
    credentials: Option<EtcdCredentialFiles>,
    /// The temporary directory holding every member's data and log.
    dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts a cluster of `members` members (1 for a plain store, 3 to lose one) and
    /// waits until every member reports itself healthy. Blocking.
    pub fn start(members: usize) -> Result<Self, FixtureError> {
        Self::start_with(members, false)
    }

    /// Like [`Self::start`], secured: `https://` client URLs requiring a client
    /// certificate of the fixture's CA, and etcd auth enabled with the user
    /// [`HAVEN_USER`], whose role may read and write [`HAVEN_PREFIX`] only.
    /// [`Self::credentials`] has the files a client needs. Blocking.
    pub fn start_secured(members: usize) -> Result<Self, FixtureError> {
        Self::start_with(members, true)
    }

    fn start_with(members: usize, secured: bool) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("haven-etcd-")
            .tempdir()
            .map_err(FixtureError::io("cannot create a directory for etcd"))?;
        let credentials = secured
            .then(|| EtcdCredentialFiles::create(&dir.path().join("certs")))
            .transpose()?;
        let members = (0..members)
            .map(|index| {
                Ok(Member {
                    name: format!("member{index}"),
                    client_scheme: if secured { "https" } else { "http" },
                    client_port: free_port()?,
                    peer_port: free_port()?,
                    metrics_port: free_port()?,
                })
            })
            .collect::<Result<Vec<_>, FixtureError>>()?;
        let mut etcd = Self {
            guards: Vec::new(),
            members,
            credentials,
            dir,
        };
        for index in 0..etcd.members.len() {
            let guard = etcd.spawn_member(index)?;
            etcd.guards.push(Some(guard));
        }
        etcd.wait_ready(READY_TIMEOUT)?;
        if let Some(credentials) = &etcd.credentials {
            credentials.enable_auth(&etcd.endpoints())?;
        }
        Ok(etcd)
    }

    /// The certificates and password of a cluster started by [`Self::start_secured`].
    pub fn credentials(&self) -> Option<&EtcdCredentialFiles> {
        self.credentials.as_ref()
    }

    /// [`Self::start`] (or [`Self::start_secured`]) from an async test, whose
    /// runtime must not block while the members start; panics naming what failed.
    pub async fn start_in_test(members: usize, secured: bool) -> Self {
        let started = tokio::task::spawn_blocking(move || {
            if secured {
                Self::start_secured(members)
            } else {
                Self::start(members)
            }
        })
        .await
        .expect("etcd start-up task");
        started.unwrap_or_else(|error| panic!("cannot start etcd: {error}"))
    }

    /// A store on this cluster with a coordinator's credentials (Haven's full ones on
    /// a secured cluster, none on a plain one); panics naming what failed.
    pub async fn store(&self) -> EtcdStore {
        let security = self
            .credentials()
            .map(EtcdCredentialFiles::haven_security)
            .unwrap_or_default();
        EtcdStore::connect(&self.endpoints(), &security)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to etcd: {error}"))
    }

    /// Runs `etcdctl ARGS` (with the client certificate on a secured cluster) as `user`;
    /// returns its standard output, or an error holding its standard error. Tests use
    /// it to plant or inspect keys outside Haven's reach, and to try a client that has
    /// a certificate but no etcd user. Blocking.
    pub fn etcdctl(&self, user: EtcdctlUser, args: &[&str]) -> Result<String, FixtureError> {
        let mut command = match &self.credentials {
            Some(credentials) => credentials.etcdctl(&self.endpoints(), user),
            None => {
                let mut command = Command::new("etcdctl");
                command.arg("--endpoints").arg(self.endpoints().join(","));
                command
            }
        };
        run(command.args(args), secured::ETCDCTL_HINT)
    }

    fn spawn_member(&self, index: usize) -> Result<ChildGuard, FixtureError> {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url()))
            .collect();
        let member = &self.members[index];
        let mut command = Command::new("etcd");
        command
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .arg("--listen-client-urls")
            .arg(member.client_url())
            .arg("--advertise-client-urls")
            .arg(member.client_url())
            .arg("--listen-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-advertise-peer-urls")
            .arg(member.peer_url())
            .arg("--initial-cluster")
            .arg(cluster.join(","))
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "haven-test"])
            .arg("--listen-metrics-urls")
            .arg(format!("http://127.0.0.1:{}", member.metrics_port));
        if let Some(credentials) = &self.credentials {
            credentials.add_server_args(&mut command);
            // As compose and the chart run it: Haven's user may not compact (etcd
            // keeps that to root), so etcd bounds its own history; every few seconds
            // here rather than hourly.
            command.args(["--auto-compaction-mode", "periodic"]);
            command.args(["--auto-compaction-retention", "2s"]);
        }
        ChildGuard::spawn(&mut command, &self.log(index), INSTALL_HINT)
    }

    /// The log file of member `index` (its standard output and error).
    pub fn log(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("member{index}.log"))
    }

    /// The directory holding the members' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The client URLs of every member (`http://127.0.0.1:PORT`, `https://` when
    /// secured), killed ones included.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Kills member `index` with SIGKILL; its ports and data stay reserved for
    /// [`Self::restart`].
    pub fn kill(&mut self, index: usize) {
        if let Some(slot) = self.guards.get_mut(index) {
            *slot = None;
        }
    }

    /// Starts member `index` again on its ports and data (after [`Self::kill`]).
    pub fn restart(&mut self, index: usize) -> Result<(), FixtureError> {
        let guard = self.spawn_member(index)?;
        if let Some(slot) = self.guards.get_mut(index) {
            *slot = Some(guard);
        }
        Ok(())
    }

    /// Waits until every running member answers `/health` with `"health":"true"`
    /// (it has joined a cluster with a leader). Blocking.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(), FixtureError> {
        for index in 0..self.members.len() {
            let port = self.members[index].metrics_port;
            let what = format!("etcd member {index} (log {})", self.log(index).display());
            let Some(guard) = self.guards.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            wait_until(&what, timeout, || {
                if let Some(exited) = guard.exit_status() {
                    return Err(exited);
                }
                let body = http_get(port, "/health").unwrap_or_default();
                Ok(body.replace(' ', "").contains("\"health\":\"true\""))
            })?;
        }
        Ok(())
    }
}
