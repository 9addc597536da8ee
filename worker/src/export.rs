//! Exporting disk image files over NBD with `qemu-nbd`.
//!
//! Every adapter ends in NBD, so the reader and the restore writer are one piece of code
//! each. For image files (qcow2, raw, vmdk, vhdx, ...) `qemu-nbd` is the exporter: it
//! understands every format QEMU does, reports holes through `base:allocation`, and
//! serves several connections at once.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use haven_nbd::{Client, ConnectOptions, Endpoint};
use tokio::process::{Child, Command};

use crate::error::{Result, WorkerError};

/// Export name used for every image Haven exports.
pub const EXPORT_NAME: &str = "disk";
const START_TIMEOUT: Duration = Duration::from_secs(15);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the export may be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Backups read images and must never change them.
    ReadOnly,
    /// Restores into qcow2 write through the export.
    ReadWrite,
}

/// A running `qemu-nbd` serving one image on a private Unix socket.
///
/// Dropping it kills the server; [`ImageExport::stop`] ends it cleanly, which a writable
/// export needs so that qcow2 metadata is flushed.
#[derive(Debug)]
pub struct ImageExport {
    child: Option<Child>,
    socket: PathBuf,
    _socket_dir: tempfile::TempDir,
    format: String,
}

impl ImageExport {
    /// Starts `qemu-nbd` for `image` in `format` (given or found by [`probe_format`]:
    /// never guessed by `qemu-nbd`), accepting up to `connections` clients at once.
    pub async fn start(
        image: &Path,
        format: &str,
        access: Access,
        connections: usize,
    ) -> Result<Self> {
        let socket_dir = tempfile::Builder::new()
            .prefix("haven-nbd-")
            .tempdir()
            .map_err(WorkerError::io("cannot create a socket directory"))?;
        let socket = socket_dir.path().join("nbd.sock");
        let mut command = Command::new("qemu-nbd");
        command
            .arg("--format")
            .arg(format)
            .arg("--socket")
            .arg(&socket)
            .arg("--export-name")
            .arg(EXPORT_NAME)
            .arg("--shared")
            .arg(connections.max(1).to_string())
            .arg("--persistent")
            .arg("--cache=writeback")
            .arg("--aio=threads");
        if access == Access::ReadOnly {
            command.arg("--read-only");
        }
        // If haven dies (even by SIGKILL), the kernel kills qemu-nbd too, so no export
        // outlives the process that owns it.
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        command
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|error| WorkerError::Tool {
            program: "qemu-nbd".into(),
            message: format!("cannot start: {error} (is qemu-utils installed?)"),
        })?;
        let mut export = Self {
            child: Some(child),
            socket,
            _socket_dir: socket_dir,
            format: format.to_string(),
        };
        export.wait_until_ready().await?;
        Ok(export)
    }

    /// Where clients connect.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket.clone())
    }

    /// The image format being served.
    pub fn format(&self) -> &str {
        &self.format
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let stderr = read_stderr(child).await;
                return Err(WorkerError::Tool {
                    program: "qemu-nbd".into(),
                    message: format!("exited with {status}: {}", stderr.trim()),
                });
            }
            if self.socket.exists() {
                let options = ConnectOptions::new(EXPORT_NAME);
                if let Ok(client) = Client::connect(&self.endpoint(), &options).await {
                    let _ = client.disconnect().await;
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(WorkerError::Tool {
                    program: "qemu-nbd".into(),
                    message: "did not start listening in time".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks the server to exit (SIGTERM), waits for it, and reports a failed exit.
    pub async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // SAFETY: plain signal delivery to a child we own and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(WorkerError::io("waiting for qemu-nbd")(error)),
            Err(_) => {
                let _ = child.kill().await;
                Err(WorkerError::Tool {
                    program: "qemu-nbd".into(),
                    message: "did not exit after SIGTERM".into(),
                })
            }
        }
    }
}

async fn read_stderr(child: &mut Child) -> String {
    use tokio::io::AsyncReadExt;
    let mut text = String::new();
    if let Some(stderr) = child.stderr.as_mut() {
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            stderr.take(64 * 1024).read_to_string(&mut text),
        )
        .await;
    }
    text
}

/// Asks `qemu-img info` for an image's format, so `qemu-nbd` never guesses (a raw image
/// whose content looks like a qcow2 header must not be opened as qcow2).
pub async fn probe_format(image: &Path) -> Result<String> {
    let output = run_tool(
        Command::new("qemu-img")
            .arg("info")
            .arg("--output=json")
            .arg(image),
    )
    .await?;
    let info: serde_json::Value =
        serde_json::from_slice(&output).map_err(|error| WorkerError::Tool {
            program: "qemu-img".into(),
            message: format!("unreadable info output: {error}"),
        })?;
    info.get("format")
        .and_then(|format| format.as_str())
        .map(str::to_string)
        .ok_or_else(|| WorkerError::Tool {
            program: "qemu-img".into(),
            message: "info did not name a format".into(),
        })
}

/// Creates an empty qcow2 image of `size` bytes.
pub async fn create_qcow2(path: &Path, size: u64) -> Result<()> {
    run_tool(
        Command::new("qemu-img")
            .arg("create")
            .arg("-q")
            .arg("-f")
            .arg("qcow2")
            .arg(path)
            .arg(size.to_string()),
    )
    .await
    .map(|_| ())
}

/// Runs a helper program to completion and returns its stdout, or its stderr as error.
pub async fn run_tool(command: &mut Command) -> Result<Vec<u8>> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|error| WorkerError::Tool {
            program: program.clone(),
            message: format!("cannot run: {error}"),
        })?;
    if !output.status.success() {
        return Err(WorkerError::Tool {
            program,
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output.stdout)
}
