//! vSphere: snapshot, changed block tracking and ranged reads of flat disks, against
//! govmomi's vCenter simulator extended with `QueryChangedDiskAreas` (crates/testkit/vcsim).

use std::os::unix::fs::PermissionsExt;

use haven_testkit::vcsim::VcsimOptions;

use crate::support::bed::Bed;
use crate::support::haven::RunningBackup;
use crate::support::image::{MIB, assert_same_disk, noise, write_at};
use crate::support::libvirt::{Domain, Libvirt};
use crate::support::report::{disk, disk_stat, mode};
use crate::support::vsphere::{VM, Vsphere, keep_copy};

/// Disk size of the simulated VMs, in MiB (the bed's chunks are 1 MiB).
const DISK_MIB: u64 = 16;

/// Restores `snapshot`'s only disk and checks it against `expected`.
fn assert_restores(bed: &Bed, snapshot: &str, expected: &std::path::Path) {
    let out = bed.path(&format!(
        "restored-{}.raw",
        snapshot.replace([':', '@'], "_")
    ));
    bed.ok(&["restore", snapshot, "--to", out.to_str().unwrap()]);
    assert_same_disk(expected, &out);
}

#[test]
fn full_then_incrementals_read_only_changed_areas_and_restore_byte_identical() {
    let bed = Bed::initialised();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 0, &noise(1, 300 << 10));
    write_at(&flat, 5 * MIB, &noise(2, MIB as usize));
    write_at(&flat, 12 * MIB + 100, &noise(3, 64 << 10));

    let full = vsphere.backup(&bed);
    let (read, reason) = mode(&full, "disk1");
    assert_eq!(read, "full");
    assert!(reason.contains("change tracking was off"), "{reason}");
    assert_eq!(full["enabled_change_tracking"], true);
    // Only the allocated areas are read: slots 0, 5 and 12, never the zeros between.
    assert_eq!(disk_stat(&full, "size"), DISK_MIB * MIB);
    assert_eq!(disk_stat(&full, "bytes_read"), 3 * MIB);
    assert!(
        vsphere.snapshot_names().is_empty(),
        "the snapshot must be removed"
    );
    let first = keep_copy(&flat, &bed.path("first.raw"));

    // Two writes, each inside one chunk.
    write_at(&flat, 3 * MIB + 7, &noise(4, 4 << 10));
    write_at(&flat, 9 * MIB, &noise(5, 70 << 10));
    let second_report = vsphere.backup(&bed);
    assert_eq!(mode(&second_report, "disk1").0, "incremental");
    assert_eq!(disk_stat(&second_report, "bytes_read"), 2 * MIB);
    assert!(vsphere.snapshot_names().is_empty());
    let second = keep_copy(&flat, &bed.path("second.raw"));

    // One write across a chunk boundary: two chunks.
    write_at(&flat, 6 * MIB - (4 << 10), &noise(6, 8 << 10));
    let third_report = vsphere.backup(&bed);
    assert_eq!(mode(&third_report, "disk1").0, "incremental");
    assert_eq!(disk_stat(&third_report, "bytes_read"), 2 * MIB);
    assert!(vsphere.snapshot_names().is_empty());
    let third = keep_copy(&flat, &bed.path("third.raw"));

    for (report, expected) in [
        (&full, &first),
        (&second_report, &second),
        (&third_report, &third),
    ] {
        assert_restores(&bed, report["snapshot"].as_str().unwrap(), expected);
    }
    // The hardware and the changeIds are in the manifests.
    let first_manifest = bed.manifest(full["snapshot"].as_str().unwrap());
    let third_manifest = bed.manifest(third_report["snapshot"].as_str().unwrap());
    let config = third_manifest
        .vm_config
        .as_ref()
        .expect("the hardware is recorded");
    assert_eq!(config.kind, "vsphere-hardware");
    let hardware: serde_json::Value = serde_json::from_str(&config.data).unwrap();
    assert_eq!(hardware["name"], VM);
    assert_eq!(hardware["disks"][0]["capacity"], DISK_MIB * MIB);
    assert!(
        hardware["cpus"].as_u64().is_some_and(|cpus| cpus > 0),
        "{hardware}"
    );
    assert_eq!(third_manifest.source.kind, "vsphere");
    let change_id = |manifest: &haven_repo::Manifest| manifest.disks[0].chain["change-id"].clone();
    assert_ne!(change_id(&first_manifest), change_id(&third_manifest));
}

