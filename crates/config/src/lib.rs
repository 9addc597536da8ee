//! Haven's TOML files, parsed so that every error names `FILE:LINE`.
//!
//! An operator who gets "invalid type: string, expected u32" from a 200-line policy file
//! has to hunt for it; the same message with `policy.toml:57:` in front does not. Every
//! configuration file Haven reads goes through [`parse`], and checks made after parsing
//! point at lines with [`line_of`].

use serde::de::DeserializeOwned;

/// Parses `text` (the contents of `file_name`) into `T`; the error is one line,
/// `FILE:LINE: reason`.
pub fn parse<T: DeserializeOwned>(file_name: &str, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|error| {
        let line = error.span().map_or(1, |span| line_of(text, span.start));
        format!("{file_name}:{line}: {}", error.message().trim())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        count: u32,
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let error = parse::<Sample>("x.toml", "# comment\n\ncount = \"three\"\n").unwrap_err();
        assert!(error.starts_with("x.toml:3: "), "{error}");
        assert!(parse::<Sample>("x.toml", "count = 3").is_ok());
    }

    #[test]
    fn lines_are_counted_from_one_and_clamped() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 99), 3);
        // Inside a multi-byte character: the line it is on.
        assert_eq!(line_of("é\né", 4), 2);
    }
}
