//! Gateways (`router~` proxies): the servers of the Gateways that select the proxy become
//! listeners on their ports (HTTP, HTTPS with `tls.mode: SIMPLE` chosen by SNI, and TCP),
//! routed by the VirtualServices that name the gateway in `gateways:`, into the mesh over mTLS with the
//! gateway's own SVID. A `credentialName` is a Secret in the gateway's namespace, served on the
//! same ADS stream as `kubernetes://NAME`, as istiod serves it.
use std::collections::{BTreeMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, FilterChainMatch, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::virtual_host::TlsRequirementType;
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost,
    route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, TlsCertificate};
use mesh::networking::{Gateway, Server, ServerTlsMode, VirtualService};
use mesh::{Config, Kind, Object, Spec};

use super::Ctx;
use super::listeners::{gateway_hcm, listener, tcp_proxy, tls_inspector, weighted_clusters};
use super::rbac;
use super::routes::{set_hash_policy, vs_routes};
use super::services::{Registry, host_matches, resolve_host};
use super::tls::{ServerCertificate, downstream_simple};

/// The SDS name prefix of store Secrets, as istiod names them.
pub const CREDENTIAL_PREFIX: &str = "kubernetes://";

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
        .filter(|(_, g)| g.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .collect()
}

/// One server of a selected Gateway.
struct GatewayServer<'a> {
    object: &'a Object,
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

    /// A TCP server: its connections go where the bound VirtualServices' `tcp` routes say.
    fn tcp(&self) -> bool {
        self.server
            .port
            .as_ref()
            .is_some_and(|p| p.protocol.eq_ignore_ascii_case("TCP"))
    }

    fn https(&self) -> bool {
        self.server
            .tls
            .as_ref()
            .is_some_and(|t| t.mode == Some(ServerTlsMode::Simple))
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

    /// Whether VirtualService `vs` (in `vs_ns`) binds to this server's gateway.
    fn bound(&self, vs_ns: &str, vs: &VirtualService) -> bool {
        let full = self.gateway_ref();
        let gw_ns = self.object.metadata.namespace();
        let exported = vs.export_to.is_empty()
            || vs
                .export_to
                .iter()
                .any(|e| e == "*" || e == gw_ns || (e == "." && vs_ns == gw_ns));
        exported && vs.gateways.iter().any(|g| self.names(vs_ns, g, &full))
    }

    /// Whether `g`, written in a VirtualService of `vs_ns`, names this server's gateway
    /// (`full` is its `ns/name`).
    fn names(&self, vs_ns: &str, g: &str, full: &str) -> bool {
        g == full || (g == self.object.metadata.name && vs_ns == self.object.metadata.namespace())
    }

    /// The VirtualService hosts this server exposes: those its `namespace/host` entries match.
    fn exposes(&self, vs_ns: &str, host: &str) -> bool {
        let gw_ns = self.object.metadata.namespace();
        self.server.namespaced_hosts().any(|(ns, h)| {
            let ns_ok = ns == "*" || (ns == "." && vs_ns == gw_ns) || ns == vs_ns;
            ns_ok && (host_matches(h, host) || host_matches(host, h))
        })
    }
}

/// The servers of the Gateways selecting the proxy, by port.
fn servers<'a>(gateways: &[(&'a Object, &'a Gateway)]) -> BTreeMap<u32, Vec<GatewayServer<'a>>> {
    let mut by_port: BTreeMap<u32, Vec<GatewayServer<'a>>> = BTreeMap::new();
    for (object, g) in gateways {
        for server in &g.servers {
            let Some(port) = server.port.as_ref().map(|p| p.number) else {
                continue;
            };
            by_port.entry(port).or_default().push(GatewayServer {
                object,
                server,
                port,
            });
        }
    }
    by_port
}

/// What a gateway gets besides its clusters.
#[derive(Debug, Default)]
pub struct Built {
    pub listeners: Vec<Listener>,
    pub routes: Vec<RouteConfiguration>,
    pub secrets: Vec<Secret>,
}

