//! Live backups of a libvirt domain through `haven backup libvirt`: the test starts its
//! own `virtlogd` and `libvirtd` (private config, pid files and client sockets), defines
//! and starts a TCG domain with two qcow2 disks and no OS, writes into the disks
//! through the QEMU monitor between backups, and checks a full and two incrementals:
//! each restored disk equals, byte for byte, a copy kept with the same writes applied;
//! an incremental reads only about the changed chunks; old checkpoints go after the
//! commit, other tools' checkpoints are never touched, and a missing checkpoint means
//! a full read. Everything started is stopped again (Drop guards), also on failure.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    bed::Bed,
    haven::RunningBackup,
    image::{MIB, assert_same_disk, write_at},
    libvirt::{Domain, Libvirt, TARGETS, two_disk_bed},
    process::assert_success,
    report::{disk, mode},
};

const CHUNK: u64 = 256 * 1024;
const DISK_SIZE: u64 = 64 * MIB;

fn backup(bed: &Bed, libvirt: &Libvirt, domain: &str) -> Value {
    backup_with(bed, libvirt, domain, &[])
}

/// `haven backup libvirt` of `domain` as VM `vm` with scratch files in the bed, then
/// `extra`.
fn backup_command(bed: &Bed, libvirt: &Libvirt, domain: &str, extra: &[&str]) -> Command {
    let scratch = bed.path("scratch");
    let mut command = bed.haven(&[
        "backup",
        "libvirt",
        "--domain",
        domain,
        "--uri",
        &libvirt.uri,
        "--vm",
        "vm",
        "--scratch-dir",
        scratch.to_str().unwrap(),
    ]);
    command.args(extra);
    command
}

