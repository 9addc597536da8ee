//! Least-privilege keys: an `append` key backs up and replicates but can neither
//! delete nor overwrite anything a real backup wrote (tried with awscli and boto3);
//! prune and gc need the `delete` key; legal holds and governance bypass need their
//! own grants; `--create-bucket` makes a locked bucket with a default retention.

use crate::support::{
    haven::{HavenClient, haven},
    image::{MIB, raw_image},
    process::{assert_success, ok},
    s3::S3Keys,
    storage_node::{Node, NodeOptions, fails_with, object_keys},
};

const APPEND: (&str, &str) = ("backup", "backup-secret-0123456789");
const DELETE: (&str, &str) = ("pruner", "pruner-secret-0123456789");

/// The keys every test here configures besides the fixture's own (which keeps the full
/// rights of a key without `access`, and creates buckets).
const KEYS: &str = "[[keys]]\naccess_key = \"backup\"\nsecret_key = \"backup-secret-0123456789\"\naccess = \"append\"\n\
     [[keys]]\naccess_key = \"pruner\"\nsecret_key = \"pruner-secret-0123456789\"\naccess = \"delete\"\n\
     [[keys]]\naccess_key = \"holder\"\nsecret_key = \"holder-secret-0123456789\"\naccess = \"append\"\nlegal_hold = true\n\
     [[keys]]\naccess_key = \"bypasser\"\nsecret_key = \"bypasser-secret-0123456789\"\naccess = \"delete\"\nbypass_governance = true\n";

fn keys((access, secret): (&str, &str)) -> S3Keys {
    S3Keys::new(access, secret)
}

fn object_bytes(node: &Node, key: &str) -> Vec<u8> {
    let target = node.path("download");
    node.aws_ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "haven",
        "--key",
        key,
        &target.display().to_string(),
    ]);
    std::fs::read(&target).expect("downloaded object")
}

