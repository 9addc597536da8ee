//! The client against a scripted fake server that misbehaves: every case
//! must end in a clear error, quickly, without a panic.

use std::future::Future;
use std::time::{Duration, Instant};

use haven_nbd::{CONTEXT_BASE_ALLOCATION, Client, ConnectOptions, Endpoint, Extent, NbdError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

type IoResult = std::io::Result<()>;

const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const OPT_ABORT: u32 = 2;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERR_UNSUP: u32 = 0x8000_0001;
const REP_ERR_POLICY: u32 = 0x8000_0002;

const DONE: u16 = 1;
const CHUNK_NONE: u16 = 0;
const CHUNK_OFFSET_DATA: u16 = 1;
const CHUNK_OFFSET_HOLE: u16 = 2;
const CHUNK_BLOCK_STATUS: u16 = 5;
const CHUNK_ERROR: u16 = 0x8001;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_BLOCK_STATUS: u16 = 7;
const EIO: u32 = 5;

/// How the fake server handshakes before it starts misbehaving.
#[derive(Clone)]
struct Handshake {
    structured: bool,
    contexts: Vec<(u32, &'static str)>,
    size: u64,
    /// NBD_INFO_BLOCK_SIZE to send: minimum, preferred, maximum.
    block_size: Option<[u32; 3]>,
}

impl Default for Handshake {
    fn default() -> Self {
        Handshake {
            structured: true,
            contexts: vec![(1, CONTEXT_BASE_ALLOCATION)],
            size: 1 << 20,
            block_size: None,
        }
    }
}

/// Starts a one-connection fake server running `script`; returns its endpoint.
fn serve<F, Fut>(script: F) -> (tempfile::TempDir, Endpoint)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = IoResult> + Send,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // Errors here only mean the client hung up first.
        let _ = script(stream).await;
    });
    (dir, Endpoint::Unix(path))
}

fn options() -> ConnectOptions {
    ConnectOptions {
        export: "disk".to_string(),
        meta_contexts: vec![CONTEXT_BASE_ALLOCATION.to_string()],
        timeout: Duration::from_secs(5),
    }
}

async fn greet(stream: &mut UnixStream) -> IoResult {
    stream.write_all(NBDMAGIC).await?;
    stream.write_all(IHAVEOPT).await?;
    stream.write_all(&3u16.to_be_bytes()).await?;
    let _client_flags = stream.read_u32().await?;
    Ok(())
}

async fn read_option(stream: &mut UnixStream) -> std::io::Result<(u32, Vec<u8>)> {
    let mut magic = [0u8; 8];
    stream.read_exact(&mut magic).await?;
    assert_eq!(&magic, IHAVEOPT);
    let option = stream.read_u32().await?;
    let length = stream.read_u32().await?;
    let mut data = vec![0u8; length as usize];
    stream.read_exact(&mut data).await?;
    Ok((option, data))
}

async fn option_reply(stream: &mut UnixStream, option: u32, reply: u32, data: &[u8]) -> IoResult {
    stream.write_u64(OPTION_REPLY_MAGIC).await?;
    stream.write_u32(option).await?;
    stream.write_u32(reply).await?;
    stream.write_u32(data.len() as u32).await?;
    stream.write_all(data).await
}

/// A well-behaved handshake, so each test can misbehave where it wants.
async fn handshake(stream: &mut UnixStream, config: &Handshake) -> IoResult {
    greet(stream).await?;
    loop {
        let (option, _) = read_option(stream).await?;
        match option {
            OPT_STRUCTURED_REPLY if config.structured => {
                option_reply(stream, option, REP_ACK, &[]).await?
            }
            OPT_STRUCTURED_REPLY => option_reply(stream, option, REP_ERR_UNSUP, &[]).await?,
            OPT_SET_META_CONTEXT => {
                for (id, name) in &config.contexts {
                    let mut data = id.to_be_bytes().to_vec();
                    data.extend_from_slice(name.as_bytes());
                    option_reply(stream, option, REP_META_CONTEXT, &data).await?;
                }
                option_reply(stream, option, REP_ACK, &[]).await?;
            }
            OPT_GO => {
                let mut info = vec![0, 0];
                info.extend_from_slice(&config.size.to_be_bytes());
                // HAS_FLAGS | SEND_FLUSH
                info.extend_from_slice(&(1u16 | 4).to_be_bytes());
                option_reply(stream, option, REP_INFO, &info).await?;
                if let Some(constraints) = config.block_size {
                    let mut info = vec![0, 3];
                    for value in constraints {
                        info.extend_from_slice(&value.to_be_bytes());
                    }
                    option_reply(stream, option, REP_INFO, &info).await?;
                }
                return option_reply(stream, option, REP_ACK, &[]).await;
            }
            other => panic!("unexpected option {other}"),
        }
    }
}

