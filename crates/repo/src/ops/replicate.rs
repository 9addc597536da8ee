//! Replication: copy what a secondary site lacks, without the key.
//!
//! Objects travel as the opaque encrypted blobs they are; only their frame (magic,
//! version, kind, CRC-32) is checked before a write, so replication runs without the
//! password and never copies bit rot. Because nothing is decrypted, the copier cannot
//! tell which chunks a manifest names; it relies on the publish order instead:
//!
//! 1. `keys/*`, then `config` (when the secondary has none): the replica opens with the
//!    same password, and a `config` is never present without its key;
//! 2. the manifests to copy are listed (primary minus secondary, minus the snapshots
//!    the secondary's own prune removed: its tombstones, `pruned/VM/TIMESTAMP`);
//! 3. every chunk the primary has and the secondary lacks is copied. A manifest is
//!    written only after all of its chunks are durable, so every chunk a manifest listed
//!    in step 2 names is in a chunk listing taken after it;
//! 4. a durability barrier at the secondary, then the indexes of those snapshots
//!    (replacing a stale index at the same key, as a backup does), then the manifests,
//!    oldest first. A manifest is never written if anything before it failed.
//!
//! Every write is create-only, and the stores publish objects atomically (the storage
//! node renames a complete temporary file; `file://` links a complete staging file), so
//! a replication killed at any moment leaves no partial object and no manifest whose
//! chunks are missing; the next run lists again and copies only what is still missing.
//!
//! Memory: chunk listings are compared one `chunks/XX` fan-out prefix at a time (1/256
//! of the keys), sorted, never the whole repository at once.

mod batch;
mod rate;
mod status;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

pub use rate::{RateLimiter, parse_rate};
use status::settled_at_secondary;
pub use status::{
    VmReplicationStatus, compare as compare_snapshots, list_snapshot_ids, list_tombstone_ids,
    replication_status,
};

use crate::error::{RepoError, Result};
use crate::format::blob::{BlobKind, check_frame_of_kind};
use crate::format::config::{MAX_CHUNK_SIZE, RepoConfig};
use crate::format::manifest::SnapshotId;
use crate::progress::Progress;
use crate::storage::backend::{Backend, Durability, PutOutcome};

const CONFIG_KEY: &str = "config";
const MAX_SMALL_OBJECT: u64 = 64 * 1024;
const MAX_CHUNK_OBJECT: u64 = MAX_CHUNK_SIZE as u64 + 4096;
const MAX_INDEX_OBJECT: u64 = 1 << 32;
const MAX_MANIFEST_OBJECT: u64 = 16 * 1024 * 1024;
/// Chunk-prefix listings compared ahead of the copies.
const LISTINGS_AHEAD: usize = 4;

/// How to replicate.
#[derive(Debug, Clone)]
pub struct ReplicateOptions {
    /// Objects copied at once.
    pub parallel: usize,
    /// Bytes per second written to the secondary, all tasks together.
    pub limit_rate: Option<u64>,
    /// Copy only this VM's indexes and manifests. Chunks cannot be attributed to a VM
    /// without the key, so every missing chunk is still copied.
    pub vm: Option<String>,
}

impl Default for ReplicateOptions {
    fn default() -> Self {
        Self {
            parallel: 16,
            limit_rate: None,
            vm: None,
        }
    }
}

/// What a replication run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicateReport {
    /// The secondary had no repository; `config` and keys were copied.
    pub repository_created: bool,
    /// Key files copied.
    pub keys_copied: u64,
    /// Snapshots the secondary lacked at the start.
    pub snapshots_missing: u64,
    /// Chunks copied.
    pub chunks_copied: u64,
    /// Indexes copied.
    pub indexes_copied: u64,
    /// Manifests copied: snapshots now present at the secondary.
    pub manifests_copied: u64,
    /// Snapshots pruned at the primary while this run copied them (not copied).
    pub snapshots_vanished: u64,
    /// Bytes written to the secondary.
    pub bytes_copied: u64,
    /// How chunks travelled, if any had to be looked for.
    pub chunk_transfer: Option<ChunkTransfer>,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
}

/// How chunks travel from the primary to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkTransfer {
    /// One read and one write per chunk, through this process (plain S3,
    /// `file://`).
    Objects,
    /// Batches read from the primary node and written to the secondary node
    /// by this process.
    Relayed,
    /// Batches the secondary node fetched from the primary node itself.
    Pulled,
}

