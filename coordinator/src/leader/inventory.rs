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

use super::tick::TickReport;
use super::{Leader, Result};
use crate::model::{self, now_ms};
use crate::store::Op;

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
