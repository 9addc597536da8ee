//! `/` and `/vms`: every VM's protection and boot-test verdict, from the summary
//! `/metrics` exports (`Leader::metrics_summary`, one pass over the cache), counted
//! per policy.

use std::collections::HashMap;
use std::fmt::{self, Write};

use super::{PageContext, badge, boot_badge, boot_verified, layout};
use crate::console::Protection;
use crate::console::html::{self, Esc, Segment};
use crate::leader::{Leader, MetricsSummary, VmSummary};

/// VMs listed under "needs attention" on the overview, worst first.
const ATTENTION: usize = 100;
/// VMs per page of `/vms`.
const PAGE: usize = 200;

/// Every VM with its protection and its policy's RPO.
struct Classified<'a> {
    rows: Vec<(&'a VmSummary, Protection, u64)>,
}

impl<'a> Classified<'a> {
    /// Classifies every VM of `summary`: O(VMs + policies).
    fn new(summary: &'a MetricsSummary) -> Self {
        let rpo: HashMap<&str, u64> = summary
            .policy_rpo_seconds
            .iter()
            .map(|(name, rpo)| (name.as_str(), *rpo))
            .collect();
        let rows = summary
            .vms
            .iter()
            .map(|vm| {
                let rpo = rpo.get(vm.policy.as_str()).copied().unwrap_or(0);
                (vm, Protection::of(vm, rpo), rpo)
            })
            .collect();
        Self { rows }
    }
}

/// The overview: counts, protection by policy, and the VMs that need attention.
pub fn overview(context: &PageContext, leader: &Leader) -> String {
    let summary = leader.metrics_summary(context.now_ms);
    let classified = Classified::new(&summary);
    layout(
        Some(context),
        "Overview",
        "/",
        Box::new(|out: &mut String| {
            let mut totals = [0usize; Protection::ALL.len()];
            // Per policy, in the summary's order (by name), then VMs without one.
            let mut per_policy: HashMap<&str, [usize; Protection::ALL.len()]> = HashMap::new();
            for (vm, protection, _) in &classified.rows {
                totals[*protection as usize] += 1;
                per_policy.entry(vm.policy.as_str()).or_default()[*protection as usize] += 1;
            }
            out.push_str("<section class=\"cards\">");
            for protection in Protection::ALL {
                write!(
                    out,
                    "<a class=\"card p-{key}\" id=\"count-{key}\" href=\"/vms?status={key}\">\
                     <span class=\"count\">{}</span>{}</a>",
                    totals[protection as usize],
                    protection.label(),
                    key = protection.key(),
                )?;
            }
            let [pending, assigned, committing, _, _] = summary.jobs_by_state;
            write!(
                out,
                "</section><p class=\"facts\">{} VMs · {} jobs running, {} waiting · {} workers · \
                 {} snapshots in the catalog · <a href=\"/jobs\">live jobs</a></p>",
                summary.vms.len(),
                assigned + committing,
                pending,
                summary.workers,
                summary
                    .repositories
                    .iter()
                    .map(|r| r.snapshots)
                    .sum::<u64>()
            )?;
            let verified = summary
                .vms
                .iter()
                .filter(|vm| vm.last_boot_verified_seconds.is_some())
                .count();
            let boot_failed: Vec<&VmSummary> = summary
                .vms
                .iter()
                .filter(|vm| vm.last_boot_test_passed == Some(false))
                .collect();
            write!(
                out,
                "<p class=\"facts\" id=\"boot-facts\">{verified} VMs with a boot-verified \
                 snapshot · {} whose last boot test failed</p>",
                boot_failed.len()
            )?;
            out.push_str(
                "<h2>By policy</h2><table id=\"policies\"><thead><tr><th>Policy<th>RPO<th>VMs",
            );
            for protection in Protection::ALL {
                write!(out, "<th>{}", protection.label())?;
            }
            out.push_str("</tr></thead><tbody>");
            let unscheduled = (String::new(), 0);
            for (policy, rpo) in summary.policy_rpo_seconds.iter().chain([&unscheduled]) {
                let Some(counts) = per_policy.get(policy.as_str()) else {
                    continue;
                };
                let filter = if policy.is_empty() {
                    "-"
                } else {
                    policy.as_str()
                };
                write!(
                    out,
                    "<tr data-policy=\"{}\"><td><a href=\"/vms?policy={}\">{}</a><td>{}<td>{}",
                    Esc(policy),
                    Segment(filter),
                    if policy.is_empty() {
                        "(none)".to_owned()
                    } else {
                        Esc(policy).to_string()
                    },
                    if *rpo > 0 {
                        html::duration(*rpo)
                    } else {
                        "–".to_owned()
                    },
                    counts.iter().sum::<usize>()
                )?;
                for protection in Protection::ALL {
                    let count = counts[protection as usize];
                    if count == 0 {
                        out.push_str("<td class=\"zero\">0");
                    } else {
                        write!(
                            out,
                            "<td class=\"p-{key}\"><a href=\"/vms?policy={}&amp;status={key}\">{count}</a>",
                            Segment(filter),
                            key = protection.key()
                        )?;
                    }
                }
                out.push_str("</tr>");
            }
            out.push_str("</tbody></table>");
            if !boot_failed.is_empty() {
                // Backed up on time maybe, but the last boot test says the snapshot
                // may not come up: worth a look whatever the protection says.
                out.push_str("<h2>Last boot test failed</h2><ul id=\"boot-failed\">");
                for vm in boot_failed.iter().take(ATTENTION) {
                    write!(
                        out,
                        "<li data-vm=\"{}\"><a href=\"/vm/{}\">{}</a> (last boot-verified \
                         snapshot: {})</li>",
                        Esc(&vm.vm),
                        Segment(&vm.vm),
                        Esc(&vm.vm),
                        boot_verified(vm.last_boot_verified_seconds)
                    )?;
                }
                out.push_str("</ul>");
            }
            out.push_str("<h2>Needs attention</h2>");
            let mut attention: Vec<_> = classified
                .rows
                .iter()
                .filter(|(_, p, _)| matches!(p, Protection::Failing | Protection::AtRisk))
                .collect();
            if attention.is_empty() {
                out.push_str("<p class=\"message\" id=\"all-well\">Every scheduled VM had a good backup within its RPO, and no last attempt failed.</p>");
                return Ok(());
            }
            attention.sort_by(|a, b| {
                (a.1, std::cmp::Reverse(a.0.rpo_age_seconds))
                    .cmp(&(b.1, std::cmp::Reverse(b.0.rpo_age_seconds)))
            });
            vm_table(out, attention.iter().take(ATTENTION).copied(), "attention")?;
            if attention.len() > ATTENTION {
                write!(
                    out,
                    "<p>{} more: <a href=\"/vms?status=failing\">failing</a>, \
                     <a href=\"/vms?status=at-risk\">at risk</a>.</p>",
                    attention.len() - ATTENTION
                )?;
            }
            Ok(())
        }),
    )
}

