//! AuthorizationPolicy translation checked against the reference decision on a real Envoy.
//! Random policy sets (proptest strategies, fixed seed) become the RBAC filters citadel emits,
//! on an HTTP and a TCP listener per set (mTLS and plaintext chains, as a PERMISSIVE port has)
//! of one static Envoy. Random requests and connections — with and without client SVIDs of two
//! trust domains, from three loopback addresses, with assorted hosts, methods, paths, headers,
//! `X-Forwarded-For` and SNI — are sent, and what Envoy does (200 or 403 `RBAC: access
//! denied`; echoed or closed) must be what `mesh::security::authz::evaluate` decides.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use citadel::discovery::{address, any, rbac};
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as SocketConfig;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TransportSocket, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::config::listener::v3::listener_filter::ConfigType as ListenerFilterConfig;
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter};
use envoy_types::pb::envoy::config::route::v3::route::Action as RouteActionKind;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{DirectResponseAction, Route, RouteConfiguration, RouteMatch, VirtualHost};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{HttpConnectionManager, HttpFilter};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCluster;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, TlsCertificate};
use envoy_types::pb::google::protobuf::BoolValue;
use mesh::security::authz::{self, HttpRequest, Request};
use mesh::security::{Action, AuthorizationPolicy, Condition, NamedPolicy, Operation, Rule, RuleFrom, RuleTo, Source};
use pki::{CertificateAuthority, KeyAlgorithm, PrivateKey, SigningCaParams, SpiffeId, SvidParams, TrustDomain, X509Svid};
use prost::Message;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TRUST_DOMAIN: &str = "example.org";
const CASES: usize = 24;
const HTTP_PROBES: usize = 16;
const TCP_PROBES: usize = 6;

/// The client identities (index into this list) a probe may present.
const IDENTITIES: [&str; 4] = [
    "spiffe://example.org/ns/foo/sa/sleep",
    "spiffe://example.org/ns/bar/sa/sleep",
    "spiffe://example.org/ns/foo/sa/httpbin",
    "spiffe://other.org/ns/foo/sa/sleep",
];
const SOURCES: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
];
/// Server names the listeners' certificate carries.
const SNIS: [&str; 2] = ["httpbin.foo", "other.example"];

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "example.org/ns/bar/sa/sleep",
    "other.org/ns/foo/sa/sleep",
    "*",
    "*/sa/sleep",
    "cluster.local/ns/foo/*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "*", "f*", "*ar"];
const IP_BLOCKS: &[&str] = &["127.0.0.1", "127.0.0.2/32", "127.0.0.0/31", "127.0.0.3"];
const REMOTE_BLOCKS: &[&str] = &["198.18.0.1", "198.18.0.0/24", "127.0.0.1"];
const HOSTS: &[&str] = &["httpbin.foo", "*.foo", "httpbin.*", "*"];
const METHODS: &[&str] = &["GET", "POST"];
const PATHS: &[&str] = &["/headers", "/admin*", "*", "*/x", "/ip"];
const SNI_PATTERNS: &[&str] = &["httpbin.foo", "*.example"];
const TOKENS: &[&str] = &["a", "b*", "*"];

fn values(vocab: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(vocab, 1..=2.min(vocab.len()))
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// Each field of a list set with probability `p`.
fn maybe(vocab: &'static [&'static str]) -> impl Strategy<Value = Vec<String>> {
    prop::option::weighted(0.25, values(vocab)).prop_map(Option::unwrap_or_default)
}

fn source() -> impl Strategy<Value = Source> {
    (
        (
            maybe(PRINCIPALS),
            maybe(PRINCIPALS),
            maybe(NAMESPACES),
            maybe(NAMESPACES),
        ),
        (
            maybe(IP_BLOCKS),
            maybe(IP_BLOCKS),
            maybe(REMOTE_BLOCKS),
            maybe(REMOTE_BLOCKS),
        ),
        values(PRINCIPALS),
    )
        .prop_map(|((p, np, n, nn), (ip, nip, r, nr), fallback)| {
            let mut s = Source {
                principals: p,
                not_principals: np,
                namespaces: n,
                not_namespaces: nn,
                ip_blocks: ip,
                not_ip_blocks: nip,
                remote_ip_blocks: r,
                not_remote_ip_blocks: nr,
                ..Default::default()
            };
            if s == Source::default() {
                s.principals = fallback;
            }
            s
        })
}

