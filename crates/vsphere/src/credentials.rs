//! Who Haven logs in to vSphere as: a small TOML file, or the environment.
//!
//! ```toml
//! user = "backup@vsphere.local"
//! password = "…"
//! ```
//!
//! The file is read through `haven_config::read_file`, the same reader as the storage
//! key files, so both kinds of secret file share one format and one kind of error.
//! The CLI takes it with `--credentials`, a worker's `vcenter` host with
//! `vcenter_credentials_file`.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, VsphereError};

/// Environment variable holding the vSphere user name.
pub const USER_ENV: &str = "HAVEN_VSPHERE_USER";
/// Environment variable holding the vSphere password.
pub const PASSWORD_ENV: &str = "HAVEN_VSPHERE_PASSWORD";

/// A vSphere user name and password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name (`backup@vsphere.local`).
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a credentials file; an unreadable or malformed file, or an empty field, is
    /// an error naming the file (and the line), never the password.
    pub fn from_file(path: &Path) -> Result<Self> {
        let credentials: Self = haven_config::read_file(path).map_err(|reason| {
            VsphereError::InvalidInput(format!("vSphere credentials: {reason}"))
        })?;
        if credentials.user.is_empty() || credentials.password.is_empty() {
            return Err(VsphereError::InvalidInput(format!(
                "vSphere credentials: {} has an empty user or password",
                path.display()
            )));
        }
        Ok(credentials)
    }

    /// From [`USER_ENV`] and [`PASSWORD_ENV`]; an error saying how to provide them when
    /// either is missing.
    pub fn from_env() -> Result<Self> {
        match (std::env::var(USER_ENV), std::env::var(PASSWORD_ENV)) {
            (Ok(user), Ok(password)) if !user.is_empty() => Ok(Self { user, password }),
            _ => Err(VsphereError::InvalidInput(format!(
                "vSphere credentials: set {USER_ENV} and {PASSWORD_ENV}, or pass a credentials file"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_toml_and_errors_never_show_the_password() {
        let dir = std::env::temp_dir().join(format!("haven-vsphere-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(&good, "user = \"backup\"\npassword = \"pa=ss w0rd\"\n").unwrap();
        let credentials = Credentials::from_file(&good).unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.password.as_str()),
            ("backup", "pa=ss w0rd")
        );
        assert!(!format!("{credentials:?}").contains("w0rd"));
        // The old `key=value` lines are not TOML strings: refused with the line.
        let old = dir.join("old.toml");
        std::fs::write(&old, "user=backup\npassword=pa55word\n").unwrap();
        let error = Credentials::from_file(&old).unwrap_err().to_string();
        assert!(error.contains(&format!("{}:1", old.display())), "{error}");
        assert!(!error.contains("pa55word"), "{error}");
        let empty = dir.join("empty.toml");
        std::fs::write(&empty, "user = \"backup\"\npassword = \"\"\n").unwrap();
        let error = Credentials::from_file(&empty).unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        let unknown = dir.join("unknown.toml");
        std::fs::write(&unknown, "user = \"backup\"\npasswd = \"x\"\n").unwrap();
        let error = Credentials::from_file(&unknown).unwrap_err().to_string();
        assert!(error.contains("passwd"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
