//! Transactions: revisions, the two compares, atomicity, races and size.

use haven_coordinator::store::{Compare, MetaStore, Op};

use super::{KeySpace, announce, assert_missing, get_existing, ok, put, try_txn};

/// Operations in the leader's largest write (`OPS_PER_TXN` in `leader.rs`).
const LEADER_OPS_PER_TXN: usize = 100;

/// Every check of this module, each in its own part of `space`.
pub(crate) async fn run(store: &dyn MetaStore, space: &KeySpace) {
    revisions(store, &space.sub("revisions")).await;
    compare_absent(store, &space.sub("absent")).await;
    compare_mod_revision(store, &space.sub("mod-revision")).await;
    all_or_nothing(store, &space.sub("all-or-nothing")).await;
    races_and_sizes(store, space).await;
}

/// The checks of concurrency and size.
async fn races_and_sizes(store: &dyn MetaStore, space: &KeySpace) {
    concurrent_creates(store, &space.sub("concurrent")).await;
    largest_transactions(store, &space.sub("large")).await;
}

/// Every key one transaction writes carries its revision, and revisions only grow:
/// a token handed out once is never handed out again. A failed transaction writes
/// nothing and reports a revision not before the last write.
async fn revisions(store: &dyn MetaStore, space: &KeySpace) {
    announce("revisions");
    let keys: Vec<String> = ["a", "b", "c"].iter().map(|name| space.key(name)).collect();
    let ops = keys.iter().map(|key| Op::put(key.clone(), "v1")).collect();
    let (written, first) = try_txn(store, vec![], ops).await;
    assert!(written, "a transaction without compares succeeds");
    for key in &keys {
        assert_eq!(
            get_existing(store, key).await.mod_revision,
            first,
            "every key of one transaction has that transaction's revision"
        );
    }
    let second = put(store, &keys[0], b"v2").await;
    assert!(
        second > first,
        "each write transaction has a later revision"
    );
    let (refused, reported) = try_txn(
        store,
        vec![Compare::Absent(keys[1].clone())],
        vec![Op::put(keys[1].clone(), "v3")],
    )
    .await;
    assert!(!refused, "Absent of an existing key fails");
    assert!(
        reported >= second,
        "a failed transaction reports the store's revision, not an older one"
    );
    let untouched = get_existing(store, &keys[1]).await;
    assert_eq!(
        (untouched.value.as_slice(), untouched.mod_revision),
        (b"v1".as_slice(), first),
        "a failed transaction writes nothing"
    );
    let third = put(store, &keys[1], b"v4").await;
    assert!(
        third > second,
        "revisions keep growing after a failed transaction"
    );
}

/// `Absent` holds while the key is missing, fails once it exists, and holds again
/// after a delete; the re-created key has a later revision than before.
async fn compare_absent(store: &dyn MetaStore, space: &KeySpace) {
    announce("compare Absent");
    let key = space.key("owner");
    let create = |value: &'static str| {
        (
            vec![Compare::Absent(key.clone())],
            vec![Op::put(key.clone(), value)],
        )
    };
    let (compares, ops) = create("first");
    let (created, first) = try_txn(store, compares, ops).await;
    assert!(created, "Absent holds for a key never written");
    let (compares, ops) = create("second");
    let (again, _) = try_txn(store, compares, ops).await;
    assert!(!again, "Absent fails for an existing key: create-only");
    assert_eq!(
        get_existing(store, &key).await.value,
        b"first",
        "a refused create leaves the first value"
    );
    try_txn(store, vec![], vec![Op::Delete(key.clone())]).await;
    let (compares, ops) = create("third");
    let (recreated, later) = try_txn(store, compares, ops).await;
    assert!(recreated, "Absent holds again after a delete");
    assert!(later > first, "a re-created key has a later revision");
}

/// `ModRevision` holds exactly at the key's last revision: not at an older one (a
/// stale token), not at a later one, and never for a missing key, whatever the
/// revision given, 0 included.
async fn compare_mod_revision(store: &dyn MetaStore, space: &KeySpace) {
    announce("compare ModRevision");
    let key = space.key("job");
    let guarded = |revision, value: &'static str| {
        (
            vec![Compare::ModRevision(key.clone(), revision)],
            vec![Op::put(key.clone(), value)],
        )
    };
    let first = put(store, &key, b"1").await;
    let (compares, ops) = guarded(first, "2");
    let (held, second) = try_txn(store, compares, ops).await;
    assert!(held, "ModRevision holds at the key's mod_revision");
    let (compares, ops) = guarded(first, "stale");
    assert!(
        !try_txn(store, compares, ops).await.0,
        "ModRevision fails at an older revision (a stale token)"
    );
    let (compares, ops) = guarded(second + 1000, "future");
    assert!(
        !try_txn(store, compares, ops).await.0,
        "ModRevision fails at a later revision"
    );
    assert_eq!(
        get_existing(store, &key).await.value,
        b"2",
        "refused writes wrote nothing"
    );

    let missing = space.key("missing");
    for revision in [0, 1, second] {
        let (held, _) = try_txn(
            store,
            vec![Compare::ModRevision(missing.clone(), revision)],
            vec![Op::put(missing.clone(), "created")],
        )
        .await;
        assert!(
            !held,
            "ModRevision({revision}) must fail for a missing key: it means the key \
             exists and was last written at that revision"
        );
    }
    assert_missing(store, &missing, "a refused write wrote nothing").await;

    try_txn(store, vec![], vec![Op::Delete(key.clone())]).await;
    let recreated = put(store, &key, b"again").await;
    assert!(recreated > second, "a re-created key has a later revision");
    let (compares, ops) = guarded(second, "old token");
    assert!(
        !try_txn(store, compares, ops).await.0,
        "the revision of a deleted key never matches its re-created successor"
    );
}

