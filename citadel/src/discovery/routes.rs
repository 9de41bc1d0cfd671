//! RDS: one RouteConfiguration per outbound HTTP port (named by the port, as Istio does), with a
//! virtual host per service on that port and the routes of the VirtualService for its host:
//! matches, weighted subsets, timeouts, retries, faults, rewrites, redirects, direct responses,
//! mirrors and header changes. Unknown hosts pass through (ALLOW_ANY) or get 502 (REGISTRY_ONLY).
use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TypedExtensionConfig, data_source::Specifier,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::{
    ClusterSpecifier, HostRewriteSpecifier, RequestMirrorPolicy,
};
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RedirectAction, RetryPolicy, Route,
    RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, redirect_action,
    retry_policy::RetryHostPredicate,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::FaultDelay;
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatchAndSubstitute, RegexMatcher, StringMatcher,
};
use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, fractional_percent::DenominatorType};
use mesh::networking::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRoute, OutboundMode, Percent,
    StringMatch,
};

use super::clusters::{PASSTHROUGH, consistent_hash, outbound_name};
use super::services::{DOMAIN_SUFFIX, Registry, Service, resolve_host};
use super::{Ctx, VirtualServices, any, duration, u32v};

/// The HTTP filter names routes configure per route.
pub const FAULT_FILTER: &str = "envoy.filters.http.fault";

/// The route configuration for outbound port `port`.
pub fn outbound(
    ctx: &Ctx<'_>,
    registry: &Registry,
    port: u32,
    services: &[&Service],
    vss: &VirtualServices<'_>,
) -> RouteConfiguration {
    let mut virtual_hosts: Vec<VirtualHost> = services
        .iter()
        .filter(|s| s.port(port).is_some_and(|p| p.protocol.is_http()))
        .map(|s| VirtualHost {
            name: format!("{}:{port}", s.hostname),
            domains: domains(s, port, &ctx.proxy.namespace),
            routes: service_routes(registry, s, port, vss),
            ..Default::default()
        })
        .collect();
    virtual_hosts.push(fallback(ctx));
    for route in virtual_hosts.iter_mut().flat_map(|v| v.routes.iter_mut()) {
        set_hash_policy(ctx, registry, route);
    }
    RouteConfiguration {
        name: port.to_string(),
        virtual_hosts,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

/// A route to a destination whose DestinationRule asks for consistent hashing hashes on what
/// it names (header, cookie, source IP or query parameter), taken, as in Istio, from the
/// route's first destination.
pub fn set_hash_policy(ctx: &Ctx<'_>, registry: &Registry, route: &mut Route) {
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        ConnectionProperties, Cookie, CookieAttribute, Header, PolicySpecifier, QueryParameter,
    };
    let Some(Action::Route(action)) = &mut route.action else {
        return;
    };
    let first = match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c.as_str(),
        Some(ClusterSpecifier::WeightedClusters(w)) => match w.clusters.first() {
            Some(c) => c.name.as_str(),
            None => return,
        },
        _ => return,
    };
    let mut parts = first.splitn(4, '|');
    let (Some("outbound"), Some(port), Some(subset), Some(host)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(port), Some(service)) = (port.parse::<u32>(), registry.find(host)) else {
        return;
    };
    let Some(ch) = consistent_hash(ctx, service, subset, port) else {
        return;
    };
    let specifier = if let Some(h) = &ch.http_header_name {
        PolicySpecifier::Header(Header {
            header_name: h.clone(),
            ..Default::default()
        })
    } else if let Some(c) = &ch.http_cookie {
        PolicySpecifier::Cookie(Cookie {
            name: c.name.clone(),
            path: c.path.clone().unwrap_or_default(),
            ttl: c.ttl.map(|t| duration(t.as_duration())),
            attributes: c
                .attributes
                .iter()
                .map(|a| CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        })
    } else if ch.use_source_ip == Some(true) {
        PolicySpecifier::ConnectionProperties(ConnectionProperties { source_ip: true })
    } else if let Some(q) = &ch.http_query_parameter_name {
        PolicySpecifier::QueryParameter(QueryParameter { name: q.clone() })
    } else {
        return;
    };
    action.hash_policy = vec![HashPolicy {
        policy_specifier: Some(specifier),
        ..Default::default()
    }];
}

/// What unknown hosts get: passthrough (ALLOW_ANY) or 502 (REGISTRY_ONLY), as Istio does.
fn fallback(ctx: &Ctx<'_>) -> VirtualHost {
    let route = match ctx.outbound_mode() {
        OutboundMode::AllowAny => Route {
            r#match: Some(prefix("/")),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH.into())),
                timeout: Some(duration(std::time::Duration::ZERO)),
                ..Default::default()
            })),
            name: "allow_any".into(),
            ..Default::default()
        },
        OutboundMode::RegistryOnly => Route {
            r#match: Some(prefix("/")),
            action: Some(Action::DirectResponse(DirectResponseAction {
                status: 502,
                ..Default::default()
            })),
            name: "block_all".into(),
            ..Default::default()
        },
    };
    let name = if ctx.outbound_mode() == OutboundMode::AllowAny {
        "allow_any"
    } else {
        "block_all"
    };
    VirtualHost {
        name: name.into(),
        domains: vec!["*".into()],
        routes: vec![route],
        ..Default::default()
    }
}

