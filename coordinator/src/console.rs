//! The web console: what an operator needs to see at a glance — which VMs are
//! protected, at risk or failing, each VM's snapshots and how to restore them, the
//! jobs running now with their progress, replication lag, the catalog per repository,
//! recent failures and the audit log — and the one action a console needs, "back up
//! now".
//!
//! Served by every replica on its HTTP listener (`http_listen`, beside `/metrics`)
//! through [`haven_metrics::Exporter::route`]: no second server, and the listener's
//! TLS, connection limits and timeouts apply. Pages are rendered here as HTML, with
//! a small stylesheet and script compiled into the binary (`console/assets/`): no
//! CDN, nothing fetched at build or run time.
//!
//! Rules:
//!
//! - **Same authentication and authorization as the API.** A request proves its
//!   caller with an API token (bearer header, or the session cookie the login form
//!   sets) or a client certificate (`session.rs`), and each page is allowed to the
//!   roles that may call the RPC returning the same data ([`Route::api_method`] looked
//!   up in `auth::rules::RULES`): viewers read, operators back up, admins read the
//!   audit log. Nothing else is answered without a credential but the login form and
//!   the static assets.
//! - **Actions** are POST only, need the RPC's role, must come from the console's own
//!   page when a browser could have added the credential on its own (`Origin` and a
//!   CSRF token, `session.rs`), and are written to the audit log like the RPC, as
//!   `Console/...`, allowed or refused.
//! - **Reads come from the leader's cache** (`leader/queries.rs`, `leader/summary.rs`),
//!   never the store, in time linear in the VMs, snapshots and jobs at most; a
//!   follower says so, names the leader and links to its console (the leader's host
//!   on this replica's console port). The audit log is read from the store by
//!   any replica, as `haven audit` does.
//! - **Every text that is not a literal is escaped** (`html.rs`): VM names, errors and
//!   audit details are external input. The content security policy allows only this
//!   console's own script and stylesheet.

mod html;
pub mod pages;
mod session;
mod status;

use std::sync::Arc;

use haven_metrics::{RouteRequest, RouteResponse};
use haven_tls::listener::PeerInfo;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION,
    SET_COOKIE,
};
use http::{Method, StatusCode};

use crate::auth::audit::{AuditLog, AuditRecord};
use crate::auth::tokens::Tokens;
use crate::auth::{Caller, rules};
use crate::model;
use crate::replica::{Replica, Role};

pub use pages::PageContext;
pub use status::Protection;

/// Audit records written per page of the audit log.
const AUDIT_PAGE: usize = 200;

/// The console of one replica.
pub struct Console {
    replica: Arc<Replica>,
    tokens: Arc<Tokens>,
    audit: Arc<AuditLog>,
    csrf: session::Csrf,
    /// The port this console listens on, for the link a follower shows to the
    /// leader's.
    port: u16,
}

/// What a request asks for, once its path is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: protection by policy and the VMs that need attention.
    Overview,
    /// `/vms?policy=P&status=S&page=N`: VMs, filtered.
    Vms {
        /// Only VMs of this policy (`-` for none).
        policy: Option<String>,
        /// Only VMs of this protection.
        status: Option<Protection>,
        /// Page number, from 0.
        page: usize,
    },
    /// `/vm/NAME`: one VM.
    Vm(String),
    /// `POST /vm/NAME/backup`: back the VM up now (`haven job run NAME`).
    Backup(String),
    /// `/jobs`: running and recent jobs.
    Jobs,
    /// `/api/jobs`: running jobs as JSON, polled by the jobs page.
    JobsJson,
    /// `/failures`: recently failed jobs with their errors.
    Failures,
    /// `/replication`: lag per secondary site.
    Replication,
    /// `/storage`: the catalog per repository.
    Storage,
    /// `/audit`: the audit log.
    Audit,
}

impl Route {
    /// The route of `method` and `path` (with its `query`); `None` for anything else.
    pub fn parse(method: &Method, path: &str, query: &str) -> Option<Self> {
        let get = method == Method::GET || method == Method::HEAD;
        if method == Method::POST {
            let vm = path.strip_prefix("/vm/")?.strip_suffix("/backup")?;
            return html::decode(vm, false).map(Route::Backup);
        }
        if !get {
            return None;
        }
        Some(match path {
            "/" => Route::Overview,
            "/vms" => Route::Vms {
                policy: html::form_value(query, "policy").filter(|p| !p.is_empty()),
                status: html::form_value(query, "status").and_then(|s| Protection::from_key(&s)),
                page: html::form_value(query, "page")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
            },
            "/jobs" => Route::Jobs,
            "/api/jobs" => Route::JobsJson,
            "/failures" => Route::Failures,
            "/replication" => Route::Replication,
            "/storage" => Route::Storage,
            "/audit" => Route::Audit,
            _ => {
                let vm = path.strip_prefix("/vm/")?;
                Route::Vm(html::decode(vm, false).filter(|vm| !vm.contains('/'))?)
            }
        })
    }

