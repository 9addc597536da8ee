//! FAT12/16/32 through `fatfs`, read through a [`DeviceSlice`] that refuses writes.

use std::io::{Read, Write};

use fatfs::{Dir, FileSystem, FsOptions};

use crate::device::DeviceSlice;
use crate::entry::{Entry, EntryKind, Limits, join};
use crate::error::{FilesError, Result};

type Fs = FileSystem<DeviceSlice>;

fn driver(error: std::io::Error, path: &str) -> FilesError {
    match error.kind() {
        std::io::ErrorKind::NotFound => FilesError::NotFound(path.to_string()),
        _ => FilesError::driver("fat", path, error),
    }
}

pub(crate) fn open(slice: DeviceSlice) -> Result<Fs> {
    FileSystem::new(slice, FsOptions::new()).map_err(|error| driver(error, "boot sector"))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// FAT stores local time without a zone; it is taken as UTC.
fn unix_time(date: fatfs::Date, hour: u16, minute: u16, second: u16) -> i64 {
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second)
}

fn entry(item: &fatfs::DirEntry<'_, DeviceSlice>, path: String) -> Entry {
    let modified = item.modified();
    let accessed = item.accessed();
    let kind = if item.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    Entry {
        name: item.file_name(),
        path,
        kind,
        size: if kind == EntryKind::Dir {
            0
        } else {
            item.len()
        },
        mode: None,
        uid: None,
        gid: None,
        mtime: Some(unix_time(
            modified.date,
            modified.time.hour,
            modified.time.min,
            modified.time.sec,
        )),
        mtime_nanos: u32::from(modified.time.millis) * 1_000_000,
        atime: Some(unix_time(accessed, 0, 0, 0)),
        target: None,
    }
}

fn directory<'a>(fs: &'a Fs, path: &str) -> Result<Dir<'a, DeviceSlice>> {
    let root = fs.root_dir();
    if path == "/" {
        return Ok(root);
    }
    root.open_dir(path.trim_start_matches('/'))
        .map_err(|error| driver(error, path))
}

pub(crate) fn stat(fs: &Fs, path: &str) -> Result<Entry> {
    if path == "/" {
        return Ok(Entry {
            name: "/".into(),
            path: "/".into(),
            kind: EntryKind::Dir,
            size: 0,
            mode: None,
            uid: None,
            gid: None,
            mtime: None,
            mtime_nanos: 0,
            atime: None,
            target: None,
        });
    }
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let parent = if parent.is_empty() { "/" } else { parent };
    for item in directory(fs, parent)?.iter() {
        let item = item.map_err(|error| driver(error, parent))?;
        if item.file_name().eq_ignore_ascii_case(name) {
            return Ok(entry(&item, join(parent, &item.file_name())));
        }
    }
    Err(FilesError::NotFound(path.to_string()))
}

pub(crate) fn list(fs: &Fs, path: &str, limits: Limits) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for item in directory(fs, path)?.iter() {
        let item = item.map_err(|error| driver(error, path))?;
        let name = item.file_name();
        if name == "." || name == ".." {
            continue;
        }
        limits.admit_dir_entry(path, entries.len())?;
        entries.push(entry(&item, join(path, &name)));
    }
    Ok(entries)
}

pub(crate) fn copy(fs: &Fs, path: &str, out: &mut dyn Write) -> Result<u64> {
    let mut file = fs
        .root_dir()
        .open_file(path.trim_start_matches('/'))
        .map_err(|error| driver(error, path))?;
    super::copy_out(path, out, |buf| {
        file.read(buf).map_err(|error| driver(error, path))
    })
}
