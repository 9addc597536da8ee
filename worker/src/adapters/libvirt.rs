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
mod job;
mod virsh;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_nbd::{Endpoint, dirty_bitmap_context};
use haven_repo::{Consistency, Progress, Repository, SourceInfo, VmConfig};
use serde::Serialize;

pub use chain::{
    CHAIN_CHECKPOINT, CHAIN_SIZE, CHAIN_SOURCE, ReadMode, checkpoint_name, is_haven_checkpoint,
};
pub use virsh::{DomainDisk, Virsh};

use crate::backup::{ChangeSource, DiskBackupInput, DiskSource, backup_disk};
use crate::error::{Result, WorkerError};
use crate::snapshot::{
    BackupReport, CommittedDisk, SnapshotMeta, base_index, commit_snapshot, plan_snapshot,
};
use job::{BackupJob, JobDisk};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct LibvirtBackupRequest {
    /// VM name the snapshot is filed under.
    pub vm: String,
    /// libvirt domain name.
    pub domain: String,
    /// Connection URI (`None`: virsh's default).
    pub uri: Option<String>,
    /// Disks by target name (`vda`); empty: every disk of the domain.
    pub disks: Vec<String>,
    /// Where the scratch files and the NBD socket go.
    pub scratch_dir: PathBuf,
    /// The user QEMU runs as (`libvirt-qemu` on Debian): it must own the folder with
    /// the scratch files and the NBD socket. `None` or an unknown user: left to root.
    pub qemu_user: Option<String>,
    /// Freeze the guest's file systems through the QEMU guest agent at the snapshot
    /// point (`backup-begin --quiesce`); without a reachable agent the snapshot is
    /// crash-consistent, recorded as such.
    pub quiesce: bool,
    /// Parallel NBD connections per disk.
    pub connections: usize,
    /// Timeout of each virsh call.
    pub virsh_timeout: Duration,
    /// Where the manifest goes (the repository, or the coordinator's fenced commit).
    pub publisher: Arc<dyn crate::snapshot::ManifestPublisher>,
    /// Cap on bytes read per second (shared across a worker's jobs).
    pub read_limit: Option<Arc<haven_repo::RateLimiter>>,
}

