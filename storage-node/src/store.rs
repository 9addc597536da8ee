//! Haven's own on-disk object store, which the S3 layer serves.
//!
//! Layout below each data directory:
//!
//! ```text
//! haven-data-dir.json              position of this directory among all (placement)
//! buckets/NAME/bucket.json         bucket settings (first directory only)
//! buckets/NAME/objects/…/SEG@      one object file per key (see keypath, object_file)
//! uploads/ID/upload.json, part-N   multipart uploads in progress
//! tmp/                             files being written; emptied at start
//! ```
//!
//! With several data directories every object lives in exactly one of them,
//! chosen by a stable hash of bucket and key ([`placement`]); a bucket exists
//! when its `bucket.json` exists in the first directory; an upload lives in
//! the directory chosen by its id. Files are always written into the `tmp/`
//! of the directory they will be renamed into, so every rename stays within
//! one file system.
//!
//! Invariants: an object file appears under `objects/` only by a rename of a
//! complete, fsynced file, followed by an fsync of its directory, so a crash
//! leaves either the old object or the new one, never a partial one. All
//! changes to one key (publish, delete, retention) run under that key's lock
//! so conditional writes and Object Lock checks are atomic.

mod buckets;
mod durable;
mod listing;
pub mod placement;
mod uploads;
mod usage;

pub use buckets::{BucketConfig, DefaultRetention};
pub use listing::{ListEntry, ListPage, ListRequest};
pub use uploads::{Completion, PartInfo, UploadInfo, WholeDigest, uploads_max_part_number};
pub use usage::BucketUsage;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::RngCore;

use crate::error::StoreError;
use crate::keypath::key_to_path;
use crate::metrics::Metrics;
use crate::object_file::{ObjectFileError, ObjectMeta, ObjectReader, ObjectWriter, Retention};

/// Number of lock stripes for per-key serialisation.
const KEY_LOCK_STRIPES: usize = 1024;

/// Conditions of a conditional write.
#[derive(Debug, Clone, Default)]
pub struct WriteCondition {
    /// `If-None-Match: *`: only create, never overwrite.
    pub if_none_match_any: bool,
    /// `If-Match`: `Some(None)` for `*`, `Some(Some(etag))` for one ETag.
    pub if_match: Option<Option<String>>,
    /// The writing key may not overwrite (an `append` key): like
    /// `if_none_match_any`, checked under the key's lock with the publication,
    /// but refused as [`StoreError::OverwriteDenied`] rather than a failed
    /// precondition, since the client did not ask for it.
    pub create_only_for_key: bool,
}

/// Conditions of a conditional delete: `If-Match` and the size and
/// modification-time checks of DeleteObject(s) (`x-amz-if-match-size`,
/// `x-amz-if-match-last-modified-time`). With any of them, a missing object
/// is `NoSuchKey` instead of the silent success of a plain delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteCondition {
    /// `Some(None)` for `If-Match: *`, `Some(Some(etag))` for one ETag.
    pub if_match: Option<Option<String>>,
    /// The object's size must be this.
    pub size: Option<u64>,
    /// The object's modification time must be this (to the second, as S3
    /// reports it).
    pub last_modified: Option<time::OffsetDateTime>,
}

impl DeleteCondition {
    fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.size.is_none() && self.last_modified.is_none()
    }

    /// Checks the condition against the current object (`None`: missing).
    fn check(&self, meta: Option<&ObjectMeta>) -> Result<(), StoreError> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(meta) = meta else {
            return Err(StoreError::NoSuchKey);
        };
        if let Some(Some(etag)) = &self.if_match
            && *etag != meta.etag
        {
            return Err(StoreError::PreconditionFailed("If-Match does not match"));
        }
        if self.size.is_some_and(|size| size != meta.size) {
            return Err(StoreError::PreconditionFailed(
                "x-amz-if-match-size does not match",
            ));
        }
        if let Some(expected) = self.last_modified {
            let seconds = |t: time::OffsetDateTime| t.unix_timestamp();
            let modified = time::OffsetDateTime::from_unix_timestamp_nanos(meta.last_modified_ns)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            if seconds(modified) != seconds(expected) {
                return Err(StoreError::PreconditionFailed(
                    "x-amz-if-match-last-modified-time does not match",
                ));
            }
        }
        Ok(())
    }
}

/// Used and available bytes of one data directory's file system.
#[derive(Debug, Clone)]
pub struct DiskUsage {
    /// The data directory.
    pub dir: PathBuf,
    /// Bytes used on its file system.
    pub used: u64,
    /// Bytes available to the node on its file system.
    pub available: u64,
}

