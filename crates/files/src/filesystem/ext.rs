//! ext2/3/4 through `ext4-view`, which reads lazily through [`DeviceSlice`].

use std::io::Write;

use ext4_view::{Ext4, Ext4Read, Metadata};

use crate::device::DeviceSlice;
use crate::entry::{Entry, EntryKind, Limits, join};
use crate::error::{FilesError, Result};

struct Reader(DeviceSlice);

impl Ext4Read for Reader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Ok(self.0.read_exact_at(start_byte, dst)?)
    }
}

fn driver(error: ext4_view::Ext4Error, path: &str) -> FilesError {
    match error {
        ext4_view::Ext4Error::NotFound => FilesError::NotFound(path.to_string()),
        ext4_view::Ext4Error::NotADirectory => FilesError::not_a_directory(path),
        other => FilesError::driver("ext4", path, other),
    }
}

pub(crate) fn open(slice: DeviceSlice) -> Result<Ext4> {
    Ext4::load(Box::new(Reader(slice))).map_err(|error| driver(error, "superblock"))
}

fn entry(fs: &Ext4, path: &str, name: String, metadata: &Metadata) -> Result<Entry> {
    let file_type = metadata.file_type();
    let kind = if file_type.is_dir() {
        EntryKind::Dir
    } else if file_type.is_symlink() {
        EntryKind::Symlink
    } else if file_type.is_regular_file() {
        EntryKind::File
    } else {
        EntryKind::Special
    };
    let target = if kind == EntryKind::Symlink {
        let target = fs.read_link(path).map_err(|error| driver(error, path))?;
        Some(String::from_utf8_lossy(target.as_ref()).into_owned())
    } else {
        None
    };
    Ok(Entry {
        name,
        path: path.to_string(),
        kind,
        size: metadata.len(),
        mode: Some(u32::from(metadata.mode())),
        uid: Some(metadata.uid()),
        gid: Some(metadata.gid()),
        mtime: Some(metadata.modified().seconds()),
        mtime_nanos: metadata.modified().nanoseconds(),
        atime: Some(metadata.accessed().seconds()),
        target,
    })
}

pub(crate) fn stat(fs: &Ext4, path: &str) -> Result<Entry> {
    let metadata = fs
        .symlink_metadata(path)
        .map_err(|error| driver(error, path))?;
    let name = path.rsplit('/').next().filter(|name| !name.is_empty());
    entry(fs, path, name.unwrap_or("/").to_string(), &metadata)
}

pub(crate) fn list(fs: &Ext4, path: &str, limits: Limits) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for item in fs.read_dir(path).map_err(|error| driver(error, path))? {
        let item = item.map_err(|error| driver(error, path))?;
        let name = item.file_name();
        let name = name
            .as_str()
            .map_err(|_| FilesError::driver("ext4", path, "a name is not utf-8"))?;
        if name == "." || name == ".." {
            continue;
        }
        limits.admit_dir_entry(path, entries.len())?;
        let child = join(path, name);
        let metadata = item.metadata().map_err(|error| driver(error, &child))?;
        entries.push(entry(fs, &child, name.to_string(), &metadata)?);
    }
    Ok(entries)
}

pub(crate) fn copy(fs: &Ext4, path: &str, out: &mut dyn Write) -> Result<u64> {
    let mut file = fs.open(path).map_err(|error| driver(error, path))?;
    super::copy_out(path, out, |buf| {
        file.read_bytes(buf).map_err(|error| driver(error, path))
    })
}
