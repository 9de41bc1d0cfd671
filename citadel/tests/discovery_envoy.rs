//! Translation of Istio's Bookinfo configuration (Istio's own sample files, unchanged) for a
//! sidecar: the resources carry Istio's names and the configured routing, and a real Envoy
//! accepts every one of them (`envoy --mode validate` on a static bootstrap built from them,
//! since validate mode does not fetch xDS).
use std::path::{Path, PathBuf};
use std::process::Command;

use citadel::discovery::proxy::Proxy;
use citadel::discovery::{ProxyResources, generate};
use envoy_types::pb::envoy::config::bootstrap::v3::bootstrap::StaticResources;
use envoy_types::pb::envoy::config::bootstrap::v3::{Admin, Bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;

fn istio_sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh/tests/data/istio")
        .join(name)
}

/// Bookinfo's services as ServiceEntries (file mode has no Kubernetes Services) and one
/// WorkloadEntry per version, on 198.18.0.0/15 addresses.
const SERVICES: &str = "
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [198.19.0.3]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 198.18.0.31, labels: {app: ratings, version: v1}, serviceAccount: bookinfo-ratings}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  addresses: [198.19.0.9]
  ports: [{number: 9000, name: tcp, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{address: 198.18.0.41, labels: {app: tcp-echo, version: v1}}, {address: 198.18.0.42, labels: {app: tcp-echo, version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 198.18.0.21, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 198.18.0.22, labels: {app: reviews, version: v2}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3}
spec: {address: 198.18.0.23, labels: {app: reviews, version: v3}, serviceAccount: bookinfo-reviews}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

fn config_dir(samples: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.yaml"), SERVICES).unwrap();
    for s in samples {
        std::fs::copy(istio_sample(s), dir.path().join(s)).unwrap();
    }
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    )
    .unwrap();
    dir
}

fn sidecar(ip: &str, ns: &str, sa: &str, labels: &[(&str, &str)]) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let labels = Struct {
        fields: labels.iter().map(|(k, v)| (k.to_string(), s(v))).collect(),
    };
    Node {
        id: format!("sidecar~{ip}~pod.{ns}~{ns}.svc.cluster.local"),
        cluster: format!("pod.{ns}"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s(ns)),
                ("SERVICE_ACCOUNT".to_string(), s(sa)),
                (
                    "LABELS".to_string(),
                    Value {
                        kind: Some(Kind::StructValue(labels)),
                    },
                ),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

fn cluster<'a>(r: &'a ProxyResources, name: &str) -> &'a Cluster {
    r.clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("cluster {name}"))
}

fn reviews_route_action(r: &ProxyResources) -> Vec<(Option<String>, ClusterSpecifier)> {
    let rc = r
        .routes
        .iter()
        .find(|rc| rc.name == "9080")
        .expect("route config 9080");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.name == "reviews.default.svc.cluster.local:9080")
        .expect("reviews vhost");
    assert!(
        vh.domains.contains(&"reviews".to_string())
            && vh.domains.contains(&"reviews:9080".to_string())
    );
    vh.routes
        .iter()
        .map(|route| {
            let header = route
                .r#match
                .as_ref()
                .unwrap()
                .headers
                .first()
                .map(|h| h.name.clone());
            let Some(Action::Route(a)) = &route.action else {
                panic!("a route action")
            };
            (header, a.cluster_specifier.clone().unwrap())
        })
        .collect()
}

