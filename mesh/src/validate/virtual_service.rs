//! VirtualService rules: hosts, route exclusivity, destinations and weights, matches, retries,
//! faults, redirects, rewrites, mirrors, CORS, TLS and TCP routes.
use std::collections::BTreeSet;

use super::common::{
    Path, Report, dns_label, fqdn, header_name, int_percent, ip_or_cidr, is_ip, optional_duration,
    percent, port, regex, selector_labels, string_match, wildcard_domain,
};
use crate::networking::{
    Destination, FaultAbort, FaultDelay, GRPC_STATUS_NAMES, Headers, HttpMatchRequest,
    HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, RouteDestination, TcpRoute, TlsRoute,
    VirtualService,
};

/// Envoy retry conditions Istio accepts in `retryOn`, besides HTTP status codes.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(super) fn validate(report: &mut Report, path: &Path, vs: &VirtualService) {
    let delegate = vs.hosts.is_empty();
    let mesh_bound = vs.gateways.is_empty() || vs.gateways.iter().any(|g| g == "mesh");
    let mut seen = BTreeSet::new();
    for (i, host) in vs.hosts.iter().enumerate() {
        let p = path.field("hosts").index(i);
        if host == "*" && mesh_bound {
            report.error(
                &p,
                "wildcard host * is not allowed for virtual services bound to the mesh",
            );
        } else if !is_ip(host) {
            report.check(&p, wildcard_domain(host));
        }
        if !seen.insert(host) {
            report.error(&p, format!("duplicate host {host}"));
        }
    }
    for (i, g) in vs.gateways.iter().enumerate() {
        gateway_name(report, &path.field("gateways").index(i), g);
    }
    if delegate {
        if !vs.gateways.is_empty() {
            report.error(
                &path.field("gateways"),
                "a delegate virtual service (no hosts) must have no gateways",
            );
        }
        if !vs.tls.is_empty() || !vs.tcp.is_empty() {
            report.error(
                path,
                "a delegate virtual service (no hosts) may have only http routes",
            );
        }
    }
    if vs.http.is_empty() && vs.tls.is_empty() && vs.tcp.is_empty() {
        report.error(path, "http, tcp or tls must be provided in virtual service");
    }
    for (i, route) in vs.http.iter().enumerate() {
        http_route(report, &path.field("http").index(i), route, delegate);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        tls_route(report, &path.field("tls").index(i), route, &vs.hosts);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        tcp_route(report, &path.field("tcp").index(i), route);
    }
    super::common::export_to(report, &path.field("exportTo"), &vs.export_to, false);
}

fn gateway_name(report: &mut Report, path: &Path, g: &str) {
    if g == "mesh" {
        return;
    }
    match g.split_once('/') {
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() {
                report.error(path, "gateway namespace and name cannot be empty");
            } else if !dns_label(ns) {
                report.error(path, format!("invalid value for namespace: {ns:?}"));
            } else if !dns_label(name) {
                report.error(path, format!("invalid value for gateway name: {name:?}"));
            }
        }
        None => report.check(path, fqdn(g)),
    }
}

