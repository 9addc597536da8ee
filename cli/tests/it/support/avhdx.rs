//! Hyper-V checkpoint chains for the tests: differencing VHDX files written by
//! `avhdx.py` (nothing packaged writes one) over `qemu-img`'s dynamic VHDX, and their
//! merged disk as libvhdi reads it (`vhdi_merged.py`, Debian's `python3-libvhdi`), the
//! packaged reader both the fixture and Haven are checked against.

use std::path::{Path, PathBuf};

use super::image::write_at;
use super::process::run;

fn script(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/support")
        .join(name)
        .display()
        .to_string()
}

/// Writes `child`, a differencing VHDX of `block_size`-byte blocks over `parent`,
/// holding `writes` (offset, bytes); each write's bytes are kept beside it in a file.
/// Applies the same writes to `expected`, a raw file the size of the disk.
pub fn checkpoint(
    parent: &Path,
    child: &Path,
    block_size: u64,
    writes: &[(u64, Vec<u8>)],
    expected: &Path,
) {
    let mut args = vec![
        script("avhdx.py"),
        parent.display().to_string(),
        child.display().to_string(),
        "--block-size".into(),
        block_size.to_string(),
    ];
    for (number, (offset, data)) in writes.iter().enumerate() {
        let file = PathBuf::from(format!("{}.write-{number}", child.display()));
        std::fs::write(&file, data).unwrap();
        args.push("--write".into());
        args.push(format!("{offset}={}", file.display()));
        write_at(expected, *offset, data);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("python3", &args);
}

/// The merged disk of `chain` (newest first) as libvhdi reads it, into `out`.
pub fn merged_by_libvhdi(chain: &[&Path], out: &Path) {
    let mut args = vec![script("vhdi_merged.py"), out.display().to_string()];
    args.extend(chain.iter().map(|path| path.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Debian's python3, which python3-libvhdi is built for.
    run("/usr/bin/python3", &args);
}
