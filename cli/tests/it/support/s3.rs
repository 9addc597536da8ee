//! S3 credentials for the processes the tests start: the storage node's test key and
//! an environment that nothing in the machine's own AWS settings can redirect.

use std::process::Command;

/// Access key of the storage node's default read-write test key.
pub const ACCESS_KEY: &str = "haven-test-key";
/// Secret of the default test key.
pub const SECRET_KEY: &str = "haven-test-secret-0123456789";

/// An access key and its secret.
#[derive(Clone)]
pub struct S3Keys {
    /// `AWS_ACCESS_KEY_ID`.
    pub access: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret: String,
}

impl S3Keys {
    /// The storage node's default test key.
    pub fn node() -> Self {
        Self::new(ACCESS_KEY, SECRET_KEY)
    }

    /// Any key pair.
    pub fn new(access: &str, secret: &str) -> Self {
        Self {
            access: access.to_owned(),
            secret: secret.to_owned(),
        }
    }
}

/// Gives `command` these keys in region us-east-1 and nothing else from the machine's
/// AWS environment: whatever is set there must not redirect or break the client.
pub fn with_keys<'a>(command: &'a mut Command, keys: &S3Keys) -> &'a mut Command {
    command
        .env("AWS_ACCESS_KEY_ID", &keys.access)
        .env("AWS_SECRET_ACCESS_KEY", &keys.secret)
        .env("AWS_REGION", "us-east-1")
        .env_remove("AWS_CA_BUNDLE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ENDPOINT")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_DEFAULT_REGION")
}
