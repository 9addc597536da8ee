//! The client against real servers: `qemu-nbd` over a Unix socket and
//! `qemu-storage-daemon` over TCP. Data is written with `qemu-io` and
//! checked byte for byte; allocation and dirty bitmaps are checked against
//! exactly what was written. A missing binary fails the test.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haven_nbd::{
    CONTEXT_BASE_ALLOCATION, Client, ConnectOptions, Endpoint, Extent, NbdError, STATE_DIRTY,
    STATE_HOLE, STATE_ZERO, dirty_bitmap_context,
};
use haven_testkit::image::create_qcow2;
use serde_json::{Value, json};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Kills the server it owns when the test ends, whatever the outcome.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn spawn(program: &str, args: &[&str]) -> ChildGuard {
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {program}: {error}"));
        ChildGuard { child }
    }

    fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a program that must succeed.
fn run(program: &str, args: &[&str]) {
    haven_testkit::process::run(Command::new(program).args(args), "the qemu-utils package")
        .unwrap_or_else(|error| panic!("{error}"));
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are utf-8")
}

/// A qcow2 image plus the bytes a reader must see, kept in step with every write.
struct Image {
    path: PathBuf,
    expected: Vec<u8>,
}

impl Image {
    fn create(dir: &Path, name: &str, size: u64) -> Image {
        let path = dir.join(name);
        create_qcow2(&path, size).unwrap();
        Image {
            path,
            expected: vec![0; size as usize],
        }
    }

    /// Writes `pattern` with qemu-io, as a guest would.
    fn qemu_io_write(&mut self, pattern: u8, offset: u64, length: u64) {
        let command = format!("write -P {pattern} {offset} {length}");
        run(
            "qemu-io",
            &["-f", "qcow2", path_str(&self.path), "-c", &command],
        );
        self.expected[offset as usize..(offset + length) as usize].fill(pattern);
    }

    fn add_bitmap(&self, name: &str) {
        run(
            "qemu-img",
            &["bitmap", "--add", "-f", "qcow2", path_str(&self.path), name],
        );
    }
}

fn wait_for_unix_socket(path: &Path, server: &mut ChildGuard) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while StdUnixStream::connect(path).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `qemu-nbd` on a Unix socket, persistent so probes do not end it.
fn qemu_nbd(dir: &Path, image: &Image, extra: &[&str]) -> (ChildGuard, Endpoint) {
    let socket = dir.join("nbd.sock");
    let mut args = vec!["-t", "-f", "qcow2", "-x", "disk", "-k", path_str(&socket)];
    args.extend_from_slice(extra);
    args.push(path_str(&image.path));
    let mut server = ChildGuard::spawn("qemu-nbd", &args);
    wait_for_unix_socket(&socket, &mut server);
    (server, Endpoint::Unix(socket))
}

fn options(contexts: &[&str]) -> ConnectOptions {
    ConnectOptions {
        export: "disk".to_string(),
        meta_contexts: contexts.iter().map(|context| context.to_string()).collect(),
        timeout: Duration::from_secs(10),
    }
}

/// Checks the extents tile `[offset, offset + length)` without gaps.
fn assert_tiles(extents: &[Extent], offset: u64, length: u64) {
    assert!(!extents.is_empty());
    let mut position = offset;
    for extent in extents {
        assert_eq!(extent.offset, position, "gap or overlap in {extents:?}");
        assert!(extent.length > 0);
        position = extent.end();
    }
    assert_eq!(position, offset + length, "extents do not reach the end");
}

/// Merges adjacent extents whose flags satisfy `predicate` into ranges.
fn ranges_where(extents: &[Extent], predicate: impl Fn(u32) -> bool) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for extent in extents.iter().filter(|extent| predicate(extent.flags)) {
        match ranges.last_mut() {
            Some(last) if last.1 == extent.offset => last.1 = extent.end(),
            _ => ranges.push((extent.offset, extent.end())),
        }
    }
    ranges
}

