//! Reading a local raw image in place, without an NBD server in between.
//!
//! A raw image holds the disk's bytes as they are, so exporting it through `qemu-nbd`
//! only adds work: the server reads every block into its own buffer and copies it into
//! a socket from its one thread, and the pipeline copies it out again. In an image
//! incremental, where every allocated block is read to find the few that changed, that
//! server was busy for the whole run and was the floor of the backup's time. Read in
//! place, a block is copied once (page cache to chunk buffer) by the blocking thread
//! that then hashes it, and holes come from `SEEK_DATA`/`SEEK_HOLE`, which is what
//! QEMU's own raw driver asks the kernel for `base:allocation`. Formats that need QEMU
//! to be understood (qcow2, vmdk, vhdx) still go through `qemu-nbd`.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use haven_nbd::{Extent, STATE_HOLE, STATE_ZERO};

use crate::adapters::image::lock::LockedImage;
use crate::error::{Result, WorkerError};
use crate::pipeline::local_disk::LocalDisk;

/// A raw image file or block device, open read-only and locked against writers.
#[derive(Debug)]
pub struct RawImage {
    image: LockedImage,
    size: u64,
}

impl RawImage {
    /// Opens and locks `path` (see [`LockedImage`]); the disk is the whole file.
    pub fn open(path: &Path) -> Result<Self> {
        Self::new(LockedImage::open(path)?)
    }

    /// Reads an image already opened and locked; the disk is the whole file.
    pub fn new(image: LockedImage) -> Result<Self> {
        // The end of a block device is its size, as the end of a file is.
        let context = format!("cannot size {}", image.path().display());
        let size = seek(image.file(), 0, libc::SEEK_END)
            .map_err(WorkerError::io(context))?
            .unwrap_or(0);
        Ok(Self { image, size })
    }

    /// Size of the disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Data and hole extents covering `[start, end)`, in order, flagged as NBD's
    /// `base:allocation` flags them: holes read as zeros and need not be read.
    pub fn allocation(&self, start: u64, end: u64) -> Result<Vec<Extent>> {
        let end = end.min(self.size);
        let file = self.image.file();
        let context = || format!("cannot map the holes of {}", self.image.path().display());
        let mut extents = Vec::new();
        let mut position = start;
        while position < end {
            // No data at or after `position` (`ENXIO`): the rest is a hole.
            let data = seek(file, position, libc::SEEK_DATA)
                .map_err(WorkerError::io(context()))?
                .unwrap_or(end)
                .clamp(position, end);
            if data > position {
                extents.push(Extent {
                    offset: position,
                    length: data - position,
                    flags: STATE_HOLE | STATE_ZERO,
                });
            }
            if data == end {
                break;
            }
            let hole = seek(file, data, libc::SEEK_HOLE)
                .map_err(WorkerError::io(context()))?
                .unwrap_or(end)
                .clamp(data + 1, end);
            extents.push(Extent {
                offset: data,
                length: hole - data,
                flags: 0,
            });
            position = hole;
        }
        Ok(extents)
    }

    /// Fills `buf` with the disk's bytes at `offset`; a disk that shrank under the
    /// reader is an error, never zeros.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.image
            .file()
            .read_exact_at(buf, offset)
            .map_err(|source| {
                let context = if source.kind() == std::io::ErrorKind::UnexpectedEof {
                    format!(
                        "{} ended before byte {}: it shrank while being read",
                        self.image.path().display(),
                        offset + buf.len() as u64
                    )
                } else {
                    format!("cannot read {}", self.image.path().display())
                };
                WorkerError::Io { context, source }
            })
    }
}

impl LocalDisk for RawImage {
    fn size(&self) -> u64 {
        RawImage::size(self)
    }

    fn allocation(&self, start: u64, end: u64) -> Result<Vec<Extent>> {
        RawImage::allocation(self, start, end)
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        RawImage::read_exact_at(self, offset, buf)
    }
}

/// `lseek`; `None` where `SEEK_DATA` finds no more data. A file system that cannot
/// map holes (`EINVAL`, `EOPNOTSUPP`) gets `offset` for `SEEK_DATA` and the end for
/// `SEEK_HOLE`: all data, as QEMU's raw driver then assumes.
fn seek(file: &std::fs::File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: lseek on a descriptor that is open for the whole call.
    let position = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if position < 0 {
        let error = std::io::Error::last_os_error();
        let cannot_map_holes =
            matches!(error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP));
        return match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ if cannot_map_holes && whence == libc::SEEK_DATA => Ok(Some(offset as u64)),
            _ if cannot_map_holes && whence == libc::SEEK_HOLE => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(position as u64))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn holes_and_data_are_mapped_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let file = std::fs::File::create(&path).unwrap();
        let size = 8 * MIB + 1000;
        file.set_len(size).unwrap();
        file.write_all_at(&[7u8; 4096], MIB).unwrap();
        file.write_all_at(&[9u8; 1000], 8 * MIB).unwrap();
        file.sync_all().unwrap();

        let image = RawImage::open(&path).unwrap();
        assert_eq!(image.size(), size);
        let extents = image.allocation(0, size).unwrap();
        // Contiguous, covering exactly the range asked.
        assert_eq!(extents.first().unwrap().offset, 0);
        assert_eq!(extents.last().unwrap().end(), size);
        for pair in extents.windows(2) {
            assert_eq!(pair[0].end(), pair[1].offset);
        }
        let is_data = |offset: u64| {
            extents
                .iter()
                .find(|e| e.offset <= offset && offset < e.end())
                .unwrap()
                .flags
                == 0
        };
        assert!(is_data(MIB) && is_data(8 * MIB + 999));
        // A file system without hole reporting says "all data", which is still right.
        if !is_data(0) {
            assert!(!is_data(4 * MIB));
        }
        // A window inside one extent, and one past the end.
        let window = image.allocation(MIB + 100, MIB + 200).unwrap();
        assert_eq!(window.len(), 1);
        assert_eq!((window[0].offset, window[0].end()), (MIB + 100, MIB + 200));
        assert!(image.allocation(size, size + MIB).unwrap().is_empty());

        let mut buf = vec![1u8; 8192];
        image.read_exact_at(MIB - 4096, &mut buf).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));

        // A file cut short under the reader is an error, not zeros.
        file.set_len(8 * MIB).unwrap();
        let mut tail = vec![0u8; 1000];
        let error = image.read_exact_at(8 * MIB, &mut tail).unwrap_err();
        assert!(error.to_string().contains("shrank"), "{error}");
    }

    #[test]
    fn directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = RawImage::open(dir.path()).unwrap_err().to_string();
        assert!(error.contains("neither a regular file"), "{error}");
    }
}
