//! Who is using the console, and whether a form came from the console itself.
//!
//! A request proves its caller the way an API call does ([`crate::auth::authenticate`]),
//! from one of three places, first found wins:
//!
//! 1. `Authorization: Bearer TOKEN` (scripts, `curl`);
//! 2. the session cookie [`COOKIE`], which holds an API token: the login form checks
//!    a token and sets it `HttpOnly` (no script reads it), `SameSite=Strict` (no
//!    other site's page sends it) and `Secure` over TLS; every request checks the
//!    token again (cached for `tokens::CACHE_FOR`), so revoking the token ends the
//!    session;
//! 3. the client certificate of the TLS connection, verified against the client CA.
//!
//! A browser attaches a cookie or a certificate to any request it sends, even one a
//! hostile page makes it send, so a POST authenticated that way must also come from
//! the console's own page: its `Origin` (or `Referer`) must be this console, and the
//! form must carry the CSRF token of the page, a keyed hash of the caller that only
//! this replica can compute ([`Csrf`]). A bearer header is never attached by a browser
//! on its own, so a request carrying one needs neither.

use haven_metrics::RouteRequest;
use haven_tls::listener::PeerInfo;
use http::header::{AUTHORIZATION, COOKIE as COOKIE_HEADER, HOST, ORIGIN, REFERER};

use super::html::form_value;
use crate::auth::tokens::Tokens;
use crate::auth::{self, Caller};

/// Name of the session cookie.
pub const COOKIE: &str = "haven_session";

/// Where a request's credential came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// An `Authorization: Bearer` header.
    Header,
    /// The session cookie.
    Cookie,
    /// The client certificate.
    Certificate,
}

impl Source {
    /// Whether a browser may have sent the credential on its own (a cookie or a
    /// certificate), so a form needs the checks against cross-site requests.
    pub fn ambient(self) -> bool {
        self != Source::Header
    }
}

/// Why a request is not authenticated.
#[derive(Debug)]
pub enum Refusal {
    /// It carries no credential at all: a browser is sent to the login form.
    NoCredential,
    /// It carries one that proves nothing; the reason, never the token.
    Invalid(String),
}