/// The names a client may use for a service: its FQDN and, from the same namespace, the short
/// forms Kubernetes DNS resolves; each with and without the port; and its VIPs.
fn domains(s: &Service, port: u32, proxy_ns: &str) -> Vec<String> {
    let mut names = vec![s.hostname.clone()];
    if let Some(short) = s.hostname.strip_suffix(&format!(".{DOMAIN_SUFFIX}")) {
        let mut parts = short.splitn(2, '.');
        let (name, ns) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        names.push(format!("{name}.{ns}"));
        names.push(format!("{name}.{ns}.svc"));
        if ns == proxy_ns {
            names.push(name.to_string());
        }
    }
    names.extend(s.addresses.iter().filter(|a| !a.contains('/')).cloned());
    let mut out: Vec<String> = names
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}:{port}")])
        .collect();
    out.dedup();
    out
}

/// A match on the path prefix `p`.
pub fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(p.into())),
        ..Default::default()
    }
}

fn default_route(cluster: String) -> Route {
    Route {
        name: "default".into(),
        r#match: Some(prefix("/")),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(std::time::Duration::ZERO)),
            retry_policy: Some(default_retries()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn service_routes(
    registry: &Registry,
    s: &Service,
    port: u32,
    vss: &VirtualServices<'_>,
) -> Vec<Route> {
    let vs = vss.iter().find(|(hosts, _, _)| {
        hosts
            .iter()
            .any(|h| super::services::host_matches(h, &s.hostname))
    });
    let Some((_, object, vs)) = vs else {
        return vec![default_route(outbound_name(port, "", &s.hostname))];
    };
    // A match naming gateways applies to sidecars only when it names `mesh` too.
    vs_routes(registry, object, vs, port, |m| {
        m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh")
    })
}

/// The routes of VirtualService `vs` on `port`, keeping the matches `applies` accepts (an HTTP
/// route whose matches all fall away is skipped).
pub fn vs_routes(
    registry: &Registry,
    object: &mesh::Object,
    vs: &mesh::networking::VirtualService,
    port: u32,
    applies: impl Fn(&HttpMatchRequest) -> bool,
) -> Vec<Route> {
    let ns = object.metadata.namespace();
    let mut routes = Vec::new();
    for (i, http) in vs.http.iter().enumerate() {
        let matches: Vec<&HttpMatchRequest> = http
            .matches
            .iter()
            .filter(|m| m.port.is_none_or(|p| p == port) && applies(m))
            .collect();
        if !http.matches.is_empty() && matches.is_empty() {
            continue;
        }
        let name = http
            .name
            .clone()
            .unwrap_or_else(|| format!("{}.{}.{i}", object.metadata.name, ns));
        let route_matches: Vec<RouteMatch> = if matches.is_empty() {
            vec![prefix("/")]
        } else {
            matches.iter().map(|m| route_match(m)).collect()
        };
        for m in route_matches {
            routes.push(route(registry, ns, port, http, m, name.clone()));
        }
        // A route without matches catches everything: later ones never apply.
        if http.matches.is_empty() {
            break;
        }
    }
    routes
}

fn string_matcher(m: &StringMatch, ignore_case: bool) -> Option<StringMatcher> {
    let pattern = if let Some(e) = &m.exact {
        MatchPattern::Exact(e.clone())
    } else if let Some(p) = &m.prefix {
        MatchPattern::Prefix(p.clone())
    } else if let Some(r) = &m.regex {
        MatchPattern::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        })
    } else {
        return None;
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case,
    })
}

