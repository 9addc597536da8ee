//! The file-system drivers, one module per family, each wrapping a maintained crate
//! behind the same four calls (`open`, `stat`, `list`, `copy`) that [`crate::Volume`]
//! dispatches to. A driver reads through a [`crate::DeviceSlice`] and answers in
//! [`crate::Entry`] values; it knows nothing of volumes or extraction.

pub(crate) mod ext;
pub(crate) mod fat;
pub(crate) mod ntfs;

use std::io::Write;

use crate::error::{FilesError, Result};

/// Copies a file of `path` into `out`, 1 MiB at a time, from `read` (the driver's read
/// into a buffer, 0 at the end); returns the bytes copied.
pub(crate) fn copy_out(
    path: &str,
    out: &mut dyn Write,
    mut read: impl FnMut(&mut [u8]) -> Result<usize>,
) -> Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let count = read(&mut buf)?;
        if count == 0 {
            return Ok(copied);
        }
        out.write_all(&buf[..count])
            .map_err(FilesError::output(format!("writing {path}")))?;
        copied += count as u64;
    }
}
