//! File-system steps that make a write durable: fsync of files and of the
//! directories whose entries changed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Makes a directory's entries (created, renamed, removed names) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes everything on the file system holding `dir` durable (`syncfs(2)`). A node
/// killed (not powered off) between renaming an object into place and syncing its
/// directory comes back serving that object, and a client told it exists relies on
/// it (a backup skips uploading a chunk the node has); syncing the whole file system
/// once at start makes what the node serves durable before it serves it.
pub fn sync_file_system(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: `file` owns the descriptor and outlives the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates `relative` below `base` one component at a time, syncing the
/// parent of every directory it creates so the new entry survives a crash.
pub fn ensure_dirs(base: &Path, relative: &Path) -> io::Result<()> {
    let mut current = base.to_path_buf();
    for component in relative.components() {
        let parent = current.clone();
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => sync_dir(&parent)?,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Writes a small file atomically and durably: temp file, fsync, rename,
/// fsync of the directory.
pub fn write_atomic(path: &Path, temp: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = File::options().write(true).create_new(true).open(temp)?;
    let result = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(error) = result {
        let _ = std::fs::remove_file(temp);
        return Err(error);
    }
    if let Err(error) = std::fs::rename(temp, path) {
        let _ = std::fs::remove_file(temp);
        return Err(error);
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Removes empty directories from `dir` upwards, stopping at `stop`.
/// Best effort: a directory that gained an entry meanwhile simply stays.
pub fn prune_empty_dirs(stop: &Path, dir: &Path) {
    let mut current = dir.to_path_buf();
    while current.starts_with(stop) && current != stop {
        if std::fs::remove_dir(&current).is_err() {
            return;
        }
        if !current.pop() {
            return;
        }
    }
}
