//! Retention rules as tables: input snapshots (newest or oldest first, it does not
//! matter), a policy, and the expected decision for every snapshot. All times UTC.

use haven_repo::{Decision, RetentionPolicy, SnapshotId, plan_retention};

/// One row of input: timestamp and protected mark.
type Row = (&'static str, bool);

fn ids(vm: &str, rows: &[Row]) -> Vec<(SnapshotId, bool)> {
    rows.iter()
        .map(|(ts, protected)| (SnapshotId::new(vm, ts).expect("valid id"), *protected))
        .collect()
}

/// The plan as (timestamp, kept-by) rows, newest first; "-" for removed.
fn plan(rows: &[Row], policy: RetentionPolicy) -> Vec<(String, &'static str)> {
    plan_retention(&ids("vm1", rows), &policy)
        .into_iter()
        .map(|Decision { id, keep, reasons }| {
            assert_eq!(keep, !reasons.is_empty(), "{id}: kept iff it has a reason");
            assert!(reasons.len() <= 1, "{id}: one reason per snapshot");
            (id.timestamp, reasons.first().copied().unwrap_or("-"))
        })
        .collect()
}

fn expect(rows: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    rows.iter().map(|(ts, r)| (ts.to_string(), *r)).collect()
}

fn unprotected(ts: &[&'static str]) -> Vec<Row> {
    ts.iter().map(|t| (*t, false)).collect()
}

const LAST: &str = "keep-last";
const HOURLY: &str = "keep-hourly";
const DAILY: &str = "keep-daily";
const WEEKLY: &str = "keep-weekly";
const MONTHLY: &str = "keep-monthly";
const YEARLY: &str = "keep-yearly";
const GONE: &str = "-";

#[test]
fn keep_last_alone() {
    let rows = unprotected(&[
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:03Z",
        "2024-01-01T00:00:02Z",
        "2024-01-01T00:00:05Z",
        "2024-01-01T00:00:04Z",
    ]);
    let policy = RetentionPolicy {
        keep_last: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-01-01T00:00:05Z", LAST),
            ("2024-01-01T00:00:04Z", LAST),
            ("2024-01-01T00:00:03Z", GONE),
            ("2024-01-01T00:00:02Z", GONE),
            ("2024-01-01T00:00:01Z", GONE),
        ])
    );
    // More than there are: everything kept.
    let policy = RetentionPolicy {
        keep_last: Some(10),
        ..Default::default()
    };
    assert!(plan(&rows, policy).iter().all(|(_, r)| *r == LAST));
}

#[test]
fn keep_hourly_alone_several_per_hour() {
    let rows = unprotected(&[
        "2024-03-10T12:59:59Z",
        "2024-03-10T12:00:00Z",
        "2024-03-10T11:10:00Z",
        "2024-03-10T10:30:00Z",
        "2024-03-10T10:05:00Z",
        // Same hour of the previous day: a different period.
        "2024-03-09T10:05:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_hourly: Some(3),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-03-10T12:59:59Z", HOURLY),
            ("2024-03-10T12:00:00Z", GONE),
            ("2024-03-10T11:10:00Z", HOURLY),
            ("2024-03-10T10:30:00Z", HOURLY),
            ("2024-03-10T10:05:00Z", GONE),
            ("2024-03-09T10:05:00Z", GONE),
        ])
    );
}

#[test]
fn keep_daily_alone_days_are_utc() {
    let rows = unprotected(&[
        "2024-03-11T00:00:00Z",
        "2024-03-10T23:59:59Z",
        "2024-03-10T00:00:00Z",
        "2024-03-09T23:59:59Z",
        "2024-03-07T12:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_daily: Some(3),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-03-11T00:00:00Z", DAILY),
            ("2024-03-10T23:59:59Z", DAILY),
            ("2024-03-10T00:00:00Z", GONE),
            ("2024-03-09T23:59:59Z", DAILY),
            // A gap of a day does not count as a period: only periods with a snapshot do,
            // and the three are used up.
            ("2024-03-07T12:00:00Z", GONE),
        ])
    );
}