#[tokio::test]
async fn reads_match_qemu_io_writes_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // Larger than the 32 MiB request cap, so one read is split.
    let size = 48 * MIB;
    let mut image = Image::create(dir.path(), "data.qcow2", size);
    image.qemu_io_write(0xaa, 0, 64 * KIB);
    image.qemu_io_write(0x11, MIB + 512, 3 * KIB);
    image.qemu_io_write(0x55, 33 * MIB - 4 * KIB, MIB);
    image.qemu_io_write(0x77, size - 64 * KIB, 64 * KIB);
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &["-r"]);

    let mut client = Client::connect(&endpoint, &options(&[])).await.unwrap();
    assert_eq!(client.size(), size);
    assert!(client.is_read_only());

    let mut whole = vec![0x5a; size as usize];
    client.read(0, &mut whole).await.unwrap();
    assert!(
        whole == image.expected,
        "whole-disk read differs from what qemu-io wrote"
    );

    let mut window = vec![0u8; 5000];
    let offset = MIB + 100;
    client.read(offset, &mut window).await.unwrap();
    assert_eq!(
        window,
        image.expected[offset as usize..offset as usize + 5000]
    );

    assert!(matches!(
        client.write(0, &[1, 2, 3]).await,
        Err(NbdError::ReadOnly)
    ));
    assert!(matches!(
        client.read(size - 10, &mut [0u8; 11]).await,
        Err(NbdError::InvalidArgument(_))
    ));
    client.disconnect().await.unwrap();
    server.stop();
}

#[tokio::test]
async fn base_allocation_reports_holes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut image = Image::create(dir.path(), "sparse.qcow2", size);
    image.qemu_io_write(0x01, MIB, 64 * KIB);
    image.qemu_io_write(0x02, 8 * MIB, 256 * KIB);
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &["-r"]);

    let mut client = Client::connect(&endpoint, &options(&[CONTEXT_BASE_ALLOCATION]))
        .await
        .unwrap();
    assert!(client.has_meta_context(CONTEXT_BASE_ALLOCATION));

    let extents = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, size)
        .await
        .unwrap();
    assert_tiles(&extents, 0, size);
    let data = ranges_where(&extents, |flags| flags & STATE_HOLE == 0);
    assert_eq!(
        data,
        vec![(MIB, MIB + 64 * KIB), (8 * MIB, 8 * MIB + 256 * KIB)]
    );
    let holes = ranges_where(&extents, |flags| flags == STATE_HOLE | STATE_ZERO);
    assert_eq!(
        holes,
        vec![
            (0, MIB),
            (MIB + 64 * KIB, 8 * MIB),
            (8 * MIB + 256 * KIB, size)
        ]
    );

    // An unaligned window starts exactly at its offset and is clamped at its end.
    let offset = MIB + 4 * KIB + 7;
    let length = 100 * KIB;
    let window = client
        .block_status(CONTEXT_BASE_ALLOCATION, offset, length)
        .await
        .unwrap();
    assert_tiles(&window, offset, length);
    assert_eq!(window[0].flags & STATE_HOLE, 0);
    assert_eq!(window.last().unwrap().flags, STATE_HOLE | STATE_ZERO);

    let bitmap = dirty_bitmap_context("absent");
    assert!(!client.has_meta_context(&bitmap));
    assert!(matches!(
        client.block_status(&bitmap, 0, size).await,
        Err(NbdError::MetaContextNotNegotiated(_))
    ));
    client.disconnect().await.unwrap();
    server.stop();
}

#[tokio::test]
async fn dirty_bitmap_reports_exactly_the_written_extents() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut image = Image::create(dir.path(), "dirty.qcow2", size);
    // Written before the bitmap exists: data, but not dirty.
    image.qemu_io_write(0x10, 0, 128 * KIB);
    image.add_bitmap("bm0");
    image.qemu_io_write(0x20, 2 * MIB, 64 * KIB);
    image.qemu_io_write(0x30, 5 * MIB + 64 * KIB, 128 * KIB);
    image.qemu_io_write(0x40, 15 * MIB, MIB);
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &["-r", "-B", "bm0"]);

    let bitmap = dirty_bitmap_context("bm0");
    let mut client = Client::connect(
        &endpoint,
        &options(&[CONTEXT_BASE_ALLOCATION, bitmap.as_str()]),
    )
    .await
    .unwrap();
    assert!(client.has_meta_context(CONTEXT_BASE_ALLOCATION));
    assert!(client.has_meta_context(&bitmap));

    let extents = client.block_status(&bitmap, 0, size).await.unwrap();
    assert_tiles(&extents, 0, size);
    let dirty = ranges_where(&extents, |flags| flags & STATE_DIRTY != 0);
    assert_eq!(
        dirty,
        vec![
            (2 * MIB, 2 * MIB + 64 * KIB),
            (5 * MIB + 64 * KIB, 5 * MIB + 192 * KIB),
            (15 * MIB, 16 * MIB),
        ]
    );

    // The other context still answers on the same connection.
    let allocation = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, size)
        .await
        .unwrap();
    let data = ranges_where(&allocation, |flags| flags & STATE_HOLE == 0);
    assert_eq!(data[0], (0, 128 * KIB));

    // The dirty ranges read back what qemu-io wrote.
    for (start, end) in dirty {
        let mut buf = vec![0u8; (end - start) as usize];
        client.read(start, &mut buf).await.unwrap();
        assert!(buf == image.expected[start as usize..end as usize]);
    }
    client.disconnect().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_connections_read_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let mut image = Image::create(dir.path(), "shared.qcow2", size);
    for quarter in 0..4u64 {
        image.qemu_io_write(0x60 + quarter as u8, quarter * 2 * MIB + 4 * KIB, MIB);
    }
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &["-r", "-e", "4"]);

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(&endpoint, &options(&[])).await.unwrap());
    }
    assert!(clients[0].can_multi_conn());
    let expected = std::sync::Arc::new(image.expected.clone());
    let mut tasks = Vec::new();
    for (quarter, mut client) in clients.into_iter().enumerate() {
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            let start = quarter as u64 * 2 * MIB;
            let mut buf = vec![0u8; 2 * MIB as usize];
            for _ in 0..5 {
                client.read(start, &mut buf).await.unwrap();
                assert!(buf == expected[start as usize..(start + 2 * MIB) as usize]);
            }
            client.disconnect().await.unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.stop();
}