fn operation(ports: &'static [&'static str]) -> impl Strategy<Value = Operation> {
    (
        (maybe(HOSTS), maybe(HOSTS), maybe(ports), maybe(ports)),
        (maybe(METHODS), maybe(METHODS), maybe(PATHS), maybe(PATHS)),
        values(PATHS),
    )
        .prop_map(|((h, nh, p, np), (m, nm, pa, npa), fallback)| {
            let mut o = Operation {
                hosts: h,
                not_hosts: nh,
                ports: p,
                not_ports: np,
                methods: m,
                not_methods: nm,
                paths: pa,
                not_paths: npa,
            };
            if o == Operation::default() {
                o.paths = fallback;
            }
            o
        })
}

fn condition(ports: &'static [&'static str]) -> impl Strategy<Value = Condition> {
    let keyed: Vec<(&'static str, &'static [&'static str])> = vec![
        ("source.ip", IP_BLOCKS),
        ("remote.ip", REMOTE_BLOCKS),
        ("source.namespace", NAMESPACES),
        ("source.principal", PRINCIPALS),
        ("destination.ip", &["127.0.0.1", "127.0.0.2"]),
        ("destination.port", ports),
        ("connection.sni", SNI_PATTERNS),
        ("request.headers[x-token]", TOKENS),
    ];
    prop::sample::select(keyed).prop_flat_map(|(key, vocab)| {
        (values(vocab), proptest::arbitrary::any::<bool>()).prop_map(move |(v, negate)| Condition {
            key: key.into(),
            values: if negate { vec![] } else { v.clone() },
            not_values: if negate { v } else { vec![] },
        })
    })
}

fn rule(ports: &'static [&'static str]) -> impl Strategy<Value = Rule> {
    (
        prop::collection::vec(source(), 0..=2),
        prop::collection::vec(operation(ports), 0..=2),
        prop::collection::vec(condition(ports), 0..=1),
    )
        .prop_map(|(from, to, when)| Rule {
            from: from
                .into_iter()
                .map(|s| RuleFrom { source: Some(s) })
                .collect(),
            to: to
                .into_iter()
                .map(|o| RuleTo { operation: Some(o) })
                .collect(),
            when,
        })
}

fn policy(ports: &'static [&'static str]) -> impl Strategy<Value = AuthorizationPolicy> {
    let action =
        prop_oneof![5 => Just(Action::Allow), 3 => Just(Action::Deny), 2 => Just(Action::Audit)];
    let rules = prop_oneof![1 => Just(vec![]), 9 => prop::collection::vec(rule(ports), 1..=3)];
    (action, rules).prop_map(|(action, rules)| AuthorizationPolicy {
        // Istio refuses a DENY with no rules; the empty ALLOW and AUDIT stay.
        action: if action == Action::Deny && rules.is_empty() {
            Action::Audit
        } else {
            action
        },
        rules,
        ..Default::default()
    })
}

/// (host, method, path, x-token, x-forwarded-for) of an HTTP probe.
type HttpProbe = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

