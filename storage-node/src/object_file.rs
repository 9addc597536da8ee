//! The on-disk format of one object: its bytes, then its metadata, then a
//! fixed footer, all in one file so that one rename publishes both.
//!
//! ```text
//! [data: size bytes][metadata JSON][u32 LE json length][u32 LE crc32 of json][8 bytes magic]
//! ```
//!
//! The metadata holds a CRC-32 per 1 MiB block of data, so any read, whole or
//! ranged, verifies exactly the blocks it touches before a byte leaves the node.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aligned_block::{ALIGNMENT, AlignedBlock};

/// Magic at the very end of every object file (format version 1).
pub const MAGIC: [u8; 8] = *b"HAVNOBJ1";
/// Size of the data blocks that carry their own CRC-32.
pub const BLOCK_SIZE: u64 = 1024 * 1024;
/// Footer: json length, json crc, magic.
pub(crate) const FOOTER_LEN: u64 = 16;
const _: () = assert!(FOOTER_LEN as usize == 4 + 4 + MAGIC.len());
/// Metadata larger than this is refused as corrupt rather than allocated.
const MAX_METADATA_LEN: u32 = 16 * 1024 * 1024;

/// Retention of one object (S3 Object Lock).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    /// Until when the object may not be deleted or overwritten (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub retain_until: time::OffsetDateTime,
}

/// One part of a multipart object as completed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// Length of the part in bytes.
    pub size: u64,
    /// The part's checksum in the upload's algorithm, by algorithm name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// Everything stored about an object besides its bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Length of the data in bytes.
    pub size: u64,
    /// S3 ETag without quotes (MD5 hex, or `md5-of-md5s-N` for multipart).
    pub etag: String,
    /// Modification time, Unix nanoseconds.
    pub last_modified_ns: i128,
    /// Standard HTTP attributes, kept verbatim.
    pub content_type: Option<String>,
    /// Standard HTTP attribute.
    pub content_encoding: Option<String>,
    /// Standard HTTP attribute.
    pub content_disposition: Option<String>,
    /// Standard HTTP attribute.
    pub content_language: Option<String>,
    /// Standard HTTP attribute.
    pub cache_control: Option<String>,
    /// `x-amz-meta-*` headers.
    pub user_metadata: BTreeMap<String, String>,
    /// x-amz-checksum-* values (base64) the client sent and we verified.
    pub checksums: BTreeMap<String, String>,
    /// Number of parts for a multipart object.
    pub parts_count: Option<u32>,
    /// How the checksum in `checksums` covers a multipart object: `COMPOSITE`
    /// (a checksum of the parts' checksums, `…-N`) or `FULL_OBJECT`; absent for
    /// a single PUT, whose checksum is always of the whole object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    /// Each part of a multipart object in order (absent in objects completed
    /// before part boundaries were kept), so a part can be read by number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PartRecord>,
    /// Object Lock retention, if any.
    pub retention: Option<Retention>,
    /// Object Lock legal hold.
    pub legal_hold: bool,
    /// Object tags (S3 tagging), at most 10; absent in files written before
    /// tagging existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// CRC-32 (IEEE) of each [`BLOCK_SIZE`] block of data.
    pub block_crc32: Vec<u32>,
}

impl ObjectMeta {
    /// CRC-32 of the whole data, combined from the block CRCs (no read).
    pub fn whole_crc32(&self) -> u32 {
        let blocks = self.block_crc32.iter().enumerate().map(|(index, crc)| {
            let start = index as u64 * BLOCK_SIZE;
            (*crc, BLOCK_SIZE.min(self.size.saturating_sub(start)))
        });
        haven_node_protocol::combine_crc32(blocks)
    }
}

/// Errors of reading or writing object files.
#[derive(Debug, thiserror::Error)]
pub enum ObjectFileError {
    /// An I/O error from the file system.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The file does not hold what was written: a checksum, length or magic
    /// does not match.
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
}

