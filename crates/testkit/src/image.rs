//! Disk images the tests write to and read from, made by `qemu-img`.

use std::path::Path;
use std::process::Command;

use crate::FixtureError;
use crate::process::run;

const QEMU_IMG_HINT: &str = "the qemu-utils package";

/// An empty qcow2 image of `size` bytes at `path`.
pub fn create_qcow2(path: &Path, size: u64) -> Result<(), FixtureError> {
    let mut command = Command::new("qemu-img");
    command
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string());
    run(&mut command, QEMU_IMG_HINT).map(drop)
}

/// A qcow2 overlay at `path` on `backing` (a file or an NBD URI) in `backing_format`:
/// reads fall through to the backing, writes stay in the overlay.
pub fn create_overlay(
    path: &Path,
    backing: &str,
    backing_format: &str,
) -> Result<(), FixtureError> {
    let mut command = Command::new("qemu-img");
    command
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            backing,
            "-F",
            backing_format,
        ])
        .arg(path);
    run(&mut command, QEMU_IMG_HINT).map(drop)
}
