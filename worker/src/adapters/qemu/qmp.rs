//! A small async client for QMP (the QEMU Machine Protocol) and the QEMU guest agent.
//!
//! Both speak JSON objects, one per line, over a Unix socket. The peer is not trusted:
//! every line is bounded ([`MAX_LINE`]), every reply is checked for shape, and every
//! exchange runs under a timeout, so a wedged or hostile QEMU yields an error, never a
//! hang or a panic.
//!
//! QMP replies carry the `id` of their request. Asynchronous events are skipped, and so
//! are replies to earlier requests that timed out: a late reply can never be taken for
//! the answer to a later command. Reading is cancellation-safe (bytes already received
//! stay in the client's buffer), so a cancelled call leaves the client usable; a write
//! cut short, an I/O error or an over-long line poisons it.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest line accepted from the peer: `query-named-block-nodes` of a big VM is a few
/// hundred KiB; anything near this bound is an attack or a bug.
pub const MAX_LINE: usize = 16 << 20;
/// Default time allowed for one command and its reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a QMP or guest-agent exchange failed; callers branch on [`QmpError::Command`]
/// (QEMU refused the command) versus everything else (the channel is unusable).
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be opened, read or written.
    #[error("{socket}: {source}")]
    Io {
        /// The socket path.
        socket: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// No complete reply within the allowed time.
    #[error("{socket}: no reply to {command} within {after:?}")]
    Timeout {
        /// The socket path.
        socket: String,
        /// The command being waited for.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// The peer sent something that is not QMP.
    #[error("{socket}: protocol violation: {message}")]
    Protocol {
        /// The socket path.
        socket: String,
        /// What was wrong.
        message: String,
    },
    /// QEMU answered the command with an error.
    #[error("{command}: {class}: {description}")]
    Command {
        /// The command that failed.
        command: String,
        /// QMP error class (`GenericError`, `DeviceNotFound`, ...).
        class: String,
        /// QEMU's message.
        description: String,
    },
    /// An earlier failure left the stream out of sync.
    #[error("{socket}: connection unusable after an earlier error")]
    Poisoned {
        /// The socket path.
        socket: String,
    },
}

impl QmpError {
    /// Whether QEMU refused the command (the connection itself is still fine).
    pub fn is_command_error(&self) -> bool {
        matches!(self, QmpError::Command { .. })
    }

    /// QEMU's own error message, when it refused the command.
    pub fn description(&self) -> Option<&str> {
        match self {
            QmpError::Command { description, .. } => Some(description),
            _ => None,
        }
    }
}

/// A line-framed JSON stream with a persistent read buffer (cancellation-safe reads).
#[derive(Debug)]
struct JsonLines {
    stream: UnixStream,
    socket: PathBuf,
    buffer: Vec<u8>,
    /// Leading bytes of `buffer` already known to hold no newline.
    scanned: usize,
    poisoned: bool,
}

impl JsonLines {
    async fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let io = |source| QmpError::Io {
            socket: socket.display().to_string(),
            source,
        };
        // Refuse regular files and the like early, with a clear message.
        let metadata = std::fs::metadata(socket).map_err(io)?;
        if !metadata.file_type().is_socket() {
            return Err(io(std::io::Error::other("not a unix socket")));
        }
        let stream = tokio::time::timeout(timeout, UnixStream::connect(socket))
            .await
            .map_err(|_| QmpError::Timeout {
                socket: socket.display().to_string(),
                command: "connect".into(),
                after: timeout,
            })?
            .map_err(io)?;
        Ok(Self {
            stream,
            socket: socket.to_path_buf(),
            buffer: Vec::new(),
            scanned: 0,
            poisoned: false,
        })
    }

    fn socket_name(&self) -> String {
        self.socket.display().to_string()
    }

    fn protocol(&self, message: impl Into<String>) -> QmpError {
        QmpError::Protocol {
            socket: self.socket_name(),
            message: message.into(),
        }
    }

    fn check_usable(&self) -> Result<(), QmpError> {
        if self.poisoned {
            return Err(QmpError::Poisoned {
                socket: self.socket_name(),
            });
        }
        Ok(())
    }

    /// Writes one line; a write cut short (timeout, cancellation, error) poisons.
    async fn send(&mut self, value: &Value) -> Result<(), QmpError> {
        self.check_usable()?;
        let mut line =
            serde_json::to_vec(value).map_err(|error| self.protocol(error.to_string()))?;
        line.push(b'\n');
        self.poisoned = true;
        self.stream
            .write_all(&line)
            .await
            .map_err(|source| QmpError::Io {
                socket: self.socket_name(),
                source,
            })?;
        self.poisoned = false;
        Ok(())
    }

    /// Reads the next JSON object; cancellation-safe.
    async fn receive(&mut self) -> Result<Map<String, Value>, QmpError> {
        self.check_usable()?;
        loop {
            let unscanned = &self.buffer[self.scanned..];
            if let Some(offset) = unscanned.iter().position(|&byte| byte == b'\n') {
                let end = self.scanned + offset;
                self.scanned = 0;
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let value: Value = serde_json::from_slice(text)
                    .map_err(|error| self.protocol(format!("malformed json: {error}")))?;
                return match value {
                    Value::Object(object) => Ok(object),
                    _ => Err(self.protocol("a message that is not a json object")),
                };
            }
            // Only what arrives next needs scanning: a long line costs linear time.
            self.scanned = self.buffer.len();
            if self.buffer.len() > MAX_LINE {
                self.poisoned = true;
                return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
            }
            let mut chunk = [0u8; 64 * 1024];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|source| QmpError::Io {
                    socket: self.socket_name(),
                    source,
                });
            match read {
                Ok(0) => {
                    self.poisoned = true;
                    return Err(self.protocol("connection closed by the peer"));
                }
                Ok(count) => self.buffer.extend_from_slice(&chunk[..count]),
                Err(error) => {
                    self.poisoned = true;
                    return Err(error);
                }
            }
        }
    }
}

