//! The exit status of `haven`, for scripts: one documented code per kind of failure a
//! caller acts on differently (ask for the password again, wait for a lock, page
//! someone about damage), chosen here at the binary's edge from the typed errors of
//! the libraries and of the CLI itself. The table is in `docs/cli.md`; a code, once
//! documented, keeps its meaning.

use std::error::Error;
use std::process::ExitCode;

use haven_repo::{RepoError, S3Refusal};
use haven_worker::WorkerError;

/// How `haven` ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything asked was done.
    Success = 0,
    /// A failure of no kind below (I/O, network, storage, a refused request).
    Failure = 1,
    /// The command line is wrong: a missing or unknown argument, a bad value, options
    /// that do not go together.
    Usage = 2,
    /// The repository password is wrong, was not given, or its command failed.
    Password = 3,
    /// What was named does not exist: no repository at the URL, no such snapshot, or
    /// a VM, job or policy the coordinator does not know.
    NotFound = 4,
    /// Something the command needs is held: the repository is busy (another process
    /// holds its garbage collection lock) or the snapshot is protected.
    Locked = 5,
    /// The command ran to its end but part of what it checked or did failed:
    /// `verify` found damaged or missing objects (its report lists them).
    Partial = 6,
    /// An object read from the repository is corrupt.
    Damaged = 7,
    /// The credentials were refused: the coordinator does not authenticate them or
    /// their role may not do this, or the storage key lacks the permission.
    Denied = 8,
}

impl Exit {
    /// The code of a failure: that of the first error in its chain of causes that
    /// says what kind it is; [`Exit::Failure`] when none does.
    pub fn of(error: &anyhow::Error) -> Self {
        error.chain().find_map(kind_of).unwrap_or(Exit::Failure)
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

/// A failure the CLI itself finds, typed by the exit code it calls for; its text is
/// what the user reads.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Options that do not go together, or a value clap could not check.
    #[error("{0}")]
    Usage(String),
    /// No password was given, or the password command failed.
    #[error("{0}")]
    Password(String),
    /// What the user named does not exist (in the coordinator's catalog, say).
    #[error("{0}")]
    NotFound(String),
    /// The run finished, but part of it failed.
    #[error("{0}")]
    Partial(String),
}

/// Returns early from a command with a [`CliError::Usage`] built like `format!`: for
/// options that do not go together, which clap cannot check.
macro_rules! usage {
    ($($message:tt)*) => {
        return Err($crate::exit::CliError::Usage(format!($($message)*)).into())
    };
}

/// The kind of one error of a chain, if it is one Haven knows.
fn kind_of(cause: &(dyn Error + 'static)) -> Option<Exit> {
    if let Some(error) = cause.downcast_ref::<CliError>() {
        return Some(match error {
            CliError::Usage(_) => Exit::Usage,
            CliError::Password(_) => Exit::Password,
            CliError::NotFound(_) => Exit::NotFound,
            CliError::Partial(_) => Exit::Partial,
        });
    }
    if let Some(error) = cause.downcast_ref::<RepoError>() {
        return of_repository(error);
    }
    // A worker error wrapping a repository error is transparent: the repository
    // error is not a separate link of the chain.
    if let Some(WorkerError::Repo(error)) = cause.downcast_ref::<WorkerError>() {
        return of_repository(error);
    }
    if let Some(status) = cause.downcast_ref::<tonic::Status>() {
        return match status.code() {
            tonic::Code::NotFound => Some(Exit::NotFound),
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Some(Exit::Denied),
            tonic::Code::InvalidArgument => Some(Exit::Usage),
            _ => None,
        };
    }
    None
}

fn of_repository(error: &RepoError) -> Option<Exit> {
    match error {
        RepoError::WrongPassword => Some(Exit::Password),
        RepoError::NotARepository(_) | RepoError::NoSuchSnapshot(_) => Some(Exit::NotFound),
        RepoError::Busy(_) | RepoError::Protected(_) => Some(Exit::Locked),
        RepoError::Corrupt { .. } => Some(Exit::Damaged),
        RepoError::NotPermitted { .. } => Some(Exit::Denied),
        RepoError::InvalidUrl { .. } | RepoError::InvalidArgument(_) => Some(Exit::Usage),
        RepoError::Storage { .. } => match error.s3_refusal()? {
            S3Refusal::NoSuchBucket { .. } => Some(Exit::NotFound),
            S3Refusal::InvalidBucketName { .. } => Some(Exit::Usage),
            S3Refusal::UnknownAccessKey
            | S3Refusal::WrongSecretKey
            | S3Refusal::AccessDenied { .. } => Some(Exit::Denied),
            S3Refusal::ClockSkew => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corrupt() -> RepoError {
        RepoError::Corrupt {
            key: "chunks/ab".into(),
            reason: "bad tag".into(),
        }
    }

    #[test]
    fn typed_errors_give_their_codes_through_context_and_wrappers() {
        let table: Vec<(anyhow::Error, Exit)> = vec![
            (RepoError::WrongPassword.into(), Exit::Password),
            (
                anyhow::Error::from(RepoError::WrongPassword).context("cannot open r"),
                Exit::Password,
            ),
            (
                anyhow::Error::from(WorkerError::Repo(RepoError::NoSuchSnapshot(
                    "web@latest".into(),
                )))
                .context("restoring web@latest"),
                Exit::NotFound,
            ),
            (RepoError::NotARepository("r".into()).into(), Exit::NotFound),
            (RepoError::Busy("gc lock held".into()).into(), Exit::Locked),
            (RepoError::Protected("web@t".into()).into(), Exit::Locked),
            (corrupt().into(), Exit::Damaged),
            (tonic::Status::not_found("no job j").into(), Exit::NotFound),
            (
                tonic::Status::permission_denied("viewer").into(),
                Exit::Denied,
            ),
            (
                tonic::Status::unavailable("no leader").into(),
                Exit::Failure,
            ),
            (CliError::Usage("--a needs --b".into()).into(), Exit::Usage),
            (
                CliError::Password("no password".into()).into(),
                Exit::Password,
            ),
            (CliError::Partial("2 bad".into()).into(), Exit::Partial),
            (anyhow::anyhow!("disk full"), Exit::Failure),
        ];
        for (error, expected) in table {
            assert_eq!(Exit::of(&error), expected, "{error:#}");
        }
    }

    #[test]
    fn codes_are_the_documented_numbers() {
        let codes = [
            (Exit::Success, 0, "success"),
            (Exit::Failure, 1, "failure"),
            (Exit::Usage, 2, "usage"),
            (Exit::Password, 3, "password"),
            (Exit::NotFound, 4, "not found"),
            (Exit::Locked, 5, "locked"),
            (Exit::Partial, 6, "partial"),
            (Exit::Damaged, 7, "damaged"),
            (Exit::Denied, 8, "denied"),
        ];
        let docs = include_str!("../../docs/cli.md");
        for (exit, code, name) in codes {
            assert_eq!(exit as u8, code);
            let row = format!("| {code} | {name} |");
            assert!(docs.contains(&row), "docs/cli.md lacks the row {row:?}");
        }
    }
}
