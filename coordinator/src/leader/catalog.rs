//! Rebuilding the snapshot catalog from a repository: how a coordinator at the
//! disaster-recovery site (whose store never saw the primary's commits) learns the
//! snapshots the replica holds, so that `restore --coordinator VM` works there.
//!
//! The coordinator holds no repository password, so it cannot read manifests; the
//! operator's `haven catalog rebuild` reads them and sends what they say. The records
//! are only a catalog: the repository stays the truth, and a restore still verifies
//! every chunk it reads.

use super::writes::put_json;
use super::{Leader, LeaderError, Result};
use crate::model::{self, SnapshotRecord};

use super::state::State;

/// Most records one import may carry: a request stays well under gRPC's message
/// limit, and the CLI sends larger catalogs in several.
pub const MAX_IMPORT: usize = 1000;
/// Most disks one imported record may name.
const MAX_DISKS: usize = 256;

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Records added to the catalog.
    pub added: usize,
    /// Records the catalog held already (the existing record is kept).
    pub present: usize,
}

/// The records of `records` the catalog lacks, each checked: a valid VM name and
/// timestamp, a repository, a bounded disk list. One bad record refuses the whole
/// import, naming it.
pub(super) fn new_records(
    state: &State,
    records: Vec<SnapshotRecord>,
) -> Result<(Vec<SnapshotRecord>, ImportReport)> {
    if records.len() > MAX_IMPORT {
        return Err(LeaderError::Invalid(format!(
            "{} snapshots in one import; at most {MAX_IMPORT}",
            records.len()
        )));
    }
    let mut report = ImportReport::default();
    let mut fresh: Vec<SnapshotRecord> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for mut record in records {
        let name = format!("{}@{}", record.vm, record.timestamp);
        // The canonical id names the catalog entry, as a commit would write it.
        let id = haven_repo::SnapshotId::new(&record.vm, &record.timestamp)
            .map_err(|error| LeaderError::Invalid(format!("snapshot {name:?}: {error}")))?;
        if record.repository.is_empty() {
            return Err(LeaderError::Invalid(format!(
                "snapshot {name}: no repository"
            )));
        }
        if record.disks.len() > MAX_DISKS {
            return Err(LeaderError::Invalid(format!(
                "snapshot {name}: {} disks; at most {MAX_DISKS}",
                record.disks.len()
            )));
        }
        record.timestamp = id.timestamp;
        let key = model::snapshot_key(&record.vm, &record.timestamp);
        if state.snapshots.contains_key(&key) || !seen.insert(key) {
            report.present += 1;
        } else {
            report.added += 1;
            fresh.push(record);
        }
    }
    Ok((fresh, report))
}

impl Leader {
    /// Adds to the catalog the snapshots of `records` it lacks.
    pub async fn import_snapshots(&self, records: Vec<SnapshotRecord>) -> Result<ImportReport> {
        let _mutating = self.mutating().await;
        let (fresh, report) = new_records(&self.state(), records)?;
        let ops = fresh
            .iter()
            .map(|r| put_json(model::snapshot_key(&r.vm, &r.timestamp), r))
            .collect::<Result<Vec<_>>>()?;
        self.write_batched(ops).await?;
        let mut state = self.state();
        for record in fresh {
            state
                .snapshots
                .insert(model::snapshot_key(&record.vm, &record.timestamp), record);
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::state_with;

    fn record(vm: &str, timestamp: &str) -> SnapshotRecord {
        SnapshotRecord {
            vm: vm.into(),
            timestamp: timestamp.into(),
            repository: "s3://dr/gold".into(),
            disks: vec![("vda".into(), 1 << 30)],
            bytes_uploaded: 0,
            job_id: String::new(),
            bytes_read: 0,
            bytes_new: 0,
            committed_unix_ms: 0,
        }
    }

    const T1: &str = "2026-12-06T05:30:00Z";
    const T2: &str = "2026-12-06T06:30:00Z";

    #[test]
    fn only_missing_records_are_added_and_a_bad_one_refuses_the_import() {
        let mut state = state_with(&[], &[], &[]);
        state
            .snapshots
            .insert(model::snapshot_key("db", T1), record("db", T1));
        let (fresh, report) = new_records(
            &state,
            vec![record("db", T1), record("db", T2), record("db", T2)],
        )
        .unwrap();
        assert_eq!(fresh, vec![record("db", T2)]);
        assert_eq!(
            report,
            ImportReport {
                added: 1,
                present: 2
            }
        );

        let mut no_repository = record("db", T2);
        no_repository.repository.clear();
        let mut many_disks = record("db", T2);
        many_disks.disks = vec![("d".into(), 1); MAX_DISKS + 1];
        // (case, records, words the error must carry)
        let cases = [
            ("bad VM name", vec![record("a/b", T1)], "a/b@"),
            (
                "bad timestamp",
                vec![record("db", "yesterday")],
                "db@yesterday",
            ),
            ("no repository", vec![no_repository], "no repository"),
            ("too many disks", vec![many_disks], "disks"),
            (
                "too many records",
                vec![record("db", T2); MAX_IMPORT + 1],
                "at most",
            ),
        ];
        for (case, records, words) in cases {
            match new_records(&state, records) {
                Err(LeaderError::Invalid(message)) => {
                    assert!(message.contains(words), "{case}: {message}")
                }
                other => panic!("{case}: {other:?}"),
            }
        }
    }
}
