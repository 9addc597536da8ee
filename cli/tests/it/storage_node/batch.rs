//! The storage node's batch transfer (`?haven-batch-get=`, `?haven-batch-put=`,
//! `?haven-batch-pull=`) through Haven's own client, against the real
//! `haven storage-node`: objects keep their ETag and content type, nothing is
//! ever overwritten, and every malformed, mismatching or unauthorised batch
//! (or a broken source behind a pull) is refused without leaving a trace.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use haven_node_protocol::{ObjectInfo, PullKey, PullOutcome, PullRequest, Record};
use haven_repo::{NodeClient, NodeClientError, crc32_etag};

use crate::support::{
    s3::{ACCESS_KEY, SECRET_KEY},
    storage_node::{Node, NodeOptions, node_client, pattern},
    tree::files_below,
};

const OTHER_KEYS: &str = "[[keys]]\naccess_key = \"other\"\nsecret_key = \"other-secret\"\nbuckets = [\"elsewhere\"]\n\
     [[keys]]\naccess_key = \"reader\"\nsecret_key = \"reader-secret\"\nread_only = true\n";

fn client(node: &Node, bucket: &str, access_key: &str, secret_key: &str) -> NodeClient {
    client_as(&node.endpoint(), bucket, access_key, secret_key)
}

fn client_as(endpoint: &str, bucket: &str, access_key: &str, secret_key: &str) -> NodeClient {
    node_client(endpoint, bucket, access_key, secret_key)
}

/// Every record of a batch read, with its data.
async fn read_all(client: &NodeClient, keys: &[&str]) -> Vec<(Record, Bytes)> {
    let keys = keys.iter().map(|k| (*k).to_owned()).collect();
    let mut reader = client.batch_get(keys, 0).await.expect("batch get");
    let mut out = Vec::new();
    while let Some((record, pieces)) = reader.next_object(64 << 20).await.expect("record") {
        out.push((record, Bytes::from(pieces.concat())));
    }
    out
}

/// The pieces of a batch write of `objects` (key, info, data).
fn pieces(objects: &[(&str, ObjectInfo, Bytes)]) -> Vec<Bytes> {
    let mut out = Vec::new();
    for (key, info, data) in objects {
        let record = Record::Object {
            key: (*key).to_owned(),
            info: info.clone(),
        };
        out.push(record.encode().expect("encode"));
        out.push(data.clone());
    }
    out
}

fn info_of(data: &[u8]) -> ObjectInfo {
    ObjectInfo {
        size: data.len() as u64,
        etag: "0123456789abcdef0123456789abcdef".to_owned(),
        content_type: None,
        crc32: crc32fast::hash(data),
    }
}

fn status_of(error: NodeClientError) -> String {
    match error {
        NodeClientError::Status { status, body } => format!("{status} {body}"),
        other => panic!("expected an error status, got {other}"),
    }
}

/// The keys listed in a bucket (through awscli).
fn listed(node: &Node, bucket: &str) -> String {
    node.aws_ok(&["s3", "ls", "--recursive", &format!("s3://{bucket}")])
}

