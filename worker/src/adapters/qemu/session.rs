//! Everything Haven changes inside QEMU during a backup, and how it is undone.
//!
//! A [`Session`] records each object as soon as QEMU has created it (fleece node, job,
//! export, NBD server, bitmaps), so [`Session::teardown`] removes exactly those, on
//! success, error or cancellation. What a killed Haven leaves behind is recognised by
//! name ([`HAVEN_PREFIX`], Haven's bitmap names) and removed by the next run
//! ([`Session::clean_leftovers`], [`Session::reconcile_bitmaps`]) before it decides
//! anything.
//!
//! Bitmap rule: the bitmap a committed snapshot points at is removed only after the
//! next snapshot is committed; if that backup fails, the bitmap started at its point in
//! time is merged back into the old one, so the next run still sees every change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::chain::BITMAP;
use super::graph::{Device, HAVEN_PREFIX, LiveDisk, NodeInfo, parse_devices, parse_nodes};
use crate::adapters::qemu::qmp::{QmpClient, QmpError};
use crate::error::{Result, WorkerError};

/// How long teardown waits for QEMU to drop an export or finish cancelling a job.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Per-disk objects created in QEMU.
#[derive(Debug)]
pub struct DiskObjects {
    /// The disk.
    pub disk: LiveDisk,
    /// Fleece node and job id (`haven-fleece-N`).
    pub fleece_node: String,
    /// The temporary overlay receiving old data before the guest overwrites it.
    pub fleece_file: PathBuf,
    /// NBD export id (`haven-N`).
    pub export_id: String,
    /// NBD export name.
    pub export_name: String,
    /// The bitmap this snapshot starts.
    pub new_bitmap: String,
    /// The previous snapshot's bitmap, when this disk is read incrementally.
    pub old_bitmap: Option<String>,
}

impl DiskObjects {
    /// Names the objects of disk number `position`; nothing is created yet.
    pub fn new(
        position: usize,
        vm: &str,
        disk: LiveDisk,
        scratch: &Path,
        new_bitmap: String,
        old_bitmap: Option<String>,
    ) -> Self {
        Self {
            fleece_node: format!("{HAVEN_PREFIX}fleece-{position}"),
            fleece_file: scratch.join(format!("{}.qcow2", disk.name)),
            export_id: format!("{HAVEN_PREFIX}{position}"),
            export_name: format!("{HAVEN_PREFIX}{vm}-{}", disk.name),
            disk,
            new_bitmap,
            old_bitmap,
        }
    }
}

/// A QMP connection plus the record of what this backup created.
pub struct Session {
    /// The connection (reopened if an error left it unusable).
    pub qmp: QmpClient,
    socket: PathBuf,
    timeout: Duration,
    vm: String,
    /// The disks' objects.
    pub disks: Vec<DiskObjects>,
    nbd_server_started: bool,
    /// Set once the manifest is committed: teardown then rotates bitmaps instead of
    /// merging the new ones back.
    pub committed: bool,
}

fn qmp_error(error: QmpError) -> WorkerError {
    error.into()
}

/// Whether QEMU refused `nbd-server-start` because a server already runs.
fn nbd_server_already_running(error: &WorkerError) -> bool {
    matches!(error, WorkerError::Qmp(error)
        if error.description().is_some_and(|text| text.contains("already running")))
}

impl Session {
    /// Connects to QMP.
    pub async fn connect(socket: &Path, timeout: Duration, vm: &str) -> Result<Self> {
        let qmp = QmpClient::connect(socket, timeout)
            .await
            .map_err(qmp_error)?;
        Ok(Self {
            qmp,
            socket: socket.to_path_buf(),
            timeout,
            vm: vm.to_string(),
            disks: Vec::new(),
            nbd_server_started: false,
            committed: false,
        })
    }

