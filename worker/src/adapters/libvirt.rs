//! The libvirt adapter: consistent, incremental backups of a running libvirt domain
//! through `virsh` (pull-mode `backup-begin` with checkpoints).
//!
//! ```text
//! list disks, checkpoints ─▶ decide full/incremental per disk (chain in the manifest)
//!   ─▶ dumpxml (stored as the snapshot's vm_config)
//!   ─▶ backup-begin pull mode: scratch file per disk, new checkpoint haven-VM-TS
//!   ─▶ read each disk's NBD export (qemu:dirty-bitmap:backup-DISK for incrementals)
//!   ─▶ commit the manifest ─▶ domjobabort ─▶ THEN delete older Haven checkpoints
//! ```
//!
//! libvirt's `backup-begin` takes the point in time of every disk at once (one QMP
//! transaction inside libvirt) and creates the new checkpoint at exactly that point; an
//! incremental asks for the changes since the checkpoint the previous snapshot recorded
//! in its manifest. Invariants: the job is always ended with `domjobabort` (also on
//! error and cancellation); a snapshot that was not committed has its checkpoint
//! deleted again, which merges the checkpoint's bitmap into its parent, so no change is
//! lost; older Haven checkpoints go only after the commit; checkpoints not named
//! `haven-VM-…` are never touched. Any doubt about the chain ([`chain::decide`]) means
//! a full read, logged with its reason.

mod chain;
pub(crate) mod job;
pub(crate) mod virsh;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_nbd::{Endpoint, dirty_bitmap_context};
use haven_repo::{Consistency, Progress, Repository, SourceInfo, VmConfig};
use serde::Serialize;

pub use chain::{CHAIN_CHECKPOINT, CHAIN_SIZE, CHAIN_SOURCE, CHECKPOINT};
pub use virsh::{DomainDisk, Virsh};

use super::HypervisorAdapter;
use super::chain::{DiskNow, Previous, ReadMode, ReadSummary};
use super::driver::{LiveBackupOptions, back_up_vm, millis};
use crate::error::{Result, WorkerError};
use crate::pipeline::backup::{ChangeSource, DiskSource};
use crate::pipeline::snapshot::{BackupReport, SnapshotPlan};
use job::{BackupJob, JobDisk};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct LibvirtBackupRequest {
    /// The VM, its disks (by target name, `vda`) and where the backup goes.
    pub live: LiveBackupOptions,
    /// libvirt domain name.
    pub domain: String,
    /// Connection URI (`None`: virsh's default).
    pub uri: Option<String>,
    /// Where the scratch files and the NBD socket go.
    pub scratch_dir: PathBuf,
    /// The user QEMU runs as (`libvirt-qemu` on Debian): it must own the folder with
    /// the scratch files and the NBD socket. `None` or an unknown user: left to root.
    pub qemu_user: Option<String>,
    /// Freeze the guest's file systems through the QEMU guest agent at the snapshot
    /// point (`backup-begin --quiesce`); without a reachable agent the snapshot is
    /// crash-consistent, recorded as such.
    pub quiesce: bool,
    /// Timeout of each virsh call.
    pub virsh_timeout: Duration,
}

/// How one disk was read.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtDiskMode {
    /// Disk (target) name.
    pub name: String,
    /// Source file or device.
    pub source: String,
    /// Incremental or full, and why.
    #[serde(flatten)]
    pub read: ReadSummary,
}

/// The report of a libvirt backup.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtBackupReport {
    /// The common report.
    #[serde(flatten)]
    pub backup: BackupReport,
    /// The domain.
    pub domain: String,
    /// Consistency recorded in the manifest.
    pub consistency: Consistency,
    /// The checkpoint created at this snapshot's point in time.
    pub checkpoint: String,
    /// Round trip of `virsh backup-begin` in ms: an upper bound of the time the guest's
    /// I/O was held for the point-in-time view.
    pub snapshot_point_ms: f64,
    /// Older Haven checkpoints deleted after the commit.
    pub deleted_checkpoints: Vec<String>,
    /// How each disk was read.
    pub modes: Vec<LibvirtDiskMode>,
}