#[derive(Debug, Clone)]
struct Probe {
    /// (client identity, SNI) when the probe speaks TLS.
    tls: Option<(Option<usize>, &'static str)>,
    source: Ipv4Addr,
    /// `None` for TCP.
    http: Option<HttpProbe>,
}

fn probe(http: bool) -> impl Strategy<Value = Probe> {
    let tls = prop::option::weighted(
        0.7,
        (
            prop::option::weighted(0.8, 0..IDENTITIES.len()),
            prop::sample::select(SNIS.to_vec()),
        ),
    );
    let request = (
        prop::sample::select(vec![
            "httpbin.foo",
            "HTTPBIN.FOO",
            "api.foo",
            "httpbin.bar",
            "other.example",
        ]),
        prop::sample::select(vec!["GET", "POST", "PUT"]),
        prop::sample::select(vec![
            "/headers",
            "/headers?x=1",
            "/admin",
            "/admin/x",
            "/ip",
            "/",
        ]),
        prop::option::of(prop::sample::select(vec!["a", "bc", "b", ""])),
        prop::option::weighted(0.3, prop::sample::select(vec!["198.18.0.1", "198.18.1.1"])),
    );
    let request = if http {
        request.prop_map(Some).boxed()
    } else {
        Just(None).boxed()
    };
    (tls, prop::sample::select(SOURCES.to_vec()), request).prop_map(|(tls, source, http)| Probe {
        tls,
        source,
        http,
    })
}

struct Case {
    policies: Vec<AuthorizationPolicy>,
    /// Which policies are dry runs (`istio.io/dry-run`): they must change no decision.
    dry_runs: Vec<bool>,
    http_port: u16,
    tcp_port: u16,
    probes: Vec<(Probe, bool)>,
}

impl Case {
    fn named(&self) -> Vec<NamedPolicy<'_>> {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| NamedPolicy {
                namespace: "foo",
                name: ["p0", "p1", "p2", "p3"][i],
                policy: p,
                dry_run: self.dry_runs[i],
            })
            .collect()
    }

    /// What the reference says of `probe` on this case's listeners.
    fn expected(&self, probe: &Probe) -> authz::Decision {
        let headers: Vec<(&str, &str)> = probe
            .http
            .iter()
            .flat_map(|(_, _, _, token, _)| token.map(|t| ("x-token", t)))
            .collect();
        let xff = probe.http.and_then(|h| h.4);
        let request = Request {
            principal: probe.tls.and_then(|(id, _)| id.map(|i| IDENTITIES[i])),
            source_ip: IpAddr::V4(probe.source),
            remote_ip: xff.map_or(IpAddr::V4(probe.source), |x| x.parse().unwrap()),
            destination_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            destination_port: if probe.http.is_some() {
                self.http_port
            } else {
                self.tcp_port
            },
            sni: probe.tls.map(|(_, sni)| sni),
            http: probe.http.map(|(host, method, path, _, _)| HttpRequest {
                host,
                method,
                path,
                headers: &headers,
            }),
        };
        authz::evaluate(&self.named(), TRUST_DOMAIN, &request)
    }
}

/// Free loopback ports, held until all are chosen so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn generate_cases() -> Vec<Case> {
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[42; 32]),
    );
    let ports = free_ports(CASES * 2);
    (0..CASES)
        .map(|i| {
            let (http_port, tcp_port) = (ports[2 * i], ports[2 * i + 1]);
            // The vocabulary of ports: this case's two and one nobody listens on.
            let names: &'static [&'static str] = Box::leak(
                vec![
                    &*Box::leak(http_port.to_string().into_boxed_str()),
                    &*Box::leak(tcp_port.to_string().into_boxed_str()),
                    "1",
                ]
                .into_boxed_slice(),
            );
            let policies = prop::collection::vec(policy(names), 1..=3)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let dry_runs = prop::collection::vec(prop::bool::weighted(0.15), policies.len())
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let mut probes: Vec<(Probe, bool)> = Vec::new();
            for _ in 0..HTTP_PROBES {
                let p = probe(true).new_tree(&mut runner).unwrap().current();
                probes.push((p, true));
            }
            for _ in 0..TCP_PROBES {
                let p = probe(false).new_tree(&mut runner).unwrap().current();
                probes.push((p, false));
            }
            Case {
                policies,
                dry_runs,
                http_port,
                tcp_port,
                probes,
            }
        })
        .collect()
}

struct Pki {
    server: X509Svid,
    clients: Vec<X509Svid>,
    roots_pem: String,
    mesh_root: rustls::pki_types::CertificateDer<'static>,
}

fn svid(ca: &CertificateAuthority, id: &str, dns: &[&str]) -> X509Svid {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id: SpiffeId = id.parse().unwrap();
    let mut params = SvidParams::ttl(Duration::from_secs(3600));
    params.dns_names = dns.iter().map(|d| d.to_string()).collect();
    let public = key.public_key_der();
    ca.issue_svid_for_key(
        &id,
        &public,
        false,
        &params,
        SystemTime::now(),
        &pki::SystemRandom,
    )
    .unwrap()
    .with_key(key)
    .unwrap()
}