/// Interprets a reply object: `return` value or `error` as [`QmpError::Command`].
fn reply_result(
    command: &str,
    mut reply: Map<String, Value>,
    socket: &str,
) -> Result<Value, QmpError> {
    if let Some(value) = reply.remove("return") {
        return Ok(value);
    }
    if let Some(error) = reply.get("error") {
        let text = |key: &str| {
            error
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .chars()
                .take(1000)
                .collect::<String>()
        };
        return Err(QmpError::Command {
            command: command.to_string(),
            class: text("class"),
            description: text("desc"),
        });
    }
    Err(QmpError::Protocol {
        socket: socket.to_string(),
        message: format!("reply to {command} has neither return nor error"),
    })
}

/// A command object for QMP or the guest agent: `arguments` are sent only when there
/// are any.
fn command_request(mut request: Value, arguments: Value) -> Value {
    if arguments
        .as_object()
        .is_some_and(|object| !object.is_empty())
    {
        request["arguments"] = arguments;
    }
    request
}

/// Runs `exchange` (a command and its reply on `socket`) under `timeout`: no complete
/// reply in time is [`QmpError::Timeout`] for `command`.
async fn within<T>(
    socket: &str,
    command: &str,
    timeout: Duration,
    exchange: impl std::future::Future<Output = Result<T, QmpError>>,
) -> Result<T, QmpError> {
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(QmpError::Timeout {
                socket: socket.to_string(),
                command: command.to_string(),
                after: timeout,
            })
        })
}

/// A QMP session in command mode.
#[derive(Debug)]
pub struct QmpClient {
    lines: JsonLines,
    next_id: u64,
    timeout: Duration,
    /// QEMU's version as `major.minor.micro`, from the greeting.
    version: String,
}

impl QmpClient {
    /// Connects, checks the greeting and enters command mode (`qmp_capabilities`).
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let lines = JsonLines::connect(socket, timeout).await?;
        let mut client = Self {
            lines,
            next_id: 1,
            timeout,
            version: String::new(),
        };
        let greeting = client.receive_within("greeting").await?;
        let Some(qmp) = greeting.get("QMP").and_then(Value::as_object) else {
            return Err(client.lines.protocol("the greeting is not a QMP greeting"));
        };
        let version = qmp.get("version").and_then(|version| version.get("qemu"));
        let part = |key: &str| {
            version
                .and_then(|version| version.get(key))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        client.version = format!("{}.{}.{}", part("major"), part("minor"), part("micro"));
        client.execute("qmp_capabilities", json!({})).await?;
        Ok(client)
    }

    /// QEMU's version from the greeting (`major.minor.micro`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether an earlier failure left the stream out of sync (reconnect to go on).
    pub fn is_poisoned(&self) -> bool {
        self.lines.poisoned
    }