/// Streams data into a new temporary object file, computing block CRCs.
///
/// Full blocks are written with `O_DIRECT` from a recycled aligned buffer
/// (no copy into the page cache, which was the largest cost of a PUT). A last,
/// partial block goes out with the trailer in the same direct write, its JSON
/// padded with spaces to end the file on a page boundary: the file is then one
/// allocation, read back in one I/O, where a tail written through the page cache
/// was allocated apart from the data when it was flushed (two extents, two reads).
/// File systems without `O_DIRECT` get buffered writes throughout.
///
/// The file is removed on drop unless [`ObjectWriter::finish`] succeeded and
/// the caller took over the path (by renaming it into place).
pub struct ObjectWriter {
    file: File,
    path: PathBuf,
    block: AlignedBlock,
    direct: bool,
    /// Data bytes taken so far.
    size: u64,
    /// File offset where the buffered block goes.
    written: u64,
    block_crc32: Vec<u32>,
    keep: bool,
}

impl ObjectWriter {
    /// Creates a new temporary file at `path`.
    pub fn create(path: PathBuf) -> Result<Self, ObjectFileError> {
        let mut options = File::options();
        options.write(true).create_new(true);
        let (file, direct) = match options.clone().custom_flags(libc::O_DIRECT).open(&path) {
            Ok(file) => (file, true),
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                (options.open(&path)?, false)
            }
            Err(error) => return Err(error.into()),
        };
        Ok(Self {
            file,
            path,
            block: AlignedBlock::new(),
            direct,
            size: 0,
            written: 0,
            block_crc32: Vec::new(),
            keep: false,
        })
    }

    /// Appends data; full blocks go to the file at once.
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), ObjectFileError> {
        while !data.is_empty() {
            let taken = self.block.push(data);
            data = &data[taken..];
            if self.block.is_full() {
                self.write_block()?;
            }
        }
        Ok(())
    }

    /// Writes the buffered block of data, noting its CRC.
    fn write_block(&mut self) -> Result<(), ObjectFileError> {
        self.block_crc32.push(crc32fast::hash(self.block.filled()));
        self.size += self.block.filled().len() as u64;
        self.flush_block()
    }

    /// Writes the buffered bytes (data, trailer or both) at `written`.
    fn flush_block(&mut self) -> Result<(), ObjectFileError> {
        let filled = self.block.filled().len();
        // O_DIRECT takes whole pages only. A buffer that does not end on one (the
        // trailer of a writer that fell back to buffered writes) has its whole
        // pages written direct and the remainder through the page cache; the
        // remainder starts on a page boundary, so no page is written both ways.
        let direct = if self.direct {
            filled / ALIGNMENT * ALIGNMENT
        } else {
            0
        };
        let mut written = 0;
        if direct > 0 {
            match self
                .file
                .write_all_at(&self.block.filled()[..direct], self.written)
            {
                Ok(()) => written = direct,
                // The device wants a larger alignment: the page cache it is.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if written < filled {
            if self.direct {
                self.stop_direct()?;
            }
            self.file.write_all_at(
                &self.block.filled()[written..],
                self.written + written as u64,
            )?;
        }
        self.written += filled as u64;
        self.block.clear();
        Ok(())
    }

    /// Turns `O_DIRECT` off for the rest of the file: its remaining writes go
    /// through the page cache, which takes any length and alignment.
    fn stop_direct(&mut self) -> Result<(), ObjectFileError> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor `self.file` owns; no memory is passed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        self.direct = false;
        Ok(())
    }

    /// Writes the metadata and footer and makes the file durable (fsync).
    /// `meta.size` and `meta.block_crc32` are filled in here.
    pub fn finish(mut self, meta: ObjectMeta) -> Result<(PathBuf, ObjectMeta), ObjectFileError> {
        let meta = self.seal(meta)?;
        self.sync()?;
        Ok((self.into_path(), meta))
    }

    /// Writes the rest of the data, the metadata and the footer, without
    /// making them durable: for callers that fsync many files together
    /// ([`Self::sync`]), which lets files share the writes of their common
    /// metadata blocks. Call once; returns `meta` with `size` and
    /// `block_crc32` filled in.
    pub fn seal(&mut self, mut meta: ObjectMeta) -> Result<ObjectMeta, ObjectFileError> {
        // The last, partial block of data stays buffered: the trailer follows it
        // in the same writes.
        if !self.block.is_empty() {
            self.block_crc32.push(crc32fast::hash(self.block.filled()));
            self.size += self.block.filled().len() as u64;
        }
        meta.size = self.size;
        meta.block_crc32 = std::mem::take(&mut self.block_crc32);
        let page_end = self.direct.then_some(ALIGNMENT as u64);
        let mut trailer = &trailer(&meta, page_end)?[..];
        while !trailer.is_empty() {
            let taken = self.block.push(trailer);
            trailer = &trailer[taken..];
            if self.block.is_full() || trailer.is_empty() {
                self.flush_block()?;
            }
        }
        // Everything is written: the buffer can serve another writer while this
        // one waits for its fsync.
        self.block.release();
        Ok(meta)
    }

    /// Makes the file durable (fsync).
    pub fn sync(&self) -> Result<(), ObjectFileError> {
        Ok(self.file.sync_all()?)
    }

    /// Hands the file over to the caller (who renames it into place or
    /// removes it); dropping the writer no longer removes it.
    pub fn into_path(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The metadata and footer that follow `meta.size` bytes of data. With `page`,
/// the JSON ends in as many spaces (which JSON ignores) as put the end of the
/// file on a multiple of `page`, so the whole file can be written with `O_DIRECT`.
pub(crate) fn trailer(meta: &ObjectMeta, page: Option<u64>) -> Result<Vec<u8>, ObjectFileError> {
    let mut json = serde_json::to_vec(meta)
        .map_err(|e| ObjectFileError::Corrupt(format!("cannot encode metadata: {e}")))?;
    if let Some(page) = page {
        let end = meta.size + json.len() as u64 + FOOTER_LEN;
        let padding = (page - end % page) % page;
        json.resize(json.len() + padding as usize, b' ');
    }
    let len = u32::try_from(json.len())
        .ok()
        .filter(|len| *len <= MAX_METADATA_LEN)
        .ok_or_else(|| ObjectFileError::Corrupt("metadata too large".to_owned()))?;
    let mut tail = Vec::with_capacity(json.len() + FOOTER_LEN as usize);
    tail.extend_from_slice(&json);
    tail.extend_from_slice(&len.to_le_bytes());
    tail.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
    tail.extend_from_slice(&MAGIC);
    Ok(tail)
}

/// An open object file with its verified metadata.
pub struct ObjectReader {
    file: File,
    /// A second open file description with `O_DIRECT` (setting it on `file`
    /// would change it for every other reader sharing it), opened on first
    /// use by [`Self::read_blocks_uncached`]; `None` where it cannot be.
    direct: std::sync::OnceLock<Option<File>>,
    /// The data of an object read whole when it was opened
    /// ([`Self::open_to_send`]), not yet verified: its one block.
    prefetched: Option<bytes::Bytes>,
    /// The object's metadata.
    pub meta: ObjectMeta,
}

impl ObjectReader {
    /// Opens an object file and verifies its footer and metadata checksum.
    /// A missing file is `Io(NotFound)`.
    pub fn open(path: &Path) -> Result<Self, ObjectFileError> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let meta = read_meta(file_len, |buffer, offset| {
            file.read_exact_at(buffer, offset)
        })?;
        Ok(Self {
            file,
            direct: std::sync::OnceLock::new(),
            prefetched: None,
            meta,
        })
    }

    /// Opens an object about to be sent, like [`Self::open`]; a file that fits in
    /// one block (every backup chunk) is read whole in one uncached read, so its
    /// metadata and data cost one I/O instead of two in a row (the footer, then
    /// the data): on a disk, that is most of the time a small GET takes.
    pub fn open_to_send(path: &Path) -> Result<Self, ObjectFileError> {
        let file = File::open(path)?;
        let file_len = file.metadata()?.len();
        let direct = std::sync::OnceLock::new();
        if file_len <= BLOCK_SIZE {
            let whole = match direct.get_or_init(|| open_direct(&file)) {
                Some(direct) => read_whole_direct(direct, file_len)?,
                None => None,
            };
            if let Some(whole) = whole {
                let meta = meta_of_whole(whole.filled())?;
                let data = bytes::Bytes::from_owner(whole).slice(..meta.size as usize);
                return Ok(Self {
                    file,
                    direct,
                    prefetched: Some(data),
                    meta,
                });
            }
        }
        let meta = read_meta(file_len, |buffer, offset| {
            file.read_exact_at(buffer, offset)
        })?;
        Ok(Self {
            file,
            direct,
            prefetched: None,
            meta,
        })
    }

    /// Block `index` as read when the object was opened, verified; `None` when
    /// it was not read then.
    fn prefetched_block(&self, index: u64) -> Option<Result<bytes::Bytes, ObjectFileError>> {
        let data = self.prefetched.as_ref().filter(|_| index == 0)?;
        Some(self.check_block(index, data).map(|()| data.clone()))
    }

    /// Reads data block `index`, verifying its CRC.
    pub fn read_block(&self, index: u64) -> Result<Vec<u8>, ObjectFileError> {
        if let Some(block) = self.prefetched_block(index) {
            return block.map(|data| data.to_vec());
        }
        let start = index * BLOCK_SIZE;
        if start >= self.meta.size {
            return Err(ObjectFileError::Corrupt(format!(
                "block {index} out of range"
            )));
        }
        let len = BLOCK_SIZE.min(self.meta.size - start) as usize;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, start)?;
        self.check_block(index, &buf)?;
        Ok(buf)
    }

    /// Reads blocks `first..end` like [`Self::read_block`], but straight from
    /// the device into recycled aligned buffers (`O_DIRECT`): no page-cache
    /// pages are filled and copied, which is most of the CPU of reading data
    /// that will be read once (the batch transfer). Falls back to buffered
    /// reads where the file system refuses `O_DIRECT`.
    pub fn read_blocks_uncached(
        &self,
        first: u64,
        end: u64,
    ) -> Result<Vec<bytes::Bytes>, ObjectFileError> {
        let direct = self.direct.get_or_init(|| open_direct(&self.file));
        let mut blocks = Vec::with_capacity(end.saturating_sub(first) as usize);
        for index in first..end {
            if let Some(block) = self.prefetched_block(index) {
                blocks.push(block?);
                continue;
            }
            let block = match direct {
                Some(file) => match self.read_block_direct(file, index) {
                    Err(ObjectFileError::Io(error))
                        if error.raw_os_error() == Some(libc::EINVAL) =>
                    {
                        bytes::Bytes::from(self.read_block(index)?)
                    }
                    other => other?,
                },
                None => bytes::Bytes::from(self.read_block(index)?),
            };
            blocks.push(block);
        }
        Ok(blocks)
    }

    fn read_block_direct(&self, file: &File, index: u64) -> Result<bytes::Bytes, ObjectFileError> {
        let start = index * BLOCK_SIZE;
        if start >= self.meta.size {
            return Err(ObjectFileError::Corrupt(format!(
                "block {index} out of range"
            )));
        }
        let len = BLOCK_SIZE.min(self.meta.size - start) as usize;
        // The file goes on past the data (metadata, footer), so only a damaged
        // file ends within it.
        let block = read_direct(file, start, len)?
            .ok_or_else(|| ObjectFileError::Corrupt(format!("block {index}: file ends early")))?;
        self.check_block(index, block.filled())?;
        Ok(bytes::Bytes::from_owner(block))
    }

    /// Checks a block's bytes against its stored CRC.
    fn check_block(&self, index: u64, data: &[u8]) -> Result<(), ObjectFileError> {
        let want = usize::try_from(index)
            .ok()
            .and_then(|i| self.meta.block_crc32.get(i).copied())
            .ok_or_else(|| ObjectFileError::Corrupt(format!("no checksum for block {index}")))?;
        let got = crc32fast::hash(data);
        if got != want {
            return Err(ObjectFileError::Corrupt(format!(
                "block {index}: crc32 {got:08x}, expected {want:08x}"
            )));
        }
        Ok(())
    }

    /// Reads and verifies the bytes `start..end` of the data.
    pub fn read_range(&self, start: u64, end: u64) -> Result<Vec<u8>, ObjectFileError> {
        let mut out = Vec::with_capacity((end - start) as usize);
        if start >= end {
            return Ok(out);
        }
        for index in start / BLOCK_SIZE..=(end - 1) / BLOCK_SIZE {
            let block = self.read_block(index)?;
            let block_start = index * BLOCK_SIZE;
            let from = start.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            out.extend_from_slice(&block[from..to]);
        }
        Ok(out)
    }
}

