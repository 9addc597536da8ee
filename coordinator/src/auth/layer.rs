//! The tower layer in front of both gRPC services (see the module above).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use haven_tls::listener::{PeerCertificate, PeerInfo};
use tonic::Status;
use tonic::body::Body;

use super::audit::{AuditLog, AuditRecord};
use super::tokens::Tokens;
use super::{Caller, rules};
use crate::model;

/// Extension a handler may put in its response: what the call did, for the audit
/// record.
#[derive(Debug, Clone)]
pub struct AuditDetail(pub String);

/// Authenticates, authorizes and audits every call.
#[derive(Clone)]
pub struct AuthLayer {
    state: Arc<State>,
}

struct State {
    tokens: Arc<Tokens>,
    audit: Arc<AuditLog>,
}

impl AuthLayer {
    /// A layer checking tokens in `tokens` and auditing into `audit`.
    pub fn new(tokens: Arc<Tokens>, audit: Arc<AuditLog>) -> Self {
        Self {
            state: Arc::new(State { tokens, audit }),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    state: Arc<State>,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's contract).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let peer = request.extensions().get::<PeerInfo>().cloned();
            let remote = peer
                .as_ref()
                .and_then(|peer| peer.remote)
                .map(|address| address.to_string())
                .unwrap_or_default();
            let authorization = request.headers().get(http::header::AUTHORIZATION).cloned();
            let method = rules::rule(&path);
            let caller = state
                .authenticate(
                    authorization.as_ref(),
                    peer.as_ref().map(|peer| &peer.certificate),
                )
                .await;
            let decision = caller.clone().and_then(|caller| match method {
                // Every RPC has a rule (the table test checks): this is no RPC.
                None => Err(Status::unimplemented(format!("unknown method {path}"))),
                Some(method) if !method.rule.allows(caller.identity.role) => {
                    Err(Status::permission_denied(format!(
                        "{} may not call {}",
                        caller.identity,
                        short(&path)
                    )))
                }
                Some(_) => Ok(caller),
            });
            let audited = method.is_some_and(|method| method.audited);
            let (response, result, detail) = match decision {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    let Ok(response) = inner.call(request).await;
                    let (result, detail) = outcome(&response);
                    (response, result, detail)
                }
                Err(status) => {
                    let result = format!("{:?}", status.code());
                    let detail = status.message().to_owned();
                    (status.into_http(), result, detail)
                }
            };
            if audited {
                let (who, credential) = match &caller {
                    Ok(caller) => (
                        caller.identity.to_string(),
                        caller.credential.as_str().to_owned(),
                    ),
                    Err(_) => ("anonymous".to_owned(), String::new()),
                };
                state
                    .audit
                    .record(AuditRecord {
                        unix_ms: model::now_ms(),
                        who,
                        credential,
                        remote,
                        method: short(&path).to_owned(),
                        result,
                        detail,
                    })
                    .await;
            }
            Ok(response)
        })
    }
}

impl State {
    /// Who is calling: a bearer token if one is sent, else the client certificate.
    async fn authenticate(
        &self,
        authorization: Option<&http::HeaderValue>,
        certificate: Option<&PeerCertificate>,
    ) -> Result<Caller, Status> {
        let token = authorization
            .map(super::bearer_token)
            .transpose()
            .map_err(Status::unauthenticated)?;
        super::authenticate(&self.tokens, token, certificate)
            .await
            .map_err(Status::unauthenticated)
    }
}

/// The result and detail of a handled call: a refusal travels in the headers
/// (trailers-only response); a success has none there.
fn outcome(response: &http::Response<Body>) -> (String, String) {
    let detail = response
        .extensions()
        .get::<AuditDetail>()
        .map(|detail| detail.0.clone());
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() != tonic::Code::Ok => {
            (format!("{:?}", status.code()), status.message().to_owned())
        }
        _ => ("Ok".to_owned(), detail.unwrap_or_default()),
    }
}

/// `Service/Method` of a gRPC path.
fn short(path: &str) -> &str {
    path.rsplit_once('.').map_or(path, |(_, method)| method)
}
