//! Writing a raw disk image fast: direct I/O where the file system allows it.
//!
//! A restore writes gigabytes that nobody will read back soon. Through the page cache
//! every byte is copied once more by the kernel under the inode lock, which serialises
//! the pipeline's writers (measured: half of a restore's CPU time). With `O_DIRECT` the
//! device reads our buffers itself and parallel writers do not contend. Writes that are
//! not block aligned (the last partial chunk) and file systems without direct I/O
//! (tmpfs) fall back to ordinary buffered writes on a second descriptor.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of offsets, lengths and buffers for direct I/O (the page size covers every
/// logical block size in use).
const ALIGN: usize = 4096;

thread_local! {
    /// One aligned staging buffer per blocking thread, reused for every write.
    static STAGING: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A new raw image file being filled at arbitrary offsets by several threads.
#[derive(Debug)]
pub struct RawFileWriter {
    buffered: File,
    direct: Option<File>,
}

impl RawFileWriter {
    /// Creates `path` (which must not exist) as a sparse file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> std::io::Result<Self> {
        let buffered = OpenOptions::new().write(true).create_new(true).open(path)?;
        buffered.set_len(size)?;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Self { buffered, direct })
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let aligned = offset.is_multiple_of(ALIGN as u64) && data.len().is_multiple_of(ALIGN);
        match &self.direct {
            Some(direct) if aligned => STAGING.with(|staging| {
                let mut staging = staging.borrow_mut();
                if staging.len() < data.len() + ALIGN {
                    *staging = vec![0u8; data.len() + ALIGN];
                }
                let start = staging.as_ptr().align_offset(ALIGN);
                let buffer = &mut staging[start..start + data.len()];
                buffer.copy_from_slice(data);
                direct.write_all_at(buffer, offset)
            }),
            _ => self.buffered.write_all_at(data, offset),
        }
    }

    /// Makes the file durable (data written directly still needs its metadata synced).
    pub fn sync(&self) -> std::io::Result<()> {
        if let Some(direct) = &self.direct {
            direct.sync_all()?;
        }
        self.buffered.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_unaligned_writes_land_where_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let size = 3 * 1024 * 1024 + 512;
        let writer = RawFileWriter::create(&path, size).unwrap();
        let big = vec![0xabu8; 1024 * 1024];
        writer.write_at(1024 * 1024, &big).unwrap();
        writer.write_at(3 * 1024 * 1024, &[0xcd; 512]).unwrap();
        writer.write_at(100, &[1, 2, 3]).unwrap();
        writer.sync().unwrap();
        let content = std::fs::read(&path).unwrap();
        assert_eq!(content.len() as u64, size);
        assert_eq!(&content[100..103], &[1, 2, 3]);
        assert!(
            content[1024 * 1024..2 * 1024 * 1024]
                .iter()
                .all(|&b| b == 0xab)
        );
        assert!(
            content[2 * 1024 * 1024..3 * 1024 * 1024]
                .iter()
                .all(|&b| b == 0)
        );
        assert!(content[3 * 1024 * 1024..].iter().all(|&b| b == 0xcd));
        assert!(
            RawFileWriter::create(&path, 1).is_err(),
            "must not replace a file"
        );
    }
}