/// Counters shared by the copy tasks.
#[derive(Default)]
struct Counters {
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    /// Counts a chunk of `bytes` written to the secondary.
    fn chunk_created(&self, bytes: u64) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// Copies everything the secondary `to` lacks from the primary `from`.
pub async fn replicate(
    from: &Backend,
    to: &Backend,
    options: &ReplicateOptions,
    progress: &Progress,
) -> Result<ReplicateReport> {
    let started = Instant::now();
    let mut report = ReplicateReport::default();
    let limiter = options.limit_rate.map(RateLimiter::new).map(Arc::new);
    let copier = Copier {
        from: from.clone(),
        to: to.clone(),
        limiter,
        counters: Arc::new(Counters::default()),
    };

    let (created, keys) = copier.repository_files().await?;
    report.repository_created = created;
    report.keys_copied = keys;

    let primary = list_snapshot_ids(from, options.vm.as_deref()).await?;
    let secondary: BTreeSet<SnapshotId> = settled_at_secondary(to, options.vm.as_deref())
        .await?
        .into_iter()
        .collect();
    let missing: Vec<SnapshotId> = primary
        .into_iter()
        .filter(|id| !secondary.contains(id))
        .collect();
    report.snapshots_missing = missing.len() as u64;
    if !missing.is_empty() {
        report.chunk_transfer = Some(copier.chunks(options.parallel.max(1), progress).await?);
        to.barrier().await?;
        for id in &missing {
            report.indexes_copied += copier.indexes(id).await?;
        }
        for id in &missing {
            let key = id.manifest_key();
            match copier
                .object(&key, BlobKind::Manifest, MAX_MANIFEST_OBJECT)
                .await
            {
                Ok(true) => report.manifests_copied += 1,
                Ok(false) => {}
                // Pruned at the primary since the listing: nothing to copy.
                Err(RepoError::NotFound(_)) => report.snapshots_vanished += 1,
                Err(error) => return Err(error),
            }
        }
    }
    report.chunks_copied = copier.counters.chunks.load(Ordering::Relaxed);
    report.bytes_copied = copier.counters.bytes.load(Ordering::Relaxed);
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[derive(Clone)]
struct Copier {
    from: Backend,
    to: Backend,
    limiter: Option<Arc<RateLimiter>>,
    counters: Arc<Counters>,
}

impl Copier {
    /// Copies missing key files, then `config` if the secondary has none; refuses a
    /// secondary that holds another repository. Returns (config copied, keys copied).
    async fn repository_files(&self) -> Result<(bool, u64)> {
        let config = match self.from.get(CONFIG_KEY, MAX_SMALL_OBJECT).await {
            Ok(bytes) => bytes,
            Err(RepoError::NotFound(_)) => {
                return Err(RepoError::NotARepository(self.from.location().into()));
            }
            Err(error) => return Err(error),
        };
        let primary = RepoConfig::parse(&config, self.from.location())?;
        let existing = match self.to.get(CONFIG_KEY, MAX_SMALL_OBJECT).await {
            Ok(bytes) => Some(RepoConfig::parse(&bytes, self.to.location())?),
            Err(RepoError::NotFound(_)) => None,
            Err(error) => return Err(error),
        };
        if let Some(secondary) = &existing
            && secondary.id != primary.id
        {
            return Err(RepoError::InvalidArgument(format!(
                "{} holds repository {}, not {} ({}): refusing to mix them",
                self.to.location(),
                secondary.id,
                primary.id,
                self.from.location()
            )));
        }
        let present: BTreeSet<String> = self.to.list("keys").await?.into_iter().collect();
        let mut keys = 0;
        for key in self.from.list("keys").await? {
            if present.contains(&key) {
                continue;
            }
            let data = self.from.get(&key, MAX_SMALL_OBJECT).await?;
            serde_json::from_slice::<serde_json::Value>(&data)
                .map_err(|error| RepoError::corrupt(&key, format!("not JSON: {error}")))?;
            if self.put(&key, data, Durability::Immediate).await? {
                keys += 1;
            }
        }
        let created = match existing {
            Some(_) => false,
            None => self.put(CONFIG_KEY, config, Durability::Immediate).await?,
        };
        Ok((created, keys))
    }

    /// Copies every chunk the secondary lacks, one fan-out prefix listing at a time;
    /// in batches when both sites are Haven storage nodes. Says how they travelled.
    async fn chunks(&self, parallel: usize, progress: &Progress) -> Result<ChunkTransfer> {
        let nodes = batch::Nodes::of(&self.from, &self.to).await?;
        let transfer = nodes
            .as_ref()
            .map_or(ChunkTransfer::Objects, batch::Nodes::transfer);
        let prefixes = (0..=255u8).map(|byte| format!("chunks/{byte:02x}"));
        let listings = futures::stream::iter(prefixes)
            .map(|prefix| {
                let copier = self.clone();
                async move { copier.missing_under(&prefix).await }
            })
            .buffered(LISTINGS_AHEAD);
        let keys = listings.flat_map(|listing| match listing {
            Ok(keys) => {
                progress.add_total(keys.iter().map(|(_, size)| size).sum());
                futures::stream::iter(keys.into_iter().map(Ok).collect::<Vec<_>>())
            }
            Err(error) => futures::stream::iter(vec![Err(error)]),
        });
        let mut copies = match nodes {
            Some(nodes) => {
                let in_flight = nodes.batches_in_flight(parallel);
                batch::batches(keys)
                    .map(move |items| {
                        let copier = self.clone();
                        let nodes = nodes.clone();
                        async move {
                            let mut results = Vec::new();
                            let mut keys = Vec::with_capacity(items.len());
                            for item in items {
                                match item {
                                    Ok(key) => keys.push(key),
                                    Err(error) => results.push(Err(error)),
                                }
                            }
                            results.extend(copier.batch(&nodes, keys).await);
                            futures::stream::iter(results)
                        }
                    })
                    .buffer_unordered(in_flight)
                    .flatten()
                    .left_stream()
            }
            None => keys
                .map(|item| {
                    let copier = self.clone();
                    async move {
                        let (key, size) = item?;
                        match copier.object(&key, BlobKind::Chunk, MAX_CHUNK_OBJECT).await {
                            // Removed by a garbage collection since the listing: no
                            // manifest that still exists names it, so none copied
                            // later can.
                            Ok(_) | Err(RepoError::NotFound(_)) => Ok::<u64, RepoError>(size),
                            Err(error) => Err(error),
                        }
                    }
                })
                .buffer_unordered(parallel)
                .right_stream(),
        };
        let mut first_error = None;
        while let Some(result) = copies.next().await {
            match result {
                Ok(size) => progress.add_done(size),
                Err(error) => {
                    tracing::warn!(%error, "chunk not replicated");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(transfer),
        }
    }

    /// Keys (and sizes) under `prefix` at the primary and not at the secondary.
    async fn missing_under(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let (primary, secondary) =
            futures::try_join!(self.from.list_with_sizes(prefix), self.to.list(prefix))?;
        let present: BTreeSet<String> = secondary.into_iter().collect();
        let mut missing: Vec<(String, u64)> = primary
            .into_iter()
            .filter(|(key, _)| !present.contains(key))
            .collect();
        missing.sort_unstable();
        Ok(missing)
    }

    /// Copies the indexes of snapshot `id`; an index already at the secondary with other
    /// bytes (left by a backup that crashed before its manifest) is replaced, which
    /// needs a destination key that may delete: with an append-only key that case
    /// fails (`RepoError::NotPermitted`) and everything else works.
    async fn indexes(&self, id: &SnapshotId) -> Result<u64> {
        let prefix = format!("indexes/{}/{}", id.vm, id.timestamp);
        let mut copied = 0;
        for key in self.from.list(&prefix).await? {
            let data = self.from.get(&key, MAX_INDEX_OBJECT).await?;
            check_frame_of_kind(&key, &data, BlobKind::Index)?;
            match self.to.get(&key, MAX_INDEX_OBJECT).await {
                Ok(existing) if existing == data => continue,
                Ok(_) => {
                    if let Err(error) = self.to.delete(&key).await {
                        if matches!(error, RepoError::NotPermitted { .. }) {
                            tracing::warn!(
                                %key,
                                "the secondary holds another index at this key and the destination key may not replace it (append-only); run `haven gc` at the secondary with its delete key, then replicate again"
                            );
                        }
                        return Err(error);
                    }
                }
                Err(RepoError::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
            if self.put(&key, data, Durability::Immediate).await? {
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// Copies one framed object create-only; returns whether this call wrote it.
    async fn object(&self, key: &str, kind: BlobKind, max_len: u64) -> Result<bool> {
        let data = self.from.get(key, max_len).await?;
        check_frame_of_kind(key, &data, kind)?;
        let durability = match kind {
            BlobKind::Chunk => Durability::Deferred,
            _ => Durability::Immediate,
        };
        let created = self.put(key, data, durability).await?;
        if created && kind == BlobKind::Chunk {
            self.counters.chunks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(created)
    }

    async fn put(&self, key: &str, data: Bytes, durability: Durability) -> Result<bool> {
        let len = data.len() as u64;
        if let Some(limiter) = &self.limiter {
            limiter.acquire(len).await;
        }
        let outcome = self.to.put_if_absent(key, data, durability).await?;
        if outcome == PutOutcome::Created {
            self.counters.bytes.fetch_add(len, Ordering::Relaxed);
        }
        Ok(outcome == PutOutcome::Created)
    }
}
