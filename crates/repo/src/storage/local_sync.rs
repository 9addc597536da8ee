//! Durability of deferred writes on a local file system.
//!
//! Chunks are written without waiting for the disk; a backup only needs them durable
//! before the index and manifest that point at them. Each chunk file is fsynced in the
//! background right after it is written (at most [`MAX_IN_FLIGHT`] at a time, which
//! also lets ext4 batch the journal commits), so by the time the backup reaches its
//! barrier most of the work is done, and the barrier only waits for the stragglers and
//! fsyncs the directories that received new entries. Unlike `syncfs`, nothing but our
//! own files is flushed, so a busy host's unrelated dirty data does not slow a backup.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::error::{RepoError, Result};

/// Background fsyncs in flight; also the back-pressure on writers.
const MAX_IN_FLIGHT: u32 = 16;

/// Tracks deferred writes under one repository root.
#[derive(Debug)]
pub(crate) struct LocalSyncer {
    root: PathBuf,
    permits: Arc<Semaphore>,
    first_error: Arc<Mutex<Option<String>>>,
    touched_dirs: Mutex<BTreeSet<PathBuf>>,
}

impl LocalSyncer {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self {
            root,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT as usize)),
            first_error: Arc::new(Mutex::new(None)),
            touched_dirs: Mutex::new(BTreeSet::new()),
        }
    }

    /// Starts making the object at `key` durable; waits only when too many are pending.
    pub(crate) async fn after_write(&self, key: &str) -> Result<()> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RepoError::Crypto("durability tracker closed"))?;
        let path = self.root.join(key);
        if let Some(parent) = path.parent()
            && let Ok(mut dirs) = self.touched_dirs.lock()
        {
            dirs.insert(parent.to_path_buf());
        }
        let first_error = self.first_error.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = std::fs::File::open(&path).and_then(|file| file.sync_data())
                && let Ok(mut slot) = first_error.lock()
            {
                slot.get_or_insert_with(|| format!("fsync {}: {error}", path.display()));
            }
            drop(permit);
        });
        Ok(())
    }

    /// Returns once every write reported so far, and the directory entries naming them,
    /// are on disk.
    pub(crate) async fn barrier(&self) -> Result<()> {
        let all = self
            .permits
            .acquire_many(MAX_IN_FLIGHT)
            .await
            .map_err(|_| RepoError::Crypto("durability tracker closed"))?;
        drop(all);
        if let Some(error) = self
            .first_error
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
        {
            return Err(RepoError::Io {
                context: "making chunks durable".into(),
                source: std::io::Error::other(error),
            });
        }
        let dirs = self
            .touched_dirs
            .lock()
            .map(|mut dirs| std::mem::take(&mut *dirs))
            .unwrap_or_default();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || sync_dirs(&root, dirs))
            .await
            .map_err(crate::error::join_error)?
    }
}

/// Fsyncs each directory and its ancestors up to `root` (new subdirectories are entries
/// of their parents).
fn sync_dirs(root: &Path, dirs: BTreeSet<PathBuf>) -> Result<()> {
    let mut all = BTreeSet::new();
    for dir in dirs {
        let mut current = Some(dir.as_path());
        while let Some(path) = current {
            if !path.starts_with(root) || !all.insert(path.to_path_buf()) {
                break;
            }
            current = path.parent();
        }
    }
    for dir in all {
        std::fs::File::open(&dir)
            .and_then(|file| file.sync_all())
            .map_err(|source| RepoError::Io {
                context: format!("fsync {}", dir.display()),
                source,
            })?;
    }
    Ok(())
}
