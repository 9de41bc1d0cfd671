//! The reference authorization decision, written straight from Istio's documented semantics
//! (reference/config/security/authorization-policy): a request or connection and the policies
//! that apply to its workload in, allow or deny out. It knows nothing of Envoy; the RBAC
//! configuration citadel emits, and the proxy's RBAC later, are checked against it.
use std::net::IpAddr;

use super::authorization_policy::{Action, Condition, NamedPolicy, Operation, Rule, Source};

/// What the decision reads of one request (HTTP) or connection (TCP).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The peer's SPIFFE ID (`spiffe://TD/ns/NS/sa/SA`), when it presented a certificate.
    pub principal: Option<&'a str>,
    /// The connection's source address.
    pub source_ip: IpAddr,
    /// The original client as `X-Forwarded-For` reports it, else `source_ip`.
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// The TLS server name the peer asked for.
    pub sni: Option<&'a str>,
    /// The HTTP request, on an HTTP port; `None` on a TCP port.
    pub http: Option<HttpRequest<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// `Host` (`:authority`), as sent.
    pub host: &'a str,
    pub method: &'a str,
    /// The request target's path, query included (paths match without it).
    pub path: &'a str,
    /// Header names in any case.
    pub headers: &'a [(&'a str, &'a str)],
}

/// The outcome, naming the policies that decided it as `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    pub allowed: bool,
    /// The first DENY policy that matched.
    pub denied_by: Option<String>,
    /// Every ALLOW policy that matched.
    pub allowed_by: Vec<String>,
    /// Every AUDIT policy that matched.
    pub audited_by: Vec<String>,
}

/// Istio's order: AUDIT policies only record; a matching DENY denies; otherwise, when any
/// ALLOW policy applies, one must match; with none, the request is allowed. Dry-run policies
/// take no part. `trust_domain` is the mesh's, which principals written with `cluster.local`
/// stand for.
pub fn evaluate(
    policies: &[NamedPolicy<'_>],
    trust_domain: &str,
    request: &Request<'_>,
) -> Decision {
    let ctx = &Eval {
        trust_domain,
        request,
    };
    let policies: Vec<&NamedPolicy<'_>> = policies.iter().filter(|p| !p.dry_run).collect();
    let matching = |action: Action| {
        policies
            .iter()
            .filter(move |p| p.policy.action == action)
            .filter(move |p| p.policy.rules.iter().any(|r| ctx.rule(r, action)))
            .map(|p| format!("{}/{}", p.namespace, p.name))
    };
    let audited_by = matching(Action::Audit).collect();
    let denied_by = matching(Action::Deny).next();
    let allowed_by: Vec<String> = matching(Action::Allow).collect();
    let any_allow = policies.iter().any(|p| p.policy.action == Action::Allow);
    Decision {
        allowed: denied_by.is_none() && (!any_allow || !allowed_by.is_empty()),
        denied_by,
        allowed_by,
        audited_by,
    }
}

struct Eval<'a> {
    trust_domain: &'a str,
    request: &'a Request<'a>,
}