    /// The RPC that returns (or does) the same: its rule decides who may use the
    /// route, so the console and the API cannot disagree.
    pub fn api_method(&self) -> &'static str {
        match self {
            Route::Overview | Route::Vms { .. } | Route::Replication => {
                "/haven.v1.AdminService/ListVms"
            }
            Route::Vm(_) | Route::Storage => "/haven.v1.AdminService/ListSnapshots",
            Route::Backup(_) => "/haven.v1.AdminService/RunJob",
            Route::Jobs | Route::JobsJson | Route::Failures => "/haven.v1.AdminService/ListJobs",
            Route::Audit => "/haven.v1.AdminService/ListAudit",
        }
    }
}

/// Whether `caller` passes the rule of `method` (a path of `auth::rules::RULES`).
fn allowed(caller: &Caller, method: &str) -> bool {
    rules::rule(method).is_some_and(|rule| rule.rule.allows(caller.identity.role))
}

impl Console {
    /// The console of `replica` listening on `port`, checking tokens in `tokens`
    /// and auditing actions into `audit`.
    pub fn new(
        replica: Arc<Replica>,
        tokens: Arc<Tokens>,
        audit: Arc<AuditLog>,
        port: u16,
    ) -> Self {
        Self {
            replica,
            tokens,
            audit,
            csrf: session::Csrf::new(),
            port,
        }
    }

    /// The answer to `request` from `peer`.
    pub async fn handle(&self, request: RouteRequest, peer: &PeerInfo) -> RouteResponse {
        let path = request.uri().path();
        match (request.method(), path) {
            (&Method::GET, "/static/console.css") => asset("text/css; charset=utf-8", CSS),
            (&Method::GET, "/static/console.js") => asset("text/javascript; charset=utf-8", JS),
            (&Method::GET, "/login") => html(StatusCode::OK, pages::login(None)),
            (&Method::POST, "/login") => self.login(&request, peer).await,
            (&Method::POST, "/logout") => logout(&request, peer),
            _ => self.authenticated(request, peer).await,
        }
    }

    /// Checks the token of the login form; on success sets the session cookie and
    /// goes to the overview.
    async fn login(&self, request: &RouteRequest, peer: &PeerInfo) -> RouteResponse {
        if let Err(reason) = session::same_origin(request, peer.tls) {
            return html(StatusCode::FORBIDDEN, pages::login(Some(&reason)));
        }
        let form = String::from_utf8_lossy(request.body());
        let token = html::form_value(&form, "token").unwrap_or_default();
        let token = token.trim();
        match self.tokens.verify(token).await {
            Ok(_) => redirect("/", Some(session::session_cookie(token, peer.tls))),
            Err(reason) => html(StatusCode::UNAUTHORIZED, pages::login(Some(&reason))),
        }
    }

