//! `file://` backends whose chunk I/O path is chosen and checked, not assumed.
//!
//! `haven_repo::Backend` writes and reads chunks with `O_DIRECT` unless it is opened
//! with [`LocalIo::Buffered`], or the file system refuses `O_DIRECT` — which would make
//! a "direct" run silently test the buffered path, so the fixture checks for it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use haven_repo::{Backend, BackendKind, LocalIo, OpenOptions};

use crate::FixtureError;

/// A fresh `file://` repository directory and its backend; removed on drop.
#[derive(Debug)]
pub struct LocalRepository {
    /// The backend, opened on [`Self::path`].
    pub backend: Backend,
    dir: tempfile::TempDir,
}

impl LocalRepository {
    /// A new directory below `parent` and a backend on it whose chunk I/O is `io`.
    ///
    /// For [`LocalIo::Direct`], `parent` must be on a file system that accepts
    /// `O_DIRECT` (an integration test's `CARGO_TARGET_TMPDIR` is on the build disk);
    /// otherwise the fixture refuses, since the suite would silently test the
    /// buffered path.
    pub fn create(parent: &Path, io: LocalIo) -> Result<Self, FixtureError> {
        let dir = tempfile::Builder::new()
            .prefix("haven-repo-")
            .tempdir_in(parent)
            .map_err(FixtureError::io(format!(
                "cannot create a directory below {}",
                parent.display()
            )))?;
        if io == LocalIo::Direct && !accepts_direct_io(dir.path())? {
            return Err(FixtureError::WrongFileSystem {
                path: dir.path().to_path_buf(),
                reason: "refuses O_DIRECT, so chunks would be written buffered".into(),
            });
        }
        let url = format!("file://{}", dir.path().display());
        let options = OpenOptions {
            local_io: io,
            ..OpenOptions::default()
        };
        let backend = Backend::open(&url, &options)
            .map_err(|source| FixtureError::Backend { url, source })?;
        let expected = match io {
            LocalIo::Direct => BackendKind::LocalDirect,
            LocalIo::Buffered => BackendKind::LocalBuffered,
        };
        assert_eq!(
            backend.kind(),
            expected,
            "the backend must take the asked path"
        );
        Ok(Self { backend, dir })
    }

    /// The repository directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
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
