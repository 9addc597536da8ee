//! Progress on a terminal: bytes, rate and ETA, redrawn in place on stderr.
//!
//! Shown only when stderr is a terminal and JSON output is off, so scripts and logs see
//! nothing but results.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_repo::Progress;

use crate::common::human_bytes;

/// A redraw task bound to a [`Progress`]; stops and clears its line when dropped.
pub struct ProgressLine {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ProgressLine {
    /// Starts drawing `label` and the counters of `progress` if appropriate.
    pub fn start(label: &'static str, progress: Arc<Progress>, json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self { task: None };
        }
        let started = Instant::now();
        let task = tokio::spawn(async move {
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
        });
        Self { task: Some(task) }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = write!(std::io::stderr(), "\r\x1b[K");
        }
    }
}
