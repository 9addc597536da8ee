//! Disks read in place on the worker's own machine by blocking reads: a raw image
//! ([`crate::pipeline::raw_image`]) and a Hyper-V checkpoint chain
//! ([`crate::pipeline::vhdx`]). The pipeline maps and reads them on its blocking
//! threads, the same threads that then hash each chunk: one copy, no server between.

use haven_nbd::Extent;

use crate::error::Result;

/// A disk read in place.
pub trait LocalDisk: Send + Sync + std::fmt::Debug {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;

    /// Data and hole extents covering `[start, end)` (clipped to the disk), in order,
    /// flagged as NBD's `base:allocation` flags them: holes read as zeros.
    fn allocation(&self, start: u64, end: u64) -> Result<Vec<Extent>>;

    /// Fills `buf` with the disk's bytes at `offset`; a short read is an error.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}
