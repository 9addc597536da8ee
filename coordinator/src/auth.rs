//! Who may call what: authentication, authorization and the audit log of every RPC.
//!
//! One tower layer ([`AuthLayer`]) sits in front of both gRPC services:
//!
//! 1. **Authenticate.** An `authorization: Bearer TOKEN` header names an API token
//!    ([`tokens`]); otherwise the client certificate's `haven://ROLE/NAME` identity,
//!    verified by the TLS handshake against the configured client CA, is the caller.
//!    Neither: `UNAUTHENTICATED`.
//! 2. **Authorize.** [`rules::RULES`] gives every method one rule; a method without a
//!    rule is refused, so a new RPC cannot ship unprotected (the table test fails).
//!    Worker RPCs additionally check, in the service, that the worker named in the
//!    request is the caller ([`require_worker`]).
//! 3. **Audit.** Every call of a method the table marks as mutating — allowed or
//!    refused — is logged (target `haven::audit`) and persisted ([`audit`]), once.
//!
//! The caller is put in the request's extensions as a [`Caller`].

pub mod audit;
mod layer;
pub mod rules;
pub mod tokens;

use haven_tls::listener::PeerCertificate;
use haven_tls::{Identity, Role};
use tonic::{Request, Status};

pub use layer::{AuditDetail, AuthLayer};

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A client certificate of the trusted CA.
    Certificate,
    /// An API token.
    Token,
}

impl Credential {
    /// Name in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Certificate => "certificate",
            Credential::Token => "token",
        }
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Role and name.
    pub identity: Identity,
    /// How it was proven.
    pub credential: Credential,
}

/// The token of an `Authorization: Bearer TOKEN` header, or why the header is unusable.
pub fn bearer_token(value: &http::HeaderValue) -> Result<&str, String> {
    value
        .to_str()
        .ok()
        .and_then(|text| text.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| "the authorization header must be `Bearer TOKEN`".to_owned())
}

/// Who is calling, the one rule for the gRPC API and the web console: an API token
/// if one is presented (it names the caller even on a connection with a client
/// certificate), else the client certificate's identity, verified by the TLS
/// handshake against the client CA. The error says why in the caller's terms and
/// never repeats a token.
pub async fn authenticate(
    tokens: &tokens::Tokens,
    token: Option<&str>,
    certificate: Option<&PeerCertificate>,
) -> Result<Caller, String> {
    if let Some(token) = token {
        let identity = tokens.verify(token).await?;
        return Ok(Caller {
            identity,
            credential: Credential::Token,
        });
    }
    match certificate {
        Some(PeerCertificate::Identity(identity)) => Ok(Caller {
            identity: identity.clone(),
            credential: Credential::Certificate,
        }),
        Some(PeerCertificate::Unusable(reason)) => Err(format!(
            "the client certificate is not a Haven identity: {reason}"
        )),
        _ => Err(
            "no credentials: present a client certificate of the cluster's CA \
                  or an API token"
                .to_owned(),
        ),
    }
}

/// The caller the layer attached to `request`.
pub fn caller<T>(request: &Request<T>) -> Result<&Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// Refuses a worker RPC whose `worker_id` is not the calling worker: a worker acts
/// only as itself.
pub fn require_worker(caller: &Caller, worker_id: &str) -> Result<(), Status> {
    if caller.identity.role == Role::Worker && caller.identity.name == worker_id {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "{} may not act as worker {worker_id:?}",
            caller.identity
        )))
    }
}
