//! Scale simulation of the control plane (issue 5's benchmark): one coordinator process
//! (`haven coordinator`, on etcd or the embedded store) and hundreds of simulated
//! workers in this process, each a real gRPC client that registers VMs, heartbeats,
//! long-polls for jobs and commits a real sealed manifest for each, without moving any
//! disk data.
//!
//! ```text
//! cargo bench -p haven-coordinator --bench scale -- --haven target/release/haven \
//!     [--etcd http://127.0.0.1:2379] [--vms 10000] [--workers 500] [--plain]
//! ```
//! The control plane runs on mutual TLS, as deployed; `--plain` runs it on plain TCP
//! with an API token per client instead, the baseline that measures what TLS costs.
//! (`bench/cluster-scale.sh` starts a throw-away etcd and runs this.) It prints the time
//! to dispatch a full round, decisions per second, the time until every job committed,
//! the coordinator's CPU seconds and peak RSS, and store requests per job.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use haven_coordinator::auth::tokens::Tokens;
use haven_coordinator::config::CoordinatorConfig;
use haven_coordinator::open_store;
use haven_proto::v1::{
    self, admin_service_client::AdminServiceClient, worker_service_client::WorkerServiceClient,
};
use haven_proto::{ClientSecurity, LeaderClient};
use haven_repo::{Backend, Consistency, Manifest, Repository, SourceInfo};
use haven_tls::connector::ClientTlsFiles;
use haven_tls::pki::{CertificateAuthority, LeafRequest};
use haven_tls::{Identity, Role};

const PASSWORD: &[u8] = b"scale-bench";

struct Options {
    haven: PathBuf,
    etcd: Option<String>,
    vms: usize,
    workers: usize,
    /// Plain TCP and API tokens instead of mutual TLS.
    plain: bool,
}

fn options() -> Options {
    let mut options = Options {
        haven: PathBuf::from("target/release/haven"),
        etcd: None,
        vms: 10_000,
        workers: 500,
        plain: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--haven" => options.haven = args.next().expect("--haven PATH").into(),
            "--etcd" => options.etcd = args.next(),
            "--plain" => options.plain = true,
            "--vms" => options.vms = args.next().and_then(|v| v.parse().ok()).expect("--vms N"),
            "--workers" => {
                options.workers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--workers N")
            }
            _ => {} // `cargo bench` passes --bench.
        }
    }
    options
}

