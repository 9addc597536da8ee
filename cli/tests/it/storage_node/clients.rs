//! The storage node against rclone, restic, boto3, and Haven's own batch
//! existence client.

use std::process::Command;

use crate::support::{
    process::ok,
    s3::{ACCESS_KEY, SECRET_KEY},
    storage_node::{Node, pattern},
};

fn write_tree(root: &std::path::Path) {
    for (index, size) in [0usize, 1, 4096, 1_000_000, 6_000_000].iter().enumerate() {
        let dir = root.join(format!("d{}", index % 2));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join(format!("file{index}")),
            pattern(*size, index as u64),
        )
        .expect("write");
    }
}

fn same_tree(a: &std::path::Path, b: &std::path::Path) {
    let output = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .expect("diff");
    assert!(
        output.status.success(),
        "trees differ: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn rclone_copies_and_checks_a_tree() {
    let node = Node::start();
    let source = node.path("src");
    write_tree(&source);
    let endpoint = node.endpoint();
    let envs = [
        ("RCLONE_CONFIG_HAVEN_TYPE", "s3"),
        ("RCLONE_CONFIG_HAVEN_PROVIDER", "Other"),
        ("RCLONE_CONFIG_HAVEN_ACCESS_KEY_ID", ACCESS_KEY),
        ("RCLONE_CONFIG_HAVEN_SECRET_ACCESS_KEY", SECRET_KEY),
        ("RCLONE_CONFIG_HAVEN_ENDPOINT", endpoint.as_str()),
        ("RCLONE_CONFIG_HAVEN_FORCE_PATH_STYLE", "true"),
        ("RCLONE_CONFIG_HAVEN_REGION", "us-east-1"),
        ("RCLONE_CONFIG", "/dev/null"),
    ];
    let rclone = |args: &[&str]| {
        Command::new("rclone")
            .args(args)
            .envs(envs)
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("rclone must be installed (apt-get install rclone)")
    };
    let src = source.display().to_string();
    let back = node.path("back").display().to_string();
    ok(rclone(&["mkdir", "haven:rclone"]), "rclone mkdir");
    ok(
        rclone(&[
            "copy",
            &src,
            "haven:rclone/tree",
            "--s3-upload-cutoff",
            "5M",
            "--s3-chunk-size",
            "5M",
        ]),
        "rclone copy",
    );
    ok(
        rclone(&["check", &src, "haven:rclone/tree"]),
        "rclone check",
    );
    let listing = ok(rclone(&["lsf", "-R", "haven:rclone"]), "rclone lsf");
    assert!(
        listing.contains("tree/d0/file4") && listing.contains("tree/d1/file3"),
        "{listing}"
    );
    ok(
        rclone(&["copy", "haven:rclone/tree", &back]),
        "rclone copy back",
    );
    same_tree(&source, &node.path("back"));
    ok(rclone(&["delete", "haven:rclone/tree/d1"]), "rclone delete");
    let listing = ok(rclone(&["lsf", "-R", "haven:rclone"]), "rclone lsf");
    assert!(!listing.contains("d1/file"), "{listing}");
}

#[test]
fn restic_repository_backup_check_restore() {
    let node = Node::start();
    let source = node.path("src");
    write_tree(&source);
    let repo = format!("s3:{}/restic", node.endpoint());
    let restic = |args: &[&str]| {
        Command::new("restic")
            .args(["-r", &repo])
            .args(args)
            .env("RESTIC_PASSWORD", "test-password")
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("RESTIC_CACHE_DIR", node.path("restic-cache"))
            .output()
            .expect("restic must be installed (apt-get install restic)")
    };
    ok(restic(&["init"]), "restic init");
    ok(
        restic(&["backup", &source.display().to_string()]),
        "restic backup",
    );
    ok(
        restic(&["backup", &source.display().to_string()]),
        "restic second backup",
    );
    ok(restic(&["check", "--read-data"]), "restic check");
    let target = node.path("restore");
    ok(
        restic(&[
            "restore",
            "latest",
            "--target",
            &target.display().to_string(),
        ]),
        "restic restore",
    );
    same_tree(
        &source,
        &target.join(source.strip_prefix("/").expect("absolute")),
    );
}

#[test]
fn boto3_multipart_ranges_conditions_and_object_lock() {
    let node = Node::start_with_keys(
        "[[keys]]\naccess_key = \"plain\"\nsecret_key = \"plain-secret\"\nbuckets = [\"locked\", \"data\"]\n\
         [[keys]]\naccess_key = \"reader\"\nsecret_key = \"reader-secret\"\nbuckets = [\"data\"]\nread_only = true\n",
    );
    let output = node
        .boto3(BOTO3_SCRIPT, &[])
        .output()
        .expect("python3 with boto3 must be installed (apt-get install python3-boto3)");
    let stdout = ok(output, "boto3 script");
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

#[test]
fn batch_existence_query_answers_thousands_of_keys() {
    let node = Node::start_with_keys(
        "[[keys]]\naccess_key = \"other\"\nsecret_key = \"other-secret\"\nbuckets = [\"elsewhere\"]\n",
    );
    node.aws_ok(&["s3", "mb", "s3://chunks"]);
    std::fs::write(node.path("c"), b"chunk").expect("write");
    let chunk = node.path("c").display().to_string();
    for i in [0, 7, 4999] {
        node.aws_ok(&[
            "s3",
            "cp",
            &chunk,
            &format!("s3://chunks/chunks/{i:04x}"),
            "--only-show-errors",
        ]);
    }
    let keys: Vec<String> = (0..12_000).map(|i| format!("chunks/{i:04x}")).collect();
    let credentials = haven_repo::Credentials {
        access_key: ACCESS_KEY.to_owned(),
        secret_key: SECRET_KEY.to_owned(),
        region: "us-east-1".to_owned(),
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let started = std::time::Instant::now();
    let answer = runtime
        .block_on(haven_repo::exists_batch(
            &node.endpoint(),
            "chunks",
            &credentials,
            &keys,
        ))
        .expect("existence query");
    eprintln!("12000 keys answered in {:?}", started.elapsed());
    let found: Vec<usize> = answer
        .iter()
        .enumerate()
        .filter(|(_, e)| **e)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(found, [0, 7, 4999]);

    let wrong = haven_repo::Credentials {
        secret_key: "wrong".to_owned(),
        ..credentials.clone()
    };
    let error = runtime
        .block_on(haven_repo::exists_batch(
            &node.endpoint(),
            "chunks",
            &wrong,
            &keys[..3],
        ))
        .expect_err("wrong secret");
    assert!(
        error.to_string().contains("SignatureDoesNotMatch"),
        "{error}"
    );
    let other = haven_repo::Credentials {
        access_key: "other".to_owned(),
        secret_key: "other-secret".to_owned(),
        ..credentials
    };
    let error = runtime
        .block_on(haven_repo::exists_batch(
            &node.endpoint(),
            "chunks",
            &other,
            &keys[..3],
        ))
        .expect_err("bucket not allowed");
    assert!(error.to_string().contains("AccessDenied"), "{error}");
    let metrics = node.metrics();
    assert!(
        metrics.contains("op=\"HavenExists\",status=\"200\""),
        "{metrics}"
    );
}

const BOTO3_SCRIPT: &str = r#"
import hashlib, datetime, time, urllib.request, urllib.error

admin = client()
plain = client("plain", "plain-secret")
reader = client("reader", "reader-secret")

def expect_code(code, fn, what):
    got = code_of(fn)
    assert got == code, f"{what}: expected {code}, got {got}"

def data(n, seed):
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])

admin.create_bucket(Bucket="data")
# Multipart: 3 parts (5 MiB, 5 MiB, 1 MiB + 7).
parts_data = [data(5 << 20, 1), data(5 << 20, 2), data((1 << 20) + 7, 3)]
up = admin.create_multipart_upload(Bucket="data", Key="mp/object", ContentType="application/x-haven")
parts = []
for i, d in enumerate(parts_data, 1):
    r = admin.upload_part(Bucket="data", Key="mp/object", UploadId=up["UploadId"], PartNumber=i, Body=d)
    parts.append({"PartNumber": i, "ETag": r["ETag"]})
listed = admin.list_parts(Bucket="data", Key="mp/object", UploadId=up["UploadId"])
assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3], listed
assert len(admin.list_multipart_uploads(Bucket="data")["Uploads"]) == 1
expect_code("InvalidPart", lambda: admin.complete_multipart_upload(Bucket="data", Key="mp/object", UploadId=up["UploadId"],
       MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]}), "wrong part etag")
