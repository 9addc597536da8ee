//! What a repository holds and what deduplication saves (`haven stats`), in total and
//! per VM.
//!
//! Every snapshot's indexes are read (a repository-wide pass, like GC's mark) and the
//! chunk objects listed with their sizes. Counting is [`StatsBuilder`]'s, pure and
//! tested on its own. Definitions, all in bytes:
//! - `logical`: the disks' sizes, summed over snapshots (what restoring every snapshot
//!   would write);
//! - `data`: the non-zero slots among them (zero slots store nothing);
//! - `unique`: the plaintext of the distinct chunks those slots name;
//! - `stored`: the chunk objects of those distinct chunks as stored (compressed,
//!   encrypted);
//! - per VM, `exclusive`: the stored size of chunks no other VM's snapshot names, what
//!   forgetting all of its snapshots and a GC would free.
//!
//! `dedup_ratio` is `data / unique`, `compression_ratio` is `unique / stored`. Chunks
//! stored but named by no snapshot (garbage until the next GC, or chunks of a backup
//! not committed yet) are counted apart.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::error::Result;
use crate::format::chunk::ChunkId;
use crate::format::index::FixedIndex;
use crate::repository::Repository;

/// Sizes of the whole repository and of each VM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RepositoryStats {
    /// Every object of the repository as stored: chunks, indexes, manifests, keys.
    pub repository_bytes: u64,
    /// The totals over every VM.
    pub total: VmStats,
    /// Chunk objects no snapshot names.
    pub unreferenced_chunks: u64,
    /// Their stored bytes.
    pub unreferenced_bytes: u64,
    /// Per VM, by name.
    pub vms: BTreeMap<String, VmStats>,
}

