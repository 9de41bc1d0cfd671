//! Gateways (`router~` proxies): the servers of the Gateways that select the proxy become
//! listeners on their bind and port (HTTP, HTTPS with `tls.mode: SIMPLE` chosen by SNI, and
//! TCP), routed by the VirtualServices that name the gateway in `gateways:` for the hosts both
//! allow, into the mesh over mTLS with the gateway's own SVID. A `credentialName` is a Secret in
//! the gateway workload's namespace, served on the same ADS stream as `kubernetes://NAME`, as
//! istiod serves it, and only to a gateway whose WorkloadEntry has its service account and
//! labels.
use std::collections::{BTreeMap, HashMap, HashSet};

use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use mesh::networking::{Gateway, Server, ServerTlsMode, VirtualService};
use mesh::{Config, Kind, Object, Spec};

use super::Ctx;
use super::credentials::Credentials;
use super::listeners::{gateway_hcm, listener, tcp_proxy, tls_inspector, weighted_clusters};
use super::rbac;
use super::routes::{prefix, set_hash_policy, vs_routes};
use super::services::{Registry, host_matches, resolve_host, with_delegates};
use super::tls::{ServerCertificate, downstream_simple};

/// A Gateway that selects the proxy: `selector` labels all among the proxy's.
pub fn gateways_for<'a>(
    config: &'a Config,
    labels: &BTreeMap<String, String>,
) -> Vec<(&'a Object, &'a Gateway)> {
    config
        .of_kind(Kind::Gateway)
        .filter_map(|o| match &o.spec {
            Spec::Gateway(g) => Some((o, g.as_ref())),
            _ => None,
        })
        .filter(|(_, g)| selects(&g.selector, labels))
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// One server of a selected Gateway.
struct GatewayServer<'a> {
    object: &'a Object,
    gateway: &'a Gateway,
    server: &'a Server,
    port: u32,
}

impl GatewayServer<'_> {
    /// `ns/name`, as VirtualServices name the gateway.
    fn gateway_ref(&self) -> String {
        format!(
            "{}/{}",
            self.object.metadata.namespace(),
            self.object.metadata.name
        )
    }

    fn protocol(&self) -> String {
        self.server
            .port
            .as_ref()
            .map(|p| p.protocol.to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// A TCP server: its connections go where the bound VirtualServices' `tcp` routes say.
    fn tcp(&self) -> bool {
        self.protocol() == "TCP"
    }

    /// An HTTPS server terminating TLS (validation allows SIMPLE only).
    fn https(&self) -> bool {
        self.protocol() == "HTTPS"
            && self
                .server
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == Some(ServerTlsMode::Simple))
    }

    fn redirects(&self) -> bool {
        self.server
            .tls
            .as_ref()
            .is_some_and(|t| t.https_redirect == Some(true))
    }

    /// Istio's route name: `http.PORT` for plain HTTP (shared by the port's servers),
    /// `https.PORT.PORT_NAME.GATEWAY.NAMESPACE` for each TLS server.
    fn route_name(&self) -> String {
        if !self.https() {
            return format!("http.{}", self.port);
        }
        let port_name = self.server.port.as_ref().map_or("", |p| p.name.as_str());
        format!(
            "https.{}.{port_name}.{}.{}",
            self.port,
            self.object.metadata.name,
            self.object.metadata.namespace()
        )
    }

    /// Whether `g`, as a VirtualService in `vs_ns` writes it, names this server's gateway:
    /// `ns/name`, `name` (the VirtualService's namespace), or the old `name.ns[.svc...]`.
    fn named_by(&self, vs_ns: &str, g: &str) -> bool {
        let (name, ns) = (&self.object.metadata.name, self.object.metadata.namespace());
        match g.split_once('/') {
            Some((n, g)) => n == ns && g == name,
            None => match g.split_once('.') {
                Some((g, rest)) => g == name && rest.split('.').next() == Some(ns),
                None => g == name && vs_ns == ns,
            },
        }
    }

    /// Whether VirtualService `vs` (in `vs_ns`) is visible to the proxy's namespace and binds
    /// to this server's gateway.
    fn bound(&self, proxy_ns: &str, vs_ns: &str, vs: &VirtualService) -> bool {
        let exported = vs.export_to.is_empty()
            || vs
                .export_to
                .iter()
                .any(|e| e == "*" || e == proxy_ns || (e == "." && vs_ns == proxy_ns));
        exported && vs.gateways.iter().any(|g| self.named_by(vs_ns, g))
    }

    /// The hosts of VirtualService host `vs_host` (in `vs_ns`) that this server exposes: for
    /// each of its `namespace/host` entries the VirtualService's namespace may use, the
    /// narrower of the two when one covers the other (Istio's intersection), lower-cased.
    fn exposes(&self, vs_ns: &str, vs_host: &str) -> Vec<String> {
        let gw_ns = self.object.metadata.namespace();
        let vs_host = vs_host.to_ascii_lowercase();
        let mut out = Vec::new();
        for (ns, h) in self.server.namespaced_hosts() {
            if !(ns == "*" || (ns == "." && vs_ns == gw_ns) || ns == vs_ns) {
                continue;
            }
            let h = h.to_ascii_lowercase();
            let narrower = if host_matches(&h, &vs_host) {
                vs_host.clone()
            } else if host_matches(&vs_host, &h) {
                h
            } else {
                continue;
            };
            if !out.contains(&narrower) {
                out.push(narrower);
            }
        }
        out
    }

    /// The server's own hosts, lower-cased.
    fn hosts(&self) -> Vec<String> {
        self.server
            .namespaced_hosts()
            .map(|(_, h)| h.to_ascii_lowercase())
            .collect()
    }
}