fn header(name: &str, m: &StringMatch, invert: bool) -> HeaderMatcher {
    // An empty match is a presence check.
    let spec = match string_matcher(m, false) {
        Some(sm) => HeaderMatchSpecifier::StringMatch(sm),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(spec),
        invert_match: invert,
        ..Default::default()
    }
}

fn route_match(m: &HttpMatchRequest) -> RouteMatch {
    let path = match &m.uri {
        Some(StringMatch { exact: Some(e), .. }) => PathSpecifier::Path(e.clone()),
        Some(StringMatch {
            prefix: Some(p), ..
        }) => PathSpecifier::Prefix(p.clone()),
        Some(StringMatch { regex: Some(r), .. }) => PathSpecifier::SafeRegex(RegexMatcher {
            regex: r.clone(),
            ..Default::default()
        }),
        _ => PathSpecifier::Prefix("/".into()),
    };
    let mut headers: Vec<HeaderMatcher> =
        m.headers.iter().map(|(n, v)| header(n, v, false)).collect();
    headers.extend(m.without_headers.iter().map(|(n, v)| header(n, v, true)));
    for (name, value) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(v) = value {
            headers.push(header(name, v, false));
        }
    }
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: m
            .ignore_uri_case
            .then_some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        headers,
        query_parameters: m
            .query_params
            .iter()
            .map(|(name, v)| QueryParameterMatcher {
                name: name.clone(),
                query_parameter_match_specifier: Some(match string_matcher(v, false) {
                    Some(sm) => QueryParameterMatchSpecifier::StringMatch(sm),
                    None => QueryParameterMatchSpecifier::PresentMatch(true),
                }),
            })
            .collect(),
        ..Default::default()
    }
}

/// The cluster a destination names, seen from a VirtualService in namespace `ns` on `port`.
fn cluster_for(registry: &Registry, ns: &str, port: u32, d: &Destination) -> String {
    let host = resolve_host(&d.host, ns);
    let dest_port = d.port.map(|p| p.number).unwrap_or_else(|| {
        // A service with one port needs no port in the destination.
        match registry.find(&host).map(|s| s.ports.as_slice()) {
            Some([only]) => only.number,
            _ => port,
        }
    });
    outbound_name(dest_port, d.subset.as_deref().unwrap_or(""), &host)
}

