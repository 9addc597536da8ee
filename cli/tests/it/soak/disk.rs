//! The soak's disks: sparse raw images changed between backups by random writes,
//! copies of data to other places (chunks other VMs and rounds share) and punched
//! holes, and the byte model of each state a backup was started on.

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::support::image::{noise, raw_image};

use super::rng::Rng;

/// The repository's chunk size in the soak (the smallest allowed, for many chunks).
pub const CHUNK: u64 = 64 * 1024;
/// Size of every disk: not a multiple of the chunk size, so the tail chunk is short.
pub const DISK_SIZE: u64 = 4 * 1024 * 1024 + 20 * 1024;
/// Distinct noise patterns written: few, so that chunks recur across VMs and rounds
/// and backups find chunks a pruned snapshot left to the collector.
const PATTERNS: u64 = 24;

/// The SHA-256 of a disk's bytes: a snapshot's identity in the soak's ledger.
pub type Digest = [u8; 32];

/// A VM's disk image.
pub struct Disk {
    /// The VM's name.
    pub vm: String,
    /// The raw image backed up.
    pub image: PathBuf,
}

impl Disk {
    /// A new sparse image with a few extents of data.
    pub fn create(dir: &Path, vm: &str, rng: &mut Rng) -> Self {
        let image = dir.join(format!("{vm}.raw"));
        let extents: Vec<(u64, usize)> = (0..3)
            .map(|_| (rng.below(DISK_SIZE / CHUNK) * CHUNK, CHUNK as usize * 3))
            .filter(|(offset, len)| offset + *len as u64 <= DISK_SIZE)
            .collect();
        raw_image(&image, DISK_SIZE, &extents);
        Self {
            vm: vm.to_owned(),
            image,
        }
    }

    /// Changes between one and six ranges: noise at a chunk boundary (whole chunks of
    /// a few shared patterns), noise at any offset, a copy of another range, or a hole.
    pub fn change(&self, rng: &mut Rng) {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.image)
            .expect("open the disk");
        for _ in 0..1 + rng.below(6) {
            let len = 1 + rng.below(3 * CHUNK);
            let offset = rng.below(DISK_SIZE - len);
            match rng.below(4) {
                0 => {
                    let chunks = 1 + rng.below(3);
                    let offset = rng.below(DISK_SIZE / CHUNK - chunks) * CHUNK;
                    let pattern = noise(100 + rng.below(PATTERNS), (chunks * CHUNK) as usize);
                    file.write_all_at(&pattern, offset).expect("write");
                }
                1 => {
                    let bytes = noise(rng.bits(), len as usize);
                    file.write_all_at(&bytes, offset).expect("write");
                }
                2 => {
                    let mut bytes = vec![0; len as usize];
                    file.read_exact_at(&mut bytes, offset).expect("read");
                    file.write_all_at(&bytes, rng.below(DISK_SIZE - len))
                        .expect("write");
                }
                _ => {
                    // SAFETY: fallocate(2) on a file descriptor this function owns.
                    let punched = unsafe {
                        libc::fallocate(
                            file.as_raw_fd(),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            offset as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    assert_eq!(
                        punched,
                        0,
                        "punch a hole: {}",
                        std::io::Error::last_os_error()
                    );
                }
            }
        }
    }

    /// Copies the image as it is now to `model` and returns its digest.
    pub fn keep(&self, model: &Path) -> Digest {
        std::fs::copy(&self.image, model).expect("copy the disk's model");
        digest_of(model)
    }
}

/// The SHA-256 of a file's bytes.
pub fn digest_of(path: &Path) -> Digest {
    let bytes = std::fs::read(path).expect("read a disk");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    digest.as_ref().try_into().expect("32 bytes")
}
