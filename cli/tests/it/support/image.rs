//! Disk images for the tests: deterministic noise, sparse raw images, qcow2
//! conversion, in-place writes and bit flips, and `qemu-img compare`.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::process::run;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;

/// `qemu-img compare`: byte-identical guest-visible content.
pub fn assert_same_disk(a: &Path, b: &Path) {
    let output = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for zstd.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `offset` of an existing raw file.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, offset).unwrap();
}

/// An empty sparse raw image of `size` bytes: all zeros, nothing allocated.
pub fn blank_image(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

/// A sparse raw image of `size` bytes with `extents` of noise written into it.
pub fn raw_image(path: &Path, size: u64, extents: &[(u64, usize)]) {
    blank_image(path, size);
    for (number, &(offset, len)) in extents.iter().enumerate() {
        write_at(path, offset, &noise(number as u64 + offset, len));
    }
}

/// A raw image of `size` bytes shaped to catch boundary errors: `head` bytes of noise
/// from the start, a hole, the extent `middle` (offset, length) at an unaligned offset,
/// and `tail` bytes ending the disk, a short last chunk when `size` is not a whole
/// number of chunks.
pub fn uneven_image(path: &Path, size: u64, head: u64, middle: (u64, u64), tail: u64) {
    raw_image(
        path,
        size,
        &[
            (0, head as usize),
            (middle.0, middle.1 as usize),
            (size - tail, tail as usize),
        ],
    );
}

/// `qemu-img convert` of `source` (a file or an NBD URI) in `source_format` to the
/// file `target` in `target_format`; it must succeed.
pub fn convert(source: &str, source_format: &str, target: &Path, target_format: &str) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            source_format,
            "-O",
            target_format,
            source,
            &target.display().to_string(),
        ],
    );
}

/// Converts a raw image to qcow2.
pub fn to_qcow2(raw: &Path, qcow2: &Path) {
    convert(&raw.display().to_string(), "raw", qcow2, "qcow2");
}

/// An ext4 file system of `size` (as `mkfs.ext4` reads it, e.g. `48M`) in the file
/// `image`, holding the tree under `source`; built without mounting.
pub fn ext4_image(source: &Path, image: &Path, size: &str) {
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            source.to_str().unwrap(),
            image.to_str().unwrap(),
            size,
        ],
    );
}

/// One partition of [`gpt_disk`]: its first sector, its size in MiB, its sgdisk type
/// code, and the file system image copied to its start, if any.
pub type GptPartition<'a> = (u64, u64, &'a str, Option<&'a Path>);

/// A GPT disk image of `size` bytes holding `partitions`, numbered from 1 (`sgdisk`).
pub fn gpt_disk(path: &Path, size: u64, partitions: &[GptPartition<'_>]) {
    blank_image(path, size);
    let mut args = vec!["-o".to_string()];
    for (number, (start, mib, type_code, _)) in (1..).zip(partitions) {
        args.extend([
            "-n".to_string(),
            format!("{number}:{start}:+{mib}M"),
            "-t".to_string(),
            format!("{number}:{type_code}"),
        ]);
    }
    args.push(path.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("sgdisk", &args);
    for (start, _, _, content) in partitions {
        if let Some(content) = content {
            write_at(path, start * 512, &std::fs::read(content).unwrap());
        }
    }
}

/// Flips one bit of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x01;
    file.write_all_at(&byte, offset).unwrap();
}

/// `qemu-img compare` of a raw file with a qcow2 image: the same guest-visible bytes.
/// The qcow2 image may be a running VM's disk (`-U`: read without taking its lock).
pub fn assert_raw_same_as_qcow2(raw: &Path, qcow2: &Path) {
    run(
        "qemu-img",
        &[
            "compare",
            "-U",
            "-f",
            "raw",
            "-F",
            "qcow2",
            &raw.display().to_string(),
            &qcow2.display().to_string(),
        ],
    );
}