/// The caller of `request` on the connection of `peer`, and where its credential came
/// from.
pub async fn authenticate(
    tokens: &Tokens,
    request: &RouteRequest,
    peer: &PeerInfo,
) -> Result<(Caller, Source), Refusal> {
    let headers = request.headers();
    let (token, source) = if let Some(value) = headers.get(AUTHORIZATION) {
        let token = auth::bearer_token(value).map_err(Refusal::Invalid)?;
        (Some(token), Source::Header)
    } else if let Some(token) = cookie(request, COOKIE).filter(|token| !token.is_empty()) {
        (Some(token), Source::Cookie)
    } else {
        (None, Source::Certificate)
    };
    if token.is_none() && matches!(peer.certificate, haven_tls::listener::PeerCertificate::None) {
        return Err(Refusal::NoCredential);
    }
    auth::authenticate(tokens, token, Some(&peer.certificate))
        .await
        .map(|caller| (caller, source))
        .map_err(Refusal::Invalid)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(request: &'a RouteRequest, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get_all(COOKIE_HEADER)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// The `Set-Cookie` value that starts a session holding `token`; `Secure` over TLS.
/// No `Max-Age`: the session ends with the browser or the token.
pub fn session_cookie(token: &str, tls: bool) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session.
pub fn cleared_cookie(tls: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if tls { "; Secure" } else { "" }
    )
}

/// Whether `request` was sent by a page of this console: its `Origin` header, or
/// without one its `Referer`, names the scheme and host the request was sent to.
/// Neither header: refused (every browser sends `Origin` with a POST).
pub fn same_origin(request: &RouteRequest, tls: bool) -> Result<(), String> {
    let headers = request.headers();
    let host = headers
        .get(HOST)
        .and_then(|value| value.to_str().ok())
        .ok_or("the request names no host")?;
    let own = format!("{}://{host}", if tls { "https" } else { "http" });
    let sent_from = match (headers.get(ORIGIN), headers.get(REFERER)) {
        (Some(origin), _) => origin.to_str().ok().map(str::to_owned),
        (None, Some(referer)) => referer.to_str().ok().map(|referer| {
            // The origin part of the URL: up to the first `/` after `scheme://`.
            let after_scheme = referer.find("://").map_or(0, |i| i + 3);
            let end = referer[after_scheme..]
                .find('/')
                .map_or(referer.len(), |i| after_scheme + i);
            referer[..end].to_owned()
        }),
        (None, None) => None,
    };
    match sent_from {
        Some(origin) if origin == own => Ok(()),
        Some(origin) => Err(format!("a form of {origin} may not act on this console")),
        None => Err("the request does not say which page sent it (no Origin header)".to_owned()),
    }
}

/// CSRF tokens: a keyed BLAKE3 hash of the caller under a key drawn when the replica
/// starts, so a token is valid only for its caller on this replica until it restarts
/// (a page of another replica, or from before a restart, must be reloaded).
pub struct Csrf {
    key: [u8; 32],
}

impl Csrf {
    /// A fresh key.
    pub fn new() -> Self {
        Self {
            key: rand::random(),
        }
    }

    /// The token the pages of `caller` carry.
    pub fn token(&self, caller: &Caller) -> String {
        self.hash(caller).to_hex().to_string()
    }

    /// Whether the form `body` carries `caller`'s token in its `csrf` field (compared
    /// in constant time).
    pub fn check(&self, caller: &Caller, body: &str) -> Result<(), String> {
        let sent = form_value(body, "csrf")
            .and_then(|text| blake3::Hash::from_hex(text).ok())
            .ok_or("the form carries no CSRF token; reload the page")?;
        if sent == self.hash(caller) {
            Ok(())
        } else {
            Err("the form's CSRF token is not this session's; reload the page".to_owned())
        }
    }

    fn hash(&self, caller: &Caller) -> blake3::Hash {
        let text = format!("{}|{}", caller.identity, caller.credential.as_str());
        blake3::keyed_hash(&self.key, text.as_bytes())
    }
}

impl Default for Csrf {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use haven_tls::{Identity, Role};

    use super::*;
    use crate::auth::Credential;

    fn request(headers: &[(&str, &str)]) -> RouteRequest {
        let mut builder = http::Request::builder()
            .method("POST")
            .uri("/vm/web/backup");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(bytes::Bytes::new()).unwrap()
    }

    #[test]
    fn a_form_must_come_from_this_console() {
        let host = ("host", "127.0.0.1:7701");
        let ok = |headers: &[(&str, &str)], tls| same_origin(&request(headers), tls).is_ok();
        assert!(ok(&[host, ("origin", "https://127.0.0.1:7701")], true));
        assert!(
            !ok(&[host, ("origin", "http://127.0.0.1:7701")], true),
            "scheme"
        );
        assert!(!ok(&[host, ("origin", "https://evil.example")], true));
        assert!(!ok(&[host, ("origin", "null")], true));
        assert!(ok(
            &[host, ("referer", "https://127.0.0.1:7701/vm/web")],
            true
        ));
        assert!(!ok(
            &[host, ("referer", "https://127.0.0.1:7701.evil/x")],
            true
        ));
        assert!(!ok(&[host], true), "neither header");
        assert!(
            !ok(&[("origin", "https://127.0.0.1:7701")], true),
            "no host"
        );
    }

    #[test]
    fn csrf_tokens_belong_to_one_caller_on_one_replica() {
        let caller = |role, name: &str, credential| Caller {
            identity: Identity::new(role, name).unwrap(),
            credential,
        };
        let alice = caller(Role::Operator, "alice", Credential::Token);
        let csrf = Csrf::new();
        let form = format!("x=1&csrf={}", csrf.token(&alice));
        assert!(csrf.check(&alice, &form).is_ok());
        let bob = caller(Role::Operator, "bob", Credential::Token);
        assert!(csrf.check(&bob, &form).is_err());
        let alice_cert = caller(Role::Operator, "alice", Credential::Certificate);
        assert!(csrf.check(&alice_cert, &form).is_err());
        assert!(Csrf::new().check(&alice, &form).is_err(), "another replica");
        assert!(csrf.check(&alice, "x=1").is_err());
        assert!(csrf.check(&alice, "csrf=zz").is_err());
    }

    #[test]
    fn cookies_are_found_and_set_safely() {
        let request = request(&[("cookie", "a=1; haven_session=haven-token:x:y; b=2")]);
        assert_eq!(cookie(&request, COOKIE), Some("haven-token:x:y"));
        assert_eq!(cookie(&request, "c"), None);
        assert_eq!(
            session_cookie("t", true),
            "haven_session=t; Path=/; HttpOnly; SameSite=Strict; Secure"
        );
        assert_eq!(
            session_cookie("t", false),
            "haven_session=t; Path=/; HttpOnly; SameSite=Strict"
        );
        assert!(cleared_cookie(true).contains("Max-Age=0"));
    }
}
