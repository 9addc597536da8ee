//! A differencing VHDX and its parents read as one disk: the newest link's written
//! sectors over its parent's, down to a disk without parent.
//!
//! Each read walks the BAT of each link by block: a FULLY_PRESENT block is read from the
//! link, a ZERO or UNMAPPED one is zeros, a NOT_PRESENT (or UNDEFINED) one comes from the
//! parent (zeros below the last link), and a PARTIALLY_PRESENT one is split by its sector
//! bitmap into runs read from the link and runs read from the parent. Nothing is cached:
//! a read costs one 8-byte BAT read per block and link (plus the bitmap bytes of a
//! partial block), so memory is the caller's buffer plus one bitmap slice, whatever the
//! disk or chain.

use std::path::{Path, PathBuf};

use super::format::{self, FileSource, FormatError, MAX_FILE_OFFSET, ParentLocator, VhdxLayout};

/// Links a chain may have: Hyper-V allows 50 checkpoints per VM.
pub const MAX_CHAIN_LENGTH: usize = 64;

const MIB: u64 = 1024 * 1024;

/// Why a VHDX chain cannot be read. Each message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A file of the chain is not a VHDX Haven can read.
    #[error("{path}: {source}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: FormatError,
    },
    /// No parent was found where the child's locator says it is.
    #[error(
        "parent of {child} not found (tried {tried}): copy the whole checkpoint chain into one folder"
    )]
    MissingParent {
        /// The child.
        child: String,
        /// Where Haven looked, comma-separated.
        tried: String,
    },
    /// The parent found is not the one the child was made on.
    #[error(
        "{parent} is not the parent {child} was made on: its DataWriteGuid is {found}, the child expects {expected} (the parent was written to after the checkpoint)"
    )]
    ParentMismatch {
        /// The child.
        child: String,
        /// The parent found.
        parent: String,
        /// The parent's DataWriteGuid.
        found: String,
        /// The child's `parent_linkage`.
        expected: String,
    },
    /// A parent does not describe the same disk as its child.
    #[error("{parent} does not match its child {child}: {what}")]
    Incompatible {
        /// The child.
        child: String,
        /// The parent.
        parent: String,
        /// What differs.
        what: String,
    },
    /// More links than [`MAX_CHAIN_LENGTH`] (or a loop).
    #[error("{0}: the checkpoint chain is longer than {MAX_CHAIN_LENGTH} links (or loops)")]
    TooLong(String),
    /// A parent could not be opened.
    #[error("{context}")]
    Open {
        /// What was opened.
        context: String,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One file of a chain.
pub struct Link {
    name: String,
    source: Box<dyn FileSource>,
    layout: VhdxLayout,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// Parses `source`, named `name` in errors.
    pub fn parse(name: String, source: Box<dyn FileSource>) -> Result<Self, ChainError> {
        match format::parse(source.as_ref()) {
            Ok(layout) => Ok(Self {
                name,
                source,
                layout,
            }),
            Err(source) => Err(ChainError::Format { path: name, source }),
        }
    }

    /// The parent locator, for a differencing disk.
    pub fn parent(&self) -> Option<&ParentLocator> {
        self.layout.parent.as_ref()
    }

    fn format_error(&self, source: FormatError) -> ChainError {
        ChainError::Format {
            path: self.name.clone(),
            source,
        }
    }

    /// What the BAT says of payload block `block`.
    fn payload(&self, block: u64) -> Result<Payload, ChainError> {
        let layout = &self.layout;
        let entry = self.bat_entry(block + block / layout.chunk_ratio)?;
        let offset = (entry >> 20) * MIB;
        let data = |offset: u64| {
            if !(MIB..=MAX_FILE_OFFSET).contains(&offset) {
                Err(self.format_error(FormatError::Invalid(format!(
                    "block {block} points outside the file's data area"
                ))))
            } else {
                Ok(offset)
            }
        };
        match entry & 7 {
            0 | 1 => Ok(Payload::Parent),
            2 | 3 => Ok(Payload::Zero),
            6 => Ok(Payload::Data(data(offset)?)),
            7 if layout.parent.is_some() => Ok(Payload::Partial(data(offset)?)),
            state => Err(self.format_error(FormatError::Invalid(format!(
                "block {block} has the invalid state {state}"
            )))),
        }
    }

    /// File offset of the sector bitmap of chunk `chunk` (every `chunk_ratio` blocks).
    fn bitmap(&self, chunk: u64) -> Result<u64, ChainError> {
        let ratio = self.layout.chunk_ratio;
        let entry = self.bat_entry(chunk * (ratio + 1) + ratio)?;
        let offset = (entry >> 20) * MIB;
        if entry & 7 != 6 || !(MIB..=MAX_FILE_OFFSET).contains(&offset) {
            return Err(self.format_error(FormatError::Invalid(format!(
                "a partially present block of chunk {chunk} has no sector bitmap"
            ))));
        }
        Ok(offset)
    }

    fn bat_entry(&self, index: u64) -> Result<u64, ChainError> {
        let mut entry = [0u8; 8];
        self.read(
            self.layout.bat_offset + index * 8,
            &mut entry,
            "a BAT entry",
        )?;
        Ok(u64::from_le_bytes(entry))
    }

    fn read(&self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), ChainError> {
        format::read_into(self.source.as_ref(), offset, buf, what).map_err(|e| self.format_error(e))
    }
}

/// Where one block of one link gets its bytes.
enum Payload {
    /// From the parent (zeros below the last link).
    Parent,
    /// Zeros.
    Zero,
    /// All from this file, the block starting at this offset.
    Data(u64),
    /// Sectors whose bitmap bit is set from this file, the rest from the parent.
    Partial(u64),
}

/// A VHDX and its parents, newest first, checked to belong together.
#[derive(Debug)]
pub struct VhdxChain {
    links: Vec<Link>,
}

impl VhdxChain {
    /// Opens `path` and every parent its locators name, each through `open` (which
    /// locks it, in the worker). A parent is looked for in the child's folder: at the
    /// locator's `relative_path`, then by the file name of its `absolute_win32_path`
    /// and `volume_path` (a chain copied off its host keeps its files together).
    pub fn open<F>(path: &Path, mut open: F) -> Result<Self, ChainError>
    where
        F: FnMut(&Path) -> Result<Box<dyn FileSource>, ChainError>,
    {
        let mut links = vec![Link::parse(path.display().to_string(), open(path)?)?];
        let mut current = path.to_path_buf();
        while let Some(locator) = links.last().and_then(Link::parent).cloned() {
            if links.len() >= MAX_CHAIN_LENGTH {
                return Err(ChainError::TooLong(path.display().to_string()));
            }
            let candidates = parent_candidates(&current, &locator);
            let Some(parent) = candidates.iter().find(|c| c.is_file()).cloned() else {
                let tried: Vec<String> =
                    candidates.iter().map(|c| c.display().to_string()).collect();
                return Err(ChainError::MissingParent {
                    child: current.display().to_string(),
                    tried: if tried.is_empty() {
                        "no path in its locator".into()
                    } else {
                        tried.join(", ")
                    },
                });
            };
            links.push(Link::parse(parent.display().to_string(), open(&parent)?)?);
            current = parent;
        }
        Self::from_links(links)
    }

    /// A chain of links already opened, newest first: each parent must carry the
    /// DataWriteGuid its child names, the same disk size and sector size, and only the
    /// last link may be without parent.
    pub fn from_links(links: Vec<Link>) -> Result<Self, ChainError> {
        if links.len() > MAX_CHAIN_LENGTH {
            return Err(ChainError::TooLong(links[0].name.clone()));
        }
        for pair in links.windows(2) {
            let (child, parent) = (&pair[0], &pair[1]);
            let Some(locator) = child.parent() else {
                return Err(ChainError::Incompatible {
                    child: child.name.clone(),
                    parent: parent.name.clone(),
                    what: "the child is not a differencing disk".into(),
                });
            };
            let found = parent.layout.data_write_guid;
            if locator.linkage != Some(found) && locator.linkage2 != Some(found) {
                return Err(ChainError::ParentMismatch {
                    child: child.name.clone(),
                    parent: parent.name.clone(),
                    found: found.to_string(),
                    expected: locator.linkage.map(|g| g.to_string()).unwrap_or_default(),
                });
            }
            let (a, b) = (&child.layout, &parent.layout);
            let what = if a.virtual_size != b.virtual_size {
                format!("disk sizes {} and {}", a.virtual_size, b.virtual_size)
            } else if a.logical_sector_size != b.logical_sector_size {
                format!(
                    "sector sizes {} and {}",
                    a.logical_sector_size, b.logical_sector_size
                )
            } else {
                continue;
            };
            return Err(ChainError::Incompatible {
                child: child.name.clone(),
                parent: parent.name.clone(),
                what,
            });
        }
        match links.last() {
            Some(last) if last.parent().is_some() => Err(ChainError::MissingParent {
                child: last.name.clone(),
                tried: "nothing".into(),
            }),
            Some(_) => Ok(Self { links }),
            None => Err(ChainError::TooLong(String::new())),
        }
    }

    /// Bytes of the disk.
    pub fn size(&self) -> u64 {
        self.links[0].layout.virtual_size
    }

    /// Files of the chain, newest first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.links.iter().map(|link| link.name.as_str())
    }

    /// Fills `buf` with the merged disk's bytes at `offset`; past the disk's end is an
    /// error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ChainError> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.size()) {
            return Err(self.links[0].format_error(FormatError::Invalid(format!(
                "read of {} bytes at {offset} past the disk's end",
                buf.len()
            ))));
        }
        self.read_link(0, offset, buf)
    }

    /// Areas of `[start, end)` that may hold data (sorted, merged): blocks present in
    /// some link above the first link that answers for them. Everything else reads as
    /// zeros.
    pub fn data_areas(&self, start: u64, end: u64) -> Result<Vec<(u64, u64)>, ChainError> {
        let mut areas = Vec::new();
        self.areas_of_link(0, start, end.min(self.size()), &mut areas)?;
        areas.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(areas.len());
        for (area_start, area_end) in areas {
            match merged.last_mut() {
                Some(last) if last.1 >= area_start => last.1 = last.1.max(area_end),
                _ => merged.push((area_start, area_end)),
            }
        }
        Ok(merged)
    }

    fn areas_of_link(
        &self,
        link: usize,
        start: u64,
        end: u64,
        areas: &mut Vec<(u64, u64)>,
    ) -> Result<(), ChainError> {
        let Some(this) = self.links.get(link) else {
            return Ok(());
        };
        for (block, piece_start, piece_end) in pieces(this.layout.block_size, start, end) {
            match this.payload(block)? {
                Payload::Parent => self.areas_of_link(link + 1, piece_start, piece_end, areas)?,
                Payload::Zero => {}
                Payload::Data(_) | Payload::Partial(_) => areas.push((piece_start, piece_end)),
            }
        }
        Ok(())
    }

    fn read_link(&self, link: usize, offset: u64, buf: &mut [u8]) -> Result<(), ChainError> {
        let Some(this) = self.links.get(link) else {
            buf.fill(0);
            return Ok(());
        };
        let block_size = this.layout.block_size;
        let end = offset + buf.len() as u64;
        for (block, piece_start, piece_end) in pieces(block_size, offset, end) {
            let piece = &mut buf[(piece_start - offset) as usize..(piece_end - offset) as usize];
            let within = piece_start - block * block_size;
            match this.payload(block)? {
                Payload::Parent => self.read_link(link + 1, piece_start, piece)?,
                Payload::Zero => piece.fill(0),
                Payload::Data(file_offset) => {
                    this.read(file_offset + within, piece, "a payload block")?
                }
                Payload::Partial(file_offset) => {
                    self.read_partial(link, block, file_offset, piece_start, piece)?
                }
            }
        }
        Ok(())
    }

    /// A partially present block's piece at `offset`: runs of sectors with their bitmap
    /// bit set from the link, the other runs from its parent.
    fn read_partial(
        &self,
        link: usize,
        block: u64,
        file_offset: u64,
        offset: u64,
        piece: &mut [u8],
    ) -> Result<(), ChainError> {
        let this = &self.links[link];
        let layout = &this.layout;
        let sector = layout.logical_sector_size;
        let chunk = block / layout.chunk_ratio;
        let chunk_start = chunk * layout.chunk_ratio * layout.block_size;
        let first = (offset - chunk_start) / sector;
        let end = offset + piece.len() as u64;
        let last = (end - 1 - chunk_start) / sector;
        let mut bits = vec![0u8; ((last / 8) - (first / 8) + 1) as usize];
        this.read(
            this.bitmap(chunk)? + first / 8,
            &mut bits,
            "a sector bitmap",
        )?;
        let is_set = |sector_index: u64| {
            let bit = sector_index - (first / 8) * 8;
            bits[(bit / 8) as usize] & (1 << (bit % 8)) != 0
        };
        let block_start = block * layout.block_size;
        let mut run_start = offset;
        let mut index = first;
        while run_start < end {
            let set = is_set(index);
            while index <= last && is_set(index) == set {
                index += 1;
            }
            let run_end = (chunk_start + index * sector).min(end);
            let run = &mut piece[(run_start - offset) as usize..(run_end - offset) as usize];
            if set {
                this.read(
                    file_offset + (run_start - block_start),
                    run,
                    "a payload block",
                )?;
            } else {
                self.read_link(link + 1, run_start, run)?;
            }
            run_start = run_end;
        }
        Ok(())
    }
}

