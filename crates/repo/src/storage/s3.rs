//! A repository on an S3 server (`s3://bucket/prefix?...`): AWS S3, Ceph RGW, MinIO, or
//! a Haven storage node, whose extensions are used when the URL allows it.
//!
//! This module turns the URL into an `object_store` S3 client and, for an endpoint
//! that may be a storage node, the client of its extensions ([`NodeClient`]).

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::prefix::PrefixStore;

use super::node_client::{Credentials, NodeClient, NodeClientError};
use super::trace_context::TraceContextConnector;
use crate::error::{RepoError, Result};

/// Static S3 credentials for one backend (see [`crate::Backend::from_url_with_credentials`]).
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials, if any.
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// Credentials of the secondary site, when its keys differ from the primary's
    /// `AWS_*`: `HAVEN_SECONDARY_AWS_ACCESS_KEY_ID`, `HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY`
    /// and optionally `HAVEN_SECONDARY_AWS_SESSION_TOKEN`. Replication writes and
    /// repairs read with them; `None` when neither key is set (the `AWS_*` ones apply).
    pub fn secondary_from_env() -> Result<Option<Self>> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        match (
            variable("HAVEN_SECONDARY_AWS_ACCESS_KEY_ID"),
            variable("HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY"),
        ) {
            (None, None) => Ok(None),
            (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Self {
                access_key_id,
                secret_access_key,
                session_token: variable("HAVEN_SECONDARY_AWS_SESSION_TOKEN"),
            })),
            _ => Err(RepoError::InvalidArgument(
                "set both HAVEN_SECONDARY_AWS_ACCESS_KEY_ID and HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY, or neither".into(),
            )),
        }
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// An opened `s3://` URL: the bucket seen from the URL's prefix.
#[derive(Debug)]
pub(crate) struct S3Store {
    /// Objects, with keys relative to the prefix.
    pub(crate) store: Arc<dyn ObjectStore>,
    /// The URL's prefix with a trailing `/` (or empty): bucket keys of objects.
    pub(crate) key_prefix: String,
}

/// Opens `parsed` (the text of which is `url`, for errors) with `credentials` instead
/// of the `AWS_*` ones if given. With `extensions`, also returns the client of a
/// storage node's extensions when the URL can name one (see [`node_client`]). `retry`
/// replaces `object_store`'s default retries (ten, for up to three minutes): a member
/// of a several-node site gives up sooner, as another replica can answer.
pub(crate) fn open(
    parsed: &url::Url,
    url: &str,
    credentials: Option<&S3Credentials>,
    extensions: bool,
    retry: Option<object_store::RetryConfig>,
) -> Result<(S3Store, Option<NodeClient>)> {
    let invalid = |reason: String| RepoError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let bucket = parsed
        .host_str()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| invalid("missing bucket: s3://bucket/prefix".into()))?;
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_http_connector(TraceContextConnector);
    if let Some(retry) = retry {
        builder = builder.with_retry(retry);
    }
    if let Some(credentials) = credentials {
        // The provider signs the S3 requests; the config values feed the existence
        // query's own signer (an empty token there means "none").
        let provider = object_store::StaticCredentialProvider::new(AwsCredential {
            key_id: credentials.access_key_id.clone(),
            secret_key: credentials.secret_access_key.clone(),
            token: credentials.session_token.clone(),
        });
        builder = builder
            .with_credentials(Arc::new(provider))
            .with_access_key_id(&credentials.access_key_id)
            .with_secret_access_key(&credentials.secret_access_key)
            .with_config(
                AmazonS3ConfigKey::Token,
                credentials.session_token.clone().unwrap_or_default(),
            );
    }
    // Before `endpoint`, whose `with_allow_http` edits the options this replaces.
    let ca_pem = match parsed.query_pairs().find(|(name, _)| name == "ca_file") {
        Some((_, path)) => {
            let (pem, options) = ca_file_options(&path).map_err(invalid)?;
            builder = builder.with_client_options(options);
            pem
        }
        None => Vec::new(),
    };
    let mut path_style = None;
    for (name, value) in parsed.query_pairs() {
        match name.as_ref() {
            "ca_file" => {}
            "endpoint" => {
                builder = builder
                    .with_allow_http(value.starts_with("http://"))
                    .with_endpoint(value.as_ref());
                path_style.get_or_insert(true);
            }
            "region" => builder = builder.with_region(value.as_ref()),
            "path_style" => path_style = Some(value == "true"),
            other => return Err(invalid(format!("unknown parameter {other:?}"))),
        }
    }
    if let Some(path_style) = path_style {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    let node = if extensions {
        node_client(&builder, bucket, path_style == Some(true), &ca_pem)
            .map_err(|error| invalid(error.to_string()))?
    } else {
        None
    };
    let store: Arc<dyn ObjectStore> = Arc::new(
        builder
            .build()
            .map_err(|error| invalid(error.to_string()))?,
    );
    let prefix = parsed.path().trim_matches('/');
    let (store, key_prefix): (Arc<dyn ObjectStore>, String) = if prefix.is_empty() {
        (store, String::new())
    } else {
        (
            Arc::new(PrefixStore::new(store, prefix)),
            format!("{prefix}/"),
        )
    };
    Ok((S3Store { store, key_prefix }, node))
}

/// The PEM bytes of a repository URL's `ca_file`, and client options that trust its
/// certificates besides the system's (storage nodes with a private CA).
fn ca_file_options(
    path: &str,
) -> std::result::Result<(Vec<u8>, object_store::ClientOptions), String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read ca_file {path}: {error}"))?;
    let roots = object_store::Certificate::from_pem_bundle(&pem)
        .map_err(|error| format!("ca_file {path}: {error}"))?;
    if roots.is_empty() {
        return Err(format!("ca_file {path} holds no certificate"));
    }
    // These options replace the builder's: carry over what `from_env` took from the
    // environment (proxy, timeouts, ...), as it reads it.
    // `vars_os`, not `vars`: a variable that is not Unicode must not panic here.
    let from_env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| name.starts_with("AWS_"))
        .filter_map(|(name, value)| match name.to_ascii_lowercase().parse() {
            Ok(AmazonS3ConfigKey::Client(key)) => Some((key, value)),
            _ => None,
        });
    let options = from_env.fold(
        object_store::ClientOptions::new(),
        |options, (key, value)| options.with_config(key, value),
    );
    let options = roots
        .into_iter()
        .fold(options, |options, root| options.with_root_certificate(root));
    Ok((pem, options))
}

/// A client of the node extensions for `s3://` URLs that may name a Haven
/// storage node: an explicit endpoint, path-style addressing and static keys
/// (its requests are signed with them; session tokens are plain AWS, which has
/// no such extensions).
fn node_client(
    builder: &AmazonS3Builder,
    bucket: &str,
    path_style: bool,
    ca_pem: &[u8],
) -> std::result::Result<Option<NodeClient>, NodeClientError> {
    let config = |key| builder.get_config_value(&key).filter(|v| !v.is_empty());
    let (Some(endpoint), Some(access_key), Some(secret_key)) = (
        config(AmazonS3ConfigKey::Endpoint),
        config(AmazonS3ConfigKey::AccessKeyId),
        config(AmazonS3ConfigKey::SecretAccessKey),
    ) else {
        return Ok(None);
    };
    if !path_style || config(AmazonS3ConfigKey::Token).is_some() {
        return Ok(None);
    }
    let credentials = Credentials {
        access_key,
        secret_key,
        region: config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into()),
    };
    Ok(Some(NodeClient::with_roots(
        &endpoint,
        bucket,
        credentials,
        ca_pem,
    )?))
}
