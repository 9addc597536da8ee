//! Where an NBD server listens, and parsing of the standard NBD URIs.

use std::path::PathBuf;

use url::Url;

use crate::error::NbdError;

/// Default TCP port of NBD servers.
const DEFAULT_PORT: u16 = 10809;

/// The address of an NBD server, so callers can name Unix and TCP servers alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix domain socket path (what qemu-nbd `-k` and libvirt pull-mode backups use).
    Unix(PathBuf),
    /// A TCP address as `host:port` (IPv6 hosts in brackets).
    Tcp(String),
}

impl Endpoint {
    /// Parses `nbd+unix:///EXPORT?socket=/path` or `nbd://host[:port]/EXPORT`
    /// (the URI forms of qemu and libnbd) into an endpoint and an export name.
    ///
    /// TLS schemes (`nbds`, `nbds+unix`) are refused: this client speaks plain NBD only.
    pub fn parse_uri(uri: &str) -> Result<(Endpoint, String), NbdError> {
        let url =
            Url::parse(uri).map_err(|error| NbdError::InvalidUri(format!("{uri}: {error}")))?;
        let export = percent_decode(url.path().strip_prefix('/').unwrap_or(url.path()))
            .ok_or_else(|| {
                NbdError::InvalidUri(format!("{uri}: export name is not valid utf-8"))
            })?;
        match url.scheme() {
            "nbd" | "nbd+tcp" => {
                let host = url
                    .host_str()
                    .filter(|host| !host.is_empty())
                    .ok_or_else(|| NbdError::InvalidUri(format!("{uri}: missing host")))?;
                let port = url.port().unwrap_or(DEFAULT_PORT);
                Ok((Endpoint::Tcp(format!("{host}:{port}")), export))
            }
            "nbd+unix" => {
                if url.host_str().is_some_and(|host| !host.is_empty()) {
                    return Err(NbdError::InvalidUri(format!(
                        "{uri}: nbd+unix takes no host"
                    )));
                }
                let socket = url
                    .query_pairs()
                    .find(|(key, _)| key == "socket")
                    .map(|(_, value)| value.into_owned())
                    .filter(|socket| !socket.is_empty())
                    .ok_or_else(|| NbdError::InvalidUri(format!("{uri}: missing ?socket=")))?;
                Ok((Endpoint::Unix(PathBuf::from(socket)), export))
            }
            "nbds" | "nbds+tcp" | "nbds+unix" => {
                Err(NbdError::InvalidUri(format!("{uri}: tls is not supported")))
            }
            other => Err(NbdError::InvalidUri(format!(
                "{uri}: unknown scheme {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(formatter, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(formatter, "tcp:{address}"),
        }
    }
}

/// Decodes `%XX` escapes; `None` if the result is not UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = bytes
            .get(index + 1..index + 3)
            .filter(|_| bytes[index] == b'%')
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_forms() {
        let table = [
            (
                "nbd+unix:///vm?socket=/run/nbd.sock",
                Endpoint::Unix("/run/nbd.sock".into()),
                "vm",
            ),
            (
                "nbd+unix:///?socket=/tmp/s",
                Endpoint::Unix("/tmp/s".into()),
                "",
            ),
            (
                "nbd://127.0.0.1:10900/disk%20one",
                Endpoint::Tcp("127.0.0.1:10900".into()),
                "disk one",
            ),
            (
                "nbd://example.org/x",
                Endpoint::Tcp("example.org:10809".into()),
                "x",
            ),
            ("nbd://[::1]:5000/", Endpoint::Tcp("[::1]:5000".into()), ""),
        ];
        for (uri, endpoint, export) in table {
            let parsed = Endpoint::parse_uri(uri).unwrap_or_else(|error| panic!("{uri}: {error}"));
            assert_eq!(parsed, (endpoint, export.to_string()), "{uri}");
        }
    }

    #[test]
    fn rejects_bad_forms() {
        for uri in [
            "nbd+unix:///vm",
            "nbd+unix://host/vm?socket=/x",
            "nbds://host/vm",
            "http://host/vm",
            "nbd:///vm",
            "not a uri",
        ] {
            assert!(
                matches!(Endpoint::parse_uri(uri), Err(NbdError::InvalidUri(_))),
                "{uri} should be rejected"
            );
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%ff"), None);
    }
}