#[test]
fn batches_copy_objects_exactly_and_refuse_bad_input() {
    let node = Node::start_with_keys(OTHER_KEYS);
    for bucket in ["site-a", "site-b", "elsewhere"] {
        node.aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
    }
    let sizes = [
        ("chunks/aa/small", 524_328usize),
        ("empty", 0),
        ("big", 3_000_001),
    ];
    for (index, (key, size)) in sizes.iter().enumerate() {
        let file = node.path(&format!("f{index}"));
        std::fs::write(&file, pattern(*size, index as u64)).expect("write");
        node.aws_ok(&[
            "s3",
            "cp",
            file.to_str().unwrap(),
            &format!("s3://site-a/{key}"),
            "--content-type",
            "application/x-haven-test",
            "--only-show-errors",
        ]);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let a = client(&node, "site-a", ACCESS_KEY, SECRET_KEY);
    let b = client(&node, "site-b", ACCESS_KEY, SECRET_KEY);
    assert!(runtime.block_on(a.supports_batch()).expect("probe"));

    // Read: one record per key, in order; data, ETag and type as stored.
    let records = runtime.block_on(read_all(&a, &["chunks/aa/small", "nope", "empty", "big"]));
    assert_eq!(records.len(), 4);
    assert_eq!(records[1].0, Record::Missing { key: "nope".into() });
    let objects: Vec<(&str, ObjectInfo, Bytes)> = [0usize, 2, 3]
        .iter()
        .map(|&i| match &records[i] {
            (Record::Object { key, info }, data) => {
                let index = sizes.iter().position(|(k, _)| k == key).unwrap();
                assert_eq!(
                    data.as_ref(),
                    pattern(sizes[index].1, index as u64),
                    "{key}"
                );
                assert_eq!(
                    info.content_type.as_deref(),
                    Some("application/x-haven-test")
                );
                let head =
                    node.aws_ok(&["s3api", "head-object", "--bucket", "site-a", "--key", key]);
                assert!(head.contains(&info.etag), "{key}: {head}");
                (sizes[index].0, info.clone(), data.clone())
            }
            other => panic!("expected an object, got {other:?}"),
        })
        .collect();

    // Write: created once, never overwritten; the copy keeps ETag and type.
    let created = runtime
        .block_on(b.batch_put(pieces(&objects)))
        .expect("batch put");
    assert_eq!(created, [true, true, true]);
    let changed: Vec<_> = objects
        .iter()
        .map(|(key, _, data)| {
            let other = Bytes::from(vec![0x5a; data.len()]);
            (*key, info_of(&other), other)
        })
        .collect();
    let created = runtime
        .block_on(b.batch_put(pieces(&changed)))
        .expect("again");
    assert_eq!(created, [false, false, false]);
    for (key, info, data) in &objects {
        let head = node.aws_ok(&["s3api", "head-object", "--bucket", "site-b", "--key", key]);
        assert!(head.contains(&info.etag), "{key}: {head}");
        assert!(head.contains("application/x-haven-test"), "{key}: {head}");
        let out = node.path("out");
        node.aws_ok(&[
            "s3",
            "cp",
            &format!("s3://site-b/{key}"),
            out.to_str().unwrap(),
        ]);
        assert!(
            std::fs::read(&out).unwrap() == data.as_ref(),
            "{key} differs"
        );
    }
    let before = listed(&node, "site-b");

    // Bad input: each batch is refused and leaves nothing behind.
    let data = Bytes::from(pattern(70_000, 9));
    let mut wrong_crc = info_of(&data);
    wrong_crc.crc32 ^= 1;
    let bad_crc = pieces(&[("new/1", wrong_crc, data.clone())]);
    let error = runtime.block_on(b.batch_put(bad_crc)).expect_err("crc");
    assert!(status_of(error).contains("BadDigest"));
    let mut truncated = pieces(&[("new/2", info_of(&data), data.clone())]);
    truncated[1] = data.slice(..50_000);
    let error = runtime
        .block_on(b.batch_put(truncated))
        .expect_err("truncated");
    assert!(status_of(error).contains("IncompleteBody"));
    let missing = vec![
        Record::Missing {
            key: "new/3".into(),
        }
        .encode()
        .unwrap(),
    ];
    let error = runtime
        .block_on(b.batch_put(missing))
        .expect_err("not an object");
    assert!(status_of(error).contains("InvalidRequest"));
    let garbage = vec![Bytes::from_static(
        b"\x01\xff\xff\xff\xffnot a record at all",
    )];
    let error = runtime.block_on(b.batch_put(garbage)).expect_err("garbage");
    assert!(status_of(error).contains("InvalidRequest"));
    // A key the store cannot hold (NUL; dot segments are ordinary keys, kept
    // inside the bucket).
    let unstorable = pieces(&[("bad\0key", info_of(&data), data.clone())]);
    let error = runtime
        .block_on(b.batch_put(unstorable))
        .expect_err("NUL in a key");
    assert!(status_of(error).starts_with("400"));
    assert_eq!(
        listed(&node, "site-b"),
        before,
        "a refused batch left objects"
    );
    let leftovers = files_below(&node.data().join("tmp"));
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Authorisation: the same keys and bucket permissions as S3.
    let other = client(&node, "site-b", "other", "other-secret");
    let error = runtime
        .block_on(other.batch_get(vec!["empty".into()], 0))
        .err()
        .expect("denied");
    assert!(status_of(error).contains("AccessDenied"));
    // (Small bodies: an S3 signature error is answered before the body is read.)
    let error = runtime
        .block_on(other.batch_put(pieces(&objects[1..2])))
        .expect_err("denied");
    assert!(status_of(error).contains("AccessDenied"));
    let reader = client(&node, "site-b", "reader", "reader-secret");
    assert_eq!(runtime.block_on(read_all(&reader, &["empty"])).len(), 1);
    let error = runtime
        .block_on(reader.batch_put(pieces(&objects[1..2])))
        .expect_err("read-only");
    assert!(status_of(error).contains("HavenBatchPut needs access"));
    let forged = client(&node, "site-b", ACCESS_KEY, "wrong-secret");
    let error = runtime
        .block_on(forged.batch_put(pieces(&objects[1..2])))
        .expect_err("forged");
    assert!(status_of(error).contains("SignatureDoesNotMatch"));
    let no_bucket = client(&node, "nosuchbucket", ACCESS_KEY, SECRET_KEY);
    let error = runtime
        .block_on(no_bucket.batch_get(vec!["x".into()], 0))
        .err()
        .expect("bucket");
    assert!(status_of(error).contains("NoSuchBucket"));

    // A damaged object at the source is reported, not sent.
    let small = node
        .object_files()
        .into_iter()
        .find(|path| {
            path.to_string_lossy().contains("/site-a/")
                && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) > 524_328
                && std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < 600_000
        })
        .expect("object file of chunks/aa/small");
    let mut bytes = std::fs::read(&small).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(&small, bytes).unwrap();
    let records = runtime.block_on(read_all(&a, &["chunks/aa/small", "empty"]));
    assert!(
        matches!(&records[0].0, Record::Failed { key, message } if key == "chunks/aa/small" && message.contains("crc")),
        "{:?}",
        records[0].0
    );
    assert!(matches!(&records[1].0, Record::Object { .. }));

    let metrics = node.metrics();
    for op in ["HavenBatchGet", "HavenBatchPut"] {
        assert!(
            metrics.contains(&format!("op=\"{op}\",status=\"200\"")),
            "{metrics}"
        );
    }
}

