//! Restore into libvirt: a running TCG domain (private `libvirtd`, see
//! `support/libvirt.rs`) is backed up with `haven backup libvirt`, written to, and its
//! first snapshot restored with `haven restore VM@TIME --libvirt-define NAME --to DIR`.
//! The new domain has its own name and UUID, its disks are the restored files (equal to
//! a plain restore of each disk, that is to the snapshot, not to the later writes), it
//! starts, and the original domain is untouched. The refusals (existing name, existing
//! files, a snapshot without domain XML) define nothing and write nothing. Both domains
//! and the daemons are cleaned up by `Drop` guards, also on failure.

use std::path::PathBuf;
use std::time::Instant;

use crate::support::{
    image::{MIB, assert_raw_same_as_qcow2, assert_same_disk},
    libvirt::{Domain, Libvirt, TARGETS, two_disk_bed},
};

const CHUNK: u64 = 256 * 1024;
const DISK_SIZE: u64 = 32 * MIB;

/// `<source file='…'/>` paths of a domain's disks, in order.
fn disk_sources(xml: &str) -> Vec<String> {
    xml.match_indices("<source file='")
        .map(|(at, prefix)| {
            let rest = &xml[at + prefix.len()..];
            rest[..rest.find('\'').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn libvirt_define_recreates_the_domain_from_a_snapshot() {
    let test_started = Instant::now();
    let (bed, snapshot_copies, images) = two_disk_bed(CHUNK, DISK_SIZE, |disk| {
        vec![
            (disk * 4096, 12 * MIB as usize),
            (20 * MIB, 4 * MIB as usize),
        ]
    });

    let libvirt = Libvirt::start();
    let name = format!("haven-restore-{}", std::process::id());
    let restored_name = format!("restored-{name}");
    let domain = Domain::start(&libvirt, &name, &images, bed.dir.path());
    let original_uuid = libvirt.virsh(&["domuuid", &name]).trim().to_string();
    let original_xml = libvirt.virsh(&["dumpxml", &name, "--inactive"]);

    let backup = bed.json(&[
        "backup",
        "libvirt",
        "--domain",
        &name,
        "--uri",
        &libvirt.uri,
        "--vm",
        "vm",
        "--scratch-dir",
        bed.path("scratch").to_str().unwrap(),
    ]);
    let first = backup["snapshot"].as_str().unwrap().to_string();
    // Written after the snapshot: must not show in the restore.
    domain.write(0, 0x5a, MIB, 65536);
    domain.write(1, 0x5b, 25 * MIB, 4096);

    let dir = bed.path("restored");
    // Guard first, so the domain goes even when an assertion below fails.
    let restored_domain = Domain::adopt(&libvirt, &restored_name);
    let define = |target: &str, dir: &PathBuf| {
        vec![
            "restore".to_string(),
            first.clone(),
            "--libvirt-define".into(),
            target.to_string(),
            "--to".into(),
            dir.display().to_string(),
            "--format".into(),
            "qcow2".into(),
            "--uri".into(),
            libvirt.uri.clone(),
        ]
    };
    let args = define(&restored_name, &dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let report = bed.json(&args);
    eprintln!("restore + define took {:?}", started.elapsed());
    assert_eq!(report["domain"], restored_name.as_str());
    assert_eq!(report["disks"].as_array().unwrap().len(), 2);
    assert_eq!(report["dropped_disks"], serde_json::json!([]));

    // The new domain: its own name and UUID, its disks on the restored files.
    let files: Vec<PathBuf> = TARGETS
        .iter()
        .map(|target| dir.join(format!("{restored_name}-{target}.qcow2")))
        .collect();
    let xml = libvirt.virsh(&["dumpxml", &restored_name]);
    assert!(
        xml.contains(&format!("<name>{restored_name}</name>")),
        "{xml}"
    );
    let uuid = libvirt
        .virsh(&["domuuid", &restored_name])
        .trim()
        .to_string();
    assert_eq!(report["uuid"], uuid.as_str());
    assert_ne!(uuid, original_uuid);
    assert!(!xml.contains(&original_uuid));
    let canonical: Vec<String> = files
        .iter()
        .map(|file| std::fs::canonicalize(file).unwrap().display().to_string())
        .collect();
    assert_eq!(disk_sources(&xml), canonical, "{xml}");
    assert_eq!(xml.matches("type='qcow2'").count(), 2, "{xml}");
    for image in &images {
        assert!(!xml.contains(image.to_str().unwrap()), "{xml}");
    }

    // The restored files are the snapshot: equal to a plain restore of each disk, and
    // to the content before the later writes.
    for ((target, file), want) in TARGETS.iter().zip(&files).zip(&snapshot_copies) {
        let plain = bed.path(&format!("plain-{target}.raw"));
        bed.ok(&[
            "restore",
            &first,
            "--disk",
            target,
            "--to",
            plain.to_str().unwrap(),
        ]);
        assert_raw_same_as_qcow2(&plain, file);
        assert_same_disk(&plain, want);
    }

    // Refusals: nothing defined, nothing written.
    let taken = define(&name, &bed.path("elsewhere"));
    let taken: Vec<&str> = taken.iter().map(String::as_str).collect();
    assert!(bed.fails(&taken).contains("already exists"));
    assert!(
        !bed.path("elsewhere")
            .join(format!("{name}-vda.qcow2"))
            .exists()
    );
    let clash_dir = bed.path("clash");
    std::fs::create_dir(&clash_dir).unwrap();
    std::fs::write(clash_dir.join("other-vdb.qcow2"), b"mine").unwrap();
    let clash = define("other", &clash_dir);
    let clash: Vec<&str> = clash.iter().map(String::as_str).collect();
    assert!(bed.fails(&clash).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(clash_dir.join("other-vdb.qcow2")).unwrap(),
        b"mine"
    );
    assert!(!clash_dir.join("other-vda.qcow2").exists());
    let listed = libvirt.virsh(&["list", "--all", "--name"]);
    assert!(
        !listed.lines().any(|line| line.trim() == "other"),
        "{listed}"
    );
    let plain_image = bed.raw_image("plain.raw", 4 * MIB, &[(0, MIB as usize)]);
    let offline = bed.backup("offline", &[&plain_image]);
    let offline = offline["snapshot"].as_str().unwrap().to_string();
    let nope = bed.path("nope");
    let without_xml = [
        "restore",
        offline.as_str(),
        "--libvirt-define",
        "nope",
        "--to",
        nope.to_str().unwrap(),
        "--uri",
        &libvirt.uri,
    ];
    assert!(
        bed.fails(&without_xml)
            .contains("holds no VM configuration")
    );
    let qemu_dir = bed.path("qemu");
    let not_qemu = [
        "restore",
        first.as_str(),
        "--print-qemu",
        "--to",
        qemu_dir.to_str().unwrap(),
    ];
    let refused = bed.fails(&not_qemu);
    assert!(
        refused.contains("libvirt-xml configuration, not qemu-block-graph"),
        "{refused}"
    );
    assert!(!qemu_dir.join("vm-vda.raw").exists());

    // The copy starts next to the running original.
    let started = Instant::now();
    libvirt.virsh(&["start", &restored_name]);
    eprintln!("restored domain started in {:?}", started.elapsed());
    assert_eq!(
        libvirt.virsh(&["domstate", &restored_name]).trim(),
        "running"
    );

    // The original is untouched: same name, UUID, disks, still running.
    assert_eq!(libvirt.virsh(&["domstate", &name]).trim(), "running");
    assert_eq!(
        libvirt.virsh(&["domuuid", &name]).trim(),
        original_uuid.as_str()
    );
    assert_eq!(
        libvirt.virsh(&["dumpxml", &name, "--inactive"]),
        original_xml
    );

    drop(restored_domain);
    drop(domain);
    let listed = libvirt.virsh(&["list", "--all", "--name"]);
    assert!(listed.trim().is_empty(), "domains left: {listed}");
    drop(libvirt);
    eprintln!("test finished in {:?}", test_started.elapsed());
}
