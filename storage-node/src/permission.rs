//! What an access key may do: one of four nested kinds plus two separate grants.
//!
//! Haven's backups only ever create objects, so the key a backup job holds should be
//! unable to destroy what it wrote (ransomware on a worker, a stolen key, a bug):
//!
//! | kind     | may                                                                |
//! |----------|--------------------------------------------------------------------|
//! | `read`   | GET, HEAD, LIST, the existence query, batch reads                  |
//! | `append` | read + create objects that do not exist yet (PUT, multipart, COPY, |
//! |          | batch writes and pulls); never delete, never overwrite             |
//! | `delete` | append + DeleteObject(s) + overwrite + object tagging changes      |
//! | `admin`  | everything: buckets, bucket configuration, object retention        |
//!
//! `legal_hold` (set or clear a legal hold) and `bypass_governance` (use
//! `x-amz-bypass-governance-retention`) are separate grants that no kind implies.
//! "Never overwrite" is enforced by the store's create-only commit (the same atomic
//! check as `If-None-Match: *`), not by a look beforehand; see
//! [`crate::store::WriteCondition::create_only_for_key`].

use serde::Deserialize;

/// The nested kinds of access key, weakest first (the order is the nesting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessKind {
    /// GET, HEAD, LIST and the existence query.
    Read,
    /// Read and create new objects; no delete, no overwrite.
    Append,
    /// Append, delete and overwrite.
    Delete,
    /// Everything, including bucket creation and Object Lock configuration.
    Admin,
}

impl AccessKind {
    /// The name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Append => "append",
            Self::Delete => "delete",
            Self::Admin => "admin",
        }
    }

    /// Whether a key of this kind may replace an existing object.
    pub fn may_overwrite(self) -> bool {
        self >= Self::Delete
    }
}

/// What one request needs from its key, decided from the operation name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// At least this kind.
    Kind(AccessKind),
    /// The `legal_hold` grant (and no particular kind).
    LegalHold,
}

/// The requirement of an s3s operation (or Haven extension) named `operation`.
/// Unknown operations need `admin`: a new S3 operation is closed to lesser keys
/// until someone decides otherwise here.
pub fn requirement(operation: &str) -> Requirement {
    use AccessKind::*;
    match operation {
        "PutObjectLegalHold" => Requirement::LegalHold,
        "PutObject"
        | "CopyObject"
        | "CreateMultipartUpload"
        | "UploadPart"
        | "UploadPartCopy"
        | "CompleteMultipartUpload"
        | "AbortMultipartUpload"
        | "HavenBatchPut"
        | "HavenBatchPull" => Requirement::Kind(Append),
        // Tagging changes an existing object's metadata: as an overwrite.
        "DeleteObject" | "DeleteObjects" | "PutObjectTagging" | "DeleteObjectTagging" => {
            Requirement::Kind(Delete)
        }
        "HavenExists" | "HavenBatchGet" => Requirement::Kind(Read),
        _ if operation.starts_with("Get")
            || operation.starts_with("Head")
            || operation.starts_with("List") =>
        {
            Requirement::Kind(Read)
        }
        _ => Requirement::Kind(Admin),
    }
}

#[cfg(test)]
mod tests {
    use super::AccessKind::*;
    use super::*;

    #[test]
    fn each_operation_needs_the_weakest_kind_that_may_do_it() {
        let table = [
            ("GetObject", Requirement::Kind(Read)),
            ("HeadObject", Requirement::Kind(Read)),
            ("ListObjectsV2", Requirement::Kind(Read)),
            ("GetObjectRetention", Requirement::Kind(Read)),
            ("HavenExists", Requirement::Kind(Read)),
            ("HavenBatchGet", Requirement::Kind(Read)),
            ("PutObject", Requirement::Kind(Append)),
            ("CopyObject", Requirement::Kind(Append)),
            ("CreateMultipartUpload", Requirement::Kind(Append)),
            ("UploadPart", Requirement::Kind(Append)),
            ("CompleteMultipartUpload", Requirement::Kind(Append)),
            ("AbortMultipartUpload", Requirement::Kind(Append)),
            ("HavenBatchPut", Requirement::Kind(Append)),
            ("HavenBatchPull", Requirement::Kind(Append)),
            ("DeleteObject", Requirement::Kind(Delete)),
            ("DeleteObjects", Requirement::Kind(Delete)),
            ("PutObjectTagging", Requirement::Kind(Delete)),
            ("DeleteObjectTagging", Requirement::Kind(Delete)),
            ("GetObjectTagging", Requirement::Kind(Read)),
            ("GetObjectAttributes", Requirement::Kind(Read)),
            ("PutObjectRetention", Requirement::Kind(Admin)),
            ("PutObjectLockConfiguration", Requirement::Kind(Admin)),
            ("CreateBucket", Requirement::Kind(Admin)),
            ("DeleteBucket", Requirement::Kind(Admin)),
            ("PutBucketPolicy", Requirement::Kind(Admin)),
            ("SomethingNew", Requirement::Kind(Admin)),
            ("PutObjectLegalHold", Requirement::LegalHold),
        ];
        for (operation, expected) in table {
            assert_eq!(requirement(operation), expected, "{operation}");
        }
    }

    #[test]
    fn kinds_nest_and_only_delete_and_admin_overwrite() {
        assert!(Read < Append && Append < Delete && Delete < Admin);
        assert!(!Read.may_overwrite() && !Append.may_overwrite());
        assert!(Delete.may_overwrite() && Admin.may_overwrite());
    }
}
