//! A repository in a local directory (`file://`): `object_store`'s `LocalFileSystem`
//! for everything, plus the two things a local disk needs that a remote store does not.
//!
//! - Durability is ours to arrange: indexes, manifests and records go through a twin
//!   store that fsyncs every write, chunks are fsynced in the background
//!   ([`LocalSyncer`]) and [`LocalStore::barrier`] waits for them.
//! - Chunks can bypass the page cache ([`super::local_direct`]). Whether they do is
//!   chosen when the backend is opened ([`LocalIo`]) and recorded here, per backend:
//!   a file system that refuses `O_DIRECT` (tmpfs) turns it off for this backend's
//!   reads or writes for good, and the same call falls back to buffered I/O.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;

use super::local_direct::{self, DirectPut};
use super::local_sync::LocalSyncer;
use crate::error::{RepoError, Result, join_error};

/// How a local backend reads and writes chunks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LocalIo {
    /// Chunks are written, and read by verify, with `O_DIRECT` (no page-cache copy),
    /// falling back to buffered I/O where the file system refuses it. What Haven uses.
    #[default]
    Direct,
    /// Every read and write goes through the page cache, as `object_store` does it:
    /// the path every file system supports, kept testable on one that allows both.
    Buffered,
}

/// What a direct read or write of a chunk found, when it did not simply succeed.
pub(crate) enum DirectOutcome<T> {
    /// Done directly.
    Done(T),
    /// Direct I/O is off or was just refused: use the buffered path.
    UseBuffered,
}

/// A `file://` backend's stores, root and durability tracking.
#[derive(Debug)]
pub(crate) struct LocalStore {
    root: PathBuf,
    /// Writes whose durability is deferred to the barrier, and every read.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The same directory with an fsync after every write.
    pub(crate) durable_store: Arc<dyn ObjectStore>,
    syncer: LocalSyncer,
    /// Chunk I/O as chosen when the backend was opened.
    io: LocalIo,
    /// Whether chunks are still written with `O_DIRECT`.
    direct_writes: AtomicBool,
    /// Whether chunks are still read with `O_DIRECT`.
    direct_reads: AtomicBool,
}

impl LocalStore {
    /// Opens the directory at `path` (created first with `create`); `url` is for errors.
    pub(crate) fn open(path: &Path, url: &str, create: bool, io: LocalIo) -> Result<Self> {
        if create {
            std::fs::create_dir_all(path).map_err(|source| RepoError::Io {
                context: format!("cannot create {}", path.display()),
                source,
            })?;
        }
        let root =
            std::fs::canonicalize(path).map_err(|_| RepoError::NotARepository(url.to_string()))?;
        let invalid = |error: object_store::Error| RepoError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        };
        let store = LocalFileSystem::new_with_prefix(&root).map_err(invalid)?;
        let durable = LocalFileSystem::new_with_prefix(&root)
            .map_err(invalid)?
            .with_fsync(true);
        let direct = io == LocalIo::Direct;
        Ok(Self {
            store: Arc::new(store),
            durable_store: Arc::new(durable),
            syncer: LocalSyncer::new(root.clone()),
            root,
            io,
            direct_writes: AtomicBool::new(direct),
            direct_reads: AtomicBool::new(direct),
        })
    }

    /// The repository's root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// How chunks were to be read and written when the backend was opened.
    pub(crate) fn chosen_io(&self) -> LocalIo {
        self.io
    }

    /// Reads a whole chunk with `O_DIRECT` if this backend still does so.
    pub(crate) async fn read_direct(
        &self,
        key: &str,
        max_len: u64,
    ) -> Result<DirectOutcome<Bytes>> {
        if !self.direct_reads.load(Ordering::Relaxed)
            || !key.starts_with("chunks/")
            || !is_plain_key(key)
        {
            return Ok(DirectOutcome::UseBuffered);
        }
        let path = self.root.join(key);
        let read = tokio::task::spawn_blocking(move || local_direct::read(&path, max_len))
            .await
            .map_err(join_error)?;
        match read {
            Ok(bytes) => Ok(DirectOutcome::Done(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Err(RepoError::NotFound(key.to_string()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                Err(RepoError::corrupt(key, error.to_string()))
            }
            Err(error) => refused(key, "read", error, &self.direct_reads),
        }
    }

    /// Writes a chunk create-only with `O_DIRECT` if this backend still does so, and
    /// starts its background fsync.
    pub(crate) async fn put_direct(&self, key: &str, data: &Bytes) -> Result<DirectOutcome<bool>> {
        if !self.direct_writes.load(Ordering::Relaxed) || !is_plain_key(key) {
            return Ok(DirectOutcome::UseBuffered);
        }
        let path = self.root.join(key);
        let direct_data = data.clone();
        let written =
            tokio::task::spawn_blocking(move || local_direct::put_create(&path, &direct_data))
                .await
                .map_err(join_error)?;
        match written {
            Ok(DirectPut::Created) => {
                self.syncer.after_write(key).await?;
                Ok(DirectOutcome::Done(true))
            }
            Ok(DirectPut::AlreadyExisted) => Ok(DirectOutcome::Done(false)),
            Err(error) => refused(key, "write", error, &self.direct_writes),
        }
    }

    /// Starts the background fsync of a chunk just written through `store`.
    pub(crate) async fn after_deferred_write(&self, key: &str) -> Result<()> {
        self.syncer.after_write(key).await
    }

    /// Waits for the background fsyncs and syncs the directories they touched.
    pub(crate) async fn barrier(&self) -> Result<()> {
        self.syncer.barrier().await
    }
}

/// The outcome of a direct `verb` of `key` that failed: when the file system refuses
/// `O_DIRECT` (tmpfs), `switch` is cleared for good and the caller falls back to
/// buffered I/O; any other failure is the caller's error.
fn refused<T>(
    key: &str,
    verb: &str,
    error: std::io::Error,
    switch: &AtomicBool,
) -> Result<DirectOutcome<T>> {
    if error.kind() == std::io::ErrorKind::Unsupported {
        switch.store(false, Ordering::Relaxed);
        return Ok(DirectOutcome::UseBuffered);
    }
    Err(RepoError::Io {
        context: format!("cannot {verb} {key}"),
        source: error,
    })
}

/// Whether `key` maps to a path below a `file://` root as it is (letters, digits
/// and `/`: the keys of chunks), so direct I/O may bypass `object_store`.
fn is_plain_key(key: &str) -> bool {
    key.bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'/')
}
