//! The coordinator's compaction of etcd's history (`MetaStore::compact_history`) on an
//! etcd that lets it compact, and the embedded store, which keeps no history. (A
//! secured etcd keeps compaction to root and compacts itself:
//! `cli/tests/it/cluster/secured_etcd.rs`.)

use haven_coordinator::config::EtcdSecurity;
use haven_coordinator::store::embedded::EmbeddedStore;
use haven_coordinator::store::etcd::EtcdStore;
use haven_coordinator::store::{MetaStore, Op};
use haven_testkit::etcd::Etcd;

/// Revisions the test keeps.
const KEEP: u64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_newest_revisions_only() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd start-up task")
        .expect("start etcd");
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdSecurity::default())
        .await
        .expect("connect to etcd");
    let mut revision = 0;
    for generation in 0..3 * KEEP {
        revision = store
            .txn(vec![], vec![Op::put("/haven/job", generation.to_string())])
            .await
            .expect("write a generation")
            .revision;
    }
    let compacted = store.compact_history(KEEP).await.expect("compact");
    assert_eq!(compacted, Some(revision - KEEP as i64));
    // Nothing newer was written: the same compaction again is refused by etcd as
    // already done, which is not an error.
    assert_eq!(
        store.compact_history(KEEP).await.expect("compact again"),
        None
    );
    assert_eq!(
        store
            .get("/haven/job")
            .await
            .expect("read")
            .map(|kv| kv.value),
        Some((3 * KEEP - 1).to_string().into_bytes()),
        "the current value survives compaction"
    );
    // A store younger than what it keeps has nothing to compact.
    let young = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd start-up task")
        .expect("start etcd");
    let young = EtcdStore::connect(&young.endpoints(), &EtcdSecurity::default())
        .await
        .expect("connect to etcd");
    assert_eq!(young.compact_history(KEEP).await.expect("compact"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_has_no_history_to_compact() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("state.redb"))
        .await
        .expect("open the embedded store");
    for generation in 0..3 * KEEP {
        store
            .txn(vec![], vec![Op::put("/haven/job", generation.to_string())])
            .await
            .expect("write a generation");
    }
    assert_eq!(store.compact_history(KEEP).await.expect("compact"), None);
}
