//! The client half of xDS, sans-IO: what a proxy (or a simulated Envoy in tests and benchmarks)
//! keeps per type — subscription, the version and nonce to ACK, the resources it holds — and the
//! requests it sends: subscriptions, ACKs, NACKs that keep the last good set, and the first
//! requests after a reconnect (SotW with the version held; delta with `initial_resource_versions`).
//! In SotW, a Listener or Cluster missing from a response is removed, as the protocol says.
use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status;

use crate::types::{is_full_state_type, is_wildcard_type, resource_name};

/// What one response changed, once accepted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    pub type_url: String,
    /// Added or changed, by name.
    pub upserted: Vec<(String, Any)>,
    pub removed: Vec<String>,
}

/// gRPC `INVALID_ARGUMENT`, what Envoy puts in a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

fn nack_status(message: &str) -> Option<Status> {
    Some(Status {
        code: INVALID_ARGUMENT,
        message: message.to_string(),
        details: vec![],
    })
}

/// Names each resource of a response, checking it is of the response's type and appears once.
fn named_resources<'a>(
    type_url: &str,
    resources: &'a [Any],
) -> Result<Vec<(String, &'a Any)>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(resources.len());
    for any in resources {
        if any.type_url != type_url {
            return Err(format!(
                "resource of type {} in a response of type {type_url}",
                any.type_url
            ));
        }
        let name = resource_name(any)?;
        if !seen.insert(name.clone()) {
            return Err(format!("resource {name} appears twice in one response"));
        }
        out.push((name, any));
    }
    Ok(out)
}

#[derive(Debug, Default)]
struct SotwType {
    wildcard: bool,
    names: BTreeSet<String>,
    version: String,
    nonce: String,
    held: BTreeMap<String, Any>,
}

/// A state-of-the-world client of one (ADS or single-type) stream.
#[derive(Debug)]
pub struct SotwClient {
    node: Node,
    node_sent: bool,
    types: BTreeMap<String, SotwType>,
}

impl SotwClient {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            node_sent: false,
            types: BTreeMap::new(),
        }
    }

    /// The node goes on the first request of a stream only (Envoy's
    /// `set_node_on_first_message_only`).
    fn node_once(&mut self) -> Option<Node> {
        (!std::mem::replace(&mut self.node_sent, true)).then(|| self.node.clone())
    }

    fn request(&mut self, type_url: &str, error: Option<Status>) -> DiscoveryRequest {
        let node = self.node_once();
        let t = self.types.entry(type_url.to_string()).or_default();
        let mut names: Vec<String> = t.names.iter().cloned().collect();
        if t.wildcard && !names.is_empty() {
            names.push("*".into());
        }
        DiscoveryRequest {
            version_info: t.version.clone(),
            node,
            resource_names: names,
            type_url: type_url.to_string(),
            response_nonce: t.nonce.clone(),
            error_detail: error,
            ..Default::default()
        }
    }

    /// Subscribes to `names` of a type (replacing earlier names). For Listener and Cluster, no
    /// names means the wildcard, as Envoy asks.
    pub fn subscribe(&mut self, type_url: &str, names: &[&str]) -> DiscoveryRequest {
        let t = self.types.entry(type_url.to_string()).or_default();
        t.wildcard = is_wildcard_type(type_url) && (names.is_empty() || names.contains(&"*"));
        t.names = names
            .iter()
            .filter(|n| **n != "*")
            .map(|n| n.to_string())
            .collect();
        self.request(type_url, None)
    }

    /// After a reconnect: one request per type, with the version held and no nonce (nonces do
    /// not survive a stream), and the node again.
    pub fn reconnect_requests(&mut self) -> Vec<DiscoveryRequest> {
        self.node_sent = false;
        for t in self.types.values_mut() {
            t.nonce.clear();
        }
        let urls: Vec<String> = self.types.keys().cloned().collect();
        urls.iter().map(|u| self.request(u, None)).collect()
    }

    /// Applies a response. `check` accepts or refuses each resource (what the client can
    /// honour); a refusal NACKs the whole response and keeps what was held. Returns the ACK or
    /// NACK to send and what changed.
    pub fn handle_response(
        &mut self,
        resp: &DiscoveryResponse,
        check: impl Fn(&str, &Any) -> Result<(), String>,
    ) -> (DiscoveryRequest, Result<Update, String>) {
        let type_url = resp.type_url.clone();
        let parsed = named_resources(&type_url, &resp.resources).and_then(|named| {
            for (name, any) in &named {
                check(name, any).map_err(|e| format!("{name}: {e}"))?;
            }
            Ok(named)
        });
        let t = self.types.entry(type_url.clone()).or_default();
        t.nonce.clone_from(&resp.nonce);
        let named = match parsed {
            Ok(named) => named,
            Err(e) => {
                let nack = self.request(&type_url, nack_status(&e));
                return (nack, Err(e));
            }
        };
        t.version.clone_from(&resp.version_info);
        let mut update = Update {
            type_url: type_url.clone(),
            ..Default::default()
        };
        if is_full_state_type(&type_url) {
            let present: BTreeSet<&String> = named.iter().map(|(n, _)| n).collect();
            let gone: Vec<String> = t
                .held
                .keys()
                .filter(|n| !present.contains(n))
                .cloned()
                .collect();
            for name in gone {
                t.held.remove(&name);
                update.removed.push(name);
            }
        }
        for (name, any) in named {
            if t.held.get(&name) != Some(any) {
                t.held.insert(name.clone(), any.clone());
                update.upserted.push((name, any.clone()));
            }
        }
        (self.request(&type_url, None), Ok(update))
    }

    /// What the client holds of a type.
    pub fn resources(&self, type_url: &str) -> Option<&BTreeMap<String, Any>> {
        self.types.get(type_url).map(|t| &t.held)
    }

    /// The version last accepted for a type.
    pub fn version(&self, type_url: &str) -> Option<&str> {
        self.types.get(type_url).map(|t| t.version.as_str())
    }
}

