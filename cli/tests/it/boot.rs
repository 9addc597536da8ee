//! `haven verify --boot`: a real Debian guest (built by `haven_testkit::guest`) is
//! backed up, its disk deleted, and the snapshot booted from the repository alone under
//! QEMU; a snapshot without a root file system fails with the console and the screen
//! it stopped on as evidence; a guest TCP port is checked through an isolated network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::MutexGuard;

use haven_testkit::guest::{GUEST_TCP_PORT, GuestImages, READY_MARKER};

use crate::support::{
    bed::Bed,
    guest::{images, one_guest_at_a_time},
};

/// A sparse copy of `image` at `to`, the disk the test backs up and then deletes.
fn copy_disk(image: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success(), "cp {} failed", image.display());
}

/// `haven verify --boot SNAPSHOT --json ARGS` with the sandbox folders in `tmp`,
/// whose verdict must be `outcome` (`passed`: exit code 0, `failed`: 6, partial); the
/// JSON report, once nothing of the sandbox is left. With `--evidence DIR` among
/// `args`, an unexpected end shows the guest's console from `DIR/serial.log`.
fn verify_boot(
    bed: &Bed,
    snapshot: &str,
    tmp: &Path,
    args: &[&str],
    outcome: &str,
) -> serde_json::Value {
    let output = bed
        .haven(&["verify", "--boot", snapshot, "--json"])
        .args(args)
        .env("TMPDIR", tmp)
        .output()
        .unwrap();
    let expected = if outcome == "passed" { 0 } else { 6 };
    let console = args
        .iter()
        .position(|arg| *arg == "--evidence")
        .and_then(|at| args.get(at + 1))
        .and_then(|dir| std::fs::read_to_string(Path::new(dir).join("serial.log")).ok())
        .unwrap_or_default();
    assert_eq!(
        output.status.code(),
        Some(expected),
        "verify --boot {args:?}: {}\n{}\nserial console:\n{console}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["record"]["outcome"], outcome, "{report}");
    assert_sandbox_gone(tmp);
    report
}

/// Processes whose command line mentions `path` (a sandbox left running).
pub fn processes_using(path: &Path) -> Vec<String> {
    let needle = path.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(cmdline);
        }
    }
    found
}

/// Nothing of the sandbox is left: no folder in `tmp`, no process naming it.
fn assert_sandbox_gone(tmp: &Path) {
    let left: Vec<PathBuf> = std::fs::read_dir(tmp)
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    assert!(left.is_empty(), "sandbox files left: {left:?}");
    let processes = processes_using(tmp);
    assert!(
        processes.is_empty(),
        "sandbox processes left: {processes:?}"
    );
}