    async fn authenticated(&self, request: RouteRequest, peer: &PeerInfo) -> RouteResponse {
        let query = request.uri().query().unwrap_or_default();
        let Some(route) = Route::parse(request.method(), request.uri().path(), query) else {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Not found", "No such page."),
            );
        };
        let (caller, source) = match session::authenticate(&self.tokens, &request, peer).await {
            Ok(found) => found,
            Err(refusal) => return self.unauthenticated(&route, &request, peer, refusal).await,
        };
        if !allowed(&caller, route.api_method()) {
            let reason = format!(
                "{} may not use this page (the API refuses it {} too)",
                caller.identity,
                rules::rule(route.api_method()).map_or("", |r| r.path)
            );
            if let Route::Backup(vm) = &route {
                self.audit_action(&caller, peer, vm, "PermissionDenied", &reason)
                    .await;
            }
            return html(
                StatusCode::FORBIDDEN,
                pages::message("Not allowed", &reason),
            );
        }
        let context = PageContext {
            who: caller.identity.to_string(),
            csrf: self.csrf.token(&caller),
            can_act: allowed(&caller, "/haven.v1.AdminService/RunJob"),
            can_audit: allowed(&caller, "/haven.v1.AdminService/ListAudit"),
            now_ms: model::now_ms(),
        };
        match route {
            Route::Backup(vm) => self.backup(&request, peer, &caller, source, &vm).await,
            Route::Audit => match self.audit.list(0, AUDIT_PAGE).await {
                Ok(records) => html(StatusCode::OK, pages::audit(&context, &records)),
                Err(error) => html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    pages::message("Audit log unavailable", &error.to_string()),
                ),
            },
            route => self.read(&context, &route).await,
        }
    }

    /// A page read from the leader's cache, or the follower page.
    async fn read(&self, context: &PageContext, route: &Route) -> RouteResponse {
        let leader = match self.replica.role().await {
            Role::Leader(leader) => leader,
            Role::Follower(url) => {
                return if *route == Route::JobsJson {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        serde_json::json!({ "follower_of": url }).to_string(),
                    )
                } else {
                    html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::follower(context, url.as_deref(), self.port),
                    )
                };
            }
        };
        let page = match route {
            Route::Overview => pages::overview(context, &leader),
            Route::Vms {
                policy,
                status,
                page,
            } => pages::vms(context, &leader, policy.as_deref(), *status, *page),
            Route::Vm(vm) => match pages::vm(context, &leader, vm).await {
                Some(page) => page,
                None => {
                    return html(
                        StatusCode::NOT_FOUND,
                        pages::message("Unknown VM", &format!("No VM is named {vm:?}.")),
                    );
                }
            },
            Route::Jobs => pages::jobs(context, &leader).await,
            Route::JobsJson => return json(StatusCode::OK, pages::jobs_json(&leader)),
            Route::Failures => pages::failures(context, &leader),
            Route::Replication => pages::replication(context, &leader),
            Route::Storage => pages::storage(context, &leader),
            // Answered by `authenticated` before it reads a page; a request routed
            // here anyway gets a 404, never a panic.
            Route::Backup(_) | Route::Audit => {
                return html(
                    StatusCode::NOT_FOUND,
                    pages::message("Not found", "This page is not served here."),
                );
            }
        };
        html(StatusCode::OK, page)
    }

    /// "Back up now": the checks against cross-site forms, then what `haven job run
    /// VM` does, audited either way.
    async fn backup(
        &self,
        request: &RouteRequest,
        peer: &PeerInfo,
        caller: &Caller,
        source: session::Source,
        vm: &str,
    ) -> RouteResponse {
        if source.ambient() {
            let form = String::from_utf8_lossy(request.body());
            let checked = session::same_origin(request, peer.tls)
                .and_then(|()| self.csrf.check(caller, &form));
            if let Err(reason) = checked {
                self.audit_action(caller, peer, vm, "PermissionDenied", &reason)
                    .await;
                return html(StatusCode::FORBIDDEN, pages::message("Refused", &reason));
            }
        }
        let outcome = match self.replica.role().await {
            Role::Leader(leader) => match crate::leader::check_name("VM name", vm) {
                Ok(()) => leader.run_job(vm, None).await,
                Err(error) => Err(error),
            },
            Role::Follower(_) => Err(crate::leader::LeaderError::NotLeader),
        };
        match outcome {
            Ok(job) => {
                let detail = format!("backup job {job} of VM {vm}");
                self.audit_action(caller, peer, vm, "Ok", &detail).await;
                redirect(
                    &format!("/vm/{}?started={}", html::Segment(vm), html::Segment(&job)),
                    None,
                )
            }
            Err(error) => {
                let status = crate::service::status(error);
                let result = format!("{:?}", status.code());
                self.audit_action(caller, peer, vm, &result, status.message())
                    .await;
                html(
                    StatusCode::CONFLICT,
                    pages::message("Backup not started", status.message()),
                )
            }
        }
    }

    /// Writes the audit record of a console action on `vm`.
    async fn audit_action(
        &self,
        caller: &Caller,
        peer: &PeerInfo,
        vm: &str,
        result: &str,
        detail: &str,
    ) {
        let detail = if detail.contains(vm) {
            detail.to_owned()
        } else {
            format!("VM {vm}: {detail}")
        };
        self.audit
            .record(AuditRecord {
                unix_ms: model::now_ms(),
                who: caller.identity.to_string(),
                credential: caller.credential.as_str().to_owned(),
                remote: peer.remote.map(|a| a.to_string()).unwrap_or_default(),
                method: "Console/RunJob".to_owned(),
                result: result.to_owned(),
                detail,
            })
            .await;
    }

    /// The answer to a request without a usable credential: a browser asking for a
    /// page goes to the login form; an action is refused and audited.
    async fn unauthenticated(
        &self,
        route: &Route,
        request: &RouteRequest,
        peer: &PeerInfo,
        refusal: session::Refusal,
    ) -> RouteResponse {
        let reason = match refusal {
            session::Refusal::NoCredential => {
                if matches!(route, Route::Backup(_) | Route::JobsJson) {
                    "no credentials: log in, or present a client certificate or an API token"
                        .to_owned()
                } else {
                    return redirect("/login", None);
                }
            }
            session::Refusal::Invalid(reason) => reason,
        };
        if let Route::Backup(vm) = route {
            self.audit
                .record(AuditRecord {
                    unix_ms: model::now_ms(),
                    who: "anonymous".to_owned(),
                    credential: String::new(),
                    remote: peer.remote.map(|a| a.to_string()).unwrap_or_default(),
                    method: "Console/RunJob".to_owned(),
                    result: "Unauthenticated".to_owned(),
                    detail: format!("VM {vm}: {reason}"),
                })
                .await;
        }
        let mut response = html(StatusCode::UNAUTHORIZED, pages::login(Some(&reason)));
        // A session whose token stopped working is ended.
        if session::cookie(request, session::COOKIE).is_some() {
            set_header(
                &mut response,
                SET_COOKIE,
                &session::cleared_cookie(peer.tls),
            );
        }
        response
    }
}

