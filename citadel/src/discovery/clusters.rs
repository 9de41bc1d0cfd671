//! CDS and EDS for a sidecar, named as Istio names them: `outbound|PORT|SUBSET|HOST` per
//! service port and DestinationRule subset, `inbound|PORT||` per port of the proxy's own
//! workload, `PassthroughCluster` and `BlackHoleCluster`. A DestinationRule's traffic policy
//! (top level, then port level, then the subset's) becomes load balancing, circuit breakers,
//! outlier detection and client TLS; mesh-internal destinations get mTLS unless it says DISABLE.
use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, EdsClusterConfig, LbConfig, LbPolicy,
    MaglevLbConfig, RingHashLbConfig,
};
use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::cluster::v3::{CircuitBreakers, Cluster, OutlierDetection};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TransportConfig;
use envoy_types::pb::envoy::config::core::v3::{Metadata, TransportSocket};
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::google::protobuf::{Struct, Value};
use mesh::security::MtlsMode;
use envoy_types::pb::envoy::config::core::v3::{
    BindConfig, Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CoreHttpOptions,
    Locality, UpstreamHttpProtocolOptions, address::Address as AddressKind,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{UInt32Value, UInt64Value};
use mesh::networking::{
    ClientTlsMode, ConnectionPoolSettings, Location, LoadBalancerSettings,
    OutlierDetection as IstioOutlier, Resolution, SimpleLb, Subset, TrafficPolicy,
};

use super::credentials::Credentials;
use super::services::{Endpoint, Port, Service, destination_rule_for};
use super::tls::{StoreCredentials, upstream_mtls, upstream_origination};
use super::{Ctx, address, ads_source, any, duration, u32v};

pub const PASSTHROUGH: &str = "PassthroughCluster";
pub const BLACKHOLE: &str = "BlackHoleCluster";
pub const INBOUND_PASSTHROUGH: &str = "InboundPassthroughCluster";
/// The source address of inbound passthrough connections: the redirect rules return traffic
/// from it untouched, so a connection to the pod's own IP does not loop back into 15006.
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6";

/// Istio's outbound cluster name.
pub fn outbound_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Istio's inbound cluster name.
pub fn inbound_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// Clusters, the endpoints of those that use EDS, and the store Secrets their TLS
/// origination names (`credentialName`).
#[derive(Debug, Default)]
pub struct Clusters {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub credentials: Credentials,
}

/// The effective policy for one port of one subset: Istio merges top level, then port level;
/// a subset's own policy replaces what it sets.
#[derive(Debug, Default, Clone)]
struct Policy<'a> {
    lb: Option<&'a LoadBalancerSettings>,
    pool: Option<&'a ConnectionPoolSettings>,
    outlier: Option<&'a IstioOutlier>,
    tls: Option<&'a mesh::networking::ClientTlsSettings>,
}

impl<'a> Policy<'a> {
    fn apply(mut self, tp: Option<&'a TrafficPolicy>, port: u32) -> Self {
        let Some(tp) = tp else { return self };
        self.lb = tp.load_balancer.as_ref().or(self.lb);
        self.pool = tp.connection_pool.as_ref().or(self.pool);
        self.outlier = tp.outlier_detection.as_ref().or(self.outlier);
        self.tls = tp.tls.as_ref().or(self.tls);
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|p| p.port.is_some_and(|s| s.number == port))
        {
            self.lb = pl.load_balancer.as_ref().or(self.lb);
            self.pool = pl.connection_pool.as_ref().or(self.pool);
            self.outlier = pl.outlier_detection.as_ref().or(self.outlier);
            self.tls = pl.tls.as_ref().or(self.tls);
        }
        self
    }
}

pub fn build(ctx: &Ctx<'_>, services: &[&Service]) -> Clusters {
    let mut out = outbound_of(ctx, services);
    out.clusters.push(passthrough(ctx));
    out.clusters.push(Cluster {
        name: BLACKHOLE.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        connect_timeout: Some(duration(ctx.config.mesh.connect_timeout.as_duration())),
        ..Default::default()
    });
    out
}

/// The outbound clusters of `services`, one per port and subset, and the endpoints of those
/// that use EDS.
pub fn outbound_of(ctx: &Ctx<'_>, services: &[&Service]) -> Clusters {
    let mut out = Clusters::default();
    for service in services {
        let dr = destination_rule_for(ctx.config, ctx.proxy, service);
        for port in &service.ports {
            let base =
                Policy::default().apply(dr.and_then(|d| d.traffic_policy.as_ref()), port.number);
            outbound(ctx, &mut out, service, port, None, base.clone());
            for subset in dr.map(|d| d.subsets.as_slice()).unwrap_or_default() {
                let policy = base
                    .clone()
                    .apply(subset.traffic_policy.as_ref(), port.number);
                outbound(ctx, &mut out, service, port, Some(subset), policy);
            }
        }
    }
    out
}