/// The guest slot held, a repository holding one snapshot of a guest disk whose
/// only copy was deleted after the backup, the snapshot's name, and folders for the
/// sandboxes and the evidence.
type Run = (MutexGuard<'static, ()>, Bed, String, PathBuf, PathBuf);

/// Takes the guest slot, backs up a copy of the image `pick` names as VM `vm`, then
/// deletes the copy: only the snapshot can boot it.
fn backed_up(pick: fn(&GuestImages) -> &PathBuf, vm: &str) -> Run {
    let images = images();
    let image = pick(&images);
    let slot = one_guest_at_a_time();
    let bed = Bed::initialised();
    let disk = bed.path(&format!("{vm}.raw"));
    copy_disk(image, &disk);
    let backup = bed.backup(vm, &[&disk]);
    let snapshot = backup["snapshot"].as_str().unwrap().to_string();
    std::fs::remove_file(&disk).unwrap();
    let tmp = bed.path("sandboxes");
    std::fs::create_dir(&tmp).unwrap();
    let evidence = bed.path("evidence");
    (slot, bed, snapshot, tmp, evidence)
}

fn snapshot_boot(bed: &Bed, vm: &str) -> serde_json::Value {
    let listed = bed.json(&["snapshots", "--vm", vm]);
    listed[0]["boot"].clone()
}

#[test]
fn a_backed_up_guest_boots_from_its_snapshot_alone() {
    let (_one, bed, snapshot, tmp, evidence) = backed_up(|images| &images.bootable, "guest");
    let report = verify_boot(
        &bed,
        &snapshot,
        &tmp,
        &[
            "--check",
            "agent",
            "--timeout",
            "10m",
            "--evidence",
            evidence.to_str().unwrap(),
        ],
        "passed",
    );
    let record = &report["record"];
    assert_eq!(record["check"], "agent", "{report}");
    assert!(
        record["detail"].as_str().unwrap().contains("guest-ping"),
        "{report}"
    );
    assert!(
        record["sandbox"]
            .as_str()
            .unwrap()
            .contains("root=/dev/vda1"),
        "{report}"
    );
    // The evidence is stored beside the snapshot, and written where asked.
    let keys: Vec<&str> = record["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key.as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2, "{report}");
    for key in &keys {
        assert!(bed.repo_dir().join(key).is_file(), "{key} not stored");
    }
    assert!(
        bed.repo_dir()
            .join(report["record_key"].as_str().unwrap())
            .is_file()
    );
    let serial = std::fs::read_to_string(evidence.join("serial.log")).unwrap();
    assert!(serial.contains("Linux version"), "{serial}");
    let screen = std::fs::read(evidence.join("screen.png")).unwrap();
    assert!(screen.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

    // `haven snapshots` shows the verdict.
    let boot = snapshot_boot(&bed, "guest");
    assert_eq!(boot["outcome"], "passed", "{boot}");

    // The serial check passes on the marker the guest prints once up.
    verify_boot(
        &bed,
        &snapshot,
        &tmp,
        &[
            "--check",
            &format!("serial:{READY_MARKER}"),
            "--timeout",
            "10m",
        ],
        "passed",
    );
}

#[test]
fn a_snapshot_without_a_root_file_system_fails_with_the_console_as_evidence() {
    let (_one, bed, snapshot, tmp, evidence) = backed_up(|images| &images.no_root, "broken");

    let report = verify_boot(
        &bed,
        &snapshot,
        &tmp,
        &["--timeout", "10m", "--evidence", evidence.to_str().unwrap()],
        "failed",
    );
    let record = &report["record"];
    assert!(
        record["detail"]
            .as_str()
            .unwrap()
            .contains("before the check passed"),
        "{report}"
    );
    let serial = std::fs::read_to_string(evidence.join("serial.log")).unwrap();
    assert!(serial.contains("No init found"), "{serial}");
    // QEMU stays alive when the guest gives up (its reboot is turned into a stop), so
    // the screen it left is evidence too.
    let keys = record["evidence"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{report}");
    for key in keys {
        assert!(bed.repo_dir().join(key.as_str().unwrap()).is_file());
    }
    let screen = std::fs::read(evidence.join("screen.png")).unwrap();
    assert!(screen.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // Recorded and shown; nothing was deleted.
    let boot = snapshot_boot(&bed, "broken");
    assert_eq!(boot["outcome"], "failed", "{boot}");
    let listed = bed.json(&["snapshots", "--vm", "broken"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

#[test]
fn a_guest_port_is_checked_through_an_isolated_network() {
    let (_one, bed, snapshot, tmp, evidence) = backed_up(|images| &images.bootable, "guest");
    // The guest's echo service listens: the check passes once the guest's NIC is up
    // (DHCP from QEMU's user-mode stack) and its socket unit accepts.
    let open = format!("tcp:{GUEST_TCP_PORT}");
    let report = verify_boot(
        &bed,
        &snapshot,
        &tmp,
        &["--check", &open, "--timeout", "10m"],
        "passed",
    );
    assert_eq!(report["record"]["check"], open.as_str(), "{report}");
    assert!(
        report["record"]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "the guest accepted a TCP connection on port {GUEST_TCP_PORT} after"
            )),
        "{report}"
    );

    // A port nothing listens on: QEMU's forward accepts on the host side all the
    // same, but the guest refuses, and the check fails at its timeout with the guest
    // up the whole time.
    let closed = format!("tcp:{}", GUEST_TCP_PORT + 1);
    let report = verify_boot(
        &bed,
        &snapshot,
        &tmp,
        &[
            "--check",
            &closed,
            "--timeout",
            "200s",
            "--evidence",
            evidence.to_str().unwrap(),
        ],
        "failed",
    );
    assert_eq!(
        report["record"]["detail"],
        format!("the check {closed} did not pass within 200 s"),
        "{report}"
    );
    let serial = std::fs::read_to_string(evidence.join("serial.log")).unwrap();
    assert!(
        serial.contains(READY_MARKER),
        "the guest never came up:\n{serial}"
    );
}