/// The running domains of a libvirt connection with their disks (target, size in
/// bytes): what a worker reports as the inventory of a libvirt host.
pub async fn discover_domains(
    uri: Option<String>,
    timeout: Duration,
) -> Result<Vec<(String, Vec<(String, u64)>)>> {
    let virsh = Virsh::new(uri, timeout);
    let names = virsh
        .run("list", &["--name", "--state-running"], &[])
        .await?;
    let mut domains = Vec::new();
    for name in names.lines().map(str::trim).filter(|name| !name.is_empty()) {
        let mut disks = Vec::new();
        for disk in virsh.disks(name).await? {
            let size = virsh.capacity(name, &disk.target).await?;
            disks.push((disk.target, size));
        }
        domains.push((name.to_string(), disks));
    }
    Ok(domains)
}

/// Backs up the disks of a running libvirt domain as one snapshot; `shutdown`
/// resolving (Ctrl-C) cancels it. The domain keeps the new checkpoint if and only if
/// the snapshot was committed.
pub async fn backup_libvirt(
    repo: Arc<Repository>,
    request: &LibvirtBackupRequest,
    progress: Arc<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<LibvirtBackupReport> {
    let live = &request.live;
    let scratch = live.start(&request.scratch_dir, "haven-libvirt-")?;
    if let Some(user) = &request.qemu_user {
        hand_over(scratch.path(), user)?;
    }
    let mut adapter = LibvirtAdapter {
        request,
        virsh: Virsh::new(request.uri.clone(), request.virsh_timeout),
        scratch: scratch.path(),
        new_checkpoint: String::new(),
        checkpoints: Vec::new(),
        selected: Vec::new(),
        skipped: Vec::new(),
        modes: Vec::new(),
        job: None,
        snapshot_point: Duration::ZERO,
        consistency_reason: None,
    };
    let backup = back_up_vm(&repo, &mut adapter, &live.driver(), progress, shutdown).await?;
    // Only now, with the manifest committed and the job ended.
    let deleted_checkpoints = match job::delete_older_checkpoints(
        &adapter.virsh,
        &request.domain,
        &live.vm,
        &adapter.new_checkpoint,
    )
    .await
    {
        Ok(deleted) => deleted,
        Err(error) => {
            tracing::warn!(error = %error.chain(), "old checkpoints kept; the next backup deletes them");
            Vec::new()
        }
    };
    let modes = adapter
        .selected
        .into_iter()
        .zip(backup.modes)
        .map(|((disk, _), mode)| LibvirtDiskMode {
            name: disk.target,
            source: disk.source,
            read: ReadSummary::from(&mode),
        })
        .collect();
    Ok(LibvirtBackupReport {
        backup: backup.report,
        domain: request.domain.clone(),
        consistency: backup.consistency,
        checkpoint: adapter.new_checkpoint,
        snapshot_point_ms: millis(adapter.snapshot_point),
        deleted_checkpoints,
        modes,
    })
}

/// A libvirt domain as a [`HypervisorAdapter`]: checkpoints mark snapshot points, one
/// pull-mode `backup-begin` takes the point-in-time view of every disk and exports them
/// over libvirt's NBD server.
struct LibvirtAdapter<'a> {
    request: &'a LibvirtBackupRequest,
    virsh: Virsh,
    scratch: &'a Path,
    /// The checkpoint this snapshot creates (named after it).
    new_checkpoint: String,
    /// The domain's checkpoints before this backup.
    checkpoints: Vec<String>,
    /// The disks backed up, with their capacity in bytes.
    selected: Vec<(DomainDisk, u64)>,
    /// The domain's other disks (listed in the job's documents as not backed up).
    skipped: Vec<DomainDisk>,
    /// How each selected disk is read.
    modes: Vec<ReadMode>,
    /// The job, once its documents are written: what teardown ends.
    job: Option<BackupJob>,
    /// Round trip of `backup-begin`.
    snapshot_point: Duration,
    /// Why the snapshot is only crash-consistent although quiescing was asked.
    consistency_reason: Option<String>,
}

