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
//! about the chain ([`chain::decide`](super::chain::MarkerKind::decide)) means a full read, logged with its reason.

mod chain;
pub(crate) mod graph;
pub mod qmp;
mod session;
pub mod watchdog;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_nbd::{Endpoint, dirty_bitmap_context};
use haven_repo::{Consistency, Progress, Repository, SourceInfo, VmConfig};
use serde::Serialize;
use serde_json::{Value, json};

pub use chain::{BITMAP, CHAIN_BITMAP, CHAIN_NODE, CHAIN_SIZE};
pub use graph::{LiveDisk, select_disks};

use super::HypervisorAdapter;
use super::chain::{Previous, ReadMode, ReadSummary};
use super::driver::{LiveBackupOptions, back_up_vm, millis};
use crate::adapters::qemu::qmp::GuestAgent;
use crate::error::Result;
use crate::pipeline::backup::{ChangeSource, DiskSource};
use crate::pipeline::snapshot::{BackupReport, SnapshotPlan};
use session::{DiskObjects, Session};
use watchdog::{ThawWatchdog, WATCHDOG_GRACE};

/// What to back up and how.
#[derive(Debug, Clone)]
pub struct QemuBackupRequest {
    /// The VM, its disks (by device or node name) and where the backup goes.
    pub live: LiveBackupOptions,
    /// QMP socket of the running QEMU or qemu-storage-daemon.
    pub qmp: PathBuf,
    /// Guest agent socket: freeze file systems around the snapshot point.
    pub guest_agent: Option<PathBuf>,
    /// Unix socket of an NBD server QEMU already runs (QEMU has only one); when `None`
    /// Haven starts one on a private socket and stops it afterwards.
    pub nbd_server: Option<PathBuf>,
    /// Where the temporary overlays go (QEMU must be able to write there).
    pub scratch_dir: PathBuf,
    /// Timeout of each QMP command.
    pub qmp_timeout: Duration,
    /// The freeze limit: the longest the guest's file systems stay frozen (the freeze
    /// and the snapshot point's transaction); thawed at once when it runs out. Also
    /// the timeout of each guest agent command.
    pub freeze_timeout: Duration,
}

/// How one disk was read.
#[derive(Debug, Clone, Serialize)]
pub struct DiskMode {
    /// Disk name in the snapshot.
    pub name: String,
    /// Block node read.
    pub node: String,
    /// Incremental or full, and why.
    #[serde(flatten)]
    pub read: ReadSummary,
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
    let live = &request.live;
    let scratch = live.start(&request.scratch_dir, "haven-fleece-")?;
    let session = Session::connect(&request.qmp, request.qmp_timeout, &live.vm).await?;
    let mut adapter = QemuAdapter {
        request,
        session,
        scratch: scratch.path().to_path_buf(),
        new_bitmap: String::new(),
        block: Value::Null,
        nodes: Vec::new(),
        disks: Vec::new(),
        transaction: Duration::ZERO,
        io_blocked: Duration::ZERO,
        consistency_reason: None,
        late_thaw: LateThaw::default(),
    };
    let backup = back_up_vm(&repo, &mut adapter, &live.driver(), progress, shutdown).await?;
    let modes = adapter
        .session
        .disks
        .iter()
        .zip(backup.modes)
        .map(|(objects, mode)| DiskMode {
            name: objects.disk.name.clone(),
            node: objects.disk.node.clone(),
            read: ReadSummary::from(&mode),
            bitmap: objects.new_bitmap.clone(),
        })
        .collect();
    Ok(QemuBackupReport {
        backup: backup.report,
        consistency: backup.consistency,
        transaction_ms: millis(adapter.transaction),
        io_blocked_ms: millis(adapter.io_blocked),
        modes,
    })
}

/// The disks a running QEMU or qemu-storage-daemon would back up (name, size in
/// bytes): what a worker reports as its inventory.
pub async fn discover_disks(
    qmp: &std::path::Path,
    timeout: Duration,
) -> Result<Vec<(String, u64)>> {
    let mut session = Session::connect(qmp, timeout, "discovery").await?;
    let (_, devices) = session.devices().await?;
    let disks = graph::select_disks(&devices, &session.nodes().await?, &[])?;
    Ok(disks
        .into_iter()
        .filter(|disk| !disk.node.starts_with("haven-"))
        .map(|disk| (disk.name, disk.size))
        .collect())
}