struct Request {
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

async fn read_request(stream: &mut UnixStream) -> std::io::Result<Request> {
    assert_eq!(stream.read_u32().await?, 0x2560_9513);
    let _flags = stream.read_u16().await?;
    Ok(Request {
        command: stream.read_u16().await?,
        cookie: stream.read_u64().await?,
        offset: stream.read_u64().await?,
        length: stream.read_u32().await?,
    })
}

async fn chunk(
    stream: &mut UnixStream,
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    payload: &[u8],
) -> IoResult {
    chunk_header(stream, flags, chunk_type, cookie, payload.len() as u32).await?;
    stream.write_all(payload).await
}

async fn chunk_header(
    stream: &mut UnixStream,
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> IoResult {
    stream.write_u32(STRUCTURED_REPLY_MAGIC).await?;
    stream.write_u16(flags).await?;
    stream.write_u16(chunk_type).await?;
    stream.write_u64(cookie).await?;
    stream.write_u32(length).await
}

/// The last chunk of a reply: flagged DONE.
async fn last_chunk(
    stream: &mut UnixStream,
    chunk_type: u16,
    cookie: u64,
    payload: &[u8],
) -> IoResult {
    chunk(stream, DONE, chunk_type, cookie, payload).await
}

async fn simple_reply(stream: &mut UnixStream, errno: u32, cookie: u64) -> IoResult {
    stream.write_u32(SIMPLE_REPLY_MAGIC).await?;
    stream.write_u32(errno).await?;
    stream.write_u64(cookie).await
}

fn offset_data(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut payload = offset.to_be_bytes().to_vec();
    payload.extend_from_slice(data);
    payload
}

fn block_status(context: u32, descriptors: &[(u32, u32)]) -> Vec<u8> {
    let mut payload = context.to_be_bytes().to_vec();
    for (length, flags) in descriptors {
        payload.extend_from_slice(&length.to_be_bytes());
        payload.extend_from_slice(&flags.to_be_bytes());
    }
    payload
}

/// Keeps the connection open without answering, like a stuck server.
async fn stall(stream: UnixStream) -> IoResult {
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(stream);
    Ok(())
}

fn expect_protocol<T: std::fmt::Debug>(result: Result<T, NbdError>, needle: &str) {
    match result {
        Err(NbdError::Protocol(message)) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected a protocol error about {needle:?}, got {other:?}"),
    }
}

/// Connects through a normal handshake, then lets `script` answer requests.
async fn connected<F, Fut>(config: Handshake, script: F) -> (tempfile::TempDir, Client)
where
    F: FnOnce(UnixStream) -> Fut + Send + 'static,
    Fut: Future<Output = IoResult> + Send,
{
    let (dir, endpoint) = serve(move |mut stream| async move {
        handshake(&mut stream, &config).await?;
        script(stream).await
    });
    let client = Client::connect(&endpoint, &options()).await.unwrap();
    (dir, client)
}

/// Connects through a normal handshake to a server that answers the first
/// request with one chunk of `chunk_type` flagged DONE, whose payload
/// `payload` makes from the request, then stalls.
async fn answered_once<P>(chunk_type: u16, payload: P) -> (tempfile::TempDir, Client)
where
    P: FnOnce(&Request) -> Vec<u8> + Send + 'static,
{
    connected(Handshake::default(), move |mut stream| async move {
        let request = read_request(&mut stream).await?;
        let payload = payload(&request);
        last_chunk(&mut stream, chunk_type, request.cookie, &payload).await?;
        stall(stream).await
    })
    .await
}

#[tokio::test]
async fn wrong_magic() {
    let (_dir, endpoint) = serve(|mut stream| async move {
        stream.write_all(b"NOTNBD!!IHAVEOPT\0\x03").await?;
        stall(stream).await
    });
    expect_protocol(Client::connect(&endpoint, &options()).await, "NBDMAGIC");
}

#[tokio::test]
async fn truncated_handshake_then_close() {
    let (_dir, endpoint) = serve(|mut stream| async move {
        stream.write_all(b"NBDMAGICIHAV").await?;
        Ok(())
    });
    let result = Client::connect(&endpoint, &options()).await;
    assert!(matches!(result, Err(NbdError::Closed)), "{result:?}");
}

#[tokio::test]
async fn handshake_that_never_comes_times_out() {
    let (_dir, endpoint) = serve(stall);
    let mut quick = options();
    quick.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = Client::connect(&endpoint, &quick).await;
    assert!(
        matches!(result, Err(NbdError::Timeout { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn oversized_option_reply_length() {
    let (_dir, endpoint) = serve(|mut stream| async move {
        greet(&mut stream).await?;
        let (option, _) = read_option(&mut stream).await?;
        stream.write_u64(OPTION_REPLY_MAGIC).await?;
        stream.write_u32(option).await?;
        stream.write_u32(REP_ACK).await?;
        stream.write_u32(1 << 30).await?;
        stall(stream).await
    });
    expect_protocol(
        Client::connect(&endpoint, &options()).await,
        "exceeds the limit",
    );
}

#[tokio::test]
async fn export_larger_than_two_to_the_63() {
    let (_dir, endpoint) = serve(|mut stream| async move {
        let config = Handshake {
            size: u64::MAX,
            ..Handshake::default()
        };
        handshake(&mut stream, &config).await?;
        stall(stream).await
    });
    expect_protocol(Client::connect(&endpoint, &options()).await, "2^63");
}

#[tokio::test]
async fn rejected_go_is_reported_with_its_message() {
    let (_dir, endpoint) = serve(|mut stream| async move {
        greet(&mut stream).await?;
        loop {
            let (option, _) = read_option(&mut stream).await?;
            match option {
                OPT_GO => option_reply(&mut stream, option, REP_ERR_POLICY, b"go away").await?,
                OPT_ABORT => return Ok(()),
                _ => option_reply(&mut stream, option, REP_ERR_UNSUP, &[]).await?,
            }
        }
    });
    match Client::connect(&endpoint, &options()).await {
        Err(NbdError::OptionRejected {
            option, message, ..
        }) => {
            assert_eq!(option, "NBD_OPT_GO");
            assert_eq!(message, "go away");
        }
        other => panic!("expected OptionRejected, got {other:?}"),
    }
}

#[tokio::test]
async fn reply_with_wrong_cookie() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let request = read_request(&mut stream).await?;
        simple_reply(&mut stream, 0, request.cookie + 1).await?;
        stall(stream).await
    })
    .await;
    expect_protocol(client.flush().await, "cookie");
    // The connection is poisoned from now on.
    let result = client.read(0, &mut [0u8; 16]).await;
    assert!(
        matches!(result, Err(NbdError::ConnectionBroken)),
        "{result:?}"
    );
}

#[tokio::test]
async fn structured_chunk_longer_than_requested() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let request = read_request(&mut stream).await?;
        let length = 8 + request.length + 1;
        chunk_header(&mut stream, DONE, CHUNK_OFFSET_DATA, request.cookie, length).await?;
        stall(stream).await
    })
    .await;
    expect_protocol(client.read(0, &mut [0u8; 4096]).await, "OFFSET_DATA chunk");
}

#[tokio::test]
async fn offset_data_outside_the_request() {
    let (_dir, mut client) = answered_once(CHUNK_OFFSET_DATA, |request| {
        offset_data(request.offset + 8192, &vec![7u8; request.length as usize])
    })
    .await;
    expect_protocol(client.read(4096, &mut [0u8; 4096]).await, "outside");
}

#[tokio::test]
async fn read_reply_not_covering_the_range() {
    let (_dir, mut client) = answered_once(CHUNK_OFFSET_DATA, |request| {
        offset_data(request.offset, &[9u8; 2048])
    })
    .await;
    expect_protocol(
        client.read(0, &mut [0u8; 4096]).await,
        "covered 2048 of 4096",
    );
}

#[tokio::test]
async fn overlapping_read_chunks() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let request = read_request(&mut stream).await?;
        let first = offset_data(0, &[1u8; 3000]);
        chunk(&mut stream, 0, CHUNK_OFFSET_DATA, request.cookie, &first).await?;
        let second = offset_data(2000, &[2u8; 2096]);
        last_chunk(&mut stream, CHUNK_OFFSET_DATA, request.cookie, &second).await?;
        stall(stream).await
    })
    .await;
    expect_protocol(client.read(0, &mut [0u8; 4096]).await, "overlaps");
}

