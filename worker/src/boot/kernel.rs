//! Finding the kernel a snapshot boots: `/boot/vmlinuz-VERSION` with its
//! `/boot/initrd.img-VERSION`, read from the snapshot's own file systems.
//!
//! Why not the disk's bootloader: direct kernel boot needs no firmware setup, works
//! whatever bootloader (or none) the guest has, and tells apart "the disk holds no
//! kernel" (found here, before anything starts) from "the kernel did not bring the
//! system up" (the console shows why). The partition holding the kernel is taken as the
//! root file system (`root=/dev/vdXN`); a separate `/boot` partition is not supported.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use haven_files::{BlockDevice, EntryKind, Partition, PartitionScheme, Volume, partitions};

/// Largest kernel or initrd copied out of a snapshot (a hostile disk cannot fill the
/// worker's disk through a huge "kernel").
const MAX_BOOT_FILE: u64 = 1 << 30;

/// Why a snapshot has no kernel to boot. The boot test records it as a failed verdict
/// (nothing was started): the snapshot is the problem, not the worker.
#[derive(Debug, thiserror::Error)]
pub enum BootFilesError {
    /// The snapshot has no disk.
    #[error("the snapshot has no disk to boot")]
    NoDisk,
    /// No partition holds `/boot/vmlinuz-VERSION` with its initrd; what each disk and
    /// partition looked like.
    #[error("no bootable kernel in the snapshot ({})", .looked.join("; "))]
    NoKernel {
        /// One line per disk or partition looked at.
        looked: Vec<String>,
    },
    /// The kernel or initrd is larger than [`MAX_BOOT_FILE`].
    #[error("{path}: {size} bytes, more than a kernel or initrd may be ({MAX_BOOT_FILE})")]
    TooLarge {
        /// The file in the snapshot.
        path: String,
        /// Its size.
        size: u64,
    },
    /// The file could not be read from the snapshot.
    #[error("cannot read {path} from the snapshot")]
    Read {
        /// The file in the snapshot.
        path: String,
        /// Why.
        #[source]
        source: haven_files::FilesError,
    },
    /// The copy in the sandbox folder could not be written.
    #[error("cannot create {}", .path.display())]
    Create {
        /// The copy.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The kernel and initrd found on a disk, copied into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    /// Kernel version (the part after `vmlinuz-`).
    pub version: String,
    /// The kernel, copied out.
    pub kernel: PathBuf,
    /// The initrd, copied out.
    pub initrd: PathBuf,
    /// Root device as the guest names it (`/dev/vda1`).
    pub root: String,
}

/// Searches `disks` (in the order the guest sees them: vda, vdb, …) for the newest
/// kernel with an initrd, copies both into `dir` and names the root device.
/// Blocking: file systems are read synchronously.
pub fn find_boot_files(
    disks: &[Arc<dyn BlockDevice>],
    dir: &Path,
) -> Result<BootFiles, BootFilesError> {
    let mut looked = Vec::new();
    for (index, device) in disks.iter().enumerate() {
        let Some(letter) = char::from_u32('a' as u32 + index as u32).filter(|c| *c <= 'z') else {
            break;
        };
        let table = match partitions(&**device) {
            Ok(table) => table,
            Err(error) => {
                looked.push(format!("vd{letter}: {error}"));
                continue;
            }
        };
        for partition in &table {
            let name = device_name(letter, partition);
            let volume = match Volume::open(device.clone(), partition) {
                Ok(volume) => volume,
                Err(error) => {
                    looked.push(format!("{name}: {error}"));
                    continue;
                }
            };
            match newest_kernel(&volume) {
                Ok(Some(version)) => {
                    let kernel = dir.join("vmlinuz");
                    let initrd = dir.join("initrd.img");
                    copy_out(&volume, &format!("/boot/vmlinuz-{version}"), &kernel)?;
                    copy_out(&volume, &format!("/boot/initrd.img-{version}"), &initrd)?;
                    return Ok(BootFiles {
                        version,
                        kernel,
                        initrd,
                        root: name,
                    });
                }
                Ok(None) => {
                    looked.push(format!("{name}: no /boot/vmlinuz-* with its initrd.img-*"))
                }
                Err(error) => looked.push(format!("{name}: {error}")),
            }
        }
    }
    if looked.is_empty() {
        return Err(BootFilesError::NoDisk);
    }
    Err(BootFilesError::NoKernel { looked })
}

fn device_name(letter: char, partition: &Partition) -> String {
    match partition.scheme {
        PartitionScheme::Whole => format!("/dev/vd{letter}"),
        _ => format!("/dev/vd{letter}{}", partition.number),
    }
}

/// The newest `VERSION` with both `/boot/vmlinuz-VERSION` and `/boot/initrd.img-VERSION`
/// as regular files.
fn newest_kernel(volume: &Volume) -> Result<Option<String>, String> {
    let entries = match volume.list("/boot") {
        Ok(entries) => entries,
        Err(haven_files::FilesError::NotFound(_)) => return Ok(None),
        Err(error) => return Err(format!("/boot: {error}")),
    };
    let files: Vec<&str> = entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::File)
        .map(|entry| entry.name.as_str())
        .collect();
    let mut versions: Vec<&str> = files
        .iter()
        .filter_map(|name| name.strip_prefix("vmlinuz-"))
        .filter(|version| files.contains(&format!("initrd.img-{version}").as_str()))
        .collect();
    versions.sort_by(|a, b| compare_versions(a, b));
    Ok(versions.last().map(|version| version.to_string()))
}

/// Orders kernel versions with their numbers compared as numbers (`6.1.10` after `6.1.9`).
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |text: &str| -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits > 0 {
                out.push((rest[..digits].parse().unwrap_or(u64::MAX), String::new()));
                rest = &rest[digits..];
            } else {
                let others =
                    rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
                out.push((0, rest[..others].to_string()));
                rest = &rest[others..];
            }
        }
        out
    };
    parts(a).cmp(&parts(b))
}

fn copy_out(volume: &Volume, path: &str, to: &Path) -> Result<(), BootFilesError> {
    let read = |source| BootFilesError::Read {
        path: path.to_string(),
        source,
    };
    let entry = volume.stat(path).map_err(read)?;
    if entry.size > MAX_BOOT_FILE {
        return Err(BootFilesError::TooLarge {
            path: path.to_string(),
            size: entry.size,
        });
    }
    let mut file = std::fs::File::create(to).map_err(|source| BootFilesError::Create {
        path: to.to_path_buf(),
        source,
    })?;
    volume.copy_file(path, &mut file).map_err(read)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::compare_versions;
    use std::cmp::Ordering;

    #[test]
    fn versions_compare_numbers_as_numbers() {
        assert_eq!(
            compare_versions("6.1.10-amd64", "6.1.9-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            compare_versions("6.1.0-37-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
        assert_eq!(compare_versions("5.10.0", "6.1.0"), Ordering::Less);
        assert_eq!(compare_versions("6.1", "6.1"), Ordering::Equal);
    }
}
