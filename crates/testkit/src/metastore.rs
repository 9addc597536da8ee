//! The conformance suite of `MetaStore`, the coordinator's metadata store.
//!
//! The fencing argument (ARCHITECTURE.md, "Fencing: why a cut-off worker cannot
//! commit") holds on a store only if it behaves as etcd does where the leader and the
//! replicas rely on it. [`run_suite`] checks those behaviours through the trait alone:
//!
//! - reads: `get` of a missing key is `None`; a put is read back with its value, no
//!   lease and the transaction's revision; `list` returns exactly the keys under a
//!   prefix, in byte order; `range` returns the first keys of `[start, end)` up to its
//!   limit, in byte order ([`keys`]);
//! - transactions: every key a transaction writes gets the transaction's revision,
//!   and revisions only grow (an ownership token is never issued twice); `Absent`
//!   holds exactly while a key is missing; `ModRevision` holds exactly at the key's
//!   last revision and never for a missing key; a transaction is all or nothing; of
//!   concurrent creates of one key exactly one wins (election); the largest
//!   transactions the leader builds are accepted ([`transactions`]);
//! - leases: a key put under a lease carries it and vanishes when the lease is
//!   revoked or expires, while keep-alives hold it; a put moves a key to the lease it
//!   names (a worker registering again); a put under a lease that is gone fails as a
//!   whole; keep-alive of a lease that is gone is `LeaseNotFound` ([`leases`]);
//! - the fencing scenario itself, end to end, and the request counters.
//!
//! Every key the suite writes is below a prefix unique to the run, so it can run on a
//! store that holds other data. The trait has no watch, so nothing here checks one.
//! Left unspecified, because nothing relies on them: whether a transaction that
//! changes nothing (a delete of a missing key) advances the store's revision, and the
//! revision a failed transaction reports beyond "not before the last write".

mod fencing;
mod keys;
mod leases;
mod transactions;

use haven_coordinator::store::{Compare, KeyValue, MetaStore, Op, Revision, StoreError};

/// Runs every check of the suite against `store`; panics at the first violation,
/// naming it. Takes a few seconds: one check waits for a lease to expire.
pub async fn run_suite(store: &dyn MetaStore) {
    run_suite_below(store, "/haven-conformance/").await;
}

/// [`run_suite`] with every key below `root` (ending in `/`): for a store whose
/// credentials cover only Haven's own prefix (a secured etcd).
pub async fn run_suite_below(store: &dyn MetaStore, root: &str) {
    let space = KeySpace::below(root);
    keys::run(store, &space).await;
    transactions::run(store, &space).await;
    leases::run(store, &space).await;
    fencing::ownership_tokens(store, &space.sub("fencing")).await;
    leases::keep_alive_then_expiry(store, &space.sub("expiry")).await;
    counts_requests(store, &space.sub("stats")).await;
}

/// The request counters grow with reads, writes and lease calls (`/metrics` and the
/// scale benchmark read them).
async fn counts_requests(store: &dyn MetaStore, space: &KeySpace) {
    announce("stats count requests");
    let before = store.stats();
    let _ = ok(store.get(&space.key("a")).await, "get");
    put(store, &space.key("a"), b"1").await;
    let lease = ok(
        store.grant_lease(std::time::Duration::from_secs(60)).await,
        "grant",
    );
    ok(store.revoke(lease).await, "revoke");
    let after = store.stats();
    assert!(after.reads > before.reads, "a get is counted as a read");
    assert!(
        after.writes > before.writes,
        "a transaction is counted as a write"
    );
    assert!(
        after.lease_calls >= before.lease_calls + 2,
        "grant and revoke are counted as lease calls"
    );
}

/// A prefix of keys no other run of the suite uses.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
}

impl KeySpace {
    fn below(root: &str) -> Self {
        Self {
            prefix: format!("{root}{}/", unique_id()),
        }
    }

    /// The space of one check.
    pub(crate) fn sub(&self, name: &str) -> Self {
        Self {
            prefix: format!("{}{name}/", self.prefix),
        }
    }

    /// The key `name` of this space.
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The prefix of every key of this space.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Process id and clock: distinct across processes and runs.
fn unique_id() -> String {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{run}", std::process::id())
}

/// Prints the check about to run: the test harness shows it when the test fails.
pub(crate) fn announce(check: &str) {
    eprintln!("metastore conformance: {check}");
}

/// The value of a store call that must succeed.
pub(crate) fn ok<T>(result: Result<T, StoreError>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: the store failed: {error}"))
}

/// Puts `key` without compares or lease; returns the transaction's revision.
pub(crate) async fn put(store: &dyn MetaStore, key: &str, value: &[u8]) -> Revision {
    let outcome = ok(
        store.txn(vec![], vec![Op::put(key, value)]).await,
        &format!("put {key}"),
    );
    assert!(
        outcome.succeeded,
        "a put without compares must succeed ({key})"
    );
    outcome.revision
}

/// Reads `key`, which must exist.
pub(crate) async fn get_existing(store: &dyn MetaStore, key: &str) -> KeyValue {
    ok(store.get(key).await, &format!("get {key}")).unwrap_or_else(|| panic!("{key} must exist"))
}

/// Asserts that `key` does not exist; `what` says why it must not.
pub(crate) async fn assert_missing(store: &dyn MetaStore, key: &str, what: &str) {
    let found = ok(store.get(key).await, &format!("get {key}"));
    assert!(
        found.is_none(),
        "{what}: {key} must not exist, found {found:?}"
    );
}

/// Whether a transaction of `compares` and `ops` succeeded; the revision it reports.
pub(crate) async fn try_txn(
    store: &dyn MetaStore,
    compares: Vec<Compare>,
    ops: Vec<Op>,
) -> (bool, Revision) {
    let outcome = ok(store.txn(compares, ops).await, "transaction");
    (outcome.succeeded, outcome.revision)
}