#[test]
fn keep_weekly_iso_week_year_boundary() {
    // 2020-12-28 (Mon) .. 2021-01-03 (Sun) is 2020-W53; 2021-01-04 (Mon) is 2021-W01;
    // 2019-12-30 (Mon) is 2020-W01; 2019-12-29 (Sun) is 2019-W52.
    let rows = unprotected(&[
        "2021-01-04T00:00:00Z",
        "2021-01-03T23:59:59Z",
        "2020-12-31T12:00:00Z",
        "2020-12-28T00:00:00Z",
        "2020-01-05T10:00:00Z",
        "2019-12-30T10:00:00Z",
        "2019-12-29T10:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_weekly: Some(4),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2021-01-04T00:00:00Z", WEEKLY), // 2021-W01
            ("2021-01-03T23:59:59Z", WEEKLY), // 2020-W53
            ("2020-12-31T12:00:00Z", GONE),   // 2020-W53 again
            ("2020-12-28T00:00:00Z", GONE),   // 2020-W53 again
            ("2020-01-05T10:00:00Z", WEEKLY), // 2020-W01 (Sunday)
            ("2019-12-30T10:00:00Z", GONE),   // 2020-W01 too, though in calendar 2019
            ("2019-12-29T10:00:00Z", WEEKLY), // 2019-W52
        ])
    );
}

#[test]
fn keep_weekly_calendar_year_does_not_split_a_week() {
    // Only two snapshots, on either side of new year but in one ISO week.
    let rows = unprotected(&["2021-01-03T08:00:00Z", "2020-12-31T08:00:00Z"]);
    let policy = RetentionPolicy {
        keep_weekly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2021-01-03T08:00:00Z", WEEKLY),
            ("2020-12-31T08:00:00Z", GONE),
        ])
    );
}

#[test]
fn keep_monthly_alone_across_a_year() {
    let rows = unprotected(&[
        "2021-01-31T23:59:59Z",
        "2021-01-01T00:00:00Z",
        "2020-12-31T23:59:59Z",
        "2020-12-01T00:00:00Z",
        "2020-11-15T00:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_monthly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2021-01-31T23:59:59Z", MONTHLY),
            ("2021-01-01T00:00:00Z", GONE),
            ("2020-12-31T23:59:59Z", MONTHLY),
            ("2020-12-01T00:00:00Z", GONE),
            ("2020-11-15T00:00:00Z", GONE),
        ])
    );
}

#[test]
fn keep_yearly_alone_year_boundary() {
    let rows = unprotected(&[
        "2021-06-01T00:00:00Z",
        "2020-01-01T00:00:00Z",
        "2019-12-31T23:59:59Z",
        "2019-01-01T00:00:00Z",
        "2017-05-05T05:05:05Z",
    ]);
    let policy = RetentionPolicy {
        keep_yearly: Some(3),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2021-06-01T00:00:00Z", YEARLY),
            ("2020-01-01T00:00:00Z", YEARLY),
            ("2019-12-31T23:59:59Z", YEARLY),
            ("2019-01-01T00:00:00Z", GONE),
            ("2017-05-05T05:05:05Z", GONE),
        ])
    );
}

#[test]
fn kept_by_one_rule_not_counted_by_the_next() {
    // keep-last 1 keeps the newest; keep-daily 2 then skips that day (already kept)
    // and keeps the newest of the next two days.
    let rows = unprotected(&[
        "2024-05-03T12:00:00Z",
        "2024-05-03T08:00:00Z",
        "2024-05-02T20:00:00Z",
        "2024-05-02T10:00:00Z",
        "2024-05-01T10:00:00Z",
        "2024-04-30T10:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_last: Some(1),
        keep_daily: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-05-03T12:00:00Z", LAST),
            ("2024-05-03T08:00:00Z", GONE),
            ("2024-05-02T20:00:00Z", DAILY),
            ("2024-05-02T10:00:00Z", GONE),
            ("2024-05-01T10:00:00Z", DAILY),
            ("2024-04-30T10:00:00Z", GONE),
        ])
    );
}