/// CPU seconds and peak RSS (KiB) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, hwm)
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The coordinator's `/metrics`: over TLS with a viewer certificate, or plain HTTP on
/// loopback.
async fn metrics(port: u16, auth: &BenchAuth) -> String {
    let mut curl = tokio::process::Command::new("curl");
    curl.arg("-s");
    match auth {
        BenchAuth::MutualTls(pki) => {
            let (cert, key) = pki.issue_client(Role::Viewer, "scraper");
            curl.arg("--cacert")
                .arg(pki.dir.join("ca.pem"))
                .arg("--cert")
                .arg(cert)
                .arg("--key")
                .arg(key)
                .arg(format!("https://127.0.0.1:{port}/metrics"));
        }
        BenchAuth::Tokens(_) => {
            curl.arg(format!("http://127.0.0.1:{port}/metrics"));
        }
    }
    let out = curl.output().await.expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How the bench's clients authenticate.
enum BenchAuth {
    /// Certificates over TLS, as deployed.
    MutualTls(Box<BenchPki>),
    /// `--plain`: an API token per client name over plain TCP.
    Tokens(std::collections::HashMap<String, String>),
}

impl BenchAuth {
    /// The coordinator.toml lines this mode needs.
    fn coordinator_toml(&self) -> String {
        match self {
            Self::MutualTls(pki) => pki.coordinator_toml(),
            Self::Tokens(_) => String::new(),
        }
    }

    fn url(&self, port: u16) -> String {
        match self {
            Self::MutualTls(_) => format!("https://127.0.0.1:{port}"),
            Self::Tokens(_) => format!("http://127.0.0.1:{port}"),
        }
    }

    /// A leader-following client acting as `name` with `role`.
    fn client(&self, url: &str, role: Role, name: &str) -> LeaderClient {
        match self {
            Self::MutualTls(pki) => pki.client(url, role, name),
            Self::Tokens(tokens) => {
                let security = ClientSecurity {
                    tls: None,
                    token: Some(tokens[name].clone()),
                };
                LeaderClient::new(vec![url.to_owned()], Duration::from_secs(60), security)
                    .expect("client")
            }
        }
    }
}

/// Makes the admin's and every worker's API token in the coordinator's store before
/// the coordinator starts.
async fn make_tokens(config: &std::path::Path, workers: usize) -> BenchAuth {
    let text = std::fs::read_to_string(config).expect("coordinator.toml");
    let config = CoordinatorConfig::parse("coordinator.toml", &text).expect("config");
    let tokens = Tokens::new(open_store(&config).await.expect("store"));
    let mut made = std::collections::HashMap::new();
    let names = std::iter::once(("bench-admin".to_owned(), Role::Admin))
        .chain((0..workers).map(|i| (format!("w{i}"), Role::Worker)));
    for (name, role) in names {
        let token = tokens.create(&name, role, "bench").await.expect("token");
        made.insert(name, token);
    }
    BenchAuth::Tokens(made)
}

/// The bench cluster's CA: the coordinator serves mutual TLS, as deployed, and every
/// simulated worker holds its own certificate.
struct BenchPki {
    dir: PathBuf,
    authority: CertificateAuthority,
}

impl BenchPki {
    fn new(parent: &std::path::Path) -> Self {
        let dir = parent.join("pki");
        std::fs::create_dir_all(&dir).expect("pki dir");
        let (authority, ca) = CertificateAuthority::generate("bench CA", 1).expect("CA");
        ca.write(&dir, "ca", true).expect("write CA");
        let mut server = LeafRequest::new("coordinator", 1);
        server.ip_addresses.push([127, 0, 0, 1].into());
        authority
            .issue(&server)
            .and_then(|issued| issued.write(&dir, "coordinator", true))
            .expect("server certificate");
        Self { dir, authority }
    }

    fn coordinator_toml(&self) -> String {
        format!(
            "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            self.dir.join("coordinator.pem"),
            self.dir.join("coordinator-key.pem"),
            self.dir.join("ca.pem")
        )
    }

    /// A client certificate of `role` for `name`: its certificate and key files.
    fn issue_client(&self, role: Role, name: &str) -> (PathBuf, PathBuf) {
        let request = LeafRequest::client(Identity::new(role, name).expect("identity"), 1);
        self.authority
            .issue(&request)
            .and_then(|issued| issued.write(&self.dir, name, true))
            .expect("client certificate")
    }

    /// A leader-following client holding a certificate of `role` for `name`.
    fn client(&self, url: &str, role: Role, name: &str) -> LeaderClient {
        let (cert, key) = self.issue_client(role, name);
        let tls = ClientTlsFiles {
            ca: self.dir.join("ca.pem"),
            identity: Some((cert, key)),
        }
        .reloading(name)
        .expect("client TLS");
        let security = ClientSecurity {
            tls: Some(tls),
            token: None,
        };
        LeaderClient::new(vec![url.to_owned()], Duration::from_secs(60), security).expect("client")
    }
}

struct Stats {
    assigned: AtomicU64,
    committed: AtomicU64,
    last_assigned_ms: AtomicU64,
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo_path = dir.path().join("repo");
    let repo = Arc::new(
        Repository::init(
            Backend::from_url(repo_path.to_str().unwrap(), true).unwrap(),
            PASSWORD,
            1 << 20,
        )
        .await
        .expect("repo init"),
    );
    let port = free_port();
    let http = free_port();
    let config = dir.path().join("coordinator.toml");
    let write_config = |tls_toml: &str| {
        let etcd = match &options.etcd {
            Some(url) => format!("etcd = [{url:?}]\n"),
            None => String::new(),
        };
        std::fs::write(
            &config,
            format!(
                "id = \"bench\"\nlisten = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
                 state_path = {:?}\nworker_lease_seconds = 20\ntick_ms = 100\n\
                 allowed_repositories = [\"*\"]\n{etcd}{tls_toml}",
                dir.path().join("state.redb").to_str().unwrap(),
            ),
        )
        .unwrap();
    };
    let auth = if options.plain {
        write_config("");
        make_tokens(&config, options.workers).await
    } else {
        let auth = BenchAuth::MutualTls(Box::new(BenchPki::new(dir.path())));
        write_config(&auth.coordinator_toml());
        auth
    };
    let mut command = Command::new(&options.haven);
    command.args(["coordinator", "--config", config.to_str().unwrap()]);
    let log = std::fs::File::create(dir.path().join("coordinator.log")).expect("log");
    let mut coordinator: Child = command
        .env(
            "HAVEN_LOG",
            std::env::var("HAVEN_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("haven coordinator");
    let pid = coordinator.id();
    let url = auth.url(port);
    let client = Arc::new(auth.client(&url, Role::Admin, "bench-admin"));

    // Workers w0..wN; host hK holds VMs K*per_host..; worker i reaches hosts i and i+1.
    let hosts = options.workers;
    let per_host = options.vms.div_ceil(hosts);
    let stats = Arc::new(Stats {
        assigned: AtomicU64::new(0),
        committed: AtomicU64::new(0),
        last_assigned_ms: AtomicU64::new(0),
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..options.workers {
        let reach = [i % hosts, (i + 1) % hosts];
        let hosts: Vec<v1::Host> = reach
            .iter()
            .map(|h| v1::Host {
                name: format!("h{h}"),
                vms: (0..per_host)
                    .map(|n| h * per_host + n)
                    .filter(|n| *n < options.vms)
                    .map(|n| v1::Vm {
                        name: format!("vm{n}"),
                        host: format!("h{h}"),
                        disks: vec![v1::Disk {
                            name: "vda".into(),
                            size_bytes: 10 << 30,
                        }],
                        labels: Default::default(),
                        workers: Vec::new(),
                    })
                    .collect(),
            })
            .collect();
        tasks.push(tokio::spawn(simulated_worker(
            i,
            hosts,
            Arc::new(auth.client(&url, Role::Worker, &format!("w{i}"))),
            repo.clone(),
            stats.clone(),
            started,
        )));
    }
    // Wait for the inventory.
    loop {
        let vms = client
            .call(|c| async move {
                AdminServiceClient::new(c)
                    .list_vms(v1::ListVmsRequest {})
                    .await
            })
            .await
            .map(|r| r.into_inner().vms.len())
            .unwrap_or(0);
        if vms >= options.vms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let registered = started.elapsed();
    let policy = format!(
        "[[policy]]\nname = \"all\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\nmax_per_host = {}\nmax_per_worker = {}\n",
        repo_path.to_str().unwrap(),
        per_host,
        per_host * 2
    );
    client
        .call(|c| {
            let request = v1::ApplyPoliciesRequest {
                file_name: "bench.toml".into(),
                policy_toml: policy.clone(),
            };
            async move { AdminServiceClient::new(c).apply_policies(request).await }
        })
        .await
        .expect("apply policy");
    let before = metrics(http, &auth).await;
    let (cpu_before, _) = usage(pid);
    let round = Instant::now();
    let round_ms = round.duration_since(started).as_millis() as u64;
    let created = client
        .call(|c| async move {
            AdminServiceClient::new(c)
                .run_policy(v1::RunPolicyRequest {
                    policy: "all".into(),
                })
                .await
        })
        .await
        .expect("run policy")
        .into_inner()
        .job_ids
        .len();
    let created_after = round.elapsed();
    while stats.assigned.load(Ordering::Relaxed) < created as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dispatched =
        Duration::from_millis(stats.last_assigned_ms.load(Ordering::Relaxed) - round_ms);
    while stats.committed.load(Ordering::Relaxed) < created as u64 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed = round.elapsed();
    let (cpu_after, rss_kib) = usage(pid);
    let after = metrics(http, &auth).await;
    let per_job = |kind: &str| {
        let name = format!("haven_store_requests_total{{kind=\"{kind}\"}}");
        (metric(&after, &name) - metric(&before, &name)) / created as f64
    };
    println!(
        "scale simulation: {} VMs, {} simulated workers, control plane on {}, store: {}",
        options.vms,
        options.workers,
        if options.plain {
            "plain TCP with API tokens"
        } else {
            "mutual TLS"
        },
        options
            .etcd
            .as_deref()
            .map(|e| format!("etcd {e}"))
            .unwrap_or_else(|| "embedded".into())
    );
    println!(
        "  registration + inventory of all workers: {:.2} s",
        registered.as_secs_f64()
    );
    println!(
        "  round of {created} jobs created in {:.2} s",
        created_after.as_secs_f64()
    );
    println!(
        "  every job dispatched to a worker after {:.2} s ({:.0} decisions/s)",
        dispatched.as_secs_f64(),
        created as f64 / dispatched.as_secs_f64().max(0.001)
    );
    println!(
        "  every job committed after {:.2} s ({:.0} commits/s)",
        completed.as_secs_f64(),
        created as f64 / completed.as_secs_f64().max(0.001)
    );
    println!(
        "  coordinator CPU during the round: {:.2} s; peak RSS {:.0} MiB",
        cpu_after - cpu_before,
        rss_kib as f64 / 1024.0
    );
    println!(
        "  store requests per job during the round: {:.2} writes, {:.2} reads, {:.2} lease calls (heartbeats)",
        per_job("write"),
        per_job("read"),
        per_job("lease")
    );
    for task in tasks {
        task.abort();
    }
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    if let Ok(log) = std::fs::read_to_string(dir.path().join("coordinator.log")) {
        let lines: Vec<&str> = log.lines().collect();
        println!("  coordinator log: {} lines", lines.len());
        for line in lines.iter().take(5) {
            println!("    {line}");
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn simulated_worker(
    index: usize,
    hosts: Vec<v1::Host>,
    client: Arc<LeaderClient>,
    repo: Arc<Repository>,
    stats: Arc<Stats>,
    started: Instant,
) {
    let register = v1::RegisterRequest {
        worker_id: format!("w{index}"),
        instance_id: format!("sim{index}"),
        hosts,
        max_jobs: 1_000,
        version: "bench".into(),
        max_boot_tests: 0,
    };
    let reply = client
        .call(|c| {
            let request = register.clone();
            async move { WorkerServiceClient::new(c).register(request).await }
        })
        .await
        .expect("register")
        .into_inner();
    let identity = v1::WorkerIdentity {
        worker_id: register.worker_id.clone(),
        instance_id: register.instance_id.clone(),
        lease_id: reply.lease_id,
    };
    let heartbeat = {
        let client = client.clone();
        let identity = identity.clone();
        let every = Duration::from_millis(u64::from(reply.heartbeat_interval_ms));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let request = v1::HeartbeatRequest {
                    worker: Some(identity.clone()),
                };
                let _ = client
                    .call(|c| {
                        let request = request.clone();
                        async move { WorkerServiceClient::new(c).heartbeat(request).await }
                    })
                    .await;
            }
        })
    };
    let mut seen = std::collections::HashSet::new();
    loop {
        let request = v1::PollJobsRequest {
            worker: Some(identity.clone()),
            wait_ms: 10_000,
            running_job_ids: Vec::new(),
        };
        let Ok(reply) = client
            .call(|c| {
                let request = request.clone();
                async move { WorkerServiceClient::new(c).poll_jobs(request).await }
            })
            .await
        else {
            continue;
        };
        let jobs: Vec<v1::JobAssignment> = reply
            .into_inner()
            .jobs
            .into_iter()
            .filter(|j| seen.insert(j.job_id.clone()))
            .collect();
        if jobs.is_empty() {
            continue;
        }
        let now = started.elapsed().as_millis() as u64;
        stats.last_assigned_ms.fetch_max(now, Ordering::Relaxed);
        stats
            .assigned
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for job in jobs {
            let manifest = Manifest {
                version: haven_repo::FORMAT_VERSION,
                vm: job.vm.clone(),
                timestamp: "2026-01-01T00:00:00Z".into(),
                created_by: "scale bench".into(),
                source: SourceInfo {
                    kind: "simulated".into(),
                    origin: job.host.clone(),
                },
                consistency: Consistency::CrashConsistent,
                consistency_reason: None,
                parent: None,
                disks: Vec::new(),
                vm_config: None,
                labels: Default::default(),
            };
            let (id, blob) = repo.seal_manifest(&manifest).expect("seal");
            let request = v1::CommitSnapshotRequest {
                worker: Some(identity.clone()),
                job_id: job.job_id.clone(),
                fencing_token: job.fencing_token,
                manifest_key: id.manifest_key(),
                manifest_blob: blob,
                snapshot: Some(v1::SnapshotInfo {
                    vm: id.vm.clone(),
                    timestamp: id.timestamp.clone(),
                    repository: job.repository.clone(),
                    disks: Vec::new(),
                    job_id: job.job_id.clone(),
                    ..Default::default()
                }),
            };
            match client
                .call(|c| {
                    let request = request.clone();
                    async move { WorkerServiceClient::new(c).commit_snapshot(request).await }
                })
                .await
            {
                Ok(_) => {
                    stats.committed.fetch_add(1, Ordering::Relaxed);
                }
                Err(status) => eprintln!("commit of {} failed: {}", job.job_id, status.message()),
            }
        }
        if heartbeat.is_finished() {
            return;
        }
    }
}
