//! The `x-amz-checksum-*` algorithms as AWS defines them: which digest each
//! has, which multipart checksum types it allows, and the checks AWS makes of
//! the values a client sends.

use s3s::checksum::ChecksumHasher;
use s3s::dto::Checksum;
use s3s::{S3Error, s3_error};

/// One of the five checksum algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// CRC-32 (IEEE).
    Crc32,
    /// CRC-32C (Castagnoli).
    Crc32c,
    /// CRC-64/NVME.
    Crc64Nvme,
    /// SHA-1.
    Sha1,
    /// SHA-256.
    Sha256,
}

/// `COMPOSITE`: a multipart object's checksum is the checksum of its parts'
/// checksums, suffixed `-N`.
pub const COMPOSITE: &str = "COMPOSITE";
/// `FULL_OBJECT`: the checksum covers the object's bytes, however uploaded.
pub const FULL_OBJECT: &str = "FULL_OBJECT";

impl Algorithm {
    /// Every algorithm, in the order responses list them.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// The algorithm an `x-amz-checksum-algorithm` (or
    /// `x-amz-sdk-checksum-algorithm`) value names.
    pub fn parse(name: &str) -> Result<Self, S3Error> {
        Self::ALL
            .into_iter()
            .find(|a| a.header_name().eq_ignore_ascii_case(name))
            .ok_or_else(|| s3_error!(InvalidRequest, "unsupported checksum algorithm {name}"))
    }

    /// The name in requests and responses: `CRC32`, `CRC64NVME`, ...
    pub fn header_name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    /// The key of the value in an object's stored checksums (`crc32`, ...),
    /// also the suffix of its `x-amz-checksum-` header.
    pub fn key(self) -> &'static str {
        match self {
            Self::Crc32 => "crc32",
            Self::Crc32c => "crc32c",
            Self::Crc64Nvme => "crc64nvme",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
        }
    }

    /// Length of the digest in bytes.
    fn digest_len(self) -> usize {
        match self {
            Self::Crc32 | Self::Crc32c => 4,
            Self::Crc64Nvme => 8,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// The multipart checksum type an upload gets when it names none (AWS:
    /// CRC-64/NVME only exists whole; the others default to composite).
    pub fn default_type(self) -> &'static str {
        match self {
            Self::Crc64Nvme => FULL_OBJECT,
            _ => COMPOSITE,
        }
    }

    /// Whether a multipart upload may use `checksum_type` with this algorithm
    /// (the hashes cannot be combined, CRC-64/NVME has no composite form).
    pub fn allows_type(self, checksum_type: &str) -> bool {
        match checksum_type {
            FULL_OBJECT => matches!(self, Self::Crc32 | Self::Crc32c | Self::Crc64Nvme),
            COMPOSITE => self != Self::Crc64Nvme,
            _ => false,
        }
    }

    /// Makes `hasher` compute this algorithm too.
    pub fn enable(self, hasher: &mut ChecksumHasher) {
        match self {
            Self::Crc32 => hasher.crc32 = Some(Default::default()),
            Self::Crc32c => hasher.crc32c = Some(Default::default()),
            Self::Crc64Nvme => hasher.crc64nvme = Some(Default::default()),
            Self::Sha1 => hasher.sha1 = Some(Default::default()),
            Self::Sha256 => hasher.sha256 = Some(Default::default()),
        }
    }

    /// A hasher of this algorithm alone.
    pub fn hasher(self) -> ChecksumHasher {
        let mut hasher = ChecksumHasher::default();
        self.enable(&mut hasher);
        hasher
    }

    /// This algorithm's field of `checksum`.
    pub fn field(self, checksum: &Checksum) -> Option<&String> {
        match self {
            Self::Crc32 => checksum.checksum_crc32.as_ref(),
            Self::Crc32c => checksum.checksum_crc32c.as_ref(),
            Self::Crc64Nvme => checksum.checksum_crc64nvme.as_ref(),
            Self::Sha1 => checksum.checksum_sha1.as_ref(),
            Self::Sha256 => checksum.checksum_sha256.as_ref(),
        }
    }

    /// This algorithm's field of `checksum`, to fill.
    pub fn field_mut(self, checksum: &mut Checksum) -> &mut Option<String> {
        match self {
            Self::Crc32 => &mut checksum.checksum_crc32,
            Self::Crc32c => &mut checksum.checksum_crc32c,
            Self::Crc64Nvme => &mut checksum.checksum_crc64nvme,
            Self::Sha1 => &mut checksum.checksum_sha1,
            Self::Sha256 => &mut checksum.checksum_sha256,
        }
    }

    /// The raw digest a base64 value holds, if it is one of this algorithm.
    pub fn decode(self, value: &str) -> Option<Vec<u8>> {
        super::convert::base64_decode(value).filter(|d| d.len() == self.digest_len())
    }

    /// The composite checksum of parts whose checksums are `parts` (base64):
    /// this algorithm over their concatenated digests, then `-N`.
    pub fn composite<'a>(
        self,
        parts: impl IntoIterator<Item = &'a str>,
    ) -> Result<String, S3Error> {
        let mut hasher = self.hasher();
        let mut count = 0;
        for value in parts {
            let digest = self.decode(value).ok_or_else(|| {
                s3_error!(
                    InternalError,
                    "a stored part checksum is not a {} digest",
                    self.header_name()
                )
            })?;
            hasher.update(&digest);
            count += 1;
        }
        let whole = self.field(&hasher.finalize()).cloned().unwrap_or_default();
        Ok(format!("{whole}-{count}"))
    }
}

