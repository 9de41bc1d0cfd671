//! AuthorizationPolicy → Envoy RBAC, as istiod translates it: per inbound port one RBAC
//! config per action (AUDIT as Envoy's LOG, then DENY, then ALLOW), one Envoy policy per rule
//! named `ns[NS]-policy[NAME]-rule[I]`. HTTP ports get the HTTP RBAC filter (a denied request
//! gets 403 `RBAC: access denied`); TCP ports the network RBAC filter (a denied connection is
//! closed). On TCP a rule that names HTTP attributes cannot be checked: an ALLOW rule is
//! dropped (so it allows nothing), and a DENY or AUDIT rule is kept without those attributes
//! (so it denies the whole matched source): policy fails closed. Pure; `mesh::security::authz` is
//! the reference these configs are tested against.
use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::listener::v3::Filter;
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule as Perm, Set as PermSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{Authenticated, Identifier, Set as IdSet};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::path_matcher::Rule as PathRule;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{PathMatcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh::security::{Action, Condition, NamedPolicy, Operation, Rule, Source};

use super::any;

pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";

/// The order the actions are enforced in: AUDIT records every request, DENY beats ALLOW.
const ORDER: [Action; 3] = [Action::Audit, Action::Deny, Action::Allow];
/// What a dry run can tell: who a policy would deny, or would not allow.
const DRY_RUN_ORDER: [Action; 2] = [Action::Deny, Action::Allow];

/// The RBAC config of one action for the policies that apply to a workload, or `None` when no
/// filter is needed: no policy of that action, or (for DENY and AUDIT) none with a rule left.
/// An ALLOW config with no policies left denies everything, as an ALLOW policy with no
/// rules must.
/// With `dry_run`, the same for the dry-run policies alone, to be evaluated as shadow rules.
pub fn rbac_for(
    policies: &[NamedPolicy<'_>],
    action: Action,
    trust_domain: &str,
    tcp: bool,
    dry_run: bool,
) -> Option<Rbac> {
    let tr = Translate { trust_domain, tcp };
    let of_action: Vec<&NamedPolicy<'_>> = policies
        .iter()
        .filter(|p| p.policy.action == action && p.dry_run == dry_run)
        .collect();
    if of_action.is_empty() {
        return None;
    }
    let rules: HashMap<String, Policy> = of_action
        .iter()
        .flat_map(|p| tr.envoy_policies(p))
        .collect();
    if rules.is_empty() && action != Action::Allow {
        return None;
    }
    Some(rbac(action, rules))
}

fn rbac(action: Action, policies: HashMap<String, Policy>) -> Rbac {
    Rbac {
        action: match action {
            Action::Allow => RbacAction::Allow,
            Action::Deny => RbacAction::Deny,
            Action::Audit | Action::Custom => RbacAction::Log,
        } as i32,
        policies,
        ..Default::default()
    }
}

/// Istio's name of an Envoy policy: one per rule.
pub fn policy_name(p: &NamedPolicy<'_>, rule: usize) -> String {
    format!("ns[{}]-policy[{}]-rule[{rule}]", p.namespace, p.name)
}

/// The HTTP RBAC filters of an HTTP port, to go before the router. Each counts per rule
/// (`http.STAT.rbac.authz_ACTION.policy.ns[NS]-policy[NAME]-rule[I].allowed|denied`, the
/// first rule that matched). Dry-run policies come last as shadow rules, counted as
/// `http.STAT.rbac.authz_dry_run_ACTION.shadow_allowed|shadow_denied` (and per rule).
pub fn http_filters(policies: &[NamedPolicy<'_>], trust_domain: &str) -> Vec<HttpFilter> {
    let http = |config: HttpRbac| HttpFilter {
        name: HTTP_RBAC.into(),
        config_type: Some(HttpFilterConfig::TypedConfig(any(&config))),
        ..Default::default()
    };
    let enforced = ORDER.into_iter().filter_map(|action| {
        let rules = rbac_for(policies, action, trust_domain, false, false)?;
        Some(http(HttpRbac {
            rules: Some(rules),
            rules_stat_prefix: format!("authz_{}", action.as_str()),
            track_per_rule_stats: true,
            ..Default::default()
        }))
    });
    let dry_run = DRY_RUN_ORDER.into_iter().filter_map(|action| {
        let rules = rbac_for(policies, action, trust_domain, false, true)?;
        Some(http(HttpRbac {
            shadow_rules: Some(rules),
            shadow_rules_stat_prefix: format!("authz_dry_run_{}.", action.as_str()),
            track_per_rule_stats: true,
            ..Default::default()
        }))
    });
    enforced.chain(dry_run).collect()
}

/// The network RBAC filters of a TCP port, to go before `tcp_proxy`; `stat` is the chain's
/// stat prefix. The network filter has no per-rule counters, so each policy also gets a
/// shadow-only filter (it enforces nothing) just before its action's filter, counting the
/// connections it matches as `STAT.authz_ACTION.rbac.policy.ns[NS]-policy[NAME].shadow_allowed`
/// (and the rest as `…shadow_denied`), whatever the action. Dry-run policies come last as
/// shadow rules: `STAT.rbac.authz_dry_run_ACTION.shadow_allowed|shadow_denied`.
pub fn network_filters(
    policies: &[NamedPolicy<'_>],
    trust_domain: &str,
    stat: &str,
) -> Vec<Filter> {
    let network = |config: NetworkRbac| Filter {
        name: NETWORK_RBAC.into(),
        config_type: Some(
            envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any(
                &config,
            )),
        ),
    };
    let mut out = Vec::new();
    for action in ORDER {
        let Some(rules) = rbac_for(policies, action, trust_domain, true, false) else {
            continue;
        };
        let stat_prefix = format!("{stat}.authz_{}.", action.as_str());
        for p in policies
            .iter()
            .filter(|p| p.policy.action == action && !p.dry_run)
        {
            // This policy's rules, as already translated for the enforcing filter.
            let prefix = format!("ns[{}]-policy[{}]-rule[", p.namespace, p.name);
            let own: HashMap<String, Policy> = rules
                .policies
                .iter()
                .filter(|(name, _)| name.starts_with(&prefix))
                .map(|(name, policy)| (name.clone(), policy.clone()))
                .collect();
            if own.is_empty() {
                continue;
            }
            out.push(network(NetworkRbac {
                // Shadow ALLOW counts a match as allowed whatever the action (a shadow LOG
                // would count every connection).
                shadow_rules: Some(rbac(Action::Allow, own)),
                shadow_rules_stat_prefix: format!("policy.ns[{}]-policy[{}].", p.namespace, p.name),
                stat_prefix: stat_prefix.clone(),
                ..Default::default()
            }));
        }
        out.push(network(NetworkRbac {
            rules: Some(rules),
            stat_prefix,
            ..Default::default()
        }));
    }
    for action in DRY_RUN_ORDER {
        if let Some(rules) = rbac_for(policies, action, trust_domain, true, true) {
            out.push(network(NetworkRbac {
                shadow_rules: Some(rules),
                shadow_rules_stat_prefix: format!("authz_dry_run_{}.", action.as_str()),
                stat_prefix: format!("{stat}."),
                ..Default::default()
            }));
        }
    }
    out
}

#[derive(Clone, Copy)]
struct Translate<'a> {
    trust_domain: &'a str,
    tcp: bool,
}

impl Translate<'_> {
    /// One Envoy policy per rule that applies on this kind of port.
    fn envoy_policies(&self, p: &NamedPolicy<'_>) -> Vec<(String, Policy)> {
        let action = p.policy.action;
        p.policy
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| {
                let name = policy_name(p, i);
                let policy = self.rule(rule, action);
                if policy.is_none() {
                    tracing::warn!(
                        policy = %name,
                        "AuthorizationPolicy rule names HTTP attributes and applies to a TCP port: the ALLOW rule is dropped there (it allows nothing)"
                    );
                }
                Some((name, policy?))
            })
            .collect()
    }

    /// A rule is `from` (any source) and `when` (every principal-side condition) on the
    /// principal side, `to` (any operation) and the rest of `when` on the permission side.
    fn rule(&self, rule: &Rule, action: Action) -> Option<Policy> {
        if self.tcp && action == Action::Allow && rule.has_http_only() {
            return None;
        }
        let mut principals = Vec::new();
        let mut permissions = Vec::new();
        let sources: Vec<Principal> = rule
            .from
            .iter()
            .filter_map(|f| f.source.as_ref())
            .map(|s| self.source(s))
            .collect();
        if !sources.is_empty() {
            principals.push(or_ids(sources));
        }
        let operations: Vec<Permission> = rule
            .to
            .iter()
            .filter_map(|t| t.operation.as_ref())
            .map(|o| self.operation(o))
            .collect();
        if !operations.is_empty() {
            permissions.push(or_rules(operations));
        }
        for c in rule.when.iter().filter(|c| !(self.tcp && c.is_http_only())) {
            match self.condition(c) {
                Side::Principal(p) => principals.push(p),
                Side::Permission(p) => permissions.push(p),
            }
        }
        Some(Policy {
            permissions: vec![and_rules(permissions)],
            principals: vec![and_ids(principals)],
            ..Default::default()
        })
    }

    fn source(&self, s: &Source) -> Principal {
        let mut all = Vec::new();
        let principal = |v: &String| self.principal(v);
        let namespace = |v: &String| namespace(v);
        let direct = |v: &String| id(Identifier::DirectRemoteIp(cidr(v)));
        let remote = |v: &String| id(Identifier::RemoteIp(cidr(v)));
        push_ids(&mut all, &s.principals, &s.not_principals, principal);
        push_ids(&mut all, &s.namespaces, &s.not_namespaces, namespace);
        push_ids(&mut all, &s.ip_blocks, &s.not_ip_blocks, direct);
        push_ids(
            &mut all,
            &s.remote_ip_blocks,
            &s.not_remote_ip_blocks,
            remote,
        );
        and_ids(all)
    }

    /// On TCP, only the ports of an operation can be checked.
    fn operation(&self, o: &Operation) -> Permission {
        let mut all = Vec::new();
        let port = |v: &String| perm(Perm::DestinationPort(v.parse().unwrap_or_default()));
        push_rules(&mut all, &o.ports, &o.not_ports, port);
        if !self.tcp {
            let host = |v: &String| header_perm(":authority", string_matcher(v, "", true));
            let method = |v: &String| header_perm(":method", string_matcher(v, "", false));
            let path = |v: &String| {
                perm(Perm::UrlPath(PathMatcher {
                    rule: Some(PathRule::Path(string_matcher(v, "", false))),
                }))
            };
            push_rules(&mut all, &o.hosts, &o.not_hosts, host);
            push_rules(&mut all, &o.methods, &o.not_methods, method);
            push_rules(&mut all, &o.paths, &o.not_paths, path);
        }
        and_rules(all)
    }

    fn condition(&self, c: &Condition) -> Side {
        let key = c.key.as_str();
        let principal_side = |f: &dyn Fn(&String) -> Principal| {
            let mut all = Vec::new();
            push_ids(&mut all, &c.values, &c.not_values, f);
            Side::Principal(and_ids(all))
        };
        let permission_side = |f: &dyn Fn(&String) -> Permission| {
            let mut all = Vec::new();
            push_rules(&mut all, &c.values, &c.not_values, f);
            Side::Permission(and_rules(all))
        };
        match key {
            "source.ip" => principal_side(&|v| id(Identifier::DirectRemoteIp(cidr(v)))),
            "remote.ip" => principal_side(&|v| id(Identifier::RemoteIp(cidr(v)))),
            "source.namespace" => principal_side(&|v| namespace(v)),
            "source.principal" => principal_side(&|v| self.principal(v)),
            "destination.ip" => permission_side(&|v| perm(Perm::DestinationIp(cidr(v)))),
            "destination.port" => {
                permission_side(&|v| perm(Perm::DestinationPort(v.parse().unwrap_or_default())))
            }
            "connection.sni" => {
                permission_side(&|v| perm(Perm::RequestedServerName(string_matcher(v, "", false))))
            }
            // Validation admits only request.headers[NAME] besides the above.
            _ => {
                let name = key
                    .strip_prefix("request.headers[")
                    .and_then(|k| k.strip_suffix(']'))
                    .unwrap_or(key);
                principal_side(&|v| {
                    id(Identifier::Header(header(
                        name,
                        string_matcher(v, "", false),
                    )))
                })
            }
        }
    }

    /// Principals are SPIFFE IDs without `spiffe://`; in a whole `cluster.local/ns/NS/sa/SA`,
    /// `cluster.local` means the mesh's own trust domain (istiod's trust domain bundle).
    fn principal(&self, v: &str) -> Principal {
        let v = match v.strip_prefix("cluster.local/") {
            Some(rest) if v.split('/').count() == 5 => format!("{}/{rest}", self.trust_domain),
            _ => v.to_string(),
        };
        id(Identifier::Authenticated(Authenticated {
            principal_name: Some(string_matcher(&v, "spiffe://", false)),
        }))
    }
}