    /// Shuts the connection down at once, so QEMU (whose monitor serves one client at
    /// a time) accepts a new one while this value still exists.
    pub fn close(&mut self) {
        use std::os::fd::AsRawFd;
        self.lines.poisoned = true;
        // SAFETY: shutdown on a descriptor this client owns; no memory is involved.
        unsafe { libc::shutdown(self.lines.stream.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// The process id of QEMU (from the socket's peer credentials), to read its
    /// command line for the snapshot's VM configuration.
    pub fn peer_pid(&self) -> Option<i32> {
        self.lines
            .stream
            .peer_cred()
            .ok()
            .and_then(|cred| cred.pid())
    }

    async fn receive_within(&mut self, command: &str) -> Result<Map<String, Value>, QmpError> {
        let socket = self.lines.socket_name();
        within(&socket, command, self.timeout, self.lines.receive()).await
    }

    /// Runs one command with the client's timeout.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, self.timeout).await
    }

    /// Runs one command and returns its `return` value; QEMU's refusal is
    /// [`QmpError::Command`]. Events and stale replies are skipped.
    pub async fn execute_within(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let id = format!("haven-{}", self.next_id);
        self.next_id += 1;
        let request = command_request(json!({"execute": command, "id": id}), arguments);
        let socket = self.lines.socket_name();
        let exchange = async {
            self.lines.send(&request).await?;
            loop {
                let reply = self.lines.receive().await?;
                if reply.contains_key("event") {
                    tracing::trace!(event = ?reply.get("event"), "qmp event skipped");
                    continue;
                }
                match reply.get("id") {
                    Some(Value::String(reply_id)) if *reply_id == id => {
                        return reply_result(command, reply, &socket);
                    }
                    Some(Value::String(reply_id)) if reply_id.starts_with("haven-") => {
                        tracing::debug!(reply_id, "late qmp reply to an abandoned command skipped");
                    }
                    _ => {
                        return Err(QmpError::Protocol {
                            socket: socket.clone(),
                            message: format!("reply to {command} with a foreign or missing id"),
                        });
                    }
                }
            }
        };
        within(&socket, command, timeout, exchange).await
    }
}

/// A session with the QEMU guest agent (`qemu-ga`), for file-system freeze and thaw.
///
/// The agent's channel may hold bytes from an earlier, abandoned client, so every
/// session starts with `guest-sync` and a fresh number, and discards everything until
/// that number comes back.
#[derive(Debug)]
pub struct GuestAgent {
    lines: JsonLines,
    timeout: Duration,
}

impl GuestAgent {
    /// Whether an exchange that timed out or answered oddly left the channel out of
    /// sync: the next command needs a new connection (whose `guest-sync` resyncs).
    pub fn is_poisoned(&self) -> bool {
        self.lines.poisoned
    }

    /// Connects and synchronises the channel.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let lines = JsonLines::connect(socket, timeout).await?;
        let mut agent = Self { lines, timeout };
        let token = u64::from(std::process::id()) << 20 | u64::from(rand_u16());
        let socket_name = agent.lines.socket_name();
        let sync = async {
            agent
                .lines
                .send(&json!({"execute": "guest-sync", "arguments": {"id": token}}))
                .await?;
            loop {
                let reply = agent.lines.receive().await?;
                if reply.get("return").and_then(Value::as_u64) == Some(token) {
                    return Ok::<(), QmpError>(());
                }
            }
        };
        within(&socket_name, "guest-sync", timeout, sync).await?;
        Ok(agent)
    }

    /// Runs one agent command (after the sync, replies come in order).
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.execute_within(command, arguments, self.timeout).await
    }

    /// Runs one agent command allowed `timeout` instead of the session's: what is left
    /// of a bound several steps share.
    pub async fn execute_within(
        &mut self,
        command: &str,
        arguments: Value,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let request = command_request(json!({"execute": command}), arguments);
        let socket = self.lines.socket_name();
        let exchange = async {
            self.lines.send(&request).await?;
            let reply = self.lines.receive().await?;
            reply_result(command, reply, &socket)
        };
        let result = within(&socket, command, timeout, exchange).await;
        if result
            .as_ref()
            .is_err_and(|error| !error.is_command_error())
        {
            // An agent that answered oddly or late is not trusted with the next command.
            self.lines.poisoned = true;
        }
        result
    }
}

/// A few bits of entropy for the sync token (no need for a cryptographic source).
fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