/// The store Secrets a SIMPLE or MUTUAL origination with `credentialName` uses: its CA
/// (required unless `insecureSkipVerify`) and, for MUTUAL, its client certificate.
fn store_credentials(
    ctx: &Ctx<'_>,
    credentials: &mut Credentials,
    tls: Option<&mesh::networking::ClientTlsSettings>,
) -> Result<Option<StoreCredentials>, String> {
    let Some(tls) = tls.filter(|t| matches!(t.mode, ClientTlsMode::Simple | ClientTlsMode::Mutual))
    else {
        return Ok(None);
    };
    let Some(name) = &tls.credential_name else {
        return Ok(None);
    };
    let certificate = match tls.mode {
        ClientTlsMode::Mutual => Some(credentials.certificate(ctx, name, None)?),
        _ => None,
    };
    let ca = if tls.insecure_skip_verify == Some(true) {
        None
    } else {
        Some(credentials.ca(ctx, name)?)
    };
    Ok(Some(StoreCredentials { certificate, ca }))
}

fn passthrough(ctx: &Ctx<'_>) -> Cluster {
    Cluster {
        name: PASSTHROUGH.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(duration(ctx.config.mesh.connect_timeout.as_duration())),
        circuit_breakers: Some(unlimited(None)),
        ..Default::default()
    }
}

fn outbound(
    ctx: &Ctx<'_>,
    out: &mut Clusters,
    service: &Service,
    port: &Port,
    subset: Option<&Subset>,
    policy: Policy<'_>,
) {
    let subset_name = subset.map(|s| s.name.as_str()).unwrap_or("");
    let name = outbound_name(port.number, subset_name, &service.hostname);
    // A credential that cannot be served leaves the cluster out: requests fail with "no
    // cluster" rather than going out unverified or hanging on a secret that never comes.
    let store = match store_credentials(ctx, &mut out.credentials, policy.tls) {
        Ok(store) => store,
        Err(e) => {
            tracing::warn!(cluster = %name, proxy = %ctx.proxy.id, "DestinationRule credentialName: {e}; the cluster is left out");
            return;
        }
    };
    let endpoints: Vec<&Endpoint> = service
        .endpoints
        .iter()
        .filter(|e| subset.is_none_or(|s| e.selected_by(&s.labels)))
        .collect();
    let mut cluster = Cluster {
        name: name.clone(),
        connect_timeout: Some(duration(
            policy
                .pool
                .and_then(|p| p.tcp.as_ref())
                .and_then(|t| t.connect_timeout)
                .unwrap_or(ctx.config.mesh.connect_timeout)
                .as_duration(),
        )),
        circuit_breakers: Some(unlimited(policy.pool)),
        ..Default::default()
    };
    // Istio's auto mTLS: without a DestinationRule's TLS, clients follow what each mesh
    // destination's PeerAuthentication accepts.
    let auto_mtls = policy.tls.is_none() && service.location == Location::MeshInternal;
    let plaintext: Vec<bool> = endpoints
        .iter()
        .map(|e| auto_mtls && accepts_plaintext_only(ctx, e, port))
        .collect();
    let mixed = plaintext.iter().any(|p| *p) && !plaintext.iter().all(|p| *p);
    let tagged: Vec<(&Endpoint, bool)> = endpoints
        .iter()
        .zip(&plaintext)
        .map(|(e, p)| (*e, mixed && *p))
        .collect();
    match service.resolution {
        Resolution::None if service.endpoints.is_empty() => {
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
                DiscoveryType::OriginalDst as i32,
            ));
            cluster.lb_policy = LbPolicy::ClusterProvided as i32;
        }
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
            let kind = if service.resolution == Resolution::DnsRoundRobin {
                DiscoveryType::LogicalDns
            } else {
                DiscoveryType::StrictDns
            };
            cluster.cluster_discovery_type = Some(ClusterDiscoveryType::Type(kind as i32));
            let mut cla = load_assignment(&name, port, &tagged);
            // The host itself only for a service without endpoints: a subset that selects
            // none of a service's endpoints has none.
            if service.endpoints.is_empty() {
                cla.endpoints = vec![locality_endpoints(
                    "",
                    // Istio: without endpoints, the host itself at the port's targetPort.
                    vec![lb_endpoint(
                        &service.hostname,
                        port.target_port.unwrap_or(port.number),
                        1,
                    )],
                )];
            }
            cluster.load_assignment = Some(cla);
            lb(&mut cluster, policy.lb);
        }
        _ => {
            cluster.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            cluster.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_source()),
                service_name: name.clone(),
            });
            out.endpoints.push(load_assignment(&name, port, &tagged));
            lb(&mut cluster, policy.lb);
        }
    }
    if let Some(o) = policy.outlier {
        outlier(&mut cluster, o);
    }
    let tls = policy.tls;
    let mut auto_sni = None;
    let mtls = match tls.map(|t| t.mode) {
        Some(ClientTlsMode::IstioMutual) => true,
        Some(ClientTlsMode::Disable) => false,
        Some(ClientTlsMode::Simple | ClientTlsMode::Mutual) => {
            let settings = tls.expect("a mode comes with its settings");
            cluster.transport_socket = Some(upstream_origination(
                settings,
                port.protocol.is_http2(),
                store.as_ref(),
            ));
            // Istio: without an `sni`, HTTP takes it from each request's host, and checks the
            // server's name against it unless the rule names SANs or skips verification.
            if settings.sni.is_none() && port.protocol.is_http() {
                auto_sni = Some(
                    settings.subject_alt_names.is_empty()
                        && settings.insecure_skip_verify != Some(true),
                );
            }
            false
        }
        None if auto_mtls => {
            if mixed {
                cluster.transport_socket_matches = vec![plaintext_match()];
            }
            endpoints.is_empty() || !plaintext.iter().all(|p| *p)
        }
        None => false,
    };
    if mtls {
        // A DestinationRule's own subjectAltNames replace the endpoints' identities.
        let mut sans: Vec<String> = match tls.filter(|t| !t.subject_alt_names.is_empty()) {
            Some(t) => t.subject_alt_names.clone(),
            None => endpoints
                .iter()
                .map(|e| e.spiffe_id(&ctx.config.mesh.trust_domain))
                .collect(),
        };
        sans.sort();
        sans.dedup();
        let sni = tls.and_then(|t| t.sni.clone()).unwrap_or_else(|| {
            format!(
                "outbound_.{}_.{subset_name}_.{}",
                port.number, service.hostname
            )
        });
        cluster.transport_socket = Some(upstream_mtls(&sni, &sans, port.protocol.is_http2()));
    }
    http_options(&mut cluster, port, policy.pool, auto_sni);
    out.clusters.push(cluster);
}

