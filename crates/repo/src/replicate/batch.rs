//! Chunk copies between two Haven storage nodes through their batch transfer
//! (`haven_node_protocol`): one request reads a batch of chunks from the
//! primary and one writes them to the secondary, instead of a GET and a
//! signed, MD5-hashed PUT per chunk. Every chunk's frame is still checked here
//! before it is forwarded, and the secondary checks each chunk against the
//! CRC-32 the primary stored.
//!
//! A batch is held in memory between its read and its write (at most
//! [`BATCH_BYTES`]): an unsigned request body needs its length up front.

use futures::StreamExt;
use haven_node_protocol::Record;

use super::{Copier, MAX_CHUNK_OBJECT};
use crate::backend::Backend;
use crate::blob::{BlobKind, check_pieces_of_kind};
use crate::error::{RepoError, Result};
use crate::node_client::{NodeClient, NodeClientError};

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
        Ok((source_ok && target_ok).then(|| Self {
            source: source.clone(),
            target: target.clone(),
        }))
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
        let keys: Vec<String> = items
            .iter()
            .map(|(key, _)| self.from.bucket_key(key))
            .collect();
        let mut reader = nodes
            .source
            .batch_get(keys)
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