#[test]
fn leftover_and_failed_snapshots_are_removed_and_a_rejected_change_id_reads_in_full() {
    let bed = Bed::initialised();
    let mut vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, MIB, &noise(7, 200 << 10));
    vsphere.backup(&bed);

    // A run killed after its snapshot leaves it behind; the next run removes it, and
    // only Haven's.
    vsphere.session(async |client, vm| {
        let name = format!("haven-{VM}-20200101T000000Z");
        client.create_snapshot(&vm, &name, "", false).await.unwrap();
        client
            .create_snapshot(&vm, "nightly", "", false)
            .await
            .unwrap();
    });
    let report = vsphere.backup(&bed);
    assert_eq!(
        report["removed_leftovers"],
        serde_json::json!([format!("haven-{VM}-20200101T000000Z")])
    );
    assert_eq!(vsphere.snapshot_names(), ["nightly"]);

    // A run that fails after taking its snapshot still removes it: here the flat file
    // is cut short of the disk's size, so vSphere's change tracking answers for fewer
    // bytes than the disk has, which Haven refuses.
    write_at(&flat, 15 * MIB + (128 << 10), &noise(8, 128 << 10));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&flat)
        .unwrap()
        .set_len(15 * MIB + (512 << 10))
        .unwrap();
    let error = vsphere.backup_fails(&bed);
    assert!(error.contains("QueryChangedDiskAreas"), "{error}");
    assert_eq!(vsphere.snapshot_names(), ["nightly"]);

    // A vCenter that no longer knows the changeId (here: a fresh simulator, as after
    // change tracking was reset) gives a full read with the reason.
    vsphere.sim.stop();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 2 * MIB, &noise(9, 100 << 10));
    vsphere.session(async |client, vm| client.enable_change_tracking(&vm).await.unwrap());
    let report = vsphere.backup(&bed);
    let (read, reason) = mode(&report, "disk1");
    assert_eq!(read, "full");
    assert!(reason.contains("rejected changeId"), "{reason}");
    assert_restores(&bed, report["snapshot"].as_str().unwrap(), &flat);
}

#[test]
fn kill_9_while_holding_the_snapshot_leaves_it_for_the_next_run_to_remove() {
    let bed = Bed::initialised();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 0, &noise(10, (DISK_MIB * MIB) as usize));

    // Read at 512 KiB/s, the 16 MiB take about 30 s: killed a moment after its snapshot.
    let mut running = RunningBackup::start(vsphere.command(&bed, &["--limit-rate", "512K"]));
    running.wait_point_taken();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(running.is_running(), "{}", running.stderr());
    running.guard.kill9();
    let left = vsphere.snapshot_names();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].starts_with(&format!("haven-{VM}-")), "{left:?}");

    let report = vsphere.backup(&bed);
    assert_eq!(report["removed_leftovers"], serde_json::json!(left));
    assert!(vsphere.snapshot_names().is_empty());
    assert_restores(&bed, report["snapshot"].as_str().unwrap(), &flat);
}

