//! `/audit`: the newest audit records, as `haven audit` lists them (admins only, like
//! `ListAudit`).

use std::fmt::Write;

use super::{PageContext, layout};
use crate::auth::audit::AuditRecord;
use crate::console::html::{self, Esc};

/// The audit log, newest first; `records` come oldest first, as `AuditLog::list`
/// returns them.
pub fn audit(context: &PageContext, records: &[AuditRecord]) -> String {
    layout(
        Some(context),
        "Audit log",
        "/audit",
        Box::new(|out: &mut String| {
            write!(
                out,
                "<p class=\"hint\">The newest {} records: every call of a mutating API method \
                 and every console action, allowed or refused.</p>\
                 <table id=\"audit\"><thead><tr><th>Time<th>Who<th>Credential<th>From\
                 <th>Method<th>Result<th>Detail</tr></thead><tbody>",
                records.len()
            )?;
            for record in records.iter().rev() {
                write!(
                    out,
                    "<tr><td>{}<td>{}<td>{}<td>{}<td>{}<td class=\"r-{}\">{}<td>{}</tr>",
                    html::time(record.unix_ms),
                    Esc(&record.who),
                    Esc(&record.credential),
                    Esc(&record.remote),
                    Esc(&record.method),
                    if record.result == "Ok" {
                        "ok"
                    } else {
                        "refused"
                    },
                    Esc(&record.result),
                    Esc(&record.detail)
                )?;
            }
            out.push_str("</tbody></table>");
            Ok(())
        }),
    )
}
