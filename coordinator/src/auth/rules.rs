//! The authorization table: one rule per RPC.

use haven_tls::Role;

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Any authenticated caller (finding the leader).
    Authenticated,
    /// A caller with at least this role ([`Role::covers`]).
    AtLeast(Role),
}

impl Rule {
    /// Whether `role` passes.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Rule::Authenticated => true,
            Rule::AtLeast(needed) => role.covers(needed),
        }
    }
}

/// A method's rule and whether its calls change state (and so are audited).
#[derive(Debug, Clone, Copy)]
pub struct MethodRule {
    /// gRPC path, `/package.Service/Method`.
    pub path: &'static str,
    /// Who may call it.
    pub rule: Rule,
    /// Whether calls are written to the audit log.
    pub audited: bool,
}

const fn method(path: &'static str, rule: Rule, audited: bool) -> MethodRule {
    MethodRule {
        path,
        rule,
        audited,
    }
}

const WORKER: Rule = Rule::AtLeast(Role::Worker);
const VIEWER: Rule = Rule::AtLeast(Role::Viewer);
const OPERATOR: Rule = Rule::AtLeast(Role::Operator);
const ADMIN: Rule = Rule::AtLeast(Role::Admin);

/// Every RPC of both services. Worker RPCs are not audited: they are the cluster's
/// own traffic (thousands a minute), and each job's outcome is recorded in its job
/// record already.
pub const RULES: &[MethodRule] = &[
    method("/haven.v1.WorkerService/Register", WORKER, false),
    method("/haven.v1.WorkerService/Heartbeat", WORKER, false),
    method("/haven.v1.WorkerService/ReportInventory", WORKER, false),
    method("/haven.v1.WorkerService/PollJobs", WORKER, false),
    method("/haven.v1.WorkerService/ReportProgress", WORKER, false),
    method("/haven.v1.WorkerService/CommitSnapshot", WORKER, false),
    method("/haven.v1.WorkerService/FailJob", WORKER, false),
    method("/haven.v1.WorkerService/CompleteJob", WORKER, false),
    method("/haven.v1.WorkerService/ListPins", WORKER, false),
    method(
        "/haven.v1.AdminService/GetLeader",
        Rule::Authenticated,
        false,
    ),
    method("/haven.v1.AdminService/ListVms", VIEWER, false),
    method("/haven.v1.AdminService/ListWorkers", VIEWER, false),
    method("/haven.v1.AdminService/ListJobs", VIEWER, false),
    method("/haven.v1.AdminService/WatchJob", VIEWER, false),
    method("/haven.v1.AdminService/ListSnapshots", VIEWER, false),
    method("/haven.v1.AdminService/RunJob", OPERATOR, true),
    method("/haven.v1.AdminService/RunPolicy", OPERATOR, true),
    method("/haven.v1.AdminService/CancelJob", OPERATOR, true),
    method("/haven.v1.AdminService/ApplyPolicies", ADMIN, true),
    method("/haven.v1.AdminService/ImportSnapshots", ADMIN, true),
    method("/haven.v1.AdminService/CreateToken", ADMIN, true),
    method("/haven.v1.AdminService/RevokeToken", ADMIN, true),
    method("/haven.v1.AdminService/ListTokens", ADMIN, false),
    method("/haven.v1.AdminService/ListAudit", ADMIN, false),
];

/// Every RPC of `coordinator.proto` as its gRPC path, read from the proto file
/// itself: the tests walk this list, so an RPC added to the file without a rule
/// fails them.
pub fn proto_methods() -> Vec<String> {
    let proto = include_str!("../../../proto/haven/v1/coordinator.proto");
    let mut service = "";
    let mut paths = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap_or_default();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap_or_default().trim();
            paths.push(format!("/haven.v1.{service}/{name}"));
        }
    }
    paths
}

/// The rule of a gRPC path; `None` for a method nobody wrote a rule for.
pub fn rule(path: &str) -> Option<&'static MethodRule> {
    RULES.iter().find(|method| method.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `rpc` of the proto file has exactly one rule, and every rule names an
    /// `rpc`: a new RPC without a rule fails here (and is refused at run time).
    #[test]
    fn every_rpc_has_exactly_one_rule() {
        let paths = proto_methods();
        assert!(paths.len() >= 20, "parsed {paths:?}");
        for path in &paths {
            let count = RULES.iter().filter(|rule| rule.path == path).count();
            assert_eq!(
                count, 1,
                "{path} needs exactly one rule in auth::rules::RULES"
            );
        }
        for rule in RULES {
            assert!(
                paths.iter().any(|path| path == rule.path),
                "{} is not an rpc",
                rule.path
            );
        }
    }

    #[test]
    fn roles_reach_only_their_methods() {
        let allowed = |role, path| rule(path).unwrap().rule.allows(role);
        assert!(allowed(Role::Worker, "/haven.v1.WorkerService/PollJobs"));
        assert!(!allowed(Role::Admin, "/haven.v1.WorkerService/PollJobs"));
        assert!(!allowed(
            Role::Worker,
            "/haven.v1.AdminService/ApplyPolicies"
        ));
        assert!(!allowed(
            Role::Operator,
            "/haven.v1.AdminService/ApplyPolicies"
        ));
        assert!(allowed(Role::Operator, "/haven.v1.AdminService/RunJob"));
        assert!(!allowed(Role::Viewer, "/haven.v1.AdminService/RunJob"));
        assert!(allowed(Role::Viewer, "/haven.v1.AdminService/ListJobs"));
        assert!(allowed(Role::Worker, "/haven.v1.AdminService/GetLeader"));
    }
}