#[async_trait::async_trait]
impl HypervisorAdapter for LibvirtAdapter<'_> {
    fn consistency_reason(&self) -> Option<String> {
        self.consistency_reason.clone()
    }

    fn source(&self) -> SourceInfo {
        let domain = &self.request.domain;
        SourceInfo {
            kind: "libvirt".into(),
            origin: match &self.request.uri {
                Some(uri) => format!("{uri} {domain}"),
                None => domain.to_string(),
            },
        }
    }

    async fn disks(&mut self, plan: &SnapshotPlan) -> Result<Vec<String>> {
        let domain = self.request.domain.as_str();
        let wanted = &self.request.live.disks;
        let all_disks = self.virsh.disks(domain).await?;
        for want in wanted {
            if !all_disks.iter().any(|disk| disk.target == *want) {
                return Err(WorkerError::InvalidInput(format!(
                    "domain {domain} has no disk {want}"
                )));
            }
        }
        let (selected, skipped): (Vec<DomainDisk>, Vec<DomainDisk>) = all_disks
            .into_iter()
            .partition(|disk| wanted.is_empty() || wanted.contains(&disk.target));
        if selected.is_empty() {
            return Err(WorkerError::InvalidInput(format!(
                "domain {domain} has no disk to back up"
            )));
        }
        job::abort_leftover_job(&self.virsh, domain).await?;
        self.new_checkpoint = CHECKPOINT.name(&self.request.live.vm, &plan.id.timestamp);
        self.checkpoints = self.virsh.checkpoints(domain).await?;
        if self.checkpoints.contains(&self.new_checkpoint) {
            // Left by a killed run at the same second; never committed (the plan's
            // timestamp is after every committed snapshot). Deleting merges it into its parent.
            self.virsh
                .run("checkpoint-delete", &[], &[domain, &self.new_checkpoint])
                .await?;
            let new_checkpoint = &self.new_checkpoint;
            self.checkpoints.retain(|name| name != new_checkpoint);
        }
        for disk in selected {
            let size = self.virsh.capacity(domain, &disk.target).await?;
            self.selected.push((disk, size));
        }
        self.skipped = skipped;
        Ok(self
            .selected
            .iter()
            .map(|(disk, _)| disk.target.clone())
            .collect())
    }

    fn read_mode(&self, position: usize, previous: &Previous<'_>) -> Option<ReadMode> {
        Some(chain::decide(
            &self.request.live.vm,
            &self.disk_now(position),
            previous,
            &self.checkpoints,
        ))
    }

    async fn vm_config(&mut self) -> Result<Option<VmConfig>> {
        let domain_xml = self
            .virsh
            .run("dumpxml", &[], &[&self.request.domain])
            .await?;
        Ok(Some(VmConfig {
            kind: "libvirt-xml".into(),
            data: domain_xml,
        }))
    }

    async fn snapshot_point(&mut self, modes: &[ReadMode]) -> Result<Consistency> {
        let disks: Vec<JobDisk> = self
            .selected
            .iter()
            .zip(modes)
            .map(|((disk, _), mode)| JobDisk {
                disk: disk.clone(),
                mode: mode.clone(),
            })
            .collect();
        self.modes = modes.to_vec();
        let scratch = self.scratch;
        let job = self.job.insert(BackupJob::new(
            &self.request.domain,
            self.new_checkpoint.clone(),
            scratch,
        ));
        let backup_xml = scratch.join("backup.xml");
        let checkpoint_xml = scratch.join("checkpoint.xml");
        write_file(&backup_xml, &job.backup_xml(&disks, &self.skipped, scratch))?;
        write_file(&checkpoint_xml, &job.checkpoint_xml(&disks, &self.skipped))?;
        let virsh = &self.virsh;
        let begin = Instant::now();
        let mut consistency = Consistency::CrashConsistent;
        if self.request.quiesce {
            match job.begin(virsh, &backup_xml, &checkpoint_xml, true).await {
                Ok(()) => consistency = Consistency::ApplicationConsistent,
                Err(error) => {
                    // libvirt undoes a failed backup-begin completely: retry unfrozen.
                    tracing::warn!(error = %error.chain(), "guest freeze failed: the snapshot is only crash-consistent");
                    self.consistency_reason = Some(format!(
                        "libvirt could not quiesce the guest: {}",
                        error.chain()
                    ));
                    job.begin(virsh, &backup_xml, &checkpoint_xml, false)
                        .await?;
                }
            }
        } else {
            job.begin(virsh, &backup_xml, &checkpoint_xml, false)
                .await?;
        }
        self.snapshot_point = begin.elapsed();
        tracing::info!(
            snapshot_point_ms = millis(self.snapshot_point),
            checkpoint = self.new_checkpoint,
            "point-in-time view taken"
        );
        Ok(consistency)
    }

    async fn export(&mut self, position: usize) -> Result<(DiskSource, ChangeSource)> {
        let Some(job) = &self.job else {
            return Err(WorkerError::Hypervisor {
                hypervisor: "libvirt",
                message: "no backup job runs: the snapshot point was not taken".into(),
            });
        };
        let target = &self.selected[position].0.target;
        let changes = match self.modes.get(position) {
            Some(ReadMode::Incremental { .. }) => {
                ChangeSource::DirtyBitmap(dirty_bitmap_context(&format!("backup-{target}")))
            }
            _ => ChangeSource::Full,
        };
        let source = DiskSource::Nbd {
            endpoint: Endpoint::Unix(job.socket.clone()),
            export: target.clone(),
        };
        Ok((source, changes))
    }

    fn chain_entry(&self, position: usize) -> BTreeMap<String, String> {
        CHECKPOINT.chain_entry(&self.new_checkpoint, &self.disk_now(position))
    }

    async fn teardown(&mut self, committed: bool) -> Result<()> {
        match &mut self.job {
            Some(job) => {
                job.committed = committed;
                job.teardown(&self.virsh).await
            }
            None => Ok(()),
        }
    }
}