impl Eval<'_> {
    /// On a TCP port a rule naming HTTP attributes cannot be checked: an ALLOW rule then
    /// matches nothing, and a DENY (or AUDIT) rule is checked without those attributes, so it
    /// denies more rather than less (fail closed).
    fn rule(&self, rule: &Rule, action: Action) -> bool {
        let tcp = self.request.http.is_none();
        if tcp && action == Action::Allow && rule.has_http_only() {
            return false;
        }
        let from = rule.from.is_empty()
            || rule
                .from
                .iter()
                .any(|f| f.source.as_ref().is_none_or(|s| self.source(s)));
        let to = rule.to.is_empty()
            || rule
                .to
                .iter()
                .any(|t| t.operation.as_ref().is_none_or(|o| self.operation(o)));
        let when = rule
            .when
            .iter()
            .filter(|c| !(tcp && c.is_http_only()))
            .all(|c| self.condition(c));
        from && to && when
    }

    fn source(&self, s: &Source) -> bool {
        let principal = |p: &str| self.principal_is(p);
        let namespace = |n: &str| self.namespace_is(n);
        let ip = |b: &str| in_block(b, self.request.source_ip);
        let remote = |b: &str| in_block(b, self.request.remote_ip);
        field(&s.principals, &s.not_principals, principal)
            && field(&s.namespaces, &s.not_namespaces, namespace)
            && field(&s.ip_blocks, &s.not_ip_blocks, ip)
            && field(&s.remote_ip_blocks, &s.not_remote_ip_blocks, remote)
    }

    /// On TCP the HTTP fields are absent from the request: they are skipped (DENY rules only
    /// get this far with them).
    fn operation(&self, o: &Operation) -> bool {
        let port = |p: &str| p.parse::<u16>().ok() == Some(self.request.destination_port);
        let ports = field(&o.ports, &o.not_ports, port);
        let Some(http) = &self.request.http else {
            return ports;
        };
        let host = |h: &str| wildcard(&h.to_ascii_lowercase(), &http.host.to_ascii_lowercase());
        let method = |m: &str| wildcard(m, http.method);
        let path_only = http.path.split(['?', '#']).next().unwrap_or_default();
        let path = |p: &str| wildcard(p, path_only);
        ports
            && field(&o.hosts, &o.not_hosts, host)
            && field(&o.methods, &o.not_methods, method)
            && field(&o.paths, &o.not_paths, path)
    }

    fn condition(&self, c: &Condition) -> bool {
        let r = self.request;
        let test = |v: &str| -> bool {
            match c.key.as_str() {
                "source.ip" => in_block(v, r.source_ip),
                "remote.ip" => in_block(v, r.remote_ip),
                "source.namespace" => self.namespace_is(v),
                "source.principal" => self.principal_is(v),
                "destination.ip" => in_block(v, r.destination_ip),
                "destination.port" => v.parse::<u16>().ok() == Some(r.destination_port),
                "connection.sni" => r.sni.is_some_and(|sni| wildcard(v, sni)),
                key => header_name(key).is_some_and(|name| self.header_is(name, v)),
            }
        };
        field(&c.values, &c.not_values, test)
    }

    fn header_is(&self, name: &str, pattern: &str) -> bool {
        let Some(http) = &self.request.http else {
            return false;
        };
        let values: Vec<&str> = http
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect();
        !values.is_empty() && wildcard(pattern, &values.join(","))
    }

    /// Principals name peers without `spiffe://`; in a whole `cluster.local/ns/NS/sa/SA`,
    /// `cluster.local` means the mesh's own trust domain. Plaintext peers have no principal, so nothing matches them, not even `*`.
    fn principal_is(&self, pattern: &str) -> bool {
        let Some(peer) = self
            .request
            .principal
            .and_then(|p| p.strip_prefix("spiffe://"))
        else {
            return false;
        };
        // Only a whole `TD/ns/NS/sa/SA` names a trust domain that can be replaced.
        let pattern = match pattern.strip_prefix("cluster.local/") {
            Some(rest) if pattern.split('/').count() == 5 => {
                format!("{}/{rest}", self.trust_domain)
            }
            _ => pattern.to_string(),
        };
        wildcard(&pattern, peer)
    }

    /// The namespace is what follows `ns/` in the peer's SPIFFE ID, `spiffe://TD/ns/NS/...`.
    fn namespace_is(&self, pattern: &str) -> bool {
        let namespace = self
            .request
            .principal
            .and_then(|p| p.strip_prefix("spiffe://"))
            .and_then(|p| p.split_once('/'))
            .and_then(|(_, path)| path.strip_prefix("ns/"))
            .map(|rest| rest.split('/').next().unwrap_or_default());
        namespace.is_some_and(|ns| !ns.is_empty() && wildcard(pattern, ns))
    }
}

/// A field with its `not` twin: some value matches (when any are given), and none of the
/// `not` values does.
fn field(values: &[String], not_values: &[String], matches: impl Fn(&str) -> bool) -> bool {
    (values.is_empty() || values.iter().any(|v| matches(v)))
        && !not_values.iter().any(|v| matches(v))
}

/// Istio's string wildcards: `*` any non-empty value, `abc*` a prefix, `*abc` a suffix,
/// anything else the exact value.
pub fn wildcard(pattern: &str, value: &str) -> bool {
    if pattern == "*" {
        !value.is_empty()
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        value.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        value.starts_with(prefix)
    } else {
        pattern == value
    }
}

/// `request.headers[NAME]` → `NAME`.
fn header_name(key: &str) -> Option<&str> {
    key.strip_prefix("request.headers[")?.strip_suffix(']')
}

/// An address (`10.1.2.3`) or a CIDR block (`10.1.0.0/16`) containing `ip`.
fn in_block(block: &str, ip: IpAddr) -> bool {
    match block.parse::<ipnet::IpNet>() {
        Ok(net) => net.contains(&ip),
        Err(_) => block.parse::<IpAddr>().is_ok_and(|b| b == ip),
    }
}
