//! Talking to libvirt through the `virsh` client: one process per call, each with a
//! timeout, and parsers for the few outputs the adapter reads.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{Result, WorkerError};

/// A `virsh` client bound to one connection URI.
#[derive(Debug, Clone)]
pub struct Virsh {
    uri: Option<String>,
    timeout: Duration,
}

/// One disk of a domain as `domblklist --details` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainDisk {
    /// Target name (`vda`): the disk's name in libvirt's backup XML and NBD export.
    pub target: String,
    /// `file`, `block`, `network`, ...
    pub kind: String,
    /// Source file or device.
    pub source: String,
}

impl Virsh {
    /// A client for `uri` (`None`: virsh's default connection).
    pub fn new(uri: Option<String>, timeout: Duration) -> Self {
        Self { uri, timeout }
    }

    /// Runs `virsh COMMAND OPTIONS -- ARGUMENTS` and returns its standard output; a
    /// non-zero exit or a timeout is an error carrying virsh's message.
    ///
    /// Positional arguments (domain, checkpoint and file names, which come from
    /// requests and from libvirt itself) always follow `--`, so none of them can be
    /// taken for an option, whatever it starts with; `options` are Haven's own.
    pub async fn run(&self, command: &str, options: &[&str], arguments: &[&str]) -> Result<String> {
        let mut process = Command::new("virsh");
        if let Some(uri) = &self.uri {
            process.arg("--connect").arg(uri);
        }
        process
            .arg("--quiet")
            .arg(command)
            .args(options)
            .arg("--")
            .args(arguments)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let tool = |message: String| WorkerError::Tool {
            program: format!("virsh {command}"),
            message,
        };
        let child = process
            .spawn()
            .map_err(|error| tool(format!("cannot run virsh: {error}")))?;
        let output = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| tool(format!("no answer within {:?}", self.timeout)))?
            .map_err(|error| tool(error.to_string()))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .map(|line| line.strip_prefix("error: ").unwrap_or(line))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(tool(message));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The domain's disks (device `disk` with a source; CD-ROMs and empty drives are
    /// not backed up).
    pub async fn disks(&self, domain: &str) -> Result<Vec<DomainDisk>> {
        let listing = self.run("domblklist", &["--details"], &[domain]).await?;
        Ok(parse_disks(&listing))
    }

    /// Capacity of one disk in bytes.
    pub async fn capacity(&self, domain: &str, target: &str) -> Result<u64> {
        let info = self.run("domblkinfo", &[], &[domain, target]).await?;
        parse_capacity(&info).ok_or_else(|| WorkerError::Tool {
            program: "virsh domblkinfo".into(),
            message: format!("no capacity for disk {target} in {info:?}"),
        })
    }

    /// Names of the domain's checkpoints.
    pub async fn checkpoints(&self, domain: &str) -> Result<Vec<String>> {
        let listing = self.run("checkpoint-list", &["--name"], &[domain]).await?;
        Ok(listing
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }
}

/// Parses `virsh domblklist DOMAIN --details` (`Type Device Target Source`).
pub fn parse_disks(listing: &str) -> Vec<DomainDisk> {
    let mut disks = Vec::new();
    for line in listing.lines() {
        let mut fields = line.split_whitespace();
        let (Some(kind), Some(device), Some(target)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let source = fields.collect::<Vec<_>>().join(" ");
        if device != "disk" || kind == "Type" || source.is_empty() || source == "-" {
            continue;
        }
        disks.push(DomainDisk {
            target: target.to_string(),
            kind: kind.to_string(),
            source,
        });
    }
    disks
}

/// Parses the `Capacity:` line of `virsh domblkinfo`.
pub fn parse_capacity(info: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        line.trim()
            .strip_prefix("Capacity:")
            .and_then(|value| value.trim().parse().ok())
    })
}

/// Escapes text for an XML attribute or element.
pub fn xml_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\'' => escaped.push_str("&apos;"),
            '"' => escaped.push_str("&quot;"),
            other => escaped.push(other),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_domblklist() {
        let listing = " Type   Device   Target   Source\n\
            ----------------------------------------------------\n \
            file   disk     vda      /tmp/a b/d0.qcow2\n \
            block  disk     vdb      /dev/vg/x\n \
            file   cdrom    sda      -\n";
        assert_eq!(
            parse_disks(listing),
            vec![
                DomainDisk {
                    target: "vda".into(),
                    kind: "file".into(),
                    source: "/tmp/a b/d0.qcow2".into()
                },
                DomainDisk {
                    target: "vdb".into(),
                    kind: "block".into(),
                    source: "/dev/vg/x".into()
                },
            ]
        );
    }

    #[test]
    fn parses_capacity() {
        let info = "Capacity:       67108864\nAllocation:     204800\n";
        assert_eq!(parse_capacity(info), Some(67108864));
        assert_eq!(parse_capacity("nothing"), None);
    }

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape("a'<&>\"b"), "a&apos;&lt;&amp;&gt;&quot;b");
    }
}
