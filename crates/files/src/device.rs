//! The disk as the drivers see it: positional, read-only, bounds-checked.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A read-only disk with random access. Haven implements it over a snapshot; tests
/// may implement it over a file.
pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; the range lies inside the device.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl BlockDevice for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|metadata| metadata.len()).unwrap_or(0)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// A window `[start, start + len)` of a device (a partition), with a cursor for drivers
/// that want `Read + Seek`.
#[derive(Clone)]
pub struct DeviceSlice {
    device: Arc<dyn BlockDevice>,
    start: u64,
    len: u64,
    position: u64,
}

impl DeviceSlice {
    /// A window of `device`; clamped to the device's end.
    pub fn new(device: Arc<dyn BlockDevice>, start: u64, len: u64) -> Self {
        let size = device.size();
        let start = start.min(size);
        let len = len.min(size - start);
        Self {
            device,
            start,
            len,
            position: 0,
        }
    }

    /// Length of the window.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads exactly `buf.len()` bytes at `offset` inside the window.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {} bytes at {offset} past the end of a {} byte volume",
                    buf.len(),
                    self.len
                ),
            ));
        }
        self.device.read_at(self.start + offset, buf)
    }
}

impl Read for DeviceSlice {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let available = self.len.saturating_sub(self.position);
        let count = (buf.len() as u64).min(available) as usize;
        if count == 0 {
            return Ok(0);
        }
        self.read_exact_at(self.position, &mut buf[..count])?;
        self.position += count as u64;
        Ok(count)
    }
}

impl Seek for DeviceSlice {
    fn seek(&mut self, from: SeekFrom) -> std::io::Result<u64> {
        let target = match from {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let target = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek out of range")
        })?;
        self.position = target;
        Ok(target)
    }
}

/// Writes are refused: restores never modify the backup.
impl Write for DeviceSlice {
    fn write(&mut self, _buf: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the backed-up disk is read-only",
        ))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