/// The object store over one or several data directories.
pub struct Store {
    dirs: Vec<PathBuf>,
    metrics: Arc<Metrics>,
    key_locks: Vec<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (or initialises) the store over `roots` (in placement order),
    /// checks that each directory is where it was when the store was
    /// created, discards leftovers of a crash in every `tmp/` (they were never
    /// acknowledged), and makes what a killed node left in place durable before it
    /// is served ([`durable::sync_file_system`]).
    pub fn open(roots: &[PathBuf], metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        if roots.is_empty() {
            return Err(StoreError::Layout("no data directory".to_owned()));
        }
        for (index, root) in roots.iter().enumerate() {
            for dir in ["buckets", "uploads", "tmp"] {
                std::fs::create_dir_all(root.join(dir))?;
            }
            let tmp = root.join("tmp");
            for entry in std::fs::read_dir(&tmp)? {
                let path = entry?.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
            durable::sync_dir(&tmp)?;
            placement::check_marker(root, index, roots.len(), &tmp.join("marker"))?;
            durable::sync_file_system(root)?;
        }
        let key_locks = (0..KEY_LOCK_STRIPES)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect();
        Ok(Self {
            dirs: roots.to_vec(),
            metrics,
            key_locks,
        })
    }

    /// The data directories, in placement order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The first data directory, which holds the bucket settings.
    fn primary(&self) -> &Path {
        &self.dirs[0]
    }

    /// Index of the data directory that holds `key` of `bucket`.
    fn placed(&self, bucket: &str, key: &str) -> usize {
        placement::place(bucket, key, self.dirs.len())
    }

    /// A fresh, unused path in the `tmp/` of data directory `index`.
    fn temp_path_in(&self, index: usize) -> PathBuf {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        self.dirs[index].join("tmp").join(hex::encode(id))
    }

    /// A fresh path in the first directory's `tmp/` for a request body that
    /// must be read before it is handled (emptied at start like every temp file).
    pub(crate) fn spool_path(&self) -> PathBuf {
        self.temp_path()
    }

    /// A fresh, unused path in the first directory's `tmp/`.
    fn temp_path(&self) -> PathBuf {
        self.temp_path_in(0)
    }

    /// Starts writing a new object that will be committed as `key` of
    /// `bucket`, in the `tmp/` of the directory that will hold it.
    pub fn new_writer(&self, bucket: &str, key: &str) -> Result<ObjectWriter, StoreError> {
        Ok(ObjectWriter::create(
            self.temp_path_in(self.placed(bucket, key)),
        )?)
    }

    fn bucket_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        if !buckets::is_valid_bucket_name(bucket) {
            return Err(StoreError::InvalidBucketName);
        }
        Ok(self.primary().join("buckets").join(bucket))
    }

    /// The objects directory of `bucket` in the first data directory; it
    /// exists exactly when the bucket does.
    fn objects_dir(&self, bucket: &str) -> Result<PathBuf, StoreError> {
        Ok(self.bucket_dir(bucket)?.join("objects"))
    }

    /// The objects directory of `bucket` in data directory `index` (created
    /// lazily in all but the first).
    fn objects_dir_in(&self, index: usize, bucket: &str) -> Result<PathBuf, StoreError> {
        if !buckets::is_valid_bucket_name(bucket) {
            return Err(StoreError::InvalidBucketName);
        }
        Ok(self.dirs[index]
            .join("buckets")
            .join(bucket)
            .join("objects"))
    }

    /// Path of the object file of `key`; refuses unsafe keys.
    pub fn object_path(&self, bucket: &str, key: &str) -> Result<PathBuf, StoreError> {
        let relative = key_to_path(key)?;
        Ok(self
            .objects_dir_in(self.placed(bucket, key), bucket)?
            .join(relative))
    }

