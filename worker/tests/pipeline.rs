//! The backup pipeline against a store that is slow to answer puts, as a storage node
//! or S3 is (each put answers once the object is durable): uploads must not hold up
//! the reads, or the backup runs at the speed of one round trip per few chunks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use haven_repo::{Backend, Progress, Repository};
use haven_testkit::hooked_store::{HookedStore, StoreHook};
use haven_worker::{ImageBackupRequest, ImageDisk, ImageReader, backup_images};
use object_store::PutOptions;
use object_store::memory::InMemory;
use object_store::path::Path;
use rand::RngCore;
use tokio::sync::watch;

const CHUNK: u32 = 64 * 1024;
/// Slots read at once with two connections (`connections * 2 + 2`).
const SLOTS_IN_FLIGHT: usize = 6;

/// Holds every chunk put until `wanted` of them wait at once, or until `patience` has
/// passed for that put; records the most that waited together.
#[derive(Debug)]
struct ChunkGate {
    wanted: usize,
    patience: Duration,
    waiting: AtomicUsize,
    most: AtomicUsize,
    open: watch::Sender<bool>,
}

impl ChunkGate {
    fn new(wanted: usize, patience: Duration) -> Self {
        Self {
            wanted,
            patience,
            waiting: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            open: watch::Sender::new(false),
        }
    }
}

#[async_trait]
impl StoreHook for ChunkGate {
    async fn before_put(&self, location: &Path, _opts: &mut PutOptions) {
        if !location.as_ref().contains("chunks/") {
            return;
        }
        let mut open = self.open.subscribe();
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(waiting, Ordering::SeqCst);
        if waiting >= self.wanted {
            self.open.send_replace(true);
        }
        let _ = tokio::time::timeout(self.patience, open.wait_for(|open| *open)).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_wait_for_their_upload_while_later_slots_are_read() {
    let chunks = 48;
    let wanted = 4 * SLOTS_IN_FLIGHT;
    let store = Arc::new(HookedStore::new(
        Arc::new(InMemory::new()),
        ChunkGate::new(wanted, Duration::from_secs(2)),
    ));
    let backend = Backend::over_object_store("gated://", store.clone());
    let repo = Arc::new(
        Repository::init(backend, b"pipeline-password", CHUNK)
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let mut data = vec![0u8; chunks * CHUNK as usize];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(&disk, &data).unwrap();

    let request = ImageBackupRequest {
        vm: "slow-store".into(),
        disks: vec![ImageDisk {
            path: disk,
            name: "vda".into(),
            format: Some("raw".into()),
        }],
        connections: 2,
        reader: ImageReader::Auto,
    };
    let report = backup_images(repo, &request, Arc::new(Progress::new()))
        .await
        .unwrap();

    assert_eq!(report.disks[0].stats.new_chunks, chunks as u64);
    let most = store.hook().most.load(Ordering::SeqCst);
    assert!(
        most >= wanted,
        "at most {most} chunk puts waited at once; with {SLOTS_IN_FLIGHT} slots read at a \
         time, at least {wanted} should wait for a slow store while the pipeline reads on"
    );
}