/// A failed haven run whose last line is one `error: ` line saying `needle`.
fn fails_saying(output: std::process::Output, needle: &str) -> String {
    assert!(!output.status.success(), "succeeded but should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "no error line: {stderr}");
    assert!(last.contains(needle), "expected {needle:?} in: {last}");
    stderr
}

#[test]
fn an_append_key_backs_up_but_cannot_delete_or_overwrite_what_backups_wrote() {
    let node = Node::start_with_keys(KEYS);
    node.aws_ok(&["s3", "mb", "s3://haven"]);
    let url = format!("s3://haven/r?endpoint={}", node.endpoint());
    let append = HavenClient::on_node_as(&url, keys(APPEND));
    let delete = HavenClient::on_node_as(&url, keys(DELETE));
    append.ok(&["repo", "init"]);
    // Two versions sharing no chunk, so pruning the first leaves garbage for gc.
    let image = node.path("vm.raw");
    raw_image(&image, 4 * MIB, &[(0, 2 * MIB as usize)]);
    append.backup("vm", &[&image]);
    raw_image(&image, 4 * MIB, &[(1, 2 * MIB as usize)]);
    append.backup("vm", &[&image]);

    let targets: Vec<String> = ["r/chunks/", "r/indexes/", "r/snapshots/", "r/locks/"]
        .iter()
        .map(|prefix| {
            object_keys(&node, prefix)
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no object under {prefix}"))
        })
        .collect();
    let before: Vec<Vec<u8>> = targets.iter().map(|key| object_bytes(&node, key)).collect();
    std::fs::write(node.path("other"), b"not what haven wrote").expect("write");
    let other = node.path("other").display().to_string();
    let (access, secret) = APPEND;
    for key in &targets {
        let aws = |args: &[&str]| node.aws_as(access, secret, args);
        fails_with(
            aws(&["s3api", "delete-object", "--bucket", "haven", "--key", key]),
            "AccessDenied",
        );
        fails_with(
            aws(&[
                "s3api",
                "put-object",
                "--bucket",
                "haven",
                "--key",
                key,
                "--body",
                &other,
            ]),
            "AccessDenied",
        );
        fails_with(
            aws(&["s3", "cp", &other, &format!("s3://haven/{key}")]),
            "AccessDenied",
        );
        fails_with(
            aws(&["s3", "rm", &format!("s3://haven/{key}")]),
            "AccessDenied",
        );
    }
    let output = node
        .boto3(BOTO3_APPEND_KEY, &[&targets.join(",")])
        .env("KEY", access)
        .env("SECRET", secret)
        .output()
        .expect("python3 with boto3 must be installed");
    let stdout = ok(output, "boto3 with the append key");
    assert!(stdout.contains("ALL OK"), "{stdout}");
    for (key, bytes) in targets.iter().zip(&before) {
        assert_eq!(&object_bytes(&node, key), bytes, "{key} changed");
    }

    // The append key reads: a restore works.
    let restored = node.path("restored.raw");
    append.restore_same("vm@latest", &restored, &image);

    // Prune and gc delete, so they fail with the append key and nothing is removed.
    let snapshots = object_keys(&node, "r/snapshots/");
    assert_eq!(snapshots.len(), 2);
    fails_saying(append.run(&["prune", "--keep-last", "1"]), "append-only");
    assert_eq!(object_keys(&node, "r/snapshots/"), snapshots);
    delete.ok(&["prune", "--keep-last", "1"]);
    assert_eq!(object_keys(&node, "r/snapshots/").len(), 1);
    let chunks = object_keys(&node, "r/chunks/");
    fails_saying(append.run(&["gc", "--margin", "0s"]), "append-only");
    assert_eq!(object_keys(&node, "r/chunks/"), chunks);
    delete.ok(&["gc", "--margin", "0s"]);
    let remaining = object_keys(&node, "r/chunks/").len();
    assert!(
        remaining < chunks.len(),
        "gc with the delete key removed nothing ({remaining} of {})",
        chunks.len()
    );
    // The collection removed the records of every released lease, its own too.
    assert_eq!(object_keys(&node, "r/locks/"), Vec::<String>::new());
    let restored = node.path("restored-after-gc.raw");
    append.restore_same("vm@latest", &restored, &image);
}

#[test]
fn replication_works_with_append_keys_at_both_sites() {
    let primary = Node::start_with_keys(KEYS);
    let secondary = Node::start_with_keys(KEYS);
    primary.aws_ok(&["s3", "mb", "s3://haven"]);
    secondary.aws_ok(&["s3", "mb", "s3://haven"]);
    let from = format!("s3://haven/r?endpoint={}", primary.endpoint());
    let to = format!("s3://haven/r?endpoint={}", secondary.endpoint());
    let append = HavenClient::on_node_as(&from, keys(APPEND));
    append.ok(&["repo", "init"]);
    let image = primary.path("vm.raw");
    let replicate = || {
        let mut command = haven(&["replicate", "--from", &from, "--to", &to, "--json"]);
        crate::support::s3::with_keys(&mut command, &keys(APPEND));
        command
            .env("HAVEN_SECONDARY_AWS_ACCESS_KEY_ID", APPEND.0)
            .env("HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY", APPEND.1);
        let output = command.output().expect("run haven replicate");
        assert_success(&output, "replicate with append keys");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("report")
    };
    for (round, offset) in [(1, 0), (2, 1)] {
        raw_image(&image, 4 * MIB, &[(offset, 2 * MIB as usize)]);
        append.backup("vm", &[&image]);
        let report = replicate();
        assert_eq!(report["manifests_copied"], 1, "round {round}: {report}");
    }
    let at_secondary = HavenClient::on_node_as(&to, keys(APPEND));
    let restored = primary.path("restored.raw");
    at_secondary.restore_same("vm@latest", &restored, &image);
}

#[test]
fn legal_holds_and_governance_bypass_need_their_own_grants() {
    let node = Node::start_with(NodeOptions {
        extra_keys: KEYS.to_owned(),
        args: [
            "--create-bucket",
            "locked",
            "--object-lock",
            "--default-retention",
            "GOVERNANCE:1d",
        ]
        .map(str::to_owned)
        .to_vec(),
        ..NodeOptions::default()
    });
    let output = node
        .boto3(BOTO3_GRANTS, &[])
        .output()
        .expect("python3 with boto3 must be installed");
    let stdout = ok(output, "boto3 grants");
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

#[test]
fn create_bucket_refuses_a_retention_without_object_lock_and_an_unlocked_existing_bucket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let run = |extra: &[&str]| -> std::process::Output {
        let mut command = haven(&[
            "storage-node",
            "--listen",
            "127.0.0.1:0",
            "--data",
            &data,
            "--access-key",
            "k",
            "--secret-key",
            "s",
            "--check-config",
        ]);
        command
            .args(extra)
            .output()
            .expect("run haven storage-node")
    };
    let output = run(&[
        "--create-bucket",
        "b",
        "--default-retention",
        "GOVERNANCE:1d",
    ]);
    assert!(
        !output.status.success(),
        "a retention without --object-lock was accepted"
    );
    let output = run(&[
        "--create-bucket",
        "b",
        "--object-lock",
        "--default-retention",
        "GOVERNANCE:1w",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("GOVERNANCE:DAYSd"),
        "{stderr}"
    );
    // A bucket made without Object Lock cannot get it at the next start.
    let mut node = Node::start_with(NodeOptions {
        args: vec!["--create-bucket".to_owned(), "plain".to_owned()],
        ..NodeOptions::default()
    });
    node.aws_ok(&["s3api", "head-bucket", "--bucket", "plain"]);
    node.kill9();
    let output = haven(&["storage-node", "--config"])
        .arg(node.path("storage.toml"))
        .args(["--create-bucket", "plain", "--object-lock"])
        .output()
        .expect("run haven storage-node");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("exists without Object Lock"),
        "{stderr}"
    );
}

/// Tries every way boto3 has to delete or replace the objects named in `argv[2]` with
/// the append key of `KEY`/`SECRET`; each must be refused with AccessDenied.
const BOTO3_APPEND_KEY: &str = r#"
keys = sys.argv[2].split(",")
for key in keys:
    denied(lambda: s3.delete_object(Bucket="haven", Key=key), "delete " + key)
    denied(lambda: s3.put_object(Bucket="haven", Key=key, Body=b"x"), "put " + key)
    source = keys[0] if key != keys[0] else keys[1]
    denied(lambda: s3.copy_object(Bucket="haven", Key=key, CopySource={"Bucket": "haven", "Key": source}), "copy onto " + key)
    denied(lambda: s3.delete_objects(Bucket="haven", Delete={"Objects": [{"Key": key}]}), "delete_objects " + key)
    upload = s3.create_multipart_upload(Bucket="haven", Key=key)["UploadId"]
    part = s3.upload_part(Bucket="haven", Key=key, UploadId=upload, PartNumber=1, Body=b"x")
    denied(lambda: s3.complete_multipart_upload(Bucket="haven", Key=key, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}), "multipart onto " + key)
    s3.abort_multipart_upload(Bucket="haven", Key=key, UploadId=upload)
