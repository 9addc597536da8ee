//! Every implementation of Haven's two seams against its conformance suite: one test
//! per implementation, so a failure names it.

use std::path::Path;

use haven_coordinator::store::embedded::EmbeddedStore;
use haven_repo::{Backend, LocalIo};
use haven_testkit::backend;
use haven_testkit::ceph::Ceph;
use haven_testkit::etcd::{Etcd, HAVEN_PREFIX};
use haven_testkit::local::LocalRepository;
use haven_testkit::metastore;
use haven_testkit::s3_account::S3Account;
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
    let etcd = Etcd::start_in_test(1, false).await;
    let store = etcd.store().await;
    metastore::run_suite(&store).await;
}

/// etcd as production runs it: TLS with a client certificate, and a user whose role
/// covers only Haven's prefix, so the suite's keys live below that prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metastore_etcd_secured() {
    let etcd = Etcd::start_in_test(1, true).await;
    let store = etcd.store().await;
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

/// Ceph RGW (Debian's radosgw 16.2 on a one-host cluster): the suite through Haven's
/// S3 client, which asks RGW for the node's batch extensions first and falls back to
/// plain S3. Then the fixture's own promise: dropping it stops every daemon and
/// removes the cluster's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_ceph_rgw() {
    let ceph = tokio::task::spawn_blocking(Ceph::start)
        .await
        .expect("ceph start-up task")
        .expect("start a ceph cluster with RGW");
    eprintln!("ceph cluster and RGW started in {:?}", ceph.started_in());
    ceph.create_bucket("conformance").expect("create a bucket");
    let backend = ceph
        .backend("conformance", "repository")
        .expect("open the backend");
    backend::run_suite(&backend).await;

    let (pids, dir) = (ceph.pids(), ceph.dir().to_path_buf());
    assert_eq!(pids.len(), 3, "monitor, OSD and gateway run");
    drop(ceph);
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} of the cluster still runs"
        );
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

/// Three storage nodes of one site, each object on two of them: the repository sees
/// one backend that behaves exactly as a single node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_three_storage_nodes_with_two_replicas() {
    let nodes = [
        start_storage_node().await,
        start_storage_node().await,
        start_storage_node().await,
    ];
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|node| format!("endpoint={}", node.endpoint()))
        .collect();
    let url = format!(
        "s3://{}/repository?{}&region=us-east-1&replicas=2",
        haven_testkit::storage_node::BUCKET,
        endpoints.join("&")
    );
    let options = haven_repo::OpenOptions {
        credentials: Some(nodes[0].credentials()),
        ..haven_repo::OpenOptions::default()
    };
    let backend = Backend::open(&url, &options).expect("open the site");
    assert_eq!(backend.kind(), haven_repo::BackendKind::Placed);
    backend::run_suite(&backend).await;
}
