//! The storage node against awscli (`aws s3` and `aws s3api`).

use crate::support::{
    process::ok,
    s3::ACCESS_KEY,
    storage_node::{Node, fails_with, listed_keys, output_with_env, pattern},
};

#[test]
fn awscli_bucket_and_object_round_trip() {
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://backups"]);
    fails_with(
        node.aws(&["s3api", "create-bucket", "--bucket", "backups"]),
        "BucketAlreadyOwnedByYou",
    );
    assert!(node.aws_ok(&["s3", "ls"]).contains("backups"));

    // 12 MB goes multipart with awscli's defaults; 5 bytes is a plain PUT.
    let big = pattern(12_000_000, 1);
    std::fs::write(node.path("big"), &big).expect("write");
    std::fs::write(node.path("small"), b"hello").expect("write");
    let big_path = node.path("big").display().to_string();
    let small_path = node.path("small").display().to_string();
    node.aws_ok(&[
        "s3",
        "cp",
        &big_path,
        "s3://backups/disks/vm1/big",
        "--only-show-errors",
    ]);
    node.aws_ok(&[
        "s3",
        "cp",
        &small_path,
        "s3://backups/small",
        "--only-show-errors",
    ]);
    for i in 0..5 {
        node.aws_ok(&[
            "s3",
            "cp",
            &small_path,
            &format!("s3://backups/chunks/{i:02}"),
            "--only-show-errors",
        ]);
    }

    let listing = node.aws_ok(&["s3", "ls", "s3://backups", "--recursive"]);
    for key in ["disks/vm1/big", "small", "chunks/00", "chunks/04"] {
        assert!(listing.contains(key), "{key} missing from {listing}");
    }
    let top = node.aws_ok(&["s3", "ls", "s3://backups/"]);
    assert!(
        top.contains("PRE disks/") && top.contains("PRE chunks/") && top.contains("small"),
        "{top}"
    );

    // Pagination with continuation tokens and start-after.
    let list = |args: &[&str]| {
        let mut all = vec![
            "s3api",
            "list-objects-v2",
            "--bucket",
            "backups",
            "--no-paginate",
        ];
        all.extend_from_slice(args);
        node.aws_ok(&all)
    };
    let page = list(&["--prefix", "chunks/", "--max-keys", "2"]);
    let json: serde_json::Value = serde_json::from_str(&page).expect("json");
    assert_eq!(json["KeyCount"], 2);
    assert_eq!(json["IsTruncated"], true);
    let token = json["NextContinuationToken"]
        .as_str()
        .expect("token")
        .to_owned();
    let rest = list(&["--prefix", "chunks/", "--continuation-token", &token]);
    assert_eq!(listed_keys(&rest), ["chunks/02", "chunks/03", "chunks/04"]);
    let after = list(&["--start-after", "chunks/03"]);
    assert_eq!(listed_keys(&after), ["chunks/04", "disks/vm1/big", "small"]);

    // Whole and ranged reads.
    let back = node.path("back").display().to_string();
    node.aws_ok(&[
        "s3",
        "cp",
        "s3://backups/disks/vm1/big",
        &back,
        "--only-show-errors",
    ]);
    assert!(
        std::fs::read(&back).expect("read") == big,
        "round trip differs"
    );
    let range = node.path("range").display().to_string();
    node.aws_ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "backups",
        "--key",
        "disks/vm1/big",
        "--range",
        "bytes=5000000-5000099",
        &range,
    ]);
    assert_eq!(
        std::fs::read(&range).expect("read"),
        big[5_000_000..5_000_100]
    );

    // HEAD, conditional PUT, conditional GET.
    let head = node.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "backups",
        "--key",
        "small",
    ]);
    let head: serde_json::Value = serde_json::from_str(&head).expect("json");
    assert_eq!(head["ContentLength"], 5);
    let etag = head["ETag"].as_str().expect("etag").to_owned();
    assert_eq!(etag, "\"5d41402abc4b2a76b9719d911017c592\"");
    fails_with(
        node.aws(&[
            "s3api",
            "put-object",
            "--bucket",
            "backups",
            "--key",
            "small",
            "--body",
            &big_path,
            "--if-none-match",
            "*",
        ]),
        "PreconditionFailed",
    );
    node.aws_ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "backups",
        "--key",
        "new",
        "--body",
        &small_path,
        "--if-none-match",
        "*",
    ]);
    let scratch = node.path("scratch").display().to_string();
    let get_small = |condition: &[&str]| {
        let mut args = vec![
            "s3api",
            "get-object",
            "--bucket",
            "backups",
            "--key",
            "small",
        ];
        args.extend_from_slice(condition);
        args.push(&scratch);
        node.aws(&args)
    };
    ok(get_small(&["--if-match", &etag]), "get-object --if-match");
    fails_with(get_small(&["--if-match", "\"0000\""]), "PreconditionFailed");
    fails_with(get_small(&["--if-none-match", &etag]), "304");

    // Copy, batch delete, delete bucket.
    node.aws_ok(&[
        "s3api",
        "copy-object",
        "--bucket",
        "backups",
        "--key",
        "copy",
        "--copy-source",
        "backups/small",
    ]);
    node.aws_ok(&[
        "s3",
        "cp",
        "s3://backups/copy",
        &scratch,
        "--only-show-errors",
    ]);
    assert_eq!(std::fs::read(&scratch).expect("read"), b"hello");
    let delete = r#"{"Objects":[{"Key":"chunks/00"},{"Key":"chunks/01"},{"Key":"missing"}]}"#;
    node.aws_ok(&[
        "s3api",
        "delete-objects",
        "--bucket",
        "backups",
        "--delete",
        delete,
    ]);
    let listing = node.aws_ok(&["s3", "ls", "s3://backups/chunks/"]);
    // Lines are "DATE TIME SIZE NAME": compare names only (the time of day can be 00:..).
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    assert!(
        !names.contains(&"00") && !names.contains(&"01") && names.contains(&"02"),
        "{listing}"
    );
    fails_with(node.aws(&["s3", "rb", "s3://backups"]), "BucketNotEmpty");
    node.aws_ok(&[
        "s3",
        "rm",
        "s3://backups",
        "--recursive",
        "--only-show-errors",
    ]);
    node.aws_ok(&["s3", "rb", "s3://backups"]);
    fails_with(
        node.aws(&["s3api", "head-bucket", "--bucket", "backups"]),
        "404",
    );
}