#[tokio::test]
async fn out_of_order_data_and_hole_chunks_assemble() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let request = read_request(&mut stream).await?;
        assert_eq!(request.command, CMD_READ);
        let tail = offset_data(request.offset + 3000, &[5u8; 1096]);
        chunk(&mut stream, 0, CHUNK_OFFSET_DATA, request.cookie, &tail).await?;
        let mut hole = (request.offset + 1000).to_be_bytes().to_vec();
        hole.extend_from_slice(&2000u32.to_be_bytes());
        chunk(&mut stream, 0, CHUNK_OFFSET_HOLE, request.cookie, &hole).await?;
        let head = offset_data(request.offset, &[4u8; 1000]);
        chunk(&mut stream, 0, CHUNK_OFFSET_DATA, request.cookie, &head).await?;
        last_chunk(&mut stream, CHUNK_NONE, request.cookie, &[]).await?;
        stall(stream).await
    })
    .await;
    let mut buf = [0xffu8; 4096];
    client.read(8192, &mut buf).await.unwrap();
    assert!(buf[..1000].iter().all(|byte| *byte == 4));
    assert!(
        buf[1000..3000].iter().all(|byte| *byte == 0),
        "hole not zeroed"
    );
    assert!(buf[3000..].iter().all(|byte| *byte == 5));
}

