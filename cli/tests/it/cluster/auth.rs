//! The control plane trusts no one by default. Against a real `haven coordinator`
//! with mutual TLS:
//! - every RPC of both services (read from the proto file), called without
//!   credentials, with a bad token, with a certificate of another CA, with an expired
//!   certificate, and as each role the method does not allow, is refused —
//!   UNAUTHENTICATED or PERMISSION_DENIED, or the TLS handshake fails — and nothing
//!   changes;
//! - a worker certificate cannot act as another worker, nor fail or commit a job it
//!   does not own;
//! - a policy whose `replicate_to` is off the allowlist is refused with its line,
//!   and nothing is applied;
//! - an API token works over TLS without a certificate until it is revoked;
//! - the audit log holds exactly one record per mutating call made.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use haven_coordinator::auth::rules::{self, Rule};
use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_tls::Role;
use haven_tls::connector::ClientTlsFiles;
use serde_json::Value;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::support::{
    cluster::Cli,
    haven::haven,
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

/// A coordinator on the embedded store with TLS, its CA and an admin CLI.
struct Coordinator {
    url: String,
    pki: Pki,
    admin: Cli,
    allowed: String,
    _process: Guard,
}

impl Coordinator {
    fn start(dir: &Path) -> Self {
        let pki = Pki::new(dir);
        let port = free_port();
        let allowed = dir.join("allowed").to_str().unwrap().to_owned();
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_path = {:?}\nworker_lease_seconds = 30\n\
                 allowed_repositories = [{:?}]\n{}",
                dir.join("state.redb"),
                format!("{allowed}*"),
                pki.coordinator_toml()
            ),
        )
        .unwrap();
        let process = spawn_logged(
            &mut haven(&["coordinator", "--config", config.to_str().unwrap()]),
            &dir.join("coordinator.log"),
        );
        let url = format!("https://127.0.0.1:{port}");
        let admin = pki.admin(&url);
        admin.wait_until_answering();
        Self {
            url,
            pki,
            admin,
            allowed,
            _process: process,
        }
    }

    /// What an attacker could change: jobs, VMs, tokens.
    fn state(&self) -> (String, String, String) {
        (
            self.admin.ok(&["job", "list", "--limit", "0", "--json"]),
            self.admin.ok(&["vm", "list", "--json"]),
            self.admin.ok(&["token", "list", "--json"]),
        )
    }

    /// A channel presenting `identity` (certificate and key) over TLS, trusting
    /// this cluster's CA.
    async fn channel(
        &self,
        identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Result<Channel, String> {
        let tls = ClientTlsFiles {
            ca: self.pki.ca(),
            identity,
        }
        .reloading("test client")
        .unwrap();
        let (endpoint, _) = haven_tls::connector::endpoint(&self.url).unwrap();
        haven_tls::connector::connect(endpoint, Some(tls))
            .await
            .map_err(|error| format!("{error:?}"))
    }
}

/// Sends raw protobuf bytes: any method can be called with an empty message.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Calls `path` with an empty message (and `token`, if any); the status.
async fn call(channel: Channel, path: &str, token: Option<&str>) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    let mut request = tonic::Request::new(Vec::new());
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.server_streaming(request, path, Raw).await.map(drop)
}

/// A caller to try every method as.
enum Caller {
    /// TLS but no certificate and no token.
    Nobody,
    /// A well-formed token nobody issued.
    ForgedToken,
    /// A certificate of this role.
    Role(Role),
    /// An admin certificate of another CA.
    OtherCa,
    /// An expired admin certificate of this CA.
    Expired,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_callers_without_the_right_identity() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(dir.path());
    let other = Pki::new(&dir.path().join("other"));
    let before = coordinator.state();

