//! `/vm/NAME`: one VM's protection and boot-test verdict, its snapshots with the commands that restore
//! them, its last jobs (live while they run) and, for operators, "back up now". Read
//! from that VM's records only (its range of the catalog, one pass over the jobs).

use std::fmt::{self, Write};

use super::jobs::job_rows;
use super::{PageContext, badge, boot_badge, boot_verified, layout};
use crate::console::Protection;
use crate::console::html::{self, Esc, Segment, shell_quote};
use crate::leader::Leader;
use crate::model::SnapshotRecord;

/// Jobs listed on a VM's page.
const JOBS: usize = 20;

/// The page of `vm`; `None` when neither the inventory nor the catalog knows it.
pub async fn vm(context: &PageContext, leader: &Leader, vm: &str) -> Option<String> {
    let summary = leader.vm_summary(vm, context.now_ms)?;
    let policy = leader.policy(&summary.policy);
    let rpo = policy.as_ref().map_or(0, |p| p.rpo_seconds);
    let protection = Protection::of(&summary, rpo);
    let inventory = leader.vm(vm);
    let mut snapshots = leader.snapshots(Some(vm)).await;
    snapshots.reverse();
    let jobs = leader.jobs(Some(vm), JOBS).await;
    Some(layout(
        Some(context),
        &format!("VM {vm}"),
        "/vms",
        Box::new(|out: &mut String| {
            out.push_str("<p id=\"protection\">");
            badge(out, protection)?;
            out.push_str("</p><dl class=\"facts\">");
            let mut fact = |name: &str, value: &str| -> fmt::Result {
                write!(out, "<dt>{name}</dt><dd>{}</dd>", Esc(value))
            };
            match &policy {
                Some(policy) => {
                    fact("Policy", &policy.name)?;
                    fact("Schedule", &policy.schedule)?;
                    fact("Repository", &policy.repository)?;
                    fact("RPO", &html::duration(policy.rpo_seconds))?;
                }
                None => fact("Policy", "none: backed up by hand only")?,
            }
            fact(
                "Last good backup",
                &summary
                    .last_success_seconds
                    .map_or("never".to_owned(), |s| {
                        html::time(u64::try_from(s).unwrap_or(0) * 1000)
                    }),
            )?;
            fact(
                "Age",
                &summary
                    .rpo_age_seconds
                    .map_or("–".to_owned(), html::duration),
            )?;
            fact(
                "Last boot-verified snapshot",
                &boot_verified(summary.last_boot_verified_seconds),
            )?;
            out.push_str("<dt>Last boot test</dt><dd id=\"last-boot-test\">");
            boot_badge(out, summary.last_boot_test_passed)?;
            out.push_str("</dd>");
            let mut fact = |name: &str, value: &str| -> fmt::Result {
                write!(out, "<dt>{name}</dt><dd>{}</dd>", Esc(value))
            };
            match &inventory {
                Some((record, workers)) => {
                    fact("Host", &record.host)?;
                    let disks: Vec<String> = record
                        .disks
                        .iter()
                        .map(|(name, size)| format!("{name} ({})", html::bytes(*size)))
                        .collect();
                    fact("Disks", &disks.join(", "))?;
                    fact("Workers reaching it", &workers.join(", "))?;
                }
                None => fact("Inventory", "no worker reports it now")?,
            }
            out.push_str("</dl>");
            if context.can_act {
                write!(
                    out,
                    "<form method=\"post\" action=\"/vm/{}/backup\" class=\"action\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button type=\"submit\" id=\"backup-now\">Back up now</button> \
                     <span class=\"hint\">what <code>haven job run {}</code> does</span></form>",
                    Segment(vm),
                    Esc(&context.csrf),
                    Esc(&shell_quote(vm))
                )?;
            }
            out.push_str("<h2>Last jobs</h2>");
            job_rows(out, &jobs, "vm-jobs")?;
            if let Some(newest) = snapshots.first() {
                out.push_str("<h2>Restore the newest snapshot</h2><pre id=\"restore\">");
                restore_commands(out, newest)?;
                out.push_str("</pre>");
            }
            write!(out, "<h2>Snapshots ({})</h2>", snapshots.len())?;
            snapshot_table(out, &snapshots)
        }),
    ))
}

/// The commands that restore `snapshot`: each disk to a file, to QEMU, as an NBD
/// export, and a file listing; shell-quoted, then escaped.
fn restore_commands(out: &mut String, snapshot: &SnapshotRecord) -> fmt::Result {
    let name = format!("{}@{}", snapshot.vm, snapshot.timestamp);
    let (quoted, repo) = (shell_quote(&name), shell_quote(&snapshot.repository));
    for (disk, _) in &snapshot.disks {
        let file = shell_quote(&format!("./{}-{disk}.qcow2", snapshot.vm));
        writeln!(
            out,
            "{}",
            Esc(&format!(
                "haven restore {quoted} --repo {repo} --disk {} --to {file} --format qcow2",
                shell_quote(disk)
            ))
        )?;
    }
    writeln!(
        out,
        "{}",
        Esc(&format!(
            "haven restore {quoted} --repo {repo} --to {} --print-qemu",
            shell_quote(&format!("./{}", snapshot.vm))
        ))
    )?;
    if let Some((disk, _)) = snapshot.disks.first() {
        writeln!(
            out,
            "{}",
            Esc(&format!(
                "haven serve-nbd {quoted} --repo {repo} --disk {} --listen {}",
                shell_quote(disk),
                shell_quote(&format!("unix:/run/haven/{}.sock", snapshot.vm))
            ))
        )?;
        write!(
            out,
            "{}",
            Esc(&format!(
                "haven files ls {} --repo {repo}",
                shell_quote(&format!("{name}:{disk}:/"))
            ))
        )?;
    }
    Ok(())
}

/// The snapshots, newest first, each with its restore command.
fn snapshot_table(out: &mut String, snapshots: &[SnapshotRecord]) -> fmt::Result {
    out.push_str(
        "<table id=\"snapshots\"><thead><tr><th>Time<th>Repository<th>Disks<th>Size\
         <th>Uploaded<th>Job<th>Restore</tr></thead><tbody>",
    );
    for snapshot in snapshots {
        let size: u64 = snapshot.disks.iter().map(|(_, size)| size).sum();
        let disks: Vec<&str> = snapshot
            .disks
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        // One disk needs no --disk; of several, the command names the first.
        let disk = match snapshot.disks.as_slice() {
            [_, _, ..] => format!(" --disk {}", shell_quote(&snapshot.disks[0].0)),
            _ => String::new(),
        };
        let command = format!(
            "haven restore {} --repo {}{disk} --to {}",
            shell_quote(&format!("{}@{}", snapshot.vm, snapshot.timestamp)),
            shell_quote(&snapshot.repository),
            shell_quote(&format!("./{}.raw", snapshot.vm))
        );
        write!(
            out,
            "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td><code>{}</code></tr>",
            Esc(&snapshot.timestamp),
            Esc(&snapshot.repository),
            Esc(&disks.join(", ")),
            html::bytes(size),
            html::bytes(snapshot.bytes_uploaded),
            Esc(&snapshot.job_id),
            Esc(&command)
        )?;
    }
    out.push_str("</tbody></table>");
    Ok(())
}
