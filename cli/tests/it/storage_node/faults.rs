//! The storage node under hostile requests and faults: traversal keys, bad
//! digests, truncated bodies, oversized headers, a flipped byte on disk, and
//! `kill -9` in the middle of concurrent uploads.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::{
    process::ok,
    storage_node::{Node, fails_with, pattern, put_until_killed, verify_after_crash},
};

fn tmp_is_empty(node: &Node) -> bool {
    std::fs::read_dir(node.data().join("tmp"))
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

#[test]
fn hostile_requests_get_s3_errors_and_leave_nothing_behind() {
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://target"]);
    let run = node.boto3(HOSTILE_SCRIPT, &[]).output();
    let stdout = ok(run.expect("run python3 with boto3"), "hostile script");
    assert!(stdout.contains("ALL OK"), "{stdout}");
    // Nothing escaped the bucket, nothing refused was stored, no temp files remain:
    // the four dot-segment keys are the only objects, all below the bucket.
    assert!(!node.dir.path().join("escape").exists());
    assert!(!node.data().join("escape").exists());
    assert!(!node.data().join("buckets").join("escape").exists());
    let objects = node.data().join("buckets").join("target").join("objects");
    let files = node.object_files();
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(files.iter().all(|f| f.starts_with(&objects)), "{files:?}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(tmp_is_empty(&node), "temporary files left behind");

    // A header section larger than the limit gets 431.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", node.port)).expect("connect");
    let big = "x".repeat(200_000);
    let request = format!(
        "GET /target/k HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );
    let _ = stream.write_all(request.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 431"),
        "{}",
        &response[..response.len().min(200)]
    );
}

#[test]
fn flipped_byte_on_disk_is_detected_and_never_served() {
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://rot"]);
    let data = pattern(3_000_000, 9);
    std::fs::write(node.path("obj"), &data).expect("write");
    let obj = node.path("obj").display().to_string();
    node.aws_ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "rot",
        "--key",
        "chunks/aa/obj",
        "--body",
        &obj,
    ]);
    let files = node.object_files();
    assert_eq!(files.len(), 1);
    let mut bytes = std::fs::read(&files[0]).expect("read object file");
    bytes[1_234_567] ^= 0x40;
    std::fs::write(&files[0], &bytes).expect("corrupt");

    let back = node.path("back").display().to_string();
    let get = |range: Option<&str>| {
        let mut args = vec!["s3api", "get-object", "--bucket", "rot"];
        args.extend(["--key", "chunks/aa/obj"]);
        args.extend(range.map(|range| ["--range", range]).into_iter().flatten());
        args.push(&back);
        node.aws(&args)
    };
    fails_with(get(None), "InternalError");
    // A range in an intact block still reads; one touching the bad block fails.
    ok(get(Some("bytes=0-99")), "ranged read of an intact block");
    assert_eq!(std::fs::read(&back).expect("read"), data[..100]);
    fails_with(get(Some("bytes=1234560-1234600")), "InternalError");
    let metrics = node.metrics();
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("haven_storage_checksum_failures_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .expect("checksum failure metric");
    assert!(failures >= 2, "{metrics}");
    assert!(
        metrics.contains("op=\"GetObject\",status=\"500\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("haven_storage_disk_available_bytes"),
        "{metrics}"
    );
}

#[test]
fn kill_9_during_concurrent_puts_keeps_every_acknowledged_object() {
    let mut node = Node::start();
    let acked = put_until_killed(&mut node);

    node.restart();
    assert!(tmp_is_empty(&node), "partial files survived the restart");
    verify_after_crash(&node, &acked);
}

/// Traversal keys, bad digests, truncated bodies: each must fail with the
/// right S3 error and store nothing.
const HOSTILE_SCRIPT: &str = r#"
import http.client, urllib.parse
# Dot segments are ordinary S3 key characters (AWS stores such keys): each is
# stored under its own name, inside the bucket (the test then checks the disk).
dotted = ["../escape", "a/../../escape", "../../buckets/escape@", "./x"]
for key in dotted:
    s3.put_object(Bucket="target", Key=key, Body=key.encode())
    assert s3.get_object(Bucket="target", Key=key)["Body"].read() == key.encode(), key
listed = [o["Key"] for o in s3.list_objects_v2(Bucket="target")["Contents"]]
assert listed == sorted(dotted), listed
code = code_of(lambda: s3.put_object(Bucket="target", Key="a\x00b", Body=b"evil"))
assert code in ("InvalidArgument", "InvalidURI", "InvalidRequest"), code
code = code_of(lambda: s3.put_object(Bucket="target", Key="/abs", Body=b"evil"))
assert code is not None, "absolute key accepted"
code = code_of(lambda: s3.put_object(Bucket="target", Key="md5", Body=b"data", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA=="))
assert code == "BadDigest", code
code = code_of(lambda: s3.put_object(Bucket="target", Key="md5", Body=b"data", ContentMD5="not-base64!"))
assert code == "InvalidDigest", code
code = code_of(lambda: s3.put_object(Bucket="target", Key="meta", Body=b"data", Metadata={"big": "x" * 3000}))
assert code == "MetadataTooLarge", code
code = code_of(lambda: s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"data"))
assert code == "NoSuchBucket", code
code = code_of(lambda: s3.get_object(Bucket="target", Key="missing"))
assert code == "NoSuchKey", code
# Truncated body: a presigned PUT that promises 100000 bytes and sends 5000.
url = urllib.parse.urlparse(s3.generate_presigned_url("put_object", Params={"Bucket": "target", "Key": "truncated"}, ExpiresIn=60))
conn = http.client.HTTPConnection(url.hostname, url.port)
conn.putrequest("PUT", url.path + "?" + url.query)
conn.putheader("Content-Length", "100000")
conn.endheaders()
conn.send(b"x" * 5000)
conn.sock.shutdown(1)
try:
    conn.getresponse()
except Exception:
    pass
conn.close()
import time; time.sleep(0.3)
code = code_of(lambda: s3.head_object(Bucket="target", Key="truncated"))
assert code == "404", code
assert s3.list_objects_v2(Bucket="target").get("KeyCount") == len(dotted)
print("ALL OK")
"#;