/// A running QEMU as a [`HypervisorAdapter`]: persistent dirty bitmaps mark snapshot
/// points, one QMP transaction takes the point-in-time view (fleecing), and QEMU's own
/// NBD server exports each overlay.
struct QemuAdapter<'a> {
    request: &'a QemuBackupRequest,
    session: Session,
    scratch: PathBuf,
    /// The bitmap this snapshot starts (named after it).
    new_bitmap: String,
    /// `query-block` and the block graph, for the disks and the VM's configuration.
    block: Value,
    nodes: Vec<graph::NodeInfo>,
    /// The disks to back up, as QEMU shows them after reconciling bitmaps.
    disks: Vec<LiveDisk>,
    /// Round trip of the snapshot point's transaction.
    transaction: Duration,
    /// How long guest I/O was held for it.
    io_blocked: Duration,
    /// Why the snapshot is only crash-consistent although an agent was configured.
    consistency_reason: Option<String>,
    /// A thaw started when the snapshot point was dropped; teardown waits for it.
    late_thaw: LateThaw,
}

/// Where a [`ThawOnDrop`] dropped mid snapshot point leaves the task thawing the
/// guest, so teardown waits for it: the `haven` process must not exit (ending the task)
/// with the guest still frozen.
type LateThaw = Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>;

#[async_trait::async_trait]
impl HypervisorAdapter for QemuAdapter<'_> {
    fn source(&self) -> SourceInfo {
        SourceInfo {
            kind: "qemu".into(),
            origin: self.request.qmp.display().to_string(),
        }
    }

    async fn prepare(&mut self) -> Result<()> {
        self.session.clean_leftovers().await
    }

    async fn disks(&mut self, plan: &SnapshotPlan) -> Result<Vec<String>> {
        let session = &mut self.session;
        let (block, devices) = session.devices().await?;
        let disks =
            graph::select_disks(&devices, &session.nodes().await?, &self.request.live.disks)?;
        for disk in &disks {
            let bitmap = plan
                .previous
                .as_ref()
                .and_then(|manifest| manifest.disks.iter().find(|entry| entry.name == disk.name))
                .and_then(|entry| entry.chain.get(CHAIN_BITMAP));
            session
                .reconcile_bitmaps(disk, bitmap.map(String::as_str))
                .await?;
        }
        // Reconciling changed the bitmaps: decide on what QEMU shows now.
        self.nodes = session.nodes().await?;
        self.disks = graph::select_disks(&devices, &self.nodes, &self.request.live.disks)?;
        self.block = block;
        self.new_bitmap = BITMAP.name(&self.request.live.vm, &plan.id.timestamp);
        Ok(self.disks.iter().map(|disk| disk.name.clone()).collect())
    }

    fn read_mode(&self, position: usize, previous: &Previous<'_>) -> Option<ReadMode> {
        Some(chain::decide(
            &self.request.live.vm,
            &self.disks[position],
            previous,
        ))
    }

    async fn vm_config(&mut self) -> Result<Option<VmConfig>> {
        Ok(Some(
            vm_config(&mut self.session, &self.block, &self.nodes).await,
        ))
    }

    async fn snapshot_point(&mut self, modes: &[ReadMode]) -> Result<Consistency> {
        for (position, (disk, mode)) in self.disks.iter().zip(modes).enumerate() {
            self.session.disks.push(DiskObjects::new(
                position,
                &self.request.live.vm,
                disk.clone(),
                &self.scratch,
                self.new_bitmap.clone(),
                mode.marker().map(str::to_string),
            ));
        }
        self.session.add_fleece_nodes().await?;
        let point = snapshot_point(&mut self.session, self.request, &self.late_thaw).await?;
        let consistency = point.consistency;
        tracing::info!(
            transaction_ms = millis(point.transaction),
            io_blocked_ms = millis(point.io_blocked),
            ?consistency,
            "point-in-time view taken"
        );
        self.transaction = point.transaction;
        self.io_blocked = point.io_blocked;
        self.consistency_reason = point.reason;
        let (socket, existing) = self.nbd_socket();
        self.session.start_nbd_server(&socket, existing).await?;
        Ok(consistency)
    }

    async fn export(&mut self, position: usize) -> Result<(DiskSource, ChangeSource)> {
        self.session.export(position).await?;
        let objects = &self.session.disks[position];
        let changes = match &objects.old_bitmap {
            Some(old) => ChangeSource::DirtyBitmap(dirty_bitmap_context(old)),
            None => ChangeSource::Full,
        };
        let source = DiskSource::Nbd {
            endpoint: Endpoint::Unix(self.nbd_socket().0),
            export: objects.export_name.clone(),
        };
        Ok((source, changes))
    }

    fn consistency_reason(&self) -> Option<String> {
        self.consistency_reason.clone()
    }

    fn chain_entry(&self, position: usize) -> BTreeMap<String, String> {
        let objects = &self.session.disks[position];
        BITMAP.chain_entry(&objects.new_bitmap, &chain::disk_now(&objects.disk))
    }

    async fn teardown(&mut self, committed: bool) -> Result<()> {
        let thawing = self
            .late_thaw
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thawing) = thawing {
            // Bounded: the task's connect and thaw each have the freeze limit.
            let _ = thawing.await;
        }
        self.session.committed = committed;
        self.session.teardown().await
    }
}

