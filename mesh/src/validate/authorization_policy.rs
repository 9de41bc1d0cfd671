//! AuthorizationPolicy rules (istio/istio:pkg/config/validation `ValidateAuthorizationPolicy`
//! and pkg/config/security): no empty `from`, `to`, source or operation, no empty values,
//! ports and addresses that parse, `when` keys Istio knows, a provider exactly for CUSTOM.
//! Then what citadel cannot enforce is refused by name rather than ignored: CUSTOM (external
//! authorization), JWT attributes, waypoint attachment and path templates.
use super::common::{Path, Report, header_name, ip_or_cidr, selector_labels};
use crate::security::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};

const NO_JWT: &str =
    "needs JWT authentication (RequestAuthentication), which citadel does not support yet";

pub(super) fn validate(report: &mut Report, path: &Path, ap: &AuthorizationPolicy) {
    if let Some(sel) = &ap.selector {
        selector_labels(
            report,
            &path.field("selector").field("matchLabels"),
            &sel.match_labels,
        );
    }
    if ap.target_ref.is_some() || !ap.target_refs.is_empty() {
        let field = if ap.target_ref.is_some() {
            "targetRef"
        } else {
            "targetRefs"
        };
        report.error(
            &path.field(field),
            "attaches the policy to a waypoint or Gateway API resource, which citadel does not support; select sidecars with `selector`",
        );
    }
    match (ap.action, &ap.provider) {
        (Action::Custom, None) => report.error(
            &path.field("provider"),
            "required when action is CUSTOM",
        ),
        (Action::Custom, Some(_)) => report.error(
            &path.field("action"),
            "CUSTOM (external authorization through an extension provider) is not supported by citadel; use ALLOW or DENY",
        ),
        (_, Some(_)) => report.error(
            &path.field("provider"),
            "only allowed when action is CUSTOM",
        ),
        (_, None) => {}
    }
    if ap.action == Action::Deny && ap.rules.is_empty() {
        report.error(
            &path.field("rules"),
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
        );
    }
    for (i, rule) in ap.rules.iter().enumerate() {
        let p = path.field("rules").index(i);
        validate_rule(report, &p, rule);
        if ap.action == Action::Deny && denies_every_tcp_port(rule) {
            report.warning(
                &p,
                "this DENY rule names only HTTP attributes: on TCP ports under its scope it denies all traffic (fail closed); name the ports it is for",
            );
        }
    }
}

/// A DENY rule with HTTP attributes and no port: on TCP it is checked without them.
fn denies_every_tcp_port(rule: &Rule) -> bool {
    let http = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(Operation::has_http_only)
        || rule.when.iter().any(Condition::is_http_only);
    let ports = rule
        .to
        .iter()
        .filter_map(|t| t.operation.as_ref())
        .any(|o| !o.ports.is_empty())
        || rule.when.iter().any(|c| c.key == "destination.port");
    http && !ports
}

fn validate_rule(report: &mut Report, path: &Path, rule: &Rule) {
    for (i, from) in rule.from.iter().enumerate() {
        let p = path.field("from").index(i).field("source");
        match &from.source {
            None => report.error(&p, "required"),
            Some(s) => validate_source(report, &p, s),
        }
    }
    for (i, to) in rule.to.iter().enumerate() {
        let p = path.field("to").index(i).field("operation");
        match &to.operation {
            None => report.error(&p, "required"),
            Some(o) => validate_operation(report, &p, o),
        }
    }
    for (i, c) in rule.when.iter().enumerate() {
        validate_condition(report, &path.field("when").index(i), c);
    }
}

