//! NTFS through the `ntfs` crate, which reads lazily through a [`DeviceSlice`].
//!
//! The crate keeps no reader of its own: every call takes one, so each operation works
//! on its own clone of the slice and a [`Volume`](crate::Volume) stays shareable.
//! NTFS has no Unix mode or owner; reparse points (symlinks, junctions, deduplicated
//! files) are listed as special entries and not restored. The metadata files of the
//! root directory (`$MFT`, `$Bitmap`, … — MFT records below 24) are hidden, as Windows
//! does.
//!
//! The crate walks B-trees and attribute lists without bounding them, so a hostile
//! volume whose structures point back at themselves could keep it reading forever.
//! Every operation therefore reads through a [`Budgeted`] reader that fails once it
//! has read more than a fixed budget (plus, when copying, the file's own size).

use std::io::{Read, Seek, SeekFrom, Write};

use ntfs::indexes::NtfsFileNameIndex;
use ntfs::structured_values::{NtfsFileAttributeFlags, NtfsFileNamespace};
use ntfs::{Ntfs, NtfsFile, NtfsReadSeek, NtfsTime};

use crate::device::DeviceSlice;
use crate::entry::{Entry, EntryKind, Limits, join};
use crate::error::{FilesError, Result};

/// MFT records reserved for the file system's own metadata files.
const FIRST_USER_RECORD: u64 = 24;
/// 100 ns intervals between 1601-01-01 (NT epoch) and 1970-01-01.
const NT_TO_UNIX_EPOCH: u64 = 116_444_736_000_000_000;

/// Bytes of metadata one operation may read before it is taken for a loop.
const METADATA_READ_BUDGET: u64 = 1 << 30;

/// A reader that fails after `left` more bytes, so corrupt structures cannot hang a walk.
pub(crate) struct Budgeted {
    inner: DeviceSlice,
    left: u64,
}

impl Budgeted {
    fn new(inner: DeviceSlice, budget: u64) -> Self {
        Self {
            inner,
            left: budget,
        }
    }
}

impl Read for Budgeted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(std::io::Error::other(
                "read budget exhausted: the volume's structures loop or are implausibly large",
            ));
        }
        let allowed = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let count = self.inner.read(&mut buf[..allowed])?;
        self.left -= count as u64;
        Ok(count)
    }
}

impl Seek for Budgeted {
    fn seek(&mut self, from: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(from)
    }
}

/// An opened NTFS volume and the slice it is read from.
pub(crate) struct NtfsVolume {
    ntfs: Ntfs,
    slice: DeviceSlice,
}

fn driver(error: ntfs::NtfsError, path: &str) -> FilesError {
    match error {
        ntfs::NtfsError::NotADirectory { .. } => FilesError::not_a_directory(path),
        other => FilesError::driver("ntfs", path, other),
    }
}

pub(crate) fn open(slice: DeviceSlice) -> Result<NtfsVolume> {
    let mut reader = Budgeted::new(slice.clone(), METADATA_READ_BUDGET);
    let mut ntfs = Ntfs::new(&mut reader).map_err(|error| driver(error, "boot sector"))?;
    ntfs.read_upcase_table(&mut reader)
        .map_err(|error| driver(error, "$UpCase"))?;
    Ok(NtfsVolume { ntfs, slice })
}

/// Seconds and nanoseconds since the Unix epoch (times before 1970 clamp to it).
fn unix_time(time: NtfsTime) -> (i64, u32) {
    unix_time_of(time.nt_timestamp())
}

/// [`unix_time`] of a raw NT timestamp (100 ns intervals since 1601).
fn unix_time_of(nt_timestamp: u64) -> (i64, u32) {
    let since_1970 = nt_timestamp.saturating_sub(NT_TO_UNIX_EPOCH);
    let seconds = i64::try_from(since_1970 / 10_000_000).unwrap_or(i64::MAX);
    // The remainder is below 10^7, so times 100 it is below 10^9.
    let nanos = (since_1970 % 10_000_000) as u32 * 100;
    (seconds, nanos)
}

/// Finds `path` from the root directory, one index lookup per component.
/// Returns the file and its name as stored (with the stored case).
fn resolve<'n>(
    volume: &'n NtfsVolume,
    reader: &mut Budgeted,
    path: &str,
) -> Result<(NtfsFile<'n>, String)> {
    let mut current = volume
        .ntfs
        .root_directory(reader)
        .map_err(|error| driver(error, "/"))?;
    let mut name = "/".to_string();
    let mut walked = String::new();
    for component in path.split('/').filter(|part| !part.is_empty()) {
        walked.push('/');
        walked.push_str(component);
        if !current.is_directory() {
            return Err(FilesError::NotFound(walked));
        }
        let next = {
            let index = current
                .directory_index(reader)
                .map_err(|error| driver(error, &walked))?;
            let mut finder = index.finder();
            let found = NtfsFileNameIndex::find(&mut finder, &volume.ntfs, reader, component)
                .ok_or_else(|| FilesError::NotFound(walked.clone()))?
                .map_err(|error| driver(error, &walked))?;
            if found.file_reference().file_record_number() < FIRST_USER_RECORD {
                return Err(FilesError::NotFound(walked));
            }
            let key = found
                .key()
                .ok_or_else(|| FilesError::NotFound(walked.clone()))?
                .map_err(|error| driver(error, &walked))?;
            name = key.name().to_string_lossy();
            found
                .to_file(&volume.ntfs, reader)
                .map_err(|error| driver(error, &walked))?
        };
        current = next;
    }
    Ok((current, name))
}

