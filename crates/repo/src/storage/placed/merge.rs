//! The union of several members' listings as one stream in key order, each key once,
//! with the members that hold it.
//!
//! Why a merge and not a set: garbage collection lists 10^8 chunks, which must never
//! be held in memory. Every member lists in key order (S3 lists in UTF-8 binary order,
//! as the storage node does), so a k-way merge of their streams needs one pending
//! object per member. A member that lists out of order is an error, never a silently
//! repeated or skipped key.
//!
//! A member whose listing fails may be left out, up to a given number of members: with
//! `replicas` copies of every acknowledged object, a listing without `replicas - 1`
//! members still names every acknowledged object, so a restore can list snapshots while
//! a node is down. Deletions still need every member, so garbage collection never acts
//! on such a listing while the node is away.

use futures::stream::{BoxStream, StreamExt};
use object_store::ObjectMeta;

use crate::error::{RepoError, Result};

/// One key of the union: its metadata and which members (indexes) hold it.
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Of the holder whose copy is the newest: garbage collection deletes only what
    /// is older than its cutoff, so the newest copy is the conservative answer.
    pub(crate) meta: ObjectMeta,
    /// Indexes of the members that listed the key, in increasing order.
    pub(crate) holders: Vec<usize>,
}

/// One member's listing and the next object it has not yet given out.
struct Source {
    name: String,
    stream: BoxStream<'static, Result<ObjectMeta>>,
    head: Option<ObjectMeta>,
    done: bool,
    last: Option<String>,
}

/// The sources and how many more of them may fail before the listing does.
struct State {
    sources: Vec<Source>,
    may_fail: usize,
}

/// Merges the listings of `sources` (member name, its stream in key order); the
/// listings of up to `may_fail` sources may fail and are then left out.
pub(crate) fn merge(
    sources: Vec<(String, BoxStream<'static, Result<ObjectMeta>>)>,
    may_fail: usize,
) -> BoxStream<'static, Result<Listed>> {
    let sources: Vec<Source> = sources
        .into_iter()
        .map(|(name, stream)| Source {
            name,
            stream,
            head: None,
            done: false,
            last: None,
        })
        .collect();
    let state = State { sources, may_fail };
    futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match next(&mut state).await {
            Ok(Some(listed)) => Some((Ok(listed), Some(state))),
            Ok(None) => None,
            // An error ends the stream: a listing with a hole must not look complete.
            Err(error) => Some((Err(error), None)),
        }
    })
    .boxed()
}

/// The smallest pending key of every source, taken from each source holding it.
async fn next(state: &mut State) -> Result<Option<Listed>> {
    let State { sources, may_fail } = state;
    for source in sources.iter_mut() {
        if source.head.is_none() && !source.done {
            match source.stream.next().await {
                None => source.done = true,
                Some(Err(error)) if *may_fail > 0 => {
                    *may_fail -= 1;
                    source.done = true;
                    tracing::warn!(node = %source.name, %error, "listing without this storage node: its objects have replicas elsewhere");
                }
                Some(Err(error)) => return Err(error),
                Some(Ok(meta)) => {
                    let key = meta.location.to_string();
                    if source
                        .last
                        .as_deref()
                        .is_some_and(|last| last >= key.as_str())
                    {
                        return Err(RepoError::InvalidArgument(format!(
                            "storage node {} listed {key:?} after {:?}: not in key order",
                            source.name,
                            source.last.as_deref().unwrap_or_default()
                        )));
                    }
                    source.last = Some(key);
                    source.head = Some(meta);
                }
            }
        }
    }
    let Some(smallest) = sources
        .iter()
        .filter_map(|source| source.head.as_ref())
        .map(|meta| meta.location.as_ref().to_owned())
        .min()
    else {
        return Ok(None);
    };
    let mut holders = Vec::new();
    let mut newest: Option<ObjectMeta> = None;
    for (index, source) in sources.iter_mut().enumerate() {
        if source
            .head
            .as_ref()
            .is_some_and(|meta| meta.location.as_ref() == smallest)
            && let Some(meta) = source.head.take()
        {
            holders.push(index);
            if newest
                .as_ref()
                .is_none_or(|kept| kept.last_modified < meta.last_modified)
            {
                newest = Some(meta);
            }
        }
    }
    Ok(newest.map(|meta| Listed { meta, holders }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use object_store::path::Path;

    fn meta(key: &str, seconds: u64) -> ObjectMeta {
        ObjectMeta {
            location: Path::from(key),
            last_modified: (std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds)).into(),
            size: 1,
            e_tag: None,
            version: None,
        }
    }

    fn source(
        name: &str,
        metas: Vec<ObjectMeta>,
    ) -> (String, BoxStream<'static, Result<ObjectMeta>>) {
        (
            name.to_owned(),
            futures::stream::iter(metas.into_iter().map(Ok)).boxed(),
        )
    }

    #[tokio::test]
    async fn each_key_once_with_its_holders_and_newest_time() {
        let merged: Vec<Listed> = merge(
            vec![
                source("a", vec![meta("k1", 1), meta("k3", 5)]),
                source("b", vec![meta("k2", 1), meta("k3", 9)]),
                source("c", vec![]),
                source("d", vec![meta("k1", 2)]),
            ],
            0,
        )
        .try_collect()
        .await
        .unwrap();
        let keys: Vec<(String, Vec<usize>, i64)> = merged
            .iter()
            .map(|listed| {
                (
                    listed.meta.location.to_string(),
                    listed.holders.clone(),
                    listed.meta.last_modified.timestamp(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("k1".into(), vec![0, 3], 2),
                ("k2".into(), vec![1], 1),
                ("k3".into(), vec![0, 1], 9),
            ]
        );
    }

    #[tokio::test]
    async fn a_listing_out_of_order_is_an_error() {
        let result: Result<Vec<Listed>> =
            merge(vec![source("a", vec![meta("k2", 1), meta("k1", 1)])], 0)
                .try_collect()
                .await;
        assert!(result.unwrap_err().to_string().contains("not in key order"));
    }

    fn failing(name: &str) -> (String, BoxStream<'static, Result<ObjectMeta>>) {
        let error = RepoError::InvalidArgument("node down".into());
        (name.to_owned(), futures::stream::iter([Err(error)]).boxed())
    }

    #[tokio::test]
    async fn failing_listings_are_left_out_only_within_the_allowance() {
        let keys = |may_fail| async move {
            merge(
                vec![
                    source("a", vec![meta("k1", 1)]),
                    failing("b"),
                    source("c", vec![meta("k2", 1)]),
                    failing("d"),
                ],
                may_fail,
            )
            .map_ok(|listed| listed.meta.location.to_string())
            .try_collect::<Vec<String>>()
            .await
        };
        assert_eq!(keys(2).await.unwrap(), ["k1", "k2"]);
        assert!(keys(1).await.unwrap_err().to_string().contains("node down"));
    }
}