/// Istio's defaults are effectively unlimited (2^32-1); a DestinationRule's pool lowers them.
fn unlimited(pool: Option<&ConnectionPoolSettings>) -> CircuitBreakers {
    let max = u32::MAX;
    let pick = |v: Option<i32>| u32v(v.filter(|v| *v > 0).map_or(max, |v| v as u32));
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: pick(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: pick(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: pick(http.and_then(|h| h.http2_max_requests)),
            max_retries: pick(http.and_then(|h| h.max_retries)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn lb(cluster: &mut Cluster, settings: Option<&LoadBalancerSettings>) {
    let Some(s) = settings else {
        cluster.lb_policy = LbPolicy::LeastRequest as i32;
        return;
    };
    if let Some(ch) = &s.consistent_hash {
        if let Some(m) = &ch.maglev {
            cluster.lb_policy = LbPolicy::Maglev as i32;
            cluster.lb_config = Some(LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: m.table_size.map(|value| UInt64Value { value }),
            }));
        } else {
            cluster.lb_policy = LbPolicy::RingHash as i32;
            let min = ch
                .ring_hash
                .as_ref()
                .and_then(|r| r.minimum_ring_size)
                .or(ch.minimum_ring_size);
            cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: min.map(|value| UInt64Value { value }),
                ..Default::default()
            }));
        }
        return;
    }
    cluster.lb_policy = match s.simple {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        Some(SimpleLb::Passthrough) => LbPolicy::ClusterProvided,
        // Istio's default, and LEAST_CONN's meaning.
        _ => LbPolicy::LeastRequest,
    } as i32;
}