enum Side {
    Principal(Principal),
    Permission(Permission),
}

/// The peer's namespace is the segment after `/ns/` in its SPIFFE ID.
fn namespace(v: &str) -> Principal {
    let segment = if v == "*" {
        "[^/]+".to_string()
    } else if let Some(suffix) = v.strip_prefix('*') {
        format!("[^/]*{}", regex::escape(suffix))
    } else if let Some(prefix) = v.strip_suffix('*') {
        format!("{}[^/]*", regex::escape(prefix))
    } else {
        regex::escape(v)
    };
    id(Identifier::Authenticated(Authenticated {
        principal_name: Some(regex_matcher(&format!("spiffe://[^/]+/ns/{segment}(/.*)?"))),
    }))
}

/// Istio's wildcards as an Envoy string matcher: `*` any non-empty value, `abc*` a prefix,
/// `*abc` a suffix, else exact; `prefix` is prepended to exact and prefix patterns.
fn string_matcher(v: &str, prefix: &str, ignore_case: bool) -> StringMatcher {
    let pattern = if v == "*" {
        return regex_matcher(".+");
    } else if let Some(suffix) = v.strip_prefix('*') {
        MatchPattern::Suffix(suffix.into())
    } else if let Some(p) = v.strip_suffix('*') {
        MatchPattern::Prefix(format!("{prefix}{p}"))
    } else {
        MatchPattern::Exact(format!("{prefix}{v}"))
    };
    StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    }
}

