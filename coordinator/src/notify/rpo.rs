//! RPO breaches as edges: a VM is announced once when it passes its policy's RPO,
//! and re-armed when it is back within it (a backup succeeded), not at every check.
//!
//! A pure function of the previous breaches and the leader's metrics summary (the
//! same RPO age `/metrics` exports and the shipped alert compares), table-tested
//! below. The set lives in the leader's memory: a new leader starts empty and
//! announces every breach still in progress again (see the module documentation of
//! `crate::notify`).

use std::collections::{HashMap, HashSet};

use super::Event;
use crate::leader::MetricsSummary;

/// One VM crossing its RPO, one way or the other.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpoChange {
    /// [`Event::RpoBreach`] or [`Event::RpoRecovered`].
    pub event: Event,
    /// The VM.
    pub vm: String,
    /// Its policy, whose RPO it is.
    pub policy: String,
    /// The policy's RPO.
    pub rpo_seconds: u64,
    /// The VM's RPO age when seen.
    pub age_seconds: u64,
    /// Unix seconds of its newest snapshot.
    pub last_success_seconds: Option<i64>,
    /// Its host, filled in by the leader from the inventory.
    pub host: Option<String>,
    /// Its policy's repository, filled in by the leader.
    pub repository: Option<String>,
}

/// The VMs announced in breach and not recovered since.
#[derive(Debug, Default)]
pub(crate) struct RpoWatch {
    breached: HashSet<String>,
}

impl RpoWatch {
    /// The crossings since the last call: a VM whose age is past its policy's RPO
    /// and not yet announced breaches; an announced VM within its RPO again
    /// recovers. A VM that lost its policy, its RPO or its age (it left the
    /// inventory and the catalog) is forgotten without a notification.
    pub(crate) fn observe(&mut self, summary: &MetricsSummary) -> Vec<RpoChange> {
        let rpo_of: HashMap<&str, u64> = summary
            .policy_rpo_seconds
            .iter()
            .filter(|(_, rpo)| *rpo > 0)
            .map(|(name, rpo)| (name.as_str(), *rpo))
            .collect();
        let mut changes = Vec::new();
        let mut seen = HashSet::new();
        for vm in &summary.vms {
            let (Some(&rpo_seconds), Some(age_seconds)) =
                (rpo_of.get(vm.policy.as_str()), vm.rpo_age_seconds)
            else {
                continue;
            };
            seen.insert(vm.vm.as_str());
            let breached = age_seconds > rpo_seconds;
            let event = match (breached, self.breached.contains(&vm.vm)) {
                (true, false) => {
                    self.breached.insert(vm.vm.clone());
                    Event::RpoBreach
                }
                (false, true) => {
                    self.breached.remove(&vm.vm);
                    Event::RpoRecovered
                }
                _ => continue,
            };
            changes.push(RpoChange {
                event,
                vm: vm.vm.clone(),
                policy: vm.policy.clone(),
                rpo_seconds,
                age_seconds,
                last_success_seconds: vm.last_success_seconds,
                host: None,
                repository: None,
            });
        }
        self.breached.retain(|vm| seen.contains(vm.as_str()));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::VmSummary;

    /// A VM as a check sees it: `(name, policy, RPO age)`.
    type Seen<'a> = (&'a str, &'a str, Option<u64>);

    /// What one check sees, and the `(event, VM)`s expected from it.
    type Step<'a> = (&'a [Seen<'a>], &'a [(Event, &'a str)]);

    /// A summary of one policy `gold` (RPO 60 s) and `vms`.
    fn summary(vms: &[Seen<'_>]) -> MetricsSummary {
        MetricsSummary {
            policy_rpo_seconds: vec![("gold".into(), 60), ("old".into(), 0)],
            vms: vms
                .iter()
                .map(|(vm, policy, age)| VmSummary {
                    vm: vm.to_string(),
                    policy: policy.to_string(),
                    rpo_age_seconds: *age,
                    ..VmSummary::default()
                })
                .collect(),
            ..MetricsSummary::default()
        }
    }

    /// The events of one observation, as `(event, vm)`.
    fn edges(watch: &mut RpoWatch, vms: &[Seen<'_>]) -> Vec<(Event, String)> {
        watch
            .observe(&summary(vms))
            .into_iter()
            .map(|change| (change.event, change.vm))
            .collect()
    }

    #[test]
    fn a_breach_is_announced_once_and_re_armed_by_a_recovery() {
        use Event::{RpoBreach, RpoRecovered};
        let mut watch = RpoWatch::default();
        // (what the checks see in turn, the events expected from each)
        let steps: [Step<'_>; 7] = [
            // At the RPO is not past it; no age, no policy or an RPO of 0: nothing.
            (
                &[
                    ("a", "gold", Some(60)),
                    ("b", "gold", None),
                    ("c", "", Some(999)),
                    ("d", "old", Some(999)),
                ],
                &[],
            ),
            (&[("a", "gold", Some(61))], &[(RpoBreach, "a")]),
            // Still in breach: no second notification.
            (&[("a", "gold", Some(600))], &[]),
            // A backup succeeded: recovered, and armed again.
            (&[("a", "gold", Some(3))], &[(RpoRecovered, "a")]),
            (&[("a", "gold", Some(3))], &[]),
            (&[("a", "gold", Some(70))], &[(RpoBreach, "a")]),
            // The VM left its policy while in breach: forgotten silently, so it is
            // announced again if it comes back past its RPO.
            (&[("a", "", Some(80))], &[]),
        ];
        for (index, (vms, expected)) in steps.into_iter().enumerate() {
            let expected: Vec<(Event, String)> = expected
                .iter()
                .map(|(event, vm)| (*event, vm.to_string()))
                .collect();
            assert_eq!(edges(&mut watch, vms), expected, "step {index}");
        }
        assert_eq!(
            edges(&mut watch, &[("a", "gold", Some(90))]),
            vec![(RpoBreach, "a".to_string())]
        );
    }

    #[test]
    fn a_change_carries_the_rpo_the_age_and_the_last_success() {
        let mut watch = RpoWatch::default();
        let mut summary = summary(&[("a", "gold", Some(75))]);
        summary.vms[0].last_success_seconds = Some(1000);
        let change = watch.observe(&summary).remove(0);
        assert_eq!(
            (
                change.rpo_seconds,
                change.age_seconds,
                change.last_success_seconds
            ),
            (60, 75, Some(1000))
        );
        assert_eq!(change.policy, "gold");
    }
}
