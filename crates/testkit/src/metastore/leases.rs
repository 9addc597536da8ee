//! Leases: the keys bound to them, revoke, keep-alive and expiry.

use std::time::{Duration, Instant};

use haven_coordinator::store::{Compare, LeaseId, MetaStore, Op, StoreError};

use super::{KeySpace, announce, assert_missing, get_existing, ok, put, try_txn};

/// A lease that outlives any check (so only revoke ends it).
const LONG_TTL: Duration = Duration::from_secs(60);
/// The shortest lease etcd keeps as asked: with its default timing it grants at least
/// 2 s (1.5 election timeouts, rounded up to whole seconds).
const SHORT_TTL: Duration = Duration::from_secs(2);
/// How long after its TTL an expired lease may still hold its keys (etcd checks
/// expiry every 500 ms and revokes through consensus; the embedded store every 250 ms).
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

async fn grant(store: &dyn MetaStore, ttl: Duration) -> LeaseId {
    ok(store.grant_lease(ttl).await, "grant a lease")
}

async fn put_leased(store: &dyn MetaStore, key: &str, value: &[u8], lease: LeaseId) -> i64 {
    let (written, revision) = try_txn(store, vec![], vec![Op::put_leased(key, value, lease)]).await;
    assert!(written, "a put under a live lease succeeds ({key})");
    revision
}

fn assert_lease_not_found(result: Result<(), StoreError>, lease: LeaseId, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LeaseNotFound(id)) if id == lease),
        "{what}: keep-alive of lease {lease} must be LeaseNotFound, was {result:?}"
    );
}

/// The checks of this module that need no waiting, each in its own part of `space`.
pub(crate) async fn run(store: &dyn MetaStore, space: &KeySpace) {
    revoke_deletes_keys(store, &space.sub("revoke")).await;
    put_moves_key_between_leases(store, &space.sub("rebind")).await;
    put_under_dead_lease_fails(store, &space.sub("dead-lease")).await;
}

/// A key put under a lease carries the lease id; revoking the lease deletes it (and
/// only it); keep-alive is then `LeaseNotFound`, and a second revoke succeeds.
async fn revoke_deletes_keys(store: &dyn MetaStore, space: &KeySpace) {
    announce("revoke deletes the lease's keys");
    let lease = grant(store, LONG_TTL).await;
    let (owned, free) = (space.key("owned"), space.key("free"));
    let revision = put_leased(store, &owned, b"worker", lease).await;
    put(store, &free, b"kept").await;
    let stored = get_existing(store, &owned).await;
    assert_eq!(
        (stored.lease, stored.mod_revision),
        (lease, revision),
        "the key carries its lease"
    );
    ok(store.keep_alive(lease).await, "keep-alive of a live lease");

    ok(store.revoke(lease).await, "revoke");
    assert_missing(store, &owned, "revoke deletes the lease's keys").await;
    get_existing(store, &free).await;
    assert_lease_not_found(store.keep_alive(lease).await, lease, "after revoke");
    ok(
        store.revoke(lease).await,
        "a second revoke of the same lease succeeds",
    );
}

/// A put moves a key to the lease it names (lease 0: none), so revoking the old lease
/// keeps it: a worker that registers again under a new lease keeps its key when the
/// leader revokes the old one.
async fn put_moves_key_between_leases(store: &dyn MetaStore, space: &KeySpace) {
    announce("a put moves a key between leases");
    let (old, new) = (grant(store, LONG_TTL).await, grant(store, LONG_TTL).await);
    let (worker, detached) = (space.key("worker"), space.key("detached"));
    put_leased(store, &worker, b"first", old).await;
    put_leased(store, &detached, b"first", old).await;
    put_leased(store, &worker, b"again", new).await;
    put(store, &detached, b"no lease").await;
    assert_eq!(
        get_existing(store, &worker).await.lease,
        new,
        "the key moved to the new lease"
    );
    assert_eq!(
        get_existing(store, &detached).await.lease,
        0,
        "a put without lease detaches"
    );

    ok(store.revoke(old).await, "revoke the old lease");
    assert_eq!(
        get_existing(store, &worker).await.value,
        b"again",
        "kept under the new lease"
    );
    get_existing(store, &detached).await;
    ok(store.revoke(new).await, "revoke the new lease");
    assert_missing(store, &worker, "gone with the new lease").await;
}

/// A transaction that puts a key under a lease that is gone fails as a whole: neither
/// that key nor the transaction's other writes are stored.
async fn put_under_dead_lease_fails(store: &dyn MetaStore, space: &KeySpace) {
    announce("a put under a revoked lease fails");
    let lease = grant(store, LONG_TTL).await;
    ok(store.revoke(lease).await, "revoke");
    let (orphan, other) = (space.key("orphan"), space.key("other"));
    let result = store
        .txn(
            vec![Compare::Absent(orphan.clone())],
            vec![
                Op::put(other.clone(), "x"),
                Op::put_leased(orphan.clone(), "y", lease),
            ],
        )
        .await;
    assert!(
        result.is_err(),
        "a put under revoked lease {lease} must be an error, was {result:?}"
    );
    assert_missing(store, &orphan, "the leased key is not stored").await;
    assert_missing(store, &other, "nor any other write of it").await;
}

/// Keep-alives every quarter of the TTL hold a lease (and its key) past its TTL; once
/// they stop, the lease expires and deletes its key within [`EXPIRY_SLACK`] while
/// keys without lease stay; keep-alive is then `LeaseNotFound`.
pub(crate) async fn keep_alive_then_expiry(store: &dyn MetaStore, space: &KeySpace) {
    announce("keep-alive holds a lease, expiry deletes its keys");
    let lease = grant(store, SHORT_TTL).await;
    let (owned, free) = (space.key("owned"), space.key("free"));
    put_leased(store, &owned, b"worker", lease).await;
    put(store, &free, b"kept").await;
    let renewals = 6;
    for _ in 0..renewals {
        tokio::time::sleep(SHORT_TTL / 4).await;
        ok(store.keep_alive(lease).await, "keep-alive of a live lease");
    }
    get_existing(store, &owned).await;

    let stopped = Instant::now();
    let deadline = stopped + SHORT_TTL + EXPIRY_SLACK;
    while ok(store.get(&owned).await, "get").is_some() {
        assert!(
            Instant::now() < deadline,
            "a lease of {SHORT_TTL:?} without keep-alive still held its key after {:?}",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        stopped.elapsed() + Duration::from_millis(500) >= SHORT_TTL / 2,
        "the key vanished {:?} after the last keep-alive: the lease did not run its TTL",
        stopped.elapsed()
    );
    assert_lease_not_found(store.keep_alive(lease).await, lease, "after expiry");
    let listed = ok(store.list(space.prefix()).await, "list");
    let names: Vec<&str> = listed.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(names, [free.as_str()], "only the key without lease is left");
}
