//! Every implementation of Haven's two seams against its conformance suite: one test
//! per implementation, so a failure names it.

use std::path::Path;

use haven_coordinator::config::EtcdSecurity;
use haven_coordinator::store::embedded::EmbeddedStore;
use haven_coordinator::store::etcd::EtcdStore;
use haven_repo::{Backend, LocalIo};
use haven_testkit::backend;
use haven_testkit::etcd::{Etcd, HAVEN_PREFIX};
use haven_testkit::local::LocalRepository;
use haven_testkit::metastore;
use haven_testkit::storage_node::StorageNode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metastore_embedded() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("state.redb"))
        .await
        .expect("open the embedded store");
    metastore::run_suite(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metastore_etcd() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start(1))
        .await
        .expect("etcd start-up task")
        .expect("start etcd");
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdSecurity::default())
        .await
        .expect("connect to etcd");
    metastore::run_suite(&store).await;
}

/// etcd as production runs it: TLS with a client certificate, and a user whose role
/// covers only Haven's prefix, so the suite's keys live below that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metastore_etcd_secured() {
    let etcd = tokio::task::spawn_blocking(|| Etcd::start_secured(1))
        .await
        .expect("etcd start-up task")
        .expect("start a secured etcd");
    let security = etcd.credentials().expect("secured").haven_security();
    let store = EtcdStore::connect(&etcd.endpoints(), &security)
        .await
        .expect("connect to the secured etcd");
    metastore::run_suite_below(&store, &format!("{HAVEN_PREFIX}conformance/")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_memory() {
    backend::run_suite(&Backend::memory()).await;
}

/// A repository below the build directory: on the build disk, which takes `O_DIRECT`.
fn local_repository(io: LocalIo) -> LocalRepository {
    LocalRepository::create(Path::new(env!("CARGO_TARGET_TMPDIR")), io)
        .expect("create a file:// repository")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_file_direct() {
    let repository = local_repository(LocalIo::Direct);
    backend::run_suite(&repository.backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_file_buffered() {
    let repository = local_repository(LocalIo::Buffered);
    backend::run_suite(&repository.backend).await;
}

async fn start_storage_node() -> StorageNode {
    tokio::task::spawn_blocking(StorageNode::start)
        .await
        .expect("storage node start-up task")
        .expect("start a storage node")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_storage_node_with_extensions() {
    let node = start_storage_node().await;
    let backend = node.backend("repository").expect("open the backend");
    backend::run_suite(&backend).await;
    let queries = node.requests("HavenExists").expect("node metrics");
    assert!(
        queries > 0,
        "the existence checks went through the batch query"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_storage_node_as_plain_s3() {
    let node = start_storage_node().await;
    let backend = node
        .plain_s3_backend("repository")
        .expect("open the backend");
    backend::run_suite(&backend).await;
    let queries = node.requests("HavenExists").expect("node metrics");
    assert_eq!(queries, 0, "a plain S3 client sends no extension request");
    let heads = node.requests("HeadObject").expect("node metrics");
    assert!(heads > 0, "existence was asked with HEAD");
}