#[test]
fn daily_weekly_monthly_yearly_combined() {
    // One snapshot a day at 01:00 for a stretch, plus older scattered ones.
    let rows = unprotected(&[
        "2024-03-06T01:00:00Z", // Wed 2024-W10
        "2024-03-05T01:00:00Z", // Tue 2024-W10
        "2024-03-04T01:00:00Z", // Mon 2024-W10
        "2024-03-03T01:00:00Z", // Sun 2024-W09
        "2024-02-27T01:00:00Z", // Tue 2024-W09
        "2024-02-20T01:00:00Z", // Tue 2024-W08
        "2024-02-13T01:00:00Z", // Tue 2024-W07
        "2024-01-10T01:00:00Z", // 2024-01
        "2023-12-20T01:00:00Z", // 2023-12
        "2023-06-01T01:00:00Z", // 2023-06
        "2022-06-01T01:00:00Z",
        "2021-06-01T01:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_daily: Some(2),
        keep_weekly: Some(2),
        keep_monthly: Some(2),
        keep_yearly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-03-06T01:00:00Z", DAILY),
            ("2024-03-05T01:00:00Z", DAILY),
            // W10 already kept by daily: weekly skips it without counting it.
            ("2024-03-04T01:00:00Z", GONE),
            ("2024-03-03T01:00:00Z", WEEKLY), // W09
            ("2024-02-27T01:00:00Z", GONE),   // W09 again
            ("2024-02-20T01:00:00Z", WEEKLY), // W08, the second week
            // 2024-03 and 2024-02 already kept: monthly takes 2024-01 and 2023-12.
            ("2024-02-13T01:00:00Z", GONE),
            ("2024-01-10T01:00:00Z", MONTHLY),
            ("2023-12-20T01:00:00Z", MONTHLY),
            // 2024 and 2023 already kept: yearly takes 2022 and 2021.
            ("2023-06-01T01:00:00Z", GONE),
            ("2022-06-01T01:00:00Z", YEARLY),
            ("2021-06-01T01:00:00Z", YEARLY),
        ])
    );
}

#[test]
fn a_snapshot_passed_over_by_an_earlier_rule_stays_removed() {
    // PBS semantics (documented in the module): ISO week 2020-W14 runs from Mon 2020-03-30
    // to Sun 2020-04-05. keep-weekly 1 keeps 04-02 and passes over 03-31 (same week);
    // keep-monthly does not reconsider 03-31 for March and moves on to February.
    let rows = unprotected(&[
        "2020-04-02T00:00:00Z",
        "2020-03-31T00:00:00Z",
        "2020-02-15T00:00:00Z",
    ]);
    let policy = RetentionPolicy {
        keep_weekly: Some(1),
        keep_monthly: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2020-04-02T00:00:00Z", WEEKLY),
            ("2020-03-31T00:00:00Z", GONE),
            ("2020-02-15T00:00:00Z", MONTHLY),
        ])
    );
}

#[test]
fn protected_always_kept_and_never_counted() {
    let rows: Vec<Row> = vec![
        ("2024-05-03T12:00:00Z", true),
        ("2024-05-03T08:00:00Z", false),
        ("2024-05-02T10:00:00Z", false),
        ("2024-05-01T10:00:00Z", true),
        ("2024-04-30T10:00:00Z", false),
    ];
    let last = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, last),
        expect(&[
            ("2024-05-03T12:00:00Z", "protected"),
            ("2024-05-03T08:00:00Z", LAST),
            ("2024-05-02T10:00:00Z", GONE),
            ("2024-05-01T10:00:00Z", "protected"),
            ("2024-04-30T10:00:00Z", GONE),
        ])
    );
    // A protected snapshot does not use up its day: the day's next one is kept too.
    let daily = RetentionPolicy {
        keep_daily: Some(2),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, daily),
        expect(&[
            ("2024-05-03T12:00:00Z", "protected"),
            ("2024-05-03T08:00:00Z", DAILY),
            ("2024-05-02T10:00:00Z", DAILY),
            ("2024-05-01T10:00:00Z", "protected"),
            ("2024-04-30T10:00:00Z", GONE),
        ])
    );
}

