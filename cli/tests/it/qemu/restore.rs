//! Restore for QEMU: a running qemu-system-x86_64 (TCG, paused, no OS) is backed up
//! with `haven backup qemu`, and `haven restore VM@TIME --print-qemu --to DIR` restores
//! every disk and prints how to attach them. A new QEMU started with the printed
//! `-blockdev`/`-device` arguments, and another one fed the printed QMP commands, both
//! show the guest devices on the restored files, which equal a plain restore of each
//! disk. Every QEMU is killed by a `Drop` guard.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::support::{
    bed::Bed,
    image::{MIB, assert_raw_same_as_qcow2, to_qcow2},
    process::Guard,
    qemu::{Qmp, qemu_system, start_qemu_system},
};

const CHUNK: u64 = 256 * 1024;
const TARGETS: [&str; 2] = ["vda", "vdb"];

/// A paused TCG qemu-system-x86_64 with a QMP socket and `extra` arguments.
fn start_qemu(dir: &Path, tag: &str, machine: &str, extra: &[String]) -> (Guard, Qmp) {
    let socket = dir.join(format!("{tag}-qmp.sock"));
    let guard = start_qemu_system(qemu_system(machine, &socket).args(extra), &socket);
    let qmp = Qmp::connect(&socket);
    (guard, qmp)
}

/// Guest device → image file, from `query-block`.
fn attached_files(qmp: &mut Qmp) -> Vec<(String, String)> {
    let blocks = qmp.run("query-block", json!({}));
    let mut files: Vec<(String, String)> = blocks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|block| {
            let qdev = block["qdev"].as_str()?;
            let device = qdev.split('/').find(|part| TARGETS.contains(part))?;
            let file = block["inserted"]["file"].as_str()?;
            Some((device.to_string(), file.to_string()))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn print_qemu_attaches_the_restored_disks_to_a_new_qemu() {
    let bed = Bed::new();
    bed.ok(&["repo", "init", "--chunk-size", &CHUNK.to_string()]);
    std::fs::create_dir(bed.path("scratch")).unwrap();
    let mut original_args = Vec::new();
    for (number, target) in TARGETS.iter().enumerate() {
        let raw = bed.raw_image(
            &format!("seed{number}.raw"),
            16 * MIB,
            &[(number as u64 * 4096, 6 * MIB as usize)],
        );
        let qcow2 = bed.path(&format!("d{number}.qcow2"));
        to_qcow2(&raw, &qcow2);
        original_args.extend([
            "-blockdev".to_string(),
            format!(
                "driver=file,filename={},node-name=file{number}",
                qcow2.display()
            ),
            "-blockdev".into(),
            format!("driver=qcow2,file=file{number},node-name=disk{number}"),
            "-device".into(),
            format!("virtio-blk-pci,drive=disk{number},id={target}"),
        ]);
    }
    let (_original, original_qmp) = start_qemu(bed.dir.path(), "original", "q35", &original_args);
    // One client per monitor: Haven's backup takes it.
    drop(original_qmp);
    let snapshot = bed.json(&[
        "backup",
        "qemu",
        "--qmp",
        bed.path("original-qmp.sock").to_str().unwrap(),
        "--vm",
        "vm",
        "--scratch-dir",
        bed.path("scratch").to_str().unwrap(),
    ])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let dir = bed.path("restored");
    let report = bed.json(&[
        "restore",
        &snapshot,
        "--print-qemu",
        "--to",
        dir.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    let files: Vec<PathBuf> = TARGETS
        .iter()
        .map(|target| std::fs::canonicalize(dir.join(format!("vm-{target}.qcow2"))).unwrap())
        .collect();
    for (target, file) in TARGETS.iter().zip(&files) {
        let plain = bed.path(&format!("plain-{target}.raw"));
        bed.ok(&[
            "restore",
            &snapshot,
            "--disk",
            target,
            "--to",
            plain.to_str().unwrap(),
        ]);
        assert_raw_same_as_qcow2(&plain, file);
    }
    let want: Vec<(String, String)> = TARGETS
        .iter()
        .zip(&files)
        .map(|(target, file)| (target.to_string(), file.display().to_string()))
        .collect();

    // The printed command line.
    let args: Vec<String> = report["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|arg| arg.as_str().unwrap().to_string())
        .collect();
    let (mut from_args, mut qmp) = start_qemu(bed.dir.path(), "args", "q35", &args);
    assert_eq!(attached_files(&mut qmp), want, "{args:?}");
    from_args.kill9();

    // The printed QMP sequence, on a machine with PCI hot-plug.
    let (_from_qmp, mut qmp) = start_qemu(bed.dir.path(), "qmp", "pc", &[]);
    for command in report["qmp"].as_array().unwrap() {
        qmp.run(
            command["execute"].as_str().unwrap(),
            command["arguments"].clone(),
        );
    }
    assert_eq!(attached_files(&mut qmp), want);

    // The text output prints the same arguments.
    let text = bed.ok(&[
        "restore",
        &snapshot,
        "--print-qemu",
        "--to",
        bed.path("again").to_str().unwrap(),
    ]);
    assert!(
        text.contains("-blockdev driver=raw,node-name=restored-vda"),
        "{text}"
    );
    assert!(text.contains("\"execute\":\"device_add\""), "{text}");
}