fn http_route(report: &mut Report, path: &Path, r: &HttpRoute, in_delegate: bool) {
    let has_route = !r.route.is_empty();
    if let Some(d) = &r.delegate {
        if d.name.is_empty() {
            report.error(&path.field("delegate").field("name"), "required");
        }
        if in_delegate {
            report.error(
                &path.field("delegate"),
                "a delegate HTTP route cannot contain delegate",
            );
        }
        if has_route || r.redirect.is_some() {
            report.error(
                path,
                "a root HTTP route with delegate must not specify route or redirect",
            );
        }
    } else if r.redirect.is_some() {
        for (set, what) in [
            (has_route, "route"),
            (r.fault.is_some(), "fault"),
            (r.rewrite.is_some(), "rewrite"),
            (r.direct_response.is_some(), "directResponse"),
        ] {
            if set {
                report.error(
                    path,
                    format!("HTTP route cannot contain both {what} and redirect"),
                );
            }
        }
    } else if r.direct_response.is_some() {
        for (set, what) in [
            (has_route, "route"),
            (r.fault.is_some(), "fault"),
            (r.rewrite.is_some(), "rewrite"),
        ] {
            if set {
                report.error(
                    path,
                    format!("HTTP route cannot contain both {what} and directResponse"),
                );
            }
        }
    } else if !has_route {
        report.error(
            &path.field("route"),
            "HTTP route, redirect or directResponse is required",
        );
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        report.error(path, "HTTP route cannot contain both mirror and mirrors");
    }
    for (i, m) in r.matches.iter().enumerate() {
        http_match(report, &path.field("match").index(i), m);
    }
    weights(
        report,
        &path.field("route"),
        r.route.iter().map(|d| (d.weight, &d.destination)),
    );
    for (i, d) in r.route.iter().enumerate() {
        if let Some(h) = &d.headers {
            headers(report, &path.field("route").index(i).field("headers"), h);
        }
    }
    if let Some(h) = &r.headers {
        headers(report, &path.field("headers"), h);
    }
    optional_duration(report, &path.field("timeout"), r.timeout);
    if let Some(retry) = &r.retries {
        retries(report, &path.field("retries"), retry);
    }
    if let Some(fault) = &r.fault {
        let p = path.field("fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            report.error(&p, "HTTP fault injection must have an abort and/or a delay");
        }
        if let Some(d) = &fault.delay {
            delay(report, &p.field("delay"), d);
        }
        if let Some(a) = &fault.abort {
            abort(report, &p.field("abort"), a);
        }
    }
    if let Some(redirect) = &r.redirect {
        self::redirect(report, &path.field("redirect"), redirect);
    }
    if let Some(dr) = &r.direct_response
        && !(200..=599).contains(&dr.status)
    {
        report.error(
            &path.field("directResponse").field("status"),
            format!("HTTP status {} is not in range 200-599", dr.status),
        );
    }
    if let Some(rw) = &r.rewrite {
        rewrite(report, &path.field("rewrite"), rw);
    }
    if let Some(m) = &r.mirror {
        destination(report, &path.field("mirror"), m);
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        let p = path.field("mirrors").index(i);
        destination(report, &p.field("destination"), &m.destination);
        if let Some(pc) = &m.percentage {
            report.check(&p.field("percentage").field("value"), percent(pc));
        }
    }
    if let Some(pc) = &r.mirror_percentage {
        report.check(&path.field("mirrorPercentage").field("value"), percent(pc));
    }
    if let Some(pc) = r.mirror_percent {
        report.check(&path.field("mirrorPercent"), int_percent(i64::from(pc)));
        report.warning(
            &path.field("mirrorPercent"),
            "deprecated: use mirrorPercentage",
        );
    }
    if let Some(cors) = &r.cors_policy {
        let p = path.field("corsPolicy");
        for (i, o) in cors.allow_origins.iter().enumerate() {
            string_match(report, &p.field("allowOrigins").index(i), o, false);
        }
        const METHODS: [&str; 10] = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
        ];
        for (i, m) in cors.allow_methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                report.error(
                    &p.field("allowMethods").index(i),
                    format!("{m:?} is not a supported HTTP method"),
                );
            }
        }
        optional_duration(report, &p.field("maxAge"), cors.max_age);
    }
}

fn http_match(report: &mut Report, path: &Path, m: &HttpMatchRequest) {
    if let Some(uri) = &m.uri {
        string_match(report, &path.field("uri"), uri, true);
    }
    for (field, value) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(v) = value {
            string_match(report, &path.field(field), v, false);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
    ] {
        for (name, value) in map {
            let p = path.field(field).key(name);
            report.check(&p, header_name(name));
            string_match(report, &p, value, false);
        }
    }
    for (name, value) in &m.query_params {
        string_match(report, &path.field("queryParams").key(name), value, false);
    }
    if let Some(n) = m.port {
        report.check(&path.field("port"), port(n));
    }
    if !m.source_labels.is_empty() {
        selector_labels(report, &path.field("sourceLabels"), &m.source_labels);
    }
    if let Some(ns) = &m.source_namespace
        && !dns_label(ns)
    {
        report.error(
            &path.field("sourceNamespace"),
            format!("sourceNamespace {ns:?} is invalid"),
        );
    }
    for (i, g) in m.gateways.iter().enumerate() {
        gateway_name(report, &path.field("gateways").index(i), g);
    }
}

/// Each weight 0..=100; with several destinations they cannot all be 0.
fn weights<'a>(
    report: &mut Report,
    path: &Path,
    dests: impl Iterator<Item = (i32, &'a Destination)>,
) {
    let dests: Vec<_> = dests.collect();
    let mut total: i64 = 0;
    for (i, (weight, dest)) in dests.iter().enumerate() {
        let p = path.index(i);
        if !(0..=100).contains(weight) {
            report.error(&p.field("weight"), "must be 0..=100");
        }
        total += i64::from(*weight);
        destination(report, &p.field("destination"), dest);
    }
    if dests.len() > 1 && total == 0 {
        report.error(path, "total destination weight = 0");
    }
}