/// Ends the session (a form of the console's own pages only).
fn logout(request: &RouteRequest, peer: &PeerInfo) -> RouteResponse {
    if let Err(reason) = session::same_origin(request, peer.tls) {
        return html(StatusCode::FORBIDDEN, pages::message("Refused", &reason));
    }
    redirect("/login", Some(session::cleared_cookie(peer.tls)))
}

/// The stylesheet, compiled in.
const CSS: &str = include_str!("console/assets/console.css");
/// The script, compiled in.
const JS: &str = include_str!("console/assets/console.js");

/// Only this console's own script, stylesheet and forms; no framing.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
                      base-uri 'none'";

fn set_header(response: &mut RouteResponse, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> RouteResponse {
    let mut response = http::Response::new(bytes::Bytes::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn html(status: StatusCode, body: String) -> RouteResponse {
    response(status, "text/html; charset=utf-8", body)
}

fn json(status: StatusCode, body: String) -> RouteResponse {
    response(status, "application/json", body)
}

fn asset(content_type: &'static str, text: &'static str) -> RouteResponse {
    let mut response = response(StatusCode::OK, content_type, text.to_owned());
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("max-age=300"));
    response
}

/// A 303 to `location` (a path of this console), optionally setting a cookie.
fn redirect(location: &str, cookie: Option<String>) -> RouteResponse {
    let mut response = html(StatusCode::SEE_OTHER, String::new());
    set_header(&mut response, LOCATION, location);
    if let Some(cookie) = cookie {
        set_header(&mut response, SET_COOKIE, &cookie);
    }
    response
}

#[cfg(test)]
mod tests {
    use haven_tls::Role;

    use super::*;

    #[test]
    fn paths_parse_to_routes_and_nothing_else() {
        let get = |path: &str, query: &str| Route::parse(&Method::GET, path, query);
        assert_eq!(get("/", ""), Some(Route::Overview));
        assert_eq!(get("/vm/web%201", ""), Some(Route::Vm("web 1".into())));
        assert_eq!(get("/vm/a%2Fb", ""), None, "a VM name holds no /");
        assert_eq!(get("/vm/a/b", ""), None);
        assert_eq!(
            get("/vms", "policy=gold&status=at-risk&page=2"),
            Some(Route::Vms {
                policy: Some("gold".into()),
                status: Some(Protection::AtRisk),
                page: 2
            })
        );
        assert_eq!(get("/nothing", ""), None);
        assert_eq!(get("/vm/web/backup", ""), None, "actions are POST only");
        assert_eq!(
            Route::parse(&Method::POST, "/vm/web/backup", ""),
            Some(Route::Backup("web".into()))
        );
        assert_eq!(Route::parse(&Method::POST, "/", ""), None);
        assert_eq!(Route::parse(&Method::DELETE, "/vm/web", ""), None);
    }

    #[test]
    fn pages_follow_the_rules_of_their_rpcs() {
        let caller = |role| Caller {
            identity: haven_tls::Identity::new(role, "x").unwrap(),
            credential: crate::auth::Credential::Token,
        };
        let backup = Route::Backup("web".into());
        for (role, reads, backs_up, audit) in [
            (Role::Viewer, true, false, false),
            (Role::Operator, true, true, false),
            (Role::Admin, true, true, true),
            (Role::Worker, false, false, false),
        ] {
            let caller = caller(role);
            assert_eq!(
                allowed(&caller, Route::Overview.api_method()),
                reads,
                "{role}"
            );
            assert_eq!(
                allowed(&caller, Route::JobsJson.api_method()),
                reads,
                "{role}"
            );
            assert_eq!(allowed(&caller, backup.api_method()), backs_up, "{role}");
            assert_eq!(allowed(&caller, Route::Audit.api_method()), audit, "{role}");
        }
    }
}
