//! Progress of the long commands (`backup`, `restore`, `verify`, `replicate`), on
//! standard error so that standard output keeps only the result:
//!
//! - on a terminal without `--json`: bytes, rate and ETA on one line redrawn in place;
//! - with `--json`: one JSON object per line, every second, ending with a summary
//!   (`docs/cli.md`, "Progress"), for scripts and GUIs;
//! - otherwise nothing, so logs see nothing but results.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use haven_repo::{Phase, Progress};
use serde_json::json;

use crate::common::{human_bytes, print_json};

/// Runs `work` (a backup or a restore) under a progress line for `command` that begins
/// in `phase`, then prints the report it returns: as JSON with `--json`, else as `text`
/// writes it. A failed `work` ends the line as failed and returns its error.
pub async fn run_and_report<T, E, F>(
    command: &'static str,
    phase: Phase,
    json: bool,
    work: impl FnOnce(Arc<Progress>) -> F,
    text: impl FnOnce(&T) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    T: serde::Serialize,
    F: Future<Output = Result<T, E>>,
    anyhow::Error: From<E>,
{
    let progress = Arc::new(Progress::new());
    let line = ProgressLine::start(command, phase, progress.clone(), json);
    let report = work(progress).await?;
    line.finish(true);
    if json {
        return print_json(&report);
    }
    text(&report)
}

/// A display task bound to a [`Progress`]. [`ProgressLine::finish`] ends it after the
/// work; dropped without it (the command failed), it ends as failed.
pub struct ProgressLine {
    task: Option<tokio::task::JoinHandle<()>>,
    /// The JSON reporter, whose end is a summary line; none for the terminal line.
    json: Option<Arc<JsonReport>>,
}

/// What the JSON lines are computed from.
struct JsonReport {
    command: &'static str,
    progress: Arc<Progress>,
    started: Instant,
    /// Set (under the standard error lock) when the summary is written: no progress
    /// line may follow it.
    ended: AtomicBool,
}

impl JsonReport {
    /// One line: `type` (`progress` or `summary`), `command`, `phase`, the byte
    /// counts, the mean rate since the start and the elapsed time.
    fn line(&self, kind: &str, phase: &str, ok: Option<bool>) -> serde_json::Value {
        let (done, total) = self.progress.snapshot();
        let seconds = self.started.elapsed().as_secs_f64();
        let mut line = json!({
            "type": kind,
            "command": self.command,
            "phase": phase,
            "bytes_done": done,
            "bytes_total": total,
            "bytes_per_second": (done as f64 / seconds.max(0.001)).round() as u64,
            "elapsed_seconds": (seconds * 1000.0).round() / 1000.0,
        });
        if let Some(ok) = ok {
            line["ok"] = ok.into();
        }
        line
    }

    /// Writes a progress line unless the summary is out.
    fn progress_line(&self) {
        let mut stderr = std::io::stderr().lock();
        if self.ended.load(Ordering::Relaxed) {
            return;
        }
        let line = self.line("progress", self.progress.phase().as_str(), None);
        let _ = writeln!(stderr, "{line}");
    }

    /// Writes the summary, once.
    fn summary(&self, ok: bool) {
        let mut stderr = std::io::stderr().lock();
        if self.ended.swap(true, Ordering::Relaxed) {
            return;
        }
        let line = self.line("summary", if ok { "done" } else { "failed" }, Some(ok));
        let _ = writeln!(stderr, "{line}");
    }
}

impl ProgressLine {
    /// Starts reporting `command`'s progress, which begins in `phase` (the pipelines
    /// of backups move it on): JSON lines if `json`, else a line on a terminal, else
    /// nothing.
    pub fn start(command: &'static str, phase: Phase, progress: Arc<Progress>, json: bool) -> Self {
        progress.set_phase(phase);
        if json {
            let report = Arc::new(JsonReport {
                command,
                progress,
                started: Instant::now(),
                ended: AtomicBool::new(false),
            });
            // The first line at once, so every run has one before its summary.
            report.progress_line();
            let lines = report.clone();
            let task = tokio::spawn(async move {
                let second = Duration::from_secs(1);
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + second, second);
                loop {
                    tick.tick().await;
                    lines.progress_line();
                }
            });
            return Self {
                task: Some(task),
                json: Some(report),
            };
        }
        if !std::io::stderr().is_terminal() {
            return Self {
                task: None,
                json: None,
            };
        }
        let task = tokio::spawn(terminal_line(command, progress));
        Self {
            task: Some(task),
            json: None,
        }
    }

    /// Ends the display after the work: with `--json` a summary saying whether it
    /// all went well (`ok` is false when the command found failures, as `verify`
    /// can), on a terminal the line cleared.
    pub fn finish(mut self, ok: bool) {
        self.end(ok);
    }

    fn end(&mut self, ok: bool) {
        let Some(task) = self.task.take() else {
            return;
        };
        task.abort();
        match &self.json {
            Some(report) => report.summary(ok),
            None => {
                let _ = write!(std::io::stderr(), "\r\x1b[K");
            }
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.end(false);
    }
}

/// Redraws `label: DONE / TOTAL  RATE/s  ETA` four times a second.
async fn terminal_line(label: &'static str, progress: Arc<Progress>) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let (done, total) = progress.snapshot();
        let seconds = started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / seconds;
        let eta = if rate > 0.0 && total > done {
            format!("ETA {:.0}s", (total - done) as f64 / rate)
        } else {
            String::new()
        };
        let mut stderr = std::io::stderr().lock();
        let _ = write!(
            stderr,
            "\r\x1b[K{label}: {} / {}  {}/s  {eta}",
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        );
        let _ = stderr.flush();
    }
}