/// The servers of the Gateways selecting the proxy, by (bind address, port), as istiod keys
/// gateway listeners.
fn servers<'a>(
    gateways: &[(&'a Object, &'a Gateway)],
) -> BTreeMap<(String, u32), Vec<GatewayServer<'a>>> {
    let mut by_listener: BTreeMap<(String, u32), Vec<GatewayServer<'a>>> = BTreeMap::new();
    for (object, gateway) in gateways {
        for server in &gateway.servers {
            let Some(port) = server.port.as_ref().map(|p| p.number) else {
                continue;
            };
            let bind = server.bind.clone().unwrap_or_else(|| "0.0.0.0".into());
            by_listener
                .entry((bind, port))
                .or_default()
                .push(GatewayServer {
                    object,
                    gateway,
                    server,
                    port,
                });
        }
    }
    by_listener
}

/// What a gateway gets besides its clusters.
#[derive(Default)]
pub struct Built {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    /// Private keys inside: no `Debug`.
    pub secrets: Vec<Secret>,
}

/// The listeners, routes and secrets of a gateway proxy.
pub fn build(ctx: &Ctx<'_>, registry: &Registry) -> Built {
    let gateways = gateways_for(ctx.config, &ctx.proxy.labels);
    let mut out = Built::default();
    let mut creds = Credentials::default();
    for ((bind, port), servers) in servers(&gateways) {
        let stat = format!("outbound_{bind}_{port}");
        let authz = || rbac::http_filters(&ctx.authz, &ctx.config.mesh.trust_domain);
        let mut l = listener(&format!("{bind}_{port}"), &bind, port, true);
        let plain: Vec<&GatewayServer<'_>> =
            servers.iter().filter(|s| !s.https() && !s.tcp()).collect();
        let has_https = servers.iter().any(GatewayServer::https);
        // Chains with the same match make Envoy refuse the listener: with TLS servers on the
        // port, the others take only plaintext connections.
        let transport = |tls: bool| {
            has_https.then(|| FilterChainMatch {
                transport_protocol: if tls { "tls" } else { "raw_buffer" }.into(),
                ..Default::default()
            })
        };
        if servers.iter().any(GatewayServer::tcp) {
            if plain.is_empty() {
                if let Some(mut chain) = tcp_chain(ctx, registry, &servers, port, &stat) {
                    chain.filter_chain_match = transport(false);
                    l.filter_chains.push(chain);
                }
            } else {
                tracing::warn!(
                    port,
                    "a TCP and an HTTP server on one gateway port: the TCP server is left out"
                );
            }
        }
        if !plain.is_empty() {
            out.routes.push(route_config(
                ctx,
                registry,
                port,
                &plain,
                format!("http.{port}"),
            ));
            l.filter_chains.push(FilterChain {
                filter_chain_match: transport(false),
                filters: vec![gateway_hcm(&stat, &format!("http.{port}"), authz())],
                ..Default::default()
            });
        }
        // Envoy refuses a listener where two chains match the same SNI: a name goes to the
        // first server that can serve it (Istio merges such servers the same way).
        let mut claimed: HashSet<String> = HashSet::new();
        for s in servers.iter().filter(|s| s.https()) {
            let names: Vec<String> = s
                .hosts()
                .into_iter()
                .filter(|h| !claimed.contains(h))
                .collect();
            if names.is_empty() {
                tracing::warn!(gateway = %s.gateway_ref(), port, "every host of this HTTPS server is served by an earlier server on the port; it is left out");
                continue;
            }
            let Some(cert) = certificate(ctx, s, &mut creds) else {
                continue;
            };
            claimed.extend(names.iter().cloned());
            let name = s.route_name();
            out.routes
                .push(route_config(ctx, registry, port, &[s], name.clone()));
            let tls = s.server.tls.as_ref().expect("an HTTPS server has TLS");
            let mut matching = transport(true).unwrap_or_default();
            if !names.iter().any(|h| h == "*") {
                matching.server_names = names;
            }
            l.filter_chains.push(FilterChain {
                name: name.clone(),
                filter_chain_match: Some(matching),
                transport_socket: Some(downstream_simple(&cert, tls)),
                filters: vec![gateway_hcm(&stat, &name, authz())],
                ..Default::default()
            });
            l.listener_filters = vec![tls_inspector()];
        }
        if !l.filter_chains.is_empty() {
            out.listeners.push(l);
        }
    }
    out.secrets = creds.into_secrets();
    out
}

