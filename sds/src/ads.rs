//! Aggregated streams (ADS): one stream carries several resource types, each with its own
//! subscription, version, nonce and ACK/NACK state, and a round of pushes goes out in
//! make-before-break order (clusters, endpoints, listeners, routes, secrets). After a cluster
//! changes, its endpoints are sent again, since Envoy finishes warming a cluster only on a fresh
//! endpoint response. Endpoint resources are named by their cluster (Istio's layout), so the
//! names that changed in CDS are the names to re-send in EDS.
use std::collections::BTreeMap;
use std::sync::LazyLock;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

use crate::delta::DeltaStream;
use crate::resource::Resources;
use crate::sotw::SotwStream;
use crate::types::{CLUSTER, ENDPOINT, push_rank};
use crate::version::VersionSource;
use crate::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};
use crate::{ProtocolError, Step};

static EMPTY: LazyLock<Resources> = LazyLock::new(Resources::new);

/// The per-type protocol state of one ADS flavour (state of the world or delta).
pub trait TypeStream: Default {
    type Request;
    type Response;
    fn type_url_of(req: &Self::Request) -> &str;
    fn apply(&mut self, req: &Self::Request) -> Result<Step, ProtocolError>;
    fn respond(&mut self, current: &Resources, versions: &VersionSource) -> Option<Self::Response>;
    fn changed(&self) -> &[String];
    fn forget_names(&mut self, names: &[String]);
}

impl TypeStream for SotwStream {
    type Request = DiscoveryRequest;
    type Response = WireDiscoveryResponse;
    fn type_url_of(req: &DiscoveryRequest) -> &str {
        &req.type_url
    }
    fn apply(&mut self, req: &DiscoveryRequest) -> Result<Step, ProtocolError> {
        self.handle_request(req)
    }
    fn respond(&mut self, c: &Resources, v: &VersionSource) -> Option<Self::Response> {
        self.next_response(c, v)
    }
    fn changed(&self) -> &[String] {
        self.last_changed()
    }
    fn forget_names(&mut self, names: &[String]) {
        self.forget(names);
    }
}

impl TypeStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = WireDeltaDiscoveryResponse;
    fn type_url_of(req: &DeltaDiscoveryRequest) -> &str {
        &req.type_url
    }
    fn apply(&mut self, req: &DeltaDiscoveryRequest) -> Result<Step, ProtocolError> {
        self.handle_request(req)
    }
    fn respond(&mut self, c: &Resources, v: &VersionSource) -> Option<Self::Response> {
        self.next_response(c, v)
    }
    fn changed(&self) -> &[String] {
        self.last_changed()
    }
    fn forget_names(&mut self, names: &[String]) {
        self.forget(names);
    }
}

/// An ADS stream: the state of each type, by type URL.
#[derive(Debug)]
pub struct Ads<S> {
    by_url: BTreeMap<String, S>,
}

/// A state-of-the-world ADS stream.
pub type AdsStream = Ads<SotwStream>;
/// An incremental (delta) ADS stream.
pub type DeltaAdsStream = Ads<DeltaStream>;

impl<S> Default for Ads<S> {
    fn default() -> Self {
        Self {
            by_url: BTreeMap::new(),
        }
    }
}