    async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        self.qmp
            .execute(command, arguments)
            .await
            .map_err(qmp_error)
    }

    /// `query-block` as QEMU answers it (stored as part of the VM's configuration) and
    /// the guest devices it lists.
    pub async fn devices(&mut self) -> Result<(Value, Vec<Device>)> {
        let block = self.execute("query-block", json!({})).await?;
        let devices = parse_devices(&block);
        Ok((block, devices))
    }

    /// Reads the block graph.
    pub async fn nodes(&mut self) -> Result<Vec<NodeInfo>> {
        let reply = self
            .execute("query-named-block-nodes", json!({"flat": true}))
            .await?;
        parse_nodes(&reply)
    }

    /// Block node `name` as QEMU shows it now, if it still exists.
    async fn node(&mut self, name: &str) -> Result<Option<NodeInfo>> {
        Ok(self
            .nodes()
            .await?
            .into_iter()
            .find(|info| info.name == name))
    }

    /// Removes exports, jobs and fleece nodes a killed Haven left behind.
    pub async fn clean_leftovers(&mut self) -> Result<()> {
        self.remove_haven_objects(true).await
    }

    /// Removes every export, job and block node named with Haven's prefix, whatever
    /// this process believes it created: a command cut short by cancellation may have
    /// taken effect in QEMU without its reply ever being read.
    async fn remove_haven_objects(&mut self, leftovers: bool) -> Result<()> {
        let log = |kind: &str, id: &str| {
            if leftovers {
                tracing::warn!(kind, id, "removing what an interrupted backup left in qemu");
            } else {
                tracing::debug!(kind, id, "removing");
            }
        };
        let exports = self.execute("query-block-exports", json!({})).await?;
        for id in ids_with_prefix(&exports, "id") {
            log("nbd export", &id);
            self.delete_export(&id).await?;
        }
        let jobs = self.execute("query-jobs", json!({})).await?;
        for id in ids_with_prefix(&jobs, "id") {
            log("job", &id);
            self.cancel_job(&id).await?;
        }
        for node in self.nodes().await? {
            if node.name.starts_with(HAVEN_PREFIX) {
                log("fleece node", &node.name);
                self.execute("blockdev-del", json!({"node-name": node.name}))
                    .await?;
                remove_fleece_file(&node.filename);
            }
        }
        Ok(())
    }

    /// Makes the disk's Haven bitmaps a clean chain again after an interrupted run:
    /// when `chain_bitmap` (the committed snapshot's) is usable, every other Haven
    /// bitmap of this VM is merged into it (over-reading is safe, missing a change is
    /// not) and it records again; otherwise the strays are useless and removed.
    /// One transaction, so no write slips between merge and enable.
    pub async fn reconcile_bitmaps(
        &mut self,
        disk: &LiveDisk,
        chain_bitmap: Option<&str>,
    ) -> Result<()> {
        let ours: Vec<_> = disk
            .bitmaps
            .iter()
            .filter(|bitmap| BITMAP.is_haven(&self.vm, &bitmap.name))
            .collect();
        let anchor = ours.iter().find(|bitmap| {
            Some(bitmap.name.as_str()) == chain_bitmap && !bitmap.inconsistent && !bitmap.busy
        });
        // The chain's own bitmap is never a stray: when it is unusable, `decide` reports
        // why, and the rotation after the next commit removes it.
        let strays: Vec<_> = ours
            .iter()
            .filter(|bitmap| Some(bitmap.name.as_str()) != chain_bitmap)
            .collect();
        let mut actions = Vec::new();
        if let Some(anchor) = anchor {
            let mergeable: Vec<&str> = strays
                .iter()
                .filter(|bitmap| !bitmap.inconsistent)
                .map(|bitmap| bitmap.name.as_str())
                .collect();
            if !mergeable.is_empty() {
                tracing::warn!(disk = disk.name, into = anchor.name, from = ?mergeable,
                    "merging bitmaps left by an interrupted backup");
                actions.push(json!({"type": "block-dirty-bitmap-merge",
                    "data": {"node": disk.node, "target": anchor.name, "bitmaps": mergeable}}));
            }
            if !anchor.recording {
                actions.push(json!({"type": "block-dirty-bitmap-enable",
                    "data": {"node": disk.node, "name": anchor.name}}));
            }
        }
        for stray in &strays {
            if anchor.is_none() {
                tracing::warn!(
                    disk = disk.name,
                    bitmap = stray.name,
                    "removing a haven bitmap no committed snapshot can use"
                );
            }
            actions.push(json!({"type": "block-dirty-bitmap-remove",
                "data": {"node": disk.node, "name": stray.name}}));
        }
        if actions.is_empty() {
            return Ok(());
        }
        self.execute("transaction", json!({"actions": actions}))
            .await?;
        Ok(())
    }

    /// Creates the fleece overlays (not yet attached to any job).
    pub async fn add_fleece_nodes(&mut self) -> Result<()> {
        for position in 0..self.disks.len() {
            let (file, node, size, base) = {
                let disk = &self.disks[position];
                (
                    disk.fleece_file.clone(),
                    disk.fleece_node.clone(),
                    disk.disk.size,
                    disk.disk.node.clone(),
                )
            };
            crate::export::create_qcow2(&file, size).await?;
            self.execute(
                "blockdev-add",
                json!({"driver": "qcow2", "node-name": node, "backing": base,
                       "file": {"driver": "file", "filename": file}}),
            )
            .await?;
        }
        Ok(())
    }

    /// The snapshot point of every disk at once: one transaction starts the new
    /// bitmaps, freezes the old ones and starts copy-before-write into the overlays.
    /// Returns how long QEMU held guest I/O (the transaction's round trip).
    pub async fn take_point_in_time(&mut self) -> Result<Duration> {
        let mut actions = Vec::new();
        for disk in &self.disks {
            actions.push(json!({"type": "block-dirty-bitmap-add",
                "data": {"node": disk.disk.node, "name": disk.new_bitmap, "persistent": true}}));
            if let Some(old) = &disk.old_bitmap {
                actions.push(json!({"type": "block-dirty-bitmap-disable",
                    "data": {"node": disk.disk.node, "name": old}}));
            }
            actions.push(json!({"type": "blockdev-backup",
                "data": {"device": disk.disk.node, "target": disk.fleece_node, "sync": "none",
                         "job-id": disk.fleece_node, "auto-dismiss": true}}));
        }
        let started = Instant::now();
        self.execute("transaction", json!({"actions": actions}))
            .await?;
        let held = started.elapsed();
        Ok(held)
    }

    /// Starts QEMU's NBD server on `socket`, or reuses a running one when `existing`.
    pub async fn start_nbd_server(&mut self, socket: &Path, existing: bool) -> Result<()> {
        if existing {
            return Ok(());
        }
        // Marked before asking: a cancellation mid-command must still stop it.
        self.nbd_server_started = true;
        let start = json!({"addr": {"type": "unix", "data": {"path": socket}}});
        let mut result = self.execute("nbd-server-start", start.clone()).await;
        if let Err(error) = &result
            && nbd_server_already_running(error)
            && self.nbd_server_is_leftover().await?
        {
            // A Haven killed mid-backup (another worker, in a cluster) left its
            // private server behind with no export: stop it and start ours.
            tracing::warn!(
                vm = self.vm,
                "stopping an NBD server left by a killed backup"
            );
            self.execute("nbd-server-stop", json!({})).await?;
            result = self.execute("nbd-server-start", start).await;
        }
        if result.is_err() {
            self.nbd_server_started = false;
        }
        match result {
            Ok(_) => Ok(()),
            Err(error) if nbd_server_already_running(&error) => Err(WorkerError::InvalidInput(
                "qemu already runs an nbd server: pass its unix socket with --nbd-server".into(),
            )),
            Err(error) => Err(error),
        }
    }

    /// Whether QEMU's running NBD server exports nothing but Haven's own exports (by
    /// then already removed as leftovers): the mark of a server a killed Haven started.
    async fn nbd_server_is_leftover(&mut self) -> Result<bool> {
        let exports = self.execute("query-block-exports", json!({})).await?;
        Ok(exports.as_array().is_none_or(|list| {
            list.iter().all(|export| {
                export["type"] != "nbd"
                    || export["id"]
                        .as_str()
                        .is_some_and(|id| id.starts_with("haven-"))
            })
        }))
    }

    /// Exports disk `position`'s point-in-time view read-only, with the old bitmap.
    pub async fn export(&mut self, position: usize) -> Result<()> {
        let disk = &self.disks[position];
        let mut arguments = json!({"type": "nbd", "id": disk.export_id, "node-name": disk.fleece_node,
            "name": disk.export_name, "writable": false});
        if let Some(old) = &disk.old_bitmap {
            arguments["bitmaps"] = json!([old]);
        }
        self.execute("block-export-add", arguments).await?;
        Ok(())
    }

    async fn delete_export(&mut self, id: &str) -> Result<()> {
        self.execute("block-export-del", json!({"id": id, "mode": "hard"}))
            .await?;
        self.wait_gone("query-block-exports", id).await
    }

    async fn cancel_job(&mut self, id: &str) -> Result<()> {
        match self.execute("job-cancel", json!({"id": id})).await {
            Ok(_) => {}
            // Already concluded: dismiss it (auto-dismiss may be off for a foreign setup).
            Err(_) => {
                let _ = self.execute("job-dismiss", json!({"id": id})).await;
            }
        }
        self.wait_gone("query-jobs", id).await
    }

    async fn wait_gone(&mut self, query: &str, id: &str) -> Result<()> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let list = self.execute(query, json!({})).await?;
            if !ids_with_prefix(&list, "id").iter().any(|found| found == id) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(WorkerError::qemu(format!(
                    "{id} still present after {SETTLE_TIMEOUT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Undoes everything this backup created, in dependency order, and either rotates
    /// the bitmaps (committed) or merges the new ones back (not committed). Keeps going
    /// after an error and returns the first one.
    pub async fn teardown(&mut self) -> Result<()> {
        if self.qmp.is_poisoned() {
            self.qmp.close();
            match QmpClient::connect(&self.socket, self.timeout).await {
                Ok(qmp) => self.qmp = qmp,
                Err(error) => {
                    return Err(WorkerError::qemu(format!(
                        "cannot reconnect to qmp for cleanup ({error}); the next backup removes the leftovers"
                    )));
                }
            }
        }
        let mut first_error: Option<WorkerError> = None;
        let mut note = |result: Result<()>, what: &str| {
            if let Err(error) = result {
                tracing::warn!(error = %error.chain(), "cleanup: {what} failed");
                first_error.get_or_insert(error);
            }
        };
        note(
            self.remove_haven_objects(false).await,
            "removing exports, jobs and overlays",
        );
        if self.nbd_server_started {
            let result = self.execute("nbd-server-stop", json!({})).await.map(drop);
            note(result, "stopping the nbd server");
            self.nbd_server_started = false;
        }
        for position in 0..self.disks.len() {
            let _ = std::fs::remove_file(&self.disks[position].fleece_file);
            let result = if self.committed {
                self.rotate_bitmaps(position).await
            } else {
                self.restore_bitmaps(position).await
            };
            note(result, "bitmap cleanup");
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err(error),
        }
    }

    /// After a commit: the new bitmap is the chain; every other Haven bitmap of this VM
    /// on the node goes.
    async fn rotate_bitmaps(&mut self, position: usize) -> Result<()> {
        let disk = &self.disks[position];
        let (node, keep) = (disk.disk.node.clone(), disk.new_bitmap.clone());
        let Some(info) = self.node(&node).await? else {
            return Ok(());
        };
        let mut actions = Vec::new();
        for bitmap in info.bitmaps {
            if bitmap.name != keep && BITMAP.is_haven(&self.vm, &bitmap.name) {
                actions.push(json!({"type": "block-dirty-bitmap-remove",
                    "data": {"node": node, "name": bitmap.name}}));
            }
        }
        if !actions.is_empty() {
            self.execute("transaction", json!({"actions": actions}))
                .await?;
        }
        Ok(())
    }

    /// Without a commit: changes recorded since the snapshot point go back into the old
    /// bitmap, which records again; a new bitmap without an old one is dropped (the
    /// next backup is a full one anyway).
    async fn restore_bitmaps(&mut self, position: usize) -> Result<()> {
        let disk = &self.disks[position];
        let (node, new, old) = (
            disk.disk.node.clone(),
            disk.new_bitmap.clone(),
            disk.old_bitmap.clone(),
        );
        // Judge by what QEMU shows: the transaction may or may not have happened.
        let Some(info) = self.node(&node).await? else {
            return Ok(());
        };
        let find = |name: &str| info.bitmaps.iter().find(|bitmap| bitmap.name == name);
        let new_exists = find(&new).is_some();
        let old = old
            .as_deref()
            .and_then(find)
            .filter(|bitmap| !bitmap.inconsistent);
        let mut actions = Vec::new();
        if let Some(old) = old {
            if new_exists {
                actions.push(json!({"type": "block-dirty-bitmap-merge",
                    "data": {"node": node, "target": old.name, "bitmaps": [new]}}));
            }
            if !old.recording {
                actions.push(json!({"type": "block-dirty-bitmap-enable",
                    "data": {"node": node, "name": old.name}}));
            }
        }
        if new_exists {
            actions.push(json!({"type": "block-dirty-bitmap-remove",
                "data": {"node": node, "name": new}}));
        }
        if !actions.is_empty() {
            self.execute("transaction", json!({"actions": actions}))
                .await?;
        }
        Ok(())
    }
}

/// Ids starting with Haven's prefix in a `query-block-exports`/`query-jobs` reply.
fn ids_with_prefix(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|list| {
            list.iter()
                .filter_map(|item| item.get(key)?.as_str())
                .filter(|id| id.starts_with(HAVEN_PREFIX))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes an overlay file of an interrupted run, only if it is unmistakably Haven's
/// (inside a `haven-fleece-*` scratch folder).
fn remove_fleece_file(filename: &str) {
    // A qcow2 node with an explicit backing reports `json:{..., "file": {"filename": ...}}`.
    let parsed = filename
        .strip_prefix("json:")
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
        .and_then(|value| {
            value
                .get("file")?
                .get("filename")?
                .as_str()
                .map(str::to_string)
        });
    let filename = parsed.as_deref().unwrap_or(filename);
    let path = Path::new(filename);
    let Some(folder) = path.parent() else {
        return;
    };
    let ours = folder
        .file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with("haven-fleece-"));
    if ours && path.extension().is_some_and(|ext| ext == "qcow2") {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_dir(folder);
    }
}
