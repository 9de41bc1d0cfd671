//! Who a proxy is, from its xDS node: Istio's node id
//! `sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local` and metadata `NAMESPACE`,
//! `SERVICE_ACCOUNT`, `LABELS`, `INSTANCE_IPS`, `WORKLOAD_NAME`.
use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::Value;
use envoy_types::pb::google::protobuf::value::Kind;

/// What a proxy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyType {
    Sidecar,
    Router,
}

/// How traffic reaches the proxy (Istio's `INTERCEPTION_MODE` metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interception {
    /// iptables redirects to 15001/15006 (istio-init).
    Redirect,
    /// No redirection: only listeners that bind their own address (Sidecar `captureMode: NONE`);
    /// the rootless shape.
    None,
}

/// A proxy as the discovery server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyType,
    pub id: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    pub workload_name: String,
    pub interception: Interception,
}

/// Why a node cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    #[error(
        "node id {0:?} is not of the form sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local (or router~...)"
    )]
    BadId(String),
    #[error("node metadata {field}: {message}")]
    BadMetadata {
        field: &'static str,
        message: String,
    },
}

fn text(v: &Value) -> Option<&str> {
    match &v.kind {
        Some(Kind::StringValue(s)) => Some(s),
        _ => None,
    }
}

impl Proxy {
    pub fn from_node(node: &Node) -> Result<Self, NodeError> {
        let parts: Vec<&str> = node.id.split('~').collect();
        let [kind, ip, pod, domain] = parts.as_slice() else {
            return Err(NodeError::BadId(node.id.clone()));
        };
        let kind = match *kind {
            "sidecar" => ProxyType::Sidecar,
            "router" => ProxyType::Router,
            _ => return Err(NodeError::BadId(node.id.clone())),
        };
        let fields = node.metadata.as_ref().map(|m| &m.fields);
        let meta = |key: &str| {
            fields
                .and_then(|f| f.get(key))
                .and_then(text)
                .map(str::to_string)
        };
        let id_namespace = domain
            .split('.')
            .next()
            .filter(|ns| !ns.is_empty())
            .ok_or_else(|| NodeError::BadId(node.id.clone()))?;
        let namespace = meta("NAMESPACE").unwrap_or_else(|| id_namespace.to_string());
        if namespace != id_namespace {
            return Err(NodeError::BadMetadata {
                field: "NAMESPACE",
                message: format!(
                    "{namespace:?} differs from the node id's namespace {id_namespace:?}"
                ),
            });
        }
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(list) = meta("INSTANCE_IPS") {
            for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                ips.push(s.parse().map_err(|_| NodeError::BadMetadata {
                    field: "INSTANCE_IPS",
                    message: format!("{s:?} is not an IP address"),
                })?);
            }
        }
        if ips.is_empty() {
            ips.push(ip.parse().map_err(|_| NodeError::BadId(node.id.clone()))?);
        }
        let labels = match fields.and_then(|f| f.get("LABELS")).map(|v| &v.kind) {
            None => BTreeMap::new(),
            Some(Some(Kind::StructValue(s))) => s
                .fields
                .iter()
                .map(|(k, v)| {
                    text(v).map(|t| (k.clone(), t.to_string())).ok_or_else(|| {
                        NodeError::BadMetadata {
                            field: "LABELS",
                            message: format!("label {k:?} is not a string"),
                        }
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(NodeError::BadMetadata {
                    field: "LABELS",
                    message: "must be a map of strings".into(),
                });
            }
        };
        let pod_name = pod.split('.').next().unwrap_or(pod).to_string();
        Ok(Self {
            kind,
            id: node.id.clone(),
            namespace,
            service_account: meta("SERVICE_ACCOUNT").unwrap_or_else(|| "default".into()),
            labels,
            ips,
            workload_name: meta("WORKLOAD_NAME").unwrap_or(pod_name),
            interception: match meta("INTERCEPTION_MODE").as_deref() {
                None | Some("REDIRECT") | Some("TPROXY") => Interception::Redirect,
                Some("NONE") => Interception::None,
                Some(other) => {
                    return Err(NodeError::BadMetadata {
                        field: "INTERCEPTION_MODE",
                        message: format!("{other:?}: use REDIRECT or NONE"),
                    });
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Struct;

    use super::*;

    fn s(v: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(v.into())),
        }
    }

    #[test]
    fn reads_istios_node_id_and_metadata() {
        let labels = Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [
                    ("app".to_string(), s("reviews")),
                    ("version".to_string(), s("v2")),
                ]
                .into(),
            })),
        };
        let node = Node {
            id: "sidecar~198.18.0.12~reviews-v2.bookinfo~bookinfo.svc.cluster.local".into(),
            metadata: Some(Struct {
                fields: [
                    ("NAMESPACE".to_string(), s("bookinfo")),
                    ("SERVICE_ACCOUNT".to_string(), s("bookinfo-reviews")),
                    ("LABELS".to_string(), labels),
                ]
                .into(),
            }),
            ..Default::default()
        };
        let p = Proxy::from_node(&node).unwrap();
        assert_eq!(p.kind, ProxyType::Sidecar);
        assert_eq!(p.namespace, "bookinfo");
        assert_eq!(p.service_account, "bookinfo-reviews");
        assert_eq!(p.labels["version"], "v2");
        assert_eq!(p.ips, ["198.18.0.12".parse::<IpAddr>().unwrap()]);
        assert_eq!(p.workload_name, "reviews-v2");
    }

    #[test]
    fn refuses_malformed_nodes() {
        let bad = |id: &str| {
            Proxy::from_node(&Node {
                id: id.into(),
                ..Default::default()
            })
        };
        assert!(matches!(bad("envoy"), Err(NodeError::BadId(_))));
        assert!(matches!(
            bad("gateway~1.2.3.4~a.b~b.svc"),
            Err(NodeError::BadId(_))
        ));
        assert!(matches!(
            bad("sidecar~not-an-ip~a.b~b.svc.cluster.local"),
            Err(NodeError::BadId(_))
        ));
    }
}
