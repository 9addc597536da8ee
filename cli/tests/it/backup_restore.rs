//! Backup then restore through the real binary, `qemu-nbd` and `qemu-img`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    bed::Bed,
    image::{MIB, assert_same_disk, convert, noise, raw_image, to_qcow2, uneven_image, write_at},
    process::{Guard, assert_success},
    report::disk_stat,
};

#[test]
fn raw_and_qcow2_sources_restore_identically_to_both_formats() {
    let bed = Bed::initialised();
    let raw = bed.path("source.raw");
    // Data at unaligned offsets, a partial last chunk and a hole in between.
    // QEMU sizes disks in 512-byte sectors; the last chunk is still partial.
    let size = 40 * MIB + 25 * 512;
    uneven_image(&raw, size, 3 * MIB, (5 * MIB + 777, 2 * MIB), 5000);
    let qcow2 = bed.path("source.qcow2");
    to_qcow2(&raw, &qcow2);

    bed.backup("from-raw", &[&raw]);
    bed.backup("from-qcow2", &[&qcow2]);
    // Raw is read in place by default; through qemu-nbd it must come out the same.
    let raw_arg = raw.to_str().unwrap();
    bed.json(&[
        "backup",
        "image",
        raw_arg,
        "--vm",
        "from-raw-nbd",
        "--reader",
        "nbd",
    ]);
    // VMware and Hyper-V disks copied off their hosts go through the same path.
    for format in ["vmdk", "vhdx"] {
        let image = bed.path(&format!("source.{format}"));
        convert(raw.to_str().unwrap(), "raw", &image, format);
        let vm = format!("from-{format}");
        bed.backup(&vm, &[&image]);
        let out = bed.path(&format!("{vm}.raw"));
        bed.ok(&[
            "restore",
            &format!("{vm}@latest"),
            "--to",
            out.to_str().unwrap(),
        ]);
        assert_same_disk(&raw, &out);
    }
    for vm in ["from-raw", "from-raw-nbd", "from-qcow2"] {
        for format in ["raw", "qcow2"] {
            let out = bed.path(&format!("{vm}.{format}"));
            let spec = format!("{vm}@latest");
            let report = bed.json(&[
                "restore",
                &spec,
                "--to",
                out.to_str().unwrap(),
                "--format",
                format,
            ]);
            assert_eq!(report["size"].as_u64(), Some(size));
            assert_same_disk(&raw, &out);
        }
    }
    // A raw restore stays sparse: far less allocated than the disk size.
    let restored = bed.path("from-raw.raw");
    let allocated = std::os::unix::fs::MetadataExt::blocks(&restored.metadata().unwrap()) * 512;
    assert!(
        allocated < 12 * MIB,
        "restored raw file allocates {allocated} bytes"
    );
}

