//! Aggregated streams (ADS): one stream carries several resource types, each with its own
//! subscription, version, nonce and ACK/NACK state, and a round of pushes goes out in
//! make-before-break order (clusters, endpoints, listeners, routes, secrets). After a cluster
//! changes, its endpoints are sent again, since Envoy finishes warming a cluster only on a fresh
//! endpoint response. Endpoint resources are named by their cluster (Istio's layout), so the
//! names that changed in CDS are the names to re-send in EDS.
use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};

use crate::delta::DeltaStream;
use crate::resource::Publication;
use crate::sotw::SotwStream;
use crate::types::{CLUSTER, ENDPOINT, push_rank};
use crate::version::VersionSource;
use crate::wire::{WireDeltaDiscoveryResponse, WireDiscoveryResponse};
use crate::{ProtocolError, Step};

static EMPTY: LazyLock<Arc<Publication>> = LazyLock::new(Arc::default);

/// The per-type protocol state of one ADS flavour (state of the world or delta).
pub trait TypeStream: Default {
    type Request;
    type Response;
    fn type_url_of(req: &Self::Request) -> &str;
    fn apply(&mut self, req: &Self::Request) -> Result<Step, ProtocolError>;
    /// The response due for `current`; `hint` as in [`SotwStream::next_response`].
    fn respond(
        &mut self,
        current: &Arc<Publication>,
        hint: Option<&[Arc<str>]>,
        versions: &VersionSource,
    ) -> Option<Self::Response>;
    /// The names the last response added or changed, handed over (a stream does not keep
    /// them between pushes).
    fn take_changed(&mut self) -> Vec<Arc<str>>;
    fn forget_names(&mut self, names: &[Arc<str>]);
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
    fn respond(
        &mut self,
        c: &Arc<Publication>,
        hint: Option<&[Arc<str>]>,
        v: &VersionSource,
    ) -> Option<Self::Response> {
        self.next_response(c, hint, v)
    }
    fn take_changed(&mut self) -> Vec<Arc<str>> {
        self.take_last_changed()
    }
    fn forget_names(&mut self, names: &[Arc<str>]) {
        self.forget(names.iter().map(|n| &**n));
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
    fn respond(
        &mut self,
        c: &Arc<Publication>,
        hint: Option<&[Arc<str>]>,
        v: &VersionSource,
    ) -> Option<Self::Response> {
        self.next_response(c, hint, v)
    }
    fn take_changed(&mut self) -> Vec<Arc<str>> {
        self.take_last_changed()
    }
    fn forget_names(&mut self, names: &[Arc<str>]) {
        self.forget(names.iter().map(|n| &**n));
    }
}

/// An ADS stream: the state of each type, by type URL.
#[derive(Debug)]
pub struct Ads<S> {
    by_url: BTreeMap<String, TypeState<S>>,
}

/// One type of an ADS stream, and the publication its client is up to date with.
#[derive(Debug, Default)]
struct TypeState<S> {
    stream: S,
    /// The publication the client was last brought up to date with.
    synced: Option<u64>,
    /// A request or a forced re-send changed what is due since then.
    dirty: bool,
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
        let state = self.by_url.entry(type_url.to_string()).or_default();
        let step = state.stream.apply(req)?;
        state.dirty |= step == Step::Respond;
        Ok(step)
    }

    /// The state of one type, once the client has asked for it.
    pub fn stream(&self, type_url: &str) -> Option<&S> {
        self.by_url.get(type_url).map(|t| &t.stream)
    }

    /// The type URLs the client asked for, in push order.
    pub fn type_urls(&self) -> Vec<String> {
        let mut urls: Vec<String> = self.by_url.keys().cloned().collect();
        urls.sort_by_key(|u| push_rank(u));
        urls
    }