    fn key_lock(&self, bucket: &str, key: &str) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        (bucket, key).hash(&mut hasher);
        &self.key_locks[(hasher.finish() % KEY_LOCK_STRIPES as u64) as usize]
    }

    /// Counts corruption before passing the error on.
    pub fn note(&self, error: StoreError) -> StoreError {
        if matches!(error, StoreError::Corrupt(_)) {
            self.metrics.checksum_failure();
        }
        error
    }

    /// Opens an object with verified metadata.
    pub async fn open_object(&self, bucket: &str, key: &str) -> Result<ObjectReader, StoreError> {
        self.open_object_with(bucket, key, ObjectReader::open).await
    }

    /// Opens an object whose data is about to be sent
    /// ([`ObjectReader::open_to_send`]: a small one is read whole at once).
    pub async fn open_object_to_send(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<ObjectReader, StoreError> {
        self.open_object_with(bucket, key, ObjectReader::open_to_send)
            .await
    }

    async fn open_object_with(
        &self,
        bucket: &str,
        key: &str,
        open: fn(&Path) -> Result<ObjectReader, ObjectFileError>,
    ) -> Result<ObjectReader, StoreError> {
        let path = self.object_path(bucket, key)?;
        let bucket_dir = self.bucket_dir(bucket)?;
        let result = tokio::task::spawn_blocking(move || match open(&path) {
            Ok(reader) => Ok(reader),
            Err(error) => {
                let error = StoreError::from(error);
                if matches!(error, StoreError::NoSuchKey) && !bucket_dir.exists() {
                    return Err(StoreError::NoSuchBucket);
                }
                Err(error)
            }
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        result.map_err(|e| self.note(e))
    }

    /// Publishes a finished temporary object file as `key`, after checking
    /// the write conditions and any retention of the object it replaces.
    pub async fn commit(
        &self,
        bucket: &str,
        key: &str,
        temp: PathBuf,
        condition: &WriteCondition,
    ) -> Result<(), StoreError> {
        let dir = self.commit_unsynced(bucket, key, temp, condition).await?;
        self.sync_dirs(vec![dir]).await
    }

    /// Makes the entries of `dirs` durable (after [`Self::commit_unsynced`]),
    /// all at once (see [`each_blocking`]).
    pub async fn sync_dirs(&self, dirs: Vec<PathBuf>) -> Result<(), StoreError> {
        each_blocking(dirs, |dir| Ok(durable::sync_dir(&dir)?)).await?;
        Ok(())
    }

    /// [`Self::commit`] without the fsync of the directory that received the
    /// object, which it returns: the object is visible but not yet durable
    /// until the caller syncs that directory (once for many objects). The
    /// temporary file must already be durable.
    pub async fn commit_unsynced(
        &self,
        bucket: &str,
        key: &str,
        temp: PathBuf,
        condition: &WriteCondition,
    ) -> Result<PathBuf, StoreError> {
        let guard = TempGuard(temp);
        let relative = key_to_path(key)?;
        if !self.objects_dir(bucket)?.exists() {
            return Err(StoreError::NoSuchBucket);
        }
        let index = self.placed(bucket, key);
        let objects = self.objects_dir_in(index, bucket)?;
        let bucket_base = (index != 0).then(|| self.dirs[index].clone());
        let bucket_name = bucket.to_owned();
        let path = objects.join(&relative);
        let dir = path.parent().unwrap_or(&objects).to_path_buf();
        let condition = condition.clone();
        let temp = guard.0.clone();
        let _lock = self.key_lock(bucket, key).lock().await;
        // One blocking call checks the object it would replace and publishes.
        tokio::task::spawn_blocking(move || {
            let existing = match ObjectReader::open(&path).map_err(StoreError::from) {
                Ok(reader) => Some(reader.meta),
                Err(StoreError::NoSuchKey) => None,
                Err(StoreError::Corrupt(_)) => Some(ObjectMeta::default()),
                Err(error) => return Err(error),
            };
            check_write_condition(existing.as_ref(), &condition)?;
            if let Some(meta) = &existing {
                check_not_locked(meta, false)?;
            }
            if let Some(base) = bucket_base {
                ensure_objects_dir(&base, &bucket_name)?;
            }
            publish(&objects, &relative, &temp)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        std::mem::forget(guard);
        Ok(dir)
    }

    /// Deletes an object unless Object Lock or `condition` forbids it.
    /// Deleting a missing key succeeds, as in S3, unless a condition is set.
    pub async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        bypass_governance: bool,
        condition: &DeleteCondition,
    ) -> Result<(), StoreError> {
        let path = self.object_path(bucket, key)?;
        if !self.objects_dir(bucket)?.exists() {
            return Err(StoreError::NoSuchBucket);
        }
        let objects = self.objects_dir_in(self.placed(bucket, key), bucket)?;
        let _lock = self.key_lock(bucket, key).lock().await;
        match self.open_object(bucket, key).await {
            Ok(reader) => {
                condition.check(Some(&reader.meta))?;
                check_not_locked(&reader.meta, bypass_governance)?;
            }
            Err(StoreError::NoSuchKey) => {
                condition.check(None)?;
                return Ok(());
            }
            // A corrupt object may be deleted so it can be rewritten, but
            // not on a condition its metadata can no longer answer.
            Err(error @ StoreError::Corrupt(_)) if !condition.is_empty() => return Err(error),
            Err(StoreError::Corrupt(_)) => {}
            Err(error) => return Err(error),
        }
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(error) => return Err(error.into()),
            }
            if let Some(dir) = path.parent() {
                match durable::sync_dir(dir) {
                    Ok(()) => {}
                    // A concurrent delete of the last other key pruned the
                    // directory, and with it our entry.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
                durable::prune_empty_dirs(&objects, dir);
            }
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Changes the retention or legal hold of an object by rewriting its
    /// metadata; retention may only be shortened or removed in GOVERNANCE
    /// mode with the bypass right.
    pub async fn update_lock(
        &self,
        bucket: &str,
        key: &str,
        retention: Option<Option<Retention>>,
        legal_hold: Option<bool>,
        bypass_governance: bool,
    ) -> Result<(), StoreError> {
        self.update_meta(bucket, key, |meta| {
            if let Some(new) = retention {
                check_retention_change(meta.retention.as_ref(), new.as_ref(), bypass_governance)?;
                meta.retention = new;
            }
            if let Some(hold) = legal_hold {
                meta.legal_hold = hold;
            }
            Ok(())
        })
        .await
        .map(drop)
    }

    /// Changes the metadata of an object with `change` under its key's lock,
    /// rewriting its file (a copy of the verified data with the new
    /// metadata, renamed into place and fsynced like any write); returns the
    /// new metadata.
    pub async fn update_meta(
        &self,
        bucket: &str,
        key: &str,
        change: impl FnOnce(&mut ObjectMeta) -> Result<(), StoreError> + Send,
    ) -> Result<ObjectMeta, StoreError> {
        let index = self.placed(bucket, key);
        let objects = self.objects_dir_in(index, bucket)?;
        let relative = key_to_path(key)?;
        let _lock = self.key_lock(bucket, key).lock().await;
        let reader = self.open_object(bucket, key).await?;
        let mut meta = reader.meta.clone();
        change(&mut meta)?;
        let temp = self.temp_path_in(index);
        let result = tokio::task::spawn_blocking(move || -> Result<ObjectMeta, StoreError> {
            let (temp, meta) = crate::object_file::rewrite_meta(&reader, temp, meta)?;
            publish(&objects, &relative, &temp)?;
            let target = objects.join(&relative);
            durable::sync_dir(target.parent().unwrap_or(&objects))?;
            Ok(meta)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        result.map_err(|e| self.note(e))
    }

    /// Which of `keys` exist in `bucket` (keys that cannot exist are false).
    pub async fn exists_many(
        &self,
        bucket: &str,
        keys: Vec<String>,
    ) -> Result<Vec<bool>, StoreError> {
        if !self.objects_dir(bucket)?.exists() {
            return Err(StoreError::NoSuchBucket);
        }
        let objects: Vec<PathBuf> = (0..self.dirs.len())
            .map(|index| self.objects_dir_in(index, bucket))
            .collect::<Result<_, _>>()?;
        let bucket = bucket.to_owned();
        tokio::task::spawn_blocking(move || {
            keys.iter()
                .map(|key| match key_to_path(key) {
                    Ok(relative) => objects[placement::place(&bucket, key, objects.len())]
                        .join(relative)
                        .is_file(),
                    Err(_) => false,
                })
                .collect()
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    }

    /// Bytes used and available on each data directory's file system
    /// (directories whose file system cannot be queried are left out).
    pub fn disk_usage(&self) -> Vec<DiskUsage> {
        self.dirs
            .iter()
            .filter_map(|dir| disk_usage_of(dir))
            .collect()
    }
}

fn disk_usage_of(dir: &Path) -> Option<DiskUsage> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we pass.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is a valid NUL-terminated string; stat is valid memory.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize;
    let total = stat.f_blocks.saturating_mul(block);
    Some(DiskUsage {
        dir: dir.to_owned(),
        used: total.saturating_sub(stat.f_bfree.saturating_mul(block)),
        available: stat.f_bavail.saturating_mul(block),
    })
}

/// Creates `buckets/NAME/objects` in a data directory other than the first,
/// syncing every directory whose entries change.
fn ensure_objects_dir(base: &Path, bucket: &str) -> std::io::Result<()> {
    durable::ensure_dirs(base, &Path::new("buckets").join(bucket).join("objects"))
}

/// Removes a temporary file unless it was published.
struct TempGuard(PathBuf);

impl Drop for TempGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Renames a durable temp file into place (the caller syncs the directory);
/// retries when a concurrent delete pruned the directory in between.
fn publish(objects: &Path, relative: &Path, temp: &Path) -> Result<(), StoreError> {
    let target = objects.join(relative);
    let parent_relative = relative.parent().unwrap_or(Path::new(""));
    // Most objects land in a directory that exists: rename first, and create the
    // directories (syncing each new entry) only when the rename finds one missing. A
    // concurrent delete may prune an emptied directory in between, hence the retries.
    let mut attempts = 0;
    loop {
        match std::fs::rename(temp, &target) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && attempts < 5 => {
                attempts += 1;
                durable::ensure_dirs(objects, parent_relative)?;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

fn check_write_condition(
    existing: Option<&ObjectMeta>,
    condition: &WriteCondition,
) -> Result<(), StoreError> {
    if condition.if_none_match_any && existing.is_some() {
        return Err(StoreError::PreconditionFailed("object already exists"));
    }
    if condition.create_only_for_key && existing.is_some() {
        return Err(StoreError::OverwriteDenied);
    }
    match (&condition.if_match, existing) {
        (None, _) => Ok(()),
        // S3 answers an If-Match on a missing key 404 NoSuchKey, not 412.
        (Some(_), None) => Err(StoreError::NoSuchKey),
        (Some(None), Some(_)) => Ok(()),
        (Some(Some(etag)), Some(meta)) if *etag == meta.etag => Ok(()),
        (Some(Some(_)), Some(_)) => Err(StoreError::PreconditionFailed("etag does not match")),
    }
}

/// Whether an object may be deleted or overwritten now.
pub fn check_not_locked(meta: &ObjectMeta, bypass_governance: bool) -> Result<(), StoreError> {
    if meta.legal_hold {
        return Err(StoreError::Locked("object is under legal hold".to_owned()));
    }
    let Some(retention) = &meta.retention else {
        return Ok(());
    };
    if retention.retain_until <= time::OffsetDateTime::now_utc() {
        return Ok(());
    }
    if retention.mode == "GOVERNANCE" && bypass_governance {
        return Ok(());
    }
    Err(StoreError::Locked(format!(
        "object is retained in {} mode until {}",
        retention.mode, retention.retain_until
    )))
}

fn check_retention_change(
    current: Option<&Retention>,
    new: Option<&Retention>,
    bypass_governance: bool,
) -> Result<(), StoreError> {
    let Some(current) = current else {
        return Ok(());
    };
    if current.retain_until <= time::OffsetDateTime::now_utc() {
        return Ok(());
    }
    let weakens = match new {
        None => true,
        Some(new) => {
            new.retain_until < current.retain_until
                || (current.mode == "COMPLIANCE" && new.mode != "COMPLIANCE")
        }
    };
    if !weakens {
        return Ok(());
    }
    if current.mode == "GOVERNANCE" && bypass_governance {
        return Ok(());
    }
    Err(StoreError::Locked(format!(
        "retention in {} mode until {} cannot be shortened",
        current.mode, current.retain_until
    )))
}

/// Runs `work` on every item at once on the blocking pool and waits for all; the
/// results in order, or the first error. For fsyncs: the file system commits its
/// journal once for all the fsyncs waiting together, where fsyncs one after the
/// other each wait for a commit of their own (measured: a batch write of 16 chunks
/// on a busy disk took several times longer with its fsyncs in a row).
pub async fn each_blocking<T, R>(
    items: Vec<T>,
    work: impl Fn(T) -> Result<R, StoreError> + Send + Sync + Copy + 'static,
) -> Result<Vec<R>, StoreError>
where
    T: Send + 'static,
    R: Send + 'static,
{
    let tasks: Vec<_> = items
        .into_iter()
        .map(|item| tokio::task::spawn_blocking(move || work(item)))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    let mut failure = None;
    for task in tasks {
        // Every task is waited for, so none is still running when this returns.
        match task.await {
            Ok(Ok(result)) => results.push(result),
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(error) => {
                failure.get_or_insert(StoreError::Io(std::io::Error::other(error)));
            }
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(results),
    }
}
