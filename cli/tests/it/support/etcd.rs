//! An etcd cluster of real `etcd` members on free loopback ports, each killed by
//! `Drop`; members can be killed and restarted to test quorum loss.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::{Guard, free_port, spawn_logged};

/// Running etcd members (name, client port, peer port) and their data directories.
pub struct Etcd {
    members: Vec<(String, u16, u16)>,
    guards: Vec<Guard>,
    dir: PathBuf,
}

impl Etcd {
    /// Starts `count` members with data and logs below `dir`.
    pub fn start(dir: &Path, count: usize) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let members: Vec<(String, u16, u16)> = (0..count)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let mut etcd = Self {
            guards: Vec::new(),
            members,
            dir: dir.to_path_buf(),
        };
        for i in 0..count {
            let guard = etcd.spawn_member(i);
            etcd.guards.push(guard);
        }
        etcd
    }

    fn spawn_member(&self, i: usize) -> Guard {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let (name, client, peer) = &self.members[i];
        spawn_logged(
            Command::new("etcd")
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(self.dir.join(name))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(cluster.join(","))
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "haven-test",
                ]),
            &self.dir.join(format!("{name}.log")),
        )
    }

    /// The members' client URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|(_, client, _)| format!("http://127.0.0.1:{client}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        self.guards[i].kill9();
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.guards[i] = self.spawn_member(i);
    }
}