impl QemuAdapter<'_> {
    /// The NBD server's socket, and whether QEMU already runs it.
    fn nbd_socket(&self) -> (PathBuf, bool) {
        match &self.request.nbd_server {
            Some(socket) => (socket.clone(), true),
            None => (self.scratch.join("nbd.sock"), false),
        }
    }
}

/// The snapshot point as [`snapshot_point`] took it.
struct PointTaken {
    /// Round trip of the transaction.
    transaction: Duration,
    /// From the freeze (or the transaction) until guest I/O was unblocked.
    io_blocked: Duration,
    consistency: Consistency,
    /// Why it is only crash-consistent although an agent was configured.
    reason: Option<String>,
}

/// Freezes the guest's file systems if an agent is configured, runs the transaction,
/// thaws. An agent that does not answer in time makes the snapshot crash-consistent
/// (recorded as such, with the reason), not a failed backup.
///
/// The freeze is bounded by one number, `freeze_timeout`: the freeze command and the
/// transaction must both be done within it, counted from when the freeze is asked;
/// when it runs out the guest is thawed at once, whatever is still pending (a freeze
/// the agent has not answered, a transaction QEMU has not), and a snapshot point taken
/// after that is recorded crash-consistent with the reason. Guest I/O is so held at
/// most `freeze_timeout` plus the thaw's round trip. The thaw is sent on every path:
/// after a failed or timed-out freeze (it may have happened in the guest anyway), on
/// a fresh connection when the first one can no longer be trusted, and from a task of
/// its own when the backup is cancelled mid-way ([`ThawOnDrop`]).
async fn snapshot_point(
    session: &mut Session,
    request: &QemuBackupRequest,
    late_thaw: &LateThaw,
) -> Result<PointTaken> {
    let limit = request.freeze_timeout;
    let mut agent = None;
    let mut reason = None;
    if let Some(socket) = &request.guest_agent {
        match GuestAgent::connect(socket, limit).await {
            Ok(connected) => agent = Some(connected),
            Err(error) => {
                tracing::warn!(%error, "guest agent unreachable: the snapshot is only crash-consistent");
                reason = Some(format!("the guest agent did not answer: {error}"));
            }
        }
    }
    let blocked_since = Instant::now();
    let deadline = tokio::time::Instant::from_std(blocked_since + limit);
    let mut frozen = false;
    let mut thaw_guard = None;
    if let (Some(agent), Some(socket)) = (agent.as_mut(), &request.guest_agent) {
        // A process of its own thaws the guest if this one dies while it is frozen.
        let watchdog = match ThawWatchdog::spawn(socket, limit + WATCHDOG_GRACE, limit) {
            Ok(watchdog) => Some(watchdog),
            Err(error) => {
                tracing::warn!(%error, "no thaw watchdog: a kill of this process would leave the guest frozen");
                None
            }
        };
        thaw_guard = Some(ThawOnDrop {
            socket: socket.clone(),
            timeout: limit,
            armed: true,
            late: late_thaw.clone(),
            watchdog,
        });
        match agent
            .execute_within("guest-fsfreeze-freeze", json!({}), limit)
            .await
        {
            Ok(_) => frozen = true,
            Err(error) => {
                tracing::warn!(%error, "guest freeze failed: the snapshot is only crash-consistent");
                reason = Some(format!(
                    "the guest's file systems could not be frozen: {error}"
                ));
            }
        }
    }
    let transaction = session.take_point_in_time();
    tokio::pin!(transaction);
    let mut io_blocked = None;
    let mut late = false;
    let transaction = match thaw_guard.take() {
        None => transaction.await,
        Some(guard) => {
            tokio::select! {
                result = &mut transaction => {
                    thaw(guard, agent).await;
                    io_blocked = Some(blocked_since.elapsed());
                    result
                }
                () = tokio::time::sleep_until(deadline) => {
                    // The freeze limit ran out before the point was taken: the guest
                    // goes on at once, the transaction after it.
                    late = true;
                    thaw(guard, agent).await;
                    io_blocked = Some(blocked_since.elapsed());
                    transaction.await
                }
            }
        }
    };
    let io_blocked = io_blocked.unwrap_or_else(|| blocked_since.elapsed());
    let transaction = transaction?;
    if frozen && late {
        tracing::warn!(
            limit_seconds = limit.as_secs_f64(),
            "the snapshot point was not taken within the freeze limit: the guest was \
             thawed first, the snapshot is only crash-consistent"
        );
        frozen = false;
        reason = Some(format!(
            "the snapshot point was not taken within the freeze limit ({limit:?}): the \
             guest was thawed first"
        ));
    }
    let consistency = if frozen {
        Consistency::ApplicationConsistent
    } else {
        Consistency::CrashConsistent
    };
    Ok(PointTaken {
        transaction,
        io_blocked,
        consistency,
        reason,
    })
}