impl LibvirtAdapter<'_> {
    /// Disk `position`'s capacity and source now: what its checkpoint depends on.
    fn disk_now(&self, position: usize) -> DiskNow {
        let (disk, size) = &self.selected[position];
        DiskNow {
            size: *size,
            fact: disk.source.clone(),
        }
    }
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)
        .map_err(WorkerError::io(format!("cannot write {}", path.display())))
}

/// Gives the scratch folder to the user QEMU runs as: QEMU creates the NBD socket
/// there and writes the scratch files. An unknown user leaves it to root (QEMU running
/// as root, or a session daemon).
fn hand_over(folder: &Path, user: &str) -> Result<()> {
    let Some((uid, gid)) = lookup_user(user) else {
        tracing::debug!(user, "no such user: the scratch folder stays root's");
        return Ok(());
    };
    std::os::unix::fs::chown(folder, Some(uid), Some(gid)).map_err(WorkerError::io(format!(
        "cannot give {} to {user}",
        folder.display()
    )))
}

/// uid and gid of `user` from the password database.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(user).ok()?;
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buffer = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into `entry`
    // and `buffer` (of the length given) and sets `result` to `&entry` or null.
    let status = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut result,
        )
    };
    if status != 0 || result.is_null() {
        return None;
    }
    Some((entry.pw_uid, entry.pw_gid))
}