#[tokio::test]
async fn block_status_with_zero_length_extent() {
    let (_dir, mut client) = answered_once(CHUNK_BLOCK_STATUS, |request| {
        assert_eq!(request.command, CMD_BLOCK_STATUS);
        block_status(1, &[(4096, 0), (0, 1)])
    })
    .await;
    expect_protocol(
        client.block_status(CONTEXT_BASE_ALLOCATION, 0, 65536).await,
        "zero-length",
    );
}

#[tokio::test]
async fn block_status_for_an_unknown_context_id() {
    let (_dir, mut client) =
        answered_once(CHUNK_BLOCK_STATUS, |_| block_status(99, &[(4096, 0)])).await;
    expect_protocol(
        client.block_status(CONTEXT_BASE_ALLOCATION, 0, 4096).await,
        "never negotiated",
    );
}

#[tokio::test]
async fn block_status_loops_over_partial_answers_and_clamps() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let first = read_request(&mut stream).await?;
        assert_eq!((first.offset, first.length), (0, 4096));
        let payload = block_status(1, &[(1000, 0)]);
        last_chunk(&mut stream, CHUNK_BLOCK_STATUS, first.cookie, &payload).await?;
        let second = read_request(&mut stream).await?;
        assert_eq!((second.offset, second.length), (1000, 3096));
        let payload = block_status(1, &[(100_000, 3)]);
        last_chunk(&mut stream, CHUNK_BLOCK_STATUS, second.cookie, &payload).await?;
        stall(stream).await
    })
    .await;
    let extents = client
        .block_status(CONTEXT_BASE_ALLOCATION, 0, 4096)
        .await
        .unwrap();
    assert_eq!(
        extents,
        vec![
            Extent {
                offset: 0,
                length: 1000,
                flags: 0
            },
            Extent {
                offset: 1000,
                length: 3096,
                flags: 3
            }
        ]
    );
}

