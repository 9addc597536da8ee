//! The `haven` command as scripts and people meet it, with the real binary on a
//! `file://` repository: argument errors that name what is wrong, the documented exit
//! codes (`docs/cli.md`), and the repository password from `HAVEN_PASSWORD_COMMAND`.

use std::process::Output;

use crate::support::{
    bed::Bed,
    haven::{PASSWORD, haven},
    image::{MIB, raw_image},
};

/// The exit codes of `docs/cli.md` these tests meet.
const USAGE: i32 = 2;
const PASSWORD_PROBLEM: i32 = 3;
const NOT_FOUND: i32 = 4;

/// A run's exit code and its standard error, which must be one `error: ` line.
fn failure(output: Output) -> (i32, String) {
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "succeeded: {stderr}");
    assert!(stderr.starts_with("error: "), "not an error line: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr}"
    );
    (output.status.code().expect("exited"), stderr)
}

/// A bed whose repository holds one snapshot of VM `web`.
fn bed_with_a_snapshot() -> Bed {
    let bed = Bed::new();
    bed.init();
    let image = bed.path("web.raw");
    raw_image(&image, 4 * MIB, &[(0, MIB as usize)]);
    bed.backup("web", &[&image]);
    bed
}

#[test]
fn argument_errors_name_every_missing_argument() {
    let cases: [(&[&str], &[&str]); 3] = [
        (&["restore", "web1@latest"], &["--to <", "--repo <"]),
        (&["backup", "image"], &["<PATHS>", "--vm <", "--repo <"]),
        (
            // As the README showed it, without the storage node's keys.
            &["dev", "--qmp-dir", "D", "--storage-dir", "D"],
            &["--storage-access-key <", "--storage-secret-key <"],
        ),
    ];
    for (args, named) in cases {
        let output = haven(args)
            .env_remove("HAVEN_STORAGE_ACCESS_KEY")
            .env_remove("HAVEN_STORAGE_SECRET_KEY")
            .output()
            .unwrap();
        let (code, stderr) = failure(output);
        assert_eq!(code, USAGE, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: the following required arguments were not provided: "),
            "{args:?}: {stderr}"
        );
        for name in named {
            assert!(
                stderr.contains(name),
                "{args:?} does not name {name}: {stderr}"
            );
        }
    }
}

#[test]
fn exit_codes_tell_wrong_password_not_found_and_usage_apart() {
    let bed = bed_with_a_snapshot();
    let wrong = bed
        .haven(&["snapshots"])
        .env("HAVEN_PASSWORD", "not the password")
        .output()
        .unwrap();
    let (code, stderr) = failure(wrong);
    assert_eq!(code, PASSWORD_PROBLEM, "{stderr}");
    assert!(stderr.contains("wrong password"), "{stderr}");

    let none = bed
        .haven(&["snapshots"])
        .env_remove("HAVEN_PASSWORD")
        .output()
        .unwrap();
    let (code, stderr) = failure(none);
    assert_eq!(code, PASSWORD_PROBLEM, "{stderr}");
    assert!(stderr.contains("no password"), "{stderr}");

    let out = bed.path("out.raw");
    let out = out.to_str().unwrap();
    for snapshot in ["db@latest", "web@2001-01-01T00:00:00Z"] {
        let (code, stderr) = failure(
            bed.haven(&["restore", snapshot, "--to", out])
                .output()
                .unwrap(),
        );
        assert_eq!(code, NOT_FOUND, "{snapshot}: {stderr}");
        assert!(
            stderr.contains(&format!("no snapshot {snapshot}")),
            "{snapshot}: {stderr}"
        );
    }
    let elsewhere = format!("file://{}", bed.path("no-repo").display());
    let (code, stderr) = failure(
        haven(&["snapshots", "--repo", &elsewhere])
            .env("HAVEN_PASSWORD", PASSWORD)
            .output()
            .unwrap(),
    );
    assert_eq!(code, NOT_FOUND, "{stderr}");

    // Usage: clap's own errors, and options the command refuses together.
    let (code, stderr) = failure(
        bed.haven(&["snapshots", "--no-such-flag"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, USAGE, "{stderr}");
    let (code, stderr) = failure(
        bed.haven(&["restore", "web@latest", "--to", out, "--only-changed"])
            .output()
            .unwrap(),
    );
    assert_eq!(code, USAGE, "{stderr}");
    assert!(!bed.path("out.raw").exists());
}

#[test]
fn the_password_can_come_from_a_command() {
    let bed = bed_with_a_snapshot();
    let with_command = |command: &str| {
        bed.haven(&["snapshots"])
            .env_remove("HAVEN_PASSWORD")
            .env("HAVEN_PASSWORD_COMMAND", command)
            .output()
            .unwrap()
    };
    // Its standard output less the trailing newline; what it writes on standard
    // error is not part of it.
    let output = with_command(&format!("echo 'fetching...' >&2; echo '{PASSWORD}'"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("web@"));
    assert!(String::from_utf8_lossy(&output.stderr).contains("fetching..."));

    // Only one newline goes: a password ending in a blank line is another password.
    let (code, stderr) = failure(with_command(&format!("printf '{PASSWORD}\\n\\n'")));
    assert_eq!(code, PASSWORD_PROBLEM, "{stderr}");
    assert!(stderr.contains("wrong password"), "{stderr}");

    let (code, stderr) = failure(with_command("exit 7"));
    assert_eq!(code, PASSWORD_PROBLEM, "{stderr}");
    assert!(
        stderr.contains("HAVEN_PASSWORD_COMMAND \"exit 7\" failed (exit status: 7)"),
        "{stderr}"
    );
    let (code, stderr) = failure(with_command("true"));
    assert_eq!(code, PASSWORD_PROBLEM, "{stderr}");
    assert!(stderr.contains("printed no password"), "{stderr}");

    // A password file and a command both given: refused, neither silently wins.
    let file = bed.path("password");
    std::fs::write(&file, PASSWORD).unwrap();
    let both = bed
        .haven(&["snapshots", "--password-file", file.to_str().unwrap()])
        .env("HAVEN_PASSWORD_COMMAND", format!("echo '{PASSWORD}'"))
        .output()
        .unwrap();
    let (code, stderr) = failure(both);
    assert_eq!(code, USAGE, "{stderr}");
}
