//! LDS for a sidecar, in Istio's layout: `virtualOutbound` (15001) and `virtualInbound`
//! (15006) with original destination, per-port outbound HTTP listeners `0.0.0.0_PORT` using
//! RDS route `PORT`, `VIP_PORT` listeners for TCP services, `0.0.0.0_PORT` listeners for TLS
//! ports routed by SNI (VirtualService `tls` routes, then each host), and inbound filter chains
//! per port of the proxy's own workload (mTLS or plaintext, told apart by `tls_inspector`). Sidecar
//! listeners with `captureMode: NONE` bind their address themselves (no iptables).
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::TrafficDirection;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route, RouteAction, RouteConfiguration, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, ForwardClientCertDetails, RouteSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier as TcpCluster, WeightedCluster, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh::networking::{CaptureMode, OutboundMode, RouteDestination, Sidecar};
use mesh::security::MtlsMode;

use super::clusters::{BLACKHOLE, INBOUND_PASSTHROUGH, PASSTHROUGH, inbound_name, outbound_name};
use super::proxy::Interception;
use super::rbac;
use super::routes::{cors_filter, fault_filter};
use super::services::{Protocol, Registry, Service, resolve_host};
use super::tls::downstream_mtls;
use super::{Ctx, VirtualServices, address, ads_source, any, duration, u32v};

pub const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
pub const VIRTUAL_INBOUND: &str = "virtualInbound";
pub const OUTBOUND_PORT: u32 = 15001;
pub const INBOUND_PORT: u32 = 15006;

/// A port the proxy's own workload serves, and where the application listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InboundPort {
    pub port: u32,
    pub protocol: Protocol,
    pub target_host: String,
    pub target_port: u32,
    /// Where a `captureMode: NONE` ingress listener binds (no redirect).
    pub bind: Option<String>,
    /// What the port accepts, by PeerAuthentication (never UNSET).
    pub mtls: MtlsMode,
}

/// The ports of the proxy's workload: every service port of which one of its IPs is an
/// endpoint, overridden by its Sidecar's ingress listeners.
pub fn inbound_ports(
    ctx: &Ctx<'_>,
    registry: &Registry,
    sidecar: Option<&Sidecar>,
) -> Vec<InboundPort> {
    if let Some(sc) = sidecar.filter(|s| !s.ingress.is_empty()) {
        return sc
            .ingress
            .iter()
            .filter_map(|ing| {
                let port = ing.port.as_ref()?;
                let (host, target) = match ing
                    .default_endpoint
                    .as_deref()
                    .and_then(|e| e.rsplit_once(':'))
                {
                    Some((h, p)) => (
                        if h.is_empty() || h == "0.0.0.0" {
                            "127.0.0.1".to_string()
                        } else {
                            h.trim_matches(['[', ']']).to_string()
                        },
                        p.parse().unwrap_or(port.number),
                    ),
                    None => ("127.0.0.1".to_string(), port.number),
                };
                Some(InboundPort {
                    port: port.number,
                    protocol: Protocol::parse(&port.protocol),
                    target_host: host,
                    target_port: target,
                    bind: (ing.capture_mode == CaptureMode::None)
                        .then(|| ing.bind.clone().unwrap_or_else(|| "0.0.0.0".into())),
                    mtls: ctx.inbound_mode(port.number),
                })
            })
            .collect();
    }
    let ips: Vec<String> = ctx.proxy.ips.iter().map(ToString::to_string).collect();
    let mut ports: Vec<InboundPort> = Vec::new();
    for (s, e) in registry.endpoints_at(ips.iter().map(String::as_str)) {
        for p in &s.ports {
            let target = e.port_for(p);
            if !ports.iter().any(|x| x.port == target) {
                ports.push(InboundPort {
                    port: target,
                    protocol: p.protocol,
                    target_host: "127.0.0.1".into(),
                    target_port: target,
                    bind: None,
                    mtls: ctx.inbound_mode(target),
                });
            }
        }
    }
    ports.sort_by_key(|p| p.port);
    ports
}