    let mut callers = vec![
        Caller::Nobody,
        Caller::ForgedToken,
        Caller::OtherCa,
        Caller::Expired,
    ];
    callers.extend(Role::ALL.map(Caller::Role));
    let mut audited_refusals = 0;
    let methods = rules::proto_methods();
    assert!(methods.len() >= 22, "{methods:?}");
    for path in &methods {
        let rule =
            rules::rule(path).unwrap_or_else(|| panic!("{path} has no rule in auth::rules::RULES"));
        for caller in &callers {
            let (identity, token) = match caller {
                Caller::Nobody => (None, None),
                Caller::ForgedToken => {
                    (None, Some(format!("haven-token:admin:{}", "ab".repeat(32))))
                }
                Caller::Role(role) => (
                    Some(coordinator.pki.issue(role.as_str(), &format!("{role}-1"))),
                    None,
                ),
                Caller::OtherCa => (Some(other.issue("admin", "intruder")), None),
                Caller::Expired => (
                    Some(
                        coordinator
                            .pki
                            .issue_with("admin", "expired", &["--days", "-1"]),
                    ),
                    None,
                ),
            };
            if let Caller::Role(role) = caller
                && rule.rule.allows(*role)
            {
                continue;
            }
            let result = match coordinator.channel(identity).await {
                Ok(channel) => call(channel, path, token.as_deref()).await,
                Err(error) => Err(Status::unavailable(error)),
            };
            let status = result.expect_err(&format!("{path} must refuse this caller"));
            match caller {
                Caller::Nobody | Caller::ForgedToken => {
                    assert_eq!(status.code(), Code::Unauthenticated, "{path}: {status:?}");
                    assert!(
                        !status.message().contains("abab"),
                        "a refusal echoes the token"
                    );
                }
                Caller::Role(_) => {
                    assert_eq!(status.code(), Code::PermissionDenied, "{path}: {status:?}");
                }
                // The handshake fails: the certificate never reaches a handler.
                Caller::OtherCa | Caller::Expired => {
                    assert!(
                        matches!(
                            status.code(),
                            Code::Unavailable | Code::Unknown | Code::Cancelled
                        ),
                        "{path}: {status:?}"
                    );
                    continue;
                }
            }
            if rule.audited {
                audited_refusals += 1;
            }
        }
    }
    assert_eq!(
        coordinator.state(),
        before,
        "a refused call changed the state"
    );
    assert!(matches!(
        rules::rule(&methods[0]).unwrap().rule,
        Rule::AtLeast(Role::Worker)
    ));

