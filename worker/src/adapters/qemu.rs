//! The qemu adapter: consistent, incremental backups of a running QEMU or
//! qemu-storage-daemon through QMP.
//!
//! ```text
//! clean leftovers ─▶ reconcile bitmaps ─▶ decide full/incremental per disk
//!   ─▶ [guest-fsfreeze] ─▶ ONE transaction: add new bitmap, disable old, blockdev-backup
//!      sync=none into a temporary overlay (fleecing) ─▶ [thaw]
//!   ─▶ export each overlay read-only over NBD (with the old bitmap) ─▶ backup_disk
//!   ─▶ commit the manifest ─▶ THEN remove the old bitmap ─▶ tear everything down
//! ```
//!
//! The transaction is the snapshot point of every disk at once: the guest keeps
//! writing, and copy-before-write saves the old data into the overlay, so the export
//! shows the disks as they were. The new bitmap starts at exactly that point and
//! becomes the next snapshot's base; the old one, frozen at the same point, says what
//! to read now. Invariants (see `session.rs`): the old bitmap goes only after the
//! manifest is committed, a failed or cancelled backup merges the new bitmap back, and
//! whatever a killed run leaves is found by name and cleaned by the next. Any doubt
//! about the chain ([`chain::decide`]) means a full read, logged with its reason.

mod chain;
mod graph;
mod session;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_nbd::{Endpoint, dirty_bitmap_context};
use haven_repo::{Consistency, Progress, Repository, SourceInfo, VmConfig};
use serde::Serialize;
use serde_json::{Value, json};

pub use chain::{CHAIN_BITMAP, CHAIN_NODE, CHAIN_SIZE, ReadMode, bitmap_name, is_haven_bitmap};
pub use graph::{LiveDisk, select_disks};

use crate::backup::{ChangeSource, DiskBackupInput, DiskSource, backup_disk};
use crate::error::{Result, WorkerError};
use crate::qmp::GuestAgent;
use crate::snapshot::{
    BackupReport, CommittedDisk, SnapshotMeta, base_index, commit_snapshot, plan_snapshot,
};
use session::{DiskObjects, Session};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct QemuBackupRequest {
    /// VM name the snapshot is filed under.
    pub vm: String,
    /// QMP socket of the running QEMU or qemu-storage-daemon.
    pub qmp: PathBuf,
    /// Disks by device or node name; empty: every disk QEMU shows.
    pub disks: Vec<String>,
    /// Guest agent socket: freeze file systems around the snapshot point.
    pub guest_agent: Option<PathBuf>,
    /// Unix socket of an NBD server QEMU already runs (QEMU has only one); when `None`
    /// Haven starts one on a private socket and stops it afterwards.
    pub nbd_server: Option<PathBuf>,
    /// Where the temporary overlays go (QEMU must be able to write there).
    pub scratch_dir: PathBuf,
    /// Parallel NBD connections per disk.
    pub connections: usize,
    /// Timeout of each QMP command.
    pub qmp_timeout: Duration,
    /// Timeout of the guest agent's freeze and thaw.
    pub freeze_timeout: Duration,
    /// Where the manifest goes (the repository, or the coordinator's fenced commit).
    pub publisher: Arc<dyn crate::snapshot::ManifestPublisher>,
    /// Cap on bytes read from QEMU per second (shared across a worker's jobs).
    pub read_limit: Option<Arc<haven_repo::RateLimiter>>,
}

/// How one disk was read.
#[derive(Debug, Clone, Serialize)]
pub struct DiskMode {
    /// Disk name in the snapshot.
    pub name: String,
    /// Block node read.
    pub node: String,
    /// `incremental` or `full`.
    pub mode: &'static str,
    /// Why it was a full read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The bitmap that now tracks changes since this snapshot.
    pub bitmap: String,
}

/// The report of a live backup: the common figures plus the snapshot point's cost.
#[derive(Debug, Clone, Serialize)]
pub struct QemuBackupReport {
    /// The common report.
    #[serde(flatten)]
    pub backup: BackupReport,
    /// Consistency recorded in the manifest.
    pub consistency: Consistency,
    /// Round trip of the transaction that took the point-in-time view, in ms.
    pub transaction_ms: f64,
    /// From the freeze (or the transaction, without an agent) until guest I/O was
    /// unblocked again, in ms.
    pub io_blocked_ms: f64,
    /// How each disk was read.
    pub modes: Vec<DiskMode>,
}