# Creating is what the key is for, and the create-only conditions keep their meaning.
s3.put_object(Bucket="haven", Key="scratch/new-object", Body=b"new")
try:
    s3.put_object(Bucket="haven", Key="scratch/new-object", Body=b"again", IfNoneMatch="*")
    raise AssertionError("If-None-Match: * overwrote")
except ClientError as e:
    assert e.response["Error"]["Code"] == "PreconditionFailed", e.response["Error"]["Code"]
s3.copy_object(Bucket="haven", Key="scratch/new-copy", CopySource={"Bucket": "haven", "Key": "scratch/new-object"})
denied(lambda: s3.create_bucket(Bucket="another"), "create bucket")
print("ALL OK")
"#;

/// Legal hold and governance bypass with and without their grants, in bucket `locked`
/// made by `--create-bucket locked --object-lock --default-retention GOVERNANCE:1d`.
const BOTO3_GRANTS: &str = r#"
def of(key):
    return client(key, key + "-secret-0123456789")
backup, holder, pruner, bypasser = of("backup"), of("holder"), of("pruner"), of("bypasser")
rule = backup.get_object_lock_configuration(Bucket="locked")["ObjectLockConfiguration"]
assert rule["ObjectLockEnabled"] == "Enabled", rule
assert rule["Rule"]["DefaultRetention"] == {"Mode": "GOVERNANCE", "Days": 1}, rule
backup.put_object(Bucket="locked", Key="o", Body=b"kept")
assert backup.head_object(Bucket="locked", Key="o")["ObjectLockMode"] == "GOVERNANCE"
# Legal hold: only with the grant.
on, off = {"Status": "ON"}, {"Status": "OFF"}
denied(lambda: backup.put_object_legal_hold(Bucket="locked", Key="o", LegalHold=on), "legal hold without grant")
denied(lambda: bypasser.put_object_legal_hold(Bucket="locked", Key="o", LegalHold=on), "legal hold by a delete key")
denied(lambda: backup.put_object(Bucket="locked", Key="held", Body=b"x", ObjectLockLegalHoldStatus="ON"), "new object on hold without grant")
holder.put_object_legal_hold(Bucket="locked", Key="o", LegalHold=on)
assert backup.get_object_legal_hold(Bucket="locked", Key="o")["LegalHold"]["Status"] == "ON"
denied(lambda: bypasser.delete_object(Bucket="locked", Key="o", BypassGovernanceRetention=True), "delete under legal hold")
holder.put_object_legal_hold(Bucket="locked", Key="o", LegalHold=off)
holder.put_object(Bucket="locked", Key="held", Body=b"x", ObjectLockLegalHoldStatus="ON")
# Governance bypass: only with the grant.
denied(lambda: pruner.delete_object(Bucket="locked", Key="o"), "delete under governance")
denied(lambda: pruner.delete_object(Bucket="locked", Key="o", BypassGovernanceRetention=True), "bypass without grant")
denied(lambda: backup.delete_object(Bucket="locked", Key="o", BypassGovernanceRetention=True), "bypass by an append key")
assert backup.head_object(Bucket="locked", Key="o")["ContentLength"] == 4
bypasser.delete_object(Bucket="locked", Key="o", BypassGovernanceRetention=True)
try:
    backup.head_object(Bucket="locked", Key="o")
    raise AssertionError("deleted object still there")
except ClientError as e:
    assert e.response["Error"]["Code"] in ("404", "NoSuchKey"), e.response["Error"]
# Retention and bucket configuration belong to admin keys.
denied(lambda: bypasser.put_object_retention(Bucket="locked", Key="held", BypassGovernanceRetention=True,
        Retention={"Mode": "GOVERNANCE", "RetainUntilDate": "2030-01-01T00:00:00Z"}), "retention by a delete key")
denied(lambda: pruner.put_object_lock_configuration(Bucket="locked",
        ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}}}), "lock configuration by a delete key")
denied(lambda: pruner.delete_bucket(Bucket="locked"), "delete bucket by a delete key")
print("ALL OK")
"#;