#[test]
fn empty_policy_keeps_everything_and_is_refusable() {
    let rows: Vec<Row> = vec![
        ("2024-05-03T12:00:00Z", false),
        ("2024-05-02T12:00:00Z", true),
    ];
    let zero = RetentionPolicy {
        keep_last: Some(0),
        keep_daily: Some(0),
        ..Default::default()
    };
    for policy in [RetentionPolicy::default(), zero] {
        assert!(!policy.keeps_something());
        assert_eq!(policy.describe(), "");
        assert_eq!(
            plan(&rows, policy),
            expect(&[
                ("2024-05-03T12:00:00Z", "no retention rule"),
                ("2024-05-02T12:00:00Z", "protected"),
            ])
        );
    }
    let one = RetentionPolicy {
        keep_last: Some(0),
        keep_weekly: Some(3),
        ..Default::default()
    };
    assert!(one.keeps_something());
    assert_eq!(one.describe(), "--keep-weekly 3");
}

#[test]
fn a_zero_rule_next_to_others_does_nothing() {
    let rows = unprotected(&["2024-05-03T12:00:00Z", "2024-05-02T12:00:00Z"]);
    let policy = RetentionPolicy {
        keep_last: Some(0),
        keep_daily: Some(1),
        ..Default::default()
    };
    assert_eq!(
        plan(&rows, policy),
        expect(&[
            ("2024-05-03T12:00:00Z", DAILY),
            ("2024-05-02T12:00:00Z", GONE)
        ])
    );
}

#[test]
fn each_vm_is_planned_on_its_own_newest_first() {
    let mut input = ids(
        "beta",
        &unprotected(&["2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"]),
    );
    input.extend(ids(
        "alpha",
        &unprotected(&[
            "2024-01-01T00:00:00Z",
            "2024-01-03T00:00:00Z",
            "2024-01-02T00:00:00Z",
        ]),
    ));
    let policy = RetentionPolicy {
        keep_last: Some(1),
        ..Default::default()
    };
    let got: Vec<(String, bool)> = plan_retention(&input, &policy)
        .into_iter()
        .map(|d| (d.id.to_string(), d.keep))
        .collect();
    let want: Vec<(String, bool)> = [
        ("alpha@2024-01-03T00:00:00Z", true),
        ("alpha@2024-01-02T00:00:00Z", false),
        ("alpha@2024-01-01T00:00:00Z", false),
        ("beta@2024-01-02T00:00:00Z", true),
        ("beta@2024-01-01T00:00:00Z", false),
    ]
    .iter()
    .map(|(s, k)| (s.to_string(), *k))
    .collect();
    assert_eq!(got, want);
    assert!(plan_retention(&[], &policy).is_empty());
}

/// Properties of [`plan_retention`] over generated snapshot lists: random times over
/// three years (several per hour, day and week), random protection, random counts.
mod properties {
    use std::collections::BTreeSet;

    use haven_repo::{RetentionPolicy, SnapshotId, plan_retention};
    use proptest::prelude::*;

