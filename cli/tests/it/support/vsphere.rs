//! A vCenter simulator with change tracking (`haven_testkit::vcsim`), `haven backup
//! vsphere` against it, and a direct vSphere session to look at (or leave behind)
//! snapshots as a killed run would.

use std::path::{Path, PathBuf};

use haven_testkit::vcsim::{Vcsim, VcsimOptions};
use haven_vsphere::{Client, ConnectOptions, Credentials, MoRef};
use serde_json::Value;

use super::bed::Bed;

/// The simulated VM the tests back up.
pub const VM: &str = "DC0_H0_VM0";

/// A simulator and the credentials file `haven` reads.
pub struct Vsphere {
    /// The simulator, stopped when dropped.
    pub sim: Vcsim,
    credentials: PathBuf,
}

impl Vsphere {
    /// Starts a simulator whose disks are `disk_mib` MiB; the credentials file goes in
    /// `bed`.
    pub fn start(bed: &Bed, disk_mib: u64) -> Self {
        Self::start_with(bed, VcsimOptions::disks_of(disk_mib))
    }

    /// Starts a simulator whose VMs look as `options` says.
    pub fn start_with(bed: &Bed, options: VcsimOptions) -> Self {
        let sim = Vcsim::start_with(options).unwrap_or_else(|error| panic!("{error}"));
        let credentials = bed.path("vsphere-credentials");
        std::fs::write(
            &credentials,
            format!(
                "user = {:?}\npassword = {:?}\n",
                sim.info.user, sim.info.password
            ),
        )
        .unwrap();
        Self { sim, credentials }
    }

    /// A `[[hosts]]` table of `worker.toml` for this simulator, host `name`.
    pub fn host_toml(&self, name: &str) -> String {
        format!(
            "[[hosts]]\nname = {name:?}\nvcenter = {:?}\nvcenter_credentials_file = {:?}\n\
             vcenter_ca_file = {:?}\n",
            self.sim.info.url,
            self.credentials.to_str().unwrap(),
            self.sim.info.ca_file.to_str().unwrap()
        )
    }

    /// The flat disk file of [`VM`]'s disk, which tests write into.
    pub fn flat_file(&self) -> PathBuf {
        self.sim.flat_file(VM).expect("the simulator has LocalDS_0")
    }

    /// The arguments of `haven backup vsphere` for [`VM`], then `extra`.
    fn args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "backup",
            "vsphere",
            "--url",
            &self.sim.info.url,
            "--vm",
            VM,
            "--credentials",
            self.credentials.to_str().unwrap(),
            "--ca-file",
            self.sim.info.ca_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args
    }

    /// `haven backup vsphere` into `bed`'s repository; its JSON report.
    pub fn backup(&self, bed: &Bed) -> Value {
        bed.json(&self.args(&[]))
    }

    /// The command of `haven backup vsphere --json EXTRA` into `bed`'s repository, to
    /// start and watch.
    pub fn command(&self, bed: &Bed, extra: &[&str]) -> std::process::Command {
        let mut extra = extra.to_vec();
        extra.push("--json");
        bed.haven(&self.args(&extra))
    }

    /// `haven backup vsphere` expected to fail; its one-line error.
    pub fn backup_fails(&self, bed: &Bed) -> String {
        bed.fails(&self.args(&[]))
    }

    /// A session of our own, run on a runtime of its own.
    pub fn session<T>(&self, work: impl AsyncFnOnce(&Client, MoRef) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = Client::connect(&ConnectOptions {
                url: self.sim.info.url.clone(),
                credentials: Credentials {
                    user: self.sim.info.user.clone(),
                    password: self.sim.info.password.clone(),
                },
                ca_file: Some(self.sim.info.ca_file.clone()),
            })
            .await
            .unwrap();
            let vm = client.find_vm(VM).await.unwrap();
            let result = work(&client, vm).await;
            client.logout().await.unwrap();
            result
        })
    }

    /// The names of [`VM`]'s snapshots in vSphere.
    pub fn snapshot_names(&self) -> Vec<String> {
        self.session(async |client, vm| {
            let info = client.vm_info(&vm).await.unwrap();
            info.snapshots.into_iter().map(|entry| entry.name).collect()
        })
    }
}

/// A copy of `file` as it is now, at `to`.
pub fn keep_copy(file: &Path, to: &Path) -> PathBuf {
    std::fs::copy(file, to).unwrap();
    to.to_path_buf()
}