fn fraction(p: &Percent) -> FractionalPercent {
    FractionalPercent {
        numerator: (p.value * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}

fn header_options(ops: &HeaderOperations) -> (Vec<HeaderValueOption>, Vec<String>) {
    let option = |k: &String, v: &String, action: HeaderAppendAction| HeaderValueOption {
        header: Some(HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<HeaderValueOption> = ops
        .set
        .iter()
        .map(|(k, v)| option(k, v, HeaderAppendAction::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(
        ops.add
            .iter()
            .map(|(k, v)| option(k, v, HeaderAppendAction::AppendIfExistsOrAdd)),
    );
    (add, ops.remove.clone())
}

/// Istio's default retry policy for routes without `retries`.
fn default_retries() -> RetryPolicy {
    retries(
        2,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        None,
    )
}

fn retries(attempts: u32, on: &str, per_try: Option<std::time::Duration>) -> RetryPolicy {
    RetryPolicy {
        retry_on: on.to_string(),
        num_retries: u32v(attempts),
        per_try_timeout: per_try.map(duration),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            config_type: Some(envoy_types::pb::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType::TypedConfig(any(&PreviousHostsPredicate::default()))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    }
}

fn route(
    registry: &Registry,
    ns: &str,
    port: u32,
    http: &HttpRoute,
    m: RouteMatch,
    name: String,
) -> Route {
    let mut r = Route {
        name,
        r#match: Some(m),
        ..Default::default()
    };
    if let Some(h) = &http.headers {
        apply_route_headers(&mut r, h);
    }
    if let Some(fault) = &http.fault {
        r.typed_per_filter_config
            .insert(FAULT_FILTER.into(), any(&http_fault(fault)));
    }
    if let Some(cors) = &http.cors_policy {
        r.typed_per_filter_config
            .insert(CORS_FILTER.into(), any(&cors_policy(cors)));
    }
    if let Some(red) = &http.redirect {
        r.action = Some(Action::Redirect(RedirectAction {
            host_redirect: red.authority.clone().unwrap_or_default(),
            port_redirect: red.port.unwrap_or(0),
            path_rewrite_specifier: red
                .uri
                .clone()
                .map(redirect_action::PathRewriteSpecifier::PathRedirect),
            scheme_rewrite_specifier: red
                .scheme
                .clone()
                .map(SchemeRewriteSpecifier::SchemeRedirect),
            response_code: match red.redirect_code.unwrap_or(301) {
                302 => RedirectResponseCode::Found,
                303 => RedirectResponseCode::SeeOther,
                307 => RedirectResponseCode::TemporaryRedirect,
                308 => RedirectResponseCode::PermanentRedirect,
                _ => RedirectResponseCode::MovedPermanently,
            } as i32,
            ..Default::default()
        }));
        return r;
    }
    if let Some(dr) = &http.direct_response {
        r.action = Some(Action::DirectResponse(DirectResponseAction {
            status: dr.status,
            body: dr
                .body
                .as_ref()
                .and_then(|b| b.string.clone())
                .map(|s| DataSource {
                    specifier: Some(Specifier::InlineString(s)),
                    ..Default::default()
                }),
            ..Default::default()
        }));
        return r;
    }
    let clusters: Vec<(String, i32, Option<&Headers>)> = http
        .route
        .iter()
        .map(|d| {
            (
                cluster_for(registry, ns, port, &d.destination),
                d.weight,
                d.headers.as_ref(),
            )
        })
        .collect();
    let specifier = match clusters.as_slice() {
        [(name, _, None)] => ClusterSpecifier::Cluster(name.clone()),
        _ => {
            let total: i32 = clusters.iter().map(|(_, w, _)| *w).sum();
            ClusterSpecifier::WeightedClusters(WeightedCluster {
                clusters: clusters
                    .iter()
                    .filter(|(_, w, _)| *w > 0 || total == 0)
                    .map(|(name, w, headers)| {
                        let mut cw = ClusterWeight {
                            name: name.clone(),
                            weight: u32v(if total == 0 { 1 } else { *w as u32 }),
                            ..Default::default()
                        };
                        if let Some(h) = headers {
                            if let Some(req) = &h.request {
                                (cw.request_headers_to_add, cw.request_headers_to_remove) =
                                    header_options(req);
                            }
                            if let Some(resp) = &h.response {
                                (cw.response_headers_to_add, cw.response_headers_to_remove) =
                                    header_options(resp);
                            }
                        }
                        cw
                    })
                    .collect(),
                ..Default::default()
            })
        }
    };
    let mut action = RouteAction {
        cluster_specifier: Some(specifier),
        timeout: Some(duration(
            http.timeout.map(|t| t.as_duration()).unwrap_or_default(),
        )),
        retry_policy: match &http.retries {
            None => Some(default_retries()),
            Some(r) if r.attempts == 0 => None,
            Some(r) => Some(retries(
                r.attempts as u32,
                r.retry_on.as_deref().unwrap_or(
                    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                ),
                r.per_try_timeout.map(|d| d.as_duration()),
            )),
        },
        ..Default::default()
    };
    if let Some(rw) = &http.rewrite {
        if let Some(uri) = &rw.uri {
            action.prefix_rewrite = uri.clone();
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            action.regex_rewrite = Some(RegexMatchAndSubstitute {
                pattern: Some(RegexMatcher {
                    regex: rr.pattern.clone(),
                    ..Default::default()
                }),
                substitution: rr.rewrite.clone(),
            });
        }
        if let Some(a) = &rw.authority {
            action.host_rewrite_specifier =
                Some(HostRewriteSpecifier::HostRewriteLiteral(a.clone()));
        }
    }
    let mirror_fraction = http
        .mirror_percentage
        .or(http.mirror_percent.map(|p| Percent {
            value: f64::from(p),
        }));
    let mirrors: Vec<(&Destination, Option<Percent>)> = http
        .mirror
        .iter()
        .map(|m| (m, mirror_fraction))
        .chain(http.mirrors.iter().map(|m| (&m.destination, m.percentage)))
        .collect();
    action.request_mirror_policies = mirrors
        .into_iter()
        .map(|(d, pc)| RequestMirrorPolicy {
            cluster: cluster_for(registry, ns, port, d),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(fraction(&pc.unwrap_or(Percent { value: 100.0 }))),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    r.action = Some(Action::Route(action));
    r
}

fn apply_route_headers(r: &mut Route, h: &Headers) {
    if let Some(req) = &h.request {
        (r.request_headers_to_add, r.request_headers_to_remove) = header_options(req);
    }
    if let Some(resp) = &h.response {
        (r.response_headers_to_add, r.response_headers_to_remove) = header_options(resp);
    }
}

fn http_fault(f: &mesh::networking::HttpFaultInjection) -> HttpFault {
    let pct = |p: Option<&Percent>, legacy: Option<i32>| {
        fraction(&p.copied().unwrap_or(Percent {
            value: legacy.map_or(100.0, f64::from),
        }))
    };
    HttpFault {
        delay: f.delay.as_ref().and_then(|d| {
            d.fixed_delay.map(|fixed| FaultDelay {
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(
                    fixed.as_duration(),
                ))),
                percentage: Some(pct(d.percentage.as_ref(), d.percent)),
            })
        }),
        abort: f.abort.as_ref().map(|a| FaultAbort {
            error_type: a
                .http_status
                .map(|s| ErrorType::HttpStatus(s as u32))
                .or_else(|| {
                    a.grpc_status
                        .as_ref()
                        .map(|g| ErrorType::GrpcStatus(grpc_code(g)))
                }),
            percentage: Some(pct(a.percentage.as_ref(), a.percent)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn grpc_code(name: &str) -> u32 {
    mesh::networking::GRPC_STATUS_NAMES
        .iter()
        .position(|n| *n == name)
        .unwrap_or(2) as u32
}

pub const CORS_FILTER: &str = "envoy.filters.http.cors";

/// The CORS filter; it acts only on routes that carry a policy.
pub fn cors_filter() -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: CORS_FILTER.into(),
        typed_config: Some(any(
            &envoy_types::pb::envoy::extensions::filters::http::cors::v3::Cors {},
        )),
    }
}

/// A VirtualService route's `corsPolicy` as Envoy's per-route policy, as Istio translates it:
/// origins as string matchers (the deprecated `allowOrigin` as exact ones), lists joined with
/// commas, `maxAge` in seconds, and `unmatchedPreflights: IGNORE` answering preflights of
/// origins it does not allow itself instead of forwarding them.
fn cors_policy(
    c: &mesh::networking::CorsPolicy,
) -> envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
    use mesh::networking::UnmatchedPreflights;
    let exact = |o: &String| StringMatcher {
        match_pattern: Some(MatchPattern::Exact(o.clone())),
        ignore_case: false,
    };
    envoy_types::pb::envoy::extensions::filters::http::cors::v3::CorsPolicy {
        allow_origin_string_match: c
            .allow_origins
            .iter()
            .filter_map(|m| string_matcher(m, false))
            .chain(c.allow_origin.iter().map(exact))
            .collect(),
        allow_methods: c.allow_methods.join(","),
        allow_headers: c.allow_headers.join(","),
        expose_headers: c.expose_headers.join(","),
        max_age: c
            .max_age
            .map(|d| d.as_duration().as_secs().to_string())
            .unwrap_or_default(),
        allow_credentials: c
            .allow_credentials
            .map(|value| envoy_types::pb::google::protobuf::BoolValue { value }),
        forward_not_matching_preflights: c.unmatched_preflights.map(|u| {
            envoy_types::pb::google::protobuf::BoolValue {
                value: u != UnmatchedPreflights::Ignore,
            }
        }),
        ..Default::default()
    }
}

/// The empty fault filter config the HCM carries, so routes can configure it.
pub fn fault_filter() -> TypedExtensionConfig {
    TypedExtensionConfig {
        name: FAULT_FILTER.into(),
        typed_config: Some(any(&HttpFault::default())),
    }
}

/// Routes of the ports that have no HTTP service: none; kept for symmetry in tests.
pub fn ports_with_http(services: &[&Service]) -> Vec<u32> {
    let mut ports: BTreeMap<u32, ()> = BTreeMap::new();
    for s in services {
        for p in s.ports.iter().filter(|p| p.protocol.is_http()) {
            ports.insert(p.number, ());
        }
    }
    ports.into_keys().collect()
}
