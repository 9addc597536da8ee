//! One pull-mode backup job: the XML documents for `backup-begin`, and the teardown
//! that runs whatever happened (success, error, cancellation).

use std::path::{Path, PathBuf};

use super::chain::CHECKPOINT;
use super::virsh::{DomainDisk, Virsh, xml_escape};
use crate::adapters::chain::ReadMode;
use crate::error::{Result, WorkerError};

/// One disk in the job.
#[derive(Debug, Clone)]
pub struct JobDisk {
    /// The disk as libvirt shows it.
    pub disk: DomainDisk,
    /// How it is read.
    pub mode: ReadMode,
}

/// What the job has done so far, so the teardown undoes exactly that.
#[derive(Debug)]
pub struct BackupJob {
    /// The domain.
    pub domain: String,
    /// The checkpoint this backup creates.
    pub checkpoint: String,
    /// Unix socket of libvirt's NBD server for this job.
    pub socket: PathBuf,
    /// `backup-begin` was sent (it may or may not have started the job).
    pub begin_sent: bool,
    /// The snapshot's manifest is committed: the new checkpoint must stay.
    pub committed: bool,
}

impl BackupJob {
    /// A job whose files (socket, scratch files) live in `scratch`.
    pub fn new(domain: &str, checkpoint: String, scratch: &Path) -> Self {
        Self {
            domain: domain.to_string(),
            checkpoint,
            socket: scratch.join("nbd.sock"),
            begin_sent: false,
            committed: false,
        }
    }

    /// The `<domainbackup mode='pull'>` document: every disk of the domain is listed,
    /// the ones backed up with a scratch file in `scratch`. When every disk reads from
    /// the same checkpoint it is the document's `<incremental>`; otherwise each disk
    /// says its own mode.
    pub fn backup_xml(&self, disks: &[JobDisk], skipped: &[DomainDisk], scratch: &Path) -> String {
        let incremental: Vec<&str> = disks
            .iter()
            .filter_map(|disk| match &disk.mode {
                ReadMode::Incremental { marker: checkpoint } => Some(checkpoint.as_str()),
                ReadMode::Full { .. } => None,
            })
            .collect();
        let uniform = !incremental.is_empty()
            && incremental.len() == disks.len()
            && incremental.iter().all(|name| *name == incremental[0]);
        let mut xml = String::from("<domainbackup mode='pull'>\n");
        if uniform {
            xml.push_str(&format!(
                "  <incremental>{}</incremental>\n",
                xml_escape(incremental[0])
            ));
        }
        xml.push_str(&format!(
            "  <server transport='unix' socket='{}'/>\n  <disks>\n",
            xml_escape(&self.socket.display().to_string())
        ));
        for disk in disks {
            let target = xml_escape(&disk.disk.target);
            let mode = match (&disk.mode, uniform) {
                (_, true) => String::new(),
                (ReadMode::Incremental { marker: checkpoint }, false) => format!(
                    " backupmode='incremental' incremental='{}'",
                    xml_escape(checkpoint)
                ),
                (ReadMode::Full { .. }, false) => " backupmode='full'".to_string(),
            };
            let scratch_file = scratch.join(format!("{}.scratch", disk.disk.target));
            xml.push_str(&format!(
                "    <disk name='{target}' backup='yes' type='file'{mode}>\n      <scratch file='{}'/>\n    </disk>\n",
                xml_escape(&scratch_file.display().to_string())
            ));
        }
        end_disks(xml, skipped, "backup", "domainbackup")
    }

    /// The `<domaincheckpoint>` document: a bitmap on every disk backed up.
    pub fn checkpoint_xml(&self, disks: &[JobDisk], skipped: &[DomainDisk]) -> String {
        let mut xml = format!(
            "<domaincheckpoint>\n  <name>{}</name>\n  <description>haven backup</description>\n  <disks>\n",
            xml_escape(&self.checkpoint)
        );
        for disk in disks {
            xml.push_str(&format!(
                "    <disk name='{}' checkpoint='bitmap'/>\n",
                xml_escape(&disk.disk.target)
            ));
        }
        end_disks(xml, skipped, "checkpoint", "domaincheckpoint")
    }

