//! Haven's TOML files, parsed so that every error names `FILE:LINE`.
//!
//! An operator who gets "invalid type: string, expected u32" from a 200-line policy file
//! has to hunt for it; the same message with `policy.toml:57:` in front does not. Every
//! configuration file Haven reads goes through [`parse`], and checks made after parsing
//! point at lines with [`line_of`]. [`expand_env`] lets one file serve processes that
//! differ only by a name (every pod of a StatefulSet, every node of a DaemonSet).

#![warn(missing_docs)]

use serde::de::DeserializeOwned;

/// Parses `text` (the contents of `file_name`) into `T`; the error is one line,
/// `FILE:LINE: reason`.
pub fn parse<T: DeserializeOwned>(file_name: &str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|error| {
        let line = error.span().map_or(1, |span| line_of(text, span.start));
        format!("{file_name}:{line}: {}", error.message().trim())
    })
}

/// Reads and parses the TOML file at `path` into `T`: the one way Haven reads its small
/// files of secrets (storage keys, vSphere credentials) as well as its configurations.
/// Errors are one line naming the file (`FILE:LINE: reason`, or why it cannot be read)
/// without the excerpt of the file's text toml's own messages carry.
pub fn read_file<T: DeserializeOwned>(path: &std::path::Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    parse(&path.display().to_string(), &text)
}

/// The 1-based line of byte `offset` in `text` (offsets past the end count as the last
/// line), for errors found after parsing through a `toml::Spanned` value.
pub fn line_of(text: &str, offset: usize) -> usize {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].matches('\n').count() + 1
}

/// Parses a duration as operators write it in files and flags: `90` or `90s`, `15m`,
/// `2h`, `1d` (one place, so `--timeout 5m` and `timeout = "5m"` mean the same).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 15m, 1h or 2d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("unknown unit {unit:?} (use s, m, h or d)")),
    };
    Ok(std::time::Duration::from_secs(
        number.saturating_mul(seconds),
    ))
}

/// Replaces every `${NAME}` in `text`, comments included, with the environment variable
/// `NAME` (the `--expand-env` of the daemons); `$${` stands for a literal `${`, and a `$`
/// not followed by `{NAME}` stays as it is.
///
/// A variable that is not set is an error at its line, never an empty string: an empty
/// id would only fail later and further from the cause. A value holding a quote (either
/// kind), a backslash or a control character is refused too, because it would change
/// the structure of the TOML string it lands in.
pub fn expand_env(file_name: &str, text: &str) -> Result<String, String> {
    expand_with(file_name, text, |name| std::env::var(name).ok())
}

fn expand_with(
    file_name: &str,
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut expanded = String::with_capacity(text.len());
    let mut done = 0;
    while let Some(found) = text[done..].find("${") {
        let start = done + found;
        if start > done && text.as_bytes()[start - 1] == b'$' {
            // `$${`: a literal `${`.
            expanded.push_str(&text[done..start - 1]);
            expanded.push_str("${");
            done = start + 2;
            continue;
        }
        let after = &text[start + 2..];
        let name = after
            .find('}')
            .map(|end| &after[..end])
            .filter(|name| is_variable_name(name));
        let Some(name) = name else {
            expanded.push_str(&text[done..start + 2]);
            done = start + 2;
            continue;
        };
        let at = || format!("{file_name}:{}", line_of(text, start));
        let value = lookup(name)
            .ok_or_else(|| format!("{}: environment variable {name} is not set", at()))?;
        if value
            .chars()
            .any(|c| matches!(c, '"' | '\'' | '\\') || c.is_control())
        {
            return Err(format!(
                "{}: the value of {name} holds a quote, backslash or control character",
                at()
            ));
        }
        expanded.push_str(&text[done..start]);
        expanded.push_str(&value);
        done = start + 2 + name.len() + 1;
    }
    expanded.push_str(&text[done..]);
    Ok(expanded)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        count: u32,
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let error = parse::<Sample>("x.toml", "# comment\n\ncount = \"three\"\n").unwrap_err();
        assert!(error.starts_with("x.toml:3: "), "{error}");
        assert!(parse::<Sample>("x.toml", "count = 3").is_ok());
    }

    #[test]
    fn files_are_read_with_their_path_in_errors() {
        let dir = std::env::temp_dir().join(format!("haven-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "count = 3\n").unwrap();
        assert_eq!(read_file::<Sample>(&good).unwrap().count, 3);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "\ncount = -1\n").unwrap();
        let error = read_file::<Sample>(&bad).unwrap_err();
        assert!(
            error.starts_with(&format!("{}:2: ", bad.display())),
            "{error}"
        );
        let missing = dir.join("missing.toml");
        let error = read_file::<Sample>(&missing).unwrap_err();
        assert!(
            error.starts_with(&format!("cannot read {}", missing.display())),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_are_counted_from_one_and_clamped() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
        // Inside a multi-byte character: the line it is on.
        assert_eq!(line_of("é\né", 4), 2);
    }

    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn variables_are_expanded_and_missing_ones_are_errors() {
        let lookup = |name: &str| match name {
            "POD_NAME" => Some("coordinator-1".to_string()),
            "EMPTY" => Some(String::new()),
            "QUOTE" => Some("a\"b".to_string()),
            "APOSTROPHE" => Some("a'b".to_string()),
            _ => None,
        };
        let text = "id = \"${POD_NAME}\"\nurl = \"http://${POD_NAME}.svc:7700\"\n";
        assert_eq!(
            expand_with("c.toml", text, lookup).unwrap(),
            "id = \"coordinator-1\"\nurl = \"http://coordinator-1.svc:7700\"\n"
        );
        // Not a variable reference: left alone.
        let plain = "a = \"$HOME ${ } ${1X} ${unclosed\"";
        assert_eq!(expand_with("c.toml", plain, lookup).unwrap(), plain);
        assert_eq!(expand_with("c.toml", "${EMPTY}x", lookup).unwrap(), "x");
        let error = expand_with("c.toml", "a = 1\nid = \"${NODE_NAME}\"", lookup).unwrap_err();
        assert_eq!(error, "c.toml:2: environment variable NODE_NAME is not set");
        let error = expand_with("c.toml", "id = \"${QUOTE}\"", lookup).unwrap_err();
        assert!(error.starts_with("c.toml:1: the value of QUOTE"), "{error}");
        assert!(expand_with("c.toml", "id = '${APOSTROPHE}'", lookup).is_err());
        assert_eq!(
            expand_with("c.toml", "a = \"$${POD_NAME} ${POD_NAME}\"", lookup).unwrap(),
            "a = \"${POD_NAME} coordinator-1\""
        );
    }
}
