//! Trees of files: the files below a folder, for tests that look at what a repository
//! or a storage node left on disk, and file times, for tests that build trees to back
//! up.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Sets the modification (and access) time of a file or folder to `seconds` after the
/// epoch.
pub fn set_mtime(path: &Path, seconds: i64) {
    let time = std::time::UNIX_EPOCH + Duration::from_secs(seconds as u64);
    let times = std::fs::FileTimes::new()
        .set_modified(time)
        .set_accessed(time);
    // Folders cannot be opened for writing.
    let file = std::fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| std::fs::File::open(path))
        .unwrap();
    file.set_times(times).unwrap();
}

/// Every file below `dir`, in no particular order (empty when it does not exist).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    collect(dir, &mut out);
    out
}

/// Total size of the files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    files_below(dir)
        .iter()
        .map(|file| file.metadata().unwrap().len())
        .sum()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}
