//! The VHDX chain reader on a fuzzer's input: up to two files (a child and its parent)
//! described sparsely, so a few bytes can place structures at the megabyte offsets
//! VHDX uses.
//!
//! Input: records of `[file: u8][offset: u32 LE][length: u16 LE][bytes]`; a file is
//! zeros where no record wrote (later records win) and ends at its last record. Before
//! parsing, the CRC-32C of each header and region table that carries its signature is
//! set, so mutations reach the structures behind the checksums.

use crate::pipeline::vhdx::{CRC32C, FileSource, Link, VhdxChain};

/// Largest disk range the target maps and reads, so a 64 TiB disk cannot hang it.
const WINDOW: u64 = 64 << 20;

/// A file held as records of bytes at offsets.
#[derive(Default)]
struct SparseFile {
    records: Vec<(u64, Vec<u8>)>,
    len: u64,
}

impl SparseFile {
    fn write(&mut self, offset: u64, bytes: Vec<u8>) {
        self.len = self.len.max(offset + bytes.len() as u64);
        self.records.push((offset, bytes));
    }

    fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = offset + buf.len() as u64;
        for (start, bytes) in &self.records {
            let stop = start + bytes.len() as u64;
            if stop <= offset || *start >= end {
                continue;
            }
            let from = offset.max(*start);
            let to = end.min(stop);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - start) as usize..(to - start) as usize]);
        }
    }

    /// Sets the CRC-32C (bytes 4..8) of the `size`-byte structure at `offset` if it
    /// starts with `signature`.
    fn seal(&mut self, offset: u64, size: usize, signature: &[u8]) {
        if self.len < offset + size as u64 {
            return;
        }
        let mut structure = vec![0u8; size];
        self.read(offset, &mut structure);
        if !structure.starts_with(signature) {
            return;
        }
        structure[4..8].fill(0);
        let crc = CRC32C.checksum(&structure);
        self.write(offset + 4, crc.to_le_bytes().to_vec());
    }
}

impl FileSource for SparseFile {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.len) {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.read(offset, buf);
        Ok(())
    }
}

/// Decodes the two files of `data`.
fn files(mut data: &[u8]) -> [SparseFile; 2] {
    let mut files = [SparseFile::default(), SparseFile::default()];
    while let [file, a, b, c, d, e, f, rest @ ..] = data {
        let offset = u64::from(u32::from_le_bytes([*a, *b, *c, *d]));
        let length = usize::from(u16::from_le_bytes([*e, *f])).min(rest.len());
        files[usize::from(file & 1)].write(offset, rest[..length].to_vec());
        data = &rest[length..];
    }
    for file in &mut files {
        for offset in [64 << 10, 128 << 10] {
            file.seal(offset, 4 << 10, b"head");
        }
        for offset in [192 << 10, 256 << 10] {
            file.seal(offset, 64 << 10, b"regi");
        }
    }
    files
}

/// Parses the files as a chain (the second, when present, as the first's parent),
/// maps the start of the disk and reads its first and last bytes: no panic, no hang,
/// data areas in order and inside what was asked.
pub fn vhdx_chain(data: &[u8]) {
    let [child, parent] = files(data);
    let has_parent = parent.len > 0;
    let mut links = Vec::new();
    for (name, file) in [("child", child), ("parent", parent)] {
        if name == "parent" && !has_parent {
            break;
        }
        match Link::parse(name.into(), Box::new(file)) {
            Ok(link) => links.push(link),
            Err(_) => return,
        }
    }
    let Ok(chain) = VhdxChain::from_links(links) else {
        return;
    };
    let size = chain.size();
    let window = size.min(WINDOW);
    if let Ok(areas) = chain.data_areas(0, window) {
        let mut previous_end = 0;
        for (start, end) in areas {
            assert!(
                previous_end <= start && start < end && end <= window,
                "areas out of order"
            );
            previous_end = end;
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    let first = buf.len().min(window as usize);
    let _ = chain.read_exact_at(0, &mut buf[..first]);
    let tail = 4096.min(size) as usize;
    let _ = chain.read_exact_at(size - tail as u64, &mut buf[..tail]);
    assert!(
        chain.read_exact_at(size, &mut buf[..1]).is_err(),
        "a read past the end"
    );
}