fn pki() -> Pki {
    let root = |td: &str| {
        CertificateAuthority::self_signed_root(
            TrustDomain::new(td).unwrap(),
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            &SigningCaParams {
                common_name: format!("{td} root"),
                organization: "citadel tests".into(),
                ttl: Duration::from_secs(86400),
                path_len: None,
            },
            SystemTime::now(),
            &pki::SystemRandom,
        )
        .unwrap()
    };
    let (mesh, other) = (root(TRUST_DOMAIN), root("other.org"));
    let clients = IDENTITIES
        .iter()
        .map(|id| {
            svid(
                if id.contains("other.org") {
                    &other
                } else {
                    &mesh
                },
                id,
                &[],
            )
        })
        .collect();
    let pem = |c: &CertificateAuthority| {
        pem::encode(&pem::Pem::new("CERTIFICATE", c.certificate().to_vec()))
    };
    Pki {
        server: svid(&mesh, "spiffe://example.org/ns/foo/sa/httpbin", &SNIS),
        clients,
        roots_pem: format!("{}{}", pem(&mesh), pem(&other)),
        mesh_root: mesh.certificate().clone(),
    }
}

fn inline(text: String) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text)),
        ..Default::default()
    })
}

/// Client certificates are optional (a PERMISSIVE port's TLS chain asks for one, plaintext
/// has none) and checked against both trust domains' roots.
fn server_tls(pki: &Pki) -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificates: vec![TlsCertificate {
                certificate_chain: inline(pki.server.chain_pem()),
                private_key: inline(pki.server.key().unwrap().to_pem()),
                ..Default::default()
            }],
            validation_context_type: Some(ValidationContextType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(pki.roots_pem.clone()),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: false }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(SocketConfig::TypedConfig(any(&ctx))),
    }
}

fn filter(name: &str, config: envoy_types::pb::google::protobuf::Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(FilterConfig::TypedConfig(config)),
    }
}

