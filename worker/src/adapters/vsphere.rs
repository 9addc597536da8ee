//! The vSphere adapter: VMware VMs through the vSphere API, without VMware's VDDK.
//!
//! The way Xen Orchestra and virt-v2v do it: change tracking (CBT) is turned on when it
//! is off (the first backup is then full), a snapshot of the VM is taken (quiesced when
//! VMware Tools run), vSphere is asked per disk which areas changed since the
//! `changeId` the previous snapshot recorded (`QueryChangedDiskAreas`; `"*"` for a full
//! read: the allocated areas only), only those areas of the disk's `-flat.vmdk` are read
//! over the datastore's HTTPS interface ([`crate::pipeline::ranged`]), and the snapshot is
//! removed whatever happened. The snapshot's new `changeId`s go into the manifest's
//! chain for the next incremental, with the VM's hardware as its configuration.
//!
//! Haven names its vSphere snapshots `haven-VM-YYYYMMDDTHHMMSSZ`, so a run killed
//! before removing one (`kill -9`, a crash) is cleaned up by the next run. A `changeId`
//! vSphere rejects (tracking was reset, the disk was restored), a disk whose size
//! changed or a base that does not match gives a full read with the reason reported.
//!
//! Tested against govmomi's vCenter simulator only (see `docs/vsphere.md`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use haven_repo::{Consistency, Progress, Repository, SourceInfo, VmConfig};
use haven_vsphere::{Client, ConnectOptions, MoRef, VirtualDisk, VmInfo, VsphereError};
use serde::Serialize;

use super::HypervisorAdapter;
use super::chain::{CHAIN_SIZE, Previous, ReadMode, ReadSummary};
use super::driver::{LiveBackupOptions, back_up_vm};
use super::marker::{is_marker, marker_name};
use crate::error::{Result, WorkerError};
use crate::pipeline::backup::{ChangeSource, DiskSource};
use crate::pipeline::ranged::{ByteArea, RangeRead};
use crate::pipeline::snapshot::{BackupReport, SnapshotPlan};

/// Manifest `chain` key: the disk's changeId at the snapshot point.
pub const CHAIN_CHANGE_ID: &str = "change-id";
/// Manifest `chain` key: the disk's device key, which a changeId belongs to.
pub const CHAIN_DEVICE_KEY: &str = "device-key";
/// Separator of Haven's snapshot names (`haven-VM-20261206T210000Z`).
const SEPARATOR: char = '-';
/// `VmConfig::kind` of the hardware record.
pub const VM_CONFIG_KIND: &str = "vsphere-hardware";

/// A backup of one vSphere VM.
pub struct VsphereBackupRequest {
    /// Where and as whom to connect.
    pub connect: ConnectOptions,
    /// The VM's name in vSphere.
    pub vm_name: String,
    /// The name the snapshot is filed under, the disks (by descriptor file name without
    /// `.vmdk`) and where the backup goes.
    pub live: LiveBackupOptions,
}

/// How one disk was read.
#[derive(Debug, Clone, Serialize)]
pub struct VsphereDiskMode {
    /// Disk name in the snapshot.
    pub name: String,
    /// Its descriptor, `[datastore] folder/name.vmdk`.
    pub file: String,
    /// Bytes vSphere reported changed (incremental) or allocated (full).
    pub area_bytes: u64,
    /// Incremental or full, and why.
    #[serde(flatten)]
    pub read: ReadSummary,
}

/// The report of a vSphere backup.
#[derive(Debug, Clone, Serialize)]
pub struct VsphereBackupReport {
    /// The common report.
    #[serde(flatten)]
    pub backup: BackupReport,
    /// Consistency recorded in the manifest.
    pub consistency: Consistency,
    /// The snapshot taken in vSphere (removed by now).
    pub vsphere_snapshot: String,
    /// Whether this run turned change tracking on.
    pub enabled_change_tracking: bool,
    /// Snapshots of earlier runs Haven removed first.
    pub removed_leftovers: Vec<String>,
    /// How each disk was read.
    pub modes: Vec<VsphereDiskMode>,
}

