//! Writing HTML safely: every piece of text that is not a literal of this crate goes
//! through [`Esc`] (element content and quoted attribute values) or [`Segment`] (a
//! path segment of a link); VM names, job errors and audit details are external
//! input. Also the few formats every page shares (sizes, ages, times).

use std::fmt::{self, Display, Write};

/// Text escaped for HTML element content and double- or single-quoted attributes.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        while let Some(index) = rest.find(['&', '<', '>', '"', '\'']) {
            f.write_str(&rest[..index])?;
            f.write_str(match rest.as_bytes()[index] {
                b'&' => "&amp;",
                b'<' => "&lt;",
                b'>' => "&gt;",
                b'"' => "&quot;",
                _ => "&#39;",
            })?;
            rest = &rest[index + 1..];
        }
        f.write_str(rest)
    }
}

/// Text percent-encoded as one URL path segment or query value: everything but
/// unreserved characters (RFC 3986) is encoded, so a name can neither add a segment
/// nor leave the attribute it is written in.
pub struct Segment<'a>(pub &'a str);

impl Display for Segment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                f.write_char(char::from(byte))?;
            } else {
                write!(f, "%{byte:02X}")?;
            }
        }
        Ok(())
    }
}

/// A percent-encoded path segment or form value decoded (`+` is a space when
/// `plus_is_space`, as in forms); `None` when it is not valid UTF-8 once decoded or
/// holds a malformed escape.
pub fn decode(text: &str, plus_is_space: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = text.get(index + 1..index + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The value of `name` in an `application/x-www-form-urlencoded` body or a query
/// string, decoded.
pub fn form_value(form: &str, name: &str) -> Option<String> {
    form.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| decode(value, true))
}

/// A byte count for people: `1.5 GiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration for people, two units at most: `3 d 4 h`, `12 min 5 s`.
pub fn duration(seconds: u64) -> String {
    let (days, hours) = (seconds / 86_400, seconds % 86_400 / 3600);
    let (minutes, secs) = (seconds % 3600 / 60, seconds % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, _) => format!("{minutes} min {secs} s"),
        (0, _, _) => format!("{hours} h {minutes} min"),
        _ => format!("{days} d {hours} h"),
    }
}

/// Unix milliseconds as UTC time to the second (`2026-12-06 10:00:00Z`); `–` for 0.
pub fn time(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "–".to_owned();
    }
    let seconds = i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]Z"
            ))
            .ok()
        })
        .unwrap_or_else(|| unix_ms.to_string())
}

/// `text` quoted for a POSIX shell, for commands shown to be copied: single quotes
/// unless every character is safe bare.
pub fn shell_quote(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~/:@=+,%".contains(&b));
    if bare {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_cannot_leave_content_or_attributes() {
        let hostile = r#"<script>alert("x")</script>' onmouseover='y' &amp;"#;
        let escaped = Esc(hostile).to_string();
        assert_eq!(
            escaped,
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&#39; onmouseover=&#39;y&#39; &amp;amp;"
        );
        assert!(!escaped.contains(['<', '>', '"', '\'']));
        assert_eq!(Esc("web-1.example").to_string(), "web-1.example");
    }

    #[test]
    fn segments_round_trip_and_hold_no_separator() {
        for name in ["web-1", "a b/c?d#e&f", "é<\"'>", "%2F"] {
            let encoded = Segment(name).to_string();
            assert!(
                !encoded.contains(['/', '?', '#', '&', '"', '\'', '<', ' ']),
                "{encoded}"
            );
            assert_eq!(decode(&encoded, false).as_deref(), Some(name));
        }
        assert_eq!(decode("%zz", false), None);
        assert_eq!(decode("%4", false), None);
        assert_eq!(decode("%FF", false), None, "not UTF-8");
        assert_eq!(
            form_value("a=1&token=haven-token%3Ax%3A+y&b", "token").as_deref(),
            Some("haven-token:x: y")
        );
        assert_eq!(form_value("a=1", "token"), None);
    }

    #[test]
    fn sizes_durations_times_and_shell_words() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(duration(42), "42 s");
        assert_eq!(duration(3 * 60 + 5), "3 min 5 s");
        assert_eq!(duration(2 * 3600 + 60), "2 h 1 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3 d 4 h");
        assert_eq!(time(0), "–");
        assert_eq!(time(1_796_551_200_000), "2026-12-06 10:00:00Z");
        assert_eq!(
            shell_quote("web-1@2026-12-06T10:00:00Z"),
            "web-1@2026-12-06T10:00:00Z"
        );
        assert_eq!(shell_quote("s3://b/x?endpoint=y"), "'s3://b/x?endpoint=y'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
