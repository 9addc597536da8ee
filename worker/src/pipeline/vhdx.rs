//! Hyper-V checkpoint chains (a differencing `.avhdx` and its parents) read in place.
//!
//! QEMU reads a VHDX without parent, so those still go through `qemu-nbd`; but its
//! `vhdx` driver refuses a differencing disk, and a Hyper-V checkpoint leaves exactly
//! that: the VM's writes since the checkpoint in an `.avhdx` over the disk (or an older
//! checkpoint) it was taken on. Haven reads such a chain natively
//! (`docs/decisions/0002-hyper-v-rct.md`), the same way as a raw image: blocking reads
//! on the pipeline's threads, every link locked as QEMU locks images.
//!
//! Invariants:
//! - Each parent is the one its child was made on: its DataWriteGuid is the child's
//!   `parent_linkage`. A parent written to after the checkpoint (its DataWriteGuid
//!   changed) is refused, never read into a disk that never existed.
//! - Memory does not grow with the disk or the chain: no BAT or bitmap is held
//!   ([`chain`]).
//! - Everything read from a file is checked before use ([`format`]): a truncated or
//!   hostile file is a one-line error naming it, never a panic or a huge allocation.

mod chain;
mod format;

use std::path::Path;

use haven_nbd::Extent;

pub use chain::{ChainError, Link, MAX_CHAIN_LENGTH, VhdxChain};
pub use format::{CRC32C, FileSource, FormatError, Guid};

use crate::adapters::image::lock::LockedImage;
use crate::error::{Result, WorkerError};
use crate::pipeline::local_disk::LocalDisk;
use crate::pipeline::ranged::{self, ByteArea};

impl FileSource for LockedImage {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        FileSource::read_exact_at(self.file(), offset, buf)
    }
}

impl From<ChainError> for WorkerError {
    fn from(error: ChainError) -> Self {
        WorkerError::InvalidInput(error.to_string())
    }
}

/// Whether `image` is a VHDX with a parent: then Haven reads it ([`open_chain`]).
/// Files named `.avhdx` must parse, so a damaged checkpoint gets Haven's reason; any
/// other VHDX that Haven cannot parse (a log to replay, say) is left to QEMU.
pub fn is_differencing(image: &LockedImage) -> Result<bool> {
    if !format::is_vhdx(image).map_err(|e| ChainError::Format {
        path: image.path().display().to_string(),
        source: e,
    })? {
        return Ok(false);
    }
    let named_avhdx = image
        .path()
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("avhdx"));
    match format::parse(image) {
        Ok(layout) => Ok(layout.parent.is_some()),
        Err(_) if !named_avhdx => Ok(false),
        Err(source) => Err(ChainError::Format {
            path: image.path().display().to_string(),
            source,
        }
        .into()),
    }
}

/// Opens the chain of `child` (already locked), locking each parent in turn.
pub fn open_chain(child: LockedImage) -> Result<VhdxChain> {
    let path = child.path().to_path_buf();
    let mut child = Some(child);
    let chain = VhdxChain::open(&path, |link: &Path| {
        let image = match child.take() {
            Some(image) => image,
            None => LockedImage::open(link).map_err(|error| ChainError::Open {
                context: error.chain(),
                source: Box::new(error),
            })?,
        };
        Ok(Box::new(image) as Box<dyn FileSource>)
    })?;
    Ok(chain)
}

impl LocalDisk for VhdxChain {
    fn size(&self) -> u64 {
        VhdxChain::size(self)
    }

    fn allocation(&self, start: u64, end: u64) -> Result<Vec<Extent>> {
        let end = end.min(self.size());
        if start >= end {
            return Ok(Vec::new());
        }
        let areas: Vec<ByteArea> = self
            .data_areas(start, end)?
            .into_iter()
            .map(|(start, end)| ByteArea {
                start,
                length: end - start,
            })
            .collect();
        let (inside, outside) = ranged::ALLOCATION;
        Ok(ranged::extents(&areas, start, end, inside, outside))
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        Ok(VhdxChain::read_exact_at(self, offset, buf)?)
    }
}
