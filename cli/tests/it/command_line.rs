//! The `haven` command as scripts and people meet it, with the real binary on a
//! `file://` repository: argument errors that name what is wrong, the documented exit
//! codes (`docs/cli.md`), the repository password from `HAVEN_PASSWORD_COMMAND`,
//! shell completions and manual pages checked with real bash and groff, and the JSON
//! progress lines of long commands.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::support::{
    bed::Bed,
    haven::{PASSWORD, haven},
    image::MIB,
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
    let bed = Bed::initialised();
    let image = bed.raw_image("web.raw", 4 * MIB, &[(0, MIB as usize)]);
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

/// Every line of a `--json` long command's standard error as a JSON object, but for a
/// final `error: ` line, which it returns apart.
fn progress_lines(stderr: &[u8]) -> (Vec<serde_json::Value>, Option<String>) {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<&str> = text.lines().collect();
    let error = lines
        .last()
        .filter(|line| line.starts_with("error: "))
        .map(|line| line.to_string());
    if error.is_some() {
        lines.pop();
    }
    let objects = lines
        .iter()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {line:?}\n{text}"))
        })
        .collect();
    (objects, error)
}

/// Checks the shape of every line and that only the last is the summary; returns it.
fn summary_of(command: &str, lines: &[serde_json::Value]) -> serde_json::Value {
    let (summary, progress) = lines.split_last().expect("no progress line at all");
    assert!(!progress.is_empty(), "no progress line before the summary");
    for line in lines {
        assert_eq!(line["command"], command, "{line}");
        for number in [
            "bytes_done",
            "bytes_total",
            "bytes_per_second",
            "elapsed_seconds",
        ] {
            assert!(line[number].is_number(), "no {number}: {line}");
        }
        assert!(line["phase"].is_string(), "{line}");
    }
    assert!(progress.iter().all(|line| line["type"] == "progress"));
    assert_eq!(summary["type"], "summary", "{summary}");
    summary.clone()
}

#[test]
fn json_progress_lines_on_stderr_end_with_a_summary() {
    let bed = Bed::initialised();
    let image = bed.raw_image("web.raw", 8 * MIB, &[(0, 3 * MIB as usize)]);
    let backup = bed.backup_output("web", &[&image]);
    assert!(backup.status.success(), "{backup:?}");
    // Standard output stays the one result document.
    let report: serde_json::Value = serde_json::from_slice(&backup.stdout).unwrap();
    assert!(report["snapshot"].is_string());
    let (lines, error) = progress_lines(&backup.stderr);
    assert_eq!(error, None);
    let summary = summary_of("backup", &lines);
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["phase"], "done");
    assert_eq!(summary["bytes_total"], 8 * MIB, "{summary}");
    assert_eq!(summary["bytes_done"], summary["bytes_total"], "{summary}");

    let restored = bed.path("restored.raw");
    let restore = |extra: &[&str]| {
        let mut args = vec!["restore", "web@latest", "--to", restored.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.push("--json");
        bed.haven(&args).output().unwrap()
    };
    let output = restore(&[]);
    assert!(output.status.success(), "{output:?}");
    let summary = summary_of("restore", &progress_lines(&output.stderr).0);
    assert_eq!(summary["ok"], true);
    assert!(summary["bytes_done"].as_u64().unwrap() > 0, "{summary}");

    let output = bed.haven(&["verify", "--json"]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let lines = progress_lines(&output.stderr).0;
    assert!(lines.iter().any(|l| l["phase"] == "verify"), "{lines:#?}");
    assert_eq!(summary_of("verify", &lines)["ok"], true);

    // A failure: the summary says so, and the error line follows it.
    let output = restore(&[]);
    let (lines, error) = progress_lines(&output.stderr);
    assert!(error.unwrap().contains("exists"), "{output:?}");
    let summary = summary_of("restore", &lines);
    assert_eq!(
        (summary["ok"].clone(), summary["phase"].clone()),
        (false.into(), "failed".into())
    );
}