    /// Starts the job: the point in time of every disk at once, and the new checkpoint;
    /// `quiesce` freezes the guest's file systems around it (needs the guest agent).
    pub async fn begin(
        &mut self,
        virsh: &Virsh,
        backup_xml: &Path,
        checkpoint_xml: &Path,
        quiesce: bool,
    ) -> Result<()> {
        self.begin_sent = true;
        let backup_xml = backup_xml.display().to_string();
        let checkpoint_xml = checkpoint_xml.display().to_string();
        let options: &[&str] = if quiesce { &["--quiesce"] } else { &[] };
        virsh
            .run(
                "backup-begin",
                options,
                &[&self.domain, &backup_xml, &checkpoint_xml],
            )
            .await?;
        Ok(())
    }

    /// Ends the job (always) and, when the snapshot was not committed, deletes the new
    /// checkpoint (libvirt merges its bitmap into its parent's, so no change is lost).
    /// Judges by what libvirt shows, not by what was believed sent.
    pub async fn teardown(&self, virsh: &Virsh) -> Result<()> {
        if !self.begin_sent {
            return Ok(());
        }
        let mut first_error = None;
        if let Err(error) = virsh.run("domjobabort", &[], &[&self.domain]).await {
            // "no job is active" after a begin that failed is the expected case.
            let still_running = virsh
                .run("domjobinfo", &[], &[&self.domain])
                .await
                .map(|info| info.contains("Backup"))
                .unwrap_or(false);
            if still_running {
                first_error = Some(error);
            } else {
                tracing::debug!(error = %error.chain(), "no backup job left to abort");
            }
        }
        if !self.committed {
            match virsh.checkpoints(&self.domain).await {
                Ok(names) if names.contains(&self.checkpoint) => {
                    if let Err(error) = virsh
                        .run("checkpoint-delete", &[], &[&self.domain, &self.checkpoint])
                        .await
                    {
                        first_error.get_or_insert(error);
                    } else {
                        tracing::info!(
                            checkpoint = self.checkpoint,
                            "uncommitted checkpoint deleted"
                        );
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

/// Ends a document's `<disks>`: the domain's `skipped` disks listed with `attribute`
/// `no`, then the `root` element closed.
fn end_disks(mut xml: String, skipped: &[DomainDisk], attribute: &str, root: &str) -> String {
    for disk in skipped {
        xml.push_str(&format!(
            "    <disk name='{}' {attribute}='no'/>\n",
            xml_escape(&disk.target)
        ));
    }
    xml.push_str(&format!("  </disks>\n</{root}>\n"));
    xml
}

/// Ends a pull-mode backup job that a killed Haven left running on the domain (libvirt
/// runs one backup job per domain, so it would block every later backup). A job is
/// Haven's when its NBD socket lies in a `haven-libvirt-*` scratch folder; another
/// tool's job is left alone (`backup-begin` then fails with libvirt's message).
pub async fn abort_leftover_job(virsh: &Virsh, domain: &str) -> Result<bool> {
    let Ok(xml) = virsh.run("backup-dumpxml", &[], &[domain]).await else {
        // No backup job on the domain.
        return Ok(false);
    };
    if !is_haven_job(&xml) {
        return Ok(false);
    }
    tracing::warn!(domain, "ending a backup job a killed haven left running");
    virsh.run("domjobabort", &[], &[domain]).await?;
    // libvirt removed the scratch files; the killed run's folder is Haven's to remove.
    if let Some(folder) = job_folder(&xml)
        && let Err(error) = std::fs::remove_dir_all(&folder)
    {
        tracing::warn!(folder = %folder.display(), %error, "cannot remove a killed run's scratch folder");
    }
    Ok(true)
}

/// Whether a `backup-dumpxml` document is a job Haven started.
pub fn is_haven_job(xml: &str) -> bool {
    job_folder(xml).is_some()
}

/// The `haven-libvirt-*` folder holding the job's NBD socket.
fn job_folder(xml: &str) -> Option<PathBuf> {
    let start = xml.find("socket='")? + "socket='".len();
    let end = start + xml[start..].find('\'')?;
    let folder = Path::new(&xml[start..end]).parent()?;
    let name = folder.file_name()?.to_str()?;
    name.starts_with("haven-libvirt-")
        .then(|| folder.to_path_buf())
}

/// After the commit: deletes every other Haven checkpoint of `vm` (older ones, and
/// any a killed run left), oldest first. Other tools' checkpoints are never touched.
pub async fn delete_older_checkpoints(
    virsh: &Virsh,
    domain: &str,
    vm: &str,
    keep: &str,
) -> Result<Vec<String>> {
    let names = virsh.checkpoints(domain).await?;
    let mut stale: Vec<String> = names
        .into_iter()
        .filter(|name| name != keep && CHECKPOINT.is_haven(vm, name))
        .collect();
    // The compact timestamp sorts chronologically.
    stale.sort();
    let mut deleted = Vec::with_capacity(stale.len());
    for name in stale {
        virsh
            .run("checkpoint-delete", &[], &[domain, &name])
            .await
            .map_err(|error| WorkerError::Hypervisor {
                hypervisor: "libvirt",
                message: format!("cannot delete old checkpoint {name}: {}", error.chain()),
            })?;
        deleted.push(name);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(target: &str, mode: ReadMode) -> JobDisk {
        JobDisk {
            disk: DomainDisk {
                target: target.into(),
                kind: "file".into(),
                source: format!("/{target}.qcow2"),
            },
            mode,
        }
    }

    #[test]
    fn recognises_haven_jobs() {
        let ours = "<domainbackup mode='pull'>\n  <server transport='unix' socket='/tmp/haven-libvirt-Ab12/nbd.sock'/>";
        assert!(is_haven_job(ours));
        let theirs = "<domainbackup mode='pull'>\n  <server transport='unix' socket='/var/tmp/virtnbdbackup.88'/>";
        assert!(!is_haven_job(theirs));
    }

    #[test]
    fn uniform_incremental_uses_one_incremental_element() {
        let job = BackupJob::new("dom", "haven-vm-20261125T173402Z".into(), Path::new("/s"));
        let inc = || ReadMode::Incremental {
            marker: "haven-vm-20261125T170000Z".into(),
        };
        let xml = job.backup_xml(
            &[disk("vda", inc()), disk("vdb", inc())],
            &[],
            Path::new("/s"),
        );
        assert!(xml.contains("<incremental>haven-vm-20261125T170000Z</incremental>"));
        assert!(xml.contains("<scratch file='/s/vdb.scratch'/>"));
        assert!(xml.contains("socket='/s/nbd.sock'"));
        assert!(!xml.contains("backupmode"));
    }

    #[test]
    fn mixed_modes_are_per_disk() {
        let job = BackupJob::new("dom", "cp".into(), Path::new("/s"));
        let skipped = DomainDisk {
            target: "vdc".into(),
            kind: "file".into(),
            source: "/c".into(),
        };
        let xml = job.backup_xml(
            &[
                disk(
                    "vda",
                    ReadMode::Incremental {
                        marker: "old".into(),
                    },
                ),
                disk(
                    "vdb",
                    ReadMode::Full {
                        reason: "new disk".into(),
                    },
                ),
            ],
            std::slice::from_ref(&skipped),
            Path::new("/s"),
        );
        assert!(!xml.contains("<incremental>"));
        assert!(xml.contains(
            "name='vda' backup='yes' type='file' backupmode='incremental' incremental='old'"
        ));
        assert!(xml.contains("name='vdb' backup='yes' type='file' backupmode='full'"));
        assert!(xml.contains("<disk name='vdc' backup='no'/>"));
        let checkpoint = job.checkpoint_xml(&[], &[skipped]);
        assert!(checkpoint.contains("<name>cp</name>"));
        assert!(checkpoint.contains("<disk name='vdc' checkpoint='no'/>"));
    }
}
