//! One line for an error and its causes, for the places that print one line and have
//! no `anyhow` to walk the chain: RPC statuses, job records, logs.

/// `error` and every source after it, each said once (`a: b: c`): a cause whose text
/// the line already holds is skipped, so wrappers that repeat their source (tonic's
/// "transport error", reqwest, `io::Error` in a custom error) do not say it twice.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open /nope.raw: {0}")]
    struct Open(#[source] std::io::Error);

    #[test]
    fn a_cause_already_said_is_not_repeated() {
        let io = std::io::Error::from_raw_os_error(2);
        let line = error_chain(&Open(io));
        assert_eq!(
            line,
            "cannot open /nope.raw: No such file or directory (os error 2)"
        );
    }
}
