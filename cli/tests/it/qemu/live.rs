//! Live backups of running QEMU processes through `haven backup qemu`: a real
//! qemu-storage-daemon and a real qemu-system-x86_64 (TCG, no guest OS), guest writes
//! while the backup runs, incrementals, crashes of QEMU and of Haven. Each restored
//! snapshot must equal the disk as it was at the snapshot point, byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::support::{
    bed::Bed,
    haven::RunningBackup,
    image::{MIB, assert_same_disk, to_qcow2},
    process::{Guard, run, wait_for_socket},
    qemu::{Qmp, StorageDaemon, qemu_system, start_qemu_system},
    report::{disk, mode},
    tree::files_below,
};

const CHUNK: u64 = 256 * 1024;
const DISK_SIZE: u64 = 64 * MIB;

/// A repository with 256 KiB chunks and `count` qcow2 disks full of noise.
pub(super) fn setup(count: usize, size: u64) -> (Bed, Vec<PathBuf>) {
    let bed = Bed::new();
    bed.ok(&["repo", "init", "--chunk-size", &CHUNK.to_string()]);
    std::fs::create_dir(bed.path("scratch")).unwrap();
    let images = (0..count)
        .map(|number| {
            let raw = bed.raw_image(
                &format!("seed{number}.raw"),
                size,
                &[(number as u64 * 4096, size as usize - 65536)],
            );
            let qcow2 = bed.path(&format!("d{number}.qcow2"));
            to_qcow2(&raw, &qcow2);
            std::fs::remove_file(&raw).unwrap();
            qcow2
        })
        .collect();
    (bed, images)
}

/// `haven backup qemu` of the daemon's disks through its NBD server, started.
fn back_up(bed: &Bed, daemon: &StorageDaemon, extra: &[&str]) -> RunningBackup {
    RunningBackup::start(backup_command(bed, &daemon.qmp, Some(&daemon.nbd), extra))
}

/// A backup of the daemon's disks through one NBD connection, past its snapshot point:
/// still reading, to be interrupted.
fn backup_reading(bed: &Bed, daemon: &StorageDaemon) -> RunningBackup {
    let run = back_up(bed, daemon, &["--connections", "1"]);
    run.wait_point_taken();
    run
}

pub(super) fn backup_command(bed: &Bed, qmp: &Path, nbd: Option<&Path>, extra: &[&str]) -> Command {
    let scratch = bed.path("scratch");
    let mut args = vec![
        "backup".to_string(),
        "qemu".into(),
        "--qmp".into(),
        qmp.display().to_string(),
        "--vm".into(),
        "vm".into(),
        "--scratch-dir".into(),
        scratch.display().to_string(),
        "--json".into(),
    ];
    if let Some(nbd) = nbd {
        args.extend(["--nbd-server".into(), nbd.display().to_string()]);
    }
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    bed.haven(&args)
}

fn restore(bed: &Bed, snapshot: &str, disk: &str, to: &Path) {
    bed.ok(&[
        "restore",
        snapshot,
        "--disk",
        disk,
        "--to",
        to.to_str().unwrap(),
        "--force",
    ]);
}

/// `count` scattered writes of `len` bytes, one per 1 MiB stretch, starting at `phase`.
fn scattered(pattern: u8, phase: u64, count: u64, len: u64) -> Vec<(u8, u64, u64)> {
    (0..count)
        .map(|i| (pattern, (i * 4 + phase) * MIB + 8192 * phase, len))
        .collect()
}

