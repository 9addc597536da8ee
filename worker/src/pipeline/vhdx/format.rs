//! One VHDX file's structures (MS-VHDX 2.0), parsed from a [`FileSource`] with every
//! field checked: nothing read from the file sizes an allocation beyond
//! [`MAX_METADATA_ITEM`], and every offset is checked before it is used.
//!
//! ```text
//! 0        file type identifier   "vhdxfile"
//! 64 KiB   header 1               "head", CRC-32C, sequence number, DataWriteGuid, log
//! 128 KiB  header 2               the current header is the valid one with the higher sequence
//! 192 KiB  region table 1         "regi", CRC-32C over 64 KiB: where the BAT and metadata are
//! 256 KiB  region table 2         the same table, used when the first one is damaged
//! metadata region                 table of items: file parameters (block size, HasParent),
//!                                 virtual disk size, page 83 data, sector sizes, parent locator
//! BAT                             one entry per payload block, and after every `chunk ratio`
//!                                 of them one entry for a 1 MiB sector bitmap block
//! ```

use std::fmt;

/// Reads of one file by offset; a read past the end is an `UnexpectedEof` error.
pub trait FileSource: Send + Sync {
    /// Fills `buf` with the file's bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl FileSource for std::fs::File {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SIGNATURE: &[u8; 8] = b"vhdxfile";
const HEADER_OFFSETS: [u64; 2] = [64 * KIB, 128 * KIB];
const HEADER_SIZE: usize = 4 * KIB as usize;
const REGION_TABLE_OFFSETS: [u64; 2] = [192 * KIB, 256 * KIB];
const REGION_TABLE_SIZE: usize = 64 * KIB as usize;
const METADATA_TABLE_SIZE: usize = 64 * KIB as usize;
/// Entries a region table or metadata table may have (MS-VHDX 2.2.2, 2.6.1).
const MAX_TABLE_ENTRIES: usize = 2047;
/// Largest metadata item read (the specification's limit, 2.6.1.2).
pub const MAX_METADATA_ITEM: u32 = MIB as u32;
/// Largest offset a region or block may start at: far beyond any real file, and small
/// enough that adding a block's length to it cannot overflow.
pub const MAX_FILE_OFFSET: u64 = 1 << 60;
/// Largest virtual disk of the specification.
const MAX_VIRTUAL_SIZE: u64 = 64 << 40;

const BAT_REGION: Guid = Guid(0x2DC27766_F623_4200_9D64_115E9BFD4A08);
const METADATA_REGION: Guid = Guid(0x8B7CA206_4790_4B9A_B8FE_575F050F886E);
const FILE_PARAMETERS: Guid = Guid(0xCAA16737_FA36_4D43_B3B6_33F0AA44E76B);
const VIRTUAL_DISK_SIZE: Guid = Guid(0x2FA54224_CD1B_4876_B211_5DBED83BF4B8);
const PAGE_83_DATA: Guid = Guid(0xBECA12AB_B2E6_4523_93EF_C309E000C746);
const LOGICAL_SECTOR_SIZE: Guid = Guid(0x8141BF1D_A96F_4709_BA47_F233A8FAAB5F);
const PHYSICAL_SECTOR_SIZE: Guid = Guid(0xCDA348C7_445D_4471_9CC9_E9885251C556);
const PARENT_LOCATOR: Guid = Guid(0xA8D35F2D_B30B_454D_ABF7_D3D84834AB0C);
const VHDX_LOCATOR_TYPE: Guid = Guid(0xB04AEFB7_D19E_4A81_B789_25B8E9445913);

/// Why a file is not a VHDX Haven can read; the message names what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not hold what the specification requires.
    #[error("{0}")]
    Invalid(String),
    /// A read failed; `UnexpectedEof` means the file is truncated.
    #[error("{context}")]
    Io {
        /// What was read.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// A result of this module.
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

fn invalid<T>(message: impl Into<String>) -> Result<T> {
    Err(FormatError::Invalid(message.into()))
}

/// Reads `len` bytes at `offset`, naming `what` in the error.
pub fn read_bytes(source: &dyn FileSource, offset: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_into(source, offset, &mut buf, what)?;
    Ok(buf)
}

/// Fills `buf` from `offset`, naming `what` in the error.
pub fn read_into(source: &dyn FileSource, offset: u64, buf: &mut [u8], what: &str) -> Result<()> {
    source
        .read_exact_at(offset, buf)
        .map_err(|source| FormatError::Io {
            context: if source.kind() == std::io::ErrorKind::UnexpectedEof {
                format!("truncated: {what} at byte {offset} is past the end of the file")
            } else {
                format!("cannot read {what} at byte {offset}")
            },
            source,
        })
}

/// A GUID, held in its textual order (`{00112233-4455-6677-8899-aabbccddeeff}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub u128);

impl Guid {
    /// The mixed-endian on-disk form: three little-endian fields, then eight bytes.
    pub fn from_disk(bytes: &[u8; 16]) -> Self {
        let [a, b, c, d, e, f, g, h, rest @ ..] = *bytes;
        let first = u128::from(u32::from_le_bytes([a, b, c, d]));
        let second = u128::from(u16::from_le_bytes([e, f]));
        let third = u128::from(u16::from_le_bytes([g, h]));
        let last = u128::from(u64::from_be_bytes(rest));
        Guid((first << 96) | (second << 80) | (third << 64) | last)
    }

    /// `{...}` or bare textual form, any case.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .unwrap_or(text);
        let groups: Vec<&str> = text.split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] || !text.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(&groups.concat(), 16).ok().map(Guid)
    }

    fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            value >> 96,
            (value >> 80) & 0xffff,
            (value >> 64) & 0xffff,
            (value >> 48) & 0xffff,
            value & 0xffff_ffff_ffff
        )
    }
}

/// Where a differencing disk says its parent is (the VHDX parent locator's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentLocator {
    /// `parent_linkage`: the parent's DataWriteGuid when the child was made.
    pub linkage: Option<Guid>,
    /// `parent_linkage2`: a second accepted DataWriteGuid.
    pub linkage2: Option<Guid>,
    /// `relative_path`, Windows-style, relative to the child's folder.
    pub relative_path: Option<String>,
    /// `volume_path`, `\\?\Volume{...}\...`.
    pub volume_path: Option<String>,
    /// `absolute_win32_path`, `C:\...`.
    pub absolute_win32_path: Option<String>,
}

/// What Haven needs of one VHDX file to read its disk.
#[derive(Debug, Clone)]
pub struct VhdxLayout {
    /// The current header's DataWriteGuid: a child's `parent_linkage` names it.
    pub data_write_guid: Guid,
    /// Bytes of the virtual disk.
    pub virtual_size: u64,
    /// Bytes per payload block.
    pub block_size: u64,
    /// Bytes per logical sector, the unit of a sector bitmap's bits.
    pub logical_sector_size: u64,
    /// Payload blocks per sector bitmap block.
    pub chunk_ratio: u64,
    /// Where the BAT starts in the file.
    pub bat_offset: u64,
    /// The parent locator, for a differencing disk.
    pub parent: Option<ParentLocator>,
}

/// Checks the file type identifier, then parses the current header, a region table,
/// and the metadata. A differencing disk without a usable parent locator is refused.
pub fn parse(source: &dyn FileSource) -> Result<VhdxLayout> {
    if !is_vhdx(source)? {
        return invalid("not a VHDX file (no \"vhdxfile\" signature)");
    }
    let data_write_guid = current_header(source)?;
    let regions = region_table(source)?;
    let metadata = metadata(source, regions.metadata)?;
    let chunk_ratio = (1u64 << 23) * metadata.logical_sector_size / metadata.block_size;
    let blocks = metadata.virtual_size.div_ceil(metadata.block_size);
    let bat_entries = if metadata.parent.is_some() {
        blocks.div_ceil(chunk_ratio) * (chunk_ratio + 1)
    } else {
        blocks + blocks.saturating_sub(1) / chunk_ratio
    };
    if regions.bat.1 < bat_entries * 8 {
        return invalid(format!(
            "BAT region of {} bytes is too small for {bat_entries} entries",
            regions.bat.1
        ));
    }
    Ok(VhdxLayout {
        data_write_guid,
        virtual_size: metadata.virtual_size,
        block_size: metadata.block_size,
        logical_sector_size: metadata.logical_sector_size,
        chunk_ratio,
        bat_offset: regions.bat.0,
        parent: metadata.parent,
    })
}

