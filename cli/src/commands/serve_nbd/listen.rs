//! Where `serve-nbd` listens and whether it may do so in clear.
//!
//! The export is a decrypted disk. Plain NBD is fine where only this machine can reach
//! it (a Unix socket, a loopback address); anywhere else it needs TLS, or `--insecure`
//! from an operator who accepts that anyone on the network can read the disk.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use haven_nbd::Endpoint;

/// How exposed a listener is, once the rules have allowed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exposure {
    /// Clients must start TLS.
    Encrypted,
    /// Plain NBD that only this machine can reach.
    Local,
    /// Plain NBD on a network address, allowed by `--insecure`: warned at every start.
    InsecureNetwork,
}

/// Parses `unix:PATH` or `tcp:HOST:PORT`.
pub(super) fn parse_listen(text: &str) -> Result<Endpoint> {
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            usage!("--listen unix: needs a socket path");
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    if let Some(address) = text.strip_prefix("tcp:") {
        if address.is_empty() {
            usage!("--listen tcp: needs HOST:PORT");
        }
        return Ok(Endpoint::Tcp(address.to_string()));
    }
    usage!("--listen {text:?}: expected unix:PATH or tcp:HOST:PORT")
}

/// Applies the rules to a listener: `addresses` are what a TCP endpoint's host
/// resolves to (ignored for Unix sockets).
pub(super) fn exposure(
    endpoint: &Endpoint,
    addresses: &[SocketAddr],
    tls: bool,
    insecure: bool,
) -> Result<Exposure> {
    if tls {
        return Ok(Exposure::Encrypted);
    }
    let Endpoint::Tcp(address) = endpoint else {
        return Ok(Exposure::Local);
    };
    let loopback = !addresses.is_empty() && addresses.iter().all(|a| a.ip().is_loopback());
    if loopback {
        return Ok(Exposure::Local);
    }
    if insecure {
        return Ok(Exposure::InsecureNetwork);
    }
    usage!(
        "--listen tcp:{address} is reachable from the network, and serve-nbd would send \
         the decrypted disk in clear: give --tls-creds DIR (or --insecure to accept that \
         anyone who can connect reads the disk)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    /// A case: endpoint, what it resolves to, `--tls-creds` given, `--insecure` given,
    /// and the exposure expected (`None`: refused).
    type Case<'a> = (&'a Endpoint, &'a [SocketAddr], bool, bool, Option<Exposure>);

    #[test]
    fn plain_nbd_only_where_only_this_machine_reaches_it() {
        let tcp = Endpoint::Tcp("host:10809".into());
        let unix = Endpoint::Unix("/run/haven.sock".into());
        let loopback = addresses(&["127.0.0.1:10809", "[::1]:10809"]);
        let any = addresses(&["0.0.0.0:10809"]);
        let mixed = addresses(&["127.0.0.1:10809", "192.0.2.7:10809"]);
        let cases: [Case; 10] = [
            (&unix, &[], false, false, Some(Exposure::Local)),
            (&unix, &[], true, false, Some(Exposure::Encrypted)),
            (&tcp, &loopback, false, false, Some(Exposure::Local)),
            (&tcp, &loopback, false, true, Some(Exposure::Local)),
            (&tcp, &any, false, false, None),
            (&tcp, &any, false, true, Some(Exposure::InsecureNetwork)),
            (&tcp, &any, true, false, Some(Exposure::Encrypted)),
            (&tcp, &mixed, false, false, None),
            (&tcp, &mixed, false, true, Some(Exposure::InsecureNetwork)),
            (&tcp, &[], false, false, None),
        ];
        for (index, (endpoint, resolved, tls, insecure, expected)) in cases.iter().enumerate() {
            let got = exposure(endpoint, resolved, *tls, *insecure).ok();
            assert_eq!(got, *expected, "case {index}");
        }
        let error = exposure(&tcp, &any, false, false).unwrap_err().to_string();
        assert!(
            error.contains("--tls-creds") && error.contains("--insecure"),
            "{error}"
        );
    }

    #[test]
    fn listen_specs_parse() {
        assert_eq!(
            parse_listen("tcp:0.0.0.0:10809").unwrap(),
            Endpoint::Tcp("0.0.0.0:10809".into())
        );
        assert_eq!(
            parse_listen("unix:/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert!(parse_listen("tcp:").is_err());
        assert!(parse_listen("10809").is_err());
    }
}
