//! Builds a synthetic repository for the garbage-collection benchmark
//! (`bench/gc.sh`, figures in `docs/benchmarks.md`).
//!
//! ```text
//! HAVEN_PASSWORD=bench cargo run --release -p haven-repo --example gc_synthetic_repo -- DIR [CHUNKS] [SNAPSHOTS]
//! ```
//!
//! Writes CHUNKS (default 1,000,000) tiny chunk objects straight into
//! `DIR/chunks/XX/ID` (garbage collection lists chunks, it never opens them), then
//! SNAPSHOTS (default 9) real snapshots, each with one real index, that together
//! reference 90 % of the chunks, every snapshot sharing a tenth of its slots with the
//! previous one, as successive backups do. The other 10 % are garbage.

use std::io::Write;
use std::time::Instant;

use haven_repo::{
    Backend, ChunkId, Consistency, DiskEntry, DiskStats, FORMAT_VERSION, FixedIndex, Manifest,
    Repository, SnapshotId, SourceInfo,
};

/// The repository's chunk size: the smallest, so indexes are as long as possible per
/// byte of disk they describe (only slot counts matter here).
const CHUNK_SIZE: u32 = 64 * 1024;

fn chunk_id(number: u64) -> ChunkId {
    ChunkId(*blake3::hash(&number.to_le_bytes()).as_bytes())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: gc_synthetic_repo DIR [CHUNKS] [SNAPSHOTS]")?;
    let chunks: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let snapshots: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(9);
    let password = std::env::var("HAVEN_PASSWORD").map_err(|_| "set HAVEN_PASSWORD")?;
    let started = Instant::now();

    let backend = Backend::from_url(&dir, true)?;
    let repo = Repository::init(backend, password.as_bytes(), CHUNK_SIZE).await?;
    let root = std::path::Path::new(&dir);
    for prefix in 0..=255u8 {
        std::fs::create_dir_all(root.join(format!("chunks/{prefix:02x}")))?;
    }
    for number in 0..chunks {
        let id = chunk_id(number);
        let mut file = std::fs::File::create(root.join(id.object_key()))?;
        file.write_all(&number.to_le_bytes())?;
    }
    eprintln!("{chunks} chunk objects in {:.1?}", started.elapsed());

    let referenced = chunks * 9 / 10;
    let per_snapshot = referenced / snapshots;
    let overlap = per_snapshot / 10;
    for snapshot in 0..snapshots {
        let first = (snapshot * per_snapshot).saturating_sub(overlap);
        let last = (snapshot + 1) * per_snapshot;
        let slots = last - first;
        let mut index = FixedIndex::new_zeroed(slots * u64::from(CHUNK_SIZE), CHUNK_SIZE);
        for (slot, number) in (first..last).enumerate() {
            index.set(slot, chunk_id(number));
        }
        let id = SnapshotId::new("bench", &format!("2026-01-01T00:00:{snapshot:02}Z"))?;
        let (index_key, index_digest) = repo.write_index(&id, "vda", &index).await?;
        let manifest = Manifest {
            version: FORMAT_VERSION,
            vm: id.vm.clone(),
            timestamp: id.timestamp.clone(),
            created_by: "gc_synthetic_repo".into(),
            source: SourceInfo {
                kind: "synthetic".into(),
                origin: "gc benchmark".into(),
            },
            consistency: Consistency::Offline,
            consistency_reason: None,
            parent: None,
            disks: vec![DiskEntry {
                name: "vda".into(),
                size: index.disk_size(),
                chunk_size: CHUNK_SIZE,
                index: index_key,
                index_digest,
                stats: DiskStats::default(),
                chain: Default::default(),
            }],
            vm_config: None,
            labels: Default::default(),
        };
        repo.commit_manifest(&manifest).await?;
    }
    eprintln!(
        "{snapshots} snapshots referencing {referenced} chunks; {} are garbage; done in {:.1?}",
        chunks - referenced,
        started.elapsed()
    );
    Ok(())
}