/// Thaws through `guard`, logging a failure (dropping the guard then tries again).
async fn thaw(guard: ThawOnDrop, agent: Option<GuestAgent>) {
    if let Err(error) = guard.thaw(agent).await {
        tracing::warn!(%error, "guest thaw failed");
    }
}

/// Thaws the guest if dropped before [`ThawOnDrop::thaw`] ran (the backup was
/// cancelled between freeze and thaw): a frozen guest would stay frozen, since the
/// agent never thaws by itself. Its [`ThawWatchdog`] covers what no code of this
/// process can: the process being killed.
struct ThawOnDrop {
    socket: PathBuf,
    timeout: Duration,
    /// Until a thaw succeeded.
    armed: bool,
    /// Where the thawing task goes when dropped armed.
    late: LateThaw,
    /// Released once a thaw succeeded; dropped unreleased (this process gave up, or
    /// died), it thaws the guest itself.
    watchdog: Option<ThawWatchdog>,
}

impl ThawOnDrop {
    /// Thaws through `agent`, or through a fresh connection when there is none or it
    /// answered late or oddly (a freeze that timed out here may still complete in the
    /// guest; the new connection's `guest-sync` waits for it).
    /// If it fails, dropping the guard tries once more on a new connection.
    async fn thaw(mut self, agent: Option<GuestAgent>) -> std::result::Result<(), qmp::QmpError> {
        let mut agent = match agent {
            Some(agent) if !agent.is_poisoned() => agent,
            stale => {
                drop(stale);
                GuestAgent::connect(&self.socket, self.timeout).await?
            }
        };
        agent.execute("guest-fsfreeze-thaw", json!({})).await?;
        self.armed = false;
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.release();
        }
        Ok(())
    }
}

impl Drop for ThawOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (socket, timeout) = (self.socket.clone(), self.timeout);
        let watchdog = self.watchdog.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // The watchdog, dropped unreleased, thaws.
            return;
        };
        let task = runtime.spawn(async move {
            let thawed = async {
                let mut agent = GuestAgent::connect(&socket, timeout).await?;
                agent.execute("guest-fsfreeze-thaw", json!({})).await
            };
            match thawed.await {
                Ok(_) => {
                    tracing::info!("guest thawed (second try, or after a cancellation)");
                    if let Some(watchdog) = watchdog {
                        watchdog.release();
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "guest thaw failed again: the watchdog tries");
                    drop(watchdog);
                }
            }
        });
        *self
            .late
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
    }
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