    fn snapshots() -> impl Strategy<Value = Vec<(SnapshotId, bool)>> {
        let start = 1_700_000_000i64;
        proptest::collection::btree_set(
            (0usize..2, 0i64..3 * 366 * 24 * 60, any::<bool>(), 0u8..8),
            0..60,
        )
        .prop_map(move |rows| {
            let mut seen = BTreeSet::new();
            rows.into_iter()
                .filter(|(vm, minute, _, _)| seen.insert((*vm, *minute)))
                .map(|(vm, minute, protected, roll)| {
                    let time =
                        time::OffsetDateTime::from_unix_timestamp(start + minute * 60).unwrap();
                    // One snapshot in eight is protected.
                    (
                        SnapshotId::at(["vm-a", "vm-b"][vm], time).unwrap(),
                        protected && roll == 0,
                    )
                })
                .collect()
        })
    }

    fn policy() -> impl Strategy<Value = RetentionPolicy> {
        proptest::array::uniform6(0u32..5).prop_map(RetentionPolicy::from_counts)
    }

    fn kept(list: &[(SnapshotId, bool)], policy: &RetentionPolicy) -> BTreeSet<SnapshotId> {
        plan_retention(list, policy)
            .into_iter()
            .filter(|decision| decision.keep)
            .map(|decision| decision.id)
            .collect()
    }

    proptest! {
        /// One decision per snapshot; protected ones and, when any rule keeps
        /// something, each VM's newest are kept; with no rule everything is kept.
        #[test]
        fn every_snapshot_decided_once_and_the_newest_kept(
            list in snapshots(), policy in policy(),
        ) {
            let decisions = plan_retention(&list, &policy);
            prop_assert_eq!(decisions.len(), list.len());
            let decided: BTreeSet<&SnapshotId> = decisions.iter().map(|d| &d.id).collect();
            prop_assert_eq!(decided.len(), list.len());
            let kept = kept(&list, &policy);
            for (id, protected) in &list {
                if *protected || !policy.keeps_something() {
                    prop_assert!(kept.contains(id), "{} dropped", id);
                }
            }
            if policy.keeps_something() {
                for vm in ["vm-a", "vm-b"] {
                    let newest = list.iter().filter(|(id, _)| id.vm == vm).map(|(id, _)| id).max_by_key(|id| id.time());
                    if let Some(newest) = newest {
                        prop_assert!(kept.contains(newest), "newest {} dropped", newest);
                    }
                }
            }
        }

        /// `keep_last N` alone keeps exactly the N newest unprotected snapshots of each
        /// VM, and the protected ones.
        #[test]
        fn keep_last_keeps_exactly_the_newest(list in snapshots(), n in 1u32..6) {
            let policy = RetentionPolicy { keep_last: Some(n), ..RetentionPolicy::default() };
            let kept = kept(&list, &policy);
            for vm in ["vm-a", "vm-b"] {
                let mut unprotected: Vec<&SnapshotId> = list
                    .iter()
                    .filter(|(id, protected)| id.vm == vm && !protected)
                    .map(|(id, _)| id)
                    .collect();
                unprotected.sort_by_key(|id| std::cmp::Reverse(id.time()));
                for (rank, id) in unprotected.iter().enumerate() {
                    prop_assert_eq!(kept.contains(*id), rank < n as usize, "{} at rank {}", id, rank);
                }
            }
        }

        /// A snapshot kept by `keep_last` stays kept when other rules are added, and
        /// the VMs are planned independently.
        #[test]
        fn adding_rules_never_drops_what_keep_last_keeps(
            list in snapshots(), n in 1u32..6, extra in policy(),
        ) {
            let last = RetentionPolicy { keep_last: Some(n), ..RetentionPolicy::default() };
            let more = RetentionPolicy { keep_last: Some(n), ..extra };
            let with_more = kept(&list, &more);
            prop_assert!(kept(&list, &last).is_subset(&with_more));
            let only_a: Vec<(SnapshotId, bool)> =
                list.iter().filter(|(id, _)| id.vm == "vm-a").cloned().collect();
            let a_alone = kept(&only_a, &more);
            let a_together: BTreeSet<SnapshotId> =
                with_more.into_iter().filter(|id| id.vm == "vm-a").collect();
            prop_assert_eq!(a_alone, a_together);
        }
    }
}
