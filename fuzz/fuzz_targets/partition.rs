//! Partition tables of a restored disk for file-level restore: MBR (with extended
//! partitions), GPT, or a bare file system (`haven-files`). Every partition found lies
//! inside the disk.
#![no_main]

use haven_files::{BlockDevice, partitions};

/// The fuzzer's bytes as a disk.
struct Disk<'a>(&'a [u8]);

impl BlockDevice for Disk<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let bytes = start
            .checked_add(buf.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| std::io::Error::other("read past the end of the disk"))?;
        buf.copy_from_slice(bytes);
        Ok(())
    }
}

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("partition"),
    |data: &[u8]| {
        let disk = Disk(data);
        if let Ok(found) = partitions(&disk) {
            for partition in found {
                let end = partition.start.checked_add(partition.size);
                assert!(
                    end.is_some_and(|end| end <= disk.size()),
                    "a partition outside the disk: {partition:?}"
                );
            }
        }
    }
);