#[derive(Debug, Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → (version, resource).
    held: BTreeMap<String, (String, Any)>,
}

/// An incremental (delta) client of one (ADS or single-type) stream.
#[derive(Debug)]
pub struct DeltaClient {
    node: Node,
    node_sent: bool,
    types: BTreeMap<String, DeltaType>,
}

impl DeltaClient {
    pub fn new(node: Node) -> Self {
        Self {
            node,
            node_sent: false,
            types: BTreeMap::new(),
        }
    }

    fn node_once(&mut self) -> Option<Node> {
        (!std::mem::replace(&mut self.node_sent, true)).then(|| self.node.clone())
    }

    /// Adds and removes names of a type. For Listener and Cluster, the first subscription with
    /// no names is the wildcard.
    pub fn subscribe(
        &mut self,
        type_url: &str,
        add: &[&str],
        remove: &[&str],
    ) -> DeltaDiscoveryRequest {
        let node = self.node_once();
        let t = self.types.entry(type_url.to_string()).or_default();
        let wildcard_type = is_wildcard_type(type_url);
        let mut subscribe: Vec<String> = Vec::new();
        if wildcard_type && add.is_empty() && remove.is_empty() && !t.wildcard {
            t.wildcard = true;
            subscribe.push("*".into());
        }
        for name in add {
            if *name == "*" && wildcard_type {
                t.wildcard = true;
            } else {
                t.names.insert(name.to_string());
            }
            subscribe.push(name.to_string());
        }
        for name in remove {
            if *name == "*" && wildcard_type {
                t.wildcard = false;
            } else {
                t.names.remove(*name);
            }
        }
        DeltaDiscoveryRequest {
            node,
            type_url: type_url.to_string(),
            resource_names_subscribe: subscribe,
            resource_names_unsubscribe: remove.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// After a reconnect: one request per type re-listing every name (and `*` if wildcard) and
    /// declaring what is held, so the server sends only what changed meanwhile.
    pub fn reconnect_requests(&mut self) -> Vec<DeltaDiscoveryRequest> {
        self.node_sent = false;
        let urls: Vec<String> = self.types.keys().cloned().collect();
        urls.iter()
            .map(|url| {
                let node = self.node_once();
                let t = &self.types[url];
                let mut subscribe: Vec<String> = t.names.iter().cloned().collect();
                if t.wildcard {
                    subscribe.push("*".into());
                }
                DeltaDiscoveryRequest {
                    node,
                    type_url: url.clone(),
                    resource_names_subscribe: subscribe,
                    initial_resource_versions: t
                        .held
                        .iter()
                        .map(|(n, (v, _))| (n.clone(), v.clone()))
                        .collect(),
                    ..Default::default()
                }
            })
            .collect()
    }

    /// Applies a response; see [`SotwClient::handle_response`].
    pub fn handle_response(
        &mut self,
        resp: &DeltaDiscoveryResponse,
        check: impl Fn(&str, &Any) -> Result<(), String>,
    ) -> (DeltaDiscoveryRequest, Result<Update, String>) {
        let checked: Result<(), String> = resp.resources.iter().try_for_each(|r| {
            let any = r
                .resource
                .as_ref()
                .ok_or_else(|| format!("{}: no resource body", r.name))?;
            if any.type_url != resp.type_url {
                return Err(format!(
                    "{}: type {} in a {} response",
                    r.name, any.type_url, resp.type_url
                ));
            }
            check(&r.name, any).map_err(|e| format!("{}: {e}", r.name))
        });
        let mut reply = DeltaDiscoveryRequest {
            node: self.node_once(),
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce.clone(),
            ..Default::default()
        };
        if let Err(e) = checked {
            reply.error_detail = nack_status(&e);
            return (reply, Err(e));
        }
        let t = self.types.entry(resp.type_url.clone()).or_default();
        let mut update = Update {
            type_url: resp.type_url.clone(),
            ..Default::default()
        };
        for name in &resp.removed_resources {
            if t.held.remove(name).is_some() {
                update.removed.push(name.clone());
            }
        }
        for r in &resp.resources {
            let any = r.resource.clone().expect("checked above");
            t.held
                .insert(r.name.clone(), (r.version.clone(), any.clone()));
            update.upserted.push((r.name.clone(), any));
        }
        (reply, Ok(update))
    }

    /// What the client holds of a type.
    pub fn resources(&self, type_url: &str) -> BTreeMap<String, Any> {
        self.types
            .get(type_url)
            .map(|t| {
                t.held
                    .iter()
                    .map(|(n, (_, a))| (n.clone(), a.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