/// The listeners, routes and secrets of a gateway proxy.
pub fn build(ctx: &Ctx<'_>, registry: &Registry) -> Built {
    let gateways = gateways_for(ctx.config, &ctx.proxy.labels);
    let mut out = Built::default();
    let mut secrets_done = HashSet::new();
    for (port, servers) in servers(&gateways) {
        let bind = servers
            .iter()
            .find_map(|s| s.server.bind.clone())
            .unwrap_or_else(|| "0.0.0.0".into());
        let stat = format!("outbound_{bind}_{port}");
        let authz = || rbac::http_filters(&ctx.authz, &ctx.config.mesh.trust_domain);
        let mut l = listener(&format!("{bind}_{port}"), &bind, port, true);
        if let Some(chain) = tcp_chain(ctx, &servers, port, &stat) {
            l.filter_chains.push(chain);
        }
        let plain: Vec<&GatewayServer<'_>> =
            servers.iter().filter(|s| !s.https() && !s.tcp()).collect();
        if !plain.is_empty() {
            out.routes
                .push(route_config(ctx, registry, "http", port, &plain));
            l.filter_chains.push(FilterChain {
                filters: vec![gateway_hcm(&stat, &format!("http.{port}"), authz())],
                ..Default::default()
            });
        }
        // Envoy refuses a listener where two chains match the same SNI: a name goes to the
        // first server that claims it (Istio merges such servers the same way).
        let mut claimed: HashSet<String> = HashSet::new();
        for s in servers.iter().filter(|s| s.https()) {
            let mut names: Vec<String> = Vec::new();
            for (_, h) in s.server.namespaced_hosts() {
                if claimed.insert(h.to_string()) {
                    names.push(h.to_string());
                }
            }
            if names.is_empty() {
                tracing::warn!(gateway = %s.gateway_ref(), port, "every host of this HTTPS server is served by an earlier server on the port; it is left out");
                continue;
            }
            let Some(cert) = certificate(ctx, s, &mut out.secrets, &mut secrets_done) else {
                continue;
            };
            let name = s.route_name();
            out.routes
                .push(route_config(ctx, registry, &name, port, &[s]));
            let tls = s.server.tls.as_ref().expect("an HTTPS server has TLS");
            l.filter_chains.push(FilterChain {
                name: name.clone(),
                filter_chain_match: (!names.iter().any(|h| h == "*")).then(|| FilterChainMatch {
                    server_names: names,
                    ..Default::default()
                }),
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
    out
}

/// The chain of the port's TCP servers: the first `tcp` route of a VirtualService bound to one
/// of them whose match (port, gateways) applies, as a `tcp_proxy` to its weighted
/// destinations. No such route: no chain (Istio leaves the server without a listener too).
fn tcp_chain(
    ctx: &Ctx<'_>,
    servers: &[GatewayServer<'_>],
    port: u32,
    stat: &str,
) -> Option<FilterChain> {
    let vss = ctx
        .config
        .of_kind(Kind::VirtualService)
        .filter_map(|o| match &o.spec {
            Spec::VirtualService(vs) => Some((o, vs.as_ref())),
            _ => None,
        });
    for (object, vs) in vss {
        let vs_ns = object.metadata.namespace();
        for s in servers.iter().filter(|s| s.tcp() && s.bound(vs_ns, vs)) {
            let exposed = vs
                .hosts
                .iter()
                .any(|h| s.exposes(vs_ns, &resolve_host(h, vs_ns)));
            if !exposed {
                continue;
            }
            let gw = s.gateway_ref();
            let applies = |m: &mesh::networking::L4MatchAttributes| {
                m.port.is_none_or(|p| p == port)
                    && (m.gateways.is_empty() || m.gateways.iter().any(|g| s.names(vs_ns, g, &gw)))
            };
            let Some(route) = vs
                .tcp
                .iter()
                .find(|t| t.matches.is_empty() || t.matches.iter().any(&applies))
            else {
                continue;
            };
            let clusters = weighted_clusters(&route.route, vs_ns, port);
            if clusters.is_empty() {
                continue;
            }
            return Some(FilterChain {
                name: format!("tcp.{port}"),
                filters: vec![tcp_proxy(stat, &clusters)],
                ..Default::default()
            });
        }
    }
    None
}

/// The certificate of HTTPS server `s`: its files, or its `credentialName` Secret in the
/// gateway's namespace (pushed once into `secrets`). A missing or unusable Secret leaves the
/// server out, with a warning, rather than a listener that waits forever for its certificate.
fn certificate(
    ctx: &Ctx<'_>,
    s: &GatewayServer<'_>,
    secrets: &mut Vec<Secret>,
    done: &mut HashSet<String>,
) -> Option<ServerCertificate> {
    let tls = s.server.tls.as_ref()?;
    let Some(name) = &tls.credential_name else {
        return Some(ServerCertificate::Files {
            chain: tls.server_certificate.clone()?,
            key: tls.private_key.clone()?,
        });
    };
    let sds_name = format!("{CREDENTIAL_PREFIX}{name}");
    if done.contains(&sds_name) {
        return Some(ServerCertificate::Ads(sds_name));
    }
    let ns = &ctx.proxy.namespace;
    let found = ctx
        .config
        .of_kind(Kind::Secret)
        .find_map(|o| match &o.spec {
            Spec::Secret(secret) if o.metadata.namespace() == ns && o.metadata.name == *name => {
                Some(secret)
            }
            _ => None,
        });
    let credential = match found.map(|s| s.tls_credential()) {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            tracing::warn!(gateway = %s.gateway_ref(), secret = %format!("{ns}/{name}"), "credentialName: the Secret {e}; the server is left out");
            return None;
        }
        None => {
            tracing::warn!(gateway = %s.gateway_ref(), secret = %format!("{ns}/{name}"), "credentialName: no such Secret in the gateway's namespace; the server is left out");
            return None;
        }
    };
    let inline = |bytes: Vec<u8>| {
        Some(DataSource {
            specifier: Some(Specifier::InlineBytes(bytes)),
            ..Default::default()
        })
    };
    secrets.push(Secret {
        name: sds_name.clone(),
        r#type: Some(SecretType::TlsCertificate(TlsCertificate {
            certificate_chain: inline(credential.certificate_chain),
            private_key: inline(credential.private_key),
            ..Default::default()
        })),
    });
    done.insert(sds_name.clone());
    Some(ServerCertificate::Ads(sds_name))
}

/// The routes of `servers` on `port`: a virtual host per VirtualService host they expose, with
/// that VirtualService's routes (matches naming other gateways left out); a host two
/// VirtualServices claim goes to the first. Nothing bound: 404 for every request.
fn route_config(
    ctx: &Ctx<'_>,
    registry: &Registry,
    name: &str,
    port: u32,
    servers: &[&GatewayServer<'_>],
) -> RouteConfiguration {
    let name = if name == "http" {
        format!("http.{port}")
    } else {
        name.to_string()
    };
    let mut seen = HashSet::new();
    let mut virtual_hosts = Vec::new();
    let vss = ctx
        .config
        .of_kind(Kind::VirtualService)
        .filter_map(|o| match &o.spec {
            Spec::VirtualService(vs) => Some((o, vs.as_ref())),
            _ => None,
        });
    for (object, vs) in vss {
        let vs_ns = object.metadata.namespace();
        for s in servers.iter().filter(|s| s.bound(vs_ns, vs)) {
            let gw = s.gateway_ref();
            let applies = |m: &mesh::networking::HttpMatchRequest| {
                m.gateways.is_empty() || m.gateways.iter().any(|g| s.names(vs_ns, g, &gw))
            };
            for host in vs.hosts.iter().map(|h| resolve_host(h, vs_ns)) {
                if !s.exposes(vs_ns, &host) || !seen.insert(host.clone()) {
                    continue;
                }
                let mut routes = vs_routes(registry, object, vs, port, applies);
                for r in &mut routes {
                    set_hash_policy(ctx, registry, r);
                }
                let domains = if host == "*" {
                    vec!["*".into()]
                } else {
                    vec![host.clone(), format!("{host}:{port}")]
                };
                let redirect = s
                    .server
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.https_redirect == Some(true));
                virtual_hosts.push(VirtualHost {
                    name: format!("{host}:{port}"),
                    domains,
                    routes,
                    require_tls: if redirect {
                        TlsRequirementType::All as i32
                    } else {
                        TlsRequirementType::None as i32
                    },
                    ..Default::default()
                });
            }
        }
    }
    if virtual_hosts.is_empty() {
        virtual_hosts.push(VirtualHost {
            name: format!("blackhole:{port}"),
            domains: vec!["*".into()],
            routes: vec![Route {
                name: "default".into(),
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
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
        validate_clusters: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;

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
  - port: {number: 443, name: https-again, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: SIMPLE, credentialName: a-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: a, namespace: app}
spec:
  hosts: [a.example.com]
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
  hosts: [c.example.com]
  gateways: [app/public]
  http:
  - route: [{destination: {host: web.app.svc.cluster.local}}]
---
apiVersion: v1
kind: Secret
metadata: {name: a-cert, namespace: edge}
stringData: {tls.crt: \"-----BEGIN CERTIFICATE-----\\nx\\n-----END CERTIFICATE-----\\n\", tls.key: k}
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
        let config = config(CONFIG);
        let r = generate(&config, &gateway("edge"));
        let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["0.0.0.0_80", "0.0.0.0_443"]);
        // Port 80 exposes `app/*.example.com`: `a` (in app) binds; `c` is in another
        // namespace. The mesh-only match is left out.
        assert_eq!(
            clusters_of(&r, "http.80"),
            [(
                "a.example.com:80".to_string(),
                vec!["outbound|8080||web.app.svc.cluster.local".to_string()]
            )]
        );
        // 443: the server whose Secret exists, chosen by SNI; the one without its Secret and
        // the one repeating an SNI already served are left out.
        let tls = &r.listeners[1];
        assert_eq!(tls.filter_chains.len(), 1);
        let chain = &tls.filter_chains[0];
        assert_eq!(chain.name, "https.443.https.public.app");
        assert_eq!(
            chain.filter_chain_match.as_ref().unwrap().server_names,
            ["a.example.com"]
        );
        assert_eq!(
            clusters_of(&r, "https.443.https.public.app")[0].0,
            "a.example.com:443"
        );
        let secrets: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(secrets, ["kubernetes://a-cert"]);

        // The same Gateway on a gateway of another namespace: that namespace's Secrets only.
        let r = generate(&config, &gateway("other"));
        assert!(r.secrets.is_empty());
        assert_eq!(r.listeners.len(), 1, "only the HTTP server is left");
        // Sidecars get no gateway servers and no secrets.
        let sidecar = Proxy {
            kind: ProxyType::Sidecar,
            ..gateway("edge")
        };
        let r = generate(&config, &sidecar);
        assert!(r.secrets.is_empty());
        assert!(!r.routes.iter().any(|rc| rc.name.starts_with("http.")));
    }
}