#[test]
fn awscli_refuses_bad_credentials_and_presigned_urls_expire() {
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://auth"]);
    fails_with(
        node.aws_as("nobody", "whatever", &["s3", "ls", "s3://auth"]),
        "InvalidAccessKeyId",
    );
    fails_with(
        node.aws_as(ACCESS_KEY, "wrong-secret", &["s3", "ls", "s3://auth"]),
        "SignatureDoesNotMatch",
    );
    std::fs::write(node.path("f"), b"presigned").expect("write");
    node.aws_ok(&[
        "s3",
        "cp",
        &node.path("f").display().to_string(),
        "s3://auth/f",
        "--only-show-errors",
    ]);

    let url = node.aws_ok(&["s3", "presign", "s3://auth/f", "--expires-in", "60"]);
    let body = ok(
        output_with_env("python3", &["-c", PRESIGNED_GET, url.trim()], &[]),
        "presigned get",
    );
    assert_eq!(body.trim(), "200 presigned");
    let expired = node.aws_ok(&["s3", "presign", "s3://auth/f", "--expires-in", "1"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let body = ok(
        output_with_env("python3", &["-c", PRESIGNED_GET, expired.trim()], &[]),
        "expired get",
    );
    assert!(
        body.starts_with("403") && body.contains("AccessDenied"),
        "{body}"
    );
    assert!(
        url.contains("X-Amz-Signature="),
        "expected a SigV4 URL: {url}"
    );
    let tampered = flip_signature(url.trim());
    let body = ok(
        output_with_env("python3", &["-c", PRESIGNED_GET, &tampered], &[]),
        "tampered get",
    );
    assert!(body.starts_with("403"), "{body}");
    // Anonymous requests are refused.
    let body = ok(
        output_with_env(
            "python3",
            &["-c", PRESIGNED_GET, &format!("{}/auth/f", node.endpoint())],
            &[],
        ),
        "anon",
    );
    assert!(
        body.starts_with("403") && body.contains("AccessDenied"),
        "{body}"
    );
}

/// Prints "STATUS BODY" of a GET with urllib (no signing of its own).
const PRESIGNED_GET: &str = r#"
import sys, urllib.request, urllib.error
try:
    r = urllib.request.urlopen(sys.argv[1])
    print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;

/// Changes the first hex digit of the URL's signature.
fn flip_signature(url: &str) -> String {
    let at = url.find("X-Amz-Signature=").expect("signature") + "X-Amz-Signature=".len();
    let old = &url[at..at + 1];
    let new = if old == "0" { "1" } else { "0" };
    format!("{}{new}{}", &url[..at], &url[at + 1..])
}
