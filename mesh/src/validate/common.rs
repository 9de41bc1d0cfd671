//! Checks several kinds share: field paths, host names, ports, addresses, durations,
//! percentages, labels, `exportTo`, protocols, string matches and header names.
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use crate::error::Problem;
use crate::meta::ObjectMeta;
use crate::networking::{GoDuration, Labels, Percent, StringMatch};

/// A field path such as `spec.http[0].route[1].weight`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Path(String);

impl Path {
    pub fn root() -> Self {
        Self::default()
    }

    pub fn field(&self, name: &str) -> Self {
        if self.0.is_empty() {
            Self(name.to_string())
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    pub fn index(&self, i: usize) -> Self {
        let mut s = self.0.clone();
        let _ = write!(s, "[{i}]");
        Self(s)
    }

    /// A map entry, e.g. `headers[end-user]`.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The problems found so far.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem::error(path.as_str(), message));
    }

    pub fn warning(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push(Problem::warning(path.as_str(), message));
    }

    pub fn check(&mut self, path: &Path, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(path, message);
        }
    }
}

/// A DNS-1123 label: lower-case alphanumerics and `-`, at most 63, alphanumeric at both ends.
pub fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes object name: a DNS-1123 subdomain.
pub(super) fn object_name(report: &mut Report, path: &Path, meta: &ObjectMeta) {
    let name = &meta.name;
    if name.is_empty() {
        report.error(&path.field("name"), "required");
    } else if name.len() > 253 || !name.split('.').all(dns_label) {
        report.error(
            &path.field("name"),
            format!("{name:?} is not a valid name (lower-case DNS-1123 subdomain)"),
        );
    }
    if let Some(ns) = &meta.namespace
        && !dns_label(ns)
    {
        report.error(
            &path.field("namespace"),
            format!("{ns:?} is not a valid namespace (lower-case DNS-1123 label)"),
        );
    }
}

/// Any DNS label, upper case allowed (Istio's host labels).
fn host_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A host name with an optional leading wildcard label (`*`, `*.example.com`, `*foo.com`).
pub(super) fn wildcard_domain(host: &str) -> Result<(), String> {
    domain(host, true)
}

/// A host name without wildcards.
pub(super) fn fqdn(host: &str) -> Result<(), String> {
    domain(host, false)
}

fn domain(host: &str, wildcard: bool) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty domain name not allowed".into());
    }
    if host.len() > 255 {
        return Err(format!("domain name {host:?} too long (max 255)"));
    }
    let trimmed = host.strip_suffix('.').unwrap_or(host);
    let labels: Vec<&str> = trimmed.split('.').collect();
    for (i, label) in labels.iter().enumerate() {
        let ok = if i == 0 && wildcard {
            *label == "*"
                || label
                    .strip_prefix("*-")
                    .or_else(|| label.strip_prefix('*'))
                    .is_some_and(host_label)
                || host_label(label)
        } else {
            host_label(label)
        };
        if !ok {
            return Err(format!(
                "domain name {host:?} invalid (label {label:?} invalid)"
            ));
        }
    }
    if labels.len() > 1
        && labels
            .last()
            .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "domain name {host:?} invalid (top level domain cannot be all-numeric)"
        ));
    }
    Ok(())
}

pub(super) fn port(n: u32) -> Result<(), String> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(format!("port number {n} must be in the range 1..65535"))
    }
}

pub(super) fn is_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

pub(super) fn is_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}

pub(super) fn ip_or_cidr(s: &str) -> Result<(), String> {
    if is_ip(s) || is_cidr(s) {
        Ok(())
    } else {
        Err(format!("{s:?} is not a valid IP address or CIDR block"))
    }
}

/// At least 1 ms and a whole number of milliseconds, as Istio's webhook requires.
pub(super) fn duration(d: GoDuration) -> Result<(), String> {
    let d = d.as_duration();
    if d < Duration::from_millis(1) {
        return Err("duration must be greater than 1ms".into());
    }
    if !d.as_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported".into());
    }
    Ok(())
}

pub(super) fn optional_duration(report: &mut Report, path: &Path, d: Option<GoDuration>) {
    if let Some(d) = d {
        report.check(path, duration(d));
    }
}

pub(super) fn percent(p: &Percent) -> Result<(), String> {
    let v = p.value;
    if v == 0.0 || (0.0001..=100.0).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "percentage {v} is neither 0.0, nor in range [0.0001, 100.0]"
        ))
    }
}

pub(super) fn int_percent(v: i64) -> Result<(), String> {
    if (0..=100).contains(&v) {
        Ok(())
    } else {
        Err(format!("percentage {v} is not in range 0..100"))
    }
}

fn label_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Kubernetes label keys (`[prefix/]name`) and values.
pub(super) fn labels(report: &mut Report, path: &Path, labels: &Labels) {
    for (key, value) in labels {
        let key_ok = match key.split_once('/') {
            Some((prefix, name)) => {
                prefix.len() <= 253 && prefix.split('.').all(dns_label) && label_name(name)
            }
            None => label_name(key),
        };
        if !key_ok {
            report.error(&path.key(key), format!("invalid label key {key:?}"));
        }
        if !value.is_empty() && !label_name(value) {
            report.error(&path.key(key), format!("invalid label value {value:?}"));
        }
    }
}