#[tokio::test]
async fn write_flush_and_read_back_on_a_writable_export() {
    let dir = tempfile::tempdir().unwrap();
    let size = 8 * MIB;
    let mut image = Image::create(dir.path(), "rw.qcow2", size);
    image.qemu_io_write(0x33, 3 * MIB, 512 * KIB);
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &[]);

    let mut client = Client::connect(&endpoint, &options(&[])).await.unwrap();
    assert!(!client.is_read_only());
    let payload: Vec<u8> = (0..100_000u32).map(|index| (index % 251) as u8).collect();
    let offset = MIB + 123;
    client.write(offset, &payload).await.unwrap();
    image.expected[offset as usize..offset as usize + payload.len()].copy_from_slice(&payload);
    client
        .write_zeroes(3 * MIB + 4096, 64 * 1024)
        .await
        .unwrap();
    image.expected[(3 * MIB + 4096) as usize..(3 * MIB + 4096 + 65536) as usize].fill(0);
    client.flush().await.unwrap();

    let mut buf = vec![0u8; size as usize];
    client.read(0, &mut buf).await.unwrap();
    assert!(
        buf == image.expected,
        "read-back on the writing connection differs"
    );
    client.disconnect().await.unwrap();

    let mut second = Client::connect(&endpoint, &options(&[])).await.unwrap();
    let mut again = vec![0u8; size as usize];
    second.read(0, &mut again).await.unwrap();
    assert!(
        again == image.expected,
        "read-back on a new connection differs"
    );
    second.disconnect().await.unwrap();
    server.stop();

    // Independent check: the image on disk holds what was written.
    let raw = dir.path().join("rw.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "qcow2",
            "-O",
            "raw",
            path_str(&image.path),
            path_str(&raw),
        ],
    );
    assert!(std::fs::read(&raw).unwrap() == image.expected);
}

#[tokio::test]
async fn unknown_export_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let image = Image::create(dir.path(), "named.qcow2", MIB);
    let (server, endpoint) = qemu_nbd(dir.path(), &image, &["-r"]);
    let mut wrong = options(&[CONTEXT_BASE_ALLOCATION]);
    wrong.export = "nope".to_string();
    match Client::connect(&endpoint, &wrong).await {
        Err(NbdError::UnknownExport { export, .. }) => assert_eq!(export, "nope"),
        other => panic!("expected UnknownExport, got {other:?}"),
    }
    server.stop();
}