/// A loopback HTTP server answering each connection with `handler`: the fake
/// source of [`serve_fake`] and the tampering relay of [`Tamperer`].
struct FakeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeServer {
    fn start(handler: impl Fn(TcpStream) -> std::io::Result<()> + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for connection in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(connection) = connection {
                    let _ = handler(connection);
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One whole request (by its Content-Length): its bytes and where its body
/// starts; `None` if the client closed the connection first.
fn read_request(connection: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, usize)>> {
    connection.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut request = Vec::new();
    let mut buffer = [0u8; 8192];
    let header_end = loop {
        let read = connection.read(&mut buffer)?;
        if read == 0 {
            return Ok(None);
        }
        request.extend_from_slice(&buffer[..read]);
        if let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0);
    while request.len() < header_end + length {
        let read = connection.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        request.extend_from_slice(&buffer[..read]);
    }
    Ok(Some((request, header_end)))
}

/// A relay to the node at `upstream` (`host:port`) that swaps a request's body for
/// `forged` when their lengths match: someone in the middle of a plain-HTTP link.
fn tamperer(upstream: String, forged: Vec<u8>) -> FakeServer {
    FakeServer::start(move |mut client| {
        let Some((mut request, header_end)) = read_request(&mut client)? else {
            return Ok(());
        };
        if request.len() - header_end == forged.len() {
            request.truncate(header_end);
            request.extend_from_slice(&forged);
        }
        // One request per connection, so the reply ends where the node closes it.
        let mut relayed = request[..header_end - 2].to_vec();
        relayed.extend_from_slice(b"connection: close\r\n\r\n");
        relayed.extend_from_slice(&request[header_end..]);
        let mut node = TcpStream::connect(&upstream)?;
        node.write_all(&relayed)?;
        let mut reply = Vec::new();
        node.read_to_end(&mut reply)?;
        client.write_all(&reply)
    })
}

/// The batch-write body of one object as `NodeClient::create_objects` sends it.
fn chunk_batch(key: &str, data: &[u8]) -> Vec<u8> {
    let crc32 = crc32fast::hash(data);
    let info = ObjectInfo {
        size: data.len() as u64,
        etag: crc32_etag(crc32),
        content_type: None,
        crc32,
    };
    let record = Record::Object {
        key: key.to_owned(),
        info,
    };
    [record.encode().expect("encode").as_ref(), data].concat()
}

#[test]
fn chunk_batches_are_signed_off_loopback_so_a_changed_body_is_refused() {
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://site-a"]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // 20 chunks: more than the 16 the node publishes at a time.
    let chunks: Vec<(String, Vec<u8>)> = (0..20u64)
        .map(|i| (format!("chunks/ab/{i:04}"), pattern(70_000, i * 1000 + 1)))
        .collect();
    // Other bytes under the same keys, each with its own valid CRC-32: a forgery.
    let mut forged = Vec::new();
    let mut forged_data = Vec::new();
    for (i, (key, data)) in chunks.iter().enumerate() {
        let length = chunk_batch(key, data).len();
        let (other, batch) = (2..)
            .map(|seed| pattern(70_000, i as u64 * 1000 + seed))
            .map(|other| {
                let batch = chunk_batch(key, &other);
                (other, batch)
            })
            .find(|(_, batch)| batch.len() == length)
            .expect("a forgery of the same length");
        forged.extend_from_slice(&batch);
        forged_data.push(other);
    }
    let upstream = node.endpoint().trim_start_matches("http://").to_owned();
    let relay = tamperer(upstream, forged);
    let objects = || {
        chunks
            .iter()
            .map(|(key, data)| (key.clone(), Bytes::from(data.clone())))
            .collect::<Vec<_>>()
    };
    let stored = |key: &str| {
        node.aws(&["s3api", "head-object", "--bucket", "site-a", "--key", key])
            .status
            .success()
    };

    // Signed, as Haven sends to any plain-HTTP address but loopback: refused, and
    // not one object published, although the node had received them all.
    let signed =
        client_as(&relay.endpoint(), "site-a", ACCESS_KEY, SECRET_KEY).signing_batch_payloads();
    assert!(!signed.sends_unsigned_batches());
    let error = runtime
        .block_on(signed.create_objects(objects()))
        .expect_err("changed body accepted");
    assert!(status_of(error).contains("XAmzContentSHA256Mismatch"));
    assert!(
        !chunks.iter().any(|(key, _)| stored(key)),
        "a forged chunk was published"
    );
    let leftovers = files_below(&node.data().join("tmp"));
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Unsigned (what loopback and TLS get, where nobody can stand in between): the
    // forgery would be stored, which is why other links are signed.
    let unsigned = client_as(&relay.endpoint(), "site-a", ACCESS_KEY, SECRET_KEY);
    assert!(unsigned.sends_unsigned_batches());
    let created = runtime
        .block_on(unsigned.create_objects(objects()))
        .expect("unsigned");
    assert_eq!(created, vec![true; 20]);
    let out = node.path("stored");
    let first = &chunks[0].0;
    node.aws_ok(&[
        "s3",
        "cp",
        &format!("s3://site-a/{first}"),
        out.to_str().unwrap(),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == forged_data[0],
        "the relay's bytes were not stored"
    );

    // Straight to the node, signed: stored as sent, create-only, with a CRC-32 ETag.
    let direct = client(&node, "site-a", ACCESS_KEY, SECRET_KEY).signing_batch_payloads();
    let data = &chunks[0].1;
    let fresh = vec![("chunks/cd/cdef01".to_owned(), Bytes::from(data.clone()))];
    let created = runtime.block_on(direct.create_objects(fresh.clone()));
    assert_eq!(created.expect("signed"), [true]);
    let again = runtime.block_on(direct.create_objects(fresh));
    assert_eq!(again.expect("again"), [false]);
    let head = node.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "site-a",
        "--key",
        "chunks/cd/cdef01",
    ]);
    let etag = crc32_etag(crc32fast::hash(data));
    assert!(head.contains(&format!("\\\"{etag}\\\"")), "{head}");
}

/// A source that answers every batch read with what [`fake_answer`] makes of
/// its keys: hostile or broken replies a target node must refuse cleanly.
fn serve_fake(mut connection: TcpStream) -> std::io::Result<()> {
    let Some((request, header_end)) = read_request(&mut connection)? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&request[..header_end]).to_lowercase();
    if head.starts_with("post /plain-s3") {
        // A plain S3 server knows no extensions.
        let error = "<Error><Code>NotImplemented</Code></Error>";
        let reply = format!(
            "HTTP/1.1 501 Not Implemented\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{error}",
            error.len()
        );
        return connection.write_all(reply.as_bytes());
    }
    let body = String::from_utf8_lossy(&request[header_end..]).into_owned();
    let keys: Vec<&str> = body.lines().collect();
    connection.write_all(&fake_answer(&keys))?;
    connection.flush()
}

/// The reply to a batch read of `keys`, chosen by the keys' names.
fn fake_answer(keys: &[&str]) -> Vec<u8> {
    let status = |line: &str| {
        format!("HTTP/1.1 {line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
    };
    match keys.first().copied() {
        Some("redirect") => {
            let location = "HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/x?haven-batch-get=\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            return location.as_bytes().to_vec();
        }
        Some("denied") => return status("403 Forbidden"),
        _ => {}
    }
    let mut body = Vec::new();
    for key in keys {
        let data = key.as_bytes().repeat(1000);
        let object = |key: &str, crc32| Record::Object {
            key: key.to_owned(),
            info: ObjectInfo {
                size: data.len() as u64,
                etag: "fake".to_owned(),
                content_type: None,
                crc32,
            },
        };
        let crc = crc32fast::hash(&data);
        match *key {
            k if k.starts_with("object") => {
                body.extend_from_slice(&object(k, crc).encode().unwrap());
                body.extend_from_slice(&data);
            }
            k if k.starts_with("missing") => {
                let record = Record::Missing { key: k.to_owned() };
                body.extend_from_slice(&record.encode().unwrap());
            }
            k if k.starts_with("failed") => {
                let record = Record::Failed {
                    key: k.to_owned(),
                    message: "disk on fire".to_owned(),
                };
                body.extend_from_slice(&record.encode().unwrap());
            }
            "badcrc" => {
                body.extend_from_slice(&object("badcrc", crc ^ 1).encode().unwrap());
                body.extend_from_slice(&data);
            }
            "cut" => {
                body.extend_from_slice(&object("cut", crc).encode().unwrap());
                body.extend_from_slice(&data[..10]);
            }
            "swap" => body.extend_from_slice(&object("other", crc).encode().unwrap()),
            "huge" => body.extend_from_slice(b"\x01\xff\xff\xff\xff"),
            _ => body.extend_from_slice(b"\x07garbage"),
        }
    }
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(&body);
    reply
}

fn pull_keys(pairs: &[(&str, &str)]) -> Vec<PullKey> {
    pairs
        .iter()
        .map(|(source, target)| PullKey {
            source: (*source).to_owned(),
            target: (*target).to_owned(),
        })
        .collect()
}

#[test]
fn pulls_copy_batches_node_to_node_and_refuse_what_they_must() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let source = Node::start();
    source.aws_ok(&["s3", "mb", "s3://primary"]);
    let fake = FakeServer::start(serve_fake);
    let target = Node::start_with(NodeOptions {
        extra_keys: OTHER_KEYS.to_owned(),
        pull_sources: vec![
            source.endpoint(),
            fake.endpoint(),
            "http://127.0.0.1:1".to_owned(),
        ],
        ..NodeOptions::default()
    });
    target.aws_ok(&["s3", "mb", "s3://secondary"]);

    // 40 objects (several commit groups) and one streamed in blocks.
    let primary = client(&source, "primary", ACCESS_KEY, SECRET_KEY);
    let mut objects: Vec<(String, Bytes)> = (0..40u64)
        .map(|i| {
            let data = pattern(1000 + 7919 * i as usize, i);
            (format!("repo/chunks/{i:02}"), Bytes::from(data))
        })
        .collect();
    objects.push((
        "repo/chunks/large".to_owned(),
        Bytes::from(pattern(12 << 20, 99)),
    ));
    let records: Vec<(&str, ObjectInfo, Bytes)> = objects
        .iter()
        .map(|(key, data)| (key.as_str(), info_of(data), data.clone()))
        .collect();
    runtime
        .block_on(primary.batch_put(pieces(&records)))
        .expect("objects at the source");

    let secondary = client(&target, "secondary", ACCESS_KEY, SECRET_KEY);
    assert!(
        runtime
            .block_on(secondary.pulls_from(&primary))
            .expect("probe")
    );
    let by_name = client_as(
        &format!("http://localhost:{}", source.port),
        "primary",
        ACCESS_KEY,
        SECRET_KEY,
    );
    assert!(
        !runtime
            .block_on(secondary.pulls_from(&by_name))
            .expect("probe"),
        "a source not listed in pull_sources"
    );

    // A plain S3 server turns batches off; only an unreachable node is an error.
    let plain = client_as(&fake.endpoint(), "plain-s3", ACCESS_KEY, SECRET_KEY);
    assert!(!runtime.block_on(plain.supports_batch()).expect("probe"));
    assert!(!runtime.block_on(plain.pulls_from(&primary)).expect("probe"));
    let gone = client_as("http://127.0.0.1:1", "primary", ACCESS_KEY, SECRET_KEY);
    assert!(matches!(
        runtime.block_on(gone.supports_batch()),
        Err(NodeClientError::Transport(_))
    ));
    assert!(
        !runtime
            .block_on(secondary.pulls_from(&gone))
            .expect("probe"),
        "a listed source the secondary cannot reach"
    );

    // Pull everything under another prefix, plus a key the source lacks.
    let targets: Vec<String> = objects
        .iter()
        .map(|(key, _)| key.replace("repo/", "dr/"))
        .collect();
    let mut pairs: Vec<(&str, &str)> = objects
        .iter()
        .zip(&targets)
        .map(|((source, _), target)| (source.as_str(), target.as_str()))
        .collect();
    pairs.push(("repo/chunks/none", "dr/chunks/none"));
    // Pulls every pair; each object has `outcome`, the last key is missing.
    let pull_all = |outcome: PullOutcome| {
        let request = primary.pull_request(pull_keys(&pairs)).expect("sign");
        let outcomes = runtime
            .block_on(secondary.batch_pull(&request))
            .expect("pull");
        let mut expected = vec![outcome; objects.len()];
        expected.push(PullOutcome::Missing);
        assert_eq!(outcomes, expected);
    };
    pull_all(PullOutcome::Created);
    let target_keys: Vec<&str> = targets.iter().map(String::as_str).collect();
    let copies = runtime.block_on(read_all(&secondary, &target_keys));
    for ((record, data), (key, original)) in copies.iter().zip(&objects) {
        let Record::Object { info, .. } = record else {
            panic!("{key} not copied: {record:?}");
        };
        assert_eq!(data, original, "{key}");
        assert_eq!(
            info,
            &info_of(original),
            "{key}: ETag and CRC as at the source"
        );
    }
    // Again: nothing is overwritten.
    pull_all(PullOutcome::Existed);

    // Refused pulls change nothing.
    let before = listed(&target, "secondary");
    let one = pull_keys(&[("repo/chunks/00", "dr/other/00")]);
    let refused = |request: &PullRequest, client: &NodeClient| {
        status_of(
            runtime
                .block_on(client.batch_pull(request))
                .expect_err("refused"),
        )
    };
    let mut tampered = primary.pull_request(one.clone()).expect("sign");
    tampered.keys[0].source = "repo/chunks/01".to_owned();
    let error = refused(&tampered, &secondary);
    assert!(
        error.starts_with("502")
            && error.contains("HavenSourceFailed")
            && error.contains("Sha256Mismatch"),
        "a request altered after signing: {error}"
    );
    let mut extra_header = primary.pull_request(one.clone()).expect("sign");
    extra_header
        .headers
        .push(("x-amz-meta-evil".to_owned(), "1".to_owned()));
    assert!(refused(&extra_header, &secondary).contains("InvalidRequest"));
    let mut not_a_batch_read = primary.pull_request(one.clone()).expect("sign");
    not_a_batch_read.url = format!("{}/primary/repo/chunks/00", source.endpoint());
    assert!(refused(&not_a_batch_read, &secondary).contains("InvalidRequest"));
    not_a_batch_read.url = format!(
        "http://user:password@127.0.0.1:{}/primary?haven-batch-get=",
        source.port
    );
    assert!(refused(&not_a_batch_read, &secondary).contains("InvalidRequest"));
    let mut elsewhere = primary.pull_request(one.clone()).expect("sign");
    elsewhere.url = "http://169.254.169.254/latest?haven-batch-get=".to_owned();
    let error = refused(&elsewhere, &secondary);
    assert!(
        error.contains("AccessDenied") && error.contains("pull_sources"),
        "{error}"
    );
    let escape = primary
        .pull_request(pull_keys(&[("repo/chunks/00", "bad\0key")]))
        .expect("sign");
    assert!(refused(&escape, &secondary).starts_with("400"));
    let reader = client(&target, "secondary", "reader", "reader-secret");
    let signed = primary.pull_request(one.clone()).expect("sign");
    assert!(refused(&signed, &reader).contains("HavenBatchPull needs access"));
    let no_bucket = client(&target, "nosuchbucket", ACCESS_KEY, SECRET_KEY);
    assert!(refused(&signed, &no_bucket).contains("NoSuchBucket"));
    assert_eq!(listed(&target, "secondary"), before, "a refused pull wrote");

    // A broken or hostile source: a clean error, nothing half-written.
    let from_fake = client_as(&fake.endpoint(), "fake", ACCESS_KEY, SECRET_KEY);
    let request = from_fake
        .pull_request(pull_keys(&[
            ("object-1", "fake/object-1"),
            ("missing-1", "fake/missing-1"),
            ("failed-1", "fake/failed-1"),
        ]))
        .expect("sign");
    let outcomes = runtime
        .block_on(secondary.batch_pull(&request))
        .expect("pull from the fake");
    assert_eq!(
        outcomes,
        [
            PullOutcome::Created,
            PullOutcome::Missing,
            PullOutcome::Failed {
                message: "disk on fire".to_owned()
            }
        ]
    );
    let before = listed(&target, "secondary");
    for (key, expected) in [
        ("badcrc", "BadDigest"),
        ("cut", "HavenSourceFailed"),
        ("swap", "HavenSourceFailed"),
        ("garbage", "HavenSourceFailed"),
        ("huge", "HavenSourceFailed"),
        ("redirect", "307"),
        ("denied", "403"),
    ] {
        let request = from_fake
            .pull_request(pull_keys(&[(key, &format!("fake/{key}"))]))
            .expect("sign");
        let error = refused(&request, &secondary);
        assert!(error.contains(expected), "{key}: {error}");
    }
    assert_eq!(listed(&target, "secondary"), before, "a broken pull wrote");
    let leftovers = files_below(&target.data().join("tmp"));
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(
        target
            .metrics()
            .contains("op=\"HavenBatchPull\",status=\"200\""),
        "metrics"
    );
}