/// Backs up the disks of a running QEMU as one snapshot; `shutdown` resolving (Ctrl-C)
/// cancels it. QEMU is left as found, with the new bitmaps if and only if the snapshot
/// was committed.
pub async fn backup_qemu(
    repo: Arc<Repository>,
    request: &QemuBackupRequest,
    progress: Arc<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<QemuBackupReport> {
    haven_repo::validate_name(&request.vm)?;
    let scratch = tempfile::Builder::new()
        .prefix("haven-fleece-")
        .tempdir_in(&request.scratch_dir)
        .map_err(WorkerError::io(format!(
            "cannot create a scratch folder in {}",
            request.scratch_dir.display()
        )))?;
    let mut session = Session::connect(&request.qmp, request.qmp_timeout, &request.vm).await?;
    let outcome = tokio::select! {
        result = run(&repo, request, progress, &mut session, scratch.path().to_path_buf()) => result,
        () = shutdown => Err(WorkerError::Invalid("backup cancelled".into())),
    };
    let cleanup = session.teardown().await;
    match (outcome, cleanup) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(report), Err(error)) => {
            tracing::warn!(%error, "snapshot committed, but cleanup in qemu failed; the next backup retries it");
            Ok(report)
        }
        (Err(error), Err(cleanup)) => {
            tracing::warn!(error = %cleanup, "cleanup after a failed backup failed too");
            Err(error)
        }
        (Err(error), Ok(())) => Err(error),
    }
}

/// The disks a running QEMU or qemu-storage-daemon would back up (name, size in
/// bytes): what a worker reports as its inventory.
pub async fn discover_disks(
    qmp: &std::path::Path,
    timeout: Duration,
) -> Result<Vec<(String, u64)>> {
    let mut session = Session::connect(qmp, timeout, "discovery").await?;
    let block = session
        .qmp
        .execute("query-block", json!({}))
        .await
        .map_err(WorkerError::from)?;
    let devices = graph::parse_devices(&block);
    let disks = graph::select_disks(&devices, &session.nodes().await?, &[])?;
    Ok(disks
        .into_iter()
        .filter(|disk| !disk.node.starts_with("haven-"))
        .map(|disk| (disk.name, disk.size))
        .collect())
}