/// The chain of the port's TCP servers: the first `tcp` route of a VirtualService bound to one
/// of them whose match (port, gateways) applies, as the gateway's network authorization
/// filters and a `tcp_proxy` to its weighted destinations (a destination without a port, on a
/// service with one port, goes to that port). No such route: no chain (Istio leaves the server
/// without a listener too).
fn tcp_chain(
    ctx: &Ctx<'_>,
    registry: &Registry,
    servers: &[GatewayServer<'_>],
    port: u32,
    stat: &str,
) -> Option<FilterChain> {
    for (object, vs) in virtual_services(ctx.config) {
        let vs_ns = object.metadata.namespace();
        for s in servers
            .iter()
            .filter(|s| s.tcp() && s.bound(&ctx.proxy.namespace, vs_ns, &vs))
        {
            let exposed = vs
                .hosts
                .iter()
                .any(|h| !s.exposes(vs_ns, &resolve_host(h, vs_ns)).is_empty());
            if !exposed {
                continue;
            }
            let applies = |m: &mesh::networking::L4MatchAttributes| {
                m.port.is_none_or(|p| p == port)
                    && (m.gateways.is_empty() || m.gateways.iter().any(|g| s.named_by(vs_ns, g)))
            };
            let Some(route) = vs
                .tcp
                .iter()
                .find(|t| t.matches.is_empty() || t.matches.iter().any(&applies))
            else {
                continue;
            };
            let mut destinations = route.route.clone();
            for d in &mut destinations {
                let host = resolve_host(&d.destination.host, vs_ns);
                if d.destination.port.is_none()
                    && let Some([only]) = registry.find(&host).map(|x| x.ports.as_slice())
                {
                    d.destination.port = Some(mesh::networking::PortSelector {
                        number: only.number,
                    });
                }
            }
            let clusters = weighted_clusters(&destinations, vs_ns, port);
            if clusters.is_empty() {
                continue;
            }
            let mut filters =
                rbac::network_filters(&ctx.authz, &ctx.config.mesh.trust_domain, stat);
            filters.push(tcp_proxy(stat, &clusters));
            return Some(FilterChain {
                name: format!("tcp.{port}"),
                filters,
                ..Default::default()
            });
        }
    }
    None
}

/// Every VirtualService, its delegates merged in.
fn virtual_services(
    config: &Config,
) -> impl Iterator<Item = (&Object, std::borrow::Cow<'_, VirtualService>)> {
    config
        .of_kind(Kind::VirtualService)
        .filter_map(move |o| match &o.spec {
            Spec::VirtualService(vs) => Some((o, with_delegates(config, o, vs))),
            _ => None,
        })
}

/// The certificate of HTTPS server `s`: its files, or its `credentialName` Secret (see
/// [`Credentials::certificate`]; the gateway's WorkloadEntry must carry the Gateway's labels).
/// A Secret that cannot be served leaves the server out, with a warning, rather than a listener
/// that Envoy refuses or that waits forever for its certificate.
fn certificate(
    ctx: &Ctx<'_>,
    s: &GatewayServer<'_>,
    creds: &mut Credentials,
) -> Option<ServerCertificate> {
    let tls = s.server.tls.as_ref()?;
    let Some(name) = &tls.credential_name else {
        return Some(ServerCertificate::Files {
            chain: tls.server_certificate.clone()?,
            key: tls.private_key.clone()?,
        });
    };
    match creds.certificate(ctx, name, Some(&s.gateway.selector)) {
        Ok(sds) => Some(ServerCertificate::Ads(sds)),
        Err(e) => {
            tracing::warn!(gateway = %s.gateway_ref(), proxy = %ctx.proxy.id, credential = %name, "credentialName: {e}; the server is left out");
            None
        }
    }
}

/// The routes of `servers` on `port`, named `name`: a virtual host per host a bound
/// VirtualService and a server both allow, with that VirtualService's routes (matches naming
/// other gateways left out); VirtualServices sharing a host add their routes to its virtual
/// host in load order. A server with `httpsRedirect` redirects its hosts whatever binds them.
/// Host matching ignores the port, as on Istio's gateways. Nothing bound: 404.
fn route_config(
    ctx: &Ctx<'_>,
    registry: &Registry,
    port: u32,
    servers: &[&GatewayServer<'_>],
    name: String,
) -> RouteConfiguration {
    let mut by_host: HashMap<String, usize> = HashMap::new();
    let mut added: HashSet<(usize, String)> = HashSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = Vec::new();
    let mut vhost = |host: &str, virtual_hosts: &mut Vec<VirtualHost>| -> usize {
        *by_host.entry(host.to_string()).or_insert_with(|| {
            virtual_hosts.push(VirtualHost {
                name: format!("{host}:{port}"),
                domains: vec![host.to_string()],
                ..Default::default()
            });
            virtual_hosts.len() - 1
        })
    };
    for (object, vs) in virtual_services(ctx.config) {
        let vs_ns = object.metadata.namespace();
        for s in servers
            .iter()
            .filter(|s| s.bound(&ctx.proxy.namespace, vs_ns, &vs))
        {
            let applies = |m: &mesh::networking::HttpMatchRequest| {
                m.gateways.is_empty() || m.gateways.iter().any(|g| s.named_by(vs_ns, g))
            };
            let hosts: Vec<String> = vs
                .hosts
                .iter()
                .flat_map(|h| s.exposes(vs_ns, &resolve_host(h, vs_ns)))
                .collect();
            for host in hosts {
                // The same VirtualService through two servers of the port adds nothing new.
                if !added.insert((std::ptr::from_ref(object) as usize, host.clone())) {
                    continue;
                }
                let i = vhost(&host, &mut virtual_hosts);
                let routes = &mut virtual_hosts[i].routes;
                let mut more = vs_routes(registry, object, &vs, port, applies);
                for r in &mut more {
                    set_hash_policy(ctx, registry, r);
                }
                routes.extend(more);
            }
        }
    }
    for s in servers.iter().filter(|s| s.redirects()) {
        for host in s.hosts() {
            let i = vhost(&host, &mut virtual_hosts);
            virtual_hosts[i].require_tls = TlsRequirementType::All as i32;
        }
    }
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(prefix("/")),
                action: Some(Action::DirectResponse(DirectResponseAction {
                    status: 404,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    RouteConfiguration {
        name,
        virtual_hosts,
        ignore_port_in_host_matching: true,
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext;
    use prost::Message;

    use super::super::proxy::{Interception, Proxy, ProxyType};
    use super::super::{ProxyResources, generate};

    fn config(yaml: &str) -> mesh::Config {
        let (objects, problems) = mesh::load_str(yaml, None);
        assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
        mesh::Config {
            objects: objects.into_iter().map(std::sync::Arc::new).collect(),
            mesh: Default::default(),
        }
    }

    fn gateway(ns: &str) -> Proxy {
        Proxy {
            kind: ProxyType::Router,
            id: format!("router~198.18.0.30~gw.{ns}~{ns}.svc.cluster.local"),
            namespace: ns.into(),
            service_account: "gw".into(),
            labels: [("istio".to_string(), "ingressgateway".to_string())].into(),
            ips: vec!["198.18.0.30".parse().unwrap()],
            workload_name: "gw".into(),
            interception: Interception::None,
        }
    }

    /// A certificate and its key, and another key, as PEM.
    fn credentials() -> (String, String, String) {
        let (cert, key) = testkit::certs::server_credential("a.example.com");
        let other = pki::PrivateKey::generate(pki::KeyAlgorithm::EcdsaP256).unwrap();
        (cert, key.to_pem(), other.to_pem())
    }

    fn secret(name: &str, cert: &str, key: &str) -> String {
        let indent = testkit::certs::yaml_block;
        format!(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: edge}}\nstringData:\n  tls.crt: |\n    {}\n  tls.key: |\n    {}\n",
            indent(cert),
            indent(key)
        )
    }

    const CONFIG: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web, namespace: app}
spec:
  hosts: [web.app.svc.cluster.local]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 198.18.0.11}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: gw, namespace: edge}
spec: {address: 198.18.0.30, labels: {istio: ingressgateway}, serviceAccount: gw}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public, namespace: app}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: [\"app/*.example.com\"]}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a-cert}
  - port: {number: 443, name: https-b, protocol: HTTPS}
    hosts: [b.example.com]
    tls: {mode: SIMPLE, credentialName: missing}
  - port: {number: 443, name: https-c, protocol: HTTPS}
    hosts: [c.example.com]
    tls: {mode: SIMPLE, credentialName: mismatched}
  - port: {number: 443, name: https-again, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: app}
spec:
  hosts: [\"*.example.com\"]
  gateways: [public]
  http:
  - match: [{uri: {prefix: /mesh-only}, gateways: [mesh]}]
    route: [{destination: {host: nowhere}}]
  - route: [{destination: {host: web}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: other-namespace, namespace: elsewhere}
spec:
  hosts: [d.example.com]
  gateways: [app/public]
  http:
  - route: [{destination: {host: web.app.svc.cluster.local}}]
";

    fn clusters_of(r: &ProxyResources, route: &str) -> Vec<(String, Vec<String>)> {
        let rc = r.routes.iter().find(|rc| rc.name == route).expect(route);
        rc.virtual_hosts
            .iter()
            .map(|vh| {
                let to = vh
                    .routes
                    .iter()
                    .filter_map(|r| match &r.action {
                        Some(Action::Route(a)) => match &a.cluster_specifier {
                            Some(ClusterSpecifier::Cluster(c)) => Some(c.clone()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect();
                (vh.name.clone(), to)
            })
            .collect()
    }

    #[test]
    fn servers_become_listeners_routes_and_the_gateways_own_secrets() {
        let (cert, key, other_key) = credentials();
        let yaml = format!(
            "{CONFIG}{}{}",
            secret("a-cert", &cert, &key),
            secret("mismatched", &cert, &other_key)
        );
        let config = config(&yaml);
        let r = generate(&config, &gateway("edge"));
        let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["0.0.0.0_80", "0.0.0.0_443"], "by port");
        // Port 80 exposes `app/*.example.com`; `a`'s `*.example.com` gets exactly that (the
        // narrower host), `d` is in another namespace. The mesh-only match is left out.
        let http = clusters_of(&r, "http.80");
        assert_eq!(
            http,
            [(
                "*.example.com:80".to_string(),
                vec!["outbound|8080||web.app.svc.cluster.local".to_string()]
            )]
        );
        // 443: the server whose Secret exists and matches its key, chosen by SNI; the one
        // without its Secret, the one whose key is another's, and the one repeating an SNI
        // already served are left out.
        let tls = &r.listeners[1];
        assert_eq!(tls.filter_chains.len(), 1, "{:?}", tls.filter_chains);
        let chain = &tls.filter_chains[0];
        assert_eq!(chain.name, "https.443.https.public.app");
        assert_eq!(
            chain.filter_chain_match.as_ref().unwrap().server_names,
            ["a.example.com"]
        );
        let Some(ConfigType::TypedConfig(any)) =
            &chain.transport_socket.as_ref().unwrap().config_type
        else {
            panic!("a TLS context")
        };
        let ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
        let sds = &ctx
            .common_tls_context
            .unwrap()
            .tls_certificate_sds_secret_configs;
        assert_eq!(sds[0].name, "kubernetes://a-cert", "from the ADS stream");
        assert_eq!(
            clusters_of(&r, "https.443.https.public.app")[0].0,
            "a.example.com:443",
            "the server's host, narrower than the VirtualService's"
        );
        let secrets: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(secrets, ["kubernetes://a-cert"]);
        assert!(
            !format!("{r:?}").contains("PRIVATE KEY"),
            "Debug names secrets only"
        );

        // The same Gateway on a gateway of another namespace: that namespace's Secrets only.
        let r = generate(&config, &gateway("other"));
        assert!(r.secrets.is_empty());
        assert_eq!(r.listeners.len(), 1, "only the HTTP server is left");
        // Another workload of the namespace claiming the gateway's labels in its node
        // metadata is not the WorkloadEntry's service account: no keys.
        let impostor = Proxy {
            service_account: "app".into(),
            workload_name: "app-0".into(),
            ..gateway("edge")
        };
        assert!(generate(&config, &impostor).secrets.is_empty());
        // Sidecars get no gateway servers and no secrets.
        let sidecar = Proxy {
            kind: ProxyType::Sidecar,
            ..gateway("edge")
        };
        let r = generate(&config, &sidecar);
        assert!(r.secrets.is_empty());
        assert!(!r.routes.iter().any(|rc| rc.name.starts_with("http.")));
    }

    #[test]
    fn virtual_services_share_hosts_and_redirects_need_none() {
        let config = config(
            "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - {port: {number: 80, name: http, protocol: HTTP}, hosts: [Shop.Example.com, redirected.example.com], tls: {httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: one, namespace: edge}
spec:
  hosts: [shop.example.com]
  gateways: [gw.edge.svc.cluster.local]
  http: [{match: [{uri: {prefix: /cart}}], route: [{destination: {host: cart.shop.svc.cluster.local, port: {number: 80}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: two, namespace: edge}
spec:
  hosts: [SHOP.example.com]
  gateways: [edge/gw]
  http: [{route: [{destination: {host: web.shop.svc.cluster.local, port: {number: 80}}}]}]
",
        );
        let r = generate(&config, &gateway("edge"));
        let rc = &r.routes[0];
        assert!(rc.ignore_port_in_host_matching);
        let hosts: Vec<(&str, usize, i32)> = rc
            .virtual_hosts
            .iter()
            .map(|v| (v.domains[0].as_str(), v.routes.len(), v.require_tls))
            .collect();
        let all = super::TlsRequirementType::All as i32;
        // One virtual host, lower-cased, with both VirtualServices' routes in order (the old
        // `name.namespace` gateway form binds too); the redirect applies with no route.
        assert_eq!(
            hosts,
            [
                ("shop.example.com", 2, all),
                ("redirected.example.com", 0, all)
            ]
        );
    }

    /// The reference page's delegation example (namespaces lower-cased: `nsA` is no
    /// Kubernetes namespace): the root binds the host to the gateway, each delegate brings its
    /// routes, narrowed by the root's prefix, with short names resolved in its own namespace.
    #[test]
    fn delegated_routes_are_merged_under_the_roots_matches() {
        let config = config(
            "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: mygateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [bookinfo.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bookinfo, namespace: default}
spec:
  hosts: [bookinfo.com]
  gateways: [mygateway]
  http:
  - match: [{uri: {prefix: /productpage}}]
    timeout: 5s
    delegate: {name: productpage, namespace: nsa}
  - match: [{uri: {prefix: /reviews}}]
    delegate: {name: reviews, namespace: nsb}
  - match: [{uri: {prefix: /hidden}}]
    delegate: {name: hidden, namespace: nsb}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: productpage, namespace: nsa}
spec:
  http:
  - match: [{uri: {prefix: /productpage/v1/}}]
    route: [{destination: {host: productpage-v1, port: {number: 9080}}}]
  - match: [{uri: {prefix: /elsewhere}}]
    route: [{destination: {host: nowhere, port: {number: 9080}}}]
  - route: [{destination: {host: productpage.nsa.svc.cluster.local, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: nsb}
spec:
  http:
  - route: [{destination: {host: reviews.nsb.svc.cluster.local, port: {number: 9080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hidden, namespace: nsb}
spec:
  exportTo: [.]
  http:
  - route: [{destination: {host: hidden, port: {number: 9080}}}]
",
        );
        let r = generate(&config, &gateway("edge"));
        let rc = r.routes.iter().find(|rc| rc.name == "http.80").unwrap();
        let routes: Vec<(String, String, bool)> = rc.virtual_hosts[0]
            .routes
            .iter()
            .map(|route| {
                let prefix = match &route.r#match.as_ref().unwrap().path_specifier {
                    Some(envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(p)) => p.clone(),
                    other => format!("{other:?}"),
                };
                let Some(Action::Route(a)) = &route.action else {
                    panic!("a route")
                };
                let Some(ClusterSpecifier::Cluster(c)) = &a.cluster_specifier else {
                    panic!("one cluster")
                };
                (prefix, c.clone(), a.timeout.is_some_and(|t| t.seconds == 5))
            })
            .collect();
        let route = |p: &str, c: &str, t: bool| (p.to_string(), c.to_string(), t);
        assert_eq!(
            routes,
            [
                // The root's timeout is inherited; `/elsewhere` is outside the root's prefix.
                route(
                    "/productpage/v1/",
                    "outbound|9080||productpage-v1.nsa.svc.cluster.local",
                    true
                ),
                route(
                    "/productpage",
                    "outbound|9080||productpage.nsa.svc.cluster.local",
                    true
                ),
                route(
                    "/reviews",
                    "outbound|9080||reviews.nsb.svc.cluster.local",
                    false
                ),
            ],
            "the delegate not exported to the root's namespace is left out"
        );
    }
}
