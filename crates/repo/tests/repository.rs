//! The repository API end to end on the in-memory backend: the pure logic of the format
//! without any process or disk.

use std::sync::Arc;

use haven_repo::{
    Backend, ChunkId, Consistency, DiskEntry, DiskStats, FixedIndex, Manifest, Progress, RepoError,
    Repository, SnapshotId, SnapshotRef, SourceInfo, VerifyOptions, verify_snapshots,
};

fn manifest_for(id: &SnapshotId, disk: DiskEntry) -> Manifest {
    Manifest {
        version: 1,
        vm: id.vm.clone(),
        timestamp: id.timestamp.clone(),
        created_by: "test".into(),
        source: SourceInfo {
            kind: "image".into(),
            origin: "memory".into(),
        },
        consistency: Consistency::Offline,
        consistency_reason: None,
        parent: None,
        disks: vec![disk],
        vm_config: None,
        labels: Default::default(),
    }
}

#[tokio::test]
async fn init_open_commit_list_verify() {
    let backend = Backend::memory();
    let repo = Arc::new(
        Repository::init(backend.clone(), b"pw", 64 * 1024)
            .await
            .unwrap(),
    );
    assert!(matches!(
        Repository::init(backend.clone(), b"pw", 64 * 1024).await,
        Err(RepoError::AlreadyInitialized(_))
    ));
    assert!(matches!(
        Repository::open(backend.clone(), b"nope").await,
        Err(RepoError::WrongPassword)
    ));

    let data = vec![42u8; 64 * 1024];
    let id = repo.chunk_id(&data);
    assert!(!repo.chunk_exists(&id).await.unwrap());
    let sealed = repo.seal_chunk(&id, &data).unwrap();
    repo.put_chunk(&id, sealed.clone()).await.unwrap();
    assert!(repo.chunk_exists(&id).await.unwrap());
    assert_eq!(
        repo.put_chunk(&id, sealed).await.unwrap(),
        haven_repo::PutOutcome::AlreadyExisted
    );

    let mut index = FixedIndex::new_zeroed(3 * 64 * 1024, 64 * 1024);
    index.set(0, id);
    index.set(2, id);
    let snapshot = SnapshotId::new("vm1", "2026-11-25T10:00:00Z").unwrap();
    let (key, digest) = repo.write_index(&snapshot, "vda", &index).await.unwrap();
    let disk = DiskEntry {
        name: "vda".into(),
        size: index.disk_size(),
        chunk_size: index.chunk_size(),
        index: key,
        index_digest: digest,
        stats: DiskStats::default(),
        chain: Default::default(),
    };
    let manifest = manifest_for(&snapshot, disk.clone());
    repo.commit_manifest(&manifest).await.unwrap();
    // The same manifest again (a duplicated delivery, a retry after a lost reply) is
    // the same commit; another manifest under the same name is refused.
    assert_eq!(repo.commit_manifest(&manifest).await.unwrap(), snapshot);
    let mut other = manifest.clone();
    other.created_by = "another backup".into();
    assert!(matches!(
        repo.commit_manifest(&other).await,
        Err(RepoError::AlreadyExists(_))
    ));

    let reopened = Arc::new(Repository::open(backend, b"pw").await.unwrap());
    assert_eq!(
        reopened.list_snapshots(None).await.unwrap(),
        vec![snapshot.clone()]
    );
    let latest: SnapshotRef = "vm1@latest".parse().unwrap();
    assert_eq!(reopened.resolve(&latest).await.unwrap(), snapshot);
    assert_eq!(reopened.read_manifest(&snapshot).await.unwrap(), manifest);
    assert_eq!(reopened.read_index(&disk).await.unwrap(), index);
    assert_eq!(
        reopened.read_chunk(id, Some(64 * 1024)).await.unwrap(),
        data
    );
    assert!(reopened.read_chunk(id, Some(100)).await.is_err());

    let report = verify_snapshots(
        reopened.clone(),
        std::slice::from_ref(&snapshot),
        &VerifyOptions::default(),
        &Progress::new(),
    )
    .await
    .unwrap();
    assert!(report.is_ok(), "{:?}", report.failures);
    assert_eq!(report.chunks_checked, 1);

    // A manifest naming a missing chunk fails verification, naming the chunk.
    let missing = ChunkId([7; 32]);
    let mut broken = index.clone();
    broken.set(1, missing);
    let later = SnapshotId::new("vm1", "2026-11-25T11:00:00Z").unwrap();
    let (key, digest) = repo.write_index(&later, "vda", &broken).await.unwrap();
    let disk = DiskEntry {
        index: key,
        index_digest: digest,
        ..disk
    };
    repo.commit_manifest(&manifest_for(&later, disk))
        .await
        .unwrap();
    let report = verify_snapshots(
        reopened,
        &[later],
        &VerifyOptions::default(),
        &Progress::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].object, missing.object_key());
}