/// A second open file description of `file` with `O_DIRECT`; `None` where the file
/// system refuses it.
fn open_direct(file: &File) -> Option<File> {
    let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(fd_path)
        .ok()
}

/// Reads a whole object file of `file_len` bytes (at most one block) through
/// `direct`; `None` where the file system refuses the uncached read.
fn read_whole_direct(
    direct: &File,
    file_len: u64,
) -> Result<Option<AlignedBlock>, ObjectFileError> {
    match read_direct(direct, 0, file_len as usize) {
        Err(error) if error.raw_os_error() == Some(libc::EINVAL) => Ok(None),
        Err(error) => Err(error.into()),
        Ok(None) => Err(ObjectFileError::Corrupt("file ends early".to_owned())),
        Ok(Some(whole)) => Ok(Some(whole)),
    }
}

/// Reads `len` bytes (at most one block) at `offset`, a multiple of the page
/// size, through an `O_DIRECT` file: whole pages into an aligned buffer,
/// trimmed to `len`. `None` when the file ends before `len` bytes.
fn read_direct(direct: &File, offset: u64, len: usize) -> std::io::Result<Option<AlignedBlock>> {
    let want = len.div_ceil(ALIGNMENT) * ALIGNMENT;
    let mut block = AlignedBlock::new();
    block.fill_with(|buffer| {
        let mut filled = 0;
        while filled < len {
            match direct.read_at(&mut buffer[filled..want], offset + filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    })?;
    if block.filled().len() < len {
        return Ok(None);
    }
    block.truncate(len);
    Ok(Some(block))
}

/// Reads and verifies the footer and metadata of an object file held whole in
/// memory, as [`ObjectReader::open`] does from the file; its data is
/// `whole[..meta.size]`.
pub(crate) fn meta_of_whole(whole: &[u8]) -> Result<ObjectMeta, ObjectFileError> {
    read_meta(whole.len() as u64, |buffer, offset| {
        copy_at(whole, buffer, offset)
    })
}

/// Fills `buffer` from `whole` at `offset`, as `read_exact_at` would from a file.
fn copy_at(whole: &[u8], buffer: &mut [u8], offset: u64) -> std::io::Result<()> {
    let source = usize::try_from(offset)
        .ok()
        .and_then(|start| whole.get(start..start.checked_add(buffer.len())?))
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
    buffer.copy_from_slice(source);
    Ok(())
}

/// Reads and verifies the footer and metadata of an object file of `file_len`
/// bytes, through `read_at` (from the file, or from the file read whole).
fn read_meta(
    file_len: u64,
    read_at: impl Fn(&mut [u8], u64) -> std::io::Result<()>,
) -> Result<ObjectMeta, ObjectFileError> {
    if file_len < FOOTER_LEN {
        return Err(ObjectFileError::Corrupt(
            "file shorter than footer".to_owned(),
        ));
    }
    let mut footer = [0u8; FOOTER_LEN as usize];
    read_at(&mut footer, file_len - FOOTER_LEN)?;
    if footer[8..] != MAGIC {
        return Err(ObjectFileError::Corrupt("bad magic".to_owned()));
    }
    let json_len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    let json_crc = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]);
    if json_len > MAX_METADATA_LEN || u64::from(json_len) + FOOTER_LEN > file_len {
        return Err(ObjectFileError::Corrupt("bad metadata length".to_owned()));
    }
    let json_start = file_len - FOOTER_LEN - u64::from(json_len);
    let mut json = vec![0u8; json_len as usize];
    read_at(&mut json, json_start)?;
    if crc32fast::hash(&json) != json_crc {
        return Err(ObjectFileError::Corrupt(
            "metadata checksum mismatch".to_owned(),
        ));
    }
    let meta: ObjectMeta = serde_json::from_slice(&json)
        .map_err(|e| ObjectFileError::Corrupt(format!("metadata: {e}")))?;
    let blocks = meta.size.div_ceil(BLOCK_SIZE);
    if meta.size != json_start || meta.block_crc32.len() as u64 != blocks {
        return Err(ObjectFileError::Corrupt(
            "data length does not match metadata".to_owned(),
        ));
    }
    Ok(meta)
}

