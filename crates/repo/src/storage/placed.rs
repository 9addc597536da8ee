//! One repository over several Haven storage nodes of a site, each object on the
//! `replicas` members rendezvous hashing ranks first for its key.
//!
//! The URL names the members: `s3://bucket/prefix?endpoint=E1&endpoint=E2&…&replicas=R`
//! (every other parameter applies to every member). A member's id, which the hash
//! uses, is its endpoint's origin (`http://host:port`), so moving a node to another
//! address is a membership change. Each member is an ordinary storage-node
//! [`Backend`], so batched existence queries and batch writes work per node.
//!
//! What each operation does over the replicas (also in `docs/storage-node.md`):
//!
//! - **create-only put**: the key's first-ranked member decides, with its own atomic
//!   create-only write; then the other placed members get the object too. Created
//!   there: the same bytes go to the others, create-only. Found there: every other
//!   placed member that lacks it gets a copy of the decider's bytes (not the caller's:
//!   a manifest found there may differ from the one offered). The put succeeds only
//!   when every placed member holds the object: the write quorum is all `replicas`,
//!   so an acknowledged object survives the loss of `replicas - 1` members, and a
//!   put whose placement includes an unreachable member fails, naming it.
//! - **overwrite** (leases, locks, repairs): every placed member, all must succeed.
//! - **read, exists**: members in rank order for the key, the placed ones first, then
//!   the others (objects a membership change has not yet rebalanced); the first that
//!   has it answers. A member that fails is skipped; its error is returned only if no
//!   member had the object. A member that failed is asked last for the next
//!   [`SUSPECT_FOR`], and members retry for seconds, not `object_store`'s minutes
//!   ([`member_retry`]), so a dead node slows reads only briefly.
//! - **exists for reuse** (deduplication): the key is on *every* placed member, so a
//!   chunk that lost a replica is uploaded again, which restores the replica.
//! - **delete**: on every member, placed or not.
//! - **list**: the union of the members' listings, each key once (`merge`); up to
//!   `replicas - 1` members whose listing fails are left out, as every acknowledged
//!   object has a copy on another member.

pub(crate) mod merge;
pub(crate) mod rebalance;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::{BackoffConfig, ObjectMeta, RetryConfig};

use super::backend::{Backend, Durability, OpenOptions, PutOutcome};
use super::rendezvous;
use crate::error::{RepoError, Result};

/// The replication factor when the URL names none.
pub(crate) const DEFAULT_REPLICAS: usize = 2;

/// How long a member whose request failed is asked after the others.
pub(crate) const SUSPECT_FOR: Duration = Duration::from_secs(10);

/// Retries of one member's S3 requests: a few within seconds. Another replica serves
/// reads meanwhile, and a write that needs this member fails within seconds, naming it.
pub(crate) fn member_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// The members of a site and the replication factor.
#[derive(Debug)]
pub(crate) struct Placed {
    members: Vec<Member>,
    /// Member ids, in the order of `members` (the hash's input).
    ids: Vec<String>,
    replicas: usize,
    /// How to open another node of the same site (members being drained).
    template: Template,
    /// Per member: until when it is asked last, after a failure.
    suspect_until: Vec<Mutex<Option<Instant>>>,
}

/// One storage node of the site.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The endpoint's origin, `http://host:port`.
    pub(crate) id: String,
    /// The node as a single-endpoint repository backend.
    pub(crate) backend: Backend,
}

/// The URL with its endpoints and replication factor taken out, and the options it
/// was opened with: opens a member from its endpoint.
#[derive(Debug, Clone)]
struct Template {
    url: url::Url,
    options: OpenOptions,
}

impl Template {
    fn open(&self, endpoint: &str) -> Result<Member> {
        let mut url = self.url.clone();
        url.query_pairs_mut().append_pair("endpoint", endpoint);
        let backend = Backend::open_member(url.as_str(), &self.options, member_retry())?;
        Ok(Member {
            id: member_id(endpoint).map_err(|reason| RepoError::InvalidUrl {
                url: url.to_string(),
                reason,
            })?,
            backend,
        })
    }
}

/// The id of the member at `endpoint`: its origin, so `http://h:9000/` and
/// `http://h:9000` are one member.
fn member_id(endpoint: &str) -> std::result::Result<String, String> {
    let parsed =
        url::Url::parse(endpoint).map_err(|error| format!("endpoint {endpoint:?}: {error}"))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("endpoint {endpoint:?} names no host"));
    }
    Ok(parsed.origin().ascii_serialization())
}