impl<S: TypeStream> Ads<S> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a request to its type's state; every request must name its type.
    pub fn handle_request(&mut self, req: &S::Request) -> Result<Step, ProtocolError> {
        let type_url = S::type_url_of(req);
        if type_url.is_empty() {
            return Err(ProtocolError::MissingTypeUrl);
        }
        self.by_url
            .entry(type_url.to_string())
            .or_default()
            .apply(req)
    }

    /// The state of one type, once the client has asked for it.
    pub fn stream(&self, type_url: &str) -> Option<&S> {
        self.by_url.get(type_url)
    }

    /// The type URLs the client asked for, in push order.
    pub fn type_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.by_url.keys().cloned().collect();
        urls.sort_by_key(|u| push_rank(u));
        urls
    }

    /// Every response now due, in push order. `current` gives this client's resources of a type
    /// (`None`: none exist).
    pub fn next_responses<'a>(
        &mut self,
        current: impl Fn(&str) -> Option<&'a Resources>,
        versions: &VersionSource,
    ) -> Vec<S::Response> {
        let mut out = Vec::new();
        for url in self.type_urls() {
            let resources = current(&url).unwrap_or(&EMPTY);
            let stream = self.by_url.get_mut(&url).expect("listed above");
            let Some(response) = stream.respond(resources, versions) else {
                continue;
            };
            if url == CLUSTER {
                let changed = stream.changed().to_vec();
                if let Some(eds) = self.by_url.get_mut(ENDPOINT) {
                    eds.forget_names(&changed);
                }
            }
            out.push(response);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::resource::NamedResource;
    use crate::types::{LISTENER, ROUTE, SECRET};

    fn res(type_url: &str, pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .map(|(n, v)| {
                let any = Any {
                    type_url: type_url.into(),
                    value: format!("{n}:{v}").into_bytes(),
                };
                (n.to_string(), NamedResource::new(*n, *v, &any))
            })
            .collect()
    }

    fn sotw(
        type_url: &str,
        names: &[&str],
        ack: Option<&WireDiscoveryResponse>,
    ) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..Default::default()
        }
    }

    type World = HashMap<&'static str, Resources>;

    fn world(cluster_version: &str) -> World {
        HashMap::from([
            (
                CLUSTER,
                res(CLUSTER, &[("c1", cluster_version), ("c2", "1")]),
            ),
            (ENDPOINT, res(ENDPOINT, &[("c1", "1"), ("c2", "1")])),
            (LISTENER, res(LISTENER, &[("l1", "1")])),
            (ROUTE, res(ROUTE, &[("r1", "1")])),
            (SECRET, res(SECRET, &[("default", "1")])),
        ])
    }

    fn types_of(responses: &[WireDiscoveryResponse]) -> Vec<&str> {
        responses.iter().map(|r| r.type_url.as_str()).collect()
    }

    #[test]
    fn each_type_keeps_its_own_state_and_pushes_go_in_make_before_break_order() {
        let v = VersionSource::new(b"ads");
        let w = world("1");
        let mut ads = AdsStream::new();
        // Envoy asks in this order; the answers still come out clusters first.
        for (t, names) in [
            (SECRET, vec!["default"]),
            (ROUTE, vec!["r1"]),
            (LISTENER, vec![]),
            (ENDPOINT, vec!["c1", "c2"]),
            (CLUSTER, vec![]),
        ] {
            assert_eq!(
                ads.handle_request(&sotw(t, &names, None)).unwrap(),
                Step::Respond
            );
        }
        let first = ads.next_responses(|t| w.get(t), &v);
        assert_eq!(
            types_of(&first),
            [CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET]
        );
        assert!(first.iter().all(|r| !r.resources.is_empty()));
        // ACK each type with its own version and nonce.
        for r in &first {
            let names: Vec<&str> = match r.type_url.as_str() {
                t if t == ENDPOINT => vec!["c1", "c2"],
                t if t == ROUTE => vec!["r1"],
                t if t == SECRET => vec!["default"],
                _ => vec![],
            };
            assert_eq!(
                ads.handle_request(&sotw(&r.type_url, &names, Some(r)))
                    .unwrap(),
                Step::Wait
            );
            assert_eq!(
                ads.stream(&r.type_url).unwrap().acked_version(),
                Some(r.version_info.as_str())
            );
        }
        assert!(ads.next_responses(|t| w.get(t), &v).is_empty());
        // A cluster change re-sends that cluster's endpoints, unchanged, right after CDS.
        let w2 = world("2");
        let push = ads.next_responses(|t| w2.get(t), &v);
        assert_eq!(types_of(&push), [CLUSTER, ENDPOINT]);
        assert_eq!(push[0].resources.len(), 2, "CDS is complete");
        assert_eq!(
            push[1].resources.len(),
            1,
            "EDS only for the changed cluster"
        );
        assert_eq!(
            crate::wire::decode_any(&push[1].resources[0]).value,
            b"c1:1"
        );
    }

    #[test]
    fn a_request_without_a_type_is_refused_and_types_are_independent() {
        let mut ads = AdsStream::new();
        assert_eq!(
            ads.handle_request(&sotw("", &[], None)),
            Err(ProtocolError::MissingTypeUrl)
        );
        ads.handle_request(&sotw(CLUSTER, &[], None)).unwrap();
        ads.handle_request(&sotw(ROUTE, &["r1"], None)).unwrap();
        assert!(ads.stream(CLUSTER).unwrap().subscription().is_wildcard());
        assert!(!ads.stream(ROUTE).unwrap().subscription().is_wildcard());
        assert_eq!(ads.type_urls(), [CLUSTER, ROUTE]);
    }

    #[test]
    fn delta_ads_orders_and_rewarms_the_same_way() {
        let v = VersionSource::new(b"dads");
        let w = world("1");
        let mut ads = DeltaAdsStream::new();
        for (t, names) in [
            (LISTENER, vec![]),
            (ENDPOINT, vec!["c1", "c2"]),
            (CLUSTER, vec![]),
        ] {
            ads.handle_request(&DeltaDiscoveryRequest {
                type_url: t.into(),
                resource_names_subscribe: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .unwrap();
        }
        let first = ads.next_responses(|t| w.get(t), &v);
        let types: Vec<&str> = first.iter().map(|r| r.type_url.as_str()).collect();
        assert_eq!(types, [CLUSTER, ENDPOINT, LISTENER]);
        assert!(ads.next_responses(|t| w.get(t), &v).is_empty());
        let w2 = world("2");
        let push = ads.next_responses(|t| w2.get(t), &v);
        let names: Vec<Vec<&str>> = push
            .iter()
            .map(|r| r.resources.iter().map(|r| r.name.as_str()).collect())
            .collect();
        assert_eq!(
            names,
            [vec!["c1"], vec!["c1"]],
            "delta CDS then the re-sent EDS"
        );
    }
}
