//! The leader's store writes: every one is a transaction that also compares the leader
//! key's revision, so a deposed leader cannot write.

use serde::Serialize;

use super::{Leader, LeaderError, Result};
use crate::model::{self, JobRecord};
use crate::store::{Compare, Op, Revision};

/// Ops per store transaction (etcd allows 128 by default).
pub(super) const OPS_PER_TXN: usize = 100;

impl Leader {
    /// Applies `ops` if this replica still leads and `compares` hold: the revision of
    /// the transaction, or `None` when a compare other than leadership failed.
    pub(super) async fn write_at(
        &self,
        mut compares: Vec<Compare>,
        ops: Vec<Op>,
    ) -> Result<Option<Revision>> {
        compares.push(Compare::ModRevision(
            model::leader_key(),
            self.leader_revision,
        ));
        let outcome = self.store.txn(compares, ops).await?;
        if outcome.succeeded {
            return Ok(Some(outcome.revision));
        }
        match self.store.get(&model::leader_key()).await? {
            Some(kv) if kv.mod_revision == self.leader_revision => Ok(None),
            _ => Err(LeaderError::NotLeader),
        }
    }

    /// Applies `ops` if this replica still leads and `compares` hold. `Ok(false)`: a
    /// compare other than leadership failed.
    pub(super) async fn write(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        Ok(self.write_at(compares, ops).await?.is_some())
    }

    /// Writes many ops in transactions of bounded size.
    pub(super) async fn write_batched(&self, ops: Vec<Op>) -> Result<()> {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let batch: Vec<Op> = ops.by_ref().take(OPS_PER_TXN).collect();
            if !self.write(vec![], batch).await? {
                return Err(LeaderError::NotLeader);
            }
        }
        Ok(())
    }
}

/// A record as the JSON value stored under its key.
pub(super) fn json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(value)?)
}

/// A put of `value` as JSON under `key`, without lease.
pub(super) fn put_json<T: Serialize>(key: String, value: &T) -> Result<Op> {
    Ok(Op::put(key, json(value)?))
}

/// Puts of job records under their keys.
pub(super) fn job_puts<'a>(jobs: impl IntoIterator<Item = &'a JobRecord>) -> Result<Vec<Op>> {
    jobs.into_iter()
        .map(|job| put_json(model::job_key(&job.id), job))
        .collect()
}