/// Whether `parsed` names several members (then [`open`] opens it).
pub(crate) fn names_several_members(parsed: &url::Url) -> bool {
    parsed
        .query_pairs()
        .filter(|(name, _)| name == "endpoint" || name == "replicas")
        .count()
        > 1
}

/// Opens the members `parsed` (the text of which is `url`) names.
pub(crate) fn open(parsed: &url::Url, url: &str, options: &OpenOptions) -> Result<Placed> {
    let invalid = |reason: String| RepoError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let mut endpoints = Vec::new();
    let mut replicas = None;
    let mut template = parsed.clone();
    template.set_query(None);
    {
        let mut query = template.query_pairs_mut();
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoints.push(value.into_owned()),
                "replicas" => {
                    let count = value
                        .parse::<usize>()
                        .ok()
                        .filter(|count| *count >= 1)
                        .ok_or_else(|| invalid(format!("replicas={value}: a count from 1")))?;
                    replicas = Some(count);
                }
                _ => {
                    query.append_pair(&name, &value);
                }
            }
        }
    }
    if endpoints.is_empty() {
        return Err(invalid(
            "replicas= needs the members' endpoint= parameters".into(),
        ));
    }
    let replicas = replicas.unwrap_or(DEFAULT_REPLICAS.min(endpoints.len()));
    if replicas > endpoints.len() {
        return Err(invalid(format!(
            "replicas={replicas} but only {} endpoint(s): each replica needs its own node",
            endpoints.len()
        )));
    }
    let template = Template {
        url: template,
        options: options.clone(),
    };
    let mut members = Vec::with_capacity(endpoints.len());
    let mut seen = BTreeSet::new();
    for endpoint in &endpoints {
        let member = template.open(endpoint)?;
        if !seen.insert(member.id.clone()) {
            return Err(invalid(format!("endpoint {} is named twice", member.id)));
        }
        members.push(member);
    }
    Ok(Placed::new(members, replicas, template))
}

impl Placed {
    fn new(members: Vec<Member>, replicas: usize, template: Template) -> Self {
        let ids = members.iter().map(|member| member.id.clone()).collect();
        let suspect_until = members.iter().map(|_| Mutex::new(None)).collect();
        Self {
            members,
            ids,
            replicas,
            template,
            suspect_until,
        }
    }