#[test]
fn multi_disk_snapshot_needs_a_disk_name_to_restore() {
    let bed = Bed::initialised();
    let a = bed.path("a.raw");
    let b = bed.path("b.raw");
    raw_image(&a, 8 * MIB, &[(0, MIB as usize)]);
    raw_image(&b, 6 * MIB, &[(MIB, MIB as usize)]);
    bed.ok(&[
        "backup",
        "image",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--vm",
        "db",
        "--disk",
        "sys",
        "--disk",
        "data",
    ]);
    let out = bed.path("out.raw");
    let error = bed.fails(&["restore", "db@latest", "--to", out.to_str().unwrap()]);
    assert!(error.contains("choose one with --disk"), "{error}");
    bed.ok(&[
        "restore",
        "db@latest",
        "--disk",
        "data",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_same_disk(&b, &out);
    // An existing output is never overwritten by accident.
    let restore_sys = [
        "restore",
        "db@latest",
        "--disk",
        "sys",
        "--to",
        out.to_str().unwrap(),
    ];
    let error = bed.fails(&restore_sys);
    assert!(error.contains("exists"), "{error}");
    bed.ok(&[&restore_sys[..], &["--force"]].concat());
    assert_same_disk(&a, &out);
}

/// `haven backup image IMAGE --format raw --json` with only `path` on `PATH`.
fn backup_with_path(bed: &Bed, image: &str, path: &std::path::Path, extra: &[&str]) -> Command {
    let mut args = vec![
        "backup", "image", image, "--vm", "vm", "--format", "raw", "--json",
    ];
    args.extend(extra);
    let mut command = bed.haven(&args);
    command.env("PATH", path);
    command
}

/// A writable `qemu-nbd` on `image`: a process holding it open for writing, as a running
/// VM does.
fn writer_of(bed: &Bed, image: &std::path::Path, format: &str, name: &str) -> Guard {
    let socket = bed.path(name);
    let child = Command::new("qemu-nbd")
        .args(["--format", format, "--persistent", "--socket"])
        .arg(&socket)
        .arg(image)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let guard = Guard(Some(child));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "qemu-nbd did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    guard
}

#[test]
fn raw_images_are_read_in_place_and_images_in_use_are_refused() {
    let bed = Bed::initialised();
    let raw = bed.path("disk.raw");
    // Not a whole number of sectors: read in place, the disk is exactly the file.
    let size = 24 * MIB + 1000;
    raw_image(
        &raw,
        size,
        &[
            (MIB, 3 * MIB as usize),
            (20 * MIB, MIB as usize),
            (size - 1000, 1000),
        ],
    );
    let raw_arg = raw.to_str().unwrap();

    // With no QEMU program on PATH a raw image still backs up, reading only its data;
    // the same backup through qemu-nbd cannot run.
    let no_tools = bed.path("no-tools");
    std::fs::create_dir(&no_tools).unwrap();
    let output = backup_with_path(&bed, raw_arg, &no_tools, &[])
        .output()
        .unwrap();
    assert_success(&output, ["backup", "image", raw_arg]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(disk_stat(&report, "size"), size);
    assert_eq!(disk_stat(&report, "bytes_read"), 4 * MIB + 1000);
    assert_eq!(disk_stat(&report, "new_chunks"), 5);
    let output = backup_with_path(&bed, raw_arg, &no_tools, &["--reader", "nbd"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("qemu-nbd"), "{stderr}");

    let out = bed.path("out.raw");
    bed.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(&raw).unwrap(),
        "the restored disk differs"
    );

    // An image open for writing elsewhere (a running VM's disk) is refused, whichever
    // way it would be read, and whatever its format.
    let qcow2 = bed.path("disk.qcow2");
    to_qcow2(&raw, &qcow2);
    let mut raw_writer = writer_of(&bed, &raw, "raw", "raw.sock");
    for reader in ["auto", "nbd"] {
        let error = bed.fails(&[
            "backup", "image", raw_arg, "--vm", "vm", "--format", "raw", "--reader", reader,
        ]);
        assert!(error.contains("is open for writing"), "{error}");
        assert!(error.contains("haven backup qemu"), "{error}");
    }
    let qcow2_arg = qcow2.to_str().unwrap();
    let mut qcow2_writer = writer_of(&bed, &qcow2, "qcow2", "qcow2.sock");
    // With the format given, and probed (the lock comes before the probe).
    for format in [&["--format", "qcow2"][..], &[]] {
        let mut args = vec!["backup", "image", qcow2_arg, "--vm", "vm"];
        args.extend(format);
        let error = bed.fails(&args);
        assert!(error.contains("is open for writing"), "{error}");
    }
    // A multi-disk backup is refused as a whole when one disk is in use.
    let other = bed.raw_image("other.raw", 4 * MIB, &[(0, MIB as usize)]);
    let other_arg = other.to_str().unwrap();
    let error = bed.fails(&["backup", "image", other_arg, qcow2_arg, "--vm", "two"]);
    assert!(error.contains("is open for writing"), "{error}");
    raw_writer.kill9();
    qcow2_writer.kill9();
    // Once the writers are gone, both back up; nothing was committed in between.
    bed.backup("vm", &[&raw]);
    bed.backup("vm-qcow2", &[&qcow2]);
    let snapshots = bed.json(&["snapshots", "--vm", "vm"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 2);
}

#[test]
fn sparse_64_gib_image_reads_only_its_data() {
    let bed = Bed::initialised();
    let raw = bed.path("small.raw");
    let size = 64 * 1024 * MIB;
    raw_image(
        &raw,
        size,
        &[(MIB, 2 * MIB as usize), (40 * 1024 * MIB, MIB as usize)],
    );
    let qcow2 = bed.path("big.qcow2");
    to_qcow2(&raw, &qcow2);

    // Read in place (holes from SEEK_DATA) and through qemu-nbd (base:allocation).
    for (vm, image) in [("sparse-raw", &raw), ("sparse", &qcow2)] {
        let report = bed.backup(vm, &[image]);
        assert_eq!(disk_stat(&report, "size"), size);
        let read = disk_stat(&report, "bytes_read");
        assert!(read <= 4 * MIB, "read {read} bytes of a disk holding 3 MiB");
        // The second finds the first's chunks in the repository.
        let chunks = disk_stat(&report, "new_chunks") + disk_stat(&report, "existing_chunks");
        assert_eq!(chunks, 3);
    }
    std::fs::remove_file(&raw).unwrap();

    let out = bed.path("restored.qcow2");
    bed.ok(&[
        "restore",
        "sparse@latest",
        "--to",
        out.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert_same_disk(&qcow2, &out);
    let out_raw = bed.path("restored.raw");
    bed.ok(&[
        "restore",
        "sparse@latest",
        "--to",
        out_raw.to_str().unwrap(),
    ]);
    assert_same_disk(&qcow2, &out_raw);
}

/// Backs up `image` as `vm` when the repository already holds all its data: no new
/// chunk, and the stored chunk bytes do not grow. Returns the report.
fn backup_storing_nothing(bed: &Bed, vm: &str, image: &Path) -> serde_json::Value {
    let stored = bed.stored_chunk_bytes();
    let report = bed.backup(vm, &[image]);
    assert_eq!(disk_stat(&report, "new_chunks"), 0, "{report}");
    assert_eq!(
        bed.stored_chunk_bytes(),
        stored,
        "chunk bytes grew for data already stored"
    );
    report
}

#[test]
fn unchanged_image_uploads_nothing_and_a_small_change_uploads_only_its_chunks() {
    let bed = Bed::initialised();
    let size = 256 * MIB;
    let raw = bed.raw_image("disk.raw", size, &[(0, size as usize)]);
    let first = bed.backup("vm", &[&raw]);
    assert_eq!(disk_stat(&first, "new_chunks"), 256);
    let stored = bed.stored_chunk_bytes();

    let second = backup_storing_nothing(&bed, "vm", &raw);
    assert_eq!(disk_stat(&second, "uploaded_bytes"), 0);
    assert_eq!(disk_stat(&second, "reused_chunks"), 256);

    // About 1% of the disk in three contiguous extents, not chunk aligned.
    let extents = [
        (10 * MIB + 4096, 1_000_000usize),
        (100 * MIB - 100, 800_000),
        (200 * MIB + 512 * 1024, 900_000),
    ];
    for (number, &(offset, len)) in extents.iter().enumerate() {
        write_at(&raw, offset, &noise(1000 + number as u64, len));
    }
    let touched: u64 = extents
        .iter()
        .map(|&(offset, len)| (offset + len as u64 - 1) / MIB - offset / MIB + 1)
        .sum();
    let changed: u64 = extents.iter().map(|&(_, len)| len as u64).sum();
    let third = bed.backup("vm", &[&raw]);
    assert_eq!(disk_stat(&third, "new_chunks"), touched);
    let new_bytes = disk_stat(&third, "new_bytes");
    assert!(new_bytes <= changed + 2 * MIB * extents.len() as u64);
    let growth = bed.stored_chunk_bytes() - stored;
    assert!(
        growth <= touched * (MIB + 4096),
        "stored {growth} bytes for {touched} chunks"
    );

    let out = bed.path("out.raw");
    bed.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert_same_disk(&raw, &out);
    let snapshots = bed.json(&["snapshots", "--vm", "vm"]);
    assert_eq!(snapshots.as_array().unwrap().len(), 3);
    // The first snapshot still restores its own content, not the later one.
    let first_name = snapshots[0]["snapshot"].as_str().unwrap().to_string();
    let old = bed.path("old.raw");
    bed.ok(&["restore", &first_name, "--to", old.to_str().unwrap()]);
    let old_bytes = std::fs::read(&old).unwrap();
    assert_eq!(
        &old_bytes[10 * MIB as usize..10 * MIB as usize + 16],
        &noise(0, 11 * MIB as usize)[10 * MIB as usize..10 * MIB as usize + 16]
    );
}

#[test]
fn vms_cloned_from_one_template_share_chunks() {
    let bed = Bed::initialised();
    let template = bed.raw_image("template.raw", 32 * MIB, &[(0, 20 * MIB as usize)]);
    let clone = bed.path("clone.qcow2");
    to_qcow2(&template, &clone);
    let first = bed.backup("web1", &[&template]);
    assert_eq!(disk_stat(&first, "new_chunks"), 20);
    let second = backup_storing_nothing(&bed, "web2", &clone);
    assert_eq!(disk_stat(&second, "existing_chunks"), 20);
    bed.ok(&["verify"]);
}
