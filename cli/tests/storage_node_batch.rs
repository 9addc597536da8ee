//! The storage node's batch transfer (`?haven-batch-get=`, `?haven-batch-put=`)
//! through Haven's own client, against the real `haven storage-node`: objects
//! keep their ETag and content type, nothing is ever overwritten, and every
//! malformed, mismatching or unauthorised batch is refused without leaving a
//! trace.

#[path = "storage_node_support.rs"]
mod support;

use bytes::Bytes;
use haven_node_protocol::{ObjectInfo, Record};
use haven_repo::{Credentials, NodeClient, NodeClientError};
use support::{ACCESS_KEY, Node, SECRET_KEY, pattern};

const OTHER_KEYS: &str = "[[keys]]\naccess_key = \"other\"\nsecret_key = \"other-secret\"\nbuckets = [\"elsewhere\"]\n\
     [[keys]]\naccess_key = \"reader\"\nsecret_key = \"reader-secret\"\nread_only = true\n";

fn client(node: &Node, bucket: &str, access_key: &str, secret_key: &str) -> NodeClient {
    let credentials = Credentials {
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
        region: "us-east-1".to_owned(),
    };
    NodeClient::new(&node.endpoint(), bucket, credentials).expect("client")
}

/// Every record of a batch read, with its data.
async fn read_all(client: &NodeClient, keys: &[&str]) -> Vec<(Record, Bytes)> {
    let keys = keys.iter().map(|k| (*k).to_owned()).collect();
    let mut reader = client.batch_get(keys).await.expect("batch get");
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
    let traversal = pieces(&[("../escape", info_of(&data), data.clone())]);
    let error = runtime
        .block_on(b.batch_put(traversal))
        .expect_err("traversal");
    assert!(status_of(error).starts_with("400"));
    assert_eq!(
        listed(&node, "site-b"),
        before,
        "a refused batch left objects"
    );
    let leftovers = support::files_below(&node.data().join("tmp"));
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Authorisation: the same keys and bucket permissions as S3.
    let other = client(&node, "site-b", "other", "other-secret");
    let error = runtime
        .block_on(other.batch_get(vec!["empty".into()]))
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
    assert!(status_of(error).contains("read-only"));
    let forged = client(&node, "site-b", ACCESS_KEY, "wrong-secret");
    let error = runtime
        .block_on(forged.batch_put(pieces(&objects[1..2])))
        .expect_err("forged");
    assert!(status_of(error).contains("SignatureDoesNotMatch"));
    let no_bucket = client(&node, "nosuchbucket", ACCESS_KEY, SECRET_KEY);
    let error = runtime
        .block_on(no_bucket.batch_get(vec!["x".into()]))
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