/// Ctrl-C (SIGINT) or SIGTERM while the backup holds its snapshot: haven cancels the
/// run, removes the snapshot before it exits and says so; nothing is committed, and
/// the next run has nothing left to remove.
fn stopped_by_a_signal_removes_the_snapshot_before_exiting(signal: libc::c_int, name: &str) {
    let bed = Bed::initialised();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 0, &noise(15, (DISK_MIB * MIB) as usize));

    // Read at 512 KiB/s, the 16 MiB take about 30 s: stopped a moment after its snapshot.
    let mut running = RunningBackup::start(vsphere.command(&bed, &["--limit-rate", "512K"]));
    running.wait_point_taken();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(running.is_running(), "{}", running.stderr());
    assert_eq!(
        vsphere.snapshot_names().len(),
        1,
        "the run holds its snapshot"
    );
    let (status, took) = running.stop_with(signal, std::time::Duration::from_secs(20));
    let stderr = running.stderr();
    assert!(!status.success(), "a cancelled backup must fail: {stderr}");
    assert!(
        stderr.contains(&format!("{name} received")) && stderr.contains("backup cancelled"),
        "{stderr}"
    );
    assert!(
        vsphere.snapshot_names().is_empty(),
        "the snapshot is removed before haven exits: {stderr}"
    );
    eprintln!("{name}: haven exited {took:?} after the signal");
    let committed = bed.json(&["snapshots", "--vm", VM]);
    assert_eq!(committed, serde_json::json!([]));

    let report = vsphere.backup(&bed);
    assert_eq!(report["removed_leftovers"], serde_json::json!([]));
    assert!(vsphere.snapshot_names().is_empty());
    assert_restores(&bed, report["snapshot"].as_str().unwrap(), &flat);
}