/// Rewrites the metadata of an existing object into a new temporary file
/// (data copied block by block, verified), for retention changes.
pub fn rewrite_meta(
    source: &ObjectReader,
    temp_path: PathBuf,
    meta: ObjectMeta,
) -> Result<(PathBuf, ObjectMeta), ObjectFileError> {
    let mut writer = ObjectWriter::create(temp_path)?;
    let blocks = source.meta.size.div_ceil(BLOCK_SIZE);
    for index in 0..blocks {
        writer.write(&source.read_block(index)?)?;
    }
    writer.finish(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Writes `data` as object `name` in `dir`, in pieces that straddle blocks.
    fn write_object(
        dir: &Path,
        name: &str,
        data: &[u8],
        meta: ObjectMeta,
    ) -> (PathBuf, ObjectMeta) {
        let mut writer = ObjectWriter::create(dir.join(name)).expect("create");
        for piece in data.chunks(70_001) {
            writer.write(piece).expect("write");
        }
        writer.finish(meta).expect("finish")
    }

    #[test]
    fn round_trips_and_reads_ranges() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Sizes around page and block boundaries: the whole pages of a partial block go
        // direct, the remainder through the page cache.
        for len in [
            0usize, 1, 4096, 8192, 524_328, 1_048_575, 1_048_576, 3_000_001,
        ] {
            let data = sample(len);
            let meta = ObjectMeta {
                etag: "e".into(),
                ..Default::default()
            };
            let (path, meta) = write_object(dir.path(), &format!("obj{len}"), &data, meta);
            assert_eq!(meta.size, len as u64);
            assert_eq!(meta.whole_crc32(), crc32fast::hash(&data));
            let reader = ObjectReader::open(&path).expect("open");
            assert_eq!(reader.read_range(0, len as u64).expect("read"), data);
            let blocks = len.div_ceil(BLOCK_SIZE as usize) as u64;
            let uncached: Vec<u8> = reader
                .read_blocks_uncached(0, blocks)
                .expect("uncached read")
                .concat();
            assert_eq!(uncached, data);
            if len > 10 {
                let (s, e) = (len as u64 / 3, len as u64 - 3);
                assert_eq!(
                    reader.read_range(s, e).expect("range"),
                    data[s as usize..e as usize]
                );
            }
        }
    }

    #[test]
    fn detects_a_flipped_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, _) = write_object(dir.path(), "o", &sample(2_000_000), ObjectMeta::default());
        let file = File::options()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut byte = [0u8; 1];
        file.read_exact_at(&mut byte, 1_500_000).expect("read");
        byte[0] ^= 0x01;
        file.write_all_at(&byte, 1_500_000).expect("write");
        let reader = ObjectReader::open(&path).expect("metadata still fine");
        assert!(reader.read_block(0).is_ok());
        assert!(reader.read_blocks_uncached(0, 1).is_ok());
        assert!(matches!(
            reader.read_blocks_uncached(0, 2),
            Err(ObjectFileError::Corrupt(_))
        ));
        assert!(matches!(
            reader.read_block(1),
            Err(ObjectFileError::Corrupt(_))
        ));
    }

    #[test]
    fn an_object_opened_to_send_reads_as_one_opened_for_its_metadata() {
        // Under /var/tmp, whose file system takes O_DIRECT (tmpfs refuses it), so a
        // small object is read whole; tmpfs takes the buffered path of the same code.
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        for len in [0usize, 1, 524_328, 1_048_000, 1_048_576, 3_000_001] {
            let data = sample(len);
            let meta = ObjectMeta {
                etag: "e".into(),
                content_type: Some("x/y".into()),
                ..Default::default()
            };
            let (path, _) = write_object(dir.path(), &format!("o{len}"), &data, meta);
            let sent = ObjectReader::open_to_send(&path).expect("open to send");
            let opened = ObjectReader::open(&path).expect("open");
            let file_len = std::fs::metadata(&path).expect("stat").len();
            if open_direct(&opened.file).is_some() {
                // Written direct, trailer and all: the file ends on a page.
                assert_eq!(file_len % ALIGNMENT as u64, 0, "{len}");
                assert_eq!(sent.prefetched.is_some(), file_len <= BLOCK_SIZE, "{len}");
            }
            assert_eq!(sent.meta.size, opened.meta.size);
            assert_eq!(sent.meta.content_type.as_deref(), Some("x/y"));
            assert_eq!(sent.meta.block_crc32, opened.meta.block_crc32);
            let blocks = len.div_ceil(BLOCK_SIZE as usize) as u64;
            let whole: Vec<u8> = sent.read_blocks_uncached(0, blocks).expect("read").concat();
            assert_eq!(whole, data);
            assert_eq!(sent.read_range(0, len as u64).expect("range"), data);
        }
    }

    #[test]
    fn an_object_read_whole_is_still_verified() {
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let (path, _) = write_object(dir.path(), "o", &sample(100_000), ObjectMeta::default());
        let file = File::options().write(true).open(&path).expect("open");
        // A flipped data byte: the metadata opens, the data does not pass.
        file.write_all_at(&[0xff], 70_000).expect("write");
        let reader = ObjectReader::open_to_send(&path).expect("metadata still fine");
        assert!(matches!(
            reader.read_blocks_uncached(0, 1),
            Err(ObjectFileError::Corrupt(_))
        ));
        assert!(matches!(
            reader.read_block(0),
            Err(ObjectFileError::Corrupt(_))
        ));
        // A flipped metadata byte: refused at open.
        let len = file.metadata().expect("stat").len();
        file.write_all_at(b"#", len - 20).expect("write");
        assert!(matches!(
            ObjectReader::open_to_send(&path),
            Err(ObjectFileError::Corrupt(_))
        ));
        // Cut short: refused at open, never read past its end.
        file.set_len(len - 3).expect("truncate");
        assert!(matches!(
            ObjectReader::open_to_send(&path),
            Err(ObjectFileError::Corrupt(_))
        ));
    }

    #[test]
    fn unfinished_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t");
        {
            let mut writer = ObjectWriter::create(path.clone()).expect("create");
            writer.write(b"partial").expect("write");
        }
        assert!(!path.exists());
    }
}
