//! Chunk copies between two Haven storage nodes through their batch transfer
//! (`haven_node_protocol`), instead of a GET and a signed, MD5-hashed PUT per
//! chunk. Two ways, chosen once per run:
//!
//! - **pull** (when the secondary lists the primary in its
//!   `replication.pull_sources`): this side signs a batch read of the
//!   primary and hands it to the secondary, which fetches the batch itself.
//!   The chunks cross the network once and this process only sends keys.
//!   The secondary checks each chunk against the CRC-32 the primary stored;
//!   the chunk frames are not looked at until the secondary is verified.
//! - **relay** (otherwise): one request reads a batch from the primary and
//!   one writes it to the secondary. Every chunk's frame is checked here
//!   before it is forwarded, and the secondary checks each chunk's CRC-32.
//!   A batch is held in memory between its read and its write (at most
//!   [`BATCH_BYTES`]): an unsigned request body needs its length up front.

use futures::StreamExt;
use haven_node_protocol::{PullKey, PullOutcome, Record};

use super::{ChunkTransfer, Copier, MAX_CHUNK_OBJECT};
use crate::error::{RepoError, Result};
use crate::format::blob::{BlobKind, check_pieces_of_kind};
use crate::storage::backend::Backend;
use crate::storage::node_client::{NodeClient, NodeClientError};

/// Most chunks per batch.
const BATCH_OBJECTS: usize = 64;
/// Most listed bytes per batch (a batch holds at least one chunk).
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// Under a rate limit, a batch holds at most 1/this of a second's bytes, so
/// that progress (and what an interrupted run leaves done) stays fine-grained.
const RATE_LIMITED_BATCHES_PER_SECOND: u64 = 10;

/// The two nodes, when both ends serve batch transfers.
#[derive(Clone)]
pub(super) struct Nodes {
    source: NodeClient,
    target: NodeClient,
    /// Whether the target pulls batches from the source itself.
    pull: bool,
}

impl Nodes {
    /// The nodes of `from` and `to`, if both are Haven storage nodes.
    pub(super) async fn of(from: &Backend, to: &Backend) -> Result<Option<Self>> {
        let (Some(source), Some(target)) = (from.node_client(), to.node_client()) else {
            return Ok(None);
        };
        let (source_ok, target_ok) = futures::try_join!(
            async {
                source
                    .supports_batch()
                    .await
                    .map_err(|e| node_error(from, e))
            },
            async { target.supports_batch().await.map_err(|e| node_error(to, e)) },
        )?;
        if !(source_ok && target_ok) {
            return Ok(None);
        }
        let pull = target
            .pulls_from(source)
            .await
            .map_err(|e| node_error(to, e))?;
        tracing::info!(
            pull,
            "replicating between storage nodes in batches ({})",
            if pull {
                "the secondary pulls from the primary"
            } else {
                "relayed: the secondary does not list the primary in replication.pull_sources"
            }
        );
        Ok(Some(Self {
            source: source.clone(),
            target: target.clone(),
            pull,
        }))
    }
}

impl Nodes {
    /// How batches travel between these nodes.
    pub(super) fn transfer(&self) -> ChunkTransfer {
        if self.pull {
            ChunkTransfer::Pulled
        } else {
            ChunkTransfer::Relayed
        }
    }

    /// Batches copied at once for `parallel` chunk copies. A relayed batch
    /// carries many chunks through this process, so fewer batches than chunk
    /// copies run; a pulled one holds nothing here, and more of them hide
    /// the secondary's fsync waits.
    pub(super) fn batches_in_flight(&self, parallel: usize) -> usize {
        if self.pull {
            parallel.div_ceil(4).clamp(1, 16)
        } else {
            parallel.div_ceil(8).clamp(1, 8)
        }
    }
}

fn node_error(backend: &Backend, source: NodeClientError) -> RepoError {
    RepoError::Node {
        location: backend.location().to_owned(),
        source,
    }
}

/// Groups a stream of listed chunks (key, size) into batches.
pub(super) fn batches<S>(keys: S) -> impl futures::Stream<Item = Vec<Result<(String, u64)>>>
where
    S: futures::Stream<Item = Result<(String, u64)>>,
{
    keys.chunks(BATCH_OBJECTS)
}

impl Copier {
    /// Copies the listed chunks `items` (key, size); one result per chunk
    /// handled (its size), or one error for a batch that failed as a whole.
    pub(super) async fn batch(&self, nodes: &Nodes, items: Vec<(String, u64)>) -> Vec<Result<u64>> {
        let batch_bytes = self.limiter.as_ref().map_or(BATCH_BYTES, |limiter| {
            (limiter.bytes_per_second() / RATE_LIMITED_BATCHES_PER_SECOND).min(BATCH_BYTES)
        });
        let mut results = Vec::with_capacity(items.len());
        let mut rest = items.as_slice();
        while !rest.is_empty() {
            let mut bytes = 0;
            let taken = rest
                .iter()
                .take_while(|(_, size)| {
                    bytes += size;
                    bytes <= batch_bytes
                })
                .count()
                .max(1);
            let (batch, after) = rest.split_at(taken);
            match self.copy_batch(nodes, batch).await {
                Ok(done) => results.extend(done),
                Err(error) => results.push(Err(error)),
            }
            rest = after;
        }
        results
    }