/// A transaction with one failing compare applies none of its writes; when every
/// compare holds, all its puts and deletes apply at one revision.
async fn all_or_nothing(store: &dyn MetaStore, space: &KeySpace) {
    announce("transactions are all or nothing");
    let (a, b, c) = (space.key("a"), space.key("b"), space.key("c"));
    let revision_a = put(store, &a, b"a0").await;
    let revision_b = put(store, &b, b"b0").await;
    let ops = || {
        vec![
            Op::put(a.clone(), "a1"),
            Op::Delete(b.clone()),
            Op::put(c.clone(), "c1"),
        ]
    };
    let (applied, _) = try_txn(
        store,
        vec![
            Compare::ModRevision(a.clone(), revision_a),
            Compare::Absent(b.clone()),
        ],
        ops(),
    )
    .await;
    assert!(!applied, "one failing compare fails the transaction");
    assert_eq!(get_existing(store, &a).await.value, b"a0", "no put applied");
    assert_eq!(
        get_existing(store, &b).await.value,
        b"b0",
        "no delete applied"
    );
    assert_missing(store, &c, "no create applied").await;

    let (applied, revision) = try_txn(
        store,
        vec![
            Compare::ModRevision(a.clone(), revision_a),
            Compare::ModRevision(b.clone(), revision_b),
        ],
        ops(),
    )
    .await;
    assert!(applied, "the transaction succeeds when every compare holds");
    let stored_a = get_existing(store, &a).await;
    assert_eq!(
        (stored_a.value.as_slice(), stored_a.mod_revision),
        (b"a1".as_slice(), revision)
    );
    assert_missing(store, &b, "the delete applied").await;
    assert_eq!(get_existing(store, &c).await.mod_revision, revision);

    let (no_writes, _) = try_txn(store, vec![Compare::Absent(b.clone())], vec![]).await;
    assert!(
        no_writes,
        "a transaction of compares alone reports whether they hold"
    );
}

/// Of concurrent creates of one key (`Absent` guard), exactly one wins and its value
/// is stored: two replicas never both lead, two assignments never both own a job.
async fn concurrent_creates(store: &dyn MetaStore, space: &KeySpace) {
    announce("concurrent creates");
    let key = space.key("leader");
    let attempts = (0..8).map(|replica| {
        let key = key.clone();
        async move {
            let value = format!("replica-{replica}");
            let outcome = store
                .txn(
                    vec![Compare::Absent(key.clone())],
                    vec![Op::put(key, value.clone())],
                )
                .await;
            (ok(outcome, "concurrent create").succeeded, value)
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(won, _)| *won)
        .map(|(_, value)| value)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent create wins: {winners:?}"
    );
    assert_eq!(
        get_existing(store, &key).await.value,
        winners[0].as_bytes(),
        "the winner's value is stored"
    );
}

/// The largest transactions the leader builds are accepted: a batch of
/// [`LEADER_OPS_PER_TXN`] puts, and an assignment of half as many ownership keys
/// each guarded by `Absent`, plus the leadership compare.
async fn largest_transactions(store: &dyn MetaStore, space: &KeySpace) {
    announce("the leader's largest transactions");
    let ops = (0..LEADER_OPS_PER_TXN)
        .map(|index| Op::put(space.key(&format!("jobs/{index:03}")), "{}"))
        .collect();
    let (written, _) = try_txn(store, vec![], ops).await;
    assert!(written, "{LEADER_OPS_PER_TXN} puts in one transaction");
    let listed = ok(store.list(&space.key("jobs/")).await, "list");
    assert_eq!(
        listed.len(),
        LEADER_OPS_PER_TXN,
        "every put of the batch is stored"
    );

    let leader = space.key("leader");
    let leader_revision = put(store, &leader, b"me").await;
    let owners: Vec<String> = (0..LEADER_OPS_PER_TXN / 2)
        .map(|index| space.key(&format!("owners/{index:03}")))
        .collect();
    let mut compares: Vec<Compare> = owners.iter().cloned().map(Compare::Absent).collect();
    compares.push(Compare::ModRevision(leader, leader_revision));
    let ops = owners
        .iter()
        .map(|key| Op::put(key.clone(), "worker"))
        .collect();
    let (assigned, token) = try_txn(store, compares, ops).await;
    assert!(assigned, "an assignment batch with one compare per key");
    for kv in ok(store.list(&space.key("owners/")).await, "list") {
        assert_eq!(
            kv.mod_revision, token,
            "every ownership key carries the token"
        );
    }
}