/// `[start, end)` cut at block boundaries: (block, piece start, piece end).
fn pieces(block_size: u64, start: u64, end: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let mut position = start;
    std::iter::from_fn(move || {
        if position >= end {
            return None;
        }
        let block = position / block_size;
        let piece_end = ((block + 1) * block_size).min(end);
        let piece = (block, position, piece_end);
        position = piece_end;
        Some(piece)
    })
}

/// Where a parent may be, in the order tried: the relative path from the child's
/// folder, then the file names of the absolute and volume paths in that folder.
fn parent_candidates(child: &Path, locator: &ParentLocator) -> Vec<PathBuf> {
    let folder = child.parent().unwrap_or(Path::new("."));
    let windows_parts = |path: &str| -> Vec<String> {
        path.split(['\\', '/'])
            .filter(|part| !part.is_empty() && *part != ".")
            .map(str::to_string)
            .collect()
    };
    let mut candidates = Vec::new();
    if let Some(relative) = &locator.relative_path {
        let mut path = folder.to_path_buf();
        for part in windows_parts(relative) {
            path.push(part);
        }
        candidates.push(path);
    }
    for absolute in [&locator.absolute_win32_path, &locator.volume_path]
        .into_iter()
        .flatten()
    {
        if let Some(name) = windows_parts(absolute).pop() {
            candidates.push(folder.join(name));
        }
    }
    candidates.dedup();
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_looked_for_beside_the_child() {
        let locator = ParentLocator {
            relative_path: Some(r".\..\disks\base.vhdx".into()),
            absolute_win32_path: Some(r"C:\Hyper-V\base.vhdx".into()),
            volume_path: Some(r"\\?\Volume{0a}\Hyper-V\base.vhdx".into()),
            ..ParentLocator::default()
        };
        let found = parent_candidates(Path::new("/backups/vm/child.avhdx"), &locator);
        assert_eq!(
            found,
            [
                PathBuf::from("/backups/vm/../disks/base.vhdx"),
                PathBuf::from("/backups/vm/base.vhdx"),
            ]
        );
        assert!(parent_candidates(Path::new("c.avhdx"), &ParentLocator::default()).is_empty());
    }

    #[test]
    fn pieces_cut_at_block_boundaries() {
        let got: Vec<_> = pieces(10, 5, 32).collect();
        assert_eq!(got, [(0, 5, 10), (1, 10, 20), (2, 20, 30), (3, 30, 32)]);
        assert_eq!(pieces(10, 7, 7).count(), 0);
    }
}
