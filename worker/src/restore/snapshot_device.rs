//! A snapshot's disk seen through the two interfaces other crates read disks with: a
//! synchronous block device for the file system drivers of `haven-files`
//! ([`SnapshotDevice`]: `haven files`, `haven diff`, the boot test's kernel lookup) and
//! an NBD export ([`SnapshotExport`]: `haven serve-nbd`, the boot sandbox).

use haven_files::BlockDevice;
use haven_nbd::{ExportSource, STATE_HOLE, STATE_ZERO};

use crate::restore::snapshot_reader::SnapshotReader;

/// The snapshot reader as a synchronous block device, read from blocking threads.
pub struct SnapshotDevice {
    reader: SnapshotReader,
    handle: tokio::runtime::Handle,
}

impl SnapshotDevice {
    /// The device of `reader`, read from blocking threads through `handle`.
    pub fn new(reader: SnapshotReader, handle: tokio::runtime::Handle) -> Self {
        Self { reader, handle }
    }
}

impl BlockDevice for SnapshotDevice {
    fn size(&self) -> u64 {
        self.reader.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        Ok(self.reader.blocking_read_at(&self.handle, offset, buf)?)
    }
}

/// The snapshot reader as a read-only NBD export, with its zero runs reported as holes.
pub struct SnapshotExport(pub SnapshotReader);

impl ExportSource for SnapshotExport {
    fn size(&self) -> u64 {
        self.0.size()
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        Ok(self.0.read_at(offset, buf).await?)
    }

    fn allocation(&self, offset: u64, length: u32) -> Vec<(u32, u32)> {
        self.0
            .extents(offset, u64::from(length))
            .into_iter()
            .map(|(run, is_zero)| {
                // Runs lie inside the request, whose length is a u32.
                let flags = if is_zero { STATE_HOLE | STATE_ZERO } else { 0 };
                (run as u32, flags)
            })
            .collect()
    }
}
