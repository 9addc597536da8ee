//! vSphere: snapshot, changed block tracking and ranged reads of flat disks, against
//! govmomi's vCenter simulator extended with `QueryChangedDiskAreas` (crates/testkit/vcsim).

use crate::support::bed::Bed;
use crate::support::image::{MIB, assert_same_disk, noise, write_at};
use crate::support::report::{disk_stat, mode};
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
