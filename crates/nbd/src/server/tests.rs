//! The server against Haven's own client and against hostile byte streams.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;

use super::wire::*;
use super::*;
use crate::{CONTEXT_BASE_ALLOCATION, Client, ConnectOptions};

const BLOCK: u64 = PATTERN_BLOCK;

/// 1 MiB: data in even 64 KiB blocks, holes in odd ones, block 15 unreadable.
const PATTERN: PatternExport = PatternExport {
    blocks: 16,
    corrupt: Some(15),
};

struct Running {
    dir: tempfile::TempDir,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), NbdError>>,
}

impl Running {
    fn socket(&self) -> std::path::PathBuf {
        self.dir.path().join("nbd.sock")
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket())
    }
}

async fn start(config: ServerConfig) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let listener = ServerListener::bind(&Endpoint::Unix(dir.path().join("nbd.sock")))
        .await
        .unwrap();
    let (stop, shutdown) = watch::channel(false);
    let server = NbdServer::new(Arc::new(PATTERN), config);
    let task = tokio::spawn(async move { server.serve(listener, shutdown).await });
    Running { dir, stop, task }
}

fn expected(offset: u64, length: usize) -> Vec<u8> {
    PatternExport::expected(offset, length)
}

#[tokio::test]
async fn own_client_reads_block_status_and_is_refused_writes() {
    let running = start(ServerConfig::new("vda")).await;
    let mut options = ConnectOptions::new("vda");
    options.meta_contexts = vec![CONTEXT_BASE_ALLOCATION.to_string()];
    let mut client = Client::connect(&running.endpoint(), &options)
        .await
        .unwrap();
    assert_eq!(client.size(), 16 * BLOCK);
    assert!(client.is_read_only());
    assert!(client.can_multi_conn());
    assert!(client.has_meta_context(CONTEXT_BASE_ALLOCATION));

    let mut buf = vec![0u8; 300_000];
    client.read(1000, &mut buf).await.unwrap();
    assert_eq!(buf, expected(1000, 300_000));

    let extents = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, 4 * BLOCK)
        .await
        .unwrap();
    let flags: Vec<u32> = extents.iter().map(|extent| extent.flags).collect();
    assert_eq!(flags, vec![0, 3, 0, 3]);

    let error = client.write(0, &[1u8; 4096]).await.unwrap_err();
    assert!(
        error.to_string().contains("read-only") || error.to_string().contains("EPERM"),
        "{error}"
    );
    // A failing source reaches the client as EIO with the message, and the
    // connection stays usable.
    let mut tail = vec![0u8; 4096];
    let error = client.read(15 * BLOCK, &mut tail).await.unwrap_err();
    assert!(error.to_string().contains("EIO"), "{error}");
    assert!(error.to_string().contains("corrupt"), "{error}");
    client.read(0, &mut tail).await.unwrap();
    client.disconnect().await.unwrap();

    // Several connections at once.
    let mut readers = Vec::new();
    for index in 0..4u64 {
        let endpoint = running.endpoint();
        readers.push(tokio::spawn(async move {
            let mut client = Client::connect(&endpoint, &ConnectOptions::new(""))
                .await
                .unwrap();
            let mut buf = vec![0u8; 65536];
            client.read(index * 3 * BLOCK, &mut buf).await.unwrap();
            assert_eq!(buf, expected(index * 3 * BLOCK, 65536));
        }));
    }
    for reader in readers {
        reader.await.unwrap();
    }

    let socket = running.socket();
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test]
async fn unknown_export_is_refused() {
    let running = start(ServerConfig::new("vda")).await;
    let error = Client::connect(&running.endpoint(), &ConnectOptions::new("other"))
        .await
        .unwrap_err();
    assert!(matches!(error, NbdError::UnknownExport { .. }), "{error}");
    running.stop.send(true).unwrap();
}

/// Speaks raw bytes to the server up to transmission, with structured replies.
async fn raw_session(running: &Running) -> UnixStream {
    let mut stream = UnixStream::connect(running.socket()).await.unwrap();
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).await.unwrap();
    stream
        .write_all(&(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES).to_be_bytes())
        .await
        .unwrap();
    stream
        .write_all(&encode_option(OPT_STRUCTURED_REPLY, &[]))
        .await
        .unwrap();
    let mut reply = [0u8; 20];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(reply[12..16].try_into().unwrap()),
        REP_ACK
    );
    stream
        .write_all(&encode_option(OPT_EXPORT_NAME, b"vda"))
        .await
        .unwrap();
    let mut export = [0u8; 10];
    stream.read_exact(&mut export).await.unwrap();
    stream
}

fn request(command: u16, cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    }
    .encode()
}

