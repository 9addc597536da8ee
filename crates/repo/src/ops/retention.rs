//! Retention rules: which snapshots of a VM a prune keeps.
//!
//! [`plan_retention`] is a pure function of the snapshot list and the policy, with no
//! I/O, so every rule is covered by table tests (`crates/repo/tests/retention.rs`).
//!
//! Semantics (those of restic and of Proxmox Backup Server's `pbs-datastore/src/prune.rs`,
//! which this follows rule for rule):
//! - snapshots are considered newest first;
//! - `keep_last N` keeps the N newest snapshots;
//! - each bucket rule (`hourly`, `daily`, `weekly`, `monthly`, `yearly`) keeps the newest
//!   snapshot of each of the N most recent distinct periods that hold a snapshot;
//! - rules run in the order last, hourly, daily, weekly, monthly, yearly, and a rule only
//!   looks at snapshots no earlier rule has decided on: a snapshot kept by one rule is not
//!   counted again by the next, and a period that already holds a kept snapshot is
//!   skipped (not counted) by the later rule. As in PBS, a snapshot an earlier rule
//!   passed over (an older snapshot in a period it kept) stays removed;
//! - protected snapshots are always kept and never counted by any rule;
//! - a policy without any rule with a count above zero keeps everything; callers must
//!   refuse to prune with such a policy ([`RetentionPolicy::keeps_something`]).
//!
//! All periods are computed in **UTC** (PBS uses the server's local time zone; Haven
//! stores UTC timestamps and does the same for periods, so the outcome does not depend
//! on where the prune runs). Weeks are ISO 8601 weeks keyed by the ISO week-numbering
//! year: 2020-12-31 and 2021-01-03 both belong to 2020-W53.

use std::collections::HashSet;

use time::{OffsetDateTime, UtcOffset};

use crate::SnapshotId;

/// How many snapshots of each kind to keep. `None` (or `Some(0)`) disables a rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Keep the N newest snapshots.
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent hours (UTC).
    pub keep_hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent days (UTC).
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent ISO weeks (UTC).
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent months (UTC).
    pub keep_monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N most recent years (UTC).
    pub keep_yearly: Option<u32>,
}

impl RetentionPolicy {
    /// The rules from plain counts, in the order last, hourly, daily, weekly, monthly,
    /// yearly, 0 disabling a rule: how `policy.toml` and the job protocol carry them.
    pub fn from_counts(counts: [u32; 6]) -> Self {
        let [last, hourly, daily, weekly, monthly, yearly] = counts.map(|n| (n > 0).then_some(n));
        Self {
            keep_last: last,
            keep_hourly: hourly,
            keep_daily: daily,
            keep_weekly: weekly,
            keep_monthly: monthly,
            keep_yearly: yearly,
        }
    }

    /// True if at least one rule has a count above zero. A prune with a policy that
    /// keeps nothing must be refused, never treated as "remove everything".
    pub fn keeps_something(&self) -> bool {
        self.rules().iter().any(|(_, n, _)| n.unwrap_or(0) > 0)
    }

