//! `[etcd_security]` of `coordinator.toml`: how the coordinator proves itself to etcd
//! and checks etcd's identity.
//!
//! ```toml
//! etcd = ["https://etcd-0.etcd:2379"]
//!
//! [etcd_security]
//! ca_file = "/etc/haven/etcd-ca.pem"              # CA of etcd's server certificates
//! cert_file = "/etc/haven/etcd-client.pem"        # client certificate (--client-cert-auth)
//! key_file = "/etc/haven/etcd-client-key.pem"
//! user = "haven"                                  # etcd auth: a user whose role covers
//! password_file = "/etc/haven/etcd-password"      # only Haven's prefix, /haven/
//! # insecure = true   # allow http:// endpoints that are not on loopback (warned at start)
//! ```
//!
//! Whoever can write etcd's keys controls the cluster (jobs, policies, the leader key),
//! so plain TCP is accepted only on loopback, or with `insecure = true`, which is
//! logged as a warning at every start. The checks here look at the configuration only;
//! the files are read when the store is opened
//! ([`crate::store::etcd::EtcdCredentials`]), so `--check-config` works on a machine
//! that does not hold the secrets.

use std::path::PathBuf;

use serde::Deserialize;

use super::is_loopback;

/// The `[etcd_security]` table; every field is optional and absent means plain,
/// unauthenticated etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSecurity {
    /// PEM file of the CA(s) that signed etcd's server certificates; required with
    /// `https://` endpoints (the system roots are never trusted for etcd).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate presented to etcd (`--client-cert-auth`); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd auth user; needs `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the user's password (one line; a trailing newline is ignored), so
    /// the password stays out of the configuration and the process arguments.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Accept `http://` endpoints on other hosts than loopback. Logged as a warning at
    /// every start.
    #[serde(default)]
    pub insecure: bool,
}

/// How the endpoints are reached, once the configuration has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdTransport {
    /// `http://` on loopback only.
    Loopback,
    /// `http://` to these endpoints off loopback, allowed by `insecure = true`.
    Insecure(Vec<String>),
    /// `https://` with the configured CA.
    Tls,
}

impl EtcdSecurity {
    /// The files the settings name: what a rotation changes, and what the store
    /// watches to reconnect with the new contents.
    pub fn files(&self) -> Vec<PathBuf> {
        [
            &self.ca_file,
            &self.cert_file,
            &self.key_file,
            &self.password_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// Checks the settings against the endpoints they are used with; the error names
    /// the field or endpoint at fault (the caller adds the file name).
    pub fn check(&self, endpoints: &[String]) -> Result<EtcdTransport, String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("etcd_security: cert_file and key_file go together".into());
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err("etcd_security: user and password_file go together".into());
        }
        if self.user.as_deref().is_some_and(str::is_empty) {
            return Err("etcd_security: user is empty".into());
        }
        if endpoints.is_empty() {
            // The embedded store, or endpoints still to come from `--etcd`.
            return Ok(EtcdTransport::Loopback);
        }
        let mut https = 0;
        let mut off_loopback = Vec::new();
        for endpoint in endpoints {
            let (scheme, host) = split_endpoint(endpoint)?;
            if scheme == "https" {
                https += 1;
            } else if !is_loopback(host) {
                off_loopback.push(endpoint.clone());
            }
        }
        if https == endpoints.len() {
            if self.ca_file.is_none() {
                return Err(
                    "etcd endpoints are https:// but etcd_security.ca_file is not set".into(),
                );
            }
            return Ok(EtcdTransport::Tls);
        }
        if https > 0 {
            return Err("etcd endpoints mix http:// and https://; use https:// for all".into());
        }
        if let Some(field) = self.tls_field() {
            return Err(format!(
                "etcd_security.{field} is set but the etcd endpoints are http://; use https://"
            ));
        }
        if off_loopback.is_empty() {
            return Ok(EtcdTransport::Loopback);
        }
        if !self.insecure {
            return Err(format!(
                "etcd endpoint {} is plain http:// off loopback: anyone on the network could \
                 rewrite Haven's state; use https:// with [etcd_security], or set \
                 etcd_security.insecure = true",
                off_loopback[0]
            ));
        }
        Ok(EtcdTransport::Insecure(off_loopback))
    }

    /// The first TLS field that is set, for errors.
    fn tls_field(&self) -> Option<&'static str> {
        [
            ("ca_file", self.ca_file.is_some()),
            ("cert_file", self.cert_file.is_some()),
            ("key_file", self.key_file.is_some()),
        ]
        .into_iter()
        .find_map(|(name, set)| set.then_some(name))
    }
}

