//! `haven verify --boot VM@TIME`: boot the snapshot in a sandbox and record the verdict.

use std::sync::Arc;

use anyhow::{Context, Result};
use haven_repo::{BootOutcome, Repository, SnapshotRef};
use haven_worker::boot::resources::Limits;
use haven_worker::boot::{BootRequest, boot_test};
use serde::Serialize;

use super::BootArgs;
use crate::common::print_json;
use crate::exit::CliError;

#[derive(Serialize)]
struct BootLine<'a> {
    snapshot: String,
    record: &'a haven_repo::BootRecord,
    record_key: &'a str,
}

/// Runs one boot test, prints the verdict, and fails (exit code 6) when the guest did
/// not come up.
pub async fn run(
    repo: Arc<Repository>,
    snapshot: SnapshotRef,
    args: BootArgs,
    json: bool,
) -> Result<()> {
    let request = BootRequest {
        snapshot,
        check: args.check,
        timeout: args.timeout,
        limits: Limits {
            max_cpus: args.max_cpus,
            max_memory_mib: args.max_memory,
        },
        work_dir: None,
        accel: None,
    };
    let report = boot_test(repo, &request).await?;
    if let Some(dir) = &args.evidence {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let serial = dir.join("serial.log");
        std::fs::write(&serial, &report.evidence.serial_log)
            .with_context(|| format!("cannot write {}", serial.display()))?;
        if let Some(png) = &report.evidence.screenshot_png {
            let screen = dir.join("screen.png");
            std::fs::write(&screen, png)
                .with_context(|| format!("cannot write {}", screen.display()))?;
        }
    }
    let record = &report.record;
    if json {
        print_json(&BootLine {
            snapshot: report.snapshot.to_string(),
            record,
            record_key: &report.record_key,
        })?;
    } else {
        println!(
            "{} boot {} in {:.1} s ({}; {}): {}",
            report.snapshot,
            match record.outcome {
                BootOutcome::Passed => "PASSED",
                BootOutcome::Failed => "FAILED",
            },
            record.duration_ms as f64 / 1000.0,
            record.check,
            record.sandbox,
            record.detail
        );
    }
    if record.is_failed() {
        return Err(CliError::Partial(format!(
            "snapshot {} did not boot: {}",
            report.snapshot, record.detail
        ))
        .into());
    }
    Ok(())
}