/// The algorithms whose values `checksum` carries.
pub fn declared(checksum: &Checksum) -> Vec<Algorithm> {
    Algorithm::ALL
        .into_iter()
        .filter(|a| a.field(checksum).is_some())
        .collect()
}

/// Checks declared `x-amz-checksum-*` values as AWS does: at most one
/// algorithm, and each value the base64 of a digest of its length
/// (`400 InvalidRequest` otherwise, before any byte is stored).
pub fn check_declared(checksum: &Checksum) -> Result<(), S3Error> {
    let algorithms = declared(checksum);
    if algorithms.len() > 1 {
        return Err(s3_error!(
            InvalidRequest,
            "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        ));
    }
    for algorithm in algorithms {
        let value = algorithm
            .field(checksum)
            .map(String::as_str)
            .unwrap_or_default();
        if algorithm.decode(value).is_none() {
            return Err(s3_error!(
                InvalidRequest,
                "Value for x-amz-checksum-{} header is invalid.",
                algorithm.key()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composite_checksums_are_of_the_part_digests() {
        // CRC32 of "a" is e8b7be43; of "b" 71beeff9. The composite is the CRC32
        // of those eight bytes, as AWS computes it.
        let a = Algorithm::Crc32.hasher();
        let mut a = a;
        a.update(b"a");
        let a = a.finalize().checksum_crc32.expect("crc32");
        assert_eq!(a, "6Le+Qw==");
        let mut b = Algorithm::Crc32.hasher();
        b.update(b"b");
        let b = b.finalize().checksum_crc32.expect("crc32");
        let mut both = Algorithm::Crc32.hasher();
        both.update(&[0xe8, 0xb7, 0xbe, 0x43, 0x71, 0xbe, 0xef, 0xf9]);
        let expected = format!("{}-2", both.finalize().checksum_crc32.expect("crc32"));
        assert_eq!(
            Algorithm::Crc32
                .composite([a.as_str(), b.as_str()])
                .expect("composite"),
            expected
        );
    }

    #[test]
    fn declared_values_are_checked_as_aws_does() {
        let mut checksum = Checksum {
            checksum_crc32: Some("6Le+Qw==".to_owned()),
            ..Default::default()
        };
        assert!(check_declared(&checksum).is_ok());
        checksum.checksum_sha256 = Some("x".to_owned());
        assert!(check_declared(&checksum).is_err(), "two algorithms");
        let short = Checksum {
            checksum_sha256: Some("6Le+Qw==".to_owned()),
            ..Default::default()
        };
        assert!(check_declared(&short).is_err(), "a CRC32 as a SHA-256");
        assert!(!Algorithm::Sha256.allows_type(FULL_OBJECT));
        assert!(!Algorithm::Crc64Nvme.allows_type(COMPOSITE));
        assert_eq!(
            Algorithm::parse("crc64nvme").expect("parse"),
            Algorithm::Crc64Nvme
        );
    }
}