/// `(scheme, host)` of `scheme://host[:port][/...]`; a scheme other than http or https,
/// or none, is an error (etcd-client would guess one from the TLS settings).
fn split_endpoint(endpoint: &str) -> Result<(&str, &str), String> {
    let unusable = |why: &str| format!("etcd endpoint {endpoint:?}: {why}");
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| unusable("write it as http://HOST:PORT or https://HOST:PORT"))?;
    if scheme != "http" && scheme != "https" {
        return Err(unusable("the scheme must be http:// or https://"));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(bracketed) => bracketed
            .split_once(']')
            .map(|(host, _)| host)
            .ok_or_else(|| unusable("unclosed [ in the address"))?,
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    if host.is_empty() {
        return Err(unusable("no host"));
    }
    Ok((scheme, host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> EtcdSecurity {
        EtcdSecurity {
            ca_file: Some("ca.pem".into()),
            cert_file: Some("client.pem".into()),
            key_file: Some("client-key.pem".into()),
            user: Some("haven".into()),
            password_file: Some("password".into()),
            insecure: false,
        }
    }

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|endpoint| endpoint.to_string()).collect()
    }

    #[test]
    fn accepted_settings() {
        let plain = EtcdSecurity::default();
        let insecure = EtcdSecurity {
            insecure: true,
            ..EtcdSecurity::default()
        };
        let ca_only = EtcdSecurity {
            ca_file: Some("ca.pem".into()),
            ..EtcdSecurity::default()
        };
        let password_over_loopback = EtcdSecurity {
            user: Some("haven".into()),
            password_file: Some("password".into()),
            ..EtcdSecurity::default()
        };
        let cases: &[(&EtcdSecurity, &[&str], EtcdTransport)] = &[
            (&plain, &[], EtcdTransport::Loopback),
            // Endpoints may still come from `--etcd`.
            (&tls(), &[], EtcdTransport::Loopback),
            (&plain, &["http://127.0.0.1:2379"], EtcdTransport::Loopback),
            (
                &plain,
                &[
                    "http://localhost:2379",
                    "http://[::1]:2379",
                    "http://127.0.0.2:1",
                ],
                EtcdTransport::Loopback,
            ),
            (
                &password_over_loopback,
                &["http://127.0.0.1:2379"],
                EtcdTransport::Loopback,
            ),
            (
                &tls(),
                &["https://etcd-0:2379", "https://10.0.0.2:2379"],
                EtcdTransport::Tls,
            ),
            (&ca_only, &["https://etcd:2379/"], EtcdTransport::Tls),
            (
                &insecure,
                &["http://127.0.0.1:2379", "http://etcd:2379"],
                EtcdTransport::Insecure(endpoints(&["http://etcd:2379"])),
            ),
        ];
        for (security, list, expected) in cases {
            assert_eq!(
                security.check(&endpoints(list)).as_ref(),
                Ok(expected),
                "{security:?} with {list:?}"
            );
        }
    }

    #[test]
    fn refused_settings_say_why() {
        let no_ca = EtcdSecurity {
            ca_file: None,
            ..tls()
        };
        let cert_without_key = EtcdSecurity {
            key_file: None,
            ..tls()
        };
        let user_without_password = EtcdSecurity {
            password_file: None,
            ..tls()
        };
        let empty_user = EtcdSecurity {
            user: Some(String::new()),
            ..tls()
        };
        let cases: &[(&EtcdSecurity, &[&str], &str)] = &[
            (
                &EtcdSecurity::default(),
                &["http://etcd:2379"],
                "etcd endpoint http://etcd:2379 is plain http:// off loopback",
            ),
            (
                &EtcdSecurity::default(),
                &["http://10.0.0.2:2379"],
                "set etcd_security.insecure = true",
            ),
            (
                &EtcdSecurity::default(),
                &["etcd:2379"],
                "write it as http://HOST:PORT",
            ),
            (
                &EtcdSecurity::default(),
                &["unix://etcd.sock"],
                "the scheme must be http:// or https://",
            ),
            (&EtcdSecurity::default(), &["http://:2379"], "no host"),
            (
                &EtcdSecurity::default(),
                &["https://etcd:2379"],
                "https:// but etcd_security.ca_file is not set",
            ),
            (
                &no_ca,
                &["https://etcd:2379"],
                "etcd_security.ca_file is not set",
            ),
            (
                &tls(),
                &["https://etcd:2379", "http://127.0.0.1:2379"],
                "mix http:// and https://",
            ),
            (
                &tls(),
                &["http://127.0.0.1:2379"],
                "etcd_security.ca_file is set but the etcd endpoints are http://",
            ),
            (
                &cert_without_key,
                &["https://etcd:2379"],
                "cert_file and key_file go together",
            ),
            (
                &user_without_password,
                &["https://etcd:2379"],
                "user and password_file go together",
            ),
            (&empty_user, &["https://etcd:2379"], "user is empty"),
        ];
        for (security, list, expected) in cases {
            let error = security
                .check(&endpoints(list))
                .expect_err(&format!("{security:?} with {list:?} must be refused"));
            assert!(
                error.contains(expected),
                "{list:?}: {error:?} should say {expected:?}"
            );
        }
    }
}
