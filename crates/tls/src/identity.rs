//! Who a certificate or token names.
//!
//! A Haven certificate carries its holder's role and name in one URI subject
//! alternative name, `haven://ROLE/NAME` (for example `haven://worker/kvm-01`). A URI
//! SAN rather than the subject's CN or OU because cert-manager, openssl and every CA
//! can set it, it is unambiguous to parse, and a server certificate of the same CA
//! (which has DNS or IP names only) can never pass as a client.

use std::fmt;
use std::str::FromStr;

use crate::TlsError;

/// URI scheme of identities inside certificates.
pub const IDENTITY_SCHEME: &str = "haven://";

/// What a caller may do; checked by the coordinator on every RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A worker: worker RPCs only, acting only as itself.
    Worker,
    /// Reads the inventory, jobs and snapshots.
    Viewer,
    /// A viewer that may also run jobs and policy rounds.
    Operator,
    /// An operator that may also change policies, tokens and protection.
    Admin,
}

impl Role {
    /// Every role, for tables and tests.
    pub const ALL: [Role; 4] = [Role::Worker, Role::Viewer, Role::Operator, Role::Admin];

    /// The role's name in certificates, tokens and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Whether this role has at least the rights of `needed`. Viewer, operator and
    /// admin are ordered; a worker has only its own rights.
    pub fn covers(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Worker, Role::Worker) => true,
            (Role::Worker, _) | (_, Role::Worker) => false,
            (have, needed) => have >= needed,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|role| role.as_str() == text)
            .ok_or_else(|| format!("unknown role {text:?} (worker, viewer, operator or admin)"))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// What it may do.
    pub role: Role,
    /// Its name: the worker id for workers, a person or tool otherwise.
    pub name: String,
}

impl Identity {
    /// An identity; `name` must be a valid [`check_name`] name.
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, TlsError> {
        let name = name.into();
        check_name(&name).map_err(TlsError::Identity)?;
        Ok(Self { role, name })
    }

    /// The URI written into certificates.
    pub fn uri(&self) -> String {
        format!("{IDENTITY_SCHEME}{}/{}", self.role, self.name)
    }

    /// Parses `haven://ROLE/NAME`.
    pub fn from_uri(uri: &str) -> Result<Self, TlsError> {
        let rest = uri
            .strip_prefix(IDENTITY_SCHEME)
            .ok_or_else(|| TlsError::Identity(format!("{uri:?} is not a haven:// identity")))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| TlsError::Identity(format!("{uri:?} is not haven://ROLE/NAME")))?;
        let role = role.parse().map_err(TlsError::Identity)?;
        Self::new(role, name)
    }

    /// The identity in a DER certificate (already verified by the TLS handshake):
    /// its one `haven://` URI subject alternative name.
    pub fn from_certificate(der: &[u8]) -> Result<Self, TlsError> {
        let (_, certificate) = x509_parser::parse_x509_certificate(der)
            .map_err(|error| TlsError::Identity(format!("unreadable certificate: {error}")))?;
        let names = certificate
            .subject_alternative_name()
            .map_err(|error| TlsError::Identity(format!("unreadable certificate: {error}")))?;
        let mut found = names
            .into_iter()
            .flat_map(|extension| extension.value.general_names.iter())
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri)
                    if uri.starts_with(IDENTITY_SCHEME) =>
                {
                    Some(*uri)
                }
                _ => None,
            });
        let uri = found.next().ok_or_else(|| {
            TlsError::Identity("the certificate names no haven://ROLE/NAME identity".into())
        })?;
        if found.next().is_some() {
            return Err(TlsError::Identity(
                "the certificate names more than one haven:// identity".into(),
            ));
        }
        Self::from_uri(uri)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// Names of identities: 1 to 128 characters of letters, digits, `.`, `_`, `-` and
/// `@`, not starting with `-` or `.` — safe in URIs, file names, logs and keys.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid identity name {name:?}: use 1 to 128 letters, digits, '.', '_', '-' \
             or '@', not starting with '-' or '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_cover_lower_roles_but_never_cross_worker() {
        assert!(Role::Admin.covers(Role::Operator));
        assert!(Role::Operator.covers(Role::Viewer));
        assert!(!Role::Viewer.covers(Role::Operator));
        assert!(!Role::Admin.covers(Role::Worker));
        assert!(!Role::Worker.covers(Role::Viewer));
        assert!(Role::Worker.covers(Role::Worker));
    }

    #[test]
    fn uris_round_trip_and_bad_ones_are_refused() {
        let identity = Identity::new(Role::Worker, "kvm-01").unwrap();
        assert_eq!(identity.uri(), "haven://worker/kvm-01");
        assert_eq!(Identity::from_uri(&identity.uri()).unwrap(), identity);
        for bad in [
            "https://worker/x",
            "haven://root/x",
            "haven://worker/",
            "haven://worker/../x",
            "haven://worker/-x",
            "haven://worker",
        ] {
            assert!(Identity::from_uri(bad).is_err(), "{bad}");
        }
    }
}