    /// The rules as `--keep-... N` options, for messages; empty if none.
    pub fn describe(&self) -> String {
        self.rules()
            .iter()
            .filter_map(|(name, n, _)| match n {
                Some(n) if *n > 0 => Some(format!("--{name} {n}")),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn rules(&self) -> [(&'static str, Option<u32>, Period); 6] {
        [
            ("keep-last", self.keep_last, Period::Snapshot),
            ("keep-hourly", self.keep_hourly, Period::Hour),
            ("keep-daily", self.keep_daily, Period::Day),
            ("keep-weekly", self.keep_weekly, Period::IsoWeek),
            ("keep-monthly", self.keep_monthly, Period::Month),
            ("keep-yearly", self.keep_yearly, Period::Year),
        ]
    }
}

/// What a prune does with one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The snapshot.
    pub id: SnapshotId,
    /// Keep it (true) or remove it (false).
    pub keep: bool,
    /// Why it is kept: `"protected"`, `"no retention rule"` or the rule that kept it
    /// (`"keep-last"`, `"keep-hourly"`, ...). Empty for a removed snapshot.
    pub reasons: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy)]
enum Period {
    Snapshot,
    Hour,
    Day,
    IsoWeek,
    Month,
    Year,
}

impl Period {
    /// The period `t` falls in, as a comparable key (UTC).
    fn key(self, t: OffsetDateTime) -> (i64, i64) {
        let t = t.to_offset(UtcOffset::UTC);
        let year = i64::from(t.year());
        match self {
            Period::Snapshot => (t.unix_timestamp(), 0),
            Period::Hour => (year, i64::from(t.ordinal()) * 24 + i64::from(t.hour())),
            Period::Day => (year, i64::from(t.ordinal())),
            Period::IsoWeek => {
                let (iso_year, week, _) = t.to_iso_week_date();
                (i64::from(iso_year), i64::from(week))
            }
            Period::Month => (year, i64::from(u8::from(t.month()))),
            Period::Year => (year, 0),
        }
    }
}

/// Decides which snapshots to keep. `snapshots` pairs each snapshot with its
/// "protected" mark, in any order and possibly of several VMs: each VM is planned on
/// its own. The result holds one decision per input snapshot, grouped by VM (in name
/// order) and newest first within a VM. See the module documentation for the rules.
pub fn plan_retention(snapshots: &[(SnapshotId, bool)], policy: &RetentionPolicy) -> Vec<Decision> {
    let mut by_vm: Vec<(&SnapshotId, bool)> = snapshots.iter().map(|(id, p)| (id, *p)).collect();
    // VM ascending, then newest first (timestamps are canonical RFC 3339 UTC, but compare
    // the parsed time to be safe).
    by_vm.sort_by(|a, b| {
        a.0.vm
            .cmp(&b.0.vm)
            .then_with(|| b.0.time().cmp(&a.0.time()))
            .then_with(|| b.0.timestamp.cmp(&a.0.timestamp))
    });
    let mut out = Vec::with_capacity(by_vm.len());
    for group in by_vm.chunk_by(|a, b| a.0.vm == b.0.vm) {
        out.extend(plan_one_vm(group, policy));
    }
    out
}

/// One VM's snapshots, newest first.
fn plan_one_vm(list: &[(&SnapshotId, bool)], policy: &RetentionPolicy) -> Vec<Decision> {
    let keeps_something = policy.keeps_something();
    // None: undecided; Some(Some(rule)): kept by rule; Some(None): removed by a rule.
    let mut mark: Vec<Option<Option<&'static str>>> = vec![None; list.len()];
    if keeps_something {
        for (rule, count, period) in policy.rules() {
            let Some(count) = count else { continue };
            mark_rule(&mut mark, list, count as usize, rule, period);
        }
    }
    list.iter()
        .zip(mark)
        .map(|((id, protected), mark)| {
            let (keep, reasons) = if *protected {
                (true, vec!["protected"])
            } else if !keeps_something {
                (true, vec!["no retention rule"])
            } else {
                match mark {
                    Some(Some(rule)) => (true, vec![rule]),
                    _ => (false, Vec::new()),
                }
            };
            Decision {
                id: (*id).clone(),
                keep,
                reasons,
            }
        })
        .collect()
}

/// One rule over the snapshots no earlier rule decided on (PBS `mark_selections`).
fn mark_rule(
    mark: &mut [Option<Option<&'static str>>],
    list: &[(&SnapshotId, bool)],
    count: usize,
    rule: &'static str,
    period: Period,
) {
    // Periods that already hold a snapshot kept by an earlier rule: not counted again.
    let already: HashSet<(i64, i64)> = list
        .iter()
        .zip(mark.iter())
        .filter(|(_, m)| matches!(m, Some(Some(_))))
        .map(|((id, _), _)| period.key(id.time()))
        .collect();
    let mut included: HashSet<(i64, i64)> = HashSet::new();
    for (i, (id, protected)) in list.iter().enumerate() {
        if mark[i].is_some() || *protected {
            // Decided by an earlier rule, or protected (kept, never counted).
            continue;
        }
        let key = period.key(id.time());
        if already.contains(&key) {
            continue;
        }
        if included.contains(&key) {
            mark[i] = Some(None);
        } else {
            if included.len() >= count {
                break;
            }
            included.insert(key);
            mark[i] = Some(Some(rule));
        }
    }
}