r = admin.complete_multipart_upload(Bucket="data", Key="mp/object", UploadId=up["UploadId"], MultipartUpload={"Parts": parts})
md5s = b"".join(hashlib.md5(d).digest() for d in parts_data)
assert r["ETag"] == '"%s-3"' % hashlib.md5(md5s).hexdigest(), r["ETag"]
whole = b"".join(parts_data)
got = admin.get_object(Bucket="data", Key="mp/object")
assert got["Body"].read() == whole and got["ContentType"] == "application/x-haven"
# Ranges: middle, across the part boundary, suffix, open-ended; unsatisfiable.
for rng, sl in [("bytes=100-199", slice(100, 200)), ("bytes=5242870-5242890", slice(5242870, 5242891)),
                ("bytes=-10", slice(len(whole) - 10, None)), ("bytes=11534330-", slice(11534330, None))]:
    assert admin.get_object(Bucket="data", Key="mp/object", Range=rng)["Body"].read() == whole[sl], rng
expect_code("InvalidRange", lambda: admin.get_object(Bucket="data", Key="mp/object", Range="bytes=99999999-"), "range")
# Aborted uploads leave nothing.
up2 = admin.create_multipart_upload(Bucket="data", Key="mp/aborted")
admin.upload_part(Bucket="data", Key="mp/aborted", UploadId=up2["UploadId"], PartNumber=1, Body=b"x")
admin.abort_multipart_upload(Bucket="data", Key="mp/aborted", UploadId=up2["UploadId"])
expect_code("NoSuchUpload", lambda: admin.list_parts(Bucket="data", Key="mp/aborted", UploadId=up2["UploadId"]), "aborted")
expect_code("404", lambda: admin.head_object(Bucket="data", Key="mp/aborted"), "aborted object")