    // A worker acts only as itself, and only on jobs it owns.
    let w1 = coordinator
        .channel(Some(coordinator.pki.issue("worker", "w1")))
        .await
        .unwrap();
    let w2 = coordinator
        .channel(Some(coordinator.pki.issue("worker", "w2")))
        .await
        .unwrap();
    let register = |id: &str, host: &str, vm: &str| v1::RegisterRequest {
        worker_id: id.into(),
        instance_id: format!("{id}-instance"),
        hosts: vec![v1::Host {
            name: host.into(),
            vms: vec![v1::Vm {
                name: vm.into(),
                host: host.into(),
                disks: vec![v1::Disk {
                    name: "vda".into(),
                    size_bytes: 1 << 20,
                }],
                ..Default::default()
            }],
        }],
        max_jobs: 1,
        version: String::new(),
        max_boot_tests: 0,
    };
    let refused = WorkerServiceClient::new(w1.clone())
        .register(register("w2", "h2", "vm2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let lease1 = WorkerServiceClient::new(w1.clone())
        .register(register("w1", "h1", "vm1"))
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    let lease2 = WorkerServiceClient::new(w2.clone())
        .register(register("w2", "h2", "vm2"))
        .await
        .unwrap()
        .into_inner()
        .lease_id;
    let w1_identity = v1::WorkerIdentity {
        worker_id: "w1".into(),
        instance_id: "w1-instance".into(),
        lease_id: lease1,
    };
    let w2_identity = v1::WorkerIdentity {
        worker_id: "w2".into(),
        instance_id: "w2-instance".into(),
        lease_id: lease2,
    };
    let repository = format!("{}-repo", coordinator.allowed);
    let job_id = coordinator.admin.start_backup("vm1", &repository);
    let jobs = WorkerServiceClient::new(w1.clone())
        .poll_jobs(v1::PollJobsRequest {
            worker: Some(w1_identity.clone()),
            wait_ms: 5000,
            running_job_ids: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .jobs;
    let job = jobs
        .iter()
        .find(|job| job.job_id == job_id)
        .expect("w1 gets its job");
    let as_w1 = WorkerServiceClient::new(w2.clone())
        .fail_job(v1::FailJobRequest {
            worker: Some(w1_identity.clone()),
            job_id: job_id.clone(),
            fencing_token: job.fencing_token,
            error: "forged".into(),
            retryable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(as_w1.code(), Code::PermissionDenied, "{as_w1:?}");
    let not_owned = WorkerServiceClient::new(w2.clone())
        .fail_job(v1::FailJobRequest {
            worker: Some(w2_identity.clone()),
            job_id: job_id.clone(),
            fencing_token: job.fencing_token,
            error: "not mine".into(),
            retryable: false,
        })
        .await
        .unwrap_err();
    assert_eq!(not_owned.code(), Code::FailedPrecondition, "{not_owned:?}");
    // The refusal names neither the fencing token nor the ownership's revision.
    let message = not_owned.message();
    assert!(
        !message.contains("token") && !message.contains("revision"),
        "{not_owned:?}"
    );
    let commit = WorkerServiceClient::new(w2.clone())
        .commit_snapshot(v1::CommitSnapshotRequest {
            worker: Some(w2_identity),
            job_id: job_id.clone(),
            fencing_token: job.fencing_token,
            manifest_key: "snapshots/vm1/2999-01-01T00:00:00Z".into(),
            manifest_blob: vec![1, 2, 3],
            snapshot: Some(v1::SnapshotInfo {
                vm: "vm1".into(),
                timestamp: "2999-01-01T00:00:00Z".into(),
                repository: repository.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(commit.code(), Code::FailedPrecondition, "{commit:?}");
    let jobs: Vec<Value> =
        serde_json::from_str(&coordinator.admin.ok(&["job", "list", "--json"])).unwrap();
    let listed = jobs
        .iter()
        .find(|j| j["job_id"] == job_id.as_str())
        .unwrap();
    assert_eq!(listed["state"], "running", "{listed}");
    assert_eq!(listed["worker"], "w1", "{listed}");

    // A policy replicating off the allowlist: refused with its line, nothing applied.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"gold\"\nschedule = \"0 0 1 1 *\"\nrepository = {repository:?}\n\
             replicate_to = \"s3://exfiltrate/x?endpoint=http://203.0.113.9:9000\"\n"
        ),
    )
    .unwrap();
    let out = coordinator
        .admin
        .run(&["policy", "apply", policy.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("policy.toml:5: replicate_to: repository \"s3://exfiltrate"),
        "{stderr}"
    );
    let run = coordinator.admin.run(&["policy", "run", "gold"]);
    assert!(!run.status.success(), "nothing was applied");

    // An operator's token, over TLS without a certificate, until revoked.
    let token = coordinator
        .admin
        .ok(&["token", "create", "ops", "--role", "operator"])
        .trim()
        .to_owned();
    assert!(token.starts_with("haven-token:ops:"), "{token}");
    let token_file = dir.path().join("ops.token");
    std::fs::write(&token_file, &token).unwrap();
    let ops = Cli::new(&coordinator.url)
        .with_env("HAVEN_CA_FILE", coordinator.pki.ca().to_str().unwrap())
        .with_env("HAVEN_TOKEN_FILE", token_file.to_str().unwrap());
    ops.ok(&["vm", "list"]);
    let denied = ops.run(&["policy", "apply", policy.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("may not call"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let listed = coordinator.admin.ok(&["token", "list", "--json"]);
    assert!(
        !listed.contains(token.rsplit(':').next().unwrap()),
        "the secret is never listed"
    );
    coordinator.admin.ok(&["token", "revoke", "ops"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ops.run(&["vm", "list"]).status.success() {
        assert!(Instant::now() < deadline, "a revoked token keeps working");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Mutating calls made above: the refusals, `job run`, the refused apply, the
    // `policy run` of the policy that was not applied, the token's create, its
    // refused apply and its revocation.
    let audit: Vec<Value> = serde_json::from_str(
        &coordinator
            .admin
            .ok(&["audit", "--json", "--limit", "100000"]),
    )
    .unwrap();
    let made = audited_refusals + 6;
    assert_eq!(audit.len(), made, "{audit:#?}");
    let by_admin = |method: &str, result: &str| {
        audit
            .iter()
            .filter(|r| r["who"] == "admin admin" && r["method"] == method && r["result"] == result)
            .count()
    };
    assert_eq!(by_admin("AdminService/RunJob", "Ok"), 1);
    assert_eq!(by_admin("AdminService/ApplyPolicies", "InvalidArgument"), 1);
    assert_eq!(by_admin("AdminService/CreateToken", "Ok"), 1);
    let policy_runs = audit
        .iter()
        .filter(|r| r["who"] == "admin admin" && r["method"] == "AdminService/RunPolicy")
        .count();
    assert_eq!(policy_runs, 1);
    assert_eq!(by_admin("AdminService/RevokeToken", "Ok"), 1);
    assert!(audit.iter().any(|r| r["who"] == "operator ops"
        && r["credential"] == "token"
        && r["result"] == "PermissionDenied"));
    assert!(
        audit
            .iter()
            .all(|r| !r.to_string().contains(token.rsplit(':').next().unwrap()))
    );
}
