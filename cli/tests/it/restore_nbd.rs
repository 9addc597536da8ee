//! `haven restore --to nbd+unix://…`: restore into an existing disk exported over NBD by
//! a real `qemu-storage-daemon` or `qemu-nbd`, checked with `qemu-img compare`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_testkit::image::create_qcow2;

use crate::support::{
    bed::Bed,
    image::{MIB, assert_same_disk, blank_image, noise, raw_image, to_qcow2, write_at},
    process::free_port,
};

const SIZE: u64 = 64 * MIB;

/// A writable NBD export of a qcow2 image, stopped with SIGTERM (which makes both
/// servers flush and exit cleanly) when dropped or when `stop` is called.
struct Export {
    child: Option<Child>,
    socket: PathBuf,
}

impl Export {
    /// `qemu-storage-daemon` with a writable export named `vm`.
    fn storage_daemon(bed: &Bed, image: &Path) -> Self {
        let socket = bed.path("qsd.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=file0",
                image.display()
            ))
            .args(["--blockdev", "driver=qcow2,file=file0,node-name=disk0"])
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", socket.display()))
            .args([
                "--export",
                "type=nbd,id=vm,node-name=disk0,name=vm,writable=on",
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-storage-daemon must be installed (qemu-utils)");
        Self::wait(child, socket)
    }

    /// `qemu-nbd` of `image` (single connection, no multi-conn promise), persistent.
    fn qemu_nbd(bed: &Bed, image: &Path, format: &str) -> Self {
        let socket = bed.path("qemu-nbd.sock");
        let child = Command::new("qemu-nbd")
            .args(["-f", format, "-x", "vm", "-t", "-k"])
            .arg(&socket)
            .arg(image)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd must be installed (qemu-utils)");
        Self::wait(child, socket)
    }

    /// `qemu-nbd` of a raw `image` on TCP 127.0.0.1:`port`, persistent.
    fn qemu_nbd_tcp(image: &Path, port: u16) -> Self {
        let child = Command::new("qemu-nbd")
            .args(["-f", "raw", "-x", "vm", "-t", "-b", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .arg(image)
            .stdin(Stdio::null())
            .spawn()
            .expect("qemu-nbd must be installed (qemu-utils)");
        let export = Self {
            child: Some(child),
            socket: PathBuf::new(),
        };
        export.wait_until("qemu-nbd", |_| {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
    }

    fn wait(child: Child, socket: PathBuf) -> Self {
        let export = Self {
            child: Some(child),
            socket,
        };
        export.wait_until("nbd server", |export| export.socket.exists())
    }

    /// Waits (10 s at most) until `listening` says the server `name` accepts clients;
    /// fails the test if it exits first.
    fn wait_until(mut self, name: &str, listening: impl Fn(&Self) -> bool) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(&self) {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited early: {status}");
            }
            assert!(Instant::now() < deadline, "{name} did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        self
    }

    fn uri(&self) -> String {
        format!("nbd+unix:///vm?socket={}", self.socket.display())
    }

    /// SIGTERM and wait, so the image is flushed and closed before it is compared.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("nbd server did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Old version: data in [0, 20 MiB) and [40, 48) MiB. New version: three scattered
/// 4 KiB writes (slots 2, 5, 9), slot 42 zeroed, 2 MiB of new data in the old hole at
/// 30 MiB. Returns (old raw, new raw).
fn two_versions(bed: &Bed) -> (PathBuf, PathBuf) {
    let old = bed.path("old.raw");
    raw_image(
        &old,
        SIZE,
        &[(0, 20 * MIB as usize), (40 * MIB, 8 * MIB as usize)],
    );
    let new = bed.path("new.raw");
    std::fs::copy(&old, &new).unwrap();
    for (number, slot) in [2u64, 5, 9].into_iter().enumerate() {
        write_at(&new, slot * MIB + 8192, &noise(1000 + number as u64, 4096));
    }
    write_at(&new, 42 * MIB, &vec![0u8; MIB as usize]);
    write_at(&new, 30 * MIB, &noise(2000, 2 * MIB as usize));
    (old, new)
}

fn field(report: &serde_json::Value, name: &str) -> u64 {
    report[name]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} missing: {report}"))
}

#[test]
fn only_changed_writes_just_the_differing_slots() {
    let bed = Bed::initialised();
    let (old, new) = two_versions(&bed);
    bed.backup("web1", &[&new]);
    let target = bed.path("target.qcow2");
    to_qcow2(&old, &target);

    let mut export = Export::storage_daemon(&bed, &target);
    let uri = export.uri();
    let report = bed.json(&["restore", "web1@latest", "--to", &uri, "--only-changed"]);
    export.stop();
    assert_same_disk(&target, &new);

    assert_eq!(report["format"].as_str(), Some("nbd"), "{report}");
    assert_eq!(field(&report, "size"), SIZE);
    // Slots 2, 5, 9 (changed) and 30, 31 (new data in a hole).
    assert_eq!(field(&report, "bytes_written"), 5 * MIB, "{report}");
    assert_eq!(field(&report, "bytes_zeroed"), MIB, "{report}");
    // Every slot the target holds data in is read once; its holes are not.
    assert_eq!(field(&report, "bytes_compared"), 28 * MIB, "{report}");
    assert_eq!(
        field(&report, "bytes_unchanged") + field(&report, "bytes_written"),
        SIZE - MIB,
        "{report}"
    );

    // A second run finds nothing to do.
    let mut export = Export::storage_daemon(&bed, &target);
    let uri = export.uri();
    let again = bed.json(&["restore", "web1@latest", "--to", &uri, "--only-changed"]);
    export.stop();
    assert_eq!(field(&again, "bytes_written"), 0, "{again}");
    assert_eq!(field(&again, "bytes_zeroed"), 0, "{again}");
    assert_same_disk(&target, &new);
}

#[test]
fn full_restore_into_qemu_nbd_and_clear_errors() {
    let bed = Bed::initialised();
    let (old, new) = two_versions(&bed);
    bed.backup("web1", &[&new]);

    // Without --only-changed every slot is written: data slots as data, zero slots zeroed.
    let target = bed.path("target.raw");
    std::fs::copy(&old, &target).unwrap();
    let mut export = Export::qemu_nbd(&bed, &target, "raw");
    let uri = export.uri();
    let report = bed.json(&["restore", "web1@latest", "--to", &uri]);
    export.stop();
    assert_same_disk(&target, &new);
    assert_eq!(field(&report, "bytes_compared"), 0, "{report}");
    assert_eq!(
        field(&report, "bytes_written") + field(&report, "bytes_zeroed"),
        SIZE,
        "{report}"
    );

    // The same over TCP (nbd://host:port/export) into an empty disk.
    let blank = bed.path("blank.raw");
    blank_image(&blank, SIZE);
    let port = free_port();
    let mut export = Export::qemu_nbd_tcp(&blank, port);
    let uri = format!("nbd://127.0.0.1:{port}/vm");
    let report = bed.json(&["restore", "web1@latest", "--to", &uri, "--only-changed"]);
    export.stop();
    assert_same_disk(&blank, &new);
    // An empty target: every zero slot is skipped by block status, no slot is compared.
    assert_eq!(field(&report, "bytes_compared"), 0, "{report}");
    assert_eq!(field(&report, "bytes_zeroed"), 0, "{report}");

    // A target of another size is refused before anything is written.
    let small = bed.path("small.qcow2");
    create_qcow2(&small, 32 * MIB).unwrap();
    let mut export = Export::qemu_nbd(&bed, &small, "qcow2");
    let error = bed.fails(&["restore", "web1@latest", "--to", &export.uri()]);
    export.stop();
    assert!(error.contains("is 33554432 bytes"), "{error}");
    assert!(error.contains(&SIZE.to_string()), "{error}");

    // --only-changed makes no sense for a file, and an unreachable socket is one line.
    let file = bed.path("out.raw").display().to_string();
    let error = bed.fails(&["restore", "web1@latest", "--to", &file, "--only-changed"]);
    assert!(error.contains("--only-changed"), "{error}");
    let missing = format!(
        "nbd+unix:///vm?socket={}",
        bed.path("nothing.sock").display()
    );
    bed.fails(&["restore", "web1@latest", "--to", &missing]);
}
