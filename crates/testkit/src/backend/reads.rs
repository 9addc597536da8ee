//! Reads: size limits, existence (one key and batched), delete.

use haven_repo::{Backend, Durability, RepoError};

use super::{Keys, announce, content, ok, read};

/// Every check of this module.
pub(crate) async fn run(backend: &Backend, keys: &Keys) {
    get_limits(backend, keys).await;
    exists(backend, keys).await;
    delete(backend, keys).await;
}

/// `get` and `get_once` of a missing key are `NotFound`; an object larger than the
/// limit is refused as `Corrupt` by both, one exactly at the limit is read.
async fn get_limits(backend: &Backend, keys: &Keys) {
    announce("get and get_once limits");
    let missing = keys.chunk(10);
    for (name, result) in [
        ("get", backend.get(&missing, 1 << 20).await),
        ("get_once", backend.get_once(&missing, 1 << 20).await),
    ] {
        assert!(
            matches!(result, Err(RepoError::NotFound(ref key)) if *key == missing),
            "{name} of a missing key is NotFound, was {result:?}"
        );
    }
    let key = keys.chunk(11);
    let data = content(10_000, 11);
    ok(
        backend
            .put_if_absent(&key, data.clone(), Durability::Deferred)
            .await,
        "put",
    );
    for (name, result) in [
        ("get", backend.get(&key, 9_999).await),
        ("get_once", backend.get_once(&key, 9_999).await),
    ] {
        assert!(
            matches!(result, Err(RepoError::Corrupt { .. })),
            "{name} of an object over the limit is Corrupt, was {result:?}"
        );
    }
    assert_eq!(
        ok(backend.get(&key, 10_000).await, "get"),
        data,
        "get at the limit"
    );
    assert_eq!(
        ok(backend.get_once(&key, 10_000).await, "get_once"),
        data,
        "get_once at the limit"
    );
}

/// `exists` is true exactly for stored keys, asked one at a time and many at once
/// (concurrent questions share batch queries on a storage node).
async fn exists(backend: &Backend, keys: &Keys) {
    announce("existence query");
    assert!(
        !ok(backend.exists(&keys.chunk(20)).await, "exists"),
        "a missing key does not exist"
    );
    let asked: Vec<(String, bool)> = (0..300u64)
        .map(|number| (keys.chunk_in(0xe0, number), number % 3 == 0))
        .collect();
    let puts = asked
        .iter()
        .filter(|(_, stored)| *stored)
        .map(|(key, _)| backend.put_if_absent(key, content(100, 0), Durability::Deferred));
    for result in futures::future::join_all(puts).await {
        ok(result, "put");
    }
    assert!(
        ok(backend.exists(&asked[0].0).await, "exists"),
        "a stored key exists"
    );
    let answers = futures::future::join_all(asked.iter().map(|(key, _)| backend.exists(key))).await;
    for ((key, stored), answer) in asked.iter().zip(answers) {
        assert_eq!(
            ok(answer, "exists"),
            *stored,
            "concurrent existence of {key}"
        );
    }
}

/// A deleted object is gone from reads, existence and listings; deleting a missing
/// object succeeds.
async fn delete(backend: &Backend, keys: &Keys) {
    announce("delete");
    let (doomed, kept) = (keys.chunk_in(0xde, 1), keys.chunk_in(0xde, 2));
    for key in [&doomed, &kept] {
        ok(
            backend
                .put_if_absent(key, content(500, 5), Durability::Immediate)
                .await,
            "put",
        );
    }
    ok(backend.delete(&doomed).await, "delete");
    assert!(
        matches!(
            backend.get(&doomed, 1 << 20).await,
            Err(RepoError::NotFound(_))
        ),
        "a deleted object reads as NotFound"
    );
    assert!(
        !ok(backend.exists(&doomed).await, "exists"),
        "a deleted object does not exist"
    );
    assert_eq!(
        ok(backend.list("chunks/de").await, "list"),
        std::slice::from_ref(&kept),
        "nor is it listed"
    );
    read(backend, &kept).await;
    ok(
        backend.delete(&doomed).await,
        "deleting a missing object succeeds",
    );
    ok(
        backend.delete(&keys.chunk_in(0xde, 3)).await,
        "deleting a never written object succeeds",
    );
}
