//! The backup pipeline against a store that is slow to answer puts, as a storage node
//! or S3 is (each put answers once the object is durable): uploads must not hold up
//! the reads, or the backup runs at the speed of one round trip per few chunks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use haven_repo::{Backend, Progress, Repository};
use haven_worker::{ImageBackupRequest, ImageDisk, ImageReader, backup_images};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use rand::RngCore;
use tokio::sync::watch;

const CHUNK: u32 = 64 * 1024;
/// Slots read at once with two connections (`connections * 2 + 2`).
const SLOTS_IN_FLIGHT: usize = 6;

/// Holds every chunk put until `wanted` of them wait at once, or until `patience` has
/// passed for that put; records the most that waited together.
#[derive(Debug)]
struct GatedStore {
    inner: Arc<dyn ObjectStore>,
    wanted: usize,
    patience: Duration,
    waiting: AtomicUsize,
    most: AtomicUsize,
    open: watch::Sender<bool>,
}

impl GatedStore {
    fn new(wanted: usize, patience: Duration) -> Self {
        Self {
            inner: Arc::new(InMemory::new()),
            wanted,
            patience,
            waiting: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            open: watch::Sender::new(false),
        }
    }
}

impl fmt::Display for GatedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gated({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for GatedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if location.as_ref().contains("chunks/") {
            let mut open = self.open.subscribe();
            let waiting = self.waiting.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(waiting, Ordering::SeqCst);
            if waiting >= self.wanted {
                self.open.send_replace(true);
            }
            let _ = tokio::time::timeout(self.patience, open.wait_for(|open| *open)).await;
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_wait_for_their_upload_while_later_slots_are_read() {
    let chunks = 48;
    let wanted = 4 * SLOTS_IN_FLIGHT;
    let store = Arc::new(GatedStore::new(wanted, Duration::from_secs(2)));
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
    let most = store.most.load(Ordering::SeqCst);
    assert!(
        most >= wanted,
        "at most {most} chunk puts waited at once; with {SLOTS_IN_FLIGHT} slots read at a \
         time, at least {wanted} should wait for a slow store while the pipeline reads on"
    );
}