fn backup_with(bed: &Bed, libvirt: &Libvirt, domain: &str, extra: &[&str]) -> Value {
    let args = [&["--json"], extra].concat();
    let output = backup_command(bed, libvirt, domain, &args)
        .output()
        .unwrap();
    assert_success(&output, "backup");
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs a backup and, once it reports the point in time taken (`backup-begin`
/// returned), makes the guest write `late` (not applied to any expected copy).
fn backup_while_writing(
    bed: &Bed,
    libvirt: &Libvirt,
    domain: &Domain,
    late: &[(usize, u8, u64, u64)],
) -> Value {
    let mut running = RunningBackup::start(backup_command(
        bed,
        libvirt,
        &domain.name,
        &["--connections", "1", "--json"],
    ));
    running.wait_point_taken();
    for &(disk, pattern, offset, len) in late {
        domain.write(disk, pattern, offset, len);
    }
    let during = running.is_running();
    let report = running.finish();
    eprintln!("guest writes finished while the backup was still running: {during}");
    report
}

/// Starts a backup and kills it (SIGKILL) as soon as libvirt shows its job.
fn kill_during_job(bed: &Bed, libvirt: &Libvirt, domain: &str) {
    let mut child = backup_command(bed, libvirt, domain, &["--connections", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the backup ended ({status}) before it could be killed");
        }
        let info = Command::new("virsh")
            .args(["--connect", &libvirt.uri, "--quiet", "domjobinfo", domain])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&info.stdout).contains("Backup") {
            break;
        }
        assert!(Instant::now() < deadline, "no backup job appeared");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        libvirt.virsh(&["domjobinfo", domain]).contains("Backup"),
        "the killed run's job should still be running in libvirt"
    );
}

fn bytes_read(report: &Value, name: &str) -> u64 {
    disk(report, name)["bytes_read"].as_u64().unwrap()
}

/// Restores every disk of `snapshot` and compares it with the expected raw copies.
fn assert_restores(bed: &Bed, snapshot: &str, expected: &[PathBuf]) {
    for (target, want) in TARGETS.iter().zip(expected) {
        let to = bed.path(&format!("restored-{target}.raw"));
        bed.ok(&[
            "restore",
            snapshot,
            "--disk",
            target,
            "--to",
            to.to_str().unwrap(),
            "--force",
        ]);
        assert_same_disk(&to, want);
        std::fs::remove_file(&to).unwrap();
    }
}

/// The same guest writes into the domain and into the expected copies.
fn write_both(domain: &Domain, expected: &[PathBuf], writes: &[(usize, u8, u64, u64)]) {
    for &(disk, pattern, offset, len) in writes {
        domain.write(disk, pattern, offset, len);
        write_at(&expected[disk], offset, &vec![pattern; len as usize]);
    }
}

fn copies(bed: &Bed, expected: &[PathBuf], round: usize) -> Vec<PathBuf> {
    expected
        .iter()
        .enumerate()
        .map(|(disk, path)| {
            let copy = bed.path(&format!("expected{round}-{disk}.raw"));
            std::fs::copy(path, &copy).unwrap();
            copy
        })
        .collect()
}

#[test]
fn domain_full_then_two_incrementals_restore_identical() {
    let test_started = Instant::now();
    let (bed, expected, images) = two_disk_bed(CHUNK, DISK_SIZE, |disk| {
        vec![
            (disk * 4096, 40 * MIB as usize),
            (50 * MIB, 8 * MIB as usize),
        ]
    });

    let libvirt = Libvirt::start();
    let name = format!("haven-test-{}", std::process::id());
    let domain = Domain::start(&libvirt, &name, &images, bed.dir.path());
    // Another tool's checkpoint: Haven must neither use nor delete it.
    libvirt.virsh(&["checkpoint-create-as", &name, "--name", "othertool.0"]);

    // Full.
    let full = backup(&bed, &libvirt, &name);
    for target in TARGETS {
        assert_eq!(mode(&full, target).0, "full");
    }
    let first_checkpoint = full["checkpoint"].as_str().unwrap().to_string();
    // The domain XML travels with the snapshot, and the chain names the checkpoint.
    let recorded = bed.manifest(full["snapshot"].as_str().unwrap());
    let config = recorded.vm_config.expect("vm_config recorded");
    assert_eq!(config.kind, "libvirt-xml");
    assert!(config.data.contains(&format!("<name>{name}</name>")));
    assert!(config.data.contains(images[1].to_str().unwrap()));
    assert_eq!(recorded.source.kind, "libvirt");
    for disk in &recorded.disks {
        assert_eq!(disk.chain["checkpoint"], first_checkpoint);
    }
    assert!(first_checkpoint.starts_with("haven-vm-"));
    let round0 = copies(&bed, &expected, 0);

    // 3 of 256 chunks per disk changed: ~1.2% of the blocks.
    let writes: Vec<(usize, u8, u64, u64)> = (0..2)
        .flat_map(|disk| {
            [
                (disk, 0x41, 5 * MIB, 4096),
                (disk, 0x42, 20 * MIB + 4096, 4096),
                (disk, 0x43, 63 * MIB, 8192),
            ]
        })
        .collect();
    write_both(&domain, &expected, &writes);
    let first_incremental = backup(&bed, &libvirt, &name);
    for target in TARGETS {
        let (how, reason) = mode(&first_incremental, target);
        assert_eq!(how, "incremental", "{target}: {reason}");
        let read = bytes_read(&first_incremental, target);
        assert!(
            read > 0 && read <= 3 * CHUNK,
            "{target}: incremental read {read} bytes for 3 changed chunks"
        );
    }
    assert_eq!(
        first_incremental["deleted_checkpoints"],
        serde_json::json!([first_checkpoint])
    );
    let round1 = copies(&bed, &expected, 1);

    // A backup killed while it reads: no snapshot, and libvirt keeps its job and its
    // checkpoint; the next backup ends that job and still holds every change since
    // the last committed snapshot.
    write_both(
        &domain,
        &expected,
        &[(0, 0x47, 10 * MIB, 4096), (1, 0x48, 33 * MIB, 4096)],
    );
    kill_during_job(&bed, &libvirt, &name);

    // A write across a chunk boundary and one into a hole.
    let writes = [
        (0, 0x51, 2 * MIB - 4096, 8192),
        (1, 0x52, 45 * MIB, 65536),
        (1, 0x53, 0, 512),
    ];
    write_both(&domain, &expected, &writes);
    // Guest writes while this backup reads: they must not leak into the snapshot.
    let late = [
        (0usize, 0x77u8, 40 * MIB, 65536u64),
        (1, 0x78, 12 * MIB, 65536),
    ];
    let second_incremental = backup_while_writing(&bed, &libvirt, &domain, &late);
    for target in TARGETS {
        let (how, reason) = mode(&second_incremental, target);
        assert_eq!(how, "incremental", "{target}: {reason}");
        assert!(bytes_read(&second_incremental, target) <= 4 * CHUNK);
    }
    let latest = second_incremental["checkpoint"].as_str().unwrap();
    let mut checkpoints = domain.checkpoints();
    checkpoints.sort();
    assert_eq!(
        checkpoints,
        vec![latest.to_string(), "othertool.0".to_string()]
    );

    let round2 = copies(&bed, &expected, 2);
    for &(disk, pattern, offset, len) in &late {
        write_at(&expected[disk], offset, &vec![pattern; len as usize]);
    }
    let snapshots = [
        (&full, &round0),
        (&first_incremental, &round1),
        (&second_incremental, &round2),
    ];
    for (report, want) in snapshots {
        assert_restores(&bed, report["snapshot"].as_str().unwrap(), want);
    }

    // A checkpoint deleted behind Haven's back: a full read that says why, and correct.
    libvirt.virsh(&["checkpoint-delete", &name, latest]);
    write_both(&domain, &expected, &[(0, 0x61, 30 * MIB, 4096)]);
    // --quiesce without a guest agent: crash-consistent, said so, not a failure.
    let fallback = backup_with(&bed, &libvirt, &name, &["--quiesce"]);
    assert_eq!(fallback["consistency"], "crash-consistent");
    for target in TARGETS {
        let (how, reason) = mode(&fallback, target);
        assert_eq!(how, "full", "{target}");
        assert!(reason.contains("missing"), "{target}: {reason}");
    }
    assert_restores(&bed, fallback["snapshot"].as_str().unwrap(), &expected);
    assert!(domain.checkpoints().contains(&"othertool.0".to_string()));

    // Nothing of Haven's is left in the scratch folder.
    assert_eq!(
        std::fs::read_dir(bed.path("scratch")).unwrap().count(),
        0,
        "scratch folder not cleaned"
    );
    drop(domain);
    drop(libvirt);
    eprintln!("test finished in {:?}", test_started.elapsed());
}