    /// Remembers that member `index` failed a request just now.
    fn failed(&self, index: usize) {
        let mut until = self.suspect_until[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *until = Some(Instant::now() + SUSPECT_FOR);
    }

    /// Whether member `index` failed within the last [`SUSPECT_FOR`].
    fn suspect(&self, index: usize) -> bool {
        let until = self.suspect_until[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.is_some_and(|until| Instant::now() < until)
    }

    /// The members, in the URL's order.
    pub(crate) fn members(&self) -> &[Member] {
        &self.members
    }

    /// The replication factor.
    pub(crate) fn replicas(&self) -> usize {
        self.replicas
    }

    /// Indexes of the members that hold `key`, first-ranked first.
    pub(crate) fn placement(&self, key: &str) -> Vec<usize> {
        rendezvous::placement(&self.ids, key, self.replicas)
    }

    /// Every member in rank order for `key` (the placement, then the rest), members
    /// that failed recently last.
    fn read_order(&self, key: &str) -> Vec<usize> {
        let (healthy, suspect): (Vec<usize>, Vec<usize>) = rendezvous::ranking(&self.ids, key)
            .into_iter()
            .partition(|&index| !self.suspect(index));
        healthy.into_iter().chain(suspect).collect()
    }

    /// Opens the node at `endpoint` with this site's bucket, prefix and keys (for
    /// draining a node that left the membership).
    pub(crate) fn open_other(&self, endpoint: &str) -> Result<Member> {
        self.template.open(endpoint)
    }

    /// Reads `key` from the first member in rank order that has it.
    pub(crate) async fn get(&self, key: &str, max_len: u64, once: bool) -> Result<Bytes> {
        let mut failure = None;
        for index in self.read_order(key) {
            let backend = &self.members[index].backend;
            let result = if once {
                backend.get_once(key, max_len).await
            } else {
                backend.get(key, max_len).await
            };
            match result {
                Ok(bytes) => return Ok(bytes),
                Err(RepoError::NotFound(_)) => {}
                Err(error) => {
                    self.failed(index);
                    failure.get_or_insert(error);
                }
            }
        }
        Err(failure.unwrap_or_else(|| RepoError::NotFound(key.to_owned())))
    }

    /// Whether any member has `key` (asked in rank order).
    pub(crate) async fn exists(&self, key: &str) -> Result<bool> {
        let mut failure = None;
        for index in self.read_order(key) {
            match self.members[index].backend.exists(key).await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(error) => {
                    self.failed(index);
                    failure.get_or_insert(error);
                }
            }
        }
        failure.map_or(Ok(false), Err)
    }

    /// Whether every placed member has `key`: only then may a writer reference it
    /// without writing it.
    pub(crate) async fn exists_to_reuse(&self, key: &str) -> Result<bool> {
        let answers = futures::future::join_all(
            self.placement(key)
                .into_iter()
                .map(|index| self.members[index].backend.exists_to_reuse(key)),
        )
        .await;
        let mut everywhere = true;
        for answer in answers {
            everywhere &= answer?;
        }
        Ok(everywhere)
    }

    /// Creates `key` on its placement: the first-ranked member decides (see the
    /// module's documentation), the others follow.
    pub(crate) async fn put_if_absent(
        &self,
        key: &str,
        data: Bytes,
        durability: Durability,
    ) -> Result<PutOutcome> {
        let placement = self.placement(key);
        let (first, others) = placement
            .split_first()
            .ok_or_else(|| RepoError::InvalidArgument("a site with no member".into()))?;
        let decider = &self.members[*first].backend;
        let outcome = decider.put_if_absent(key, data.clone(), durability).await?;
        let copy = match outcome {
            PutOutcome::Created => data,
            PutOutcome::AlreadyExisted => {
                let lacking = self.lacking(key, others).await?;
                if lacking.is_empty() {
                    return Ok(outcome);
                }
                let stored = decider.get(key, u64::MAX).await?;
                let results = futures::future::join_all(lacking.iter().map(|&index| {
                    self.members[index]
                        .backend
                        .put_if_absent(key, stored.clone(), durability)
                }))
                .await;
                for result in results {
                    result?;
                }
                return Ok(outcome);
            }
        };
        let results = futures::future::join_all(others.iter().map(|&index| {
            self.members[index]
                .backend
                .put_if_absent(key, copy.clone(), durability)
        }))
        .await;
        for result in results {
            result?;
        }
        Ok(outcome)
    }

    /// The members among `indexes` that do not have `key`.
    async fn lacking(&self, key: &str, indexes: &[usize]) -> Result<Vec<usize>> {
        let answers = futures::future::join_all(
            indexes
                .iter()
                .map(|&index| self.members[index].backend.exists(key)),
        )
        .await;
        let mut lacking = Vec::new();
        for (&index, answer) in indexes.iter().zip(answers) {
            if !answer? {
                lacking.push(index);
            }
        }
        Ok(lacking)
    }

    /// Replaces `key` on every placed member.
    pub(crate) async fn overwrite(&self, key: &str, data: Bytes, repair: bool) -> Result<()> {
        let results = futures::future::join_all(self.placement(key).into_iter().map(|index| {
            let backend = &self.members[index].backend;
            let data = data.clone();
            async move {
                if repair {
                    backend.overwrite_for_repair(key, data).await
                } else {
                    backend.put_lock_object(key, data).await
                }
            }
        }))
        .await;
        results.into_iter().collect()
    }

    /// Deletes `key` from every member.
    pub(crate) async fn delete(&self, key: &str) -> Result<()> {
        let results =
            futures::future::join_all(self.members.iter().map(|member| member.backend.delete(key)))
                .await;
        results.into_iter().collect()
    }

    /// Waits for every member's pending writes.
    pub(crate) async fn barrier(&self) -> Result<()> {
        for member in &self.members {
            member.backend.barrier().await?;
        }
        Ok(())
    }

    /// The union of every member's objects under `prefix`, in key order.
    pub(crate) fn list(&self, prefix: &str) -> BoxStream<'static, Result<ObjectMeta>> {
        merge::merge(listings(&self.members, prefix), self.replicas - 1)
            .map(|listed| listed.map(|listed| listed.meta))
            .boxed()
    }
}