/// The sizes of a set of snapshots (one VM's, or all); see the module doc.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VmStats {
    /// Snapshots counted.
    pub snapshots: u64,
    /// Disk sizes summed over the snapshots.
    pub logical_bytes: u64,
    /// Non-zero slots' bytes summed over the snapshots.
    pub data_bytes: u64,
    /// Distinct chunks named.
    pub unique_chunks: u64,
    /// Their plaintext bytes.
    pub unique_bytes: u64,
    /// Their stored bytes (a chunk missing from storage counts 0).
    pub stored_bytes: u64,
    /// Stored bytes of the chunks no other VM names (equal to `stored_bytes` in the
    /// total).
    pub exclusive_bytes: u64,
    /// `data_bytes / unique_bytes` (1 when there is no data).
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_bytes` (1 when nothing is stored).
    pub compression_ratio: f64,
}

/// One distinct chunk seen in the indexes: its plaintext length, and which VMs name it.
struct ChunkUse {
    length: u64,
    vms: Vec<usize>,
}

/// Accumulates snapshots and their disks' indexes, then prices them with the stored
/// sizes of the chunk objects.
#[derive(Default)]
pub struct StatsBuilder {
    vm_names: Vec<String>,
    vm_numbers: HashMap<String, usize>,
    per_vm: Vec<VmStats>,
    chunks: HashMap<ChunkId, ChunkUse>,
}

impl StatsBuilder {
    /// Counts one snapshot of `vm`; add its disks with [`StatsBuilder::add_disk`].
    pub fn add_snapshot(&mut self, vm: &str) {
        let number = self.vm_number(vm);
        self.per_vm[number].snapshots += 1;
    }

    /// Counts one disk of a snapshot of `vm`.
    pub fn add_disk(&mut self, vm: &str, index: &FixedIndex) {
        let number = self.vm_number(vm);
        self.per_vm[number].logical_bytes += index.disk_size();
        for (slot, id) in index.slots().iter().enumerate() {
            if id.is_zero() {
                continue;
            }
            let (start, end) = index.slot_range(slot);
            let length = end - start;
            self.per_vm[number].data_bytes += length;
            let usage = self.chunks.entry(*id).or_insert_with(|| ChunkUse {
                length,
                vms: Vec::new(),
            });
            if !usage.vms.contains(&number) {
                usage.vms.push(number);
            }
        }
    }

    /// The statistics, with `stored` the size of each chunk object in storage and
    /// `repository_bytes` the size of every object.
    pub fn finish(
        mut self,
        stored: &HashMap<ChunkId, u64>,
        repository_bytes: u64,
    ) -> RepositoryStats {
        let mut total = VmStats::default();
        for (id, usage) in &self.chunks {
            let size = stored.get(id).copied().unwrap_or(0);
            for &number in &usage.vms {
                let vm = &mut self.per_vm[number];
                vm.unique_chunks += 1;
                vm.unique_bytes += usage.length;
                vm.stored_bytes += size;
                if usage.vms.len() == 1 {
                    vm.exclusive_bytes += size;
                }
            }
            total.unique_chunks += 1;
            total.unique_bytes += usage.length;
            total.stored_bytes += size;
        }
        total.exclusive_bytes = total.stored_bytes;
        for vm in &self.per_vm {
            total.snapshots += vm.snapshots;
            total.logical_bytes += vm.logical_bytes;
            total.data_bytes += vm.data_bytes;
        }
        let (unreferenced_chunks, unreferenced_bytes) = stored
            .iter()
            .filter(|(id, _)| !self.chunks.contains_key(id))
            .fold((0, 0), |(count, bytes), (_, size)| {
                (count + 1, bytes + size)
            });
        let vms = self
            .vm_names
            .into_iter()
            .zip(self.per_vm)
            .map(|(name, stats)| (name, with_ratios(stats)))
            .collect();
        RepositoryStats {
            repository_bytes,
            total: with_ratios(total),
            unreferenced_chunks,
            unreferenced_bytes,
            vms,
        }
    }

    fn vm_number(&mut self, vm: &str) -> usize {
        if let Some(&number) = self.vm_numbers.get(vm) {
            return number;
        }
        let number = self.vm_names.len();
        self.vm_names.push(vm.to_string());
        self.vm_numbers.insert(vm.to_string(), number);
        self.per_vm.push(VmStats::default());
        number
    }
}

fn with_ratios(mut stats: VmStats) -> VmStats {
    stats.dedup_ratio = ratio(stats.data_bytes, stats.unique_bytes);
    stats.compression_ratio = ratio(stats.unique_bytes, stats.stored_bytes);
    stats
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// Reads every snapshot's indexes (only `vm`'s when given) and lists the stored
/// objects: the statistics of the repository. Read-only; safe while backups run (a
/// backup not committed yet shows as unreferenced chunks).
pub async fn repository_stats(repo: &Repository, vm: Option<&str>) -> Result<RepositoryStats> {
    let mut builder = StatsBuilder::default();
    for id in repo.list_snapshots(vm).await? {
        let manifest = repo.read_manifest(&id).await?;
        builder.add_snapshot(&id.vm);
        for disk in &manifest.disks {
            let index = repo.read_index(disk).await?;
            builder.add_disk(&id.vm, &index);
        }
    }
    let mut stored = HashMap::new();
    let mut repository_bytes = 0;
    for (key, size) in repo.backend().list_with_sizes("").await? {
        repository_bytes += size;
        if let Some(id) = ChunkId::from_object_key(&key) {
            stored.insert(id, size);
        }
    }
    Ok(builder.finish(&stored, repository_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ChunkId {
        ChunkId([byte; 32])
    }

    /// A disk of 4 slots of 4 bytes (the last one 2 bytes) with these chunks.
    fn disk(slots: [u8; 4]) -> FixedIndex {
        let mut index = FixedIndex::new_zeroed(14, 4);
        for (slot, byte) in slots.into_iter().enumerate() {
            if byte != 0 {
                index.set(slot, id(byte));
            }
        }
        index
    }

    #[test]
    fn dedup_exclusivity_and_garbage_are_counted_per_vm_and_in_total() {
        let mut builder = StatsBuilder::default();
        // web: two snapshots naming chunks 1, 2 and (shared with db) 3; one zero slot.
        builder.add_snapshot("web");
        builder.add_disk("web", &disk([1, 2, 0, 3]));
        builder.add_snapshot("web");
        builder.add_disk("web", &disk([1, 2, 0, 3]));
        // db: one snapshot naming 4, and 3 (the same short last slot).
        builder.add_snapshot("db");
        builder.add_disk("db", &disk([0, 4, 0, 3]));
        let stored: HashMap<ChunkId, u64> = [
            (id(1), 10),
            (id(2), 20),
            (id(3), 30),
            (id(4), 40),
            (id(9), 90),
        ]
        .into();
        let stats = builder.finish(&stored, 1000);

        let web = &stats.vms["web"];
        assert_eq!(web.snapshots, 2);
        assert_eq!(web.logical_bytes, 28);
        assert_eq!(web.data_bytes, 2 * (4 + 4 + 2));
        assert_eq!(web.unique_chunks, 3);
        assert_eq!(web.unique_bytes, 4 + 4 + 2);
        assert_eq!(web.stored_bytes, 60);
        assert_eq!(web.exclusive_bytes, 30, "chunk 3 is shared with db");
        assert_eq!(web.dedup_ratio, 2.0);

        let db = &stats.vms["db"];
        assert_eq!((db.snapshots, db.data_bytes, db.unique_chunks), (1, 6, 2));
        assert_eq!((db.stored_bytes, db.exclusive_bytes), (70, 40));

        let total = &stats.total;
        assert_eq!(total.snapshots, 3);
        assert_eq!(total.logical_bytes, 42);
        assert_eq!(total.data_bytes, 26);
        assert_eq!(total.unique_chunks, 4);
        assert_eq!(total.unique_bytes, 14);
        assert_eq!(total.stored_bytes, 100);
        assert_eq!(total.exclusive_bytes, 100);
        assert_eq!(total.dedup_ratio, 26.0 / 14.0);
        assert_eq!(total.compression_ratio, 0.14);
        assert_eq!(
            (stats.unreferenced_chunks, stats.unreferenced_bytes),
            (1, 90)
        );
        assert_eq!(stats.repository_bytes, 1000);
    }

    #[test]
    fn an_empty_repository_has_ratios_of_one() {
        let stats = StatsBuilder::default().finish(&HashMap::new(), 0);
        assert!(stats.vms.is_empty());
        assert_eq!(stats.total.dedup_ratio, 1.0);
        assert_eq!(stats.total.compression_ratio, 1.0);
    }
}
