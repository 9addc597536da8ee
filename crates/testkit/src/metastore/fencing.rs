//! The fencing argument as one scenario, with the leader's own compares.

use std::time::Duration;

use haven_coordinator::store::{Compare, MetaStore, Op, Revision};

use super::{KeySpace, announce, get_existing, ok, try_txn};

/// The leader's commit: the ownership key still at `token` and the leader key still
/// at `leader_revision`.
async fn commit(
    store: &dyn MetaStore,
    space: &KeySpace,
    token: Revision,
    leader_revision: Revision,
) -> bool {
    try_txn(
        store,
        vec![
            Compare::ModRevision(space.key("owner"), token),
            Compare::ModRevision(space.key("leader"), leader_revision),
        ],
        vec![Op::put(space.key("job"), format!("committed {token}"))],
    )
    .await
    .0
}

/// Assigns the job to a worker under `lease`: creates the ownership key (guarded by
/// `Absent` and the leadership compare); returns the token.
async fn assign(
    store: &dyn MetaStore,
    space: &KeySpace,
    lease: i64,
    leader_revision: Revision,
) -> Revision {
    let (assigned, token) = try_txn(
        store,
        vec![
            Compare::Absent(space.key("owner")),
            Compare::ModRevision(space.key("leader"), leader_revision),
        ],
        vec![Op::put_leased(space.key("owner"), "worker", lease)],
    )
    .await;
    assert!(assigned, "assignment of a job without owner succeeds");
    assert_eq!(
        get_existing(store, &space.key("owner")).await.mod_revision,
        token,
        "the token is the ownership key's mod_revision"
    );
    token
}

/// A replica campaigns: creates the leader key under a new lease if it is absent.
/// Returns the lease and, when it won, the leader key's revision.
async fn campaign(
    store: &dyn MetaStore,
    space: &KeySpace,
    replica: &str,
) -> (i64, Option<Revision>) {
    let lease = ok(store.grant_lease(Duration::from_secs(60)).await, "grant");
    let (elected, revision) = try_txn(
        store,
        vec![Compare::Absent(space.key("leader"))],
        vec![Op::put_leased(space.key("leader"), replica, lease)],
    )
    .await;
    (lease, elected.then_some(revision))
}

/// A worker whose lease ended cannot commit with its token, even after the job was
/// assigned again; the new owner can; a deposed leader cannot write at all.
pub(crate) async fn ownership_tokens(store: &dyn MetaStore, space: &KeySpace) {
    announce("fencing: ownership tokens and leadership");
    let ttl = Duration::from_secs(60);
    let (leader_lease, elected) = campaign(store, space, "replica-a").await;
    let leader_revision = elected.unwrap_or_else(|| panic!("the first campaign wins"));

    let first_worker = ok(store.grant_lease(ttl).await, "grant");
    let first_token = assign(store, space, first_worker, leader_revision).await;
    ok(
        store.revoke(first_worker).await,
        "the first worker's lease ends",
    );
    assert!(
        !commit(store, space, first_token, leader_revision).await,
        "a commit whose ownership key vanished with its lease is refused"
    );
    let second_worker = ok(store.grant_lease(ttl).await, "grant");
    let second_token = assign(store, space, second_worker, leader_revision).await;
    assert!(
        second_token > first_token,
        "a new assignment has a new, later token"
    );
    assert!(
        !commit(store, space, first_token, leader_revision).await,
        "the old token never matches the job's new ownership"
    );
    assert!(
        commit(store, space, second_token, leader_revision).await,
        "the current owner commits"
    );

    ok(store.revoke(leader_lease).await, "the leader's lease ends");
    let (next_leader, elected) = campaign(store, space, "replica-b").await;
    assert!(
        elected.is_some(),
        "another replica wins once the leader key is gone"
    );
    assert!(
        !commit(store, space, second_token, leader_revision).await,
        "a deposed leader's transactions fail on the leadership compare"
    );
    ok(store.revoke(second_worker).await, "revoke");
    ok(store.revoke(next_leader).await, "revoke");
}