/// A workload selector's labels: no empty keys, no wildcards.
pub(super) fn selector_labels(report: &mut Report, path: &Path, selector: &Labels) {
    for (key, value) in selector {
        if key.is_empty() {
            report.error(path, "empty key is not supported in selector");
        }
        if key.contains('*') || value.contains('*') {
            report.error(&path.key(key), "wildcard is not supported in selector");
        }
    }
    labels(report, path, selector);
    if selector.is_empty() {
        report.warning(path, "workload selector specified without labels");
    }
}

/// `exportTo`: `.`, `*`, `~` (where allowed) or namespaces, without contradictions.
pub(super) fn export_to(report: &mut Report, path: &Path, entries: &[String], allow_none: bool) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let p = path.index(i);
        match e.as_str() {
            "." | "*" => {}
            "~" if allow_none => {}
            "~" => report.error(&p, "exportTo ~ (none) is not allowed for this kind"),
            ns if dns_label(ns) => {}
            other => report.error(
                &p,
                format!("{other:?}: only ., *, ~ or a namespace name is allowed in exportTo"),
            ),
        }
        if !seen.insert(e.as_str()) {
            report.error(&p, format!("duplicate entry {e:?} in exportTo"));
        }
    }
    if seen.contains("*") && seen.len() > 1 {
        report.error(
            path,
            "cannot have both public (*) and non-public exportTo values",
        );
    }
    if seen.contains("~") && seen.len() > 1 {
        report.error(path, "cannot export to no one (~) and someone");
    }
}

/// Protocol names Istio accepts for ports, case-insensitive; empty means detect.
pub(super) fn protocol(p: &str) -> Result<(), String> {
    const KNOWN: [&str; 12] = [
        "tcp",
        "udp",
        "grpc",
        "grpc-web",
        "http",
        "http_proxy",
        "http2",
        "https",
        "tls",
        "mongo",
        "redis",
        "mysql",
    ];
    if p.is_empty() || KNOWN.contains(&p.to_ascii_lowercase().as_str()) {
        Ok(())
    } else {
        Err(format!(
            "unsupported protocol {p:?} (use one of HTTP, HTTP2, HTTPS, GRPC, GRPC-Web, TCP, TLS, MONGO, REDIS, MYSQL, UDP)"
        ))
    }
}

/// RE2 syntax as far as the `regex` crate shares it, and Istio's 1024-character cap.
pub(super) fn regex(pattern: &str) -> Result<(), String> {
    if pattern.len() > 1024 {
        return Err("regex is too large, max length allowed is 1024".into());
    }
    regex::Regex::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("invalid regex: {e}; Istio uses RE2 syntax"))
}

/// A string match sets at most one of exact, prefix and regex, and no empty prefix or regex.
pub(super) fn string_match(
    report: &mut Report,
    path: &Path,
    m: &StringMatch,
    empty_prefix_ok: bool,
) {
    let set = [m.exact.is_some(), m.prefix.is_some(), m.regex.is_some()]
        .iter()
        .filter(|s| **s)
        .count();
    if set > 1 {
        report.error(path, "set only one of exact, prefix and regex");
    }
    if m.prefix.as_deref() == Some("") && !empty_prefix_ok {
        report.error(
            &path.field("prefix"),
            "prefix string match should not be empty",
        );
    }
    if let Some(r) = &m.regex {
        if r.is_empty() {
            report.error(
                &path.field("regex"),
                "regex string match should not be empty",
            );
        } else {
            report.check(&path.field("regex"), regex(r));
        }
    }
}

/// An HTTP header name (a token) or an HTTP/2 pseudo-header.
pub(super) fn header_name(name: &str) -> Result<(), String> {
    const PSEUDO: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];
    if name.is_empty() {
        return Err("header name cannot be empty".into());
    }
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token || PSEUDO.contains(&name) || name.starts_with("@request.auth.claims") {
        Ok(())
    } else {
        Err(format!("header name {name:?} is not a valid header name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_istio() {
        for ok in [
            "reviews",
            "reviews.default.svc.cluster.local",
            "*",
            "*.example.com",
            "*foo.com",
            "a-b.c.",
            "API.Example.com",
        ] {
            assert_eq!(wildcard_domain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a.com",
            "foo.*.com",
            "a.123",
            "under_score.com",
        ] {
            assert!(wildcard_domain(bad).is_err(), "{bad}");
        }
        assert!(fqdn("*.example.com").is_err());
    }

    #[test]
    fn addresses_durations_percentages() {
        assert!(ip_or_cidr("198.18.0.1").is_ok() && ip_or_cidr("198.18.0.0/15").is_ok());
        assert!(ip_or_cidr("198.18.0.0/33").is_err() && ip_or_cidr("example.com").is_err());
        assert!(duration("1ms".parse().unwrap()).is_ok());
        assert_eq!(
            duration("100us".parse().unwrap()),
            Err("duration must be greater than 1ms".into())
        );
        assert!(duration("1500us".parse().unwrap()).is_err());
        assert!(percent(&Percent { value: 100.0 }).is_ok());
        assert!(percent(&Percent { value: 100.1 }).is_err());
        assert!(percent(&Percent { value: 0.00001 }).is_err());
    }

    #[test]
    fn paths_read_like_yaml() {
        let p = Path::root()
            .field("spec")
            .field("http")
            .index(0)
            .field("match")
            .index(1)
            .field("headers")
            .key("end-user");
        assert_eq!(p.as_str(), "spec.http[0].match[1].headers[end-user]");
    }
}
