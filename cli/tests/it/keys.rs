//! `haven key list|add|remove|passwd` on a `file://` repository, with real `haven`
//! processes: which passwords open the repository after each change, that snapshots
//! made before stay restorable byte-identical, and that a planted weak key file is
//! refused by name.

use std::process::Output;

use crate::support::{
    bed::Bed,
    haven::PASSWORD,
    image::{MIB, assert_same_disk},
    process::ok,
    report::entry,
};

const SECOND: &str = "second password, added";
const THIRD: &str = "third password, from passwd";

/// `haven ARGS` against the bed's repository with `password` as the current one.
fn with_password(bed: &Bed, password: &str, args: &[&str]) -> Output {
    bed.haven(args)
        .env("HAVEN_PASSWORD", password)
        .output()
        .expect("run haven")
}

/// Stdout of a run that must succeed.
fn ok_with(bed: &Bed, password: &str, args: &[&str]) -> String {
    ok(with_password(bed, password, args), args)
}

/// Stderr of a run that must fail.
fn fails_with(bed: &Bed, password: &str, args: &[&str]) -> String {
    let output = with_password(bed, password, args);
    assert!(!output.status.success(), "haven {args:?} succeeded");
    String::from_utf8(output.stderr).unwrap()
}

fn json_with(bed: &Bed, password: &str, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = ok_with(bed, password, &args);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Whether `password` opens the repository (listing snapshots needs the key).
fn opens(bed: &Bed, password: &str) -> bool {
    let output = with_password(bed, password, &["snapshots"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || stderr.contains("wrong password"),
        "{stderr}"
    );
    output.status.success()
}

fn slot_ids(list: &serde_json::Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|slot| slot["id"].as_str().unwrap().to_string())
        .collect()
}

fn current(list: &serde_json::Value) -> String {
    let current: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|slot| slot["current"] == true)
        .collect();
    assert_eq!(current.len(), 1, "{list}");
    current[0]["id"].as_str().unwrap().to_string()
}

#[test]
fn add_remove_and_passwd_change_which_passwords_open_and_keep_every_snapshot() {
    let bed = Bed::initialised();
    let disk = bed.raw_image(
        "disk.raw",
        8 * MIB,
        &[(0, 3 * MIB as usize), (6 * MIB, 100_000)],
    );
    bed.backup("vm1", &[&disk]);

    // One slot, labelled, at Haven's cost, opened by the password.
    let list = bed.json(&["key", "list"]);
    let first = current(&list);
    assert_eq!(slot_ids(&list), std::slice::from_ref(&first));
    let slot = &list[0];
    assert_eq!(slot["memory_kib"].as_u64(), Some(64 * 1024), "{list}");
    assert_eq!(slot["iterations"].as_u64(), Some(3), "{list}");
    assert!(
        slot["label"]["created"].as_str().unwrap().ends_with('Z'),
        "{list}"
    );
    assert!(slot["refused"].is_null(), "{list}");

    // add: both passwords open; the new one opens its own slot.
    let added = bed
        .haven(&["key", "add", "--json"])
        .env("HAVEN_NEW_PASSWORD", SECOND)
        .output()
        .unwrap();
    let added: serde_json::Value = serde_json::from_str(&ok(added, "key add")).unwrap();
    let second = added["added"].as_str().unwrap().to_string();
    assert!(opens(&bed, PASSWORD) && opens(&bed, SECOND));
    let list = json_with(&bed, SECOND, &["key", "list"]);
    assert_eq!(current(&list), second);
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(slot_ids(&list), both);
    let text = ok_with(&bed, SECOND, &["key", "list"]);
    assert!(
        text.lines()
            .any(|line| line.starts_with("* ") && line.contains(&second)),
        "{text}"
    );

    // remove: not the slot in use without --force; the other one, by prefix.
    let error = fails_with(&bed, SECOND, &["key", "remove", &second]);
    assert!(error.contains("--force"), "{error}");
    let removed = json_with(&bed, SECOND, &["key", "remove", &first[..8]]);
    assert_eq!(removed["removed"].as_str(), Some(first.as_str()));
    assert!(!opens(&bed, PASSWORD), "the removed password still opens");
    assert!(opens(&bed, SECOND));
    let error = fails_with(&bed, SECOND, &["key", "remove", &second, "--force"]);
    assert!(error.contains("last usable key"), "{error}");
    let error = fails_with(&bed, PASSWORD, &["key", "list"]);
    assert!(error.contains("wrong password"), "{error}");

    // passwd, the new password from a file: the old one fails, the new one works.
    let file = bed.path("new-password");
    std::fs::write(&file, format!("{THIRD}\n")).unwrap();
    let change = json_with(
        &bed,
        SECOND,
        &[
            "key",
            "passwd",
            "--new-password-file",
            file.to_str().unwrap(),
        ],
    );
    assert_eq!(change["removed"].as_str(), Some(second.as_str()));
    assert!(!opens(&bed, SECOND), "the old password still opens");
    assert!(opens(&bed, THIRD));
    let list = json_with(&bed, THIRD, &["key", "list"]);
    assert_eq!(slot_ids(&list), [change["added"].as_str().unwrap()]);

    // The snapshot made under the first password restores byte-identical.
    let out = bed.path("restored.raw");
    ok_with(
        &bed,
        THIRD,
        &["restore", "vm1@latest", "--to", out.to_str().unwrap()],
    );
    assert_same_disk(&disk, &out);
    // And backups go on under the new password.
    ok_with(
        &bed,
        THIRD,
        &["backup", "image", disk.to_str().unwrap(), "--vm", "vm1"],
    );
    let error = fails_with(&bed, THIRD, &["key", "add"]);
    assert!(error.contains("HAVEN_NEW_PASSWORD"), "{error}");
}

#[test]
fn a_planted_weak_key_file_is_refused_by_name() {
    let bed = Bed::initialised();
    let planted = "00112233445566778899aabbccddeeff";
    let weak = serde_json::json!({
        "version": 1,
        "kdf": {"algorithm": "argon2id", "memory_kib": 8, "iterations": 1,
                "parallelism": 1, "salt": "000102030405060708090a0b0c0d0e0f"},
        "nonce": "000000000000000000000000",
        "wrapped_key": "00".repeat(48),
    });
    std::fs::write(
        bed.repo_dir().join("keys").join(planted),
        serde_json::to_vec(&weak).unwrap(),
    )
    .unwrap();

    // The real password still opens; the list shows the planted slot refused.
    assert!(opens(&bed, PASSWORD));
    let list = bed.json(&["key", "list"]);
    let slot = entry(&list, "id", planted);
    assert!(
        slot["refused"]
            .as_str()
            .unwrap()
            .contains("below the minimum"),
        "{list}"
    );
    // A password no good slot opens is told about the weak one, by name.
    let error = fails_with(&bed, "a guess", &["snapshots"]);
    assert!(
        error.contains(&format!(
            "key slot {planted} uses Argon2id with 8 KiB memory"
        )) && error.contains("planted"),
        "{error}"
    );
    assert_eq!(error.trim_end().lines().count(), 1, "{error}");
    // It never counts as a key left, and can be removed.
    let error = fails_with(
        &bed,
        PASSWORD,
        &["key", "remove", &current(&list), "--force"],
    );
    assert!(error.contains("last usable key"), "{error}");
    bed.ok(&["key", "remove", planted]);
    let error = fails_with(&bed, "a guess", &["snapshots"]);
    assert!(error.contains("wrong password"), "{error}");
}