fn validate_source(report: &mut Report, path: &Path, s: &Source) {
    let fields: [(&str, &[String]); 10] = [
        ("principals", &s.principals),
        ("notPrincipals", &s.not_principals),
        ("requestPrincipals", &s.request_principals),
        ("notRequestPrincipals", &s.not_request_principals),
        ("namespaces", &s.namespaces),
        ("notNamespaces", &s.not_namespaces),
        ("ipBlocks", &s.ip_blocks),
        ("notIpBlocks", &s.not_ip_blocks),
        ("remoteIpBlocks", &s.remote_ip_blocks),
        ("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        report.error(path, "must not be empty: name at least one field");
    }
    for (name, values) in fields {
        let p = path.field(name);
        no_empty_values(report, &p, values);
        match name {
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks" => {
                each(report, &p, values, ip_or_cidr);
            }
            "requestPrincipals" | "notRequestPrincipals" if !values.is_empty() => {
                report.error(&p, NO_JWT);
            }
            _ => {}
        }
    }
}

fn validate_operation(report: &mut Report, path: &Path, o: &Operation) {
    let fields: [(&str, &[String]); 8] = [
        ("hosts", &o.hosts),
        ("notHosts", &o.not_hosts),
        ("ports", &o.ports),
        ("notPorts", &o.not_ports),
        ("methods", &o.methods),
        ("notMethods", &o.not_methods),
        ("paths", &o.paths),
        ("notPaths", &o.not_paths),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        report.error(path, "must not be empty: name at least one field");
    }
    for (name, values) in fields {
        let p = path.field(name);
        no_empty_values(report, &p, values);
        match name {
            "ports" | "notPorts" => each(report, &p, values, port),
            "paths" | "notPaths" => each(report, &p, values, request_path),
            _ => {}
        }
    }
}

fn validate_condition(report: &mut Report, path: &Path, c: &Condition) {
    let key = c.key.as_str();
    if key.is_empty() {
        report.error(&path.field("key"), "required");
        return;
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        report.error(
            path,
            format!("at least one of `values` or `notValues` must be set for key {key}"),
        );
    }
    let check: fn(&str) -> Result<(), String> = match key {
        "source.ip" | "remote.ip" | "destination.ip" => ip_or_cidr,
        "destination.port" => port,
        "source.namespace" | "source.principal" | "connection.sni" => |_| Ok(()),
        _ if key.starts_with("request.headers[") && key.ends_with(']') => {
            let name = &key["request.headers[".len()..key.len() - 1];
            report.check(&path.field("key"), header_name(name));
            |_| Ok(())
        }
        _ if key.starts_with("request.auth.") => {
            report.error(&path.field("key"), format!("{key} {NO_JWT}"));
            return;
        }
        _ if key.starts_with("experimental.envoy.filters.") => {
            report.error(
                &path.field("key"),
                format!("{key}: experimental Envoy filter metadata is not supported by citadel"),
            );
            return;
        }
        _ => {
            report.error(
                &path.field("key"),
                format!(
                    "unknown attribute {key:?}: use one of request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni"
                ),
            );
            return;
        }
    };
    for (name, values) in [("values", &c.values), ("notValues", &c.not_values)] {
        let p = path.field(name);
        no_empty_values(report, &p, values);
        each(report, &p, values, check);
    }
}

fn no_empty_values(report: &mut Report, path: &Path, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            report.error(&path.index(i), "empty value not allowed");
        }
    }
}

fn each(
    report: &mut Report,
    path: &Path,
    values: &[String],
    check: fn(&str) -> Result<(), String>,
) {
    for (i, v) in values.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
        report.check(&path.index(i), check(v));
    }
}

fn port(p: &str) -> Result<(), String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(format!("invalid port {p:?}: must be a number in 1..65535")),
    }
}

/// Istio's path templates (`{*}`, `{**}`) are for waypoints and Envoy's URI templates, which
/// the sidecar translation does not use.
fn request_path(p: &str) -> Result<(), String> {
    if p.contains('{') || p.contains('}') {
        Err(format!(
            "path template {p:?} is not supported by citadel: use exact paths, `prefix*`, `*suffix` or `*`"
        ))
    } else {
        Ok(())
    }
}