#[tokio::test]
async fn server_stops_responding_mid_reply() {
    let (dir, endpoint) = serve(|mut stream| async move {
        handshake(&mut stream, &Handshake::default()).await?;
        let request = read_request(&mut stream).await?;
        chunk_header(
            &mut stream,
            DONE,
            CHUNK_OFFSET_DATA,
            request.cookie,
            8 + 4096,
        )
        .await?;
        stream.write_u64(request.offset).await?;
        stream.write_all(&[1u8; 100]).await?;
        stall(stream).await
    });
    let mut quick = options();
    quick.timeout = Duration::from_millis(300);
    let mut client = Client::connect(&endpoint, &quick).await.unwrap();
    let started = Instant::now();
    let result = client.read(0, &mut [0u8; 4096]).await;
    assert!(
        matches!(
            result,
            Err(NbdError::Timeout {
                operation: "read",
                ..
            })
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(result.unwrap_err().is_retryable());
    drop(dir);
}

#[tokio::test]
async fn error_chunk_with_message_keeps_the_connection_usable() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let failing = read_request(&mut stream).await?;
        let mut payload = EIO.to_be_bytes().to_vec();
        payload.extend_from_slice(&12u16.to_be_bytes());
        payload.extend_from_slice(b"disk on fire");
        last_chunk(&mut stream, CHUNK_ERROR, failing.cookie, &payload).await?;
        let working = read_request(&mut stream).await?;
        let payload = offset_data(working.offset, &vec![8u8; working.length as usize]);
        last_chunk(&mut stream, CHUNK_OFFSET_DATA, working.cookie, &payload).await?;
        stall(stream).await
    })
    .await;
    match client.read(0, &mut [0u8; 512]).await {
        Err(NbdError::Server { errno, message }) => {
            assert_eq!(errno, EIO);
            assert_eq!(message, "disk on fire");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    let mut buf = [0u8; 512];
    client.read(512, &mut buf).await.unwrap();
    assert_eq!(buf, [8u8; 512]);
}

#[tokio::test]
async fn simple_replies_when_structured_replies_are_refused() {
    let config = Handshake {
        structured: false,
        ..Handshake::default()
    };
    let (_dir, mut client) = connected(config, |mut stream| async move {
        let request = read_request(&mut stream).await?;
        simple_reply(&mut stream, 0, request.cookie).await?;
        stream
            .write_all(&vec![6u8; request.length as usize])
            .await?;
        // A structured chunk is not allowed without negotiation.
        let request = read_request(&mut stream).await?;
        last_chunk(&mut stream, CHUNK_NONE, request.cookie, &[]).await?;
        stall(stream).await
    })
    .await;
    assert!(!client.has_meta_context(CONTEXT_BASE_ALLOCATION));
    let mut buf = [0u8; 1024];
    client.read(0, &mut buf).await.unwrap();
    assert_eq!(buf, [6u8; 1024]);
    expect_protocol(client.flush().await, "not negotiated");
}

#[tokio::test]
async fn reads_are_split_at_the_maximum_and_must_be_aligned() {
    let config = Handshake {
        block_size: Some([512, 4096, 4096]),
        ..Handshake::default()
    };
    let (_dir, mut client) = connected(config, |mut stream| async move {
        for (index, expected) in [(0u64, 4096u32), (4096, 4096), (8192, 2048)]
            .into_iter()
            .enumerate()
        {
            let request = read_request(&mut stream).await?;
            assert_eq!((request.offset, request.length), expected);
            let data = vec![index as u8 + 1; request.length as usize];
            let payload = offset_data(request.offset, &data);
            last_chunk(&mut stream, CHUNK_OFFSET_DATA, request.cookie, &payload).await?;
        }
        stall(stream).await
    })
    .await;
    assert_eq!(client.minimum_block_size(), 512);
    let mut buf = vec![0u8; 10240];
    client.read(0, &mut buf).await.unwrap();
    assert!(buf[..4096].iter().all(|byte| *byte == 1));
    assert!(buf[4096..8192].iter().all(|byte| *byte == 2));
    assert!(buf[8192..].iter().all(|byte| *byte == 3));
    let result = client.read(100, &mut [0u8; 512]).await;
    assert!(
        matches!(result, Err(NbdError::InvalidArgument(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn write_zeroes_falls_back_to_writing_zeros() {
    let (_dir, mut client) = connected(Handshake::default(), |mut stream| async move {
        let request = read_request(&mut stream).await?;
        assert_eq!(request.command, CMD_WRITE);
        assert_eq!((request.offset, request.length), (4096, 3000));
        let mut payload = vec![1u8; request.length as usize];
        stream.read_exact(&mut payload).await?;
        assert!(payload.iter().all(|byte| *byte == 0));
        simple_reply(&mut stream, 0, request.cookie).await?;
        stall(stream).await
    })
    .await;
    client.write_zeroes(4096, 3000).await.unwrap();
}