#[test]
fn ctrl_c_removes_the_snapshot_before_exiting() {
    stopped_by_a_signal_removes_the_snapshot_before_exiting(libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_removes_the_snapshot_before_exiting() {
    stopped_by_a_signal_removes_the_snapshot_before_exiting(libc::SIGTERM, "SIGTERM");
}

#[test]
fn several_disks_are_read_apart_and_a_vm_with_tools_is_quiesced() {
    let bed = Bed::initialised();
    let vsphere = Vsphere::start_with(
        &bed,
        VcsimOptions {
            disk_mib: DISK_MIB,
            disks: 2,
            tools_running: true,
        },
    );
    let files: Vec<_> = (1..=2)
        .map(|n| vsphere.sim.disk_file(VM, n).unwrap())
        .collect();
    write_at(&files[0], 0, &noise(11, 2 * MIB as usize));
    write_at(&files[1], 7 * MIB, &noise(12, 3 * MIB as usize));

    let full = vsphere.backup(&bed);
    assert_eq!(full["consistency"], "application-consistent", "{full}");
    assert_eq!(disk(&full, "disk1")["bytes_read"], 2 * MIB);
    assert_eq!(disk(&full, "disk2")["bytes_read"], 3 * MIB);
    let first: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(n, file)| keep_copy(file, &bed.path(&format!("first-{n}.raw"))))
        .collect();

    // Only disk2 changes: disk1 reads nothing, disk2 its one changed chunk.
    write_at(&files[1], MIB + 5, &noise(13, 1000));
    let second = vsphere.backup(&bed);
    assert_eq!(mode(&second, "disk1").0, "incremental");
    assert_eq!(disk(&second, "disk1")["bytes_read"], 0);
    assert_eq!(disk(&second, "disk2")["bytes_read"], MIB);
    assert!(vsphere.snapshot_names().is_empty());

    // Both snapshots were asked for quiesced, and say so in their manifests.
    let requests = vsphere.sim.snapshot_requests().unwrap();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(
        requests.iter().all(|request| request.quiesce),
        "{requests:?}"
    );
    for report in [&full, &second] {
        let manifest = bed.manifest(report["snapshot"].as_str().unwrap());
        assert_eq!(
            manifest.consistency,
            haven_repo::Consistency::ApplicationConsistent
        );
        assert_eq!(manifest.disks.len(), 2);
    }
    for (report, copies) in [(&full, first.clone()), (&second, files.clone())] {
        let snapshot = report["snapshot"].as_str().unwrap();
        for (n, expected) in copies.iter().enumerate() {
            let out = bed.path(&format!(
                "restored-{}-{n}.raw",
                snapshot.replace([':', '@'], "_")
            ));
            let name = format!("disk{}", n + 1);
            bed.ok(&[
                "restore",
                snapshot,
                "--disk",
                &name,
                "--to",
                out.to_str().unwrap(),
            ]);
            assert_same_disk(expected, &out);
        }
    }
}

#[test]
fn a_vsphere_snapshot_becomes_a_kvm_domain_that_starts_and_reads_its_disk() {
    let bed = Bed::initialised();
    // QEMU runs as libvirt-qemu: it must reach the restored files.
    std::fs::set_permissions(bed.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let vsphere = Vsphere::start(&bed, DISK_MIB);
    let flat = vsphere.flat_file();
    write_at(&flat, 0, &noise(14, 600 << 10));
    write_at(&flat, 2 * MIB, &[0x5c; 64 << 10]);
    let report = vsphere.backup(&bed);
    let snapshot = report["snapshot"].as_str().unwrap();
    let hardware: serde_json::Value =
        serde_json::from_str(&bed.manifest(snapshot).vm_config.unwrap().data).unwrap();
    let mac = hardware["nics"][0]["mac"]
        .as_str()
        .expect("the simulator's VM has a NIC");

    let libvirt = Libvirt::start();
    let name = format!("from-vsphere-{}", std::process::id());
    let _domain = Domain::adopt(&libvirt, &name);
    let dir = bed.path("restored");
    let define = bed.json(&[
        "restore",
        snapshot,
        "--libvirt-define",
        &name,
        "--to",
        dir.to_str().unwrap(),
        "--uri",
        &libvirt.uri,
        "--domain-type",
        "qemu",
        // The test's libvirtd has no network driver: QEMU's user-mode network.
        "--user-network",
    ]);
    assert_eq!(define["dropped_disks"], serde_json::json!([]));

    // libvirt took the mapped hardware as it is.
    let xml = libvirt.virsh(&["dumpxml", &name]);
    assert!(xml.contains("<domain type='qemu'"), "{xml}");
    assert!(
        xml.contains(&format!(
            "<vcpu placement='static'>{}</vcpu>",
            hardware["cpus"]
        )),
        "{xml}"
    );
    assert!(
        xml.contains(&format!(
            "<memory unit='KiB'>{}</memory>",
            hardware["memory_mib"].as_u64().unwrap() * 1024
        )),
        "{xml}"
    );
    assert!(xml.contains("<target dev='vda' bus='virtio'/>"), "{xml}");
    assert!(
        xml.contains(&format!("<mac address='{}'/>", mac.to_lowercase())),
        "{xml}"
    );
    assert!(xml.contains("<interface type='user'>"), "{xml}");
    assert!(xml.contains("<model type='virtio'/>"), "{xml}");
    let restored = dir.join(format!("{name}-disk1.raw"));
    assert!(
        xml.contains(&format!(
            "<source file='{}'/>",
            restored.canonicalize().unwrap().display()
        )),
        "{xml}"
    );
    assert_same_disk(&flat, &restored);

    // It starts under TCG, and the guest's disk reads what the VMware disk held.
    libvirt.virsh(&["start", &name]);
    assert_eq!(libvirt.virsh(&["domstate", &name]).trim(), "running");
    // qemu-io in the guest's QEMU, on the guest's virtio disk: the pattern written into
    // the VMware flat file at 2 MiB reads back, and the same check fails where the
    // pattern is not. qemu-io prints to QEMU's standard output, which libvirt keeps in
    // the domain's log (flushed when QEMU exits).
    for command in ["read -P 0x5c 2097152 65536", "read -P 0x5c 0 4096"] {
        let out = libvirt.virsh(&[
            "qemu-monitor-command",
            "--hmp",
            &name,
            &format!("qemu-io -d virtio-disk0/virtio-backend \"{command}\""),
        ]);
        assert!(!out.to_lowercase().contains("error"), "{command}: {out}");
    }
    libvirt.virsh(&["destroy", &name]);
    let log_file = format!("/var/log/libvirt/qemu/{name}.log");
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    assert!(
        log.contains("read 65536/65536 bytes at offset 2097152"),
        "{log_file}: {log}"
    );
    assert_eq!(
        log.matches("Pattern verification failed").count(),
        1,
        "only the read of the unpatterned bytes fails: {log}"
    );
}
