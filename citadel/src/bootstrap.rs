//! `citadel sidecar bootstrap`: the Envoy bootstrap for a WorkloadEntry of the config store —
//! Istio's node id and metadata, admin, and the ADS and SDS sources, nothing else (every other
//! resource comes over ADS). The same file will start Citadel's own proxy.
use std::path::Path;

use mesh::networking::WorkloadEntry;
use mesh::{Config, Kind, Spec};
use serde_json::{Value, json};

/// How the proxy reaches the discovery server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsSource {
    /// Through the node agent's socket, which forwards ADS with the workload's SVID.
    Agent,
    /// Directly to citadel over mTLS (`host:port`), presenting the SVID from the agent's SDS.
    Direct(String),
}

/// What `sidecar bootstrap` needs besides the workload.
#[derive(Debug, Clone)]
pub struct BootstrapOptions<'a> {
    pub trust_domain: &'a str,
    pub agent_socket: &'a Path,
    pub xds: XdsSource,
    pub admin: std::net::SocketAddr,
    /// A gateway (`router~` node) instead of a sidecar.
    pub router: bool,
    /// Traffic is redirected by iptables (`REDIRECT`), or listeners bind themselves (`NONE`).
    pub redirect: bool,
}

/// Why no bootstrap can be made.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("--workload {0:?}: use NAMESPACE/NAME")]
    BadWorkload(String),
    #[error("no WorkloadEntry {0} in the configuration")]
    NotFound(String),
    #[error("WorkloadEntry {0} has no address")]
    NoAddress(String),
}

fn workload<'a>(config: &'a Config, ns: &str, name: &str) -> Option<&'a WorkloadEntry> {
    config
        .of_kind(Kind::WorkloadEntry)
        .find_map(|o| match &o.spec {
            Spec::WorkloadEntry(w) if o.metadata.namespace() == ns && o.metadata.name == name => {
                Some(w.as_ref())
            }
            _ => None,
        })
}

fn http2_cluster(name: &str, address: Value, transport_socket: Option<Value>) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        },
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [ { "endpoint": { "address": address } } ] } ] }
    });
    if let Some(ts) = transport_socket {
        c["transport_socket"] = ts;
    }
    c
}

fn agent_sds() -> Value {
    json!({
        "resource_api_version": "V3",
        "initial_fetch_timeout": "0s",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [ { "envoy_grpc": { "cluster_name": sds::names::SDS_CLUSTER } } ]
        }
    })
}

/// The bootstrap for WorkloadEntry `ns/name`.
pub fn sidecar(
    config: &Config,
    workload_ref: &str,
    opts: &BootstrapOptions<'_>,
) -> Result<Value, BootstrapError> {
    let (ns, name) = workload_ref
        .split_once('/')
        .filter(|(n, w)| !n.is_empty() && !w.is_empty())
        .ok_or_else(|| BootstrapError::BadWorkload(workload_ref.to_string()))?;
    let we = workload(config, ns, name)
        .ok_or_else(|| BootstrapError::NotFound(workload_ref.to_string()))?;
    if we.address.is_empty() {
        return Err(BootstrapError::NoAddress(workload_ref.to_string()));
    }
    let kind = if opts.router { "router" } else { "sidecar" };
    let sa = if we.service_account.is_empty() {
        "default"
    } else {
        we.service_account.as_str()
    };
    let app = we.labels.get("app").map(String::as_str).unwrap_or(name);
    let pipe = |path: &Path| json!({ "pipe": { "path": path.display().to_string() } });
    let xds_cluster = match &opts.xds {
        XdsSource::Agent => http2_cluster("xds-grpc", pipe(opts.agent_socket), None),
        XdsSource::Direct(addr) => {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr.as_str(), "15012"));
            let tls = json!({
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "alpn_protocols": ["h2"],
                        "tls_certificate_sds_secret_configs": [ { "name": sds::names::DEFAULT, "sds_config": agent_sds() } ],
                        "combined_validation_context": {
                            "default_validation_context": {
                                "match_typed_subject_alt_names": [ { "san_type": "URI", "matcher": { "exact": format!("spiffe://{}/citadel/server", opts.trust_domain) } } ]
                            },
                            "validation_context_sds_secret_config": { "name": sds::names::ROOTCA, "sds_config": agent_sds() }
                        }
                    }
                }
            });
            let address = json!({ "socket_address": { "address": host.trim_matches(['[', ']']), "port_value": port.parse::<u32>().unwrap_or(15012) } });
            http2_cluster("xds-grpc", address, Some(tls))
        }
    };
    Ok(json!({
        "node": {
            "id": format!("{kind}~{}~{name}.{ns}~{ns}.svc.cluster.local", we.address),
            "cluster": format!("{app}.{ns}"),
            "metadata": {
                "NAMESPACE": ns,
                "SERVICE_ACCOUNT": sa,
                "WORKLOAD_NAME": name,
                "INSTANCE_IPS": we.address,
                "LABELS": we.labels,
                "INTERCEPTION_MODE": if opts.redirect { "REDIRECT" } else { "NONE" },
            }
        },
        "admin": { "address": { "socket_address": { "address": opts.admin.ip().to_string(), "port_value": opts.admin.port() } } },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": true,
                "grpc_services": [ { "envoy_grpc": { "cluster_name": "xds-grpc" } } ]
            },
            "cds_config": { "resource_api_version": "V3", "ads": {} },
            "lds_config": { "resource_api_version": "V3", "ads": {} }
        },
        "static_resources": {
            "clusters": [ http2_cluster(sds::names::SDS_CLUSTER, pipe(opts.agent_socket), None), xds_cluster ]
        }
    }))
}
