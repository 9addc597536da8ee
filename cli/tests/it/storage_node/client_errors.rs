//! What `haven` says when the S3 server refuses it: a missing bucket, an invalid
//! bucket name, an unknown access key, a wrong secret, a key without access to the
//! bucket, a clock too far from the server's. Each is one line, said once, with the
//! exit code `docs/cli.md` documents.

use std::process::Output;

use crate::support::{
    haven::HavenClient,
    s3::S3Keys,
    storage_node::{ACCESS_KEY, Node},
};

/// Where Debian's `faketime` package puts the library that shifts a process's clock.
const LIBFAKETIME: [&str; 2] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
];

/// Checks that `output` failed with exit code `code` and printed exactly
/// `error: MESSAGE`, one line, the message once.
fn refused_with(output: Output, code: i32, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.trim_end(), format!("error: {message}"), "{stderr}");
}

#[test]
fn haven_says_once_what_the_s3_server_refused() {
    let node = Node::start_with_keys(
        "[[keys]]\naccess_key = \"elsewhere\"\nsecret_key = \"elsewhere-secret\"\nbuckets = [\"other\"]\n",
    );
    node.aws_ok(&["s3", "mb", "s3://present"]);
    let url = |bucket: &str| format!("s3://{bucket}/repo?endpoint={}", node.endpoint());
    let init = |client: HavenClient| client.run(&["repo", "init"]);

    refused_with(
        init(HavenClient::on_node(url("absent"))),
        4,
        "bucket \"absent\" does not exist: create it (`aws s3 mb s3://absent`, or start a Haven storage node with `--create-bucket absent`)",
    );
    refused_with(
        init(HavenClient::on_node(url("bk"))),
        2,
        "invalid bucket name \"bk\": S3 bucket names are 3 to 63 characters of lower-case letters, digits, dots and hyphens, beginning and ending with a letter or digit",
    );
    refused_with(
        init(HavenClient::on_node_as(
            url("present"),
            S3Keys::new("nobody", "whatever"),
        )),
        8,
        "the S3 server does not know this access key (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID",
    );
    refused_with(
        init(HavenClient::on_node_as(
            url("present"),
            S3Keys::new(ACCESS_KEY, "not-the-secret"),
        )),
        8,
        "the S3 server refused the request signature (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY",
    );
    refused_with(
        init(HavenClient::on_node_as(
            url("present"),
            S3Keys::new("elsewhere", "elsewhere-secret"),
        )),
        8,
        "access denied by the S3 server on config: access key may not use this bucket",
    );

    // A clock 20 minutes behind the node's (libfaketime shifts the client's clock).
    let library = LIBFAKETIME
        .iter()
        .find(|path| std::path::Path::new(path).exists())
        .expect("faketime must be installed (apt-get install faketime)");
    let skewed = HavenClient::on_node(url("present"))
        .command(&["repo", "init"])
        .env("LD_PRELOAD", library)
        .env("FAKETIME", "-20m")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("run haven");
    refused_with(
        skewed,
        1,
        "the S3 server refused the request because this machine's clock is too far from the server's (RequestTimeTooSkewed, more than 15 minutes apart): set the clock (NTP)",
    );

    // After all that, the bucket is usable and nothing was half-created in it.
    HavenClient::on_node(url("present")).ok(&["repo", "init"]);
}