    /// Every response now due, in push order. `current` gives this client's publication of a
    /// type (`None`: none exist). A type whose publication the client is already up to date
    /// with costs nothing; one that follows it costs only what changed.
    pub fn next_responses<'a>(
        &mut self,
        current: impl Fn(&str) -> Option<&'a Arc<Publication>>,
        versions: &VersionSource,
    ) -> Vec<S::Response> {
        let mut out = Vec::new();
        for url in self.type_urls() {
            let publication = current(&url).unwrap_or(&EMPTY);
            let state = self.by_url.get_mut(&url).expect("listed above");
            if !state.dirty && state.synced == Some(publication.id) {
                continue;
            }
            let hint = match (&publication.since, state.dirty) {
                (Some((base, names)), false) if state.synced == Some(*base) => Some(&names[..]),
                _ => None,
            };
            let response = state.stream.respond(publication, hint, versions);
            state.synced = Some(publication.id);
            state.dirty = false;
            let Some(response) = response else {
                continue;
            };
            let changed = state.stream.take_changed();
            if url == CLUSTER
                && let Some(eds) = self.by_url.get_mut(ENDPOINT)
            {
                eds.stream.forget_names(&changed);
                eds.dirty |= !changed.is_empty();
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
    use crate::resource::{NamedResource, Resources};
    use crate::types::{LISTENER, ROUTE, SECRET};
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

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

    type World = HashMap<&'static str, Arc<Publication>>;

    fn world(cluster_version: &str) -> World {
        let types: HashMap<&'static str, Resources> = HashMap::from([
            (
                CLUSTER,
                res(CLUSTER, &[("c1", cluster_version), ("c2", "1")]),
            ),
            (ENDPOINT, res(ENDPOINT, &[("c1", "1"), ("c2", "1")])),
            (LISTENER, res(LISTENER, &[("l1", "1")])),
            (ROUTE, res(ROUTE, &[("r1", "1")])),
            (SECRET, res(SECRET, &[("default", "1")])),
        ]);
        types
            .into_iter()
            .map(|(t, r)| (t, Arc::new(Publication::new(r))))
            .collect()
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
            .map(|r| r.resources.iter().map(|r| &*r.name).collect())
            .collect();
        assert_eq!(
            names,
            [vec!["c1"], vec!["c1"]],
            "delta CDS then the re-sent EDS"
        );
    }

    /// What a round of responses carried: per type, the names sent (delta: and removed).
    fn carried_sotw(rs: &[WireDiscoveryResponse]) -> Vec<(String, Vec<Vec<u8>>)> {
        rs.iter()
            .map(|r| {
                (
                    r.type_url.clone(),
                    r.resources.iter().map(|b| b.to_vec()).collect(),
                )
            })
            .collect()
    }

    fn carried_delta(rs: &[WireDeltaDiscoveryResponse]) -> Vec<(String, Vec<String>, Vec<String>)> {
        rs.iter()
            .map(|r| {
                let mut names: Vec<String> = r
                    .resources
                    .iter()
                    .map(|x| format!("{}@{}", x.name, x.version))
                    .collect();
                names.sort();
                (r.type_url.clone(), names, r.removed_resources.clone())
            })
            .collect()
    }

    fn state(type_url: &str, versions: &[u8]) -> Resources {
        let pairs: Vec<(String, String)> = versions
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(i, v)| (format!("n{i}"), v.to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        res(type_url, &refs)
    }

    proptest::proptest! {
        /// A stream fed successive publications (comparing only what each names as changed,
        /// sometimes missing one) sends exactly what a stream comparing everything sends.
        #[test]
        fn following_publications_sends_what_a_full_comparison_sends(
            steps in proptest::collection::vec(
                (proptest::collection::vec(0u8..3, 4), proptest::collection::vec(0u8..3, 4), proptest::bool::ANY),
                1..20,
            )
        ) {
            let v = VersionSource::new(b"p");
            let names = ["n0", "n1", "n3"];
            let mut hinted = AdsStream::new();
            let mut full = AdsStream::new();
            let mut dhinted = DeltaAdsStream::new();
            let mut dfull = DeltaAdsStream::new();
            for ads in [&mut hinted, &mut full] {
                ads.handle_request(&sotw(CLUSTER, &[], None)).unwrap();
                ads.handle_request(&sotw(ENDPOINT, &names, None)).unwrap();
            }
            for ads in [&mut dhinted, &mut dfull] {
                for (t, n) in [(CLUSTER, &["*"][..]), (ENDPOINT, &names[..])] {
                    ads.handle_request(&DeltaDiscoveryRequest {
                        type_url: t.into(),
                        resource_names_subscribe: n.iter().map(|s| s.to_string()).collect(),
                        ..Default::default()
                    })
                    .unwrap();
                }
            }
            let mut published: Option<HashMap<&str, Arc<Publication>>> = None;
            for (clusters, endpoints, skip) in steps {
                let now = HashMap::from([
                    (CLUSTER, state(CLUSTER, &clusters)),
                    (ENDPOINT, state(ENDPOINT, &endpoints)),
                ]);
                let fresh: HashMap<&str, Arc<Publication>> = now
                    .iter()
                    .map(|(t, r)| (*t, Arc::new(Publication::new(r.clone()))))
                    .collect();
                let next: HashMap<&str, Arc<Publication>> = match &published {
                    Some(prev) => now
                        .iter()
                        .map(|(t, r)| (*t, Publication::successor(&prev[t], r.clone())))
                        .collect(),
                    None => fresh.clone(),
                };
                published = Some(next.clone());
                if skip {
                    continue; // the hinted streams miss this publication
                }
                let a = hinted.next_responses(|t| next.get(t), &v);
                let b = full.next_responses(|t| fresh.get(t), &v);
                proptest::prop_assert_eq!(carried_sotw(&a), carried_sotw(&b));
                let a = dhinted.next_responses(|t| next.get(t), &v);
                let b = dfull.next_responses(|t| fresh.get(t), &v);
                proptest::prop_assert_eq!(carried_delta(&a), carried_delta(&b));
            }
        }
    }
}
