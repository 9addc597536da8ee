//! What makes `haven dev` usable with no configuration: at its first start a default
//! repository (a folder beside the store) and a default policy that selects every VM,
//! so `haven job run VM` right after has somewhere to back up to.
//!
//! A start is the first when the embedded store does not exist yet. It leaves a
//! marker (`STATE/defaults-pending`) before the store is made and removes it once the
//! repository exists and the policy is applied, so a first start that is interrupted
//! finishes at the next one; any other start changes nothing, so a policy applied
//! since (which replaces the default) or a removed repository stays as the user left
//! it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use haven_proto::v1::{self, admin_service_client::AdminServiceClient};
use haven_repo::{Backend, DEFAULT_CHUNK_SIZE, RepoError, Repository};

use crate::common::CoordinatorUrl;

use super::secrets::write_private;

/// The name of the policy `haven dev` makes.
pub const POLICY: &str = "default";

/// The defaults a first start makes.
pub struct Defaults {
    /// The default repository (a folder).
    pub repository: PathBuf,
    /// The default policy's file, for the user to edit and apply again.
    pub policy_file: PathBuf,
    pending: PathBuf,
}

impl Defaults {
    /// Decides, before the store is opened, whether this start makes the defaults:
    /// `None` unless the store is new or a first start did not finish.
    pub fn plan(state: &Path, store: &Path) -> Result<Option<Self>> {
        let defaults = Self {
            repository: state.join("repository"),
            policy_file: state.join("default-policy.toml"),
            pending: state.join("defaults-pending"),
        };
        if !store.exists() {
            std::fs::write(&defaults.pending, "")
                .with_context(|| format!("cannot write {}", defaults.pending.display()))?;
        }
        Ok(defaults.pending.exists().then_some(defaults))
    }

    /// The default policy: every VM, daily at 02:00 UTC, a week of dailies and a month
    /// of weeklies, collected weekly.
    fn policy_toml(&self) -> String {
        format!(
            "# Made by `haven dev` at its first start; edit it and `haven policy apply` it\n\
             # (which replaces the cluster's policies with the file's).\n\
             [[policy]]\n\
             name = \"{POLICY}\"\n\
             schedule = \"0 2 * * *\"\n\
             repository = {:?}\n\
             retention = {{ keep_daily = 7, keep_weekly = 4 }}\n\
             gc_schedule = \"0 3 * * 0\"\n",
            self.repository.display().to_string()
        )
    }

    /// Makes the repository (or checks that `password` opens the one an interrupted
    /// first start made), applies the policy through the coordinator as its admin,
    /// says so on standard error, and clears the marker.
    pub async fn create(&self, password: &[u8], coordinator: &CoordinatorUrl) -> Result<()> {
        let url = self.repository.display().to_string();
        match Repository::init(Backend::from_url(&url, true)?, password, DEFAULT_CHUNK_SIZE).await {
            Ok(_) => {}
            Err(RepoError::AlreadyInitialized(_)) => {
                Repository::open(Backend::from_url(&url, false)?, password)
                    .await
                    .with_context(|| format!("the default repository {url}"))?;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot create repository {url}"));
            }
        }
        let text = self.policy_toml();
        write_private(&self.policy_file, &text)?;
        let request = v1::ApplyPoliciesRequest {
            file_name: self.policy_file.display().to_string(),
            policy_toml: text,
        };
        coordinator
            .client()?
            .unary(AdminServiceClient::new, request, |mut c, r| async move {
                c.apply_policies(r).await
            })
            .await
            .context("cannot apply the default policy")?;
        eprintln!(
            "haven dev: made repository {url} and policy {POLICY:?} ({}): every VM daily \
             at 02:00 UTC, keeping 7 daily and 4 weekly; back up now with `haven job run VM`",
            self.policy_file.display()
        );
        std::fs::remove_file(&self.pending)
            .with_context(|| format!("cannot remove {}", self.pending.display()))
    }
}
