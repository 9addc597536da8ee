//! The node's S3 API as AWS documents it, driven by boto3 and awscli: listings of
//! keys that need encoding, bucket calls and request ids, object tagging,
//! GetObjectAttributes, conditional deletes and streaming uploads. The scripts are in `s3_api/`; each
//! checks status, error code and body of every answer it gets.

use crate::support::{
    pki::Pki,
    process::ok,
    storage_node::{Node, NodeOptions, TlsFiles, pattern},
};

/// The helpers every script starts with.
const COMMON: &str = include_str!("s3_api/common.py");

/// Runs `script` (after [`COMMON`]) against `node` and fails unless it ends with
/// `ALL OK`.
fn run(node: &Node, script: &str, args: &[&str], done: &str) {
    let source = format!("{COMMON}\n{script}");
    let output = node
        .python(&source, args)
        .output()
        .expect("python3 with boto3 must be installed (apt-get install python3-boto3)");
    let stdout = ok(output, ("boto3 script", args));
    assert!(stdout.contains(done), "{stdout}");
}

#[test]
fn listings_encode_keys_so_boto3_deletes_by_the_names_listed() {
    let node = Node::start();
    run(&node, include_str!("s3_api/listing.py"), &[], "ALL OK");

    // awscli (`aws s3`, which also asks for encoding-type=url) lists and removes
    // such keys too, ending with an empty bucket.
    node.aws_ok(&["s3", "mb", "s3://cli-names"]);
    std::fs::write(node.path("f"), pattern(100, 1)).expect("write");
    let file = node.path("f").display().to_string();
    let keys = ["a+b", "a b", "100%", "d\u{fc}r/x", "a/../b"];
    for key in keys {
        node.aws_ok(&[
            "s3api",
            "put-object",
            "--bucket",
            "cli-names",
            "--key",
            key,
            "--body",
            &file,
        ]);
    }
    let listing = node.aws_ok(&["s3", "ls", "s3://cli-names", "--recursive"]);
    // Lines are "DATE TIME SIZE KEY", the size padded with spaces.
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.splitn(3, ' ').nth(2))
        .filter_map(|rest| rest.trim_start().split_once(' '))
        .map(|(_, key)| key)
        .collect();
    let mut expected = keys.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected, "{listing}");
    node.aws_ok(&[
        "s3",
        "rm",
        "s3://cli-names",
        "--recursive",
        "--only-show-errors",
    ]);
    let json = node.aws_ok(&["s3api", "list-objects-v2", "--bucket", "cli-names"]);
    assert!(!json.contains("\"Key\""), "{json}");
    node.aws_ok(&["s3", "rb", "s3://cli-names"]);
}

#[test]
fn bucket_calls_and_request_ids_are_as_aws_documents() {
    let node = Node::start();
    run(&node, include_str!("s3_api/buckets.py"), &[], "ALL OK");
}

#[test]
fn tags_attributes_and_conditional_deletes_survive_a_restart() {
    let mut node = Node::start_with_keys(
        "[[keys]]\naccess_key = \"appender\"\nsecret_key = \"appender-secret\"\naccess = \"append\"\n\
         [[keys]]\naccess_key = \"reader\"\nsecret_key = \"reader-secret\"\naccess = \"read\"\n",
    );
    let script = include_str!("s3_api/tagging.py");
    run(&node, script, &["write"], "WRITTEN");
    node.restart();
    run(&node, script, &["check"], "ALL OK");
}

#[test]
fn streaming_uploads_are_read_as_sdks_send_them() {
    // Over TLS, where boto3 sends aws-chunked bodies with checksum trailers.
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let (cert, key) = pki.issue("server", "coordinator");
    let tls = TlsFiles {
        cert,
        key,
        ca_bundle: pki.ca(),
    };
    let node = Node::start_in(
        dir,
        NodeOptions {
            tls: Some(tls),
            ..NodeOptions::default()
        },
    );
    run(&node, include_str!("s3_api/streaming.py"), &[], "ALL OK");
    // Nothing of the refused uploads or of the spooled chunked bodies is left.
    let tmp: Vec<_> = std::fs::read_dir(node.data().join("tmp"))
        .expect("tmp")
        .collect();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn checksums_are_verified_kept_and_returned_as_aws_documents() {
    let node = Node::start();
    run(&node, include_str!("s3_api/checksums.py"), &[], "ALL OK");
}

#[test]
fn parts_are_copied_by_range_and_read_by_number_and_buckets_listed_in_pages() {
    let node = Node::start();
    run(&node, include_str!("s3_api/parts.py"), &[], "ALL OK");
}