# Conditional PUT and checksums.
admin.put_object(Bucket="data", Key="chunk", Body=b"first", IfNoneMatch="*")
expect_code("PreconditionFailed", lambda: admin.put_object(Bucket="data", Key="chunk", Body=b"second", IfNoneMatch="*"), "if-none-match")
assert admin.get_object(Bucket="data", Key="chunk")["Body"].read() == b"first"
etag = admin.head_object(Bucket="data", Key="chunk")["ETag"]
admin.put_object(Bucket="data", Key="chunk", Body=b"third", IfMatch=etag)
expect_code("PreconditionFailed", lambda: admin.put_object(Bucket="data", Key="chunk", Body=b"fourth", IfMatch=etag), "if-match")
for alg in ["SHA256", "CRC32", "SHA1"]:
    admin.put_object(Bucket="data", Key="sum/" + alg, Body=b"checksummed", ChecksumAlgorithm=alg)
    h = admin.head_object(Bucket="data", Key="sum/" + alg, ChecksumMode="ENABLED")
    assert ("Checksum" + alg) in h, h
expect_code("BadDigest", lambda: admin.put_object(Bucket="data", Key="sum/bad", Body=b"x",
       ChecksumSHA256="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), "bad sha256")
expect_code("404", lambda: admin.head_object(Bucket="data", Key="sum/bad"), "bad checksum object")

# Per-key permissions.
assert reader.get_object(Bucket="data", Key="chunk")["Body"].read() == b"third"
expect_code("AccessDenied", lambda: reader.put_object(Bucket="data", Key="r", Body=b"x"), "read-only put")
expect_code("AccessDenied", lambda: reader.delete_object(Bucket="data", Key="chunk"), "read-only delete")
admin.create_bucket(Bucket="private")
expect_code("AccessDenied", lambda: reader.list_objects_v2(Bucket="private"), "foreign bucket")
names = [b["Name"] for b in reader.list_buckets()["Buckets"]]
assert names == ["data"], names

# Object Lock.
admin.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)
expect_code("InvalidBucketState", lambda: admin.put_object_lock_configuration(Bucket="data",
       ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}}), "lock on plain bucket")