/// VMs of one policy (`-`: none) and/or one protection, a page at a time.
pub fn vms(
    context: &PageContext,
    leader: &Leader,
    policy: Option<&str>,
    status: Option<Protection>,
    page: usize,
) -> String {
    let summary = leader.metrics_summary(context.now_ms);
    let classified = Classified::new(&summary);
    let selected: Vec<_> = classified
        .rows
        .iter()
        .filter(|(vm, protection, _)| {
            policy.is_none_or(|p| vm.policy == p || (p == "-" && vm.policy.is_empty()))
                && status.is_none_or(|s| s == *protection)
        })
        .collect();
    let mut title = "VMs".to_owned();
    if let Some(status) = status {
        title = format!("VMs {}", status.label());
    }
    if let Some(policy) = policy {
        title.push_str(&format!(" of policy {policy}"));
    }
    layout(
        Some(context),
        &title,
        "/vms",
        Box::new(|out: &mut String| {
            let pages = selected.len().div_ceil(PAGE).max(1);
            let page = page.min(pages - 1);
            write!(out, "<p class=\"facts\">{} VMs", selected.len())?;
            if pages > 1 {
                write!(out, " · page {} of {pages}", page + 1)?;
                let link = |out: &mut String, to: usize, label: &str| -> fmt::Result {
                    write!(out, " · <a href=\"/vms?page={to}")?;
                    if let Some(policy) = policy {
                        write!(out, "&amp;policy={}", Segment(policy))?;
                    }
                    if let Some(status) = status {
                        write!(out, "&amp;status={}", status.key())?;
                    }
                    write!(out, "\">{label}</a>")
                };
                if page > 0 {
                    link(out, page - 1, "previous")?;
                }
                if page + 1 < pages {
                    link(out, page + 1, "next")?;
                }
            }
            out.push_str("</p>");
            vm_table(
                out,
                selected.iter().skip(page * PAGE).take(PAGE).copied(),
                "vms",
            )
        }),
    )
}

/// A table of VMs with their protection.
fn vm_table<'a, 'b: 'a>(
    out: &mut String,
    rows: impl Iterator<Item = &'a (&'b VmSummary, Protection, u64)>,
    id: &str,
) -> fmt::Result {
    write!(
        out,
        "<table id=\"{id}\"><thead><tr><th>VM<th>Policy<th>Protection<th>Last good backup\
         <th>Age<th>RPO<th>Last attempt<th>Boot verified<th>Last boot test</tr></thead><tbody>"
    )?;
    for (vm, protection, rpo) in rows {
        write!(
            out,
            "<tr data-vm=\"{}\" data-protection=\"{}\"><td><a href=\"/vm/{}\">{}</a><td>{}<td>",
            Esc(&vm.vm),
            protection.key(),
            Segment(&vm.vm),
            Esc(&vm.vm),
            Esc(&vm.policy)
        )?;
        badge(out, *protection)?;
        write!(
            out,
            "<td>{}<td>{}<td>{}<td>{}",
            vm.last_success_seconds
                .map_or("never".to_owned(), |s| html::time(
                    u64::try_from(s).unwrap_or(0) * 1000
                )),
            vm.rpo_age_seconds.map_or("–".to_owned(), html::duration),
            if *rpo > 0 {
                html::duration(*rpo)
            } else {
                "–".to_owned()
            },
            match vm.last_attempt_succeeded {
                Some(true) => "succeeded",
                Some(false) => "failed",
                None => "–",
            }
        )?;
        write!(
            out,
            "<td class=\"boot-verified\">{}<td class=\"boot\">",
            boot_verified(vm.last_boot_verified_seconds)
        )?;
        boot_badge(out, vm.last_boot_test_passed)?;
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    Ok(())
}