/// Every VM of a vCenter (or ESXi host) with its disks (name, size in bytes): what a
/// worker reports as the inventory of a `vcenter` host. A VM whose name or a disk's
/// name Haven cannot use is left out with a warning rather than listed and then failed.
pub async fn discover_vms(connect: &ConnectOptions) -> Result<Vec<(String, Vec<(String, u64)>)>> {
    let client = Client::connect(connect).await?;
    let listed = client.inventory().await;
    if let Err(error) = client.logout().await {
        tracing::debug!(%error, "vSphere logout failed");
    }
    let mut vms = Vec::new();
    for vm in listed? {
        let disks: Result<Vec<(String, u64)>> = vm
            .disks
            .iter()
            .map(|disk| Ok((disk_name(&disk.file_name)?, disk.capacity)))
            .collect();
        match (haven_repo::validate_name(&vm.name), disks) {
            (Ok(()), Ok(disks)) => vms.push((vm.name, disks)),
            (Err(error), _) => {
                tracing::warn!(vm = %vm.name, %error, "vSphere VM left out of the inventory")
            }
            (_, Err(error)) => {
                tracing::warn!(vm = %vm.name, error = %error.chain(), "vSphere VM left out of the inventory")
            }
        }
    }
    Ok(vms)
}

/// Backs up a vSphere VM as one snapshot and commits it; `shutdown` resolving cancels
/// it. The vSphere snapshot is removed in every case.
pub async fn backup_vsphere(
    repo: Arc<Repository>,
    request: &VsphereBackupRequest,
    progress: Arc<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<VsphereBackupReport> {
    haven_repo::validate_name(&request.live.vm)?;
    let client = Arc::new(Client::connect(&request.connect).await?);
    let mut adapter = VsphereAdapter {
        request,
        client: client.clone(),
        state: None,
        selected: Vec::new(),
        snapshot: None,
        snapshot_name: String::new(),
        enabled_change_tracking: false,
        removed_leftovers: Vec::new(),
        modes: Vec::new(),
        reads: Vec::new(),
    };
    let options = request.live.driver();
    let backup = back_up_vm(&repo, &mut adapter, &options, progress, shutdown).await;
    if let Err(error) = client.logout().await {
        tracing::debug!(%error, "vSphere logout failed");
    }
    let backup = backup?;
    let modes = adapter
        .selected
        .iter()
        .zip(&adapter.modes)
        .zip(&adapter.reads)
        .map(|((disk, mode), read)| VsphereDiskMode {
            name: disk.name.clone(),
            file: disk.disk.file_name.clone(),
            area_bytes: read.areas.iter().map(|area| area.length).sum(),
            read: ReadSummary::from(mode),
        })
        .collect();
    Ok(VsphereBackupReport {
        backup: backup.report,
        consistency: backup.consistency,
        vsphere_snapshot: adapter.snapshot_name,
        enabled_change_tracking: adapter.enabled_change_tracking,
        removed_leftovers: adapter.removed_leftovers,
        modes,
    })
}

/// What the adapter learned of the VM in `prepare`.
struct VmState {
    info: VmInfo,
    datacenter: String,
}

/// A disk chosen for the backup.
struct SelectedDisk {
    name: String,
    disk: VirtualDisk,
}

/// How a disk is read once the snapshot exists.
struct DiskRead {
    /// Where its bytes are.
    reader: Arc<FlatDisk>,
    /// The areas to read (changed, or allocated for a full read).
    areas: Arc<[ByteArea]>,
    /// The snapshot's changeId for this disk, for the next incremental.
    change_id: Option<String>,
}

struct VsphereAdapter<'a> {
    request: &'a VsphereBackupRequest,
    client: Arc<Client>,
    state: Option<VmState>,
    selected: Vec<SelectedDisk>,
    snapshot: Option<MoRef>,
    snapshot_name: String,
    enabled_change_tracking: bool,
    removed_leftovers: Vec<String>,
    /// How each disk is read: decided from the previous snapshot, then a full read if
    /// vSphere rejects the changeId.
    modes: Vec<ReadMode>,
    reads: Vec<DiskRead>,
}