/// Whether the file starts with the VHDX file type identifier.
pub fn is_vhdx(source: &dyn FileSource) -> Result<bool> {
    let mut signature = [0u8; 8];
    match source.read_exact_at(0, &mut signature) {
        Ok(()) => Ok(&signature == SIGNATURE),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(FormatError::Io {
            context: "cannot read the file type identifier".into(),
            source,
        }),
    }
}

/// The DataWriteGuid of the valid header with the higher sequence number. A header
/// with a log to replay is refused: its data is not what the disk holds until the log
/// is replayed, which only Hyper-V (or QEMU, for a disk without parent) does.
fn current_header(source: &dyn FileSource) -> Result<Guid> {
    let mut best: Option<(u64, [u8; HEADER_SIZE])> = None;
    for offset in HEADER_OFFSETS {
        let mut header = [0u8; HEADER_SIZE];
        read_into(source, offset, &mut header, "a header")?;
        if &header[..4] != b"head" || !checksum_holds(&header) {
            continue;
        }
        let sequence = le_u64(&header, 8);
        if best.as_ref().is_none_or(|(best, _)| sequence > *best) {
            best = Some((sequence, header));
        }
    }
    let Some((_, header)) = best else {
        return invalid("neither header is valid (signature or CRC-32C)");
    };
    let version = le_u16(&header, 66);
    if version != 1 {
        return invalid(format!("header version {version} is not supported (1 is)"));
    }
    if !guid_at(&header, 48).is_zero() {
        return invalid(
            "the file was not closed cleanly: its log must be replayed by Hyper-V first",
        );
    }
    Ok(guid_at(&header, 32))
}

/// Offsets and lengths of the two regions Haven reads.
struct Regions {
    bat: (u64, u64),
    metadata: (u64, u64),
}

/// The first region table with a valid checksum; every required region must be known.
fn region_table(source: &dyn FileSource) -> Result<Regions> {
    let mut table = vec![0u8; REGION_TABLE_SIZE];
    let mut found = false;
    for offset in REGION_TABLE_OFFSETS {
        read_into(source, offset, &mut table, "a region table")?;
        if &table[..4] == b"regi" && checksum_holds(&table) {
            found = true;
            break;
        }
    }
    if !found {
        return invalid("neither region table is valid (signature or CRC-32C)");
    }
    let count = le_u32(&table, 8) as usize;
    if count > MAX_TABLE_ENTRIES {
        return invalid(format!(
            "region table has {count} entries (at most {MAX_TABLE_ENTRIES})"
        ));
    }
    let (mut bat, mut metadata) = (None, None);
    for entry in table[16..].chunks_exact(32).take(count) {
        let guid = guid_at(entry, 0);
        let (offset, length) = (le_u64(entry, 16), u64::from(le_u32(entry, 24)));
        let required = le_u32(entry, 28) & 1 == 1;
        let slot = match guid {
            BAT_REGION => &mut bat,
            METADATA_REGION => &mut metadata,
            _ if required => return invalid(format!("unknown required region {guid}")),
            _ => continue,
        };
        if !(MIB..=MAX_FILE_OFFSET).contains(&offset)
            || offset % MIB != 0
            || length % MIB != 0
            || length == 0
        {
            return invalid(format!(
                "region {guid} at byte {offset} of {length} bytes is not aligned to 1 MiB"
            ));
        }
        *slot = Some((offset, length));
    }
    match (bat, metadata) {
        (Some(bat), Some(metadata)) => Ok(Regions { bat, metadata }),
        _ => invalid("the region table lacks the BAT or the metadata region"),
    }
}

/// The metadata items Haven reads.
struct Metadata {
    block_size: u64,
    virtual_size: u64,
    logical_sector_size: u64,
    parent: Option<ParentLocator>,
}

