//! `/jobs` (running jobs whose progress the page's script refreshes every second
//! from `/api/jobs`, and the recent ones), `/api/jobs` and `/failures`.

use std::fmt::{self, Write};

use haven_proto::v1;

use super::{PageContext, boot_badge, layout};
use crate::console::html::{self, Esc, Segment};
use crate::leader::{Leader, Progress};
use crate::model::JobRecord;

/// Jobs listed under "recent" on `/jobs`.
const RECENT: usize = 50;
/// Failed jobs listed on `/failures`.
const FAILURES: usize = 100;

/// Running and recent jobs.
pub async fn jobs(context: &PageContext, leader: &Leader) -> String {
    let active = leader.active_jobs();
    let recent = leader.jobs(None, RECENT).await;
    layout(
        Some(context),
        "Jobs",
        "/jobs",
        Box::new(|out: &mut String| {
            write!(out, "<h2>Running and waiting ({})</h2>", active.len())?;
            job_rows(out, &active, "live-jobs")?;
            out.push_str("<h2>Recent</h2>");
            job_rows(out, &recent, "recent-jobs")
        }),
    )
}

/// The running and waiting jobs as JSON, for the pages' script.
pub fn jobs_json(leader: &Leader) -> String {
    let jobs: Vec<serde_json::Value> = leader
        .active_jobs()
        .iter()
        .map(|(job, progress)| {
            serde_json::json!({
                "id": job.id,
                "kind": job.kind.as_str(),
                "vm": job.vm,
                "repository": job.repository,
                "state": job.state.as_str(),
                "phase": phase(job, progress),
                "worker": job.current().map(|a| a.worker.as_str()).unwrap_or_default(),
                "bytes_done": progress.bytes_done,
                "bytes_total": progress.bytes_total,
                "bytes_per_second": progress.bytes_per_second,
                "created_unix_ms": job.created_unix_ms,
            })
        })
        .collect();
    serde_json::json!({ "jobs": jobs }).to_string()
}

/// The phase of a job for people.
fn phase(job: &JobRecord, progress: &Progress) -> &'static str {
    if !job.state.is_active() {
        return job.state.as_str();
    }
    match v1::JobPhase::try_from(progress.phase) {
        Ok(v1::JobPhase::Preparing) => "preparing",
        Ok(v1::JobPhase::Reading) => "reading",
        Ok(v1::JobPhase::Committing) => "committing",
        Ok(v1::JobPhase::Done) => "done",
        _ => job.state.as_str(),
    }
}

/// A table of jobs, `id` its element id. Rows of active jobs carry
/// `data-job`/`data-active` and a `<progress>` the script updates.
pub(super) fn job_rows(out: &mut String, jobs: &[(JobRecord, Progress)], id: &str) -> fmt::Result {
    write!(
        out,
        "<table id=\"{id}\" class=\"jobs\"><thead><tr><th>Job<th>Kind<th>VM<th>State<th>Worker\
         <th>Progress<th>Created<th>Result</tr></thead><tbody>"
    )?;
    for (job, progress) in jobs {
        let active = job.state.is_active();
        write!(
            out,
            "<tr data-job=\"{}\"{}><td>{}<td>{}<td>",
            Esc(&job.id),
            if active { " data-active" } else { "" },
            Esc(&job.id),
            job.kind.as_str()
        )?;
        vm_link(out, &job.vm)?;
        write!(
            out,
            "<td class=\"state s-{}\">{}<td>{}<td class=\"progress\">",
            job.state.as_str(),
            phase(job, progress),
            Esc(job.current().map(|a| a.worker.as_str()).unwrap_or_default())
        )?;
        if active {
            write!(
                out,
                "<progress max=\"{}\" value=\"{}\"></progress> <span class=\"done\">{}</span>",
                progress.bytes_total.max(1),
                progress.bytes_done,
                progress_text(progress)
            )?;
        }
        write!(out, "<td>{}<td>", html::time(job.created_unix_ms))?;
        if job.boot_passed.is_some() {
            boot_badge(out, job.boot_passed)?;
            if let Some(boot) = &job.params.boot {
                write!(out, " {}", Esc(&boot.snapshot))?;
            }
        } else if let Some(error) = &job.error {
            write!(out, "<span class=\"error\">{}</span>", Esc(error))?;
        } else if let Some(snapshot) = &job.snapshot {
            write!(out, "{}", Esc(snapshot))?;
        } else if let Some(summary) = &job.summary {
            write!(out, "{}", Esc(summary))?;
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    Ok(())
}

/// A link to the page of `vm`; nothing for a job of a whole repository.
fn vm_link(out: &mut String, vm: &str) -> fmt::Result {
    if vm.is_empty() {
        return Ok(());
    }
    write!(out, "<a href=\"/vm/{}\">{}</a>", Segment(vm), Esc(vm))
}

/// `1.5 GiB of 4.0 GiB, 120.0 MiB/s` (the script writes the same).
fn progress_text(progress: &Progress) -> String {
    format!(
        "{} of {}, {}/s",
        html::bytes(progress.bytes_done),
        html::bytes(progress.bytes_total),
        html::bytes(progress.bytes_per_second)
    )
}

/// The jobs that failed last, with their errors.
pub fn failures(context: &PageContext, leader: &Leader) -> String {
    let failed = leader.recent_failures(FAILURES);
    layout(
        Some(context),
        "Recent failures",
        "/failures",
        Box::new(|out: &mut String| {
            if failed.is_empty() {
                out.push_str(
                    "<p class=\"message\" id=\"no-failures\">No job in the history failed.</p>",
                );
                return Ok(());
            }
            out.push_str(
                "<table id=\"failures\"><thead><tr><th>Ended<th>Job<th>Kind<th>VM<th>Repository\
                 <th>Attempts<th>Error</tr></thead><tbody>",
            );
            for job in &failed {
                write!(
                    out,
                    "<tr data-job=\"{}\"><td>{}<td>{}<td>{}<td>",
                    Esc(&job.id),
                    html::time(job.finished_unix_ms),
                    Esc(&job.id),
                    job.kind.as_str(),
                )?;
                vm_link(out, &job.vm)?;
                write!(
                    out,
                    "<td>{}<td>{}<td class=\"error\">{}</tr>",
                    Esc(&job.repository),
                    job.attempts.len(),
                    Esc(job.error.as_deref().unwrap_or_default())
                )?;
            }
            out.push_str("</tbody></table>");
            Ok(())
        }),
    )
}