fn destination(report: &mut Report, path: &Path, d: &Destination) {
    if d.host.is_empty() {
        report.error(&path.field("host"), "destination host is required");
    } else if d.host == "*" {
        report.error(&path.field("host"), "invalid destination host *");
    } else {
        report.check(&path.field("host"), wildcard_domain(&d.host));
    }
    if let Some(subset) = &d.subset
        && !dns_label(subset)
    {
        report.error(
            &path.field("subset"),
            format!("subset name {subset:?} is invalid (DNS-1123 label)"),
        );
    }
    if let Some(p) = &d.port {
        report.check(&path.field("port").field("number"), port(p.number));
    }
}

fn headers(report: &mut Report, path: &Path, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let p = path.field(side);
        for (op, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for name in names {
                let q = p.field(op).key(name);
                let authority = side == "request"
                    && op != "remove"
                    && (name.eq_ignore_ascii_case(":authority")
                        || name.eq_ignore_ascii_case("host"));
                if authority {
                    continue;
                }
                if name.eq_ignore_ascii_case("host") {
                    report.error(&q, "cannot set the Host header here");
                } else if name.starts_with(':') {
                    report.error(&q, "header cannot have \":\" prefix");
                } else {
                    report.check(&q, header_name(name));
                }
            }
        }
        for (op, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (name, value) in map {
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    report.error(
                        &p.field(op).key(name),
                        "header value has control characters",
                    );
                }
            }
        }
    }
}

fn retries(report: &mut Report, path: &Path, r: &HttpRetry) {
    if r.attempts < 0 {
        report.error(&path.field("attempts"), "attempts cannot be negative");
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        report.error(
            path,
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    optional_duration(report, &path.field("perTryTimeout"), r.per_try_timeout);
    optional_duration(report, &path.field("backoff"), r.backoff);
    if let Some(on) = &r.retry_on {
        for cond in on.split(',').map(str::trim) {
            let status = cond.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c));
            if !status && !RETRY_ON.contains(&cond) {
                report.error(
                    &path.field("retryOn"),
                    format!("{cond:?} is not a valid retryOn policy"),
                );
            }
        }
    }
}

fn delay(report: &mut Report, path: &Path, d: &FaultDelay) {
    if d.exponential_delay.is_some() {
        report.error(
            &path.field("exponentialDelay"),
            "exponentialDelay not supported yet",
        );
    }
    match d.fixed_delay {
        Some(fixed) => report.check(&path.field("fixedDelay"), super::common::duration(fixed)),
        None if d.exponential_delay.is_none() => {
            report.error(&path.field("fixedDelay"), "required")
        }
        None => {}
    }
    fault_percentages(report, path, d.percentage.as_ref(), d.percent);
}

fn abort(report: &mut Report, path: &Path, a: &FaultAbort) {
    let kinds = [
        a.http_status.is_some(),
        a.grpc_status.is_some(),
        a.http2_error.is_some(),
    ]
    .iter()
    .filter(|s| **s)
    .count();
    if kinds > 1 {
        report.error(
            path,
            "set only one of httpStatus, grpcStatus and http2Error",
        );
    }
    if kinds == 0 {
        report.error(path, "abort needs an error: httpStatus or grpcStatus");
    }
    if let Some(s) = a.http_status
        && !(200..=599).contains(&s)
    {
        report.error(
            &path.field("httpStatus"),
            format!("HTTP status {s} is not in range 200-599"),
        );
    }
    if let Some(g) = &a.grpc_status
        && !GRPC_STATUS_NAMES.contains(&g.as_str())
    {
        report.error(
            &path.field("grpcStatus"),
            format!("gRPC status {g:?} is not supported (for example NOT_FOUND)"),
        );
    }
    if a.http2_error.is_some() {
        report.error(
            &path.field("http2Error"),
            "HTTP/2 abort fault injection not supported yet",
        );
    }
    fault_percentages(report, path, a.percentage.as_ref(), a.percent);
}