fn regex_matcher(regex: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.into(),
            ..Default::default()
        })),
        ignore_case: false,
    }
}

fn header(name: &str, m: StringMatcher) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(m)),
        ..Default::default()
    }
}

fn header_perm(name: &str, m: StringMatcher) -> Permission {
    perm(Perm::Header(header(name, m)))
}

/// An address or a CIDR block (validated at load).
fn cidr(v: &str) -> CidrRange {
    let (address, len) = match v.parse::<ipnet::IpNet>() {
        Ok(net) => (net.network().to_string(), net.prefix_len()),
        Err(_) => {
            let ip: std::net::IpAddr = v.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
            (ip.to_string(), if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    CidrRange {
        address_prefix: address,
        prefix_len: Some(UInt32Value { value: len.into() }),
    }
}

fn id(identifier: Identifier) -> Principal {
    Principal {
        identifier: Some(identifier),
    }
}

fn perm(rule: Perm) -> Permission {
    Permission { rule: Some(rule) }
}

/// A field and its `not` twin: any of `values`, and none of `not_values`.
fn push_ids(
    all: &mut Vec<Principal>,
    values: &[String],
    not: &[String],
    f: impl Fn(&String) -> Principal,
) {
    if !values.is_empty() {
        all.push(or_ids(values.iter().map(&f).collect()));
    }
    if !not.is_empty() {
        all.push(id(Identifier::NotId(Box::new(or_ids(
            not.iter().map(&f).collect(),
        )))));
    }
}

fn push_rules(
    all: &mut Vec<Permission>,
    values: &[String],
    not: &[String],
    f: impl Fn(&String) -> Permission,
) {
    if !values.is_empty() {
        all.push(or_rules(values.iter().map(&f).collect()));
    }
    if !not.is_empty() {
        all.push(perm(Perm::NotRule(Box::new(or_rules(
            not.iter().map(&f).collect(),
        )))));
    }
}

/// Envoy's sets need at least one member: an empty conjunction is `any`.
fn and_ids(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        0 => id(Identifier::Any(true)),
        1 => ids.remove(0),
        _ => id(Identifier::AndIds(IdSet { ids })),
    }
}

fn or_ids(mut ids: Vec<Principal>) -> Principal {
    match ids.len() {
        1 => ids.remove(0),
        _ => id(Identifier::OrIds(IdSet { ids })),
    }
}

fn and_rules(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        0 => perm(Perm::Any(true)),
        1 => rules.remove(0),
        _ => perm(Perm::AndRules(PermSet { rules })),
    }
}

fn or_rules(mut rules: Vec<Permission>) -> Permission {
    match rules.len() {
        1 => rules.remove(0),
        _ => perm(Perm::OrRules(PermSet { rules })),
    }
}
