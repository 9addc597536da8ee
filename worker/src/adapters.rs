//! Hypervisor adapters: the first stage of the data path (hypervisor → NBD → pipeline →
//! repository).
//!
//! An adapter knows one kind of source (image files, a running QEMU, a libvirt domain,
//! a vSphere VM) and implements [`HypervisorAdapter`]: it finds the disks, decides how
//! each is read (full, or only what a dirty bitmap or checkpoint marks changed:
//! [`chain`]), takes the point-in-time view, exports each disk over NBD (or, for a raw
//! image, hands over the file itself), records the VM's configuration, and tears down
//! what it created whether the snapshot was committed or not. [`driver::back_up_vm`]
//! runs every adapter the same way: plan → base index → back up each disk → commit.
//! Reading, deduplicating and storing the data is the [`crate::pipeline`]'s job.

use std::collections::BTreeMap;

use haven_repo::{Consistency, SourceInfo, VmConfig};

use crate::error::Result;
use crate::pipeline::backup::{ChangeSource, DiskSource};
use crate::pipeline::snapshot::SnapshotPlan;
use chain::{Previous, ReadMode};

pub mod chain;
pub mod driver;
pub mod hooks;
pub mod image;
pub mod libvirt;
mod marker;
pub mod qemu;
pub mod vsphere;

/// One kind of hypervisor, as the backup driver sees it.
///
/// The driver calls the methods in this order: [`prepare`](Self::prepare), the
/// snapshot is planned, [`disks`](Self::disks), [`read_mode`](Self::read_mode) per
/// disk, [`vm_config`](Self::vm_config), [`snapshot_point`](Self::snapshot_point),
/// then [`export`](Self::export) and [`end_export`](Self::end_export) per disk while
/// the pipeline reads it, and after the commit (or any failure, or cancellation)
/// [`teardown`](Self::teardown). Positions are indexes into the list `disks` returned.
/// Nothing here assumes QEMU: an adapter only has to end in an NBD export or a raw
/// file.
#[async_trait::async_trait]
pub trait HypervisorAdapter: Send {
    /// Where the snapshot comes from, as the manifest records it.
    fn source(&self) -> SourceInfo;

    /// Gets the hypervisor ready before the snapshot is planned: checks the request
    /// and removes what a killed run left behind.
    async fn prepare(&mut self) -> Result<()> {
        Ok(())
    }

    /// The names of the disks to back up, in order; `plan` names the new snapshot and
    /// holds the previous one, whose chain the adapter may reconcile with the
    /// hypervisor first.
    async fn disks(&mut self, plan: &SnapshotPlan) -> Result<Vec<String>>;

    /// How disk `position` is read, given what the previous snapshot offers it (usually
    /// [`chain::MarkerKind::decide`]); `None` when the hypervisor cannot say what
    /// changed, so every disk is read in full (deduplicated against its base).
    fn read_mode(&self, _position: usize, _previous: &Previous<'_>) -> Option<ReadMode> {
        None
    }

    /// The VM's configuration to store with the snapshot, so a restore can recreate it.
    async fn vm_config(&mut self) -> Result<Option<VmConfig>> {
        Ok(None)
    }

    /// Takes the point-in-time view of every disk at once, to be read as `modes` say
    /// (one per disk); returns how consistent it is.
    async fn snapshot_point(&mut self, modes: &[ReadMode]) -> Result<Consistency>;

    /// After [`HypervisorAdapter::snapshot_point`]: why the snapshot is less
    /// consistent than asked for (a freeze was asked and did not happen), recorded in
    /// the manifest; `None` when it is as asked.
    fn consistency_reason(&self) -> Option<String> {
        None
    }

    /// Exports disk `position` for reading: where the pipeline reads it and which
    /// blocks it reads.
    async fn export(&mut self, position: usize) -> Result<(DiskSource, ChangeSource)>;

    /// Ends the export of disk `position` once the pipeline has read it.
    async fn end_export(&mut self, _position: usize) -> Result<()> {
        Ok(())
    }

    /// The chain to record for disk `position` in the new manifest, for the next
    /// incremental.
    fn chain_entry(&self, _position: usize) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// Undoes what the backup created. `committed` says whether the snapshot's manifest
    /// was committed: only then may the hypervisor keep this snapshot's marker and drop
    /// the previous one; otherwise every change since the previous marker must stay
    /// tracked.
    async fn teardown(&mut self, committed: bool) -> Result<()>;
}