admin.put_object_lock_configuration(Bucket="locked",
    ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}}})
conf = admin.get_object_lock_configuration(Bucket="locked")["ObjectLockConfiguration"]
assert conf["Rule"]["DefaultRetention"] == {"Mode": "GOVERNANCE", "Days": 1}, conf
plain.put_object(Bucket="locked", Key="gov", Body=b"governed")
ret = plain.get_object_retention(Bucket="locked", Key="gov")["Retention"]
assert ret["Mode"] == "GOVERNANCE", ret
expect_code("AccessDenied", lambda: plain.delete_object(Bucket="locked", Key="gov"), "delete governed")
expect_code("AccessDenied", lambda: plain.put_object(Bucket="locked", Key="gov", Body=b"overwrite"), "overwrite governed")
expect_code("AccessDenied", lambda: plain.delete_object(Bucket="locked", Key="gov", BypassGovernanceRetention=True), "bypass without right")
admin.delete_object(Bucket="locked", Key="gov", BypassGovernanceRetention=True)
until = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=2)
plain.put_object(Bucket="locked", Key="comp", Body=b"compliance", ObjectLockMode="COMPLIANCE", ObjectLockRetainUntilDate=until)
h = plain.head_object(Bucket="locked", Key="comp")
assert h["ObjectLockMode"] == "COMPLIANCE", h
for c in (plain, admin):
    expect_code("AccessDenied", lambda: c.delete_object(Bucket="locked", Key="comp", BypassGovernanceRetention=True), "delete compliance")
    expect_code("AccessDenied", lambda: c.put_object(Bucket="locked", Key="comp", Body=b"x"), "overwrite compliance")
expect_code("AccessDenied", lambda: admin.put_object_retention(Bucket="locked", Key="comp", BypassGovernanceRetention=True,
       Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until - datetime.timedelta(days=1)}), "shorten compliance")
admin.put_object_retention(Bucket="locked", Key="comp", Retention={"Mode": "COMPLIANCE", "RetainUntilDate": until + datetime.timedelta(days=1)})
r = admin.delete_objects(Bucket="locked", Delete={"Objects": [{"Key": "comp"}]})
assert r.get("Errors") and r["Errors"][0]["Code"] == "AccessDenied", r
assert admin.get_object(Bucket="locked", Key="comp")["Body"].read() == b"compliance"
expect_code("InvalidRequest", lambda: admin.put_object(Bucket="data", Key="x", Body=b"x", ObjectLockMode="COMPLIANCE",
       ObjectLockRetainUntilDate=until), "lock headers on plain bucket")

# Presigned SigV4 URLs: valid, expired.
url = admin.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "chunk"}, ExpiresIn=60)
assert urllib.request.urlopen(url).read() == b"third"
url = admin.generate_presigned_url("get_object", Params={"Bucket": "data", "Key": "chunk"}, ExpiresIn=1)
time.sleep(2)
try:
    urllib.request.urlopen(url)
    raise AssertionError("expired URL worked")
except urllib.error.HTTPError as e:
    assert e.code == 403, e.code
print("ALL OK")
"#;