impl VsphereAdapter<'_> {
    fn state(&self) -> Result<&VmState> {
        self.state
            .as_ref()
            .ok_or_else(|| WorkerError::InvalidInput("the VM was not looked up".into()))
    }

    /// The areas of disk `disk` to read at `snapshot`: changed since `mode`'s changeId,
    /// or allocated; a rejected changeId turns the mode into a full read with the reason.
    async fn areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        disk: &VirtualDisk,
        tracked: bool,
        mode: &mut ReadMode,
    ) -> Result<Vec<ByteArea>> {
        if !tracked {
            *mode = ReadMode::Full {
                reason: "change tracking is off for this disk".into(),
            };
            return Ok(vec![ByteArea {
                start: 0,
                length: disk.capacity,
            }]);
        }
        let query = |change_id: String| {
            let client = self.client.clone();
            async move {
                client
                    .changed_areas(vm, snapshot, disk.key, &change_id, disk.capacity)
                    .await
            }
        };
        let areas = match mode.marker().map(str::to_string) {
            Some(change_id) => match query(change_id.clone()).await {
                Ok(areas) => areas,
                Err(VsphereError::Fault { fault, message, .. }) => {
                    let reason =
                        format!("vSphere rejected changeId {change_id:?}: {fault}: {message}");
                    tracing::warn!(disk = %disk.label, reason = %reason, "falling back to a full read");
                    *mode = ReadMode::Full { reason };
                    query("*".into()).await?
                }
                Err(error) => return Err(error.into()),
            },
            None => query("*".into()).await?,
        };
        Ok(areas
            .into_iter()
            .map(|area| ByteArea {
                start: area.start,
                length: area.length,
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl HypervisorAdapter for VsphereAdapter<'_> {
    fn source(&self) -> SourceInfo {
        SourceInfo {
            kind: "vsphere".into(),
            origin: format!("{} VM {}", self.request.connect.url, self.request.vm_name),
        }
    }

    async fn prepare(&mut self) -> Result<()> {
        let client = &self.client;
        let vm = client.find_vm(&self.request.vm_name).await?;
        let mut info = client.vm_info(&vm).await?;
        let vm_name = &self.request.live.vm;
        let leftovers = client
            .remove_snapshots(&info.snapshots, |name| is_marker(SEPARATOR, vm_name, name))
            .await?;
        if !leftovers.is_empty() {
            tracing::warn!(snapshots = ?leftovers, "removed vSphere snapshots an earlier run left");
            self.removed_leftovers = leftovers;
        }
        if !info.change_tracking {
            tracing::info!("turning on change tracking; this backup reads every allocated area");
            client.enable_change_tracking(&vm).await?;
            self.enabled_change_tracking = true;
            info = client.vm_info(&vm).await?;
        }
        let datacenter = client.datacenter_of(&vm).await?;
        self.state = Some(VmState { info, datacenter });
        Ok(())
    }

    async fn disks(&mut self, plan: &SnapshotPlan) -> Result<Vec<String>> {
        self.snapshot_name = marker_name(SEPARATOR, &self.request.live.vm, &plan.id.timestamp);
        let state = self.state()?;
        let mut selected = Vec::new();
        for disk in &state.info.disks {
            let name = disk_name(&disk.file_name)?;
            if !self.request.live.disks.is_empty() && !self.request.live.disks.contains(&name) {
                continue;
            }
            if disk.backing != "VirtualDiskFlatVer2BackingInfo" {
                return Err(WorkerError::InvalidInput(format!(
                    "disk {name} ({}) is backed by {}: only flat VMDK disks are supported",
                    disk.file_name, disk.backing
                )));
            }
            if selected
                .iter()
                .any(|other: &SelectedDisk| other.name == name)
            {
                return Err(WorkerError::InvalidInput(format!(
                    "two disks of the VM are named {name}"
                )));
            }
            selected.push(SelectedDisk {
                name,
                disk: disk.clone(),
            });
        }
        for wanted in &self.request.live.disks {
            if !selected.iter().any(|disk| &disk.name == wanted) {
                let names: Vec<String> = state
                    .info
                    .disks
                    .iter()
                    .filter_map(|disk| disk_name(&disk.file_name).ok())
                    .collect();
                return Err(WorkerError::InvalidInput(format!(
                    "the VM has no disk {wanted} (it has {})",
                    names.join(", ")
                )));
            }
        }
        if selected.is_empty() {
            return Err(WorkerError::InvalidInput("the VM has no disk".into()));
        }
        self.selected = selected;
        Ok(self.selected.iter().map(|disk| disk.name.clone()).collect())
    }

    fn read_mode(&self, position: usize, previous: &Previous<'_>) -> Option<ReadMode> {
        let disk = &self.selected[position].disk;
        Some(decide(disk, previous, self.enabled_change_tracking))
    }

    async fn vm_config(&mut self) -> Result<Option<VmConfig>> {
        let data = serde_json::to_string_pretty(&self.state()?.info).map_err(|error| {
            WorkerError::InvalidInput(format!("cannot record the VM's hardware: {error}"))
        })?;
        Ok(Some(VmConfig {
            kind: VM_CONFIG_KIND.into(),
            data,
        }))
    }

    async fn snapshot_point(&mut self, modes: &[ReadMode]) -> Result<Consistency> {
        let (vm, quiesce, datacenter) = {
            let state = self.state()?;
            (
                state.info.vm.clone(),
                state.info.tools_running,
                state.datacenter.clone(),
            )
        };
        let snapshot = self
            .client
            .create_snapshot(
                &vm,
                &self.snapshot_name,
                "Haven backup; removed when the backup ends",
                quiesce,
            )
            .await?;
        self.snapshot = Some(snapshot.clone());
        tracing::info!(
            snapshot = %self.snapshot_name,
            quiesced = quiesce,
            "point-in-time view taken"
        );
        let at_snapshot = self.client.snapshot_disks(&snapshot).await?;
        let mut reads = Vec::with_capacity(self.selected.len());
        let mut new_modes = Vec::with_capacity(self.selected.len());
        for (selected, mode) in self.selected.iter().zip(modes) {
            let disk = at_snapshot
                .iter()
                .find(|disk| disk.key == selected.disk.key)
                .ok_or_else(|| {
                    WorkerError::Unreachable(format!(
                        "disk {} is not in the snapshot: it was removed meanwhile",
                        selected.name
                    ))
                })?;
            let mut mode = mode.clone();
            let tracked = disk.change_id.is_some();
            let areas = self.areas(&vm, &snapshot, disk, tracked, &mut mode).await?;
            let (datastore, path) =
                haven_vsphere::datastore_path(&disk.file_name).ok_or_else(|| {
                    WorkerError::InvalidInput(format!(
                        "disk {} has no datastore path: {:?}",
                        selected.name, disk.file_name
                    ))
                })?;
            let flat = haven_vsphere::flat_file(path).ok_or_else(|| {
                WorkerError::InvalidInput(format!("disk {} is not a .vmdk", selected.name))
            })?;
            let url = self.client.datastore_url(&datacenter, datastore, &flat)?;
            reads.push(DiskRead {
                reader: Arc::new(FlatDisk {
                    client: self.client.clone(),
                    url,
                    size: disk.capacity,
                }),
                areas: areas.into(),
                change_id: disk.change_id.clone(),
            });
            new_modes.push(mode);
        }
        self.reads = reads;
        self.modes = new_modes;
        Ok(if quiesce {
            Consistency::ApplicationConsistent
        } else {
            Consistency::CrashConsistent
        })
    }

    async fn export(&mut self, position: usize) -> Result<(DiskSource, ChangeSource)> {
        let read = &self.reads[position];
        let changes = match &self.modes[position] {
            ReadMode::Incremental { .. } => ChangeSource::ChangedAreas(read.areas.clone()),
            ReadMode::Full { .. } => ChangeSource::Full,
        };
        Ok((
            DiskSource::Ranged {
                reader: read.reader.clone(),
                allocated: read.areas.clone(),
            },
            changes,
        ))
    }

    fn chain_entry(&self, position: usize) -> BTreeMap<String, String> {
        let disk = &self.selected[position].disk;
        let mut chain = BTreeMap::from([
            (CHAIN_SIZE.to_string(), disk.capacity.to_string()),
            (CHAIN_DEVICE_KEY.to_string(), disk.key.to_string()),
        ]);
        if let Some(change_id) = self
            .reads
            .get(position)
            .and_then(|read| read.change_id.clone())
        {
            chain.insert(CHAIN_CHANGE_ID.to_string(), change_id);
        }
        chain
    }

    async fn teardown(&mut self, _committed: bool) -> Result<()> {
        // A changeId stays valid after its snapshot is removed, so the snapshot goes
        // whether or not the manifest was committed.
        match self.snapshot.take() {
            Some(snapshot) => Ok(self.client.remove_snapshot(&snapshot).await?),
            None => Ok(()),
        }
    }
}

/// The disk's name in the snapshot: its descriptor's file name without `.vmdk`
/// (`disk1` for `[ds] vm/disk1.vmdk`); also how a restore finds the recorded disk.
pub(crate) fn disk_name(file_name: &str) -> Result<String> {
    let file = file_name.rsplit(['/', ']', ' ']).next().unwrap_or_default();
    let name = file.strip_suffix(".vmdk").unwrap_or(file).to_string();
    haven_repo::validate_name(&name).map_err(|_| {
        WorkerError::InvalidInput(format!(
            "disk {file_name:?} has a file name Haven cannot use as a disk name"
        ))
    })?;
    Ok(name)
}

/// Incremental from the previous snapshot's changeId when everything still matches;
/// otherwise a full read with the reason.
fn decide(disk: &VirtualDisk, previous: &Previous<'_>, just_enabled: bool) -> ReadMode {
    let full = |reason: String| ReadMode::Full { reason };
    if just_enabled {
        return full("change tracking was off; Haven turned it on".into());
    }
    let Some(chain) = previous.chain else {
        return full("no previous snapshot of this disk".into());
    };
    let Some(change_id) = chain.get(CHAIN_CHANGE_ID) else {
        return full("the previous snapshot records no changeId".into());
    };
    let size = disk.capacity.to_string();
    if chain.get(CHAIN_SIZE) != Some(&size) {
        return full(format!(
            "disk size changed from {} to {size}",
            chain.get(CHAIN_SIZE).map_or("?", String::as_str)
        ));
    }
    if chain.get(CHAIN_DEVICE_KEY) != Some(&disk.key.to_string()) {
        return full("the previous snapshot's changeId belongs to another device".into());
    }
    match previous.base {
        None => full(
            "the previous snapshot's index is unreadable, missing or failed verification".into(),
        ),
        Some(base) if base.size != disk.capacity || base.chunk_size != previous.chunk_size => full(
            "the previous snapshot's index does not match the disk (another disk or chunk size)"
                .into(),
        ),
        Some(_) => ReadMode::Incremental {
            marker: change_id.clone(),
        },
    }
}

/// A flat disk file read over the datastore's HTTPS interface.
struct FlatDisk {
    client: Arc<Client>,
    url: haven_vsphere::Url,
    size: u64,
}

impl std::fmt::Debug for FlatDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlatDisk")
            .field("url", &self.url.path())
            .finish()
    }
}

#[async_trait::async_trait]
impl RangeRead for FlatDisk {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(self.client.read_range(&self.url, offset, buf).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::chain::BaseFacts;

    fn disk(capacity: u64) -> VirtualDisk {
        VirtualDisk {
            key: 2000,
            label: "Hard disk 1".into(),
            file_name: "[ds] vm/disk1.vmdk".into(),
            capacity,
            change_id: Some("52 aa/2".into()),
            controller: "ParaVirtualSCSIController".into(),
            backing: "VirtualDiskFlatVer2BackingInfo".into(),
        }
    }

    #[test]
    fn incremental_only_when_everything_matches() {
        let chain = BTreeMap::from([
            (CHAIN_CHANGE_ID.to_string(), "52 aa/1".to_string()),
            (CHAIN_SIZE.to_string(), "1048576".to_string()),
            (CHAIN_DEVICE_KEY.to_string(), "2000".to_string()),
        ]);
        let base = BaseFacts {
            size: 1 << 20,
            chunk_size: 1 << 19,
        };
        let previous = Previous {
            chain: Some(&chain),
            base: Some(base),
            chunk_size: 1 << 19,
        };
        assert_eq!(
            decide(&disk(1 << 20), &previous, false),
            ReadMode::Incremental {
                marker: "52 aa/1".into()
            }
        );
        let reason = |mode: ReadMode| mode.reason().unwrap_or_default().to_string();
        assert!(reason(decide(&disk(1 << 20), &previous, true)).contains("was off"));
        assert!(reason(decide(&disk(2 << 20), &previous, false)).contains("size changed"));
        let no_base = Previous {
            base: None,
            ..previous
        };
        assert!(reason(decide(&disk(1 << 20), &no_base, false)).contains("index"));
        let none = Previous {
            chain: None,
            ..previous
        };
        assert!(reason(decide(&disk(1 << 20), &none, false)).contains("no previous"));
    }

    #[test]
    fn disk_names_come_from_descriptors() {
        assert_eq!(disk_name(&disk(1).file_name).ok().as_deref(), Some("disk1"));
    }
}