fn http_terminal(stat: &str, authz: Vec<HttpFilter>) -> Vec<Filter> {
    let ok = RouteConfiguration {
        name: "ok".into(),
        virtual_hosts: vec![VirtualHost {
            name: "ok".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(RouteActionKind::DirectResponse(DirectResponseAction {
                    status: 200,
                    body: inline("ok".into()),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(any(&Router::default()))),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: stat.into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(ok)),
        http_filters: authz.into_iter().chain([router]).collect(),
        ..Default::default()
    };
    vec![filter(
        "envoy.filters.network.http_connection_manager",
        any(&hcm),
    )]
}

fn tcp_terminal(mut authz: Vec<Filter>, stat: &str) -> Vec<Filter> {
    authz.push(filter(
        "envoy.filters.network.tcp_proxy",
        any(&TcpProxy {
            stat_prefix: stat.into(),
            cluster_specifier: Some(TcpCluster::Cluster("echo".into())),
            ..Default::default()
        }),
    ));
    authz
}

/// A PERMISSIVE-style listener: TLS and plaintext chains with the same filters.
fn listener(name: &str, port: u16, filters: Vec<Filter>, tls: TransportSocket) -> Listener {
    let chain = |transport: &str, socket: Option<TransportSocket>| FilterChain {
        name: format!("{name}_{transport}"),
        filter_chain_match: Some(FilterChainMatch {
            transport_protocol: transport.into(),
            ..Default::default()
        }),
        transport_socket: socket,
        filters: filters.clone(),
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(address("127.0.0.1", port.into())),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(ListenerFilterConfig::TypedConfig(any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains: vec![chain("tls", Some(tls)), chain("raw_buffer", None)],
        ..Default::default()
    }
}

fn bootstrap(cases: &[Case], pki: &Pki, echo: SocketAddr) -> Bootstrap {
    let tls = server_tls(pki);
    let listeners = cases
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            let named = c.named();
            let http = http_terminal(
                &format!("case{i}"),
                rbac::http_filters(&named, TRUST_DOMAIN),
            );
            let tcp_stat = format!("case{i}_tcp");
            let tcp = tcp_terminal(
                rbac::network_filters(&named, TRUST_DOMAIN, &tcp_stat),
                &tcp_stat,
            );
            [
                listener(&format!("case{i}_http"), c.http_port, http, tls.clone()),
                listener(&format!("case{i}_tcp"), c.tcp_port, tcp, tls.clone()),
            ]
        })
        .collect();
    let echo_cluster = Cluster {
        name: "echo".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: "echo".into(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address(&echo.ip().to_string(), echo.port().into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    Bootstrap {
        admin: Some(Admin {
            address: Some(address("127.0.0.1", 0)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters: vec![echo_cluster],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

async fn connect(pki: &Pki, probe: &Probe, port: u16) -> std::io::Result<Box<dyn Io>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(probe.source), 0))?;
    let tcp = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    let Some((identity, sni)) = probe.tls else {
        return Ok(Box::new(tcp));
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.mesh_root.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(i) => {
            let svid = &pki.clients[i];
            let key =
                rustls::pki_types::PrivateKeyDer::try_from(svid.key().unwrap().to_der()).unwrap();
            builder
                .with_client_auth_cert(svid.chain().to_vec(), key)
                .unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}

/// One HTTP/1.1 response with a `content-length`, into `out`.
async fn read_response(io: &mut Box<dyn Io>, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a content-length");
            if body.len() >= length {
                return;
            }
        }
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Envoy's answer: allowed (200 or echoed) or denied (403 `RBAC: access denied`, or closed).
async fn observe(pki: &Pki, probe: &Probe, case: &Case) -> bool {
    let port = if probe.http.is_some() {
        case.http_port
    } else {
        case.tcp_port
    };
    let mut io = connect(pki, probe, port).await.expect("connect to envoy");
    let mut out = Vec::new();
    match probe.http {
        Some((host, method, path, token, xff)) => {
            let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
            if let Some(t) = token {
                req.push_str(&format!("x-token: {t}\r\n"));
            }
            if let Some(x) = xff {
                req.push_str(&format!("x-forwarded-for: {x}\r\n"));
            }
            req.push_str("content-length: 0\r\nconnection: close\r\n\r\n");
            io.write_all(req.as_bytes()).await.unwrap();
            // Read exactly the response: Envoy keeps the connection a while after it.
            let response =
                tokio::time::timeout(Duration::from_secs(10), read_response(&mut io, &mut out));
            response.await.expect("envoy answers within 10 s");
            let text = String::from_utf8_lossy(&out);
            let code = text.split(' ').nth(1).unwrap_or_default();
            match code {
                "200" => true,
                "403" => {
                    assert!(text.ends_with("RBAC: access denied"), "403 body: {text}");
                    false
                }
                other => panic!("unexpected answer {other:?}: {text}"),
            }
        }
        None => {
            if io.write_all(b"ping\n").await.is_err() {
                return false;
            }
            let mut buf = [0u8; 5];
            matches!(
                tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut buf)).await,
                Ok(Ok(_)) if &buf == b"ping\n"
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_rbac_from_random_policies_decides_as_the_reference() {
    let cases = generate_cases();
    for c in &cases {
        for (i, p) in c.named().iter().enumerate() {
            let object = mesh::Object {
                api_version: "security.istio.io/v1".into(),
                metadata: mesh::ObjectMeta {
                    name: format!("p{i}"),
                    namespace: Some("foo".into()),
                    ..Default::default()
                },
                spec: mesh::Spec::AuthorizationPolicy(Box::new(p.policy.clone())),
            };
            let problems: Vec<_> = mesh::validate::object(&object)
                .into_iter()
                .filter(|p| p.severity == mesh::Severity::Error)
                .collect();
            assert!(
                problems.is_empty(),
                "generated an invalid policy {p:?}: {problems:?}"
            );
        }
    }
    let pki = pki();
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let envoy = testkit::envoy::StaticEnvoy::start(
        dir.path(),
        &bootstrap(&cases, &pki, echo).encode_to_vec(),
    );
    let (mut allowed, mut denied) = (0u64, 0u64);
    let mut mismatches = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (probe, _) in &case.probes {
            let expected = case.expected(probe);
            let seen = observe(&pki, probe, case).await;
            if seen {
                allowed += 1;
            } else {
                denied += 1;
            }
            if seen != expected.allowed {
                mismatches.push(format!(
                    "case {i}: {probe:?}\n  reference: {expected:?}\n  envoy allowed: {seen}\n  policies: {:#?}",
                    case.policies
                ));
            }
        }
    }
    eprintln!("{allowed} allowed, {denied} denied");
    // Each denial is counted once, by the filter that made it (DENY or ALLOW).
    let counted: u64 = envoy
        .stats(r"rbac\.authz_(allow|deny)\.denied$|authz_(allow|deny)\.rbac\.denied$")
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counted, denied, "the RBAC filters' denied counters");
    assert!(
        mismatches.is_empty(),
        "{} of {} probes disagree:\n{}",
        mismatches.len(),
        allowed + denied,
        mismatches.join("\n")
    );
    // The sample is worth something only if it reaches both outcomes often.
    assert!(
        allowed > 60 && denied > 60,
        "{allowed} allowed, {denied} denied"
    );
}