fn snapshot_count(bed: &Bed) -> usize {
    std::fs::read_dir(bed.repo_dir().join("snapshots/vm"))
        .map(|dir| {
            dir.filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains('#')
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn storage_daemon_full_then_incrementals_with_writes_during_the_backup() {
    let (bed, images) = setup(2, DISK_SIZE);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    let qmp_socket = daemon.qmp.clone();
    let names = ["disk0", "disk1"];
    let mut expected: Vec<(String, Vec<PathBuf>)> = Vec::new();

    // Two backups with guest writes while they run, then one without, then 1% changes.
    for (round, pattern) in [(0u64, 0x11u8), (1, 0x22), (2, 0), (3, 0)] {
        let copies: Vec<PathBuf> = (0..2)
            .map(|d| bed.path(&format!("copy{round}-{d}.raw")))
            .collect();
        if round == 3 {
            for d in 0..2 {
                // 3 of 256 chunks per disk: ~1.2% of the blocks.
                daemon.write(
                    d,
                    &[
                        (0x44, 5 * MIB, 4096),
                        (0x45, 20 * MIB + 4096, 4096),
                        (0x46, 63 * MIB, 4096),
                    ],
                );
            }
        }
        for (d, copy) in copies.iter().enumerate() {
            daemon.copy(d, copy);
        }
        let mut run =
            RunningBackup::start(backup_command(&bed, &qmp_socket, Some(&daemon.nbd), &[]));
        if pattern != 0 {
            run.wait_point_taken();
            for d in 0..2 {
                daemon.write(d, &scattered(pattern, d as u64 + round, 15, 64 * 1024));
            }
            eprintln!(
                "round {round}: writes finished while the backup was still running: {}",
                run.is_running()
            );
        }
        let report = run.finish();
        for name in names {
            let (how, reason) = mode(&report, name);
            let want = if round == 0 { "full" } else { "incremental" };
            assert_eq!(how, want, "round {round} {name}: {reason}");
        }
        if round == 3 {
            for name in names {
                let read = disk(&report, name)["bytes_read"].as_u64().unwrap();
                eprintln!("1% incremental of {name}: {read} bytes read of {DISK_SIZE}");
                assert_eq!(read, 3 * CHUNK, "{report}");
                assert!((read as f64) < 0.015 * DISK_SIZE as f64);
            }
            eprintln!(
                "transaction {} ms, guest i/o held {} ms",
                report["transaction_ms"], report["io_blocked_ms"]
            );
        }
        assert_eq!(report["consistency"], "crash-consistent");
        assert!(
            report["io_blocked_ms"].as_f64().unwrap() < 200.0,
            "{report}"
        );
        expected.push((report["snapshot"].as_str().unwrap().to_string(), copies));
    }

    for (snapshot, copies) in &expected {
        for (d, name) in names.iter().enumerate() {
            let out = bed.path("restored.raw");
            restore(&bed, snapshot, name, &out);
            assert_same_disk(&copies[d], &out);
        }
    }

    let mut qmp = Qmp::connect(&qmp_socket);
    qmp.assert_no_leftovers();
    for name in names {
        let bitmaps = qmp.bitmaps(name);
        assert_eq!(
            bitmaps.len(),
            1,
            "exactly the chain's bitmap stays: {bitmaps:?}"
        );
        assert!(bitmaps[0].1, "and it records: {bitmaps:?}");
    }
    let manifest_chain = bed.json(&["snapshots", "--vm", "vm"]);
    eprintln!("{manifest_chain}");
    assert_eq!(
        std::fs::read_dir(bed.path("scratch")).unwrap().count(),
        0,
        "scratch folder left behind"
    );
}

#[test]
fn storage_daemon_crash_leaves_an_inconsistent_bitmap_and_the_next_backup_is_a_correct_full() {
    let (bed, images) = setup(2, 16 * MIB);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    let first = back_up(&bed, &daemon, &[]).finish();
    assert_eq!(mode(&first, "disk0").0, "full");
    // A clean quit stores the chain's bitmap in the images; a restart finds it intact.
    daemon.quit();
    let mut daemon = StorageDaemon::start(bed.dir.path(), &images);
    daemon.write(0, &[(0x55, 0, MIB)]);
    daemon.guard.kill9();
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    let bitmaps = Qmp::connect(&daemon.qmp).bitmaps("disk0");
    assert!(
        bitmaps.iter().any(|b| b.2),
        "kill -9 must leave the bitmap inconsistent: {bitmaps:?}"
    );

    let copies: Vec<PathBuf> = (0..2)
        .map(|d| bed.path(&format!("after-crash{d}.raw")))
        .collect();
    for (d, copy) in copies.iter().enumerate() {
        daemon.copy(d, copy);
    }
    let report = back_up(&bed, &daemon, &[]).finish();
    for name in ["disk0", "disk1"] {
        let (how, reason) = mode(&report, name);
        assert_eq!(how, "full", "{name}");
        assert!(reason.contains("inconsistent"), "{name}: {reason}");
    }
    let snapshot = report["snapshot"].as_str().unwrap();
    for (d, name) in ["disk0", "disk1"].iter().enumerate() {
        let out = bed.path("restored.raw");
        restore(&bed, snapshot, name, &out);
        assert_same_disk(&copies[d], &out);
    }
    // The chain starts again: the next backup is incremental.
    daemon.write(1, &[(0x56, 3 * MIB, 4096)]);
    let next = back_up(&bed, &daemon, &[]).finish();
    assert_eq!(mode(&next, "disk1").0, "incremental");
    assert_eq!(disk(&next, "disk1")["bytes_read"].as_u64(), Some(CHUNK));
    let mut qmp = Qmp::connect(&daemon.qmp);
    assert_eq!(
        qmp.bitmaps("disk0").len(),
        1,
        "the inconsistent bitmap is gone"
    );
}

#[test]
fn haven_killed_half_way_loses_no_change() {
    let (bed, images) = setup(2, 32 * MIB);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    back_up(&bed, &daemon, &[]).finish();
    assert_eq!(snapshot_count(&bed), 1);

    // Every block dirty, so the next backup has a lot to read; kill it after the
    // snapshot point, while it reads.
    for d in 0..2 {
        daemon.write(d, &[(0x66, 0, 32 * MIB)]);
    }
    let mut run = backup_reading(&bed, &daemon);
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        run.is_running(),
        "the backup finished before it could be killed"
    );
    run.guard.kill9();
    assert_eq!(snapshot_count(&bed), 1, "a killed backup must not commit");

    // More writes after the kill; the next incremental must hold both sets.
    for d in 0..2 {
        daemon.write(d, &scattered(0x77, d as u64, 6, 4096));
    }
    let copies: Vec<PathBuf> = (0..2)
        .map(|d| bed.path(&format!("expected{d}.raw")))
        .collect();
    for (d, copy) in copies.iter().enumerate() {
        daemon.copy(d, copy);
    }
    let recovery = back_up(&bed, &daemon, &[]);
    recovery.wait_point_taken();
    let log = recovery.stderr();
    let report = recovery.finish();
    assert!(log.contains("interrupted backup"), "{log}");
    for (d, name) in ["disk0", "disk1"].iter().enumerate() {
        assert_eq!(mode(&report, name).0, "incremental", "{report}");
        let out = bed.path("restored.raw");
        restore(&bed, report["snapshot"].as_str().unwrap(), name, &out);
        assert_same_disk(&copies[d], &out);
    }
    let mut qmp = Qmp::connect(&daemon.qmp);
    qmp.assert_no_leftovers();
    for name in ["disk0", "disk1"] {
        assert_eq!(qmp.bitmaps(name).len(), 1, "{name}");
    }
    let leftovers: Vec<_> = files_below(&bed.path("scratch"));
    assert!(leftovers.is_empty(), "scratch files left: {leftovers:?}");
}

/// qemu-system-x86_64 (TCG, paused, no OS) with two virtio disks `vda`, `vdb` and a
/// second QMP monitor for the test's own commands while Haven holds the first.
struct Vm {
    _guard: Guard,
    qmp: PathBuf,
    test_qmp: PathBuf,
}

impl Vm {
    fn start(dir: &Path, images: &[PathBuf]) -> Self {
        let qmp = dir.join("vm-qmp.sock");
        let test_qmp = dir.join("vm-test-qmp.sock");
        let mut command = qemu_system("q35", &qmp);
        command
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", test_qmp.display()));
        for (number, image) in images.iter().enumerate() {
            let id = ["vda", "vdb"][number];
            command
                .arg("-blockdev")
                .arg(format!(
                    "driver=file,filename={},node-name=file{number}",
                    image.display()
                ))
                .arg("-blockdev")
                .arg(format!(
                    "driver=qcow2,file=file{number},node-name=disk{number}"
                ))
                .arg("-device")
                .arg(format!("virtio-blk-pci,drive=disk{number},id={id}"));
        }
        let mut guard = start_qemu_system(&mut command, &qmp);
        wait_for_socket(&test_qmp, &mut guard);
        Self {
            _guard: guard,
            qmp,
            test_qmp,
        }
    }
}

/// The guest's disks as the test believes them to be.
struct Model(Vec<Vec<u8>>);

impl Model {
    /// Writes through the VM's block layer (HMP qemu-io) and into the model.
    fn write(&mut self, qmp: &mut Qmp, disk: usize, writes: &[(u8, u64, u64)]) {
        let device = ["vda", "vdb"][disk];
        for &(pattern, offset, len) in writes {
            let line =
                format!("qemu-io -d {device}/virtio-backend \"write -P {pattern} {offset} {len}\"");
            let output = qmp.run("human-monitor-command", json!({"command-line": line}));
            let text = output.as_str().unwrap_or_default();
            assert!(
                !text.contains("failed") && !text.contains("rror"),
                "{line}: {text}"
            );
            self.0[disk][offset as usize..(offset + len) as usize].fill(pattern);
        }
    }

    fn save(&self, bed: &Bed, tag: &str) -> Vec<PathBuf> {
        (0..self.0.len())
            .map(|d| {
                let path = bed.path(&format!("model-{tag}-{d}.raw"));
                std::fs::write(&path, &self.0[d]).unwrap();
                path
            })
            .collect()
    }
}

#[test]
fn qemu_system_full_then_incrementals_with_writes_during_the_backup() {
    let size = 32 * MIB;
    let (bed, images) = setup(2, size);
    let model = Model(
        images
            .iter()
            .map(|image| {
                let raw = bed.path("tmp.raw");
                run(
                    "qemu-img",
                    &[
                        "convert",
                        "-O",
                        "raw",
                        image.to_str().unwrap(),
                        raw.to_str().unwrap(),
                    ],
                );
                std::fs::read(&raw).unwrap()
            })
            .collect(),
    );
    let mut model = model;
    let vm = Vm::start(bed.dir.path(), &images);
    let mut test_qmp = Qmp::connect(&vm.test_qmp);
    let mut expected = Vec::new();
    for (round, pattern) in [(0u64, 0x31u8), (1, 0x32), (2, 0)] {
        if round == 2 {
            for d in 0..2 {
                model.write(
                    &mut test_qmp,
                    d,
                    &[(0x41, 7 * MIB, 4096), (0x42, 30 * MIB, 4096)],
                );
            }
        }
        let copies = model.save(&bed, &round.to_string());
        let mut run = RunningBackup::start(backup_command(&bed, &vm.qmp, None, &[]));
        if pattern != 0 {
            run.wait_point_taken();
            for d in 0..2 {
                model.write(&mut test_qmp, d, &scattered(pattern, d as u64, 7, 65536));
            }
            eprintln!(
                "vm round {round}: writes finished while the backup ran: {}",
                run.is_running()
            );
        }
        let report = run.finish();
        for name in ["vda", "vdb"] {
            let want = if round == 0 { "full" } else { "incremental" };
            assert_eq!(
                mode(&report, name).0,
                want,
                "round {round} {name}: {report}"
            );
        }
        if round == 2 {
            for name in ["vda", "vdb"] {
                // The 2 chunks written now plus the 7 written after round 1's snapshot
                // point: those belong to this snapshot, not the previous one.
                assert_eq!(
                    disk(&report, name)["bytes_read"].as_u64(),
                    Some(9 * CHUNK),
                    "{report}"
                );
            }
            eprintln!(
                "vm: transaction {} ms, i/o held {} ms",
                report["transaction_ms"], report["io_blocked_ms"]
            );
        }
        expected.push((report["snapshot"].as_str().unwrap().to_string(), copies));
    }
    for (snapshot, copies) in &expected {
        for (d, name) in ["vda", "vdb"].iter().enumerate() {
            let out = bed.path("restored.raw");
            restore(&bed, snapshot, name, &out);
            assert_same_disk(&copies[d], &out);
        }
    }
    test_qmp.assert_no_leftovers();
    // Haven stopped the NBD server it started: another one can start.
    let probe = bed.path("probe-nbd.sock");
    test_qmp.run(
        "nbd-server-start",
        json!({"addr": {"type": "unix", "data": {"path": probe}}}),
    );
    test_qmp.run("nbd-server-stop", json!({}));
    drop(vm);
}

#[test]
fn ctrl_c_tears_everything_down_and_keeps_every_change() {
    let (bed, images) = setup(1, 32 * MIB);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    back_up(&bed, &daemon, &[]).finish();
    daemon.write(0, &[(0x71, 0, 32 * MIB)]);
    let mut run = backup_reading(&bed, &daemon);
    assert!(run.is_running(), "the backup finished before Ctrl-C");
    // SAFETY: signal to a child this test started and has not reaped.
    unsafe { libc::kill(run.guard.pid() as libc::pid_t, libc::SIGINT) };
    let mut child = run.guard.0.take().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "a cancelled backup must fail");
    std::thread::sleep(Duration::from_millis(50));
    eprintln!("cancelled backup said: {}", run.stderr());
    assert_eq!(snapshot_count(&bed), 1);
    let mut qmp = Qmp::connect(&daemon.qmp);
    qmp.assert_no_leftovers();
    let bitmaps = qmp.bitmaps("disk0");
    assert_eq!(
        bitmaps.len(),
        1,
        "the new bitmap is merged back: {bitmaps:?}"
    );
    assert!(
        bitmaps[0].1,
        "the chain's bitmap records again: {bitmaps:?}"
    );
    drop(qmp);
    assert!(files_below(&bed.path("scratch")).is_empty());

    daemon.write(0, &[(0x72, 9 * MIB, 4096)]);
    let copy = bed.path("expected.raw");
    daemon.copy(0, &copy);
    let report = back_up(&bed, &daemon, &[]).finish();
    assert_eq!(mode(&report, "disk0").0, "incremental");
    assert_eq!(
        disk(&report, "disk0")["bytes_read"].as_u64(),
        Some(32 * MIB)
    );
    let out = bed.path("restored.raw");
    restore(&bed, report["snapshot"].as_str().unwrap(), "disk0", &out);
    assert_same_disk(&copy, &out);
}