    async fn copy_batch(&self, nodes: &Nodes, items: &[(String, u64)]) -> Result<Vec<Result<u64>>> {
        if nodes.pull {
            self.pull_batch(nodes, items).await
        } else {
            self.relay_batch(nodes, items).await
        }
    }

    /// Has the target fetch the batch from the source.
    async fn pull_batch(&self, nodes: &Nodes, items: &[(String, u64)]) -> Result<Vec<Result<u64>>> {
        if let Some(limiter) = &self.limiter {
            limiter.acquire(listed_bytes(items)).await;
        }
        let keys = items
            .iter()
            .map(|(key, _)| PullKey {
                source: self.from.bucket_key(key),
                target: self.to.bucket_key(key),
            })
            .collect();
        // Signed only now, after any wait for the rate limit.
        let request = nodes
            .source
            .pull_request(keys)
            .map_err(|e| node_error(&self.from, e))?;
        let outcomes = nodes
            .target
            .batch_pull(&request)
            .await
            .map_err(|e| node_error(&self.to, e))?;
        let results = items
            .iter()
            .zip(outcomes)
            .map(|((key, size), outcome)| match outcome {
                PullOutcome::Created => {
                    self.counters.chunk_created(*size);
                    Ok(*size)
                }
                // Missing: removed by a garbage collection since the listing (see
                // `relay_batch`).
                PullOutcome::Existed | PullOutcome::Missing => Ok(*size),
                PullOutcome::Failed { message } => Err(RepoError::corrupt(key.clone(), message)),
            });
        Ok(results.collect())
    }

    /// Reads the batch from the source and writes it to the target.
    async fn relay_batch(
        &self,
        nodes: &Nodes,
        items: &[(String, u64)],
    ) -> Result<Vec<Result<u64>>> {
        let keys: Vec<String> = items
            .iter()
            .map(|(key, _)| self.from.bucket_key(key))
            .collect();
        let mut reader = nodes
            .source
            .batch_get(keys, listed_bytes(items))
            .await
            .map_err(|e| node_error(&self.from, e))?;
        let mut results = Vec::new();
        let mut pieces = Vec::with_capacity(2 * items.len());
        let mut forwarded = Vec::with_capacity(items.len());
        let mut forwarded_bytes = 0;
        for (key, size) in items {
            let (record, data) = reader
                .next_object(MAX_CHUNK_OBJECT)
                .await
                .map_err(|e| node_error(&self.from, e))?
                .ok_or_else(|| {
                    let error = NodeClientError::Protocol("batch ended early".into());
                    node_error(&self.from, error)
                })?;
            match record {
                Record::Object { info, .. } => {
                    if let Err(error) = check_pieces_of_kind(key, &data, BlobKind::Chunk) {
                        results.push(Err(error));
                        continue;
                    }
                    forwarded_bytes += info.size;
                    let header = Record::Object {
                        key: self.to.bucket_key(key),
                        info,
                    }
                    .encode()
                    .map_err(|e| node_error(&self.to, e.into()))?;
                    pieces.push(header);
                    pieces.extend(data);
                    forwarded.push(*size);
                }
                // Removed by a garbage collection since the listing: no manifest
                // that still exists names it, so none copied later can.
                Record::Missing { .. } => results.push(Ok(*size)),
                Record::Failed { message, .. } => {
                    results.push(Err(RepoError::corrupt(key.clone(), message)));
                }
            }
        }
        if forwarded.is_empty() {
            return Ok(results);
        }
        if let Some(limiter) = &self.limiter {
            limiter.acquire(forwarded_bytes).await;
        }
        let created = nodes
            .target
            .batch_put(pieces)
            .await
            .map_err(|e| node_error(&self.to, e))?;
        if created.len() != forwarded.len() {
            let error = NodeClientError::Protocol(format!(
                "{} answers for {} objects",
                created.len(),
                forwarded.len()
            ));
            return Err(node_error(&self.to, error));
        }
        for (size, created) in forwarded.into_iter().zip(created) {
            if created {
                self.counters.chunk_created(size);
            }
            results.push(Ok(size));
        }
        Ok(results)
    }
}

/// The bytes of a batch's objects, as listed.
fn listed_bytes(items: &[(String, u64)]) -> u64 {
    items.iter().map(|(_, size)| size).sum()
}
