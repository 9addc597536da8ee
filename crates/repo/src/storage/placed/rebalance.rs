//! Rebalancing after a membership change: every object onto exactly its placement.
//!
//! Why: rendezvous hashing moves about 1/N of the keys when a member joins, and the
//! keys a member held when it leaves; reads find unmoved objects meanwhile (they ask
//! every member in rank order), but until they move, an object may have fewer than
//! `replicas` copies on the current placement, and a drained node cannot be retired.
//!
//! One pass over the union of the listings of the members and of the nodes being
//! drained. For each key: copy it (create-only, from a member that holds it, placed
//! holders first) to every placed member that lacks it, and only once every copy is
//! acknowledged — storage nodes acknowledge durable writes — delete it from holders
//! outside its placement. Copy before delete makes a pass crash-safe (a killed pass
//! leaves extra copies, never fewer), and create-only copies make it idempotent: a
//! second pass finds nothing to do. Needs a key that may delete (`access = "delete"`).

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::merge::{Listed, merge};
use super::{Member, Placed, listings};
use crate::error::Result;
use crate::storage::backend::Durability;

/// Objects moved at once.
const PARALLEL: usize = 16;

/// What a rebalance pass did.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct RebalanceReport {
    /// Keys found on any member or drained node.
    pub objects: u64,
    /// Copies written to a placed member that lacked the key.
    pub copied: u64,
    /// Bytes of those copies.
    pub copied_bytes: u64,
    /// Copies deleted from members (or drained nodes) outside the key's placement.
    pub removed: u64,
}

/// What one key needed.
#[derive(Default)]
struct Moved {
    copied: u64,
    copied_bytes: u64,
    removed: u64,
}

impl Placed {
    /// Puts every object under the repository on exactly its placement, reading also
    /// the nodes at `drain` (members that left the URL), which end up empty.
    pub(crate) async fn rebalance(&self, drain: &[String]) -> Result<RebalanceReport> {
        let mut nodes: Vec<Member> = self.members().to_vec();
        for endpoint in drain {
            let node = self.open_other(endpoint)?;
            if !nodes.iter().any(|known| known.id == node.id) {
                nodes.push(node);
            }
        }
        let nodes = &nodes;
        let moved = merge(listings(nodes, ""), 0)
            .map(|listed| async move { self.move_one(nodes, listed?).await })
            .buffer_unordered(PARALLEL)
            .try_fold(RebalanceReport::default(), |mut report, moved| async move {
                report.objects += 1;
                report.copied += moved.copied;
                report.copied_bytes += moved.copied_bytes;
                report.removed += moved.removed;
                Ok(report)
            })
            .await?;
        for node in nodes {
            node.backend.barrier().await?;
        }
        Ok(moved)
    }

    /// Copies one key to the placed members that lack it, then removes it from the
    /// holders outside its placement. `nodes` starts with the members, in order.
    async fn move_one(&self, nodes: &[Member], listed: Listed) -> Result<Moved> {
        let key = listed.meta.location.to_string();
        let placement = self.placement(&key);
        let mut moved = Moved::default();
        let lacking: Vec<usize> = placement
            .iter()
            .copied()
            .filter(|index| !listed.holders.contains(index))
            .collect();
        if !lacking.is_empty() {
            let data = self
                .read_from_holders(nodes, &listed, &placement, &key)
                .await?;
            for index in lacking {
                nodes[index]
                    .backend
                    .put_if_absent(&key, data.clone(), Durability::Immediate)
                    .await?;
                moved.copied += 1;
                moved.copied_bytes += data.len() as u64;
            }
        }
        for &holder in &listed.holders {
            if !placement.contains(&holder) {
                nodes[holder].backend.delete(&key).await?;
                moved.removed += 1;
            }
        }
        Ok(moved)
    }

    /// The object's bytes from the first holder that can read it, placed ones first.
    async fn read_from_holders(
        &self,
        nodes: &[Member],
        listed: &Listed,
        placement: &[usize],
        key: &str,
    ) -> Result<Bytes> {
        let (placed, others): (Vec<usize>, Vec<usize>) = listed
            .holders
            .iter()
            .copied()
            .partition(|index| placement.contains(index));
        let mut failure = None;
        for index in placed.into_iter().chain(others) {
            match nodes[index].backend.get(key, u64::MAX).await {
                Ok(bytes) => return Ok(bytes),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        Err(failure.unwrap_or_else(|| crate::error::RepoError::NotFound(key.to_owned())))
    }
}
