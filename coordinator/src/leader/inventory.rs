//! Inventory garbage collection: VM records of VMs their host no longer reports.
//!
//! A VM record is written when a worker reports it and was never deleted, so a VM
//! deleted on its hypervisor got a failing backup job every round, forever. The
//! evidence that a VM is gone is a report of its host without it (a host no worker
//! reports any more proves nothing, and its VMs stay). Discovery drops a VM whose
//! QMP socket does not answer in time, so one such report is not enough: the record
//! is deleted once the VM has been missing for the grace period
//! ([`super::LeaderSettings::inventory_grace`]) and no job of it is active. Its
//! snapshots stay in the catalog and the repository, restorable by name.
//!
//! VM names are the VMs' identity across the cluster (records, jobs, snapshots and
//! retention are all keyed by name), so they must be unique: a VM reported under a
//! name that another host's VM holds is left out of the inventory, with a warning,
//! instead of overwriting the other VM's record and mixing their snapshots. A VM
//! that moves (its old host's reports leave it out) is taken over by its new host.

use super::state::State;
use super::tick::TickReport;
use super::{Leader, Result};
use crate::model::{self, VmRecord, now_ms};
use crate::store::Op;

/// A reported VM whose name another host's VM holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TakenName {
    /// The VM name.
    pub vm: String,
    /// The host that reported it now.
    pub host: String,
    /// The host whose VM holds the name.
    pub owner: String,
}

/// `hosts` without the VMs whose name belongs to a VM of another host that still
/// reports it, and those VMs. A record whose host has left it out of a report
/// (missing, see the module documentation) is free: the VM moved.
pub(super) fn without_taken_names(
    state: &State,
    hosts: Vec<(String, Vec<VmRecord>)>,
) -> (Vec<(String, Vec<VmRecord>)>, Vec<TakenName>) {
    let mut taken = Vec::new();
    let hosts = hosts
        .into_iter()
        .map(|(host, vms)| {
            let vms = vms
                .into_iter()
                .filter(|vm| match state.vms.get(&vm.name) {
                    Some(owner)
                        if owner.host != host && !state.missing_since.contains_key(&vm.name) =>
                    {
                        taken.push(TakenName {
                            vm: vm.name.clone(),
                            host: host.clone(),
                            owner: owner.host.clone(),
                        });
                        false
                    }
                    _ => true,
                })
                .collect();
            (host, vms)
        })
        .collect();
    (hosts, taken)
}

/// Says, for each taken name, why that VM is not in the inventory.
pub(super) fn warn_taken(taken: &[TakenName]) {
    for name in taken {
        tracing::warn!(
            vm = name.vm,
            host = name.host,
            owner = name.owner,
            "VM {:?} of host {:?} is not backed up: a VM of host {:?} has that name, and VM \
             names must be unique across the cluster; rename one of them",
            name.vm,
            name.host,
            name.owner
        );
    }
}

impl Leader {
    /// Deletes the records of VMs missing from their host's reports for longer than
    /// the grace period, except those with an active job (deleted once it ends).
    pub(super) async fn forget_missing_vms(&self, report: &mut TickReport) -> Result<()> {
        let _mutating = self.mutating().await;
        let now = now_ms();
        let grace = u64::try_from(self.settings.inventory_grace.as_millis()).unwrap_or(u64::MAX);
        let gone: Vec<String> = {
            let state = self.state();
            state
                .missing_since
                .iter()
                .filter(|(_, since)| now.saturating_sub(**since) >= grace)
                .map(|(name, _)| name.clone())
                .filter(|name| state.active_job(|job| &job.vm == name).is_none())
                .collect()
        };
        if gone.is_empty() {
            return Ok(());
        }
        let ops = gone
            .iter()
            .map(|name| Op::Delete(model::vm_key(name)))
            .collect();
        self.write_batched(ops).await?;
        let mut state = self.state();
        for name in &gone {
            tracing::info!(
                vm = name,
                "VM no longer reported by its host; its record is deleted"
            );
            state.missing_since.remove(name);
            state.vms.remove(name);
        }
        report.forgotten_vms += gone.len();
        Ok(())
    }
}
