//! What the soak knows the repositories must hold: the digest and byte model of every
//! acknowledged snapshot (its backup exited 0 and printed its name), the digests of
//! every backup attempt not acknowledged (failed, killed, or still running: such a
//! snapshot may still have been committed, and then it must be whole), and every name
//! ever listed, from which it judges whether a snapshot gone from the listing was one
//! retention allowed prune to remove.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::disk::Digest;

/// `haven prune --keep-last` in the soak.
pub const KEEP_LAST: usize = 3;

/// An acknowledged snapshot.
pub struct Acked {
    /// Its VM.
    pub vm: String,
    /// The digest of the disk it was taken of.
    pub digest: Digest,
    /// A copy of that disk, removed once the snapshot was pruned.
    pub model: PathBuf,
    /// Seen gone from the listing (pruned).
    pub gone: bool,
    /// Restored and compared at least once.
    pub restored: bool,
}

/// The soak's record of snapshots.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged snapshots by name (`VM@TIME`).
    pub acked: BTreeMap<String, Acked>,
    /// Digests of the backup attempts of each VM not acknowledged.
    attempts: BTreeMap<String, Vec<Digest>>,
    /// Every name the primary ever listed.
    seen: BTreeSet<String>,
    /// Snapshots listed but never acknowledged, with the digest they restored to.
    pub unacknowledged: BTreeMap<String, Digest>,
}

/// The VM of a snapshot name.
pub fn vm_of(name: &str) -> &str {
    name.split_once('@').map_or(name, |(vm, _)| vm)
}

impl Ledger {
    /// A backup of `vm`'s disk with `digest` starts: until it is acknowledged, a
    /// snapshot of it may appear without an acknowledgement.
    pub fn begin(&mut self, vm: &str, digest: Digest) {
        self.attempts.entry(vm.to_owned()).or_default().push(digest);
    }

    /// The backup of `digest` was acknowledged as `name`.
    pub fn acknowledge(&mut self, vm: &str, name: String, digest: Digest, model: PathBuf) {
        let attempts = self.attempts.entry(vm.to_owned()).or_default();
        if let Some(at) = attempts.iter().rposition(|d| *d == digest) {
            attempts.remove(at);
        }
        let acked = Acked {
            vm: vm.to_owned(),
            digest,
            model,
            gone: false,
            restored: false,
        };
        assert!(
            self.acked.insert(name.clone(), acked).is_none(),
            "two backups were acknowledged with one name, {name}"
        );
    }

    /// Names another command listed (a prune's plan, a verify's snapshots): they count
    /// as newer snapshots that existed when judging a prune.
    pub fn saw(&mut self, names: impl IntoIterator<Item = String>) {
        self.seen.extend(names);
    }

    /// Whether `digest` is the disk of one of `vm`'s unacknowledged attempts.
    pub fn is_attempt(&self, vm: &str, digest: &Digest) -> bool {
        self.attempts.get(vm).is_some_and(|a| a.contains(digest))
    }

    /// The digest a snapshot of this name must restore to, when known.
    pub fn expected(&self, name: &str) -> Option<Digest> {
        self.acked
            .get(name)
            .map(|acked| acked.digest)
            .or_else(|| self.unacknowledged.get(name).copied())
    }

    /// The acknowledged snapshots not known to be pruned: taken before a listing, they
    /// are the ones it must show (a backup acknowledged during the listing may not be
    /// in it).
    pub fn expected_listed(&self) -> BTreeSet<String> {
        self.live().map(|(name, _)| name.clone()).collect()
    }

    /// Takes in a listing of the primary: checks that no pruned snapshot came back and
    /// that each of `expected` (see [`Ledger::expected_listed`]) missing was one
    /// retention let go (at least [`KEEP_LAST`] newer snapshots of its VM existed), and
    /// marks those gone. Returns the violations found.
    pub fn observe(
        &mut self,
        expected: &BTreeSet<String>,
        listed: &BTreeSet<String>,
    ) -> Vec<String> {
        let mut violations = Vec::new();
        self.seen.extend(listed.iter().cloned());
        let newer = |name: &str, vm: &str| {
            let names: BTreeSet<&String> = self.seen.iter().chain(self.acked.keys()).collect();
            names
                .into_iter()
                .filter(|other| vm_of(other) == vm && other.as_str() > name)
                .count()
        };
        let mut pruned = Vec::new();
        for (name, acked) in &self.acked {
            if !acked.gone && !expected.contains(name) {
                continue;
            }
            match (listed.contains(name), acked.gone) {
                (true, true) => violations.push(format!("{name} was pruned and is listed again")),
                (false, false) if newer(name, &acked.vm) < KEEP_LAST => violations.push(format!(
                    "acknowledged snapshot {name} is gone, but fewer than {KEEP_LAST} newer \
                     snapshots of {} ever existed: retention keeps it",
                    acked.vm
                )),
                (false, false) => pruned.push(name.clone()),
                _ => {}
            }
        }
        for name in pruned {
            let acked = self.acked.get_mut(&name).expect("listed above");
            acked.gone = true;
            let _ = std::fs::remove_file(&acked.model);
        }
        violations
    }

    /// Acknowledged snapshots not pruned.
    pub fn live(&self) -> impl Iterator<Item = (&String, &Acked)> {
        self.acked.iter().filter(|(_, acked)| !acked.gone)
    }
}
