//! `haven pki`, `haven token` and `haven audit`: the control plane's credentials and
//! its trail.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use haven_proto::v1::{self, admin_service_client::AdminServiceClient};
use haven_tls::pki::{CertificateAuthority, LeafRequest};
use haven_tls::{Identity, Role};
use serde_json::json;

use crate::common::{CoordinatorUrl, OutputArgs, print_json};

/// `haven pki ...`: a private CA for sites without one.
#[derive(Debug, clap::Subcommand)]
pub enum PkiCommand {
    /// Make a CA: DIR/ca.pem (give it to every component) and DIR/ca-key.pem (keep it
    /// offline: whoever holds it can mint any identity).
    Init {
        /// Folder of the CA.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's name.
        #[arg(long, default_value = "Haven private CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a certificate signed by the CA in DIR: OUT/NAME.pem and OUT/NAME-key.pem.
    Issue {
        /// worker, viewer, operator, admin (client identities) or server.
        kind: String,
        /// The worker id, the person or tool, or the server's name.
        name: String,
        /// Folder of the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Folder for the certificate and key (default: the CA's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// DNS names of a server (default for `server`: NAME).
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// IP addresses of a server.
        #[arg(long = "ip")]
        ip_addresses: Vec<IpAddr>,
        /// Validity in days (0 or less: already expired, for tests of refusal).
        #[arg(long, default_value_t = 365, allow_negative_numbers = true)]
        days: i64,
        /// Replace an existing certificate and key of that name.
        #[arg(long)]
        force: bool,
    },
}

/// `haven token ...`: API tokens for callers without a certificate.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once; only its hash is stored).
    Create {
        /// Its name (the caller's name in logs and the audit).
        name: String,
        /// viewer, operator, admin or worker.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        coordinator: CoordinatorUrl,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Revoke a token: refused from the next call on (within seconds on every replica).
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        coordinator: CoordinatorUrl,
    },
}

/// Arguments of `haven audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only records of the last N hours.
    #[arg(long)]
    since_hours: Option<u64>,
    /// At most N records (the newest).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    #[command(flatten)]
    coordinator: CoordinatorUrl,
    #[command(flatten)]
    output: OutputArgs,
}

/// Runs `haven pki`.
pub fn pki(command: PkiCommand) -> Result<()> {
    match command {
        PkiCommand::Init { dir, name, days } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let (_, issued) = CertificateAuthority::generate(&name, days)?;
            let (cert, key) = issued.write(&dir, "ca", false)?;
            println!("CA certificate: {}", cert.display());
            println!("CA key:         {} (keep it offline)", key.display());
            Ok(())
        }
        PkiCommand::Issue {
            kind,
            name,
            dir,
            out,
            mut dns_names,
            ip_addresses,
            days,
            force,
        } => {
            let authority =
                CertificateAuthority::load(&dir.join("ca.pem"), &dir.join("ca-key.pem"))?;
            let request = if kind == "server" {
                if dns_names.is_empty() && ip_addresses.is_empty() {
                    dns_names.push(name.clone());
                }
                let mut request = LeafRequest::new(name.clone(), days);
                request.dns_names = dns_names;
                request.ip_addresses = ip_addresses;
                request
            } else {
                let role: Role = kind.parse().map_err(anyhow::Error::msg)?;
                if !dns_names.is_empty() || !ip_addresses.is_empty() {
                    usage!("--dns and --ip name servers; issue a `server` certificate for those");
                }
                LeafRequest::client(Identity::new(role, name.clone())?, days)
            };
            let out = out.unwrap_or(dir);
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot create {}", out.display()))?;
            let (cert, key) = authority.issue(&request)?.write(&out, &name, force)?;
            match &request.identity {
                Some(identity) => println!("{} for {}", cert.display(), identity.uri()),
                None => println!("{} (server)", cert.display()),
            }
            println!("{}", key.display());
            Ok(())
        }
    }
}

/// Runs `haven token`.
pub async fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create {
            name,
            role,
            coordinator,
        } => {
            let request = v1::CreateTokenRequest { name, role };
            let reply = coordinator
                .client()?
                .unary(AdminServiceClient::new, request, |mut c, r| async move {
                    c.create_token(r).await
                })
                .await?;
            println!("{}", reply.token);
            Ok(())
        }
        TokenCommand::List {
            coordinator,
            output,
        } => {
            let tokens = coordinator
                .client()?
                .unary(
                    AdminServiceClient::new,
                    v1::ListTokensRequest {},
                    |mut c, r| async move { c.list_tokens(r).await },
                )
                .await?
                .tokens;
            if output.json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| json!({"name": t.name, "role": t.role, "created_unix_ms": t.created_unix_ms, "created_by": t.created_by}))
                    .collect();
                return print_json(&list);
            }
            for t in tokens {
                println!("{}  {}  created by {}", t.name, t.role, t.created_by);
            }
            Ok(())
        }
        TokenCommand::Revoke { name, coordinator } => {
            let request = v1::RevokeTokenRequest { name: name.clone() };
            coordinator
                .client()?
                .unary(AdminServiceClient::new, request, |mut c, r| async move {
                    c.revoke_token(r).await
                })
                .await?;
            println!("revoked token {name}");
            Ok(())
        }
    }
}

/// Runs `haven audit`.
pub async fn audit(args: AuditArgs) -> Result<()> {
    let since_unix_ms = match args.since_hours {
        Some(hours) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64 * 1000;
            now.saturating_sub(hours.saturating_mul(3_600_000))
        }
        None => 0,
    };
    let request = v1::ListAuditRequest {
        since_unix_ms,
        limit: args.limit,
    };
    let entries = args
        .coordinator
        .client()?
        .unary(AdminServiceClient::new, request, |mut c, r| async move {
            c.list_audit(r).await
        })
        .await?
        .entries;
    if args.output.json {
        let list: Vec<_> = entries
            .iter()
            .map(|e| {
                json!({"unix_ms": e.unix_ms, "who": e.who, "credential": e.credential,
                       "remote": e.remote, "method": e.method, "result": e.result, "detail": e.detail})
            })
            .collect();
        return print_json(&list);
    }
    for e in entries {
        let when =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.unix_ms) * 1_000_000)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_else(|| e.unix_ms.to_string());
        println!(
            "{when}  {}  {}  {}  {}",
            e.who, e.method, e.result, e.detail
        );
    }
    Ok(())
}
