//! Talking to a running coordinator: `haven vm`, `haven policy`, `haven job`, and the
//! cluster's snapshot catalog. Every call follows the leader among the given URLs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use haven_proto::LeaderClient;
use haven_proto::v1::{self, admin_service_client::AdminServiceClient};
use serde_json::json;

use crate::common::{CoordinatorUrl, OutputArgs, catalog, human_bytes, print_json};

/// `haven vm ...`
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// List the VMs workers reported, with their hosts and workers.
    List {
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `haven policy ...`
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Replace the cluster's policies with those of a policy.toml.
    Apply {
        /// The policy file.
        file: PathBuf,
        /// Only check the file here, as the coordinator would, and change nothing.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
    /// Start a round of a policy now, outside its schedule.
    Run {
        /// Policy name.
        name: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `haven job ...`
#[derive(Debug, clap::Subcommand)]
pub enum JobCommand {
    /// Back up a VM now.
    Run {
        /// VM name.
        vm: String,
        /// Repository URL (default: that of the first policy selecting the VM).
        #[arg(long)]
        repo: Option<String>,
        #[command(flatten)]
        start: JobStart,
    },
    /// Collect garbage in a repository now, on a worker, with the cluster's pins.
    Gc {
        /// Repository URL.
        #[arg(long)]
        repo: String,
        /// Unreferenced objects younger than this many seconds are kept.
        #[arg(long, default_value_t = 3600)]
        margin_seconds: u64,
        #[command(flatten)]
        start: JobStart,
    },
    /// List jobs, newest first.
    List {
        /// Only this VM's.
        #[arg(long)]
        vm: Option<String>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a job's progress until it ends.
    Watch {
        /// Job id.
        id: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Cancel a pending or running job: it fails at once, and its worker stops it.
    Cancel {
        /// Job id.
        id: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// Where `haven job run` and `haven job gc` start their job, and whether they follow it.
#[derive(Debug, clap::Args)]
pub struct JobStart {
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
    #[command(flatten)]
    coordinator: CoordinatorUrl,
    #[command(flatten)]
    output: OutputArgs,
}

impl JobStart {
    /// Starts the job, then prints its id or follows it.
    async fn run(&self, request: v1::RunJobRequest) -> Result<()> {
        let client = self.coordinator.client()?;
        let id = client
            .unary(AdminServiceClient::new, request, |mut c, r| async move {
                c.run_job(r).await
            })
            .await?
            .job_id;
        if self.watch {
            return watch_job(&client, &id, self.output.json).await;
        }
        if self.output.json {
            print_json(&json!({ "job_id": id }))
        } else {
            println!("{id}");
            Ok(())
        }
    }
}

fn kind_name(kind: i32) -> &'static str {
    match v1::JobKind::try_from(kind).unwrap_or(v1::JobKind::Unspecified) {
        v1::JobKind::Backup | v1::JobKind::Unspecified => "backup",
        v1::JobKind::Prune => "prune",
        v1::JobKind::Gc => "gc",
        v1::JobKind::Replicate => "replicate",
        v1::JobKind::BootTest => "boot_test",
    }
}

/// A boot test's verdict as `job list` shows it; `None` for other jobs.
fn boot_verdict_name(verdict: i32) -> Option<&'static str> {
    match v1::BootVerdict::try_from(verdict).unwrap_or(v1::BootVerdict::Unspecified) {
        v1::BootVerdict::Passed => Some("passed"),
        v1::BootVerdict::Failed => Some("failed"),
        v1::BootVerdict::Unspecified => None,
    }
}

fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state).unwrap_or(v1::JobState::Unspecified) {
        v1::JobState::Pending => "pending",
        v1::JobState::Assigned => "running",
        v1::JobState::Committing => "committing",
        v1::JobState::Succeeded => "succeeded",
        v1::JobState::Failed => "failed",
        v1::JobState::Unspecified => "unknown",
    }
}

/// A job status as JSON (the CLI's stable output).
pub fn job_json(job: &v1::JobStatus) -> serde_json::Value {
    json!({
        "job_id": job.job_id,
        "kind": kind_name(job.kind),
        "summary": job.summary,
        "boot_verdict": boot_verdict_name(job.boot_verdict),
        "vm": job.vm,
        "host": job.host,
        "policy": job.policy,
        "repository": job.repository,
        "state": state_name(job.state),
        "worker": job.worker,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "bytes_per_second": job.bytes_per_second,
        "bytes_uploaded": job.bytes_uploaded,
        "created_unix_ms": job.created_unix_ms,
        "finished_unix_ms": job.finished_unix_ms,
        "snapshot": job.snapshot,
        "error": job.error,
        "attempts": job.attempts.iter().map(|a| json!({
            "number": a.number,
            "worker": a.worker,
            "assigned_unix_ms": a.assigned_unix_ms,
            "ended_unix_ms": a.ended_unix_ms,
            "outcome": a.outcome,
        })).collect::<Vec<_>>(),
    })
}

fn job_line(job: &v1::JobStatus) -> String {
    let progress = if job.bytes_total > 0 {
        format!(
            " {}/{} at {}/s",
            human_bytes(job.bytes_done),
            human_bytes(job.bytes_total),
            human_bytes(job.bytes_per_second)
        )
    } else {
        String::new()
    };
    let tail = if !job.snapshot.is_empty() {
        format!(" -> {}", job.snapshot)
    } else if !job.summary.is_empty() {
        format!(": {}", job.summary)
    } else if !job.error.is_empty() {
        format!(": {}", job.error)
    } else {
        String::new()
    };
    format!(
        "{} {} {} {} on {}{}{}",
        job.job_id,
        kind_name(job.kind),
        if job.vm.is_empty() {
            &job.repository
        } else {
            &job.vm
        },
        state_name(job.state),
        if job.worker.is_empty() {
            "-"
        } else {
            &job.worker
        },
        progress,
        tail
    )
}

/// Runs `haven vm`.
pub async fn vm(command: VmCommand) -> Result<()> {
    let VmCommand::List {
        coordinator,
        output,
    } = command;
    let client = coordinator.client()?;
    let vms = client
        .call(|c| async move {
            AdminServiceClient::new(c)
                .list_vms(v1::ListVmsRequest {})
                .await
        })
        .await?
        .into_inner()
        .vms;
    if output.json {
        let list: Vec<_> = vms
            .iter()
            .map(|vm| {
                json!({
                    "name": vm.name, "host": vm.host, "workers": vm.workers, "labels": vm.labels,
                    "disks": vm.disks.iter().map(|d| json!({"name": d.name, "size_bytes": d.size_bytes})).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&list);
    }
    for vm in vms {
        let size: u64 = vm.disks.iter().map(|d| d.size_bytes).sum();
        println!(
            "{} on {} ({} disks, {}), workers: {}",
            vm.name,
            vm.host,
            vm.disks.len(),
            human_bytes(size),
            vm.workers.join(",")
        );
    }
    Ok(())
}

/// Runs `haven policy`.
pub async fn policy(command: PolicyCommand) -> Result<()> {
    let (file, check, coordinator) = match command {
        PolicyCommand::Apply {
            file,
            check,
            coordinator,
        } => (file, check, coordinator),
        PolicyCommand::Run {
            name,
            coordinator,
            output,
        } => {
            let request = v1::RunPolicyRequest { policy: name };
            let jobs = coordinator
                .client()?
                .unary(AdminServiceClient::new, request, |mut c, r| async move {
                    c.run_policy(r).await
                })
                .await?
                .job_ids;
            if output.json {
                return print_json(&json!({ "job_ids": jobs }));
            }
            println!("{} jobs started", jobs.len());
            for job in jobs {
                println!("{job}");
            }
            return Ok(());
        }
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if check {
        let name = file.display().to_string();
        // The coordinator's allowlist is checked when the file is applied.
        let allowlist = haven_coordinator::policy::RepositoryAllowlist::any();
        let policies = match haven_coordinator::policy::parse_policies(&name, &text, &allowlist) {
            Ok(policies) => policies,
            Err(errors) => {
                for line in errors {
                    eprintln!("error: {line}");
                }
                bail!("policy file rejected");
            }
        };
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        println!("{name}: ok ({})", names.join(", "));
        return Ok(());
    }
    let request = v1::ApplyPoliciesRequest {
        file_name: file.display().to_string(),
        policy_toml: text,
    };
    let client = coordinator.client()?;
    let reply = client
        .unary(AdminServiceClient::new, request, |mut c, r| async move {
            c.apply_policies(r).await
        })
        .await;
    match reply {
        Ok(reply) => {
            println!("applied policies: {}", reply.policies.join(", "));
            Ok(())
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            for line in status.message().lines() {
                eprintln!("error: {line}");
            }
            bail!("policy file rejected; nothing changed")
        }
        Err(status) => Err(status.into()),
    }
}

/// Runs `haven job`.
pub async fn job(command: JobCommand) -> Result<()> {
    match command {
        JobCommand::Run { vm, repo, start } => {
            let request = v1::RunJobRequest {
                vm,
                repository: repo.unwrap_or_default(),
                kind: v1::JobKind::Backup as i32,
                gc_margin_seconds: 0,
            };
            start.run(request).await
        }
        JobCommand::Gc {
            repo,
            margin_seconds,
            start,
        } => {
            let request = v1::RunJobRequest {
                vm: String::new(),
                repository: repo,
                kind: v1::JobKind::Gc as i32,
                gc_margin_seconds: margin_seconds,
            };
            start.run(request).await
        }
        JobCommand::List {
            vm,
            limit,
            coordinator,
            output,
        } => {
            let client = coordinator.client()?;
            let request = v1::ListJobsRequest {
                vm: vm.unwrap_or_default(),
                limit,
            };
            let jobs = client
                .unary(AdminServiceClient::new, request, |mut c, r| async move {
                    c.list_jobs(r).await
                })
                .await?
                .jobs;
            if output.json {
                return print_json(&jobs.iter().map(job_json).collect::<Vec<_>>());
            }
            for job in &jobs {
                println!("{}", job_line(job));
            }
            Ok(())
        }
        JobCommand::Watch {
            id,
            coordinator,
            output,
        } => watch_job(&coordinator.client()?, &id, output.json).await,
        JobCommand::Cancel {
            id,
            coordinator,
            output,
        } => {
            let request = v1::CancelJobRequest { job_id: id };
            let job = coordinator
                .client()?
                .unary(AdminServiceClient::new, request, |mut c, r| async move {
                    c.cancel_job(r).await
                })
                .await?
                .job
                .context("the coordinator did not return the cancelled job")?;
            if output.json {
                return print_json(&job_json(&job));
            }
            println!("{}", job_line(&job));
            Ok(())
        }
    }
}

/// Prints a job's status at every change until it ends (following failovers); fails
/// if the job failed.
async fn watch_job(client: &LeaderClient, id: &str, json_lines: bool) -> Result<()> {
    loop {
        let request = v1::WatchJobRequest {
            job_id: id.to_string(),
        };
        let mut stream = client
            .unary(AdminServiceClient::new, request, |mut c, r| async move {
                c.watch_job(r).await
            })
            .await?;
        let mut last = None;
        loop {
            match stream.message().await {
                Ok(Some(status)) => {
                    if json_lines {
                        println!("{}", job_json(&status));
                    } else {
                        println!("{}", job_line(&status));
                    }
                    last = Some(status);
                }
                Ok(None) => break,
                Err(status) if status.code() == tonic::Code::NotFound => return Err(status.into()),
                // The leader went away mid-stream: watch again on the next one.
                Err(_) => break,
            }
        }
        if let Some(status) = last {
            match v1::JobState::try_from(status.state) {
                Ok(v1::JobState::Succeeded) => return Ok(()),
                Ok(v1::JobState::Failed) => bail!("job {id} failed: {}", status.error),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Prints the cluster's snapshot catalog (`haven snapshots --coordinator`).
pub async fn snapshots(
    coordinator: &CoordinatorUrl,
    vm: Option<String>,
    json_out: bool,
) -> Result<()> {
    let list = catalog(coordinator, vm).await?;
    if json_out {
        let list: Vec<_> = list
            .iter()
            .map(|s| {
                json!({
                    "snapshot": format!("{}@{}", s.vm, s.timestamp),
                    "vm": s.vm, "timestamp": s.timestamp, "repository": s.repository,
                    "bytes_uploaded": s.bytes_uploaded, "job_id": s.job_id,
                    "disks": s.disks.iter().map(|d| json!({"name": d.name, "size_bytes": d.size_bytes})).collect::<Vec<_>>(),
                })
            })
            .collect();
        return print_json(&list);
    }
    for s in list {
        println!(
            "{}@{}  {}  ({} stored)",
            s.vm,
            s.timestamp,
            s.repository,
            human_bytes(s.bytes_uploaded)
        );
    }
    Ok(())
}
