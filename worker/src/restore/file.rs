//! Full restore of one disk of a snapshot to a raw file or a qcow2 image.
//!
//! The output is written under a temporary name and renamed into place only when every
//! chunk has been fetched, verified (checksum, authentication, digest, length) and
//! written: a restore either produces the exact disk or nothing.
//!
//! Chunks are fetched once per window even when several slots share them (cloned
//! blocks, templates), with `in_flight` fetches and writes overlapping. Zero slots are
//! never written, so the output stays sparse: a raw file keeps holes, a qcow2 leaves
//! those clusters unallocated.
//!
//! Restoring into an existing disk exported over NBD (optionally writing only the slots
//! that differ) lives in [`super::nbd`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use haven_nbd::ConnectOptions;
use haven_repo::{FixedIndex, Progress, Repository, SnapshotRef};
use serde::Serialize;

use crate::error::{Result, WorkerError};
use crate::export::{Access, EXPORT_NAME, ImageExport, create_qcow2};
use crate::pipeline::pool::ClientPool;
use crate::restore::raw_file::RawFileWriter;
use crate::restore::windows::{Written, windows, write_chunks};

/// Output format of a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreFormat {
    /// A sparse raw file.
    Raw,
    /// A qcow2 image, written through `qemu-nbd`.
    Qcow2,
}

/// What to restore and where.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// `VM@TIME` or `VM@latest`.
    pub snapshot: SnapshotRef,
    /// Disk name; may be omitted when the snapshot has one disk.
    pub disk: Option<String>,
    /// Output path.
    pub to: PathBuf,
    /// Output format.
    pub format: RestoreFormat,
    /// Replace an existing output file.
    pub force: bool,
    /// Chunks fetched and written concurrently.
    pub in_flight: usize,
}

/// A machine-readable summary of a finished restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// `VM@TIME` restored.
    pub snapshot: String,
    /// Disk restored.
    pub disk: String,
    /// Output path.
    pub to: String,
    /// Output format.
    pub format: RestoreFormat,
    /// Disk size in bytes.
    pub size: u64,
    /// Bytes of data written (zero slots excluded).
    pub bytes_written: u64,
    /// Distinct chunk fetches.
    pub chunks_fetched: u64,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
}

/// Where restored slots go.
enum Sink {
    File(Arc<RawFileWriter>),
    Nbd(ClientPool),
}

impl Sink {
    async fn write(&self, offset: u64, data: Arc<Vec<u8>>) -> Result<()> {
        match self {
            Sink::File(file) => {
                let file = file.clone();
                tokio::task::spawn_blocking(move || file.write_at(offset, &data))
                    .await
                    .map_err(WorkerError::join)?
                    .map_err(WorkerError::io("writing the restored disk"))
            }
            Sink::Nbd(pool) => Ok(pool.checkout().await?.write(offset, &data).await?),
        }
    }
}

/// Restores one disk of a snapshot.
pub async fn restore_disk(
    repo: Arc<Repository>,
    request: &RestoreRequest,
    progress: Arc<Progress>,
) -> Result<RestoreReport> {
    let started = Instant::now();
    let (id, disk, index) =
        super::open_disk(&repo, &request.snapshot, request.disk.as_deref()).await?;

    if request.to.exists() && !request.force {
        return Err(WorkerError::InvalidInput(format!(
            "{} exists (use --force to replace it)",
            request.to.display()
        )));
    }
    let partial = partial_path(&request.to);
    let _ = std::fs::remove_file(&partial);
    let outcome = write_output(&repo, &index, &partial, request, progress).await;
    let (bytes_written, chunks_fetched) = match outcome {
        Ok(figures) => figures,
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    std::fs::rename(&partial, &request.to).map_err(WorkerError::io(format!(
        "cannot move the restored disk to {}",
        request.to.display()
    )))?;
    Ok(RestoreReport {
        snapshot: id.to_string(),
        disk: disk.name,
        to: request.to.display().to_string(),
        format: request.format,
        size: index.disk_size(),
        bytes_written,
        chunks_fetched,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".haven-partial");
    to.with_file_name(name)
}

async fn write_output(
    repo: &Arc<Repository>,
    index: &FixedIndex,
    path: &Path,
    request: &RestoreRequest,
    progress: Arc<Progress>,
) -> Result<(u64, u64)> {
    match request.format {
        RestoreFormat::Raw => {
            let file = RawFileWriter::create(path, index.disk_size())
                .map_err(WorkerError::io(format!("cannot create {}", path.display())))?;
            let file = Arc::new(file);
            let figures = restore_slots(
                repo,
                index,
                &Sink::File(file.clone()),
                request.in_flight,
                progress,
            )
            .await?;
            file.sync()
                .map_err(WorkerError::io("cannot sync the restored disk"))?;
            Ok(figures)
        }
        RestoreFormat::Qcow2 => {
            create_qcow2(path, index.disk_size()).await?;
            let connections = request.in_flight.clamp(1, 8);
            let export = ImageExport::start(path, "qcow2", Access::ReadWrite, connections).await?;
            let written = async {
                let pool = ClientPool::connect(
                    &export.endpoint(),
                    &ConnectOptions::new(EXPORT_NAME),
                    connections,
                )
                .await?;
                let sink = Sink::Nbd(pool);
                let figures =
                    restore_slots(repo, index, &sink, request.in_flight, progress).await?;
                if let Sink::Nbd(pool) = sink {
                    pool.close(true).await?;
                }
                Ok::<_, WorkerError>(figures)
            }
            .await;
            let stopped = export.stop().await;
            let figures = written?;
            stopped?;
            Ok(figures)
        }
    }
}

/// Fetches every non-zero slot's chunk once per window and writes it to all its slots;
/// zero slots are left alone (the output is sparse).
async fn restore_slots(
    repo: &Arc<Repository>,
    index: &FixedIndex,
    sink: &Sink,
    in_flight: usize,
    progress: Arc<Progress>,
) -> Result<(u64, u64)> {
    progress.add_total(index.disk_size());
    let mut total = Written::default();
    for window in windows(index) {
        for slot in window.zero_slots {
            let (start, end) = index.slot_range(slot);
            progress.add_done(end - start);
        }
        let written = write_chunks(
            repo,
            index,
            window.chunks,
            in_flight,
            &progress,
            |_, offset, data| sink.write(offset, data),
        )
        .await?;
        total.bytes += written.bytes;
        total.chunks += written.chunks;
    }
    Ok((total.bytes, total.chunks))
}