async fn read_error_chunk(stream: &mut UnixStream, cookie: u64) -> u32 {
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(header[0..4].try_into().unwrap()),
        STRUCTURED_REPLY_MAGIC
    );
    assert_eq!(
        u64::from_be_bytes(header[8..16].try_into().unwrap()),
        cookie
    );
    let length = u32::from_be_bytes(header[16..20].try_into().unwrap());
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload).await.unwrap();
    u32::from_be_bytes(payload[0..4].try_into().unwrap())
}

#[tokio::test]
async fn hostile_requests_get_errors_and_the_connection_survives() {
    let running = start(ServerConfig::new("vda")).await;
    let mut stream = raw_session(&running).await;
    // Past the end, zero length, over the limit, unknown command, block status
    // without a context.
    let cases = [
        request(CMD_READ, 1, 16 * BLOCK - 10, 20),
        request(CMD_READ, 2, 0, 0),
        request(CMD_READ, 3, 0, MAX_REQUEST + 1),
        request(CMD_READ, 4, u64::MAX - 5, 10),
        request(99, 5, 0, 10),
        request(CMD_BLOCK_STATUS, 6, 0, 10),
    ];
    for (index, case) in cases.iter().enumerate() {
        stream.write_all(case).await.unwrap();
        let errno = read_error_chunk(&mut stream, index as u64 + 1).await;
        assert_eq!(errno, EINVAL, "case {index}");
    }
    // A write with its payload is refused and the stream stays in step.
    stream
        .write_all(&request(CMD_WRITE, 7, 0, 4096))
        .await
        .unwrap();
    stream.write_all(&[0xaa; 4096]).await.unwrap();
    assert_eq!(read_error_chunk(&mut stream, 7).await, EPERM);
    // Then a good read.
    stream
        .write_all(&request(CMD_READ, 8, 0, 100))
        .await
        .unwrap();
    let mut header = [0u8; 20];
    stream.read_exact(&mut header).await.unwrap();
    let mut payload = vec![0u8; 108];
    stream.read_exact(&mut payload).await.unwrap();
    assert_eq!(&payload[8..], &expected(0, 100)[..]);
    // Garbage magic closes this connection only.
    stream.write_all(&[0x55; 28]).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "server closes a connection with bad magic");

    let mut client = Client::connect(&running.endpoint(), &ConnectOptions::new("vda"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 10];
    client.read(0, &mut buf).await.unwrap();
    running.stop.send(true).unwrap();
}

#[tokio::test]
async fn hostile_handshakes_are_bounded() {
    let mut config = ServerConfig::new("vda");
    config.handshake_timeout = Duration::from_millis(300);
    let running = start(config).await;

    // A huge option length closes the connection without allocating it.
    let mut stream = UnixStream::connect(running.socket()).await.unwrap();
    let mut greeting = [0u8; 18];
    stream.read_exact(&mut greeting).await.unwrap();
    stream.write_all(&1u32.to_be_bytes()).await.unwrap();
    let mut huge = Vec::new();
    huge.extend_from_slice(&IHAVEOPT.to_be_bytes());
    huge.extend_from_slice(&OPT_GO.to_be_bytes());
    huge.extend_from_slice(&u32::MAX.to_be_bytes());
    stream.write_all(&huge).await.unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());

    // Malformed GO data and a meta context before structured replies get errors.
    let mut stream = UnixStream::connect(running.socket()).await.unwrap();
    stream.read_exact(&mut greeting).await.unwrap();
    stream.write_all(&1u32.to_be_bytes()).await.unwrap();
    stream
        .write_all(&encode_option(OPT_GO, &[0, 0, 0xff, 0xff, 1]))
        .await
        .unwrap();
    let mut reply = [0u8; 20];
    stream.read_exact(&mut reply).await.unwrap();
    let reply_type = u32::from_be_bytes(reply[12..16].try_into().unwrap());
    assert_eq!(reply_type, REP_ERR_INVALID);
    let length = u32::from_be_bytes(reply[16..20].try_into().unwrap());
    let mut message = vec![0u8; length as usize];
    stream.read_exact(&mut message).await.unwrap();
    let queries = [CONTEXT_BASE_ALLOCATION.to_string()];
    stream
        .write_all(&encode_option(
            OPT_SET_META_CONTEXT,
            &encode_set_meta_context("vda", &queries),
        ))
        .await
        .unwrap();
    stream.read_exact(&mut reply).await.unwrap();
    let reply_type = u32::from_be_bytes(reply[12..16].try_into().unwrap());
    assert_eq!(reply_type, REP_ERR_INVALID);

    // A client that says nothing is dropped after the handshake timeout.
    let mut silent = UnixStream::connect(running.socket()).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "silent client is dropped");
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
}

mod starttls;
