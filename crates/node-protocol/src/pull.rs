//! The batch pull: `POST /{bucket}?haven-batch-pull=` asks a target node to
//! fetch a batch from a source node itself and write it, so the objects cross
//! the network once, from node to node, instead of twice through the client.
//!
//! The client never hands out its credentials: it signs the source's batch
//! read ([`crate::BATCH_GET_QUERY`]) over its exact body, the list of source
//! keys, and passes that signed request in a [`PullRequest`]. The target can
//! only send that request, unchanged, to a source its own configuration
//! allows, within the signature's validity; it cannot read anything else.

use serde::{Deserialize, Serialize};

/// Query parameter of the batch pull.
pub const BATCH_PULL_QUERY: &str = "haven-batch-pull";

/// Longest a node's whole fetch from the source of a pull may take (a source trickling
/// bytes would otherwise hold the pull for as long as it likes). Clients wait at least
/// this long, plus the node's write, before giving up on a pull.
pub const PULL_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Headers a [`PullRequest`] may carry: those of a SigV4 signature.
pub const PULL_HEADERS: [&str; 4] = [
    "host",
    "x-amz-date",
    "x-amz-content-sha256",
    "authorization",
];

/// The body of a batch pull (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The source's batch read:
    /// `http(s)://host[:port]/{bucket}?haven-batch-get=`.
    pub url: String,
    /// The signed headers of that request, names from [`PULL_HEADERS`].
    pub headers: Vec<(String, String)>,
    /// The objects to copy, in the order the source answers them.
    pub keys: Vec<PullKey>,
}

impl PullRequest {
    /// The body of the source's batch read: the source keys, one per line
    /// (what the signature in [`PullRequest::headers`] covers).
    pub fn source_body(&self) -> String {
        key_lines(self.keys.iter().map(|key| key.source.as_str()))
    }
}

/// One object of a batch pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullKey {
    /// Its key at the source (in the bucket of [`PullRequest::url`]).
    pub source: String,
    /// The key it gets at the target (in the bucket pulled into).
    pub target: String,
}

/// What a batch pull did with one object, in the order of
/// [`PullRequest::keys`]; the answer is a JSON array of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case", deny_unknown_fields)]
pub enum PullOutcome {
    /// Written by this pull.
    Created,
    /// The target already had the key; left as it was.
    Existed,
    /// The source has no such key.
    Missing,
    /// The source could not read the object.
    Failed {
        /// The source's reason.
        message: String,
    },
}

/// Keys as the body of a batch read or an existence query: one per line, in a string
/// sized once (an existence query holds up to 100,000 keys).
pub fn key_lines<'a, I>(keys: I) -> String
where
    I: IntoIterator<Item = &'a str>,
    I::IntoIter: Clone,
{
    let keys = keys.into_iter();
    let mut body = String::with_capacity(keys.clone().map(|key| key.len() + 1).sum());
    for key in keys {
        body.push_str(key);
        body.push('\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_outcomes_round_trip_as_json() {
        let request = PullRequest {
            url: "http://127.0.0.1:9000/primary?haven-batch-get=".into(),
            headers: vec![("host".into(), "127.0.0.1:9000".into())],
            keys: vec![PullKey {
                source: "a/chunks/1".into(),
                target: "b/chunks/1".into(),
            }],
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(serde_json::from_str::<PullRequest>(&json).unwrap(), request);
        assert_eq!(request.source_body(), "a/chunks/1\n");

        let outcomes = vec![
            PullOutcome::Created,
            PullOutcome::Existed,
            PullOutcome::Missing,
            PullOutcome::Failed {
                message: "bad block".into(),
            },
        ];
        let json = serde_json::to_string(&outcomes).unwrap();
        assert_eq!(
            json,
            r#"[{"outcome":"created"},{"outcome":"existed"},{"outcome":"missing"},{"outcome":"failed","message":"bad block"}]"#
        );
        assert_eq!(
            serde_json::from_str::<Vec<PullOutcome>>(&json).unwrap(),
            outcomes
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"url":"u","headers":[],"keys":[],"extra":1}"#;
        assert!(serde_json::from_str::<PullRequest>(json).is_err());
        assert!(serde_json::from_str::<PullOutcome>(r#"{"outcome":"deleted"}"#).is_err());
    }
}