/// Each member's listing of `prefix`, named for errors.
fn listings(
    members: &[Member],
    prefix: &str,
) -> Vec<(String, BoxStream<'static, Result<ObjectMeta>>)> {
    members
        .iter()
        .map(|member| (member.id.clone(), member.backend.list_meta(prefix)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// A site of in-memory members `n0`, `n1`, … (their backends shared with the
    /// caller, so a test can look at or change one member behind the site's back).
    fn site(backends: &[Backend], replicas: usize) -> Placed {
        let members = backends
            .iter()
            .enumerate()
            .map(|(index, backend)| Member {
                id: format!("n{index}"),
                backend: backend.clone(),
            })
            .collect();
        let template = Template {
            url: url::Url::parse("s3://test/prefix").unwrap(),
            options: OpenOptions::default(),
        };
        Placed::new(members, replicas, template)
    }

    fn memories(count: usize) -> Vec<Backend> {
        (0..count).map(|_| Backend::memory()).collect()
    }

    async fn holders(backends: &[Backend], key: &str) -> Vec<usize> {
        let mut held = Vec::new();
        for (index, backend) in backends.iter().enumerate() {
            if backend.exists(key).await.unwrap() {
                held.push(index);
            }
        }
        held
    }

    fn sorted(mut indexes: Vec<usize>) -> Vec<usize> {
        indexes.sort_unstable();
        indexes
    }

    #[tokio::test]
    async fn a_put_lands_on_exactly_its_placement_and_stays_create_only() {
        let backends = memories(4);
        let placed = site(&backends, 2);
        for i in 0..50 {
            let key = format!("chunks/{i:02}/{i}");
            let put = placed
                .put_if_absent(&key, Bytes::from(key.clone()), Durability::Deferred)
                .await
                .unwrap();
            assert_eq!(put, PutOutcome::Created);
            assert_eq!(
                holders(&backends, &key).await,
                sorted(placed.placement(&key))
            );
            let again = placed
                .put_if_absent(&key, Bytes::from_static(b"other"), Durability::Immediate)
                .await
                .unwrap();
            assert_eq!(again, PutOutcome::AlreadyExisted);
            assert_eq!(placed.get(&key, 100, false).await.unwrap(), key);
        }
    }

    #[tokio::test]
    async fn a_lost_replica_is_not_reused_and_the_put_restores_the_deciders_bytes() {
        let backends = memories(3);
        let placed = site(&backends, 2);
        let key = "snapshots/web1/2026-12-07T00:00:00Z";
        placed
            .put_if_absent(key, Bytes::from_static(b"first"), Durability::Immediate)
            .await
            .unwrap();
        let placement = placed.placement(key);
        backends[placement[1]].delete(key).await.unwrap();
        assert!(placed.exists(key).await.unwrap());
        assert!(!placed.exists_to_reuse(key).await.unwrap());
        // A second writer offers other bytes: the first-ranked member's copy wins, and
        // it is that copy which fills the hole.
        let outcome = placed
            .put_if_absent(key, Bytes::from_static(b"second"), Durability::Immediate)
            .await
            .unwrap();
        assert_eq!(outcome, PutOutcome::AlreadyExisted);
        assert_eq!(backends[placement[1]].get(key, 100).await.unwrap(), "first");
        assert!(placed.exists_to_reuse(key).await.unwrap());
    }

    #[tokio::test]
    async fn reads_fall_back_in_rank_order_lists_are_unions_and_deletes_go_everywhere() {
        let backends = memories(3);
        let placed = site(&backends, 2);
        let key = "indexes/web1/t/disk0";
        // Only on the member that is not placed (as before a rebalance).
        let outside = (0..3)
            .find(|index| !placed.placement(key).contains(index))
            .unwrap();
        backends[outside]
            .put_if_absent(key, Bytes::from_static(b"moved"), Durability::Immediate)
            .await
            .unwrap();
        assert_eq!(placed.get(key, 100, true).await.unwrap(), "moved");
        assert!(placed.exists(key).await.unwrap());
        placed
            .put_if_absent("indexes/a", Bytes::from_static(b"a"), Durability::Immediate)
            .await
            .unwrap();
        let listed: Vec<String> = placed
            .list("indexes")
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(listed, ["indexes/a", key]);
        placed.delete(key).await.unwrap();
        assert!(holders(&backends, key).await.is_empty());
        assert!(matches!(
            placed.get(key, 100, false).await,
            Err(RepoError::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn rebalance_after_a_join_moves_copies_to_the_placement_once() {
        let backends = memories(4);
        let before = site(&backends[..3], 2);
        let keys: Vec<String> = (0..200).map(|i| format!("chunks/{i:03}")).collect();
        for key in &keys {
            before
                .put_if_absent(key, Bytes::from(key.clone()), Durability::Deferred)
                .await
                .unwrap();
        }
        let after = site(&backends, 2);
        let report = after.rebalance(&[]).await.unwrap();
        assert_eq!(report.objects, 200);
        assert!(
            report.copied > 0 && report.copied == report.removed,
            "{report:?}"
        );
        for key in &keys {
            assert_eq!(holders(&backends, key).await, sorted(after.placement(key)));
            assert_eq!(after.get(key, 100, false).await.unwrap(), key.as_str());
        }
        let again = after.rebalance(&[]).await.unwrap();
        assert_eq!((again.copied, again.removed), (0, 0));
    }
}
