//! Whether a VM is protected: the one classification every page shows, from the row
//! `/metrics` exports for it (`leader/summary.rs`) and its policy's RPO, so the
//! console and the shipped RPO alert agree.

use crate::leader::VmSummary;

/// A VM's protection, worst first (the order pages sort by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protection {
    /// Its most recently ended backup failed.
    Failing,
    /// No successful backup within its policy's RPO (what the RPO alert fires on).
    AtRisk,
    /// Selected by a policy, never backed up, still within its RPO.
    Waiting,
    /// No policy selects it: backed up by hand, if at all.
    Unscheduled,
    /// A successful backup within its policy's RPO, and the last attempt succeeded.
    Protected,
}

impl Protection {
    /// Every value, worst first.
    pub const ALL: [Protection; 5] = [
        Protection::Failing,
        Protection::AtRisk,
        Protection::Waiting,
        Protection::Unscheduled,
        Protection::Protected,
    ];

    /// `vm`'s protection under a policy whose RPO is `rpo_seconds` (0: unknown,
    /// never at risk).
    pub fn of(vm: &VmSummary, rpo_seconds: u64) -> Self {
        if vm.last_attempt_succeeded == Some(false) {
            return Protection::Failing;
        }
        if vm.policy.is_empty() {
            return Protection::Unscheduled;
        }
        let past_rpo = rpo_seconds > 0 && vm.rpo_age_seconds.is_some_and(|age| age > rpo_seconds);
        match (past_rpo, vm.last_success_seconds) {
            (true, _) => Protection::AtRisk,
            (false, None) => Protection::Waiting,
            (false, Some(_)) => Protection::Protected,
        }
    }

    /// Its name in URLs and CSS classes.
    pub fn key(self) -> &'static str {
        match self {
            Protection::Failing => "failing",
            Protection::AtRisk => "at-risk",
            Protection::Waiting => "waiting",
            Protection::Unscheduled => "unscheduled",
            Protection::Protected => "protected",
        }
    }

    /// Its name for people.
    pub fn label(self) -> &'static str {
        match self {
            Protection::Failing => "failing",
            Protection::AtRisk => "at risk",
            Protection::Waiting => "waiting for a first backup",
            Protection::Unscheduled => "no policy",
            Protection::Protected => "protected",
        }
    }

    /// The value whose [`key`](Self::key) is `key`.
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.key() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_failing_at_risk_waiting_unscheduled_or_protected() {
        let vm =
            |policy: &str, success: Option<i64>, last: Option<bool>, age: Option<u64>| VmSummary {
                vm: "web".into(),
                policy: policy.into(),
                last_success_seconds: success,
                last_attempt_succeeded: last,
                rpo_age_seconds: age,
                ..VmSummary::default()
            };
        let cases = [
            (
                vm("gold", Some(1), Some(true), Some(60)),
                3600,
                Protection::Protected,
            ),
            (
                vm("gold", Some(1), Some(true), Some(3601)),
                3600,
                Protection::AtRisk,
            ),
            (
                vm("gold", Some(1), Some(false), Some(60)),
                3600,
                Protection::Failing,
            ),
            (
                vm("gold", None, Some(false), Some(9999)),
                3600,
                Protection::Failing,
            ),
            // Never backed up: waiting until its first job is older than the RPO.
            (vm("gold", None, None, Some(60)), 3600, Protection::Waiting),
            (vm("gold", None, None, Some(3601)), 3600, Protection::AtRisk),
            (vm("gold", None, None, None), 3600, Protection::Waiting),
            // A policy of an older version without an RPO: never at risk.
            (
                vm("gold", Some(1), Some(true), Some(99_999)),
                0,
                Protection::Protected,
            ),
            (
                vm("", Some(1), Some(true), Some(99_999)),
                0,
                Protection::Unscheduled,
            ),
        ];
        for (row, rpo, expected) in cases {
            assert_eq!(Protection::of(&row, rpo), expected, "{row:?} rpo {rpo}");
        }
        for protection in Protection::ALL {
            assert_eq!(Protection::from_key(protection.key()), Some(protection));
        }
    }
}
