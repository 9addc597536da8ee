//! Slow and idle clients: a client trickling its headers is dropped at the header-read
//! timeout, and a thousand connections that say nothing cannot keep a real client out.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use crate::support::storage_node::{Node, NodeOptions};

/// Most header bytes the slow client sends, one a second, before the test gives up
/// on the node ever dropping it.
const MOST_SLOW_BYTES: usize = 600;

#[test]
fn a_client_sending_headers_a_byte_a_second_is_dropped() {
    let node = Node::start_with(NodeOptions {
        extra_toml: "[limits]\nheader_read_timeout_secs = 2\n".to_owned(),
        ..NodeOptions::default()
    });
    let mut stream = TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    // Reading for a second between bytes paces the client and sees the close.
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".to_vec();
    request.resize(MOST_SLOW_BYTES, b'a');
    let mut answer = Vec::new();
    let mut sent = 0;
    let closed = 'sending: loop {
        let Some(&byte) = request.get(sent) else {
            break false;
        };
        if stream.write_all(&[byte]).is_err() {
            break true;
        }
        sent += 1;
        let mut buffer = [0u8; 1024];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break 'sending true,
                Ok(n) => answer.extend_from_slice(&buffer[..n]),
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(_) => break 'sending true,
            }
        }
    };
    assert!(
        closed,
        "the node kept a connection whose headers never ended ({sent} bytes sent)"
    );
    assert!(sent < request.len());
    eprintln!(
        "dropped after {sent} header bytes; answer: {:?}",
        String::from_utf8_lossy(&answer)
    );
    // Others are served as before.
    node.aws_ok(&["s3", "mb", "s3://after"]);
    node.aws_ok(&["s3", "ls"]);
}

#[test]
fn a_thousand_idle_connections_do_not_keep_a_client_out() {
    // Timeouts far longer than the test: only eviction can make room.
    let node = Node::start_with(NodeOptions {
        extra_toml: "[limits]\nmax_connections = 64\nheader_read_timeout_secs = 3600\nidle_timeout_secs = 3600\n"
            .to_owned(),
        ..NodeOptions::default()
    });
    node.aws_ok(&["s3", "mb", "s3://busy"]);
    let mut holder = std::process::Command::new("python3")
        .args(["-u", "-c", IDLE_CONNECTIONS, &node.port.to_string(), "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    let mut lines = BufReader::new(holder.stdout.take().expect("stdout")).lines();
    let opened = lines.next().expect("a line").expect("read");
    assert_eq!(opened, "OPEN 1000");
    // A normal client is served while those connections are open.
    std::fs::write(node.path("object"), b"served").expect("write");
    let object = node.path("object").display().to_string();
    node.aws_ok(&[
        "s3",
        "cp",
        &object,
        "s3://busy/object",
        "--only-show-errors",
    ]);
    let listing = node.aws_ok(&["s3", "ls", "s3://busy/"]);
    assert!(listing.contains("object"), "{listing}");
    let mut stdin = holder.stdin.take().expect("stdin");
    stdin.write_all(b"count\n").expect("ask for the count");
    drop(stdin);
    let closed = lines.next().expect("a line").expect("read");
    let _ = holder.wait();
    let closed: usize = closed
        .strip_prefix("CLOSED ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {closed:?}"));
    eprintln!("{closed} of 1000 idle connections were closed by the node");
    assert!(closed > 0, "no idle connection gave way");
}

/// Opens `argv[2]` TCP connections to port `argv[1]` and sends nothing; prints
/// `OPEN N`, waits for a line on stdin, then prints how many the server closed.
const IDLE_CONNECTIONS: &str = r#"
import socket, sys, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
port, count = int(sys.argv[1]), int(sys.argv[2])
sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
print(f"OPEN {len(sockets)}", flush=True)
sys.stdin.readline()
closed = 0
for s in sockets:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed += 1
    except BlockingIOError:
        pass
    except ConnectionError:
        closed += 1
print(f"CLOSED {closed}", flush=True)
"#;
