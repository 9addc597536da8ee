//! What an S3 server's refusal means for the user, said once in their terms.
//!
//! `object_store` reports a refused request as a chain of errors each of which
//! repeats the one below it (the store, the retried request, the HTTP status
//! with the whole XML body), so a missing bucket printed as four copies of
//! "400 Bad Request" or "404 Not Found" and never said which. The refusals a
//! user must act on are recognised here from the HTTP status and the S3 error
//! `<Code>` and said in one line: a missing bucket (with how to create it), an
//! invalid bucket name, an unknown access key, a wrong secret key, a refusal
//! of access, and a clock too far from the server's.

use haven_node_protocol::is_valid_bucket_name;

/// A refusal by the S3 server that the user has to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3Refusal {
    /// The bucket does not exist.
    #[error(
        "bucket {bucket:?} does not exist: create it (`aws s3 mb s3://{bucket}`, or start a Haven storage node with `--create-bucket {bucket}`)"
    )]
    NoSuchBucket {
        /// The bucket named by the repository URL.
        bucket: String,
    },
    /// The server refuses the bucket's name.
    #[error(
        "invalid bucket name {bucket:?}: S3 bucket names are 3 to 63 characters of lower-case letters, digits, dots and hyphens, beginning and ending with a letter or digit"
    )]
    InvalidBucketName {
        /// The bucket named by the repository URL.
        bucket: String,
    },
    /// The server does not know the access key.
    #[error(
        "the S3 server does not know this access key (InvalidAccessKeyId): check AWS_ACCESS_KEY_ID"
    )]
    UnknownAccessKey,
    /// The request's signature does not match: the secret key is wrong.
    #[error(
        "the S3 server refused the request signature (SignatureDoesNotMatch): check AWS_SECRET_ACCESS_KEY"
    )]
    WrongSecretKey,
    /// The key may not do this (or Object Lock protects the object).
    #[error("access denied by the S3 server on {key}{}", explain(message))]
    AccessDenied {
        /// The object the request was about.
        key: String,
        /// The server's message, when it sent one.
        message: Option<String>,
    },
    /// The request's time is too far from the server's.
    #[error(
        "the S3 server refused the request because this machine's clock is too far from the server's (RequestTimeTooSkewed, more than 15 minutes apart): set the clock (NTP)"
    )]
    ClockSkew,
}

/// `: message`, or ` (403 Forbidden)` when the server sent none (a HEAD).
fn explain(message: &Option<String>) -> String {
    match message {
        Some(message) => format!(": {message}"),
        None => " (403 Forbidden)".to_owned(),
    }
}

impl S3Refusal {
    /// The refusal `error` reports for a request about `key` in `bucket`, if it
    /// is one the user must fix; `None` for everything else (a missing object, a
    /// failed precondition, a network error, a server error).
    pub fn of(error: &object_store::Error, bucket: &str, key: &str) -> Option<Self> {
        let text = error.to_string();
        let status = status_of(&text);
        let code = element(&text, "Code");
        let message = element(&text, "Message");
        match code.as_deref() {
            Some("NoSuchBucket") => {
                return Some(Self::NoSuchBucket {
                    bucket: bucket.to_owned(),
                });
            }
            Some("InvalidBucketName") => {
                return Some(Self::InvalidBucketName {
                    bucket: bucket.to_owned(),
                });
            }
            Some("RequestTimeTooSkewed") => return Some(Self::ClockSkew),
            Some("InvalidAccessKeyId") => return Some(Self::UnknownAccessKey),
            Some("SignatureDoesNotMatch") => return Some(Self::WrongSecretKey),
            Some("AccessDenied") => {
                return Some(Self::AccessDenied {
                    key: key.to_owned(),
                    message,
                });
            }
            _ => {}
        }
        // A HEAD has no body: a refusal without a code is known by its status
        // (and a 400 by a name S3 would refuse).
        match (code, status) {
            (None, Some(403)) => Some(Self::AccessDenied {
                key: key.to_owned(),
                message: None,
            }),
            (None, Some(400)) if !is_valid_bucket_name(bucket) => Some(Self::InvalidBucketName {
                bucket: bucket.to_owned(),
            }),
            _ => None,
        }
    }
}

/// The HTTP status in `object_store`'s text ("… status code: 404 Not Found: …").
fn status_of(text: &str) -> Option<u16> {
    let rest = &text[text.find("status code: ")? + "status code: ".len()..];
    rest.get(..3)?.parse().ok()
}

/// The text of the first `<name>…</name>` element of an S3 error document,
/// with the XML escapes of a message undone.
fn element(text: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&close)?;
    let value = text[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&");
    (!value.is_empty()).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(text: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: text.into(),
        }
    }

    #[test]
    fn recognises_the_refusals_a_user_fixes() {
        let body = |code: &str, message: &str| {
            generic(&format!(
                "Error performing PUT http://127.0.0.1:9000/bk/config in 2ms - Server returned non-2xx status code: 400 Bad Request: <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
            ))
        };
        assert_eq!(
            S3Refusal::of(&body("NoSuchBucket", "no such bucket"), "bk", "config"),
            Some(S3Refusal::NoSuchBucket {
                bucket: "bk".into()
            })
        );
        assert_eq!(
            S3Refusal::of(&body("InvalidBucketName", ""), "bk", "config"),
            Some(S3Refusal::InvalidBucketName {
                bucket: "bk".into()
            })
        );
        assert_eq!(
            S3Refusal::of(&body("RequestTimeTooSkewed", "too far"), "bk", "config"),
            Some(S3Refusal::ClockSkew)
        );
        assert_eq!(
            S3Refusal::of(&body("SignatureDoesNotMatch", "x"), "bk", "config"),
            Some(S3Refusal::WrongSecretKey)
        );
        assert_eq!(
            S3Refusal::of(&body("InvalidAccessKeyId", "x"), "bk", "config"),
            Some(S3Refusal::UnknownAccessKey)
        );
        assert_eq!(
            S3Refusal::of(&body("AccessDenied", "a &amp; b"), "bk", "config"),
            Some(S3Refusal::AccessDenied {
                key: "config".into(),
                message: Some("a & b".into()),
            })
        );
        let head = generic(
            "Error performing HEAD http://x/bk/config in 1ms - Server returned non-2xx status code: 403 Forbidden: ",
        );
        assert!(matches!(
            S3Refusal::of(&head, "bk", "config"),
            Some(S3Refusal::AccessDenied { message: None, .. })
        ));
        let bare_400 = |bucket| {
            S3Refusal::of(
                &generic(
                    "Error performing HEAD http://x/b/config in 1ms - Server returned non-2xx status code: 400 Bad Request: ",
                ),
                bucket,
                "config",
            )
        };
        assert!(matches!(
            bare_400("bk"),
            Some(S3Refusal::InvalidBucketName { .. })
        ));
        assert_eq!(bare_400("fine-name"), None);
        assert_eq!(S3Refusal::of(&body("NoSuchKey", "x"), "bk", "config"), None);
        assert_eq!(
            S3Refusal::of(&body("InternalError", "x"), "bk", "config"),
            None
        );
    }

    #[test]
    fn each_message_is_one_line_naming_the_fix() {
        let missing = S3Refusal::NoSuchBucket {
            bucket: "bk".into(),
        }
        .to_string();
        assert!(missing.contains("--create-bucket bk") && !missing.contains('\n'));
        let denied = S3Refusal::AccessDenied {
            key: "config".into(),
            message: None,
        }
        .to_string();
        assert_eq!(
            denied,
            "access denied by the S3 server on config (403 Forbidden)"
        );
    }
}