/// A QMP session: JSON lines on a Unix socket.
struct Qmp {
    reader: BufReader<StdUnixStream>,
    writer: StdUnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let stream = StdUnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.read_message();
        assert!(greeting.get("QMP").is_some(), "bad greeting {greeting}");
        qmp.execute("qmp_capabilities", json!({}));
        qmp
    }

    fn read_message(&mut self) -> Value {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).unwrap();
        assert!(read > 0, "qmp closed");
        serde_json::from_str(&line).unwrap()
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let message = self.read_message();
            if message.get("event").is_some() {
                continue;
            }
            if let Some(error) = message.get("error") {
                panic!("qmp {command} failed: {error}");
            }
            return message["return"].clone();
        }
    }
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn storage_daemon_over_tcp_with_live_dirty_bitmap() {
    let dir = tempfile::tempdir().unwrap();
    let size = 16 * MIB;
    let mut image = Image::create(dir.path(), "vm.qcow2", size);
    image.qemu_io_write(0x0f, 0, 64 * KIB);
    let qmp_path = dir.path().join("qmp.sock");
    let port = free_tcp_port();
    let chardev = format!(
        "socket,path={},server=on,wait=off,id=m",
        path_str(&qmp_path)
    );
    let file = format!(
        "driver=file,filename={},node-name=file0",
        path_str(&image.path)
    );
    let nbd_server = format!("addr.type=inet,addr.host=127.0.0.1,addr.port={port}");
    let mut daemon = ChildGuard::spawn(
        "qemu-storage-daemon",
        &[
            "--chardev",
            &chardev,
            "--monitor",
            "chardev=m",
            "--blockdev",
            &file,
            "--blockdev",
            "driver=qcow2,file=file0,node-name=disk0",
            "--blockdev",
            "driver=raw,file=disk0,node-name=top",
            "--nbd-server",
            &nbd_server,
        ],
    );
    wait_for_unix_socket(&qmp_path, &mut daemon);
    let mut qmp = Qmp::connect(&qmp_path);
    qmp.execute(
        "block-dirty-bitmap-add",
        json!({"node": "disk0", "name": "bm0", "persistent": true}),
    );
    qmp.execute(
        "block-export-add",
        json!({"type": "nbd", "id": "vm", "node-name": "disk0", "name": "vm",
               "writable": true, "bitmaps": ["bm0"]}),
    );

    // Guest writes through the export, as a running VM would.
    let uri = format!("nbd://127.0.0.1:{port}/vm");
    for (pattern, offset, length) in [(0xa1u8, 3 * MIB, 64 * KIB), (0xb2, 9 * MIB, 192 * KIB)] {
        let command = format!("write -P {pattern} {offset} {length}");
        run("qemu-io", &["-f", "raw", &uri, "-c", &command]);
        image.expected[offset as usize..(offset + length) as usize].fill(pattern);
    }

    let (endpoint, export) = Endpoint::parse_uri(&uri).unwrap();
    assert_eq!(endpoint, Endpoint::Tcp(format!("127.0.0.1:{port}")));
    let bitmap = dirty_bitmap_context("bm0");
    let connect_options = ConnectOptions {
        export,
        meta_contexts: vec![CONTEXT_BASE_ALLOCATION.to_string(), bitmap.clone()],
        timeout: Duration::from_secs(10),
    };
    let mut client = Client::connect(&endpoint, &connect_options).await.unwrap();
    assert_eq!(client.size(), size);
    assert!(client.has_meta_context(&bitmap));

    let extents = client.block_status(&bitmap, 0, size).await.unwrap();
    assert_tiles(&extents, 0, size);
    assert_eq!(
        ranges_where(&extents, |flags| flags & STATE_DIRTY != 0),
        vec![
            (3 * MIB, 3 * MIB + 64 * KIB),
            (9 * MIB, 9 * MIB + 192 * KIB)
        ]
    );
    let allocation = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, size)
        .await
        .unwrap();
    assert_eq!(
        ranges_where(&allocation, |flags| flags & STATE_HOLE == 0),
        vec![
            (0, 64 * KIB),
            (3 * MIB, 3 * MIB + 64 * KIB),
            (9 * MIB, 9 * MIB + 192 * KIB)
        ]
    );

    let mut whole = vec![0u8; size as usize];
    client.read(0, &mut whole).await.unwrap();
    assert!(whole == image.expected);

    // Our own write shows up in the live bitmap and reads back.
    let payload = vec![0xc3u8; 64 * KIB as usize];
    client.write(12 * MIB, &payload).await.unwrap();
    client.flush().await.unwrap();
    let extents = client.block_status(&bitmap, 0, size).await.unwrap();
    assert_eq!(
        ranges_where(&extents, |flags| flags & STATE_DIRTY != 0),
        vec![
            (3 * MIB, 3 * MIB + 64 * KIB),
            (9 * MIB, 9 * MIB + 192 * KIB),
            (12 * MIB, 12 * MIB + 64 * KIB)
        ]
    );
    let mut back = vec![0u8; payload.len()];
    client.read(12 * MIB, &mut back).await.unwrap();
    assert_eq!(back, payload);
    client.disconnect().await.unwrap();
    daemon.stop();
}
