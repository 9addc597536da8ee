//! Errors of the object store, and their one mapping to S3 error codes.

use s3s::{S3Error, S3ErrorCode};

/// An S3 error whose code s3s does not know (AWS's `XAmzContentSHA256Mismatch`
/// or `InvalidPartNumber`, Haven's `HavenSourceFailed`), with its status.
pub fn custom_error(
    code: &'static str,
    status: http::StatusCode,
    message: impl Into<String>,
) -> S3Error {
    let mut error = S3Error::with_message(S3ErrorCode::Custom(code.into()), message.into());
    error.set_status_code(status);
    error
}

use crate::keypath::KeyError;
use crate::object_file::ObjectFileError;

/// What can go wrong in the object store; the S3 layer maps each variant to
/// one S3 error code in [`StoreError::to_s3`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The bucket does not exist.
    #[error("no such bucket")]
    NoSuchBucket,
    /// The object does not exist.
    #[error("no such key")]
    NoSuchKey,
    /// The bucket exists already.
    #[error("bucket already exists")]
    BucketExists,
    /// The bucket still holds objects.
    #[error("bucket is not empty")]
    BucketNotEmpty,
    /// The bucket name is not a valid S3 bucket name.
    #[error("invalid bucket name")]
    InvalidBucketName,
    /// The key cannot be mapped to a file safely.
    #[error("invalid object key: {0}")]
    InvalidKey(#[from] KeyError),
    /// A conditional request's condition does not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(&'static str),
    /// The access key may create objects but not replace them (an `append` key).
    #[error(
        "the object exists and this access key may not overwrite it; overwriting {}\"delete\"",
        haven_node_protocol::PERMISSION_REFUSAL
    )]
    OverwriteDenied,
    /// Object Lock forbids the change.
    #[error("object is locked: {0}")]
    Locked(String),
    /// The request asks for something Object Lock rules forbid.
    #[error("invalid object lock request: {0}")]
    InvalidLock(String),
    /// The data on disk does not match its checksums.
    #[error("stored object is corrupt: {0}")]
    Corrupt(String),
    /// The configured data directories do not match those on disk.
    #[error("data directory layout: {0}")]
    Layout(String),
    /// The multipart upload does not exist.
    #[error("no such upload")]
    NoSuchUpload,
    /// A part in a completion request is missing or has another ETag.
    #[error("invalid part: {0}")]
    InvalidPart(String),
    /// Parts are not in ascending order.
    #[error("parts are not in ascending order")]
    InvalidPartOrder,
    /// A part other than the last is smaller than 5 MiB.
    #[error("part too small")]
    EntityTooSmall,
    /// The bytes do not match a checksum the client gave.
    #[error("{0}")]
    BadDigest(String),
    /// An I/O error from the file system.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl From<ObjectFileError> for StoreError {
    fn from(error: ObjectFileError) -> Self {
        match error {
            ObjectFileError::Io(io) if io.kind() == std::io::ErrorKind::NotFound => Self::NoSuchKey,
            ObjectFileError::Io(io) => Self::Io(io),
            ObjectFileError::Corrupt(what) => Self::Corrupt(what),
        }
    }
}

impl StoreError {
    /// Whether retrying the same request may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Io(_))
    }

    /// The S3 error clients see for this error.
    pub fn to_s3(&self) -> S3Error {
        let code = match self {
            Self::NoSuchBucket => S3ErrorCode::NoSuchBucket,
            Self::NoSuchKey => S3ErrorCode::NoSuchKey,
            Self::BucketExists => S3ErrorCode::BucketAlreadyOwnedByYou,
            Self::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
            Self::InvalidBucketName => S3ErrorCode::InvalidBucketName,
            Self::InvalidKey(KeyError::TooLong) => S3ErrorCode::KeyTooLongError,
            Self::InvalidKey(_) => S3ErrorCode::InvalidArgument,
            Self::PreconditionFailed(_) => S3ErrorCode::PreconditionFailed,
            Self::Locked(_) | Self::OverwriteDenied => S3ErrorCode::AccessDenied,
            Self::InvalidLock(_) => S3ErrorCode::InvalidRequest,
            Self::Corrupt(_) | Self::Io(_) | Self::Layout(_) => S3ErrorCode::InternalError,
            Self::NoSuchUpload => S3ErrorCode::NoSuchUpload,
            Self::InvalidPart(_) => S3ErrorCode::InvalidPart,
            Self::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
            Self::EntityTooSmall => S3ErrorCode::EntityTooSmall,
            Self::BadDigest(_) => S3ErrorCode::BadDigest,
        };
        let message = match self {
            // Do not leak file system details to clients.
            Self::Io(_) | Self::Layout(_) => "internal error".to_owned(),
            Self::Corrupt(_) => "stored object failed its checksum; it is not served".to_owned(),
            other => other.to_string(),
        };
        S3Error::with_message(code, message)
    }
}

impl From<StoreError> for S3Error {
    fn from(error: StoreError) -> Self {
        if matches!(error, StoreError::Io(_) | StoreError::Corrupt(_)) {
            tracing::error!(%error, "storage error");
        }
        error.to_s3()
    }
}
