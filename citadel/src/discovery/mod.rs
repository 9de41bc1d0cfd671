//! The discovery server's translation, Istio's Pilot in miniature: one configuration snapshot
//! and one proxy in, that proxy's Envoy resources out (CDS, EDS, LDS, RDS), named as Istio names
//! them so Istio users' tooling and habits carry over. Pure: no I/O, no clock.
pub mod clusters;
pub mod credentials;
pub mod gateway;
pub mod listeners;
pub mod proxy;
pub mod rbac;
pub mod routes;
pub mod services;
pub mod tls;

use std::net::IpAddr;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, Pipe, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use mesh::networking::{OutboundMode, VirtualService};
use mesh::{Config, Object};

use self::proxy::Proxy;
use self::services::{Registry, mesh_virtual_services, sidecar_for};

/// Packs a message as an `Any` of its own type.
pub fn any<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: prost::Message::encode_to_vec(m),
    }
}

pub fn duration(d: std::time::Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// A socket address, or a Unix socket for `unix://` addresses.
pub fn address(host: &str, port: u32) -> Address {
    if let Some(path) = host.strip_prefix("unix://") {
        return Address {
            address: Some(AddressKind::Pipe(Pipe {
                path: path.into(),
                mode: 0,
            })),
        };
    }
    let host = host
        .parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .unwrap_or_else(|_| host.to_string());
    Address {
        address: Some(AddressKind::SocketAddress(SocketAddress {
            address: host,
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Resources referring to each other come over the same ADS stream.
pub fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// VirtualServices bound to the mesh, with hosts resolved.
pub type VirtualServices<'a> = Vec<(
    Vec<String>,
    &'a Object,
    std::borrow::Cow<'a, VirtualService>,
)>;

/// What translation reads for one proxy.
pub struct Ctx<'a> {
    pub config: &'a Config,
    pub proxy: &'a Proxy,
    sidecar: Option<&'a mesh::networking::Sidecar>,
    /// The PeerAuthentications, for the proxy's own ports and for its destinations'.
    pub peer: mesh::security::PeerPolicies<'a>,
    /// The AuthorizationPolicies that apply to the proxy's workload.
    pub authz: Vec<mesh::security::NamedPolicy<'a>>,
}

impl<'a> Ctx<'a> {
    /// What translation reads for `proxy`, with the Sidecar that applies to it.
    pub fn new(config: &'a Config, proxy: &'a Proxy) -> Self {
        Self {
            config,
            proxy,
            sidecar: sidecar_for(config, proxy),
            peer: mesh::security::PeerPolicies::new(config),
            authz: mesh::security::AuthzPolicies::new(config)
                .for_workload(&proxy.namespace, &proxy.labels),
        }
    }

    /// The PeerAuthentication mode of the proxy's own workload port `port`.
    pub fn inbound_mode(&self, port: u32) -> mesh::security::MtlsMode {
        self.peer
            .mode(&self.proxy.namespace, &self.proxy.labels, port)
    }

    /// The proxy's Sidecar outbound policy, else the mesh's.
    pub fn outbound_mode(&self) -> OutboundMode {
        self.sidecar
            .and_then(|s| s.outbound_traffic_policy.as_ref())
            .map(|p| p.mode)
            .unwrap_or(self.config.mesh.outbound_traffic_policy)
    }
}

/// One proxy's resources, by type. `Debug` names the secrets only: they hold private keys.
#[derive(Default, Clone, PartialEq)]
pub struct ProxyResources {
    pub clusters: Vec<Cluster>,
    pub endpoints: Vec<ClusterLoadAssignment>,
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    /// Gateways' `credentialName` certificates.
    pub secrets: Vec<envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret>,
}

impl std::fmt::Debug for ProxyResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<&str> = self.secrets.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("ProxyResources")
            .field("clusters", &self.clusters)
            .field("endpoints", &self.endpoints)
            .field("listeners", &self.listeners)
            .field("routes", &self.routes)
            .field("secrets", &secrets)
            .finish()
    }
}

/// What a proxy's resources depend on besides the configuration: proxies of one class get
/// identical resources, so translation and encoding happen once per class and snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProxyClass {
    pub kind: proxy::ProxyType,
    pub namespace: String,
    /// The Sidecar that applies (its address within the snapshot), if any.
    sidecar: Option<usize>,
    pub interception: proxy::Interception,
    pub inbound: Vec<listeners::InboundPort>,
    /// The AuthorizationPolicies that apply (their addresses within the snapshot).
    authz: Vec<usize>,
    /// For a gateway, the Gateways that select it (their addresses within the snapshot).
    gateways: Vec<usize>,
    /// What entitles the proxy to its namespace's Secrets (`credentialName`), if anything.
    holder: Option<credentials::Holder>,
    /// The DestinationRules whose `workloadSelector` selects the proxy (their addresses).
    destination_rules: Vec<usize>,
}

/// The class of `proxy` in `config`.
pub fn class_of(config: &Config, registry: &Registry, proxy: &Proxy) -> ProxyClass {
    let ctx = Ctx::new(config, proxy);
    let sidecar = ctx.sidecar;
    let gateways = match proxy.kind {
        proxy::ProxyType::Router => gateway::gateways_for(config, &proxy.labels)
            .into_iter()
            .map(|(o, _)| std::ptr::from_ref(o) as usize)
            .collect(),
        proxy::ProxyType::Sidecar => Vec::new(),
    };
    ProxyClass {
        kind: proxy.kind,
        namespace: proxy.namespace.clone(),
        sidecar: sidecar.map(|s| std::ptr::from_ref(s) as usize),
        interception: proxy.interception,
        inbound: listeners::inbound_ports(&ctx, registry, sidecar),
        authz: ctx
            .authz
            .iter()
            .map(|p| std::ptr::from_ref(p.policy) as usize)
            .collect(),
        gateways,
        holder: credentials::holder(config, proxy),
        destination_rules: config
            .of_kind(mesh::Kind::DestinationRule)
            .filter(|o| match &o.spec {
                mesh::Spec::DestinationRule(dr) => {
                    services::selects_proxy(dr, o.metadata.namespace(), proxy)
                }
                _ => false,
            })
            .map(|o| std::ptr::from_ref(o) as usize)
            .collect(),
    }
}

/// The services whose endpoints alone changed from `previous` to `next`, or `None` when
/// anything else did: then every proxy class is translated again. Only ServiceEntries and
/// WorkloadEntries may differ, and only in what becomes endpoints, so listeners and routes
/// stay as they are and clusters change only for these services (DNS clusters carry their
/// endpoints, and mTLS clusters the endpoints' identities).
pub fn endpoint_only_change<'a>(
    previous: (&'a Config, &Registry),
    next: (&'a Config, &Registry),
) -> Option<Vec<String>> {
    let ((before, before_registry), (now, now_registry)) = (previous, next);
    if before.mesh != now.mesh {
        return None;
    }
    let rest = |c: &'a Config| {
        c.objects.iter().filter(|o| {
            !matches!(
                o.kind(),
                mesh::Kind::ServiceEntry | mesh::Kind::WorkloadEntry
            )
        })
    };
    let same = rest(before).count() == rest(now).count()
        && rest(before)
            .zip(rest(now))
            .all(|(x, y)| std::sync::Arc::ptr_eq(x, y) || x == y);
    if !same {
        return None;
    }
    now_registry.endpoint_changes(before_registry)
}

/// The outbound clusters and endpoints of the `hosts` that `proxy` sees: what an
/// [`endpoint_only_change`] replaces in a proxy's full resources.
pub fn generate_for_hosts(
    config: &Config,
    registry: &Registry,
    proxy: &Proxy,
    hosts: &[String],
) -> ProxyResources {
    let ctx = Ctx::new(config, proxy);
    let sidecar = ctx.sidecar;
    let hosts: std::collections::HashSet<&str> = hosts.iter().map(String::as_str).collect();
    let services: Vec<&services::Service> = registry
        .visible_to(proxy, sidecar)
        .into_iter()
        .filter(|s| hosts.contains(s.hostname.as_str()))
        .collect();
    let built = clusters::outbound_of(&ctx, &services);
    ProxyResources {
        clusters: built.clusters,
        endpoints: built.endpoints,
        ..Default::default()
    }
}

/// Translates `config` for `proxy`, building the service registry first.
pub fn generate(config: &Config, proxy: &Proxy) -> ProxyResources {
    generate_with(config, &Registry::build(config), proxy)
}

/// Translates with a registry built once per snapshot and shared by every proxy.
pub fn generate_with(config: &Config, registry: &Registry, proxy: &Proxy) -> ProxyResources {
    let ctx = Ctx::new(config, proxy);
    if proxy.kind == proxy::ProxyType::Router {
        return generate_gateway(&ctx, registry);
    }
    let sidecar = ctx.sidecar;
    let services = registry.visible_to(proxy, sidecar);
    let vss = mesh_virtual_services(config, &proxy.namespace);
    let inbound = listeners::inbound_ports(&ctx, registry, sidecar);
    let mut built = clusters::build(&ctx, &services);
    built.clusters.extend(clusters::inbound(&ctx, &inbound));
    let listeners = listeners::build(&ctx, &services, &vss, &inbound, sidecar);
    let routes = routes::ports_with_http(&services)
        .into_iter()
        .map(|port| routes::outbound(&ctx, registry, port, &services, &vss))
        .collect();
    ProxyResources {
        clusters: built.clusters,
        endpoints: built.endpoints,
        listeners,
        routes,
        secrets: built.credentials.into_secrets(),
    }
}

/// A gateway's resources: every service it sees as outbound clusters, and its Gateways'
/// servers as listeners, routes and certificates.
fn generate_gateway(ctx: &Ctx<'_>, registry: &Registry) -> ProxyResources {
    let services = registry.visible_to(ctx.proxy, None);
    let clusters = clusters::build(ctx, &services);
    let built = gateway::build(ctx, registry);
    let mut secrets = clusters.credentials.into_secrets();
    // A Secret both a server and a DestinationRule name is pushed once.
    secrets.retain(|s| !built.secrets.iter().any(|b| b.name == s.name));
    secrets.extend(built.secrets);
    ProxyResources {
        clusters: clusters.clusters,
        endpoints: clusters.endpoints,
        listeners: built.listeners,
        routes: built.routes,
        secrets,
    }
}
