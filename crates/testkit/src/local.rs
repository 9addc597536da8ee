//! `file://` backends whose write path is chosen and checked, not assumed.
//!
//! On `file://`, `haven_repo::Backend` writes deferred objects whose keys are plain
//! (letters, digits and `/`: chunk keys) with `O_DIRECT`, and reads them back with
//! `O_DIRECT` in `get_once`; every other write, and every write after a file system
//! once refused `O_DIRECT` (a process-wide switch), goes through `object_store`'s
//! buffered `LocalFileSystem`. On main nothing else selects the path, and tmpfs
//! accepts `O_DIRECT` since Linux 6.6, so the switch cannot be relied on to reach the
//! buffered path. The fixture therefore reaches it per call: for
//! [`WritePath::Buffered`] the suite names its chunk-like objects with a key outside
//! that alphabet ([`ChunkKeys::NotPlain`]), which makes `put_if_absent(Deferred)` and
//! `get_once` take exactly the calls the fallback takes. When `Backend` gets an
//! explicit choice of path, [`LocalRepository::create`] is the one place to switch
//! to it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use haven_repo::Backend;

use crate::FixtureError;
use crate::backend::ChunkKeys;

/// The write path of chunks on `file://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WritePath {
    /// `O_DIRECT` writes and reads (`local_direct`): needs a file system that
    /// accepts them, which the fixture checks.
    Direct,
    /// `object_store`'s buffered writes and reads, with the same background fsyncs.
    Buffered,
}

/// A fresh `file://` repository directory and its backend; removed on drop.
#[derive(Debug)]
pub struct LocalRepository {
    /// The backend, opened on [`Self::path`].
    pub backend: Backend,
    path: WritePath,
    dir: tempfile::TempDir,
}

impl LocalRepository {
    /// A new directory below `parent` and a backend on it that writes chunks by
    /// `path`.
    ///
    /// For [`WritePath::Direct`], `parent` must be on a file system that accepts
    /// `O_DIRECT` (an integration test's `CARGO_TARGET_TMPDIR` is on the build disk);
    /// otherwise the fixture refuses, since the suite would silently test the
    /// buffered path.
    pub fn create(parent: &Path, path: WritePath) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("haven-repo-")
            .tempdir_in(parent)
            .map_err(FixtureError::io(format!(
                "cannot create a directory below {}",
                parent.display()
            )))?;
        if path == WritePath::Direct && !accepts_direct_io(dir.path())? {
            return Err(FixtureError::WrongFileSystem {
                path: dir.path().to_path_buf(),
                reason: "refuses O_DIRECT, so chunks would be written buffered".into(),
            });
        }
        let url = format!("file://{}", dir.path().display());
        let backend = Backend::from_url(&url, false)
            .map_err(|source| FixtureError::Backend { url, source })?;
        Ok(Self { backend, path, dir })
    }

    /// The repository directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The chunk keys the backend suite must use to exercise this repository's write
    /// path (see the module documentation).
    pub fn chunk_keys(&self) -> ChunkKeys {
        match self.path {
            WritePath::Direct => ChunkKeys::Repository,
            WritePath::Buffered => ChunkKeys::NotPlain,
        }
    }
}

/// Whether files in `dir` can be opened with `O_DIRECT`, probed the way
/// `local_direct` finds out (`EINVAL` at open).
pub fn accepts_direct_io(dir: &Path) -> Result<bool, FixtureError> {
    let probe = dir.join("direct-io-probe");
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let accepts = match opened {
        Ok(_) => true,
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => false,
        Err(error) => {
            return Err(FixtureError::Io {
                context: format!("cannot probe O_DIRECT in {}", dir.display()),
                source: error,
            });
        }
    };
    // Some file systems create the file before refusing the flag.
    let _ = std::fs::remove_file(&probe);
    Ok(accepts)
}
