//! The files below a folder, for tests that look at what a repository or a storage
//! node left on disk.

use std::path::{Path, PathBuf};

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
