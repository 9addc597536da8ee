//! The `haven` command as scripts and people meet it, with the real binary on a
//! `file://` repository: argument errors that name what is wrong, the documented exit
//! codes (`docs/cli.md`), the repository password from `HAVEN_PASSWORD_COMMAND`, and
//! shell completions and manual pages checked with real bash and groff.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::{
    bed::Bed,
    haven::{PASSWORD, haven},
    image::{MIB, raw_image},
    process::ok,
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
            // An admin key without its secret (`haven dev` makes both when neither is given).
            &["dev", "--storage-dir", "D", "--storage-access-key", "K"],
            &["--storage-secret-key <"],
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

#[test]
fn bash_completes_subcommands_from_the_generated_script() {
    let script = ok(
        haven(&["completions", "bash"]).output().unwrap(),
        "completions",
    );
    assert!(script.contains("complete -F _haven"), "{script}");
    // Load it into a real bash and ask it to complete `haven rest` and `haven backup i`.
    let completion = |words: &str| {
        let probe = format!(
            "source /dev/stdin\nCOMP_WORDS=({words}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             COMP_LINE=\"{words}\"; COMP_POINT=${{#COMP_LINE}}\n\
             _haven haven \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let mut bash = Command::new("bash")
            .args(["-c", &probe])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        bash.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let output = bash.wait_with_output().unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(completion("haven rest").trim(), "restore");
    assert_eq!(completion("haven backup i").trim(), "image");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let script = ok(haven(&["completions", shell]).output().unwrap(), shell);
        assert!(script.contains("restore"), "{shell}: {script}");
    }
}

#[test]
fn man_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    ok(
        haven(&["man", "--dir", pages.to_str().unwrap()])
            .output()
            .unwrap(),
        "man",
    );
    // Every command `haven --help` lists, and nested ones, has its page.
    let help = ok(haven(&["--help"]).output().unwrap(), "--help");
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(commands.len() > 20, "{help}");
    for name in commands.iter().map(|c| format!("haven-{c}.1")).chain([
        "haven.1".to_string(),
        "haven-backup-image.1".to_string(),
        "haven-job-run.1".to_string(),
    ]) {
        assert!(pages.join(&name).is_file(), "no page {name}");
    }
    // A page is valid roff that man's formatter renders with the command's options.
    let rendered = ok(
        Command::new("groff")
            .args(["-man", "-Tutf8", "-P", "-c"])
            .arg(pages.join("haven-restore.1"))
            .output()
            .unwrap(),
        "groff",
    );
    assert!(rendered.contains("haven-restore"), "{rendered}");
    assert!(rendered.contains("--to"), "{rendered}");
}