/// Every resource, as a static bootstrap Envoy validates: RDS inlined into its listeners, EDS
/// into its clusters, and the agent's SDS cluster defined first.
fn static_bootstrap(r: &ProxyResources, node: Node) -> Bootstrap {
    let routes: std::collections::HashMap<&str, &RouteConfiguration> =
        r.routes.iter().map(|rc| (rc.name.as_str(), rc)).collect();
    let listeners: Vec<Listener> = r
        .listeners
        .iter()
        .cloned()
        .map(|mut l| {
            for chain in &mut l.filter_chains {
                for f in &mut chain.filters {
                    let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                        continue;
                    };
                    if !any.type_url.ends_with("HttpConnectionManager") {
                        continue;
                    }
                    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
                    if let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier {
                        hcm.route_specifier = Some(RouteSpecifier::RouteConfig(
                            (*routes[rds.route_config_name.as_str()]).clone(),
                        ));
                    }
                    any.value = hcm.encode_to_vec();
                }
            }
            l
        })
        .collect();
    let mut clusters = vec![Cluster {
        name: "sds-grpc".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment {
            cluster_name: "sds-grpc".into(),
            endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LocalityLbEndpoints {
                lb_endpoints: vec![envoy_types::pb::envoy::config::endpoint::v3::LbEndpoint {
                    host_identifier: Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
                        envoy_types::pb::envoy::config::endpoint::v3::Endpoint {
                            address: Some(citadel::discovery::address("unix:///tmp/citadel-validate-sds.sock", 0)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        typed_extension_protocol_options: [(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            citadel::discovery::any(&envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions {
                upstream_protocol_options: Some(envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                    envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::ExplicitHttpConfig {
                        protocol_config: Some(envoy_types::pb::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(Default::default())),
                    },
                )),
                ..Default::default()
            }),
        )]
        .into(),
        ..Default::default()
    }];
    for c in &r.clusters {
        let mut c = c.clone();
        if c.eds_cluster_config.is_some() {
            c.eds_cluster_config = None;
            c.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            c.load_assignment = r
                .endpoints
                .iter()
                .find(|e| e.cluster_name == c.name)
                .cloned();
        }
        clusters.push(c);
    }
    Bootstrap {
        node: Some(node),
        admin: Some(Admin {
            address: Some(citadel::discovery::address("127.0.0.1", 0)),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            listeners,
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The resources' ADS secrets as static ones (validate mode fetches nothing): every TLS
/// context's SDS configs lose their source, so Envoy takes the static secret of that name.
fn with_static_secrets(bootstrap: &mut Bootstrap, r: &ProxyResources) {
    use envoy_types::pb::envoy::config::core::v3::TransportSocket;
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TsConfig;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext,
    };
    fn unsourced(common: &mut CommonTlsContext) {
        for sds in &mut common.tls_certificate_sds_secret_configs {
            if sds.name.starts_with("kubernetes://") {
                sds.sds_config = None;
            }
        }
        if let Some(ValidationContextType::CombinedValidationContext(c)) =
            &mut common.validation_context_type
            && let Some(sds) = &mut c.validation_context_sds_secret_config
            && sds.name.starts_with("kubernetes://")
        {
            sds.sds_config = None;
        }
    }
    fn patch(ts: &mut TransportSocket) {
        let Some(TsConfig::TypedConfig(any)) = ts.config_type.as_mut() else {
            return;
        };
        if any.type_url.ends_with("DownstreamTlsContext") {
            let mut ctx = DownstreamTlsContext::decode(any.value.as_slice()).unwrap();
            ctx.common_tls_context.as_mut().map(unsourced);
            any.value = ctx.encode_to_vec();
        } else if any.type_url.ends_with("UpstreamTlsContext") {
            let mut ctx = UpstreamTlsContext::decode(any.value.as_slice()).unwrap();
            ctx.common_tls_context.as_mut().map(unsourced);
            any.value = ctx.encode_to_vec();
        }
    }
    let statics = bootstrap.static_resources.as_mut().unwrap();
    for chain in statics
        .listeners
        .iter_mut()
        .flat_map(|l| l.filter_chains.iter_mut())
    {
        chain.transport_socket.as_mut().map(patch);
    }
    for c in &mut statics.clusters {
        c.transport_socket.as_mut().map(patch);
    }
    statics.secrets = r.secrets.clone();
}

fn envoy_validates(bootstrap: &Bootstrap) {
    let (ok, text) = envoy_validate(bootstrap);
    assert!(ok, "envoy --mode validate refused the resources:\n{text}");
}

fn envoy_validate(bootstrap: &Bootstrap) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.pb");
    std::fs::write(&file, bootstrap.encode_to_vec()).unwrap();
    let out = Command::new(testkit::envoy_binary())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && text.contains("OK"), text)
}

#[test]
fn bookinfo_translates_with_istios_names_and_envoy_accepts_it() {
    let dir = config_dir(&[
        "destination-rule-all.yaml",
        "virtual-service-reviews-90-10.yaml",
        "virtual-service-ratings-test-abort.yaml",
        "tcp-echo-20-v2.yaml",
    ]);
    // tcp-echo-20-v2 binds its VirtualService to a gateway; copy only the mesh-relevant object.
    let tcp = std::fs::read_to_string(dir.path().join("tcp-echo-20-v2.yaml")).unwrap();
    std::fs::write(
        dir.path().join("tcp-echo-20-v2.yaml"),
        tcp.replace(
            "  hosts:\n  - \"*\"\n  gateways:\n  - tcp-echo-gateway\n",
            "  hosts:\n  - tcp-echo\n",
        ),
    )
    .unwrap();
    let loaded = mesh::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let node = sidecar(
        "198.18.0.21",
        "default",
        "bookinfo-reviews",
        &[("app", "reviews"), ("version", "v1")],
    );
    let proxy = Proxy::from_node(&node).unwrap();
    let r = generate(&loaded.config, &proxy);

    // Istio's cluster names; subsets from Istio's destination-rule-all.yaml.
    for name in [
        "outbound|9080||reviews.default.svc.cluster.local",
        "outbound|9080|v1|reviews.default.svc.cluster.local",
        "outbound|9080|v3|reviews.default.svc.cluster.local",
        "outbound|9000|v2|tcp-echo.default.svc.cluster.local",
        "outbound|80||httpbin.example.com",
        "inbound|9080||",
        "PassthroughCluster",
        "BlackHoleCluster",
    ] {
        cluster(&r, name);
    }
    // Subset endpoints only, mTLS to mesh-internal services with their SPIFFE ID, none to external.
    let v2 = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == "outbound|9080|v2|reviews.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        v2.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>(),
        1
    );
    let tls = cluster(&r, "outbound|9080|v1|reviews.default.svc.cluster.local")
        .transport_socket
        .as_ref()
        .expect("mTLS");
    let Some(envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
        any,
    )) = &tls.config_type
    else {
        panic!()
    };
    let ctx =
        envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext::decode(
            any.value.as_slice(),
        )
        .unwrap();
    assert_eq!(
        ctx.sni,
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
    assert!(
        format!("{:?}", ctx.common_tls_context)
            .contains("spiffe://cluster.local/ns/default/sa/bookinfo-reviews")
    );
    assert!(
        cluster(&r, "outbound|80||httpbin.example.com")
            .transport_socket
            .is_none()
    );

    // The 90/10 split of Istio's sample, to subsets v1 and v2.
    let actions = reviews_route_action(&r);
    let ClusterSpecifier::WeightedClusters(w) = &actions[0].1 else {
        panic!("weighted: {actions:?}")
    };
    let split: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        split,
        [
            (
                "outbound|9080|v1|reviews.default.svc.cluster.local".to_string(),
                90
            ),
            (
                "outbound|9080|v2|reviews.default.svc.cluster.local".to_string(),
                10
            )
        ]
    );
    // Listeners in Istio's layout; REGISTRY_ONLY sends unknown destinations to the black hole.
    let names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    for expected in [
        "virtualOutbound",
        "virtualInbound",
        "0.0.0.0_9080",
        "198.19.0.9_9000",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
    let outbound = r
        .listeners
        .iter()
        .find(|l| l.name == "virtualOutbound")
        .unwrap();
    assert_eq!(
        outbound.default_filter_chain.as_ref().unwrap().name,
        "BlackHoleCluster"
    );

    let good = static_bootstrap(&r, node);
    envoy_validates(&good);
    // The check has teeth: a broken resource set is refused.
    let mut broken = good.clone();
    let resources = broken.static_resources.as_mut().unwrap();
    let chain = resources.listeners[0]
        .default_filter_chain
        .as_mut()
        .unwrap();
    let Some(ConfigType::TypedConfig(any)) = &mut chain.filters[0].config_type else {
        panic!()
    };
    any.type_url = "type.googleapis.com/no.such.Filter".into();
    let (ok, text) = envoy_validate(&broken);
    assert!(!ok && text.contains("no.such.Filter"), "{text}");
}

#[test]
fn header_routing_and_circuit_breaking_translate_and_validate() {
    let dir = config_dir(&[
        "destination-rule-all.yaml",
        "virtual-service-reviews-jason-v2-v3.yaml",
    ]);
    let loaded = mesh::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let node = sidecar(
        "198.18.0.10",
        "default",
        "bookinfo-productpage",
        &[("app", "productpage")],
    );
    let r = generate(&loaded.config, &Proxy::from_node(&node).unwrap());
    let actions = reviews_route_action(&r);
    assert_eq!(
        actions[0],
        (
            Some("end-user".to_string()),
            ClusterSpecifier::Cluster("outbound|9080|v2|reviews.default.svc.cluster.local".into())
        )
    );
    assert_eq!(
        actions[1],
        (
            None,
            ClusterSpecifier::Cluster("outbound|9080|v3|reviews.default.svc.cluster.local".into())
        )
    );
    envoy_validates(&static_bootstrap(&r, node.clone()));

    // Istio's circuit-breaking task: maxConnections 1, http1MaxPendingRequests 1, ejection.
    let cb = std::fs::read_to_string(istio_sample("circuit-breaking-httpbin-dr.yaml")).unwrap();
    let services = SERVICES
        .replace("httpbin.example.com", "httpbin.default.svc.cluster.local")
        .replace("MESH_EXTERNAL", "MESH_INTERNAL")
        .replace(
            "resolution: DNS\n",
            "resolution: STATIC\n  endpoints: [{address: 198.18.0.51}]\n",
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.yaml"), services).unwrap();
    std::fs::write(dir.path().join("cb.yaml"), cb).unwrap();
    let loaded = mesh::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let r = generate(&loaded.config, &Proxy::from_node(&node).unwrap());
    let c = cluster(&r, "outbound|80||httpbin.default.svc.cluster.local");
    let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(
        (
            t.max_connections.unwrap().value,
            t.max_pending_requests.unwrap().value
        ),
        (1, 1)
    );
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 1);
    assert_eq!(od.base_ejection_time.unwrap().seconds, 180);
    envoy_validates(&static_bootstrap(&r, node));
}

/// Istio's egress tasks under redirection: HTTPS to external hosts passes through on
/// `0.0.0.0_443`, routed by SNI (a VirtualService `tls` route sends one host's SNI to another),
/// and plain HTTP to an external host is originated as TLS by a SIMPLE DestinationRule.
#[test]
fn egress_tls_passthrough_and_origination_translate_and_validate() {
    let config = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-https}
spec:
  hosts: [www.example.org, \"*.wikipedia.org\"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: example-to-wikipedia}
spec:
  hosts: [www.example.org]
  tls:
  - match: [{port: 443, sniHosts: [www.example.org]}]
    route: [{destination: {host: \"*.wikipedia.org\", port: {number: 443}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: edition-cnn}
spec:
  hosts: [edition.cnn.com]
  ports: [{number: 80, name: http-port, protocol: HTTP, targetPort: 443}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: edition-cnn}
spec:
  host: edition.cnn.com
  trafficPolicy:
    tls: {mode: SIMPLE}
";
    let (objects, problems) = mesh::load_str(config, None);
    assert!(problems.is_empty(), "{problems:?}");
    let config = mesh::Config {
        objects: objects.into_iter().map(std::sync::Arc::new).collect(),
        ..Default::default()
    };
    let node = sidecar("198.18.0.10", "default", "sleep", &[("app", "sleep")]);
    let r = generate(&config, &Proxy::from_node(&node).unwrap());
    let l = r
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_443")
        .expect("an SNI listener for 443");
    let chains: Vec<(Vec<String>, String)> = l
        .filter_chains
        .iter()
        .map(|c| {
            use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
            use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
            let names = c
                .filter_chain_match
                .clone()
                .unwrap_or_default()
                .server_names;
            let Some(ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                panic!("a typed filter")
            };
            let tcp = <TcpProxy as prost::Message>::decode(any.value.as_slice()).unwrap();
            (names, format!("{:?}", tcp.cluster_specifier))
        })
        .collect();
    // Envoy picks the most specific server name whatever the chains' order.
    let to = |sni: &str| {
        chains
            .iter()
            .find(|(names, _)| names == &[sni.to_string()])
            .map(|(_, filter)| filter.clone())
            .unwrap_or_else(|| panic!("no chain for {sni}: {chains:?}"))
    };
    assert!(
        to("www.example.org").contains("outbound|443||*.wikipedia.org"),
        "the tls route: {chains:?}"
    );
    assert!(to("*.wikipedia.org").contains("outbound|443||*.wikipedia.org"));
    assert_eq!(
        chains.len(),
        2,
        "www.example.org's own chain is the route's: {chains:?}"
    );
    assert!(
        l.default_filter_chain.is_some(),
        "other SNIs follow the outbound policy"
    );
    let cnn = cluster(&r, "outbound|80||edition.cnn.com");
    assert!(cnn.transport_socket.is_some(), "SIMPLE originates TLS");
    envoy_validates(&static_bootstrap(&r, node));
}

/// The inbound chains of `port` on `virtualInbound`: name, transport matched, stat prefix.
fn inbound_chains(r: &ProxyResources, port: u32) -> Vec<(String, String, String)> {
    let l = r
        .listeners
        .iter()
        .find(|l| l.name == "virtualInbound")
        .expect("virtualInbound");
    l.filter_chains
        .iter()
        .filter(|c| {
            c.filter_chain_match
                .as_ref()
                .and_then(|m| m.destination_port)
                .is_some_and(|p| p.value == port)
        })
        .map(|c| {
            let Some(ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                panic!("typed filter")
            };
            let hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
            let m = c.filter_chain_match.as_ref().unwrap();
            (
                c.name.clone(),
                m.transport_protocol.clone(),
                hcm.stat_prefix,
            )
        })
        .collect()
}

/// PeerAuthentication on Bookinfo's reviews: the namespace STRICT, v2 DISABLE by workload, v3
/// inheriting with port 9080 PERMISSIVE. Each sidecar's inbound port takes what its mode says,
/// and clients follow: the reviews cluster sends plaintext to v2 only (by endpoint label), the
/// v2 subset is plaintext, the others mTLS. Envoy accepts all of it.
#[test]
fn peer_authentication_modes_decide_inbound_chains_and_client_tls() {
    let policies = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews-v2, namespace: default}
spec: {selector: {matchLabels: {app: reviews, version: v2}}, mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews-v3, namespace: default}
spec:
  selector: {matchLabels: {version: v3}}
  mtls: {mode: UNSET}
  portLevelMtls: {9080: {mode: PERMISSIVE}}
";
    let dir = config_dir(&["destination-rule-all.yaml"]);
    std::fs::write(dir.path().join("pa.yaml"), policies).unwrap();
    let loaded = mesh::load_dir(dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let reviews = |ip: &str, v: &str| {
        let node = sidecar(
            ip,
            "default",
            "bookinfo-reviews",
            &[("app", "reviews"), ("version", v)],
        );
        let r = generate(&loaded.config, &Proxy::from_node(&node).unwrap());
        envoy_validates(&static_bootstrap(&r, node));
        inbound_chains(&r, 9080)
    };
    let chain = |name: &str, transport: &str, stat: &str| {
        (name.to_string(), transport.to_string(), stat.to_string())
    };
    assert_eq!(
        reviews("198.18.0.21", "v1"),
        [chain(
            "inbound_0.0.0.0_9080_mtls",
            "",
            "inbound_9080_strict_mtls"
        )],
        "STRICT: every connection must complete the mTLS handshake"
    );
    assert_eq!(
        reviews("198.18.0.22", "v2"),
        [chain(
            "inbound_0.0.0.0_9080_plaintext",
            "",
            "inbound_9080_disable_plaintext"
        )]
    );
    assert_eq!(
        reviews("198.18.0.23", "v3"),
        [
            chain(
                "inbound_0.0.0.0_9080_mtls",
                "tls",
                "inbound_9080_permissive_mtls"
            ),
            chain(
                "inbound_0.0.0.0_9080_plaintext",
                "raw_buffer",
                "inbound_9080_permissive_plaintext"
            ),
        ]
    );

    let node = sidecar(
        "198.18.0.10",
        "default",
        "bookinfo-productpage",
        &[("app", "productpage")],
    );
    let r = generate(&loaded.config, &Proxy::from_node(&node).unwrap());
    envoy_validates(&static_bootstrap(&r, node));
    let all = cluster(&r, "outbound|9080||reviews.default.svc.cluster.local");
    assert!(all.transport_socket.is_some(), "mTLS by default");
    let matches: Vec<&str> = all
        .transport_socket_matches
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(matches, ["tlsMode-disabled"]);
    let labelled: Vec<String> = r
        .endpoints
        .iter()
        .find(|e| e.cluster_name == all.name)
        .unwrap()
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter(|e| {
            e.metadata.as_ref().is_some_and(|m| {
                m.filter_metadata
                    .contains_key("envoy.transport_socket_match")
            })
        })
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(labelled.len(), 1, "{labelled:?}");
    assert!(labelled[0].contains("198.18.0.22"), "{labelled:?}");
    let v2 = cluster(&r, "outbound|9080|v2|reviews.default.svc.cluster.local");
    assert!(v2.transport_socket.is_none() && v2.transport_socket_matches.is_empty());
    for subset in ["v1", "v3"] {
        let c = cluster(
            &r,
            &format!("outbound|9080|{subset}|reviews.default.svc.cluster.local"),
        );
        assert!(c.transport_socket.is_some() && c.transport_socket_matches.is_empty());
    }
}

/// A gateway's resources in every shape citadel emits, accepted by a real Envoy: HTTP and
/// HTTPS servers sharing a port (chains told apart by transport), two HTTPS servers by SNI
/// (a Secret from the store and files), a wildcard HTTPS server, a redirecting server, a TCP
/// server, a gateway policy; secrets become static ones, as validate mode fetches nothing.
#[test]
fn gateway_resources_are_accepted_by_envoy() {
    let certs = tempfile::tempdir().unwrap();
    let (cert_pem, key) = testkit::certs::server_credential("shop.example.com");
    let key_pem = key.to_pem();
    let (cert_file, key_file) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, &key_pem).unwrap();
    let indent = testkit::certs::yaml_block;
    let dir = config_dir(&["gateway-ingress-httpbin.yaml", "tcp-echo-all-v1.yaml"]);
    std::fs::write(
        dir.path().join("gateway.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: ingress, namespace: istio-system}}
spec: {{address: 198.18.9.1, labels: {{istio: ingressgateway}}, serviceAccount: ingress}}
---
apiVersion: v1
kind: Secret
metadata: {{name: shop-cert, namespace: istio-system}}
stringData:
  tls.crt: |
    {}
  tls.key: |
    {}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop, namespace: istio-system}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - {{port: {{number: 8443, name: plain, protocol: HTTP}}, hosts: [\"*\"]}}
  - port: {{number: 8443, name: https-shop, protocol: HTTPS}}
    hosts: [shop.example.com]
    tls: {{mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLSV1_2}}
  - port: {{number: 8443, name: https-files, protocol: HTTPS}}
    hosts: [files.example.com]
    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}
  - port: {{number: 9443, name: https-any, protocol: HTTPS}}
    hosts: [\"*\"]
    tls: {{mode: SIMPLE, credentialName: shop-cert}}
  - {{port: {{number: 8081, name: redirect, protocol: HTTP}}, hosts: [shop.example.com], tls: {{httpsRedirect: true}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shop, namespace: istio-system}}
spec:
  hosts: [shop.example.com, files.example.com, \"*\"]
  gateways: [shop]
  http: [{{route: [{{destination: {{host: productpage.default.svc.cluster.local}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-policy, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules: [{{from: [{{source: {{ipBlocks: [198.18.9.0/24]}}}}]}}]
",
            indent(&cert_pem),
            indent(&key_pem),
            cert_file.display(),
            key_file.display()
        ),
    )
    .unwrap();
    let loaded = mesh::load_dir(dir.path()).unwrap();
    let node = Node {
        id: "router~198.18.9.1~ingress.istio-system~istio-system.svc.cluster.local".into(),
        ..sidecar(
            "198.18.9.1",
            "istio-system",
            "ingress",
            &[("istio", "ingressgateway")],
        )
    };
    let proxy = Proxy::from_node(&Node {
        metadata: node.metadata.clone().map(|mut m| {
            m.fields.insert(
                "WORKLOAD_NAME".into(),
                Value {
                    kind: Some(Kind::StringValue("ingress".into())),
                },
            );
            m
        }),
        ..node.clone()
    })
    .unwrap();
    let r = generate(&loaded.config, &proxy);
    let mut names: Vec<&str> = r.listeners.iter().map(|l| l.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "0.0.0.0_31400",
            "0.0.0.0_80",
            "0.0.0.0_8081",
            "0.0.0.0_8443",
            "0.0.0.0_9443"
        ]
    );
    let shared = r
        .listeners
        .iter()
        .find(|l| l.name == "0.0.0.0_8443")
        .unwrap();
    assert_eq!(shared.filter_chains.len(), 3, "plain, and two by SNI");
    assert_eq!(r.secrets.len(), 1, "one Secret, served once");

    // Validate mode fetches nothing: the ADS secret becomes a static one.
    let mut bootstrap = static_bootstrap(&r, node);
    with_static_secrets(&mut bootstrap, &r);
    envoy_validates(&bootstrap);
}

/// TLS origination from the store (Istio's DestinationRule `credentialName`): MUTUAL presents
/// the Secret's certificate and verifies with its `ca.crt`, SIMPLE with a separate
/// `NAME-cacert` Secret, both over SDS on the ADS stream; a real Envoy accepts the clusters.
/// A proxy that is not the WorkloadEntry of its namespace's service account gets neither
/// the Secrets nor the clusters that need them.
#[test]
fn store_credentials_originate_tls_and_envoy_accepts_them() {
    let (cert, key) = testkit::certs::server_credential("client.example.com");
    let indent = testkit::certs::yaml_block;
    let dir = config_dir(&[]);
    std::fs::write(
        dir.path().join("egress.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: pod, namespace: default}}
spec: {{address: 198.18.0.5, labels: {{app: client}}, serviceAccount: client}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: ext}}
spec:
  hosts: [mutual.example.com, simple.example.com]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 443}}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mutual}}
spec:
  host: mutual.example.com
  trafficPolicy: {{tls: {{mode: MUTUAL, credentialName: client-credential}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: simple}}
spec:
  host: simple.example.com
  trafficPolicy: {{tls: {{mode: SIMPLE, credentialName: simple}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: client-credential}}
stringData:
  tls.crt: |
    {c}
  tls.key: |
    {k}
  ca.crt: |
    {c}
---
apiVersion: v1
kind: Secret
metadata: {{name: simple-cacert}}
stringData:
  cacert: |
    {c}
",
            c = indent(&cert),
            k = indent(&key.to_pem())
        ),
    )
    .unwrap();
    let loaded = mesh::load_dir(dir.path()).unwrap();
    let node = sidecar("198.18.0.5", "default", "client", &[("app", "client")]);
    let r = generate(&loaded.config, &Proxy::from_node(&node).unwrap());
    let mut names: Vec<&str> = r.secrets.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "kubernetes://client-credential",
            "kubernetes://client-credential-cacert",
            "kubernetes://simple-cacert"
        ]
    );
    // Each cluster's TLS context names the Secrets, fetched on the ADS stream.
    for (host, cert, ca) in [
        (
            "mutual.example.com",
            Some("kubernetes://client-credential"),
            "kubernetes://client-credential-cacert",
        ),
        ("simple.example.com", None, "kubernetes://simple-cacert"),
    ] {
        use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
        use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType as TsConfig;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
        use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
        let c = cluster(&r, &format!("outbound|80||{host}"));
        let Some(TsConfig::TypedConfig(any)) = &c.transport_socket.as_ref().unwrap().config_type
        else {
            panic!("{host}: a TLS context")
        };
        let common = UpstreamTlsContext::decode(any.value.as_slice())
            .unwrap()
            .common_tls_context
            .unwrap();
        let from_ads = |s: &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::SdsSecretConfig| {
            matches!(
                s.sds_config.as_ref().and_then(|c| c.config_source_specifier.as_ref()),
                Some(ConfigSourceSpecifier::Ads(_))
            )
        };
        let certs: Vec<&str> = common
            .tls_certificate_sds_secret_configs
            .iter()
            .inspect(|s| assert!(from_ads(s), "{host}"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(certs, cert.into_iter().collect::<Vec<_>>(), "{host}");
        let Some(ValidationContextType::CombinedValidationContext(v)) =
            &common.validation_context_type
        else {
            panic!("{host}: the CA from the store")
        };
        let sds = v.validation_context_sds_secret_config.as_ref().unwrap();
        assert_eq!(sds.name, ca, "{host}");
        assert!(from_ads(sds), "{host}");
    }
    let mut bootstrap = static_bootstrap(&r, node.clone());
    with_static_secrets(&mut bootstrap, &r);
    envoy_validates(&bootstrap);

    // Another service account in the namespace claiming the pod: no Secrets, no such clusters.
    let impostor = Node {
        metadata: node.metadata.clone().map(|mut m| {
            m.fields.insert(
                "SERVICE_ACCOUNT".into(),
                Value {
                    kind: Some(Kind::StringValue("other".into())),
                },
            );
            m
        }),
        ..node
    };
    let (entitled, impostor) = (
        Proxy::from_node(&sidecar(
            "198.18.0.5",
            "default",
            "client",
            &[("app", "client")],
        ))
        .unwrap(),
        Proxy::from_node(&impostor).unwrap(),
    );
    // Nor do they share a class with the entitled proxy, whose resources hold keys.
    let registry = citadel::discovery::services::Registry::build(&loaded.config);
    assert_ne!(
        citadel::discovery::class_of(&loaded.config, &registry, &entitled),
        citadel::discovery::class_of(&loaded.config, &registry, &impostor)
    );
    let r = generate(&loaded.config, &impostor);
    assert!(r.secrets.is_empty());
    assert!(
        !r.clusters
            .iter()
            .any(|c| c.name == "outbound|80||mutual.example.com"),
        "left out, never sent without its credentials"
    );
}