fn fault_percentages(
    report: &mut Report,
    path: &Path,
    pc: Option<&crate::networking::Percent>,
    legacy: Option<i32>,
) {
    if let Some(pc) = pc {
        report.check(&path.field("percentage").field("value"), percent(pc));
    }
    if let Some(p) = legacy {
        report.check(&path.field("percent"), int_percent(i64::from(p)));
    }
}

fn redirect(report: &mut Report, path: &Path, r: &HttpRedirect) {
    if r.uri.is_none()
        && r.authority.is_none()
        && r.scheme.is_none()
        && r.port.is_none()
        && r.derive_port.is_none()
    {
        report.error(
            path,
            "redirect must specify uri, authority, scheme, or port",
        );
    }
    if r.port.is_some() && r.derive_port.is_some() {
        report.error(path, "set only one of port and derivePort");
    }
    if let Some(code) = r.redirect_code
        && !(300..=399).contains(&code)
    {
        report.error(
            &path.field("redirectCode"),
            format!("{code} is not a valid redirect code, must be 3xx"),
        );
    }
    if let Some(s) = &r.scheme
        && s != "http"
        && s != "https"
    {
        report.error(
            &path.field("scheme"),
            "invalid redirect scheme, must be \"http\" or \"https\"",
        );
    }
    if let Some(p) = r.port {
        report.check(&path.field("port"), port(p));
    }
}

fn rewrite(report: &mut Report, path: &Path, r: &HttpRewrite) {
    if r.uri.is_some() && r.uri_regex_rewrite.is_some() {
        report.error(
            path,
            "rewrite may only contain one of uri or uriRegexRewrite",
        );
    }
    if r.uri.is_none() && r.uri_regex_rewrite.is_none() && r.authority.is_none() {
        report.error(
            path,
            "rewrite must specify at least one of uri, uriRegexRewrite, or authority",
        );
    }
    if let Some(rr) = &r.uri_regex_rewrite {
        let p = path.field("uriRegexRewrite");
        if rr.pattern.is_empty() || rr.rewrite.is_empty() {
            report.error(&p, "uriRegexRewrite requires both rewrite and match");
        } else {
            report.check(&p.field("match"), regex(&rr.pattern));
        }
    }
}

fn route_destinations(report: &mut Report, path: &Path, route: &[RouteDestination]) {
    if route.is_empty() {
        report.error(path, "required");
    }
    weights(
        report,
        path,
        route.iter().map(|d| (d.weight, &d.destination)),
    );
}

fn tls_route(report: &mut Report, path: &Path, r: &TlsRoute, hosts: &[String]) {
    if r.matches.is_empty() {
        report.error(
            &path.field("match"),
            "TLS route must have at least one match condition",
        );
    }
    for (i, m) in r.matches.iter().enumerate() {
        let p = path.field("match").index(i);
        if m.sni_hosts.is_empty() {
            report.error(
                &p.field("sniHosts"),
                "TLS match must have at least one SNI host",
            );
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            let q = p.field("sniHosts").index(j);
            report.check(&q, wildcard_domain(sni));
            if !hosts.is_empty() && !hosts.iter().any(|h| covers(h, sni)) {
                report.error(&q, format!("SNI host {sni:?} is not a compatible subset of any of the virtual service hosts"));
            }
        }
        for (j, s) in m.destination_subnets.iter().enumerate() {
            report.check(&p.field("destinationSubnets").index(j), ip_or_cidr(s));
        }
        if let Some(n) = m.port {
            report.check(&p.field("port"), port(n));
        }
    }
    route_destinations(report, &path.field("route"), &r.route);
}

/// Whether `host` (possibly a wildcard) covers `name`.
fn covers(host: &str, name: &str) -> bool {
    host == name
        || host == "*"
        || host
            .strip_prefix('*')
            .is_some_and(|suffix| name.ends_with(suffix))
        || name
            .strip_prefix('*')
            .is_some_and(|suffix| host.ends_with(suffix))
}

fn tcp_route(report: &mut Report, path: &Path, r: &TcpRoute) {
    for (i, m) in r.matches.iter().enumerate() {
        let p = path.field("match").index(i);
        for (j, s) in m.destination_subnets.iter().enumerate() {
            report.check(&p.field("destinationSubnets").index(j), ip_or_cidr(s));
        }
        if let Some(n) = m.port {
            report.check(&p.field("port"), port(n));
        }
        if !m.source_labels.is_empty() {
            selector_labels(report, &p.field("sourceLabels"), &m.source_labels);
        }
    }
    route_destinations(report, &path.field("route"), &r.route);
}
