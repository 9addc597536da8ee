//! Hyper-V checkpoint chains read offline: a differencing `.avhdx` over its parents,
//! backed up by the real binary and restored to the merged disk, which libvhdi (the
//! packaged reader) and the test's own writes both say it must be.

use std::path::Path;

use crate::support::{
    avhdx::{checkpoint, merged_by_libvhdi},
    bed::Bed,
    image::{MIB, assert_same_disk, blank_image, convert, noise, raw_image},
    process::run,
};

/// Noise of `len` bytes at `offset`, seeded by both.
fn write(offset: u64, len: usize) -> (u64, Vec<u8>) {
    (offset, noise(offset ^ len as u64, len))
}

#[test]
fn checkpoint_chain_restores_to_its_merged_disk() {
    let bed = Bed::initialised();
    let size = 40 * MIB;
    // The expected disk starts as the base's raw bytes; each checkpoint's writes are
    // applied to it as they are written into the chain.
    let expected = bed.path("expected.raw");
    raw_image(
        &expected,
        size,
        &[(0, 3 * MIB as usize), (11 * MIB + 512, 5 * MIB as usize)],
    );
    let base = bed.path("base.vhdx");
    convert(expected.to_str().unwrap(), "raw", &base, "vhdx");

    // A checkpoint of 1 MiB blocks: a whole block, a few sectors inside one (a sector
    // bitmap), a write across a block boundary, and one over a hole of the base.
    let child = bed.path("disk_A1B2.avhdx");
    let child_writes = [
        write(2 * MIB, MIB as usize),
        write(5 * MIB + 7 * 512, 3 * 512),
        write(8 * MIB - 2048, 8192),
        write(30 * MIB, 64 * 1024),
    ];
    checkpoint(&base, &child, MIB, &child_writes, &expected);
    // A checkpoint of that one, with 2 MiB blocks: over the child's writes and beside
    // them, many blocks at once, and the disk's last sectors.
    let grandchild = bed.path("disk_C3D4.avhdx");
    let grandchild_writes = [
        write(2 * MIB + 4096, 4096),
        write(5 * MIB, 512),
        write(20 * MIB + 512, 3 * MIB as usize),
        write(size - 4096, 4096),
    ];
    checkpoint(&child, &grandchild, 2 * MIB, &grandchild_writes, &expected);

    // The packaged reader agrees with the test's writes: the fixture is a real VHDX.
    let by_libvhdi = bed.path("libvhdi.raw");
    merged_by_libvhdi(&[&grandchild, &child, &base], &by_libvhdi);
    assert_same_disk(&expected, &by_libvhdi);

    // Each link of the chain, backed up and restored, is its own merged disk.
    let report = bed.backup("hyperv", &[&grandchild]);
    assert_eq!(report["disks"][0]["size"].as_u64(), Some(size), "{report}");
    let restored = bed.path("restored.raw");
    bed.repo()
        .restore_same("hyperv@latest", &restored, &expected);
    assert_eq!(restored.metadata().unwrap().len(), size);

    let child_view = bed.path("child-libvhdi.raw");
    merged_by_libvhdi(&[&child, &base], &child_view);
    bed.backup("hyperv-child", &[&child]);
    bed.repo().restore_same(
        "hyperv-child@latest",
        &bed.path("restored-child.raw"),
        &child_view,
    );
}

/// `haven backup image IMAGE` that must fail; its standard error.
fn refused(bed: &Bed, image: &Path) -> String {
    let stderr = bed.fails(&["backup", "image", image.to_str().unwrap(), "--vm", "hyperv"]);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    stderr
}

#[test]
fn missing_changed_or_truncated_links_are_refused_in_one_line() {
    let bed = Bed::initialised();
    let base = bed.path("base.vhdx");
    run(
        "qemu-img",
        &["create", "-q", "-f", "vhdx", base.to_str().unwrap(), "8M"],
    );
    let child = bed.path("child.avhdx");
    let expected = bed.path("expected.raw");
    blank_image(&expected, 8 * MIB);
    checkpoint(&base, &child, MIB, &[write(0, 4096)], &expected);

    // The parent moved away.
    let moved = bed.path("moved.vhdx");
    std::fs::rename(&base, &moved).unwrap();
    let stderr = refused(&bed, &child);
    assert!(
        stderr.contains("parent of") && stderr.contains("not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("base.vhdx"),
        "names where it looked: {stderr}"
    );

    // A checkpoint cut short, in its headers and in its BAT.
    std::fs::rename(&moved, &base).unwrap();
    let bytes = std::fs::read(&child).unwrap();
    for (length, reason) in [(200_000, "truncated"), (3 * MIB as usize, "truncated")] {
        let cut = bed.path(&format!("cut-{length}.avhdx"));
        std::fs::write(&cut, &bytes[..length]).unwrap();
        let stderr = refused(&bed, &cut);
        assert!(
            stderr.contains(reason) && stderr.contains("cut-"),
            "{stderr}"
        );
    }
    // The parent written to after the checkpoint (QEMU gives it a new DataWriteGuid).
    run(
        "qemu-io",
        &[
            "-f",
            "vhdx",
            "-c",
            "write -P 7 0 4k",
            base.to_str().unwrap(),
        ],
    );
    let stderr = refused(&bed, &child);
    assert!(stderr.contains("is not the parent"), "{stderr}");
}
