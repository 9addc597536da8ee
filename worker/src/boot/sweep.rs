//! Sandbox folders a killed `haven` left behind.
//!
//! QEMU dies with its parent (`PR_SET_PDEATHSIG`), but a `kill -9` leaves the folder
//! with its overlays. Each live sandbox holds an exclusive `flock` on its `lock` file,
//! so the next boot test removes every `haven-boot-*` folder whose lock nobody holds.
//! The lock is taken on a file under another name and only then renamed to `lock`, so
//! a sweeper never sees an unlocked `lock` of a sandbox still being set up.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{Result, WorkerError};

const PREFIX: &str = "haven-boot-";

/// A new sandbox folder in `parent` and the open, locked file that marks it live.
pub(super) fn create_locked(parent: &Path) -> Result<(tempfile::TempDir, File)> {
    let dir = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(parent)
        .map_err(WorkerError::io(format!(
            "cannot create a boot sandbox folder in {}",
            parent.display()
        )))?;
    let staging = dir.path().join("lock.new");
    let file = File::create(&staging).map_err(WorkerError::io("cannot create the sandbox lock"))?;
    if !try_lock(&file) {
        return Err(WorkerError::io("cannot lock the sandbox folder")(
            std::io::Error::last_os_error(),
        ));
    }
    std::fs::rename(&staging, dir.path().join("lock"))
        .map_err(WorkerError::io("cannot publish the sandbox lock"))?;
    Ok((dir, file))
}

/// Removes the sandbox folders in `parent` that no live process holds (every boot
/// test does this first, and a worker when it starts). Best effort: what cannot be
/// read or removed is left (and logged).
pub fn remove_abandoned(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        let Ok(lock) = File::open(path.join("lock")) else {
            continue;
        };
        if !try_lock(&lock) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(folder = %path.display(), "removed an abandoned boot sandbox"),
            Err(error) => {
                tracing::warn!(folder = %path.display(), %error, "cannot remove an abandoned boot sandbox")
            }
        }
    }
}

fn try_lock(file: &File) -> bool {
    // SAFETY: flock on a descriptor the caller keeps open.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