fn outlier(cluster: &mut Cluster, o: &IstioOutlier) {
    let hundred = u32v(100);
    let five_xx = o
        .consecutive_5xx_errors
        .or(o.consecutive_errors.map(|c| c.max(0) as u32));
    cluster.outlier_detection = Some(OutlierDetection {
        consecutive_5xx: five_xx.map(|v| UInt32Value { value: v }),
        enforcing_consecutive_5xx: five_xx.and(hundred),
        consecutive_gateway_failure: o
            .consecutive_gateway_errors
            .map(|value| UInt32Value { value }),
        enforcing_consecutive_gateway_failure: o.consecutive_gateway_errors.and(hundred),
        consecutive_local_origin_failure: o
            .consecutive_local_origin_failures
            .map(|value| UInt32Value { value }),
        split_external_local_origin_errors: o.split_external_local_origin_errors.unwrap_or(false),
        interval: o.interval.map(|d| duration(d.as_duration())),
        base_ejection_time: o.base_ejection_time.map(|d| duration(d.as_duration())),
        max_ejection_percent: o.max_ejection_percent.map(|v| UInt32Value {
            value: v.max(0) as u32,
        }),
        // Istio turns success-rate ejection off.
        enforcing_success_rate: u32v(0),
        ..Default::default()
    });
    if let Some(min) = o.min_health_percent {
        cluster.common_lb_config = Some(CommonLbConfig {
            healthy_panic_threshold: Some(Percent {
                value: f64::from(min),
            }),
            ..Default::default()
        });
    }
}

/// The cluster's HTTP options; `auto_sni` (with whether to check the server's name against it)
/// when TLS origination takes its SNI from each request.
fn http_options(
    cluster: &mut Cluster,
    port: &Port,
    pool: Option<&ConnectionPoolSettings>,
    auto_sni: Option<bool>,
) {
    let http = pool.and_then(|p| p.http.as_ref());
    if !port.protocol.is_http() && http.is_none() {
        return;
    }
    let common = CoreHttpOptions {
        idle_timeout: http
            .and_then(|h| h.idle_timeout)
            .map(|d| duration(d.as_duration())),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .filter(|v| *v > 0)
            .map(|v| UInt32Value { value: v as u32 }),
        ..Default::default()
    };
    let protocol = if port.protocol.is_http2() {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions {
            max_concurrent_streams: http
                .and_then(|h| h.max_concurrent_streams)
                .filter(|v| *v > 0)
                .map(|v| UInt32Value { value: v as u32 }),
            ..Default::default()
        })
    } else {
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: Some(common),
        upstream_http_protocol_options: auto_sni.map(|san| UpstreamHttpProtocolOptions {
            auto_sni: true,
            auto_san_validation: san,
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    };
    cluster.typed_extension_protocol_options.insert(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into(),
        any(&options),
    );
}

fn lb_endpoint(host: &str, port: u32, weight: u32) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(address(host, port)),
            ..Default::default()
        })),
        load_balancing_weight: u32v(weight),
        ..Default::default()
    }
}

fn locality_endpoints(locality: &str, lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    let mut parts = locality.splitn(3, '/');
    LocalityLbEndpoints {
        locality: Some(Locality {
            region: parts.next().unwrap_or("").into(),
            zone: parts.next().unwrap_or("").into(),
            sub_zone: parts.next().unwrap_or("").into(),
        }),
        lb_endpoints,
        ..Default::default()
    }
}

/// The endpoints of one cluster, grouped by locality; those marked `true` carry the
/// [`plaintext_match`] label.
fn load_assignment(
    name: &str,
    port: &Port,
    endpoints: &[(&Endpoint, bool)],
) -> ClusterLoadAssignment {
    let mut by_locality: BTreeMap<&str, Vec<LbEndpoint>> = BTreeMap::new();
    for (e, plaintext) in endpoints {
        let mut lb = lb_endpoint(&e.address, e.port_for(port), e.weight);
        if *plaintext {
            lb.metadata = Some(Metadata {
                filter_metadata: [(TRANSPORT_SOCKET_MATCH.to_string(), plaintext_label())].into(),
                ..Default::default()
            });
        }
        by_locality.entry(e.locality.as_str()).or_default().push(lb);
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: by_locality
            .into_iter()
            .map(|(l, eps)| locality_endpoints(l, eps))
            .collect(),
        ..Default::default()
    }
}

/// Where Envoy looks for the endpoint labels a cluster's `transport_socket_matches` select on.
const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";

/// Whether the endpoint's workload takes only plaintext on this port (PeerAuthentication
/// DISABLE): then its clients must not send mTLS.
fn accepts_plaintext_only(ctx: &Ctx<'_>, e: &Endpoint, port: &Port) -> bool {
    ctx.peer.mode(&e.namespace, &e.labels, e.port_for(port)) == MtlsMode::Disable
}

fn plaintext_label() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("disabled".into())),
            },
        )]
        .into(),
    }
}