fn metadata(source: &dyn FileSource, (region, length): (u64, u64)) -> Result<Metadata> {
    let table = read_bytes(source, region, METADATA_TABLE_SIZE, "the metadata table")?;
    if &table[..8] != b"metadata" {
        return invalid("the metadata table has no \"metadata\" signature");
    }
    let count = usize::from(le_u16(&table, 10));
    if count > MAX_TABLE_ENTRIES {
        return invalid(format!(
            "metadata table has {count} entries (at most {MAX_TABLE_ENTRIES})"
        ));
    }
    let mut file_parameters = None;
    let mut virtual_size = None;
    let mut logical_sector_size = None;
    let mut physical_sector_size = None;
    let mut page_83 = false;
    let mut locator = None;
    for entry in table[32..].chunks_exact(32).take(count) {
        let guid = guid_at(entry, 0);
        let (offset, item_length) = (le_u32(entry, 16), le_u32(entry, 20));
        let required = le_u32(entry, 24) & 4 != 0;
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE_83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
            PARENT_LOCATOR,
        ];
        if !known.contains(&guid) {
            if required {
                return invalid(format!("unknown required metadata item {guid}"));
            }
            continue;
        }
        let end = u64::from(offset) + u64::from(item_length);
        if u64::from(offset) < METADATA_TABLE_SIZE as u64
            || end > length
            || item_length > MAX_METADATA_ITEM
        {
            return invalid(format!(
                "metadata item {guid} at {offset} of {item_length} bytes lies outside its region"
            ));
        }
        let item = read_bytes(
            source,
            region + u64::from(offset),
            item_length as usize,
            "a metadata item",
        )?;
        let fixed = |size: usize| -> Result<&[u8]> {
            item.get(..size).map_or_else(
                || invalid(format!("metadata item {guid} is shorter than {size} bytes")),
                Ok,
            )
        };
        match guid {
            FILE_PARAMETERS => {
                let bytes = fixed(8)?;
                file_parameters = Some((le_u32(bytes, 0), le_u32(bytes, 4)));
            }
            VIRTUAL_DISK_SIZE => virtual_size = Some(le_u64(fixed(8)?, 0)),
            PAGE_83_DATA => page_83 = fixed(16).is_ok(),
            LOGICAL_SECTOR_SIZE => logical_sector_size = Some(le_u32(fixed(4)?, 0)),
            PHYSICAL_SECTOR_SIZE => physical_sector_size = Some(le_u32(fixed(4)?, 0)),
            _ => locator = Some(parent_locator(&item)?),
        }
    }
    let (Some((block_size, flags)), Some(virtual_size), Some(logical), Some(physical), true) = (
        file_parameters,
        virtual_size,
        logical_sector_size,
        physical_sector_size,
        page_83,
    ) else {
        return invalid(
            "a required metadata item is missing (file parameters, virtual disk size, page 83 data or sector sizes)",
        );
    };
    if !(MIB..=256 * MIB).contains(&u64::from(block_size)) || !block_size.is_power_of_two() {
        return invalid(format!(
            "block size {block_size} is not a power of two from 1 to 256 MiB"
        ));
    }
    if ![512, 4096].contains(&logical) || ![512, 4096].contains(&physical) {
        return invalid(format!(
            "sector sizes {logical}/{physical} are not 512 or 4096"
        ));
    }
    let logical = u64::from(logical);
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || virtual_size % logical != 0 {
        return invalid(format!(
            "virtual disk size {virtual_size} is not a whole number of sectors up to 64 TiB"
        ));
    }
    let has_parent = flags & 2 != 0;
    let parent = match (has_parent, locator) {
        (false, _) => None,
        (true, Some(locator)) => Some(locator),
        (true, None) => return invalid("a differencing disk without a parent locator"),
    };
    Ok(Metadata {
        block_size: u64::from(block_size),
        virtual_size,
        logical_sector_size: logical,
        parent,
    })
}

