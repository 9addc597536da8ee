//! What `haven backup qemu`, `haven backup libvirt` and `haven backup vsphere` share:
//! which disks to read, the reads in flight, the repository and the output, and the
//! one way a backup of a running VM is run and reported.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::FutureExt;
use futures::future::BoxFuture;
use haven_repo::{Phase, Progress, Repository};
use haven_worker::{DirectPublisher, LiveBackupOptions, SnapshotHooks};

use crate::common::{OutputArgs, RepoArgs};
use crate::progress::run_and_report;

/// Arguments every backup of a running VM takes.
#[derive(Debug, clap::Args)]
pub struct LiveArgs {
    /// Disks to back up (default: all): for QEMU a device id (vda) or block node
    /// name, for libvirt a target name (vda), for vSphere a descriptor name (`disk1`
    /// for `[ds] vm/disk1.vmdk`).
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// Reads in flight per disk (NBD connections, or ranged HTTPS reads for vSphere).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Cap on bytes read from the hypervisor per second (K, M, G: ×1024), as a
    /// worker's `read_limit_bytes_per_second`.
    #[arg(long, value_name = "BYTES/s", value_parser = super::replicate::rate_value)]
    limit_rate: Option<u64>,
    /// Shell command run on this machine before the snapshot point (before the guest
    /// agent's freeze); its failure makes the snapshot crash-consistent.
    #[arg(long, value_name = "COMMAND")]
    pre_hook: Option<String>,
    /// Shell command run after the snapshot point (after the thaw), also when it
    /// failed; `HAVEN_RESULT` says ok, failed or cancelled.
    #[arg(long, value_name = "COMMAND")]
    post_hook: Option<String>,
    /// Seconds a hook may run before it is killed.
    #[arg(long, default_value_t = 60)]
    hook_timeout: u64,
    #[command(flatten)]
    repo: RepoArgs,
    #[command(flatten)]
    output: OutputArgs,
}

impl LiveArgs {
    /// The adapters' shared options for a backup filed under `vm`, committed straight
    /// to the repository (no coordinator in between).
    pub fn options(&self, vm: String) -> LiveBackupOptions {
        LiveBackupOptions {
            vm,
            disks: self.disks.clone(),
            connections: self.connections.clamp(1, 16),
            publisher: Arc::new(DirectPublisher),
            read_limit: self
                .limit_rate
                .map(|rate| Arc::new(haven_repo::RateLimiter::new(rate))),
            hooks: SnapshotHooks {
                pre: self.pre_hook.clone(),
                post: self.post_hook.clone(),
                timeout: Duration::from_secs(self.hook_timeout.max(1)),
            },
        }
    }

    /// Opens the repository and runs `backup` with a progress line; Ctrl-C or SIGTERM
    /// resolves the future `backup` gets, which cancels it. `text` prints the report unless
    /// JSON was asked for.
    pub async fn run<T, F>(
        &self,
        backup: impl FnOnce(Arc<Repository>, Arc<Progress>, BoxFuture<'static, ()>) -> F,
        text: impl FnOnce(&T) -> Result<()>,
    ) -> Result<()>
    where
        T: serde::Serialize,
        F: Future<Output = haven_worker::Result<T>>,
    {
        let repo = self.repo.open().await?;
        let stop = crate::common::stop_signal();
        let shutdown = async move {
            let signal = stop.await;
            eprintln!(
                "{signal} received: cancelling the backup and removing what it set up in \
                 the hypervisor (at most {} s)",
                haven_worker::CANCELLED_CLEANUP_LIMIT.as_secs()
            );
        }
        .boxed();
        run_and_report(
            "backup",
            Phase::Starting,
            self.output.json,
            |progress| backup(repo, progress, shutdown),
            text,
        )
        .await
    }
}
