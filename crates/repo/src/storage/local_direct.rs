//! Create-only writes and whole reads of chunks on a local file system with `O_DIRECT`.
//!
//! A chunk is written once and not read back by the backup that wrote it, so copying it
//! into the page cache only costs CPU (the copy, page allocation, and reclaiming other
//! pages under memory pressure, the main cause of run-to-run spread of full backups on
//! a busy host) and leaves the data to be written back by the fsync anyway. Here the
//! blob is copied into an aligned buffer from a small pool, padded to the block size,
//! written directly to the device, and the file is truncated to the blob's length.
//!
//! The publication protocol is the one of `object_store`'s `LocalFileSystem` for
//! `PutMode::Create`: a staging file `KEY#N` in the same directory (listings ignore such
//! names, so a crash leaves only an invisible leftover), then `link(2)` to `KEY`, which
//! fails when the object exists, then removal of the staging name. Durability is still
//! the caller's: the background fsync and the barrier in `local_sync`.
//!
//! Reads ([`read`]) go the same way for the same reason: a verify reads each chunk
//! once, and filling the page cache with it (page allocation, reclaiming other pages,
//! the copy out) cost more CPU than decrypting and hashing it. (Restores measured
//! faster with buffered reads and keep them.) The aligned buffer becomes the returned
//! `Bytes`, so the data is not copied again, and goes back to a small pool when that
//! is dropped: a fresh buffer per chunk cost its zeroing, a page fault per page and
//! the unmapping, about a fifth of a verify's CPU.
//!
//! File systems without `O_DIRECT` (tmpfs) report `Unsupported`, and the caller falls
//! back to the buffered path for good.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::OpenOptions;
use std::io::{Error, ErrorKind};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Alignment and size granularity of direct writes (covers 512 and 4096 byte sectors).
const ALIGN: usize = 4096;
/// Bytes of aligned buffers kept for reuse (a verify has a few dozen chunks in
/// flight, a backup a few writes).
const POOLED_BYTES: usize = 64 << 20;

/// Aligned buffers given back by finished writes and dropped reads, for the next.
static BUFFERS: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

/// What a direct put did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DirectPut {
    Created,
    AlreadyExisted,
}

struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn with_len(len: usize) -> Option<Self> {
        let layout = Layout::from_size_align(len, ALIGN).ok()?;
        // SAFETY: `len` is non-zero (callers round up to ALIGN) and the layout is valid.
        let ptr = unsafe { alloc_zeroed(layout) };
        (!ptr.is_null()).then_some(Self { ptr, len })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed, then written) bytes we own.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_len` with exactly this layout.
        unsafe { dealloc(self.ptr, Layout::from_size_align_unchecked(self.len, ALIGN)) }
    }
}

// SAFETY: the buffer is plain memory owned by this value alone; nothing ties it to
// the thread that allocated it.
unsafe impl Send for AlignedBuf {}

/// The smallest pooled aligned buffer of at least `len` bytes (so a small read does not
/// hold a large buffer that the next large read then has to allocate anew), or a new one.
fn take_buffer(len: usize) -> Option<AlignedBuf> {
    let pooled = BUFFERS.lock().ok().and_then(|mut pool| {
        let (fit, _) = pool
            .iter()
            .enumerate()
            .filter(|(_, buffer)| buffer.len >= len)
            .min_by_key(|(_, buffer)| buffer.len)?;
        Some(pool.swap_remove(fit))
    });
    pooled.or_else(|| AlignedBuf::with_len(len))
}

/// Gives a buffer back to the pool, unless the pool is full.
fn give_back(buffer: AlignedBuf) {
    if let Ok(mut pool) = BUFFERS.lock() {
        let pooled: usize = pool.iter().map(|b| b.len).sum();
        if pooled + buffer.len <= POOLED_BYTES {
            pool.push(buffer);
        }
    }
}

/// The first `len` bytes of a pooled aligned buffer, as the owner behind a `Bytes`;
/// the buffer goes back to the pool when the `Bytes` is dropped.
struct Filled {
    buffer: Option<AlignedBuf>,
    len: usize,
}

impl AsRef<[u8]> for Filled {
    fn as_ref(&self) -> &[u8] {
        match &self.buffer {
            // SAFETY: `ptr` points to `buffer.len >= len` initialised bytes we own.
            Some(buffer) => unsafe { std::slice::from_raw_parts(buffer.ptr, self.len) },
            None => &[],
        }
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            give_back(buffer);
        }
    }
}

/// Reads the whole file `path` with `O_DIRECT`, refusing files longer than
/// `max_len` (`InvalidData`). Blocking.
pub(crate) fn read(path: &Path, max_len: u64) -> std::io::Result<bytes::Bytes> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
            return Err(Error::new(ErrorKind::Unsupported, error));
        }
        other => other?,
    };
    let len = file.metadata()?.len();
    if len > max_len {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("object is {len} bytes, at most {max_len} expected"),
        ));
    }
    let len = usize::try_from(len).map_err(|_| Error::from(ErrorKind::InvalidData))?;
    let padded = len.div_ceil(ALIGN).max(1) * ALIGN;
    let mut buffer = take_buffer(padded).ok_or(ErrorKind::OutOfMemory)?;
    let slice = &mut buffer.as_mut_slice()[..padded];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut slice[filled..padded], filled as u64) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(read) => filled += read,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                return Err(Error::new(ErrorKind::Unsupported, error));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(bytes::Bytes::from_owner(Filled {
        buffer: Some(buffer),
        len,
    }))
}

/// Writes `data` as the new file `path` unless it exists. Blocking.
pub(crate) fn put_create(path: &Path, data: &[u8]) -> std::io::Result<DirectPut> {
    let padded = data.len().div_ceil(ALIGN).max(1) * ALIGN;
    let (file, staging) = open_staging(path)?;
    let mut buffer = take_buffer(padded).ok_or(ErrorKind::OutOfMemory)?;
    let slice = buffer.as_mut_slice();
    slice[..data.len()].copy_from_slice(data);
    slice[data.len()..padded].fill(0);
    let written = file.write_all_at(&slice[..padded], 0);
    give_back(buffer);
    let result = written
        .and_then(|()| file.set_len(data.len() as u64))
        .and_then(|()| match std::fs::hard_link(&staging, path) {
            Ok(()) => Ok(DirectPut::Created),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(DirectPut::AlreadyExisted),
            Err(error) => Err(error),
        });
    let _ = std::fs::remove_file(&staging);
    result
}

/// Creates `PATH#N` for the first free `N`, with its parent directories if needed.
fn open_staging(path: &Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    let mut suffix = 1u32;
    loop {
        let mut staging = path.as_os_str().to_owned();
        staging.push(format!("#{suffix}"));
        let staging = PathBuf::from(staging);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(&staging);
        match opened {
            Ok(file) => return Ok((file, staging)),
            Err(error) if error.kind() == ErrorKind::AlreadyExists => suffix += 1,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                let parent = path.parent().ok_or(error)?;
                std::fs::create_dir_all(parent)?;
            }
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                return Err(Error::new(ErrorKind::Unsupported, error));
            }
            Err(error) => return Err(error),
        }
        if suffix > 1000 {
            return Err(Error::other("no free staging name"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_only_with_exact_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunks/ab/object");
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        match put_create(&path, &data) {
            Ok(outcome) => assert_eq!(outcome, DirectPut::Created),
            // A file system without O_DIRECT: the caller falls back.
            Err(error) if error.kind() == ErrorKind::Unsupported => return,
            Err(error) => panic!("{error}"),
        }
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert_eq!(
            put_create(&path, b"other").unwrap(),
            DirectPut::AlreadyExisted
        );
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Only the object is left: no staging names.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("object")]);
        // Lengths that are a multiple of the alignment, and empty blobs.
        let aligned = vec![7u8; 2 * ALIGN];
        put_create(&dir.path().join("aligned"), &aligned).unwrap();
        assert_eq!(std::fs::read(dir.path().join("aligned")).unwrap(), aligned);
        put_create(&dir.path().join("empty"), b"").unwrap();
        assert!(std::fs::read(dir.path().join("empty")).unwrap().is_empty());

        // Direct reads give the same bytes, whatever the length.
        assert_eq!(read(&path, 1 << 20).unwrap(), data);
        assert_eq!(read(&dir.path().join("aligned"), 1 << 20).unwrap(), aligned);
        assert!(read(&dir.path().join("empty"), 1 << 20).unwrap().is_empty());
        let too_long = read(&path, 9_999).unwrap_err();
        assert_eq!(too_long.kind(), ErrorKind::InvalidData);
        let missing = read(&dir.path().join("missing"), 1 << 20).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);

        // A reused buffer shows none of what it held before.
        drop(read(&dir.path().join("aligned"), 1 << 20).unwrap());
        put_create(&dir.path().join("short"), b"short").unwrap();
        for _ in 0..3 {
            assert_eq!(
                read(&dir.path().join("short"), 1 << 20).unwrap(),
                &b"short"[..]
            );
        }
    }
}