/// A prune (manifest, then indexes) and a collection (chunks) racing a verify: the
/// snapshot was listed, then removed before its objects were read. That is no failure,
/// and the run says which snapshot went; a snapshot still there whose chunk is missing
/// still fails.
#[tokio::test]
async fn a_snapshot_removed_while_it_is_verified_is_no_failure() {
    let backend = Backend::memory();
    let repo = Arc::new(
        Repository::init(backend.clone(), b"pw", 64 * 1024)
            .await
            .unwrap(),
    );
    let commit = async |timestamp: &str, seed: u8| {
        let data = vec![seed; 64 * 1024];
        let id = repo.chunk_id(&data);
        repo.put_chunk(&id, repo.seal_chunk(&id, &data).unwrap())
            .await
            .unwrap();
        let mut index = FixedIndex::new_zeroed(64 * 1024, 64 * 1024);
        index.set(0, id);
        let snapshot = SnapshotId::new("vm1", timestamp).unwrap();
        let (key, digest) = repo.write_index(&snapshot, "vda", &index).await.unwrap();
        let disk = DiskEntry {
            name: "vda".into(),
            size: index.disk_size(),
            chunk_size: index.chunk_size(),
            index: key.clone(),
            index_digest: digest,
            stats: DiskStats::default(),
            chain: Default::default(),
        };
        repo.commit_manifest(&manifest_for(&snapshot, disk))
            .await
            .unwrap();
        (snapshot, key, id)
    };
    let (pruned, pruned_index, pruned_chunk) = commit("2026-11-25T10:00:00Z", 1).await;
    let (damaged, _, damaged_chunk) = commit("2026-11-25T11:00:00Z", 2).await;
    let listed = repo.list_snapshots(None).await.unwrap();
    backend.delete(&pruned.manifest_key()).await.unwrap();
    backend.delete(&pruned_index).await.unwrap();
    backend.delete(&pruned_chunk.object_key()).await.unwrap();
    backend.delete(&damaged_chunk.object_key()).await.unwrap();

    let report = verify_snapshots(repo, &listed, &VerifyOptions::default(), &Progress::new())
        .await
        .unwrap();
    assert_eq!(report.removed, vec![pruned.to_string()]);
    assert_eq!(report.snapshots, vec![damaged.to_string()]);
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].object, damaged_chunk.object_key());
}

#[tokio::test]
async fn chunk_sizes_outside_the_range_are_refused() {
    for size in [1000, 32 * 1024, 3 << 20, 32 << 20] {
        assert!(
            Repository::init(Backend::memory(), b"pw", size)
                .await
                .is_err()
        );
    }
}

#[tokio::test]
async fn unknown_urls_are_refused() {
    for url in ["ftp://x", "s3://", "file://relative", "s3://bucket?bogus=1"] {
        assert!(Backend::from_url(url, false).is_err(), "{url}");
    }
}
