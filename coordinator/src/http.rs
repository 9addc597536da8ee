//! `/healthz` and `/metrics` (Prometheus text format) of a replica.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::model::JobState;
use crate::replica::{Replica, Role};

/// Serves the HTTP endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    replica: Arc<Replica>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener");
                    continue;
                }
            },
        };
        let replica = replica.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let replica = replica.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            respond(&replica, request.uri().path()).await,
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(replica: &Replica, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => match replica.role().await {
            Role::Leader(_) => (StatusCode::OK, "ok: leader\n".to_string()),
            Role::Follower(Some(url)) => (StatusCode::OK, format!("ok: follower of {url}\n")),
            Role::Follower(None) => (StatusCode::OK, "ok: no leader elected yet\n".to_string()),
        },
        "/metrics" => (StatusCode::OK, metrics(replica).await),
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn metrics(replica: &Replica) -> String {
    let mut out = String::new();
    let role = replica.role().await;
    let is_leader = matches!(role, Role::Leader(_));
    let _ = writeln!(
        out,
        "# HELP haven_coordinator_is_leader 1 if this replica leads."
    );
    let _ = writeln!(out, "# TYPE haven_coordinator_is_leader gauge");
    let _ = writeln!(out, "haven_coordinator_is_leader {}", u8::from(is_leader));
    let Role::Leader(leader) = role else {
        return out;
    };
    let jobs = leader.jobs(None, 0).await;
    let _ = writeln!(out, "# HELP haven_jobs Jobs by state.");
    let _ = writeln!(out, "# TYPE haven_jobs gauge");
    for (state, name) in [
        (JobState::Pending, "pending"),
        (JobState::Assigned, "assigned"),
        (JobState::Committing, "committing"),
        (JobState::Succeeded, "succeeded"),
        (JobState::Failed, "failed"),
    ] {
        let count = jobs.iter().filter(|(j, _)| j.state == state).count();
        let _ = writeln!(out, "haven_jobs{{state=\"{name}\"}} {count}");
    }
    let workers = leader.workers().await.len();
    let _ = writeln!(out, "# HELP haven_workers Live workers.");
    let _ = writeln!(out, "# TYPE haven_workers gauge");
    let _ = writeln!(out, "haven_workers {workers}");
    let stats = leader.store_stats();
    let _ = writeln!(
        out,
        "# HELP haven_store_requests_total Metadata store requests."
    );
    let _ = writeln!(out, "# TYPE haven_store_requests_total counter");
    let _ = writeln!(
        out,
        "haven_store_requests_total{{kind=\"read\"}} {}",
        stats.reads
    );
    let _ = writeln!(
        out,
        "haven_store_requests_total{{kind=\"write\"}} {}",
        stats.writes
    );
    let _ = writeln!(
        out,
        "haven_store_requests_total{{kind=\"lease\"}} {}",
        stats.lease_calls
    );
    out
}
