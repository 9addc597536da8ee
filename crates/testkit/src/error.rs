//! Why a fixture could not be set up.

use std::path::PathBuf;

/// A fixture that could not start: the test cannot run, which is not a finding about
/// the code under test.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// A file or process operation of the fixture failed.
    #[error("{context}: {source}")]
    Io {
        /// What the fixture was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A program the fixture runs is not installed.
    #[error("{program} is not installed or not on PATH ({hint}): {source}")]
    MissingProgram {
        /// The program.
        program: String,
        /// Where to get it.
        hint: &'static str,
        /// The error of the attempt to run it.
        source: std::io::Error,
    },
    /// A started service did not become ready in time.
    #[error("{what} was not ready after {seconds} s: {detail}")]
    NotReady {
        /// The service.
        what: String,
        /// How long the fixture waited.
        seconds: u64,
        /// The last thing seen (an error, an exit status, a log excerpt).
        detail: String,
    },
    /// The directory cannot give the write path asked for (see [`crate::local`]).
    #[error("{path}: {reason}")]
    WrongFileSystem {
        /// The directory.
        path: PathBuf,
        /// What it does and what was needed.
        reason: String,
    },
    /// Haven refused to open the backend the fixture built.
    #[error("cannot open backend {url}: {source}")]
    Backend {
        /// The repository URL.
        url: String,
        /// Haven's error.
        source: haven_repo::RepoError,
    },
}

impl FixtureError {
    /// The error of starting `program`, for `map_err`: [`FixtureError::MissingProgram`]
    /// with `hint` when it is not installed.
    pub(crate) fn starting(
        program: &str,
        hint: &'static str,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let program = program.to_string();
        move |source| match source.kind() {
            std::io::ErrorKind::NotFound => Self::MissingProgram {
                program,
                hint,
                source,
            },
            _ => Self::Io {
                context: format!("cannot start {program}"),
                source,
            },
        }
    }

    /// An [`FixtureError::Io`] with its context, for `map_err`.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
