//! `haven serve-nbd` against real NBD clients: `qemu-img`, `nbdcopy`, `nbdinfo`,
//! `qemu-io` and a `qemu-storage-daemon` running a qcow2 overlay with `block-stream`;
//! over TLS in `tls`.

mod tls;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_testkit::image::create_overlay;

use crate::support::{
    bed::Bed,
    image::{MIB, assert_same_disk, convert, flip_byte, uneven_image, write_at},
    process::{Guard, run, wait_for_line},
    qemu::{Qmp, qemu_storage_daemon},
};

/// Disk of the tests: data, a hole of whole chunks, data at an unaligned offset and a
/// short last chunk.
const SIZE: u64 = 24 * MIB + 3 * 512;

fn backed_up_image() -> (Bed, PathBuf) {
    let bed = Bed::initialised();
    let raw = bed.path("source.raw");
    uneven_image(&raw, SIZE, 3 * MIB, (12 * MIB + 777, 2 * MIB), 5000);
    let report = bed.backup("web1", &[&raw]);
    assert_eq!(report["disks"][0]["name"].as_str(), Some("vda"), "{report}");
    (bed, raw)
}

/// A running `haven serve-nbd`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Served {
    child: Option<Child>,
    /// The Unix socket, for a server listening on one.
    socket: Option<PathBuf>,
    /// Collects the server's standard output until it exits.
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Served {
    /// Serves `web1@latest` on the Unix socket `name` in the bed.
    fn start(bed: &Bed, name: &str) -> Self {
        let socket = bed.path(name);
        let spec = format!("unix:{}", socket.display());
        Self::spawn(bed, &spec, &[], Stdio::inherit(), Some(socket))
    }

    /// Serves `web1@latest` at `listen` with `extra` arguments; `stderr` is inherited
    /// unless the test reads it.
    fn spawn(
        bed: &Bed,
        listen: &str,
        extra: &[&str],
        stderr: Stdio,
        socket: Option<PathBuf>,
    ) -> Self {
        let mut child = bed
            .haven(&["serve-nbd", "web1@latest", "--listen", listen])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = wait_for_line(&mut child, "serving ");
        Self {
            child: Some(child),
            socket,
            stdout: Some(stdout),
        }
    }

    fn uri(&self) -> String {
        let socket = self.socket.as_ref().expect("a unix socket server");
        format!("nbd+unix:///vda?socket={}", socket.display())
    }

    /// Stops with SIGTERM and returns stdout; the server must exit cleanly.
    fn stop(self) -> String {
        self.stop_with_stderr().0
    }

    /// Stops with SIGTERM and returns stdout and (when piped) stderr.
    fn stop_with_stderr(mut self) -> (String, String) {
        let mut child = self.child.take().unwrap();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        }
        assert!(status.success(), "serve-nbd exit: {status}\n{stderr}");
        if let Some(socket) = &self.socket {
            assert!(!socket.exists(), "socket file left behind");
        }
        (stdout, stderr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn qemu_img_and_nbdcopy_read_the_snapshot_identically_and_nbdinfo_sees_holes() {
    let (bed, raw) = backed_up_image();
    let served = Served::start(&bed, "nbd.sock");

    let converted = bed.path("converted.raw");
    convert(&served.uri(), "raw", &converted, "raw");
    assert_same_disk(&raw, &converted);

    // nbdcopy opens several connections (the export allows multi-conn).
    let copied = bed.path("copied.raw");
    run(
        "nbdcopy",
        &["--connections=4", &served.uri(), copied.to_str().unwrap()],
    );
    assert_same_disk(&raw, &copied);

    // The map: data, then a hole over chunks 3..12, then data again.
    let map = run("nbdinfo", &["--map", &served.uri()]);
    let mut extents = Vec::new();
    for line in map.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let offset: u64 = fields[0].parse().unwrap();
        let length: u64 = fields[1].parse().unwrap();
        let kind: u32 = fields[2].parse().unwrap();
        extents.push((offset, length, kind));
    }
    assert_eq!(extents.iter().map(|e| e.1).sum::<u64>(), SIZE, "{map}");
    let kind_at = |position: u64| {
        extents
            .iter()
            .find(|(offset, length, _)| (*offset..offset + length).contains(&position))
            .map(|e| e.2)
            .unwrap()
    };
    assert_eq!(kind_at(0), 0, "{map}");
    assert_eq!(kind_at(3 * MIB), 3, "{map}");
    assert_eq!(kind_at(11 * MIB + 1), 3, "{map}");
    assert_eq!(kind_at(12 * MIB), 0, "{map}");
    assert_eq!(kind_at(SIZE - 1), 0, "{map}");

    // Writes are refused.
    let write = Command::new("qemu-io")
        .args(["-f", "raw", &served.uri(), "-c", "write -P 0xaa 0 4k"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&write.stdout),
        String::from_utf8_lossy(&write.stderr)
    );
    assert!(
        !write.status.success()
            && (text.contains("read-only")
                || text.contains("Operation not permitted")
                || text.contains("Permission denied")),
        "write through serve-nbd was not refused: {text}"
    );

    let stdout = served.stop();
    assert!(stdout.contains("chunks fetched"), "{stdout}");
}

#[test]
fn qcow2_overlay_on_the_export_is_written_and_block_streamed_to_a_standalone_image() {
    let (bed, raw) = backed_up_image();
    let served = Served::start(&bed, "nbd.sock");

    let overlay = bed.path("overlay.qcow2");
    create_overlay(&overlay, &served.uri(), "raw").unwrap();
    let qmp_socket = bed.path("qmp.sock");
    let guest_socket = bed.path("guest.sock");
    let daemon = Guard::new(
        qemu_storage_daemon(&qmp_socket)
            .arg("--blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=file0",
                overlay.display()
            ))
            .args(["--blockdev", "driver=qcow2,file=file0,node-name=disk0"])
            .arg("--nbd-server")
            .arg(format!(
                "addr.type=unix,addr.path={}",
                guest_socket.display()
            ))
            .args([
                "--export",
                "type=nbd,id=vm,node-name=disk0,name=vm,writable=on",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut qmp = Qmp::connect(&qmp_socket);

    // The "guest": writes into data and into the hole, and reads through the overlay.
    let guest = format!("nbd+unix:///vm?socket={}", guest_socket.display());
    let expected = bed.path("expected.raw");
    std::fs::copy(&raw, &expected).unwrap();
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            &guest,
            "-c",
            "write -P 0xaa 1M 64k",
            "-c",
            "write -P 0xbb 5M 4k",
            "-c",
            "read -P 0 6M 64k",
            "-c",
            "read -P 0xaa 1M 64k",
        ],
    );
    write_at(&expected, MIB, &[0xaa; 65536]);
    write_at(&expected, 5 * MIB, &[0xbb; 4096]);

    qmp.run(
        "block-stream",
        serde_json::json!({"job-id": "pull", "device": "disk0"}),
    );
    let completed = qmp.wait_event("BLOCK_JOB_COMPLETED");
    assert!(completed["data"].get("error").is_none(), "{completed}");
    qmp.run("quit", serde_json::json!({}));
    drop(daemon);

    // The export is gone: the overlay must now stand alone.
    let stdout = served.stop();
    assert!(stdout.contains("chunks fetched"), "{stdout}");
    let info = run(
        "qemu-img",
        &["info", "--output=json", overlay.to_str().unwrap()],
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert!(info.get("backing-filename").is_none(), "{info}");
    assert_same_disk(&expected, &overlay);

    // The backup itself is untouched.
    bed.ok(&["verify"]);
    let restored = bed.path("restored.raw");
    bed.ok(&["restore", "web1@latest", "--to", restored.to_str().unwrap()]);
    assert_same_disk(&raw, &restored);
}

#[test]
fn first_read_from_a_cold_cache_is_fast_and_corrupt_chunks_are_never_served() {
    let (bed, raw) = backed_up_image();
    let served = Served::start(&bed, "nbd.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endpoint = haven_nbd::Endpoint::Unix(bed.path("nbd.sock"));
    let original = std::fs::read(&raw).unwrap();
    let latency = runtime.block_on(async {
        let started = Instant::now();
        let mut client =
            haven_nbd::Client::connect(&endpoint, &haven_nbd::ConnectOptions::new("vda"))
                .await
                .unwrap();
        let mut buf = vec![0u8; 4096];
        let offset = 12 * MIB + 4096;
        client.read(offset, &mut buf).await.unwrap();
        let latency = started.elapsed();
        assert_eq!(&buf[..], &original[offset as usize..offset as usize + 4096]);
        latency
    });
    eprintln!(
        "serve-nbd first read (connect + 4 KiB, cold cache): {:.1} ms",
        latency.as_secs_f64() * 1000.0
    );
    assert!(
        latency < Duration::from_secs(1),
        "first read took {latency:?}"
    );
    drop(served);

    // Corrupt every stored chunk: a cold server must answer with errors, not bytes.
    for chunk in bed.chunk_files() {
        let length = chunk.metadata().unwrap().len();
        flip_byte(&chunk, length / 2);
    }
    let served = Served::start(&bed, "nbd2.sock");
    let endpoint = haven_nbd::Endpoint::Unix(bed.path("nbd2.sock"));
    runtime.block_on(async {
        let mut client =
            haven_nbd::Client::connect(&endpoint, &haven_nbd::ConnectOptions::new("vda"))
                .await
                .unwrap();
        let mut buf = vec![0u8; 4096];
        let error = client.read(0, &mut buf).await.unwrap_err();
        assert!(error.to_string().contains("EIO"), "{error}");
        // Holes still read as zeros without touching chunks.
        client.read(5 * MIB, &mut buf).await.unwrap();
        assert!(buf.iter().all(|&byte| byte == 0));
    });
    let converted = bed.path("converted.raw");
    let output = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw", &served.uri()])
        .arg(&converted)
        .output()
        .unwrap();
    assert!(!output.status.success(), "qemu-img read a corrupt snapshot");
    served.stop();
}
