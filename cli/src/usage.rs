//! Argument errors as one `error:` line that names what is wrong.
//!
//! clap writes a missing argument as a header line, the arguments one per indented
//! line, a blank line, then usage and a pointer to `--help`. Keeping only the first
//! line (as `haven` once did) printed "the following required arguments were not
//! provided:" and no argument at all. Here the message and its indented lines become
//! one line, and clap's tips ("a similar subcommand exists") follow it.

use std::process::ExitCode;

use crate::exit::Exit;

/// Prints help and version as clap does; any other parse error as one line, with the
/// usage exit code.
pub fn report(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match error.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => error.exit(),
        _ => {
            eprintln!("error: {}", one_line(&error.to_string()));
            Exit::Usage.into()
        }
    }
}

/// clap's rendered error as one line: the message with the items listed under it
/// (comma-separated), then its tips; usage and the `--help` pointer are left out.
fn one_line(rendered: &str) -> String {
    let mut message = String::new();
    let mut tips = Vec::new();
    for paragraph in rendered.split("\n\n") {
        let lines: Vec<&str> = paragraph
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let Some((first, rest)) = lines.split_first() else {
            continue;
        };
        if first.starts_with("Usage:") || first.starts_with("For more information") {
            continue;
        }
        if first.starts_with("tip:") {
            tips.extend(lines);
            continue;
        }
        if message.is_empty() {
            message = first.trim_start_matches("error: ").to_string();
            if !rest.is_empty() {
                message.push(' ');
                message.push_str(&rest.join(", "));
            }
        }
    }
    for tip in tips {
        message.push_str("; ");
        message.push_str(tip);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The one line `haven ARGS` prints for its argument error.
    fn error_line(args: &[&str]) -> String {
        let mut argv = vec!["haven"];
        argv.extend_from_slice(args);
        match crate::Cli::try_parse_from(argv) {
            Ok(_) => panic!("{args:?} parsed"),
            Err(error) => one_line(&error.to_string()),
        }
    }

    #[test]
    fn missing_arguments_are_named() {
        let line = error_line(&["restore", "web1@latest"]);
        assert!(
            line.starts_with("the following required arguments were not provided: "),
            "{line}"
        );
        assert!(line.contains("--to <"), "{line}");
        let line = error_line(&["backup", "image"]);
        assert!(line.contains("<PATHS>"), "{line}");
        assert!(line.contains("--vm <"), "{line}");
        // `haven dev` makes its own storage keys; a key given without its secret is
        // named.
        let line = error_line(&["dev", "--storage-dir", "D", "--storage-access-key", "K"]);
        assert!(line.contains("--storage-secret-key <"), "{line}");
        assert!(!line.contains('\n') && !line.contains("Usage"), "{line}");
    }

    #[test]
    fn tips_follow_the_message() {
        let line = error_line(&["restre"]);
        assert!(
            line.starts_with("unrecognized subcommand 'restre'; tip: "),
            "{line}"
        );
        assert!(line.contains("'restore'"), "{line}");
    }
}
