//! Errors of the worker's data paths.
//!
//! Callers branch on the variant: a cancelled backup is not a failed one, a refusal by
//! the coordinator carries its gRPC code, a job that moved to another worker is not
//! reported as a failure at all, and [`WorkerError::is_retryable`] tells the daemon
//! whether the coordinator should try the job again. Variants that wrap a typed source
//! (`#[from]`) do not repeat its text in their own message: printing the error with its
//! sources (`anyhow`'s `{:#}`, or [`WorkerError::chain`]) says each thing once.

use haven_nbd::NbdError;
use haven_repo::RepoError;

use crate::adapters::qemu::qmp::QmpError;

/// Why a backup, restore or job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The repository refused or failed an operation.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The disk could not be read or written over NBD.
    #[error(transparent)]
    Nbd(#[from] NbdError),
    /// A QMP or guest-agent exchange with QEMU failed, or QEMU refused a command.
    #[error("qmp")]
    Qmp(#[from] QmpError),
    /// vSphere refused a call, failed a task or answered something unusable.
    #[error("vSphere")]
    Vsphere(#[from] haven_vsphere::VsphereError),
    /// The hypervisor (QEMU, libvirt) answered something Haven cannot use.
    #[error("{hypervisor}: {message}")]
    Hypervisor {
        /// `qemu` or `libvirt`.
        hypervisor: &'static str,
        /// What was wrong.
        message: String,
    },
    /// A helper program (`qemu-nbd`, `qemu-img`, `virsh`) could not be run or failed.
    #[error("{program}: {message}")]
    Tool {
        /// The program.
        program: String,
        /// What went wrong, including its stderr when useful.
        message: String,
    },
    /// The request cannot be carried out as asked (a missing disk, a wrong size, an
    /// image in use); asking again unchanged fails the same way.
    #[error("{0}")]
    InvalidInput(String),
    /// This worker cannot reach the VM or its host now (the VM stopped, its socket
    /// moved): another attempt, possibly on another worker, may.
    #[error("{0}")]
    Unreachable(String),
    /// The operation was cancelled (Ctrl-C, or the coordinator cancelled the job).
    #[error("{0} cancelled")]
    Cancelled(&'static str),
    /// The worker is stopping and its drain period ended before the job did: the job
    /// is handed back for another attempt, here or on another worker.
    #[error("this worker is shutting down; the job is handed back")]
    ShuttingDown,
    /// The coordinator refused a request.
    #[error("{request} refused by the coordinator ({code:?}): {message}")]
    Refused {
        /// What was asked (`registration`, `commit`, `completion`).
        request: &'static str,
        /// The gRPC code of the refusal.
        code: tonic::Code,
        /// The coordinator's message.
        message: String,
    },
    /// The job belongs to another attempt now (this worker's lease expired or the
    /// coordinator fenced its token): its work is dropped, not reported as a failure.
    #[error("job moved to another worker: {0}")]
    JobMoved(String),
    /// Someone else committed a snapshot under the same name meanwhile.
    #[error("snapshot {0} was committed by someone else meanwhile")]
    AlreadyCommitted(String),
    /// A local file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    /// Whether running the same job again may succeed: transient failures of the
    /// repository, NBD, the hypervisor, helper programs and local I/O are; bad input,
    /// cancellation, a moved job, a snapshot committed by someone else, and refusals the
    /// coordinator would repeat are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            WorkerError::Repo(error) => error.is_retryable(),
            WorkerError::Nbd(error) => error.is_retryable(),
            WorkerError::Vsphere(error) => error.is_retryable(),
            WorkerError::Qmp(_)
            | WorkerError::Hypervisor { .. }
            | WorkerError::Tool { .. }
            | WorkerError::Unreachable(_)
            | WorkerError::ShuttingDown
            | WorkerError::Io { .. } => true,
            WorkerError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
            ),
            WorkerError::InvalidInput(_)
            | WorkerError::Cancelled(_)
            | WorkerError::JobMoved(_)
            | WorkerError::AlreadyCommitted(_) => false,
        }
    }

    /// The message with every source after it, each said once (`a: b: c`): for logs
    /// and job records, which print one line and have no `anyhow` to walk the chain.
    pub fn chain(&self) -> String {
        haven_proto::error_chain(self)
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| WorkerError::Io { context, source }
    }

    pub(crate) fn join(error: tokio::task::JoinError) -> Self {
        WorkerError::Io {
            context: "pipeline task failed".into(),
            source: std::io::Error::other(error),
        }
    }

    /// A failure of QEMU that is not a QMP error: an answer of the wrong shape, a node
    /// that is not there.
    pub(crate) fn qemu(message: impl Into<String>) -> Self {
        WorkerError::Hypervisor {
            hypervisor: "qemu",
            message: message.into(),
        }
    }

    /// The coordinator's refusal of `request`: a fenced token (`FAILED_PRECONDITION`)
    /// means the job moved; anything else is a [`WorkerError::Refused`].
    pub(crate) fn from_coordinator(request: &'static str, status: &tonic::Status) -> Self {
        if status.code() == tonic::Code::FailedPrecondition {
            return WorkerError::JobMoved(status.message().to_string());
        }
        WorkerError::Refused {
            request,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_only_when_a_new_attempt_can_help() {
        let refused = |code| WorkerError::Refused {
            request: "commit",
            code,
            message: "no".into(),
        };
        let table: Vec<(WorkerError, bool)> = vec![
            (refused(tonic::Code::Unavailable), true),
            // A call a coordinator shutting down reset (a rolling restart).
            (refused(tonic::Code::Cancelled), true),
            (refused(tonic::Code::InvalidArgument), false),
            (WorkerError::InvalidInput("no disk".into()), false),
            (WorkerError::Cancelled("job"), false),
            (WorkerError::ShuttingDown, true),
            (WorkerError::JobMoved("token".into()), false),
            (WorkerError::AlreadyCommitted("vm@t".into()), false),
            (WorkerError::qemu("node gone"), true),
            (WorkerError::Unreachable("vm gone".into()), true),
            (
                WorkerError::io("reading")(std::io::Error::other("eio")),
                true,
            ),
            (WorkerError::Nbd(NbdError::Closed), true),
            (WorkerError::Repo(RepoError::WrongPassword), false),
        ];
        for (error, retryable) in table {
            assert_eq!(error.is_retryable(), retryable, "{error}");
        }
    }

    #[test]
    fn a_fenced_token_means_the_job_moved() {
        let moved = WorkerError::from_coordinator(
            "commit",
            &tonic::Status::failed_precondition("stale token"),
        );
        assert!(matches!(moved, WorkerError::JobMoved(_)));
        let refused =
            WorkerError::from_coordinator("commit", &tonic::Status::unavailable("no leader"));
        assert!(matches!(
            refused,
            WorkerError::Refused {
                code: tonic::Code::Unavailable,
                ..
            }
        ));
    }

    #[test]
    fn the_chain_says_each_thing_once() {
        let error = WorkerError::io("cannot write x")(std::io::Error::other("disk full"));
        assert_eq!(error.chain(), "cannot write x: disk full");
        assert_eq!(
            WorkerError::Nbd(NbdError::Closed).chain(),
            NbdError::Closed.to_string()
        );
    }
}
