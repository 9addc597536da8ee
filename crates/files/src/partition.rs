//! Partition tables: GPT, MBR, or a bare file system spanning the whole disk.
//!
//! 512-byte logical sectors are assumed (what QEMU disks use). MBR extended partitions
//! and volume managers (LVM, MD RAID) are listed by type but not entered.

use crate::device::BlockDevice;
use crate::error::{FilesError, Result};

const SECTOR: u64 = 512;
/// More GPT entries than any real table has (the default is 128).
const MAX_GPT_ENTRIES: u32 = 1024;

/// How a partition was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionScheme {
    /// A GUID partition table entry.
    Gpt,
    /// A primary MBR entry.
    Mbr,
    /// No table: the whole disk is one file system.
    Whole,
}

/// One partition (or the whole disk).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based number in its table; 0 for a whole disk.
    pub number: u32,
    /// First byte on the disk.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Table kind.
    pub scheme: PartitionScheme,
    /// Type: a GPT type GUID or an MBR type byte in hex.
    pub type_id: String,
    /// GPT partition name (empty for MBR).
    pub name: String,
}

fn read(device: &dyn BlockDevice, offset: u64, buf: &mut [u8]) -> Result<()> {
    if offset.saturating_add(buf.len() as u64) > device.size() {
        return Err(FilesError::PartitionTable(format!(
            "structure at offset {offset} lies past the disk end {}",
            device.size()
        )));
    }
    device
        .read_at(offset, buf)
        .map_err(|source| FilesError::Read { offset, source })
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32_at(bytes, at)) | (u64::from(u32_at(bytes, at + 4)) << 32)
}

/// Whether a boot sector looks like FAT or NTFS (which also carry 0x55AA).
pub(crate) fn looks_like_boot_sector_fs(sector: &[u8]) -> bool {
    let jump = sector[0] == 0xEB || sector[0] == 0xE9;
    let bytes_per_sector = u16_at(sector, 11);
    jump && bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && (&sector[3..11] == b"NTFS    "
            || &sector[54..59] == b"FAT12"
            || &sector[54..59] == b"FAT16"
            || &sector[82..87] == b"FAT32"
            || &sector[54..57] == b"FAT")
}

/// Reads the partition table, or returns the whole disk as one partition when there is
/// none (a bare file system or an unknown layout).
pub fn partitions(device: &dyn BlockDevice) -> Result<Vec<Partition>> {
    let size = device.size();
    let whole = vec![Partition {
        number: 0,
        start: 0,
        size,
        scheme: PartitionScheme::Whole,
        type_id: String::new(),
        name: String::new(),
    }];
    if size < 2 * SECTOR {
        return Ok(whole);
    }
    let mut mbr = [0u8; 512];
    read(device, 0, &mut mbr)?;
    let mut header = [0u8; 512];
    read(device, SECTOR, &mut header)?;
    if &header[0..8] == b"EFI PART" {
        return gpt(device, &header);
    }
    if mbr[510] != 0x55 || mbr[511] != 0xAA || looks_like_boot_sector_fs(&mbr) {
        return Ok(whole);
    }
    let mut found = Vec::new();
    for index in 0..4 {
        let entry = &mbr[446 + 16 * index..446 + 16 * (index + 1)];
        let kind = entry[4];
        let first = u64::from(u32_at(entry, 8));
        let sectors = u64::from(u32_at(entry, 12));
        if kind == 0 || sectors == 0 {
            continue;
        }
        if kind == 0xEE {
            return Err(FilesError::PartitionTable(
                "protective MBR without a readable GPT header".into(),
            ));
        }
        let start = first * SECTOR;
        let length = sectors * SECTOR;
        if start.saturating_add(length) > size {
            return Err(FilesError::PartitionTable(format!(
                "MBR partition {} ends past the disk end",
                index + 1
            )));
        }
        found.push(Partition {
            number: index as u32 + 1,
            start,
            size: length,
            scheme: PartitionScheme::Mbr,
            type_id: format!("{kind:02x}"),
            name: String::new(),
        });
    }
    if found.is_empty() {
        return Ok(whole);
    }
    Ok(found)
}

fn gpt(device: &dyn BlockDevice, header: &[u8]) -> Result<Vec<Partition>> {
    let size = device.size();
    let entries_lba = u64_at(header, 72);
    let count = u32_at(header, 80);
    let entry_size = u32_at(header, 84);
    if count > MAX_GPT_ENTRIES
        || !(128..=1024).contains(&entry_size)
        || !entry_size.is_multiple_of(8)
    {
        return Err(FilesError::PartitionTable(format!(
            "GPT header claims {count} entries of {entry_size} bytes"
        )));
    }
    let table_len = u64::from(count) * u64::from(entry_size);
    let mut table = vec![0u8; table_len as usize];
    read(device, entries_lba.saturating_mul(SECTOR), &mut table)?;
    let mut found = Vec::new();
    for (index, entry) in table.chunks_exact(entry_size as usize).enumerate() {
        if entry[0..16].iter().all(|&byte| byte == 0) {
            continue;
        }
        let first = u64_at(entry, 32);
        let last = u64_at(entry, 40);
        if last < first || last.saturating_add(1).saturating_mul(SECTOR) > size {
            return Err(FilesError::PartitionTable(format!(
                "GPT partition {} spans sectors {first}..={last}, outside the disk",
                index + 1
            )));
        }
        let name: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|&unit| unit != 0)
            .collect();
        found.push(Partition {
            number: index as u32 + 1,
            start: first * SECTOR,
            size: (last - first + 1) * SECTOR,
            scheme: PartitionScheme::Gpt,
            type_id: guid(&entry[0..16]),
            name: String::from_utf16_lossy(&name),
        });
    }
    Ok(found)
}

/// Formats a GUID stored in its mixed-endian on-disk form.
fn guid(bytes: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32_at(bytes, 0),
        u16_at(bytes, 4),
        u16_at(bytes, 6),
        bytes[8],
        bytes[9],
        bytes[10..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    )
}
