//! `/replication` (lag per secondary site) and `/storage` (the catalog per
//! repository), from the summary `/metrics` exports.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{PageContext, layout};
use crate::console::html::{self, Esc, Segment};
use crate::leader::{Leader, VmReplication};

/// VMs listed per site, the most lagging first.
const PER_SITE: usize = 100;

/// Replication lag per site: its VMs, the largest lag, and the most lagging VMs.
pub fn replication(context: &PageContext, leader: &Leader) -> String {
    let summary = leader.metrics_summary(context.now_ms);
    let mut sites: BTreeMap<&str, Vec<&VmReplication>> = BTreeMap::new();
    for lag in &summary.replication {
        sites.entry(&lag.site).or_default().push(lag);
    }
    layout(
        Some(context),
        "Replication",
        "/replication",
        Box::new(|out: &mut String| {
            if sites.is_empty() {
                out.push_str(
                    "<p class=\"message\">No policy replicates to a secondary site \
                     (<code>replicate_to</code>).</p>",
                );
                return Ok(());
            }
            out.push_str(
                "<p class=\"hint\">A VM's lag is the time since its newest snapshot already at \
                 the site (see <code>haven_vm_replication_lag_seconds</code> in \
                 docs/operations.md).</p><table id=\"sites\"><thead><tr><th>Site<th>VMs\
                 <th>Largest lag<th>Median lag</tr></thead><tbody>",
            );
            for (site, lags) in &mut sites {
                lags.sort_by(|a, b| b.lag_seconds.cmp(&a.lag_seconds).then(a.vm.cmp(&b.vm)));
                write!(
                    out,
                    "<tr data-site=\"{}\"><td>{}<td>{}<td>{}<td>{}</tr>",
                    Esc(site),
                    Esc(site),
                    lags.len(),
                    html::duration(lags[0].lag_seconds),
                    html::duration(lags[lags.len() / 2].lag_seconds)
                )?;
            }
            out.push_str("</tbody></table>");
            for (site, lags) in &sites {
                write!(
                    out,
                    "<h2>{}</h2><table class=\"lags\"><thead><tr><th>VM<th>Lag</tr></thead><tbody>",
                    Esc(site)
                )?;
                for lag in lags.iter().take(PER_SITE) {
                    write!(
                        out,
                        "<tr><td><a href=\"/vm/{}\">{}</a><td>{}</tr>",
                        Segment(&lag.vm),
                        Esc(&lag.vm),
                        html::duration(lag.lag_seconds)
                    )?;
                }
                out.push_str("</tbody></table>");
            }
            Ok(())
        }),
    )
}

/// What the coordinator knows of storage: its catalog per repository.
pub fn storage(context: &PageContext, leader: &Leader) -> String {
    let summary = leader.metrics_summary(context.now_ms);
    layout(
        Some(context),
        "Storage",
        "/storage",
        Box::new(|out: &mut String| {
            out.push_str(
                "<p class=\"hint\">What the coordinator's catalog holds per repository. The free \
                 space of a storage node's disks is known to the node, not the coordinator: \
                 each node exports <code>haven_storage_disk_used_ratio</code> and \
                 <code>haven_storage_disk_available_bytes</code> on its <code>/metrics</code>, \
                 and the shipped alert <code>HavenStorageDiskFull</code> fires over 85%.</p>\
                 <table id=\"repositories\"><thead><tr><th>Repository<th>Snapshots\
                 <th>Logical size<th>Uploaded<th>Dedup ratio</tr></thead><tbody>",
            );
            for repository in &summary.repositories {
                write!(
                    out,
                    "<tr><td>{}<td>{}<td>{}<td>{}<td>{}</tr>",
                    Esc(&repository.repository),
                    repository.snapshots,
                    html::bytes(repository.logical_bytes),
                    html::bytes(repository.uploaded_bytes),
                    repository
                        .dedup_ratio
                        .map_or("–".to_owned(), |ratio| format!("{ratio:.2}"))
                )?;
            }
            out.push_str("</tbody></table>");
            Ok(())
        }),
    )
}