async fn run(
    repo: &Arc<Repository>,
    request: &QemuBackupRequest,
    progress: Arc<Progress>,
    session: &mut Session,
    scratch: PathBuf,
) -> Result<QemuBackupReport> {
    let started = Instant::now();
    session.clean_leftovers().await?;
    let plan = plan_snapshot(repo, &request.vm).await?;
    let previous_chain = |name: &str| {
        plan.previous
            .as_ref()
            .and_then(|manifest| manifest.disks.iter().find(|disk| disk.name == name))
            .map(|disk| disk.chain.clone())
    };

    let block = session
        .qmp
        .execute("query-block", json!({}))
        .await
        .map_err(WorkerError::from)?;
    let devices = graph::parse_devices(&block);
    let disks = graph::select_disks(&devices, &session.nodes().await?, &request.disks)?;
    for disk in &disks {
        let chain = previous_chain(&disk.name);
        let bitmap = chain
            .as_ref()
            .and_then(|chain| chain.get(CHAIN_BITMAP))
            .cloned();
        session.reconcile_bitmaps(disk, bitmap.as_deref()).await?;
    }
    // Reconciling changed the bitmaps: decide on what QEMU shows now.
    let nodes = session.nodes().await?;
    let disks = graph::select_disks(&devices, &nodes, &request.disks)?;

    let new_bitmap = bitmap_name(&request.vm, &plan.id.timestamp);
    let mut bases = Vec::with_capacity(disks.len());
    let mut modes = Vec::with_capacity(disks.len());
    for (position, disk) in disks.into_iter().enumerate() {
        let base = base_index(repo, plan.previous.as_ref(), &disk.name).await;
        let facts = base.as_ref().map(|index| chain::BaseFacts {
            size: index.disk_size(),
            chunk_size: index.chunk_size(),
        });
        let chain = previous_chain(&disk.name);
        let mode = chain::decide(&request.vm, &disk, chain.as_ref(), facts, repo.chunk_size());
        let old_bitmap = match &mode {
            ReadMode::Incremental { bitmap } => {
                tracing::info!(
                    disk = disk.name,
                    bitmap,
                    "incremental: reading blocks the bitmap marks dirty"
                );
                Some(bitmap.clone())
            }
            ReadMode::Full { reason } if plan.previous.is_none() => {
                tracing::info!(disk = disk.name, reason, "full read");
                None
            }
            ReadMode::Full { reason } => {
                tracing::warn!(disk = disk.name, reason, "falling back to a full read");
                None
            }
        };
        modes.push(mode);
        bases.push(base);
        session.disks.push(DiskObjects::new(
            position,
            &request.vm,
            disk,
            &scratch,
            new_bitmap.clone(),
            old_bitmap,
        ));
    }
    let vm_config = vm_config(session, &block, &nodes).await;
    session.add_fleece_nodes().await?;

    let (transaction, io_blocked, consistency) = snapshot_point(session, request).await?;
    tracing::info!(
        transaction_ms = millis(transaction),
        io_blocked_ms = millis(io_blocked),
        ?consistency,
        "point-in-time view taken"
    );

    let (socket, existing) = match &request.nbd_server {
        Some(socket) => (socket.clone(), true),
        None => (scratch.join("nbd.sock"), false),
    };
    session.start_nbd_server(&socket, existing).await?;
    let mut committed = Vec::with_capacity(session.disks.len());
    for (position, base) in bases.iter().enumerate() {
        session.export(position).await?;
        let objects = &session.disks[position];
        let changes = match &objects.old_bitmap {
            Some(old) => ChangeSource::DirtyBitmap(dirty_bitmap_context(old)),
            None => ChangeSource::Full,
        };
        let input = DiskBackupInput {
            read_limit: request.read_limit.clone(),
            source: DiskSource::Nbd {
                endpoint: Endpoint::Unix(socket.clone()),
                export: objects.export_name.clone(),
            },
            parallel_reads: request.connections,
            base: base.as_ref(),
            changes,
        };
        let backup = backup_disk(repo.clone(), input, progress.clone()).await?;
        committed.push(CommittedDisk {
            name: objects.disk.name.clone(),
            backup,
            chain: chain::chain_entry(&objects.new_bitmap, &objects.disk),
        });
    }
    let meta = SnapshotMeta {
        source: SourceInfo {
            kind: "qemu".into(),
            origin: request.qmp.display().to_string(),
        },
        consistency,
        parent: plan
            .previous
            .as_ref()
            .map(|manifest| manifest.timestamp.clone()),
        vm_config: Some(vm_config),
    };
    let manifest =
        commit_snapshot(repo, &plan, committed, meta, request.publisher.as_ref()).await?;
    session.committed = true;
    let modes = session
        .disks
        .iter()
        .zip(modes)
        .map(|(objects, mode)| DiskMode {
            name: objects.disk.name.clone(),
            node: objects.disk.node.clone(),
            mode: match mode {
                ReadMode::Incremental { .. } => "incremental",
                ReadMode::Full { .. } => "full",
            },
            reason: match mode {
                ReadMode::Incremental { .. } => None,
                ReadMode::Full { reason } => Some(reason),
            },
            bitmap: objects.new_bitmap.clone(),
        })
        .collect();
    Ok(QemuBackupReport {
        backup: BackupReport::new(&manifest, started.elapsed()),
        consistency,
        transaction_ms: millis(transaction),
        io_blocked_ms: millis(io_blocked),
        modes,
    })
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// Freezes the guest's file systems if an agent is configured, runs the transaction,
/// thaws. An agent that does not answer in time makes the snapshot crash-consistent
/// (recorded as such), not a failed backup.
async fn snapshot_point(
    session: &mut Session,
    request: &QemuBackupRequest,
) -> Result<(Duration, Duration, Consistency)> {
    let mut agent = None;
    if let Some(socket) = &request.guest_agent {
        match GuestAgent::connect(socket, request.freeze_timeout).await {
            Ok(connected) => agent = Some(connected),
            Err(error) => {
                tracing::warn!(%error, "guest agent unreachable: the snapshot is only crash-consistent")
            }
        }
    }
    let blocked_since = Instant::now();
    let mut frozen = false;
    if let Some(agent) = agent.as_mut() {
        match agent.execute("guest-fsfreeze-freeze", json!({})).await {
            Ok(_) => frozen = true,
            Err(error) => {
                tracing::warn!(%error, "guest freeze failed: the snapshot is only crash-consistent")
            }
        }
    }
    let transaction = session.take_point_in_time().await;
    if let Some(agent) = agent.as_mut() {
        // Thaw even after a failed or timed-out freeze: it may have half-happened.
        if let Err(error) = agent.execute("guest-fsfreeze-thaw", json!({})).await {
            tracing::warn!(%error, "guest thaw failed");
        }
    }
    let io_blocked = blocked_since.elapsed();
    let transaction = transaction?;
    let consistency = if frozen {
        Consistency::ApplicationConsistent
    } else {
        Consistency::CrashConsistent
    };
    Ok((transaction, io_blocked, consistency))
}

/// The VM's configuration as QEMU shows it: version, command line (from the process,
/// when it runs on this host) and block graph, so a restore can recreate the VM.
async fn vm_config(session: &mut Session, block: &Value, nodes: &[graph::NodeInfo]) -> VmConfig {
    let command_line: Option<Vec<String>> = session
        .qmp
        .peer_pid()
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|raw| {
            raw.split(|byte| *byte == 0)
                .filter(|part| !part.is_empty())
                .map(|part| String::from_utf8_lossy(part).into_owned())
                .collect()
        });
    let nodes: Vec<Value> = nodes
        .iter()
        .filter(|node| !node.name.starts_with(graph::HAVEN_PREFIX))
        .map(|node| {
            json!({"node-name": node.name, "driver": node.driver, "size": node.size,
                   "file": node.filename, "read-only": node.read_only})
        })
        .collect();
    let data = json!({
        "qemu_version": session.qmp.version(),
        "command_line": command_line,
        "block": block,
        "nodes": nodes,
    });
    VmConfig {
        kind: "qemu-block-graph".into(),
        data: data.to_string(),
    }
}