/// Builds the entry of `file`, whose name is `name` and path `path`.
fn entry(file: &NtfsFile<'_>, reader: &mut Budgeted, name: String, path: String) -> Result<Entry> {
    let info = file.info().map_err(|error| driver(error, &path))?;
    let kind = if file.is_directory() {
        EntryKind::Dir
    } else if info
        .file_attributes()
        .contains(NtfsFileAttributeFlags::REPARSE_POINT)
    {
        EntryKind::Special
    } else {
        EntryKind::File
    };
    let size = if kind == EntryKind::File {
        data_length(file, reader, &path)?
    } else {
        0
    };
    let (mtime, mtime_nanos) = unix_time(info.modification_time());
    let (atime, _) = unix_time(info.access_time());
    Ok(Entry {
        name,
        path,
        kind,
        size,
        mode: None,
        uid: None,
        gid: None,
        mtime: Some(mtime),
        mtime_nanos,
        atime: Some(atime),
        target: None,
    })
}

/// Length of the unnamed `$DATA` stream (0 when there is none).
fn data_length(file: &NtfsFile<'_>, reader: &mut Budgeted, path: &str) -> Result<u64> {
    let Some(item) = file.data(reader, "") else {
        return Ok(0);
    };
    let item = item.map_err(|error| driver(error, path))?;
    let attribute = item.to_attribute().map_err(|error| driver(error, path))?;
    Ok(attribute.value_length())
}

pub(crate) fn stat(volume: &NtfsVolume, path: &str) -> Result<Entry> {
    let mut reader = Budgeted::new(volume.slice.clone(), METADATA_READ_BUDGET);
    let (file, name) = resolve(volume, &mut reader, path)?;
    entry(&file, &mut reader, name, path.to_string())
}

pub(crate) fn list(volume: &NtfsVolume, path: &str, limits: Limits) -> Result<Vec<Entry>> {
    let mut reader = Budgeted::new(volume.slice.clone(), METADATA_READ_BUDGET);
    let (directory, _) = resolve(volume, &mut reader, path)?;
    let index = directory
        .directory_index(&mut reader)
        .map_err(|error| driver(error, path))?;
    let mut children = Vec::new();
    let mut iterator = index.entries();
    while let Some(item) = iterator.next(&mut reader) {
        let item = item.map_err(|error| driver(error, path))?;
        let record = item.file_reference().file_record_number();
        let Some(key) = item.key() else {
            continue;
        };
        let key = key.map_err(|error| driver(error, path))?;
        // Short 8.3 aliases duplicate a long name; system files stay hidden.
        if key.namespace() == NtfsFileNamespace::Dos || record < FIRST_USER_RECORD {
            continue;
        }
        limits.admit_dir_entry(path, children.len())?;
        children.push((record, key.name().to_string_lossy()));
    }
    let mut entries = Vec::with_capacity(children.len());
    for (record, name) in children {
        let child = join(path, &name);
        let file = volume
            .ntfs
            .file(&mut reader, record)
            .map_err(|error| driver(error, &child))?;
        entries.push(entry(&file, &mut reader, name, child)?);
    }
    Ok(entries)
}

pub(crate) fn copy(volume: &NtfsVolume, path: &str, out: &mut dyn Write) -> Result<u64> {
    // The file's data is bounded by the volume's size (checked by the caller).
    let budget = METADATA_READ_BUDGET + volume.slice.len();
    let mut reader = Budgeted::new(volume.slice.clone(), budget);
    let (file, _) = resolve(volume, &mut reader, path)?;
    let Some(item) = file.data(&mut reader, "") else {
        return Ok(0);
    };
    let item = item.map_err(|error| driver(error, path))?;
    let attribute = item.to_attribute().map_err(|error| driver(error, path))?;
    let mut value = attribute
        .value(&mut reader)
        .map_err(|error| driver(error, path))?;
    super::copy_out(path, out, |buf| {
        value
            .read(&mut reader, buf)
            .map_err(|error| driver(error, path))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nt_times_convert_to_unix() {
        assert_eq!(
            unix_time_of(NT_TO_UNIX_EPOCH + 15 * 10_000_000 + 42),
            (15, 4200)
        );
        assert_eq!(unix_time_of(5), (0, 0));
    }

    struct Zeros;

    impl crate::BlockDevice for Zeros {
        fn size(&self) -> u64 {
            1 << 20
        }

        fn read_at(&self, _offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            buf.fill(0);
            Ok(())
        }
    }

    #[test]
    fn the_read_budget_ends_endless_reads() {
        let slice = DeviceSlice::new(std::sync::Arc::new(Zeros), 0, 1 << 20);
        let mut reader = Budgeted::new(slice, 1000);
        let mut buf = [0u8; 600];
        assert_eq!(reader.read(&mut buf).unwrap(), 600);
        assert_eq!(reader.read(&mut buf).unwrap(), 400);
        reader.seek(SeekFrom::Start(0)).unwrap();
        assert!(reader.read(&mut buf).is_err());
    }
}