/// The parent locator item: a VHDX locator type, then UTF-16 key/value pairs.
fn parent_locator(item: &[u8]) -> Result<ParentLocator> {
    if item.len() < 20 {
        return invalid("the parent locator is shorter than its header");
    }
    let kind = guid_at(item, 0);
    if kind != VHDX_LOCATOR_TYPE {
        return invalid(format!("parent locator type {kind} is not VHDX's"));
    }
    let count = usize::from(le_u16(item, 18));
    let entries = item.get(20..20 + 12 * count).ok_or_else(|| {
        FormatError::Invalid(format!(
            "the parent locator's {count} entries do not fit in it"
        ))
    })?;
    let text = |offset: u32, length: u16| -> Result<String> {
        let start = offset as usize;
        let bytes = item
            .get(start..start + usize::from(length))
            .filter(|bytes| bytes.len() % 2 == 0)
            .ok_or_else(|| FormatError::Invalid("a parent locator entry lies outside it".into()))?;
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect();
        String::from_utf16(&units)
            .map_err(|_| FormatError::Invalid("a parent locator entry is not UTF-16".into()))
    };
    let mut locator = ParentLocator::default();
    for entry in entries.chunks_exact(12) {
        let key = text(le_u32(entry, 0), le_u16(entry, 8))?;
        let value = text(le_u32(entry, 4), le_u16(entry, 10))?;
        let linkage = || {
            Guid::parse(&value)
                .ok_or_else(|| FormatError::Invalid(format!("{key} {value:?} is not a GUID")))
        };
        match key.as_str() {
            "parent_linkage" => locator.linkage = Some(linkage()?),
            "parent_linkage2" => locator.linkage2 = Some(linkage()?),
            "relative_path" => locator.relative_path = Some(value),
            "volume_path" => locator.volume_path = Some(value),
            "absolute_win32_path" => locator.absolute_win32_path = Some(value),
            _ => {}
        }
    }
    if locator.linkage.is_none() {
        return invalid("the parent locator has no parent_linkage");
    }
    Ok(locator)
}

/// Whether a header or region table's CRC-32C (bytes 4..8, computed with them zero)
/// holds.
fn checksum_holds(structure: &[u8]) -> bool {
    let stored = le_u32(structure, 4);
    let mut digest = CRC32C.digest();
    digest.update(&structure[..4]);
    digest.update(&[0; 4]);
    digest.update(&structure[8..]);
    digest.finalize() == stored
}

/// CRC-32C (Castagnoli), the checksum MS-VHDX puts in headers and region tables.
pub const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn guid_at(bytes: &[u8], offset: usize) -> Guid {
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&bytes[offset..offset + 16]);
    Guid::from_disk(&guid)
}

fn le_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn le_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut value = [0u8; 4];
    value.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(value)
}

/// A little-endian `u64` at `offset` of `bytes` (which must hold it).
pub fn le_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut value = [0u8; 8];
    value.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_guids_match_their_references() {
        // RFC 3720's check value.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        let disk = [
            0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
            0x4A, 0x08,
        ];
        assert_eq!(Guid::from_disk(&disk), BAT_REGION);
        assert_eq!(
            BAT_REGION.to_string(),
            "2dc27766-f623-4200-9d64-115e9bfd4a08"
        );
        assert_eq!(
            Guid::parse("{2DC27766-F623-4200-9D64-115E9BFD4A08}"),
            Some(BAT_REGION)
        );
        for bad in [
            "",
            "{}",
            "2dc27766f62342009d64115e9bfd4a08",
            "2dc27766-f623-4200-9d64-115e9bfd4a0g",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_files_are_refused_with_a_reason() {
        let empty: &[u8] = &[];
        let error = parse(&Bytes(empty)).unwrap_err().to_string();
        assert!(error.contains("not a VHDX"), "{error}");
        let mut file = vec![0u8; 100];
        file[..8].copy_from_slice(SIGNATURE);
        let error = parse(&Bytes(&file)).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        file.resize(320 * KIB as usize, 0);
        let error = parse(&Bytes(&file)).unwrap_err().to_string();
        assert!(error.contains("neither header"), "{error}");
    }

    /// A file held in memory.
    struct Bytes<'a>(&'a [u8]);

    impl FileSource for Bytes<'_> {
        fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let start = usize::try_from(offset).map_err(std::io::Error::other)?;
            let bytes = start
                .checked_add(buf.len())
                .and_then(|end| self.0.get(start..end))
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(bytes);
            Ok(())
        }
    }
}
