//! Copies files and directory trees out of a volume with their metadata.
//!
//! A guest's file system is not trusted: modes are restored without the setuid,
//! setgid and sticky bits (a guest's setuid-root shell must not become one on the
//! host), and the guest's owners only when the caller asks for them
//! ([`ExtractOptions::same_owner`]); otherwise files belong to whoever restores them.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::entry::{Entry, EntryKind};
use crate::error::{FilesError, Result};
use crate::volume::Volume;

/// What an extraction produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExtractReport {
    /// Regular files written.
    pub files: u64,
    /// Directories created.
    pub directories: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Device nodes, fifos and sockets skipped.
    pub skipped: u64,
    /// Bytes of file data written.
    pub bytes: u64,
    /// Where the top entry was written.
    pub to: String,
}

/// Mode bits restored: permissions only, never setuid (0o4000), setgid (0o2000) or
/// sticky (0o1000).
const RESTORED_MODE_BITS: u32 = 0o777;

/// How entries are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractOptions {
    /// Give entries the guest's uid and gid (needs root); otherwise they keep the
    /// restoring user's.
    pub same_owner: bool,
}

/// Extracts `path` (a file, symlink or whole directory) to `dest`: into it when `dest`
/// is an existing directory, else as `dest`. Existing files are never overwritten.
pub fn extract(
    volume: &Volume,
    path: &str,
    dest: &Path,
    options: ExtractOptions,
) -> Result<ExtractReport> {
    let top = volume.stat(path)?;
    let target = if dest.is_dir() {
        let name = if top.path == "/" { "root" } else { &top.name };
        check_name(name, &top.path)?;
        dest.join(name)
    } else {
        dest.to_path_buf()
    };
    let mut report = ExtractReport {
        to: target.display().to_string(),
        ..ExtractReport::default()
    };
    let mut visited = 0u64;
    copy_entry(volume, options, &top, &target, 0, &mut visited, &mut report)?;
    Ok(report)
}

fn check_name(name: &str, path: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(FilesError::Limit(format!(
            "{path}: refusing to restore an entry named {name:?}"
        )));
    }
    Ok(())
}

fn copy_entry(
    volume: &Volume,
    options: ExtractOptions,
    entry: &Entry,
    target: &Path,
    depth: usize,
    visited: &mut u64,
    report: &mut ExtractReport,
) -> Result<()> {
    let limits = volume.limits();
    *visited += 1;
    if *visited > limits.max_entries {
        return Err(FilesError::Limit(format!(
            "more than {} entries to restore",
            limits.max_entries
        )));
    }
    match entry.kind {
        EntryKind::File => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(target)
                .map_err(FilesError::output(format!(
                    "cannot create {}",
                    target.display()
                )))?;
            let copied = volume.copy_file(&entry.path, &mut file)?;
            file.sync_all().map_err(FilesError::output(format!(
                "cannot sync {}",
                target.display()
            )))?;
            report.files += 1;
            report.bytes += copied;
        }
        EntryKind::Symlink => {
            let link = entry.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(&link, target).map_err(FilesError::output(format!(
                "cannot create symlink {}",
                target.display()
            )))?;
            report.symlinks += 1;
        }
        EntryKind::Dir => {
            if depth > limits.max_depth {
                return Err(FilesError::Limit(format!(
                    "{}: nested deeper than {} levels (a directory loop?)",
                    entry.path, limits.max_depth
                )));
            }
            std::fs::create_dir(target).map_err(FilesError::output(format!(
                "cannot create {}",
                target.display()
            )))?;
            report.directories += 1;
            for child in volume.list(&entry.path)? {
                check_name(&child.name, &child.path)?;
                let child_target = target.join(&child.name);
                copy_entry(
                    volume,
                    options,
                    &child,
                    &child_target,
                    depth + 1,
                    visited,
                    report,
                )?;
            }
        }
        EntryKind::Special => {
            report.skipped += 1;
            return Ok(());
        }
    }
    apply_metadata(entry, target, options)
}

/// Owner (only with `same_owner`), then mode without setuid, setgid and sticky bits
/// (not for symlinks), then times, without following symlinks.
fn apply_metadata(entry: &Entry, target: &Path, options: ExtractOptions) -> Result<()> {
    let failed =
        |what: &str| FilesError::output(format!("cannot set the {what} of {}", target.display()));
    if options.same_owner
        && let (Some(uid), Some(gid)) = (entry.uid, entry.gid)
    {
        std::os::unix::fs::lchown(target, Some(uid), Some(gid)).map_err(failed("owner"))?;
    }
    if let Some(mode) = entry.mode.filter(|_| entry.kind != EntryKind::Symlink) {
        use std::os::unix::fs::PermissionsExt;
        let mode = mode & RESTORED_MODE_BITS;
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
            .map_err(failed("mode"))?;
    }
    if let Some(mtime) = entry.mtime {
        let atime = entry.atime.unwrap_or(mtime);
        set_times(target, atime, mtime, entry.mtime_nanos).map_err(failed("times"))?;
    }
    Ok(())
}

fn set_times(target: &Path, atime: i64, mtime: i64, mtime_nanos: u32) -> std::io::Result<()> {
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has a NUL"))?;
    let times = [
        libc::timespec {
            tv_sec: atime as libc::time_t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: mtime as libc::time_t,
            tv_nsec: libc::c_long::from(mtime_nanos.min(999_999_999) as i32),
        },
    ];
    // SAFETY: `path` is a valid NUL-terminated string and `times` two timespecs, as
    // utimensat requires; AT_SYMLINK_NOFOLLOW keeps symlinks themselves.
    let result = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