fn filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(FilterConfig::TypedConfig(config)),
    }
}

pub(super) fn tcp_proxy(stat: &str, clusters: &[(String, u32)]) -> Filter {
    filter(
        "envoy.filters.network.tcp_proxy",
        any(&tcp_proxy_config(stat, clusters)),
    )
}

/// The line a plaintext inbound chain writes to Envoy's stdout for each connection (TCP) or
/// request (HTTP): which chain and the address of the peer that connected (never what
/// `X-Forwarded-For` claims), the "who still sends plaintext" that counters cannot say. Parsed by [`PLAINTEXT_LOG_PREFIX`].
fn plaintext_log(stat: &str) -> AccessLog {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as LogConfig;
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::config::core::v3::{
        DataSource, SubstitutionFormatString, data_source::Specifier,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat;
    let line = format!(
        "{PLAINTEXT_LOG_PREFIX} chain={stat} source=%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%\n"
    );
    let stdout = StdoutAccessLog {
        access_log_format: Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
            format: Some(Format::TextFormatSource(DataSource {
                specifier: Some(Specifier::InlineString(line)),
                ..Default::default()
            })),
            ..Default::default()
        })),
    };
    AccessLog {
        name: "envoy.access_loggers.stdout".into(),
        config_type: Some(LogConfig::TypedConfig(any(&stdout))),
        ..Default::default()
    }
}

/// How a plaintext inbound chain's access log lines start.
pub const PLAINTEXT_LOG_PREFIX: &str = "citadel-inbound-plaintext";

fn tcp_proxy_config(stat: &str, clusters: &[(String, u32)]) -> TcpProxy {
    let spec = match clusters {
        [(only, _)] => TcpCluster::Cluster(only.clone()),
        many => TcpCluster::WeightedClusters(WeightedCluster {
            clusters: many
                .iter()
                .map(|(name, w)| ClusterWeight {
                    name: name.clone(),
                    weight: *w,
                    ..Default::default()
                })
                .collect(),
        }),
    };
    TcpProxy {
        stat_prefix: stat.into(),
        cluster_specifier: Some(spec),
        ..Default::default()
    }
}

fn http_filters() -> Vec<HttpFilter> {
    let filter = |f: envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig| HttpFilter {
        name: f.name,
        config_type: f.typed_config.map(HttpFilterConfig::TypedConfig),
        ..Default::default()
    };
    vec![
        // CORS before faults, as Istio orders them: a preflight is answered, not delayed.
        filter(cors_filter()),
        filter(fault_filter()),
        HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(HttpFilterConfig::TypedConfig(any(&Router::default()))),
            ..Default::default()
        },
    ]
}

fn manager(stat: &str, routes: RouteSpecifier, authz: Vec<HttpFilter>) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat.into(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(routes),
        http_filters: authz.into_iter().chain(http_filters()).collect(),
        // RFC 3986 normalization before routing and RBAC, Istio's default (`BASE`): a policy
        // on `/admin*` also holds for `/public/../admin`.
        normalize_path: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// An HTTP connection manager; `inbound` carries the port's authorization filters, which go
/// first (an outbound one has none).
fn hcm(stat: &str, routes: RouteSpecifier, inbound: Option<Vec<HttpFilter>>) -> Filter {
    inbound_hcm(stat, routes, inbound, None)
}

/// [`hcm`], with an access log.
fn inbound_hcm(
    stat: &str,
    routes: RouteSpecifier,
    inbound: Option<Vec<HttpFilter>>,
    log: Option<AccessLog>,
) -> Filter {
    let is_inbound = inbound.is_some();
    let mut m = manager(stat, routes, inbound.unwrap_or_default());
    m.access_log = log.into_iter().collect();
    if is_inbound {
        // The application sees who called (Istio's X-Forwarded-Client-Cert).
        m.forward_client_cert_details = ForwardClientCertDetails::AppendForward as i32;
        m.set_current_client_cert_details = Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::SetCurrentClientCertDetails {
            uri: true,
            ..Default::default()
        });
    }
    filter("envoy.filters.network.http_connection_manager", any(&m))
}