/// How one disk was read.
#[derive(Debug, Clone, Serialize)]
pub struct LibvirtDiskMode {
    /// Disk (target) name.
    pub name: String,
    /// Source file or device.
    pub source: String,
    /// `incremental` or `full`.
    pub mode: &'static str,
    /// Why it was a full read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

/// Backs up the disks of a running libvirt domain as one snapshot; `shutdown`
/// resolving (Ctrl-C) cancels it. The domain keeps the new checkpoint if and only if
/// the snapshot was committed.
/// The running domains of a libvirt connection with their disks (target, size in
/// bytes): what a worker reports as the inventory of a libvirt host.
pub async fn discover_domains(
    uri: Option<String>,
    timeout: Duration,
) -> Result<Vec<(String, Vec<(String, u64)>)>> {
    let virsh = Virsh::new(uri, timeout);
    let names = virsh.run(&["list", "--name", "--state-running"]).await?;
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

pub async fn backup_libvirt(
    repo: Arc<Repository>,
    request: &LibvirtBackupRequest,
    progress: Arc<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<LibvirtBackupReport> {
    haven_repo::validate_name(&request.vm)?;
    let virsh = Virsh::new(request.uri.clone(), request.virsh_timeout);
    let scratch = tempfile::Builder::new()
        .prefix("haven-libvirt-")
        .tempdir_in(&request.scratch_dir)
        .map_err(WorkerError::io(format!(
            "cannot create a scratch folder in {}",
            request.scratch_dir.display()
        )))?;
    if let Some(user) = &request.qemu_user {
        hand_over(scratch.path(), user)?;
    }
    let mut job: Option<BackupJob> = None;
    let outcome = tokio::select! {
        result = run(&repo, request, &virsh, progress, scratch.path(), &mut job) => result,
        () = shutdown => Err(WorkerError::Invalid("backup cancelled".into())),
    };
    let cleanup = match &job {
        Some(job) => job.teardown(&virsh).await,
        None => Ok(()),
    };
    let mut report = match (outcome, cleanup) {
        (Ok(report), Ok(())) => report,
        (Ok(report), Err(error)) => {
            tracing::warn!(%error, "snapshot committed, but ending the libvirt job failed");
            report
        }
        (Err(error), Err(cleanup)) => {
            tracing::warn!(error = %cleanup, "cleanup after a failed backup failed too");
            return Err(error);
        }
        (Err(error), Ok(())) => return Err(error),
    };
    // Only now, with the manifest committed and the job ended.
    match job::delete_older_checkpoints(&virsh, &request.domain, &request.vm, &report.checkpoint)
        .await
    {
        Ok(deleted) => report.deleted_checkpoints = deleted,
        Err(error) => {
            tracing::warn!(%error, "old checkpoints kept; the next backup deletes them")
        }
    }
    Ok(report)
}

async fn run(
    repo: &Arc<Repository>,
    request: &LibvirtBackupRequest,
    virsh: &Virsh,
    progress: Arc<Progress>,
    scratch: &Path,
    job_slot: &mut Option<BackupJob>,
) -> Result<LibvirtBackupReport> {
    let started = Instant::now();
    let domain = request.domain.as_str();
    let plan = plan_snapshot(repo, &request.vm).await?;
    let all_disks = virsh.disks(domain).await?;
    for wanted in &request.disks {
        if !all_disks.iter().any(|disk| disk.target == *wanted) {
            return Err(WorkerError::Invalid(format!(
                "domain {domain} has no disk {wanted}"
            )));
        }
    }
    let (selected, skipped): (Vec<DomainDisk>, Vec<DomainDisk>) = all_disks
        .into_iter()
        .partition(|disk| request.disks.is_empty() || request.disks.contains(&disk.target));
    if selected.is_empty() {
        return Err(WorkerError::Invalid(format!(
            "domain {domain} has no disk to back up"
        )));
    }
    job::abort_leftover_job(virsh, domain).await?;
    let new_checkpoint = checkpoint_name(&request.vm, &plan.id.timestamp);
    let mut checkpoints = virsh.checkpoints(domain).await?;
    if checkpoints.contains(&new_checkpoint) {
        // Left by a killed run at the same second; never committed (the plan's
        // timestamp is after every committed snapshot). Deleting merges it into its parent.
        virsh
            .run(&["checkpoint-delete", domain, &new_checkpoint])
            .await?;
        checkpoints.retain(|name| *name != new_checkpoint);
    }

    let mut disks = Vec::with_capacity(selected.len());
    let mut bases = Vec::with_capacity(selected.len());
    for disk in selected {
        let size = virsh.capacity(domain, &disk.target).await?;
        let base = base_index(repo, plan.previous.as_ref(), &disk.target).await;
        let facts = base.as_ref().map(|index| chain::BaseFacts {
            size: index.disk_size(),
            chunk_size: index.chunk_size(),
        });
        let previous_chain = plan
            .previous
            .as_ref()
            .and_then(|manifest| {
                manifest
                    .disks
                    .iter()
                    .find(|entry| entry.name == disk.target)
            })
            .map(|entry| &entry.chain);
        let now = chain::DiskFacts {
            size,
            source: &disk.source,
        };
        let mode = chain::decide(
            &request.vm,
            now,
            previous_chain,
            &checkpoints,
            facts,
            repo.chunk_size(),
        );
        match &mode {
            ReadMode::Incremental { checkpoint } => {
                tracing::info!(
                    disk = disk.target,
                    checkpoint,
                    "incremental: reading changes since the checkpoint"
                )
            }
            ReadMode::Full { reason } if plan.previous.is_none() => {
                tracing::info!(disk = disk.target, reason, "full read")
            }
            ReadMode::Full { reason } => {
                tracing::warn!(disk = disk.target, reason, "falling back to a full read")
            }
        }
        disks.push(JobDisk { disk, size, mode });
        bases.push(base);
    }

    let domain_xml = virsh.run(&["dumpxml", domain]).await?;
    let job = job_slot.insert(BackupJob::new(domain, new_checkpoint.clone(), scratch));
    let backup_xml = scratch.join("backup.xml");
    let checkpoint_xml = scratch.join("checkpoint.xml");
    write_file(&backup_xml, &job.backup_xml(&disks, &skipped, scratch))?;
    write_file(&checkpoint_xml, &job.checkpoint_xml(&disks, &skipped))?;
    let begin = Instant::now();
    let mut consistency = Consistency::CrashConsistent;
    if request.quiesce {
        match job.begin(virsh, &backup_xml, &checkpoint_xml, true).await {
            Ok(()) => consistency = Consistency::ApplicationConsistent,
            Err(error) => {
                // libvirt undoes a failed backup-begin completely: retry unfrozen.
                tracing::warn!(%error, "guest freeze failed: the snapshot is only crash-consistent");
                job.begin(virsh, &backup_xml, &checkpoint_xml, false)
                    .await?;
            }
        }
    } else {
        job.begin(virsh, &backup_xml, &checkpoint_xml, false)
            .await?;
    }
    let snapshot_point = begin.elapsed();
    tracing::info!(
        snapshot_point_ms = millis(snapshot_point),
        checkpoint = new_checkpoint,
        "point-in-time view taken"
    );

    let mut committed = Vec::with_capacity(disks.len());
    for (disk, base) in disks.iter().zip(&bases) {
        let changes = match &disk.mode {
            ReadMode::Incremental { .. } => ChangeSource::DirtyBitmap(dirty_bitmap_context(
                &format!("backup-{}", disk.disk.target),
            )),
            ReadMode::Full { .. } => ChangeSource::Full,
        };
        let input = DiskBackupInput {
            read_limit: request.read_limit.clone(),
            source: DiskSource::Nbd {
                endpoint: Endpoint::Unix(job.socket.clone()),
                export: disk.disk.target.clone(),
            },
            parallel_reads: request.connections,
            base: base.as_ref(),
            changes,
        };
        let backup = backup_disk(repo.clone(), input, progress.clone()).await?;
        committed.push(CommittedDisk {
            name: disk.disk.target.clone(),
            backup,
            chain: chain::chain_entry(
                &new_checkpoint,
                chain::DiskFacts {
                    size: disk.size,
                    source: &disk.disk.source,
                },
            ),
        });
    }
    let meta = SnapshotMeta {
        source: SourceInfo {
            kind: "libvirt".into(),
            origin: match &request.uri {
                Some(uri) => format!("{uri} {domain}"),
                None => domain.to_string(),
            },
        },
        consistency,
        parent: plan
            .previous
            .as_ref()
            .map(|manifest| manifest.timestamp.clone()),
        vm_config: Some(VmConfig {
            kind: "libvirt-xml".into(),
            data: domain_xml,
        }),
    };
    let manifest =
        commit_snapshot(repo, &plan, committed, meta, request.publisher.as_ref()).await?;
    job.committed = true;
    let modes = disks
        .into_iter()
        .map(|disk| LibvirtDiskMode {
            name: disk.disk.target,
            source: disk.disk.source,
            mode: match disk.mode {
                ReadMode::Incremental { .. } => "incremental",
                ReadMode::Full { .. } => "full",
            },
            reason: match disk.mode {
                ReadMode::Incremental { .. } => None,
                ReadMode::Full { reason } => Some(reason),
            },
        })
        .collect();
    Ok(LibvirtBackupReport {
        backup: BackupReport::new(&manifest, started.elapsed()),
        domain: domain.to_string(),
        consistency,
        checkpoint: new_checkpoint,
        snapshot_point_ms: millis(snapshot_point),
        deleted_checkpoints: Vec::new(),
        modes,
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
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