/// For a cluster whose destinations differ: endpoints labelled plaintext get no TLS, the
/// others the cluster's mTLS.
fn plaintext_match() -> TransportSocketMatch {
    TransportSocketMatch {
        name: "tlsMode-disabled".into(),
        r#match: Some(plaintext_label()),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.raw_buffer".into(),
            config_type: Some(TransportConfig::TypedConfig(any(&RawBuffer::default()))),
        }),
    }
}

/// Inbound traffic to a port no service declares goes on to its original destination, from
/// [`INBOUND_PASSTHROUGH_SOURCE`].
fn inbound_passthrough(ctx: &Ctx<'_>) -> Cluster {
    let AddressKind::SocketAddress(source) = address(INBOUND_PASSTHROUGH_SOURCE, 0)
        .address
        .expect("an IP address")
    else {
        unreachable!("an IP address is a socket address")
    };
    Cluster {
        name: INBOUND_PASSTHROUGH.into(),
        upstream_bind_config: Some(BindConfig {
            source_address: Some(source),
            ..Default::default()
        }),
        ..passthrough(ctx)
    }
}

/// Inbound clusters for the ports the proxy's workload serves, to the application on loopback
/// (or a Sidecar ingress `defaultEndpoint`); with redirected traffic, the inbound passthrough
/// cluster too.
pub fn inbound(ctx: &Ctx<'_>, ports: &[super::listeners::InboundPort]) -> Vec<Cluster> {
    let passthrough = (ctx.proxy.interception == super::proxy::Interception::Redirect)
        .then(|| inbound_passthrough(ctx));
    ports
        .iter()
        .map(|p| Cluster {
            name: inbound_name(p.port),
            cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
            connect_timeout: Some(duration(ctx.config.mesh.connect_timeout.as_duration())),
            load_assignment: Some(ClusterLoadAssignment {
                cluster_name: inbound_name(p.port),
                endpoints: vec![locality_endpoints(
                    "",
                    vec![lb_endpoint(&p.target_host, p.target_port, 1)],
                )],
                ..Default::default()
            }),
            circuit_breakers: Some(unlimited(None)),
            ..Default::default()
        })
        .chain(passthrough)
        .collect()
}

/// The consistent-hash settings in force for `service`'s `subset` on `port`, as the proxy sees
/// its DestinationRule (routes hash on what they name).
pub fn consistent_hash<'a>(
    ctx: &Ctx<'a>,
    service: &Service,
    subset: &str,
    port: u32,
) -> Option<&'a mesh::networking::ConsistentHashLb> {
    let dr = destination_rule_for(ctx.config, ctx.proxy, service)?;
    let base = Policy::default().apply(dr.traffic_policy.as_ref(), port);
    let policy = match dr.subsets.iter().find(|s| s.name == subset) {
        Some(s) => base.apply(s.traffic_policy.as_ref(), port),
        None => base,
    };
    policy.lb?.consistent_hash.as_ref()
}

/// Used by tests of DestinationRule merging.
#[cfg(test)]
pub(super) fn policy_tls_mode(
    dr: &mesh::networking::DestinationRule,
    subset: Option<&str>,
    port: u32,
) -> Option<ClientTlsMode> {
    let base = Policy::default().apply(dr.traffic_policy.as_ref(), port);
    let p = match subset.and_then(|s| dr.subsets.iter().find(|x| x.name == s)) {
        Some(s) => base.apply(s.traffic_policy.as_ref(), port),
        None => base,
    };
    p.tls.map(|t| t.mode)
}

#[cfg(test)]
mod tests {
    use mesh::networking::DestinationRule;

    use super::*;

    #[test]
    fn subset_and_port_policies_override_the_top_level() {
        let dr: DestinationRule = serde_yaml_ng::from_str(
            "host: reviews
trafficPolicy:
  tls: {mode: ISTIO_MUTUAL}
  portLevelSettings:
  - port: {number: 9443}
    tls: {mode: SIMPLE}
subsets:
- name: legacy
  labels: {version: v0}
  trafficPolicy: {tls: {mode: DISABLE}}
- name: v1
  labels: {version: v1}
",
        )
        .unwrap();
        assert_eq!(
            policy_tls_mode(&dr, None, 9080),
            Some(ClientTlsMode::IstioMutual)
        );
        assert_eq!(
            policy_tls_mode(&dr, None, 9443),
            Some(ClientTlsMode::Simple)
        );
        assert_eq!(
            policy_tls_mode(&dr, Some("legacy"), 9080),
            Some(ClientTlsMode::Disable)
        );
        assert_eq!(
            policy_tls_mode(&dr, Some("v1"), 9080),
            Some(ClientTlsMode::IstioMutual)
        );
    }
}
