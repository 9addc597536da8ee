//! A private certificate authority for sites without one (`haven pki`).
//!
//! Larger sites issue Haven's certificates from their own CA or cert-manager; all
//! Haven needs is a CA bundle to trust and, in client certificates, the
//! `haven://ROLE/NAME` URI name ([`crate::identity`]). This module makes the same
//! certificates for everyone else: ECDSA P-256 keys, a CA valid for ten years,
//! leaves for one year (or what the caller asks, including already expired ones for
//! tests of refusal).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::{Identity, TlsError};

/// A CA certificate and its signing key.
pub struct CertificateAuthority {
    certificate_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// What a new leaf certificate says.
#[derive(Debug, Clone)]
pub struct LeafRequest {
    /// Subject common name (informational).
    pub common_name: String,
    /// The client identity, if the certificate authenticates a caller.
    pub identity: Option<Identity>,
    /// DNS names a server answers to.
    pub dns_names: Vec<String>,
    /// IP addresses a server answers on.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl LeafRequest {
    /// A request valid from now for `days`; `days` of 0 or less makes a certificate
    /// that expired that many days ago (valid for the day before), to test refusals.
    pub fn new(common_name: impl Into<String>, days: i64) -> Self {
        let now = OffsetDateTime::now_utc();
        let (not_before, not_after) = if days > 0 {
            (now - Duration::minutes(5), now + Duration::days(days))
        } else {
            let end = now + Duration::days(days) - Duration::hours(1);
            (end - Duration::days(1), end)
        };
        Self {
            common_name: common_name.into(),
            identity: None,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            not_before,
            not_after,
        }
    }

    /// A client certificate for `identity`, valid for `days` (see [`LeafRequest::new`]).
    pub fn client(identity: Identity, days: i64) -> Self {
        let mut request = Self::new(identity.name.clone(), days);
        request.identity = Some(identity);
        request
    }

    /// Whether it names a server (DNS or IP names).
    pub fn is_server(&self) -> bool {
        !self.dns_names.is_empty() || !self.ip_addresses.is_empty()
    }
}

/// A certificate and its private key, PEM-encoded.
pub struct Issued {
    /// The certificate.
    pub certificate_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl CertificateAuthority {
    /// A new self-signed CA valid for `days`.
    pub fn generate(common_name: &str, days: i64) -> Result<(Self, Issued), TlsError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::days(days);
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?;
        let issued = Issued {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        };
        let authority = Self {
            certificate_pem: issued.certificate_pem.clone(),
            issuer: Issuer::new(params, key),
        };
        Ok((authority, issued))
    }

    /// The CA in `cert` and `key` (PEM files).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |path: &Path| {
            String::from_utf8(crate::files::read(path)?).map_err(|_| TlsError::Pem {
                path: path.to_owned(),
                reason: "not text".into(),
            })
        };
        let certificate_pem = pem(cert)?;
        let key_pair = KeyPair::from_pem(&pem(key)?).map_err(|error| TlsError::Pem {
            path: key.to_owned(),
            reason: format!("no usable private key: {error}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&certificate_pem, key_pair).map_err(|error| {
            TlsError::Pem {
                path: cert.to_owned(),
                reason: format!("not a CA certificate: {error}"),
            }
        })?;
        Ok(Self {
            certificate_pem,
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Signs a new leaf certificate with a fresh key.
    pub fn issue(&self, request: &LeafRequest) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, request.common_name.as_str());
        params.not_before = request.not_before;
        params.not_after = request.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some(identity) = &request.identity {
            let uri = identity.uri().try_into()?;
            params.subject_alt_names.push(SanType::URI(uri));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        for name in &request.dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.as_str().try_into()?));
        }
        for address in &request.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*address));
        }
        if request.is_server() {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `DIR/STEM.pem` and `DIR/STEM-key.pem` (mode 0600), refusing to replace
    /// an existing key unless `overwrite`; returns both paths.
    pub fn write(
        &self,
        dir: &Path,
        stem: &str,
        overwrite: bool,
    ) -> Result<(PathBuf, PathBuf), TlsError> {
        let certificate = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        write_file(&key, self.key_pem.as_bytes(), 0o600, overwrite)?;
        write_file(
            &certificate,
            self.certificate_pem.as_bytes(),
            0o644,
            overwrite,
        )?;
        Ok((certificate, key))
    }
}

/// Writes a file with `mode`, create-new unless `overwrite`.
fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Role;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn a_client_certificate_carries_its_identity_and_a_ca_reloads_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let (authority, ca) = CertificateAuthority::generate("test CA", 30).unwrap();
        let (ca_cert, ca_key) = ca.write(dir.path(), "ca", false).unwrap();
        let loaded = CertificateAuthority::load(&ca_cert, &ca_key).unwrap();
        for issuer in [&authority, &loaded] {
            let request = LeafRequest::client(Identity::new(Role::Worker, "kvm-01").unwrap(), 1);
            let issued = issuer.issue(&request).unwrap();
            let (cert, _) = issued.write(dir.path(), "kvm-01", true).unwrap();
            let der = &crate::files::certificates(&cert).unwrap()[0];
            let identity = Identity::from_certificate(der).unwrap();
            assert_eq!(identity, Identity::new(Role::Worker, "kvm-01").unwrap());
        }
        assert!(
            ca.write(dir.path(), "ca", false).is_err(),
            "keys are never replaced silently"
        );
    }

    #[test]
    fn a_server_certificate_names_no_identity() {
        let (authority, _) = CertificateAuthority::generate("test CA", 30).unwrap();
        let mut request = LeafRequest::new("coordinator", 1);
        request.dns_names.push("localhost".into());
        let issued = authority.issue(&request).unwrap();
        let der =
            rustls_pki_types::CertificateDer::pem_slice_iter(issued.certificate_pem.as_bytes())
                .next()
                .unwrap()
                .unwrap();
        assert!(Identity::from_certificate(&der).is_err());
    }
}