/// A gateway's HTTP connection manager: the edge of the mesh, so the downstream address is
/// the client's own (`use_remote_address`, as Istio's gateways set), and the gateway's
/// authorization filters go first.
pub(super) fn gateway_hcm(stat: &str, route_config: &str, authz: Vec<HttpFilter>) -> Filter {
    let routes = RouteSpecifier::Rds(Rds {
        config_source: Some(ads_source()),
        route_config_name: route_config.into(),
    });
    let mut m = manager(stat, routes, authz);
    m.use_remote_address = Some(BoolValue { value: true });
    filter("envoy.filters.network.http_connection_manager", any(&m))
}

fn rds(port: u32) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads_source()),
        route_config_name: port.to_string(),
    })
}

pub(super) fn listener(name: &str, host: &str, port: u32, bind: bool) -> Listener {
    Listener {
        name: name.into(),
        address: Some(address(host, port)),
        bind_to_port: (!bind).then_some(BoolValue { value: false }),
        ..Default::default()
    }
}

pub fn build(
    ctx: &Ctx<'_>,
    services: &[&Service],
    vss: &VirtualServices<'_>,
    inbound: &[InboundPort],
    sidecar: Option<&Sidecar>,
) -> Vec<Listener> {
    let mut out = match ctx.proxy.interception {
        Interception::Redirect => vec![virtual_outbound(ctx), virtual_inbound(ctx, inbound)],
        Interception::None => vec![],
    };
    // Rootless capture: Sidecar egress listeners with captureMode NONE bind their address.
    let explicit_egress: Vec<(String, u32)> = sidecar
        .map(|sc| {
            sc.egress
                .iter()
                .filter(|e| e.capture_mode == CaptureMode::None)
                .filter_map(|e| {
                    Some((
                        e.bind.clone().unwrap_or_else(|| "127.0.0.1".into()),
                        e.port.as_ref()?.number,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    for port in super::routes::ports_with_http(services) {
        let (host, bind) = match explicit_egress.iter().find(|(_, p)| *p == port) {
            Some((h, _)) => (h.clone(), true),
            // Without redirection, a listener nobody binds is unreachable.
            None if ctx.proxy.interception == Interception::None => continue,
            None => ("0.0.0.0".to_string(), false),
        };
        let mut l = listener(&format!("{host}_{port}"), &host, port, bind);
        l.filter_chains = vec![FilterChain {
            filters: vec![hcm(&format!("outbound_{host}_{port}"), rds(port), None)],
            ..Default::default()
        }];
        out.push(l);
    }
    // Rootless TCP: an egress listener that binds a port no HTTP service uses carries the TCP
    // service on that port (the first by host name when several share it).
    let http_ports = super::routes::ports_with_http(services);
    let tls_ports = tls_ports(services);
    for (bind, port) in explicit_egress
        .iter()
        .filter(|(_, p)| !http_ports.contains(p))
    {
        if tls_ports.contains(port) {
            out.push(sni_listener(bind, *port, true, services, vss));
            continue;
        }
        let Some(s) = services
            .iter()
            .find(|s| s.port(*port).is_some_and(|p| !p.protocol.is_http()))
        else {
            continue;
        };
        let clusters = tcp_clusters(s, *port, vss);
        let mut l = listener(&format!("{bind}_{port}"), bind, *port, true);
        l.filter_chains = vec![FilterChain {
            filters: vec![tcp_proxy(
                &format!("outbound|{port}||{}", s.hostname),
                &clusters,
            )],
            ..Default::default()
        }];
        out.push(l);
    }
    if ctx.proxy.interception == Interception::Redirect {
        // TLS to hosts without a VIP (external HTTPS, say) is told apart by SNI; anything
        // else on the port goes where the outbound policy sends unknown traffic.
        let fallback = match ctx.outbound_mode() {
            OutboundMode::AllowAny => PASSTHROUGH,
            OutboundMode::RegistryOnly => BLACKHOLE,
        };
        for port in &tls_ports {
            let mut l = sni_listener("0.0.0.0", *port, false, services, vss);
            l.default_filter_chain = Some(FilterChain {
                name: fallback.into(),
                filters: vec![tcp_proxy(fallback, &[(fallback.into(), 1)])],
                ..Default::default()
            });
            out.push(l);
        }
    }
    for s in services
        .iter()
        .filter(|_| ctx.proxy.interception == Interception::Redirect)
    {
        for p in s.ports.iter().filter(|p| !p.protocol.is_http()) {
            let clusters = tcp_clusters(s, p.number, vss);
            for vip in s.addresses.iter().filter(|a| !a.contains('/')) {
                let mut l = listener(&format!("{vip}_{}", p.number), vip, p.number, false);
                l.filter_chains = vec![FilterChain {
                    filters: vec![tcp_proxy(
                        &format!("outbound|{}||{}", p.number, s.hostname),
                        &clusters,
                    )],
                    ..Default::default()
                }];
                out.push(l);
            }
        }
    }
    out.extend(inbound.iter().filter(|p| p.bind.is_some()).map(|p| {
        let bind = p.bind.clone().unwrap_or_default();
        let mut l = listener(&format!("inbound_{bind}_{}", p.port), &bind, p.port, true);
        l.filter_chains = inbound_chains(ctx, p);
        l.listener_filters = vec![tls_inspector()];
        l
    }));
    out
}

/// The VirtualService TCP route for a service port, or the service itself.
fn tcp_clusters(s: &Service, port: u32, vss: &VirtualServices<'_>) -> Vec<(String, u32)> {
    let routed = vss
        .iter()
        .find(|(hosts, _, _)| {
            hosts
                .iter()
                .any(|h| super::services::host_matches(h, &s.hostname))
        })
        .and_then(|(_, o, vs)| {
            let tcp = vs.tcp.iter().find(|t| {
                t.matches.is_empty() || t.matches.iter().any(|m| m.port.is_none_or(|p| p == port))
            })?;
            Some(weighted_clusters(&tcp.route, o.metadata.namespace(), port))
        });
    routed
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![(outbound_name(port, "", &s.hostname), 1)])
}

/// A TCP or TLS route's destinations as weighted clusters. As for HTTP: with weights set, a
/// 0-weight destination gets nothing; with none set (one destination), it takes everything.
pub(super) fn weighted_clusters(
    route: &[RouteDestination],
    ns: &str,
    port: u32,
) -> Vec<(String, u32)> {
    let total: i32 = route.iter().map(|d| d.weight.max(0)).sum();
    route
        .iter()
        .filter(|d| total == 0 || d.weight > 0)
        .map(|d| {
            let host = resolve_host(&d.destination.host, ns);
            let dest_port = d.destination.port.map(|p| p.number).unwrap_or(port);
            (
                outbound_name(
                    dest_port,
                    d.destination.subset.as_deref().unwrap_or(""),
                    &host,
                ),
                if total == 0 { 1 } else { d.weight as u32 },
            )
        })
        .collect()
}

/// Whether a port's traffic is TLS that the sidecar passes through, routed by SNI.
fn is_tls(protocol: Protocol) -> bool {
    matches!(protocol, Protocol::Https | Protocol::Tls)
}

/// The filter chains of a TLS port, matched on SNI (Istio's TLS routes): first each
/// VirtualService `tls` route's `sniHosts` on this port, to its destinations; then each TLS
/// service's own host, to its cluster. A server name goes to the first chain that names it
/// (Envoy refuses a listener with two chains for one name).
fn sni_chains(services: &[&Service], port: u32, vss: &VirtualServices<'_>) -> Vec<FilterChain> {
    let mut used = std::collections::BTreeSet::new();
    let mut chains = Vec::new();
    let mut add = |names: Vec<String>, clusters: Vec<(String, u32)>, stat: String| {
        let names: Vec<String> = names
            .into_iter()
            .filter(|n| used.insert(n.clone()))
            .collect();
        if names.is_empty() || clusters.is_empty() {
            return;
        }
        chains.push(FilterChain {
            filter_chain_match: Some(FilterChainMatch {
                server_names: names,
                ..Default::default()
            }),
            filters: vec![tcp_proxy(&stat, &clusters)],
            ..Default::default()
        });
    };
    let tls_services = services
        .iter()
        .filter(|s| s.port(port).is_some_and(|p| is_tls(p.protocol)));
    for s in tls_services {
        let stat = format!("outbound|{port}||{}", s.hostname);
        let routing = vss.iter().filter(|(hosts, _, _)| {
            hosts
                .iter()
                .any(|h| super::services::host_matches(h, &s.hostname))
        });
        for (_, o, vs) in routing {
            let ns = o.metadata.namespace();
            for route in &vs.tls {
                let sni: Vec<String> = route
                    .matches
                    .iter()
                    .filter(|m| m.port.is_none_or(|p| p == port))
                    .flat_map(|m| m.sni_hosts.iter().map(|h| resolve_host(h, ns)))
                    .collect();
                add(sni, weighted_clusters(&route.route, ns, port), stat.clone());
            }
        }
        add(
            vec![s.hostname.clone()],
            vec![(outbound_name(port, "", &s.hostname), 1)],
            stat,
        );
    }
    chains
}

/// A listener for a TLS port: `tls_inspector` reads the SNI, [`sni_chains`] route on it.
fn sni_listener(
    host: &str,
    port: u32,
    bind: bool,
    services: &[&Service],
    vss: &VirtualServices<'_>,
) -> Listener {
    let mut l = listener(&format!("{host}_{port}"), host, port, bind);
    l.listener_filters = vec![tls_inspector()];
    l.filter_chains = sni_chains(services, port, vss);
    l
}

/// The TLS ports of `services` that no HTTP service shares (HTTP takes a shared port).
fn tls_ports(services: &[&Service]) -> Vec<u32> {
    let http = super::routes::ports_with_http(services);
    let mut ports: Vec<u32> = services
        .iter()
        .flat_map(|s| &s.ports)
        .filter(|p| is_tls(p.protocol) && !http.contains(&p.number))
        .map(|p| p.number)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn virtual_outbound(ctx: &Ctx<'_>) -> Listener {
    let fallback = match ctx.outbound_mode() {
        OutboundMode::AllowAny => PASSTHROUGH,
        OutboundMode::RegistryOnly => BLACKHOLE,
    };
    let mut l = listener(VIRTUAL_OUTBOUND, "0.0.0.0", OUTBOUND_PORT, true);
    l.use_original_dst = Some(BoolValue { value: true });
    l.traffic_direction = TrafficDirection::Outbound as i32;
    l.filter_chains = vec![blackhole_own_port(OUTBOUND_PORT)];
    l.default_filter_chain = Some(FilterChain {
        name: fallback.into(),
        filters: vec![tcp_proxy(fallback, &[(fallback.into(), 1)])],
        ..Default::default()
    });
    l
}

/// A connection made straight to a capture port (not redirected to it) would be passed on to
/// the port itself, in a loop: it goes nowhere instead, as in Istio.
fn blackhole_own_port(port: u32) -> FilterChain {
    FilterChain {
        name: "virtual_blackhole".into(),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: u32v(port),
            ..Default::default()
        }),
        filters: vec![tcp_proxy(BLACKHOLE, &[(BLACKHOLE.into(), 1)])],
        ..Default::default()
    }
}

/// Restores the destination iptables redirected from, so filter chains match the original
/// port (and the inbound passthrough reaches it).
fn original_dst() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.original_dst".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    }
}

pub(super) fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(ListenerFilterConfig::TypedConfig(any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

/// The chains of one port, by its PeerAuthentication mode: STRICT one mTLS chain for every
/// connection (plaintext fails the handshake), DISABLE one plaintext chain, PERMISSIVE both,
/// told apart by `tls_inspector`. Stat prefixes `inbound_PORT_MODE_mtls|plaintext` count each
/// mode's connections and requests, so who still speaks plaintext can be read off them.
fn inbound_chains(ctx: &Ctx<'_>, p: &InboundPort) -> Vec<FilterChain> {
    let cluster = inbound_name(p.port);
    let trust_domain = &ctx.config.mesh.trust_domain;
    let terminal = |tls: bool| {
        let stat = format!(
            "inbound_{}_{}_{}",
            p.port,
            p.mtls.as_str(),
            if tls { "mtls" } else { "plaintext" }
        );
        if p.protocol.is_http() {
            let routes = RouteConfiguration {
                name: format!("inbound|{}||", p.port),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{}", p.port),
                    domains: vec!["*".into()],
                    routes: vec![Route {
                        name: "default".into(),
                        r#match: Some(super::routes::prefix("/")),
                        action: Some(Action::Route(RouteAction {
                            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.clone())),
                            timeout: Some(duration(std::time::Duration::ZERO)),
                            ..Default::default()
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            };
            let authz = rbac::http_filters(&ctx.authz, trust_domain);
            let log = (!tls).then(|| plaintext_log(&stat));
            vec![inbound_hcm(
                &stat,
                RouteSpecifier::RouteConfig(routes),
                Some(authz),
                log,
            )]
        } else {
            let mut filters = rbac::network_filters(&ctx.authz, trust_domain, &stat);
            let mut proxy = tcp_proxy_config(&stat, &[(cluster.clone(), 1)]);
            if !tls {
                proxy.access_log = vec![plaintext_log(&stat)];
            }
            filters.push(filter("envoy.filters.network.tcp_proxy", any(&proxy)));
            filters
        }
    };
    // Only PERMISSIVE tells the transports apart; the others take every connection on the port.
    let permissive = p.mtls == MtlsMode::Permissive;
    let matching = |transport: &str| FilterChainMatch {
        destination_port: u32v(p.port),
        transport_protocol: if permissive {
            transport.into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let mtls = FilterChain {
        name: format!("inbound_0.0.0.0_{}_mtls", p.port),
        filter_chain_match: Some(matching("tls")),
        transport_socket: Some(downstream_mtls()),
        filters: terminal(true),
        ..Default::default()
    };
    let plaintext = FilterChain {
        name: format!("inbound_0.0.0.0_{}_plaintext", p.port),
        filter_chain_match: Some(matching("raw_buffer")),
        filters: terminal(false),
        ..Default::default()
    };
    match p.mtls {
        MtlsMode::Strict => vec![mtls],
        MtlsMode::Disable => vec![plaintext],
        MtlsMode::Permissive | MtlsMode::Unset => vec![mtls, plaintext],
    }
}

/// The inbound capture listener. Unlike `virtualOutbound` it never hands connections to
/// another listener (`use_original_dst`): that would give inbound traffic to the outbound
/// `0.0.0.0_PORT` listener of the same port. Its chains match the restored original port.
fn virtual_inbound(ctx: &Ctx<'_>, ports: &[InboundPort]) -> Listener {
    let mut l = listener(VIRTUAL_INBOUND, "0.0.0.0", INBOUND_PORT, true);
    l.traffic_direction = TrafficDirection::Inbound as i32;
    l.listener_filters = vec![original_dst(), tls_inspector()];
    l.filter_chains = std::iter::once(blackhole_own_port(INBOUND_PORT))
        .chain(
            ports
                .iter()
                .filter(|p| p.bind.is_none())
                .flat_map(|p| inbound_chains(ctx, p)),
        )
        .collect();
    l.default_filter_chain = Some(FilterChain {
        name: "inbound_passthrough".into(),
        filters: vec![tcp_proxy(
            INBOUND_PASSTHROUGH,
            &[(INBOUND_PASSTHROUGH.into(), 1)],
        )],
        ..Default::default()
    });
    l
}
