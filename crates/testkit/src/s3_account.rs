//! What a test needs to reach an S3 server a fixture started (Garage, Ceph RGW): its
//! endpoint, region and key, and from them the repository URL, the credentials and a
//! backend opened as `haven` opens any `s3://` URL. One implementation for every such
//! fixture.

use haven_repo::{Backend, OpenOptions, S3Credentials};

use crate::FixtureError;

/// An S3 server on loopback with one key, as a fixture started it.
pub trait S3Account {
    /// `http://127.0.0.1:PORT`, the S3 API.
    fn endpoint(&self) -> String;
    /// The region the server signs for.
    fn region(&self) -> &'static str;
    /// The access key id and secret of the fixture's user.
    fn keys(&self) -> (&'static str, &'static str);

    /// The repository URL of `prefix` in `bucket`.
    fn repository_url(&self, bucket: &str, prefix: &str) -> String {
        format!(
            "s3://{bucket}/{prefix}?endpoint={}&region={}",
            self.endpoint(),
            self.region()
        )
    }

    /// The fixture's key as static S3 credentials.
    fn credentials(&self) -> S3Credentials {
        let (access_key_id, secret_access_key) = self.keys();
        S3Credentials {
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            session_token: None,
        }
    }

    /// A backend on `prefix` in `bucket`, opened as `haven` opens any `s3://` URL.
    fn backend(&self, bucket: &str, prefix: &str) -> Result<Backend, FixtureError> {
        let url = self.repository_url(bucket, prefix);
        let options = OpenOptions {
            credentials: Some(self.credentials()),
            ..OpenOptions::default()
        };
        Backend::open(&url, &options).map_err(|source| FixtureError::Backend { url, source })
    }
}
