//! State-of-the-world streams (`DiscoveryRequest`/`DiscoveryResponse`), following the xDS
//! protocol's ACK/NACK, nonce and subscription rules.
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

use crate::ledger::{Ledger, Told};
use crate::resource::Publication;
use crate::types::{is_full_state_type, is_wildcard_type};
use crate::version::VersionSource;
use crate::wire::WireDiscoveryResponse;
use crate::{Nack, ProtocolError, Step};

/// What a stream subscribed to: explicit names, and for Listener and Cluster possibly the
/// wildcard (`*`, or the legacy empty list before any name was given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    wildcard: bool,
    names: BTreeSet<Arc<str>>,
}

impl Subscription {
    pub fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The names given explicitly (never `*` for a type that has a wildcard).
    pub fn names(&self) -> &BTreeSet<Arc<str>> {
        &self.names
    }
}

/// One state-of-the-world stream of one type.
#[derive(Debug, Default)]
pub struct SotwStream {
    type_url: Option<String>,
    subscription: Arc<Subscription>,
    ever_named: bool,
    /// The fingerprint of the names, in their order, of the last request that gave
    /// `subscription`: clients repeat them in the same order on every ACK.
    names_fingerprint: u64,
    last_nonce: Option<String>,
    /// What the client holds (name → version): a ledger over the publication last sent, read
    /// with the subscription of that time. `None` before the first response.
    sent: Option<(Ledger, Arc<Subscription>)>,
    /// The names the last response added or changed.
    last_changed: Vec<Arc<str>>,
    /// A request or a forget changed what is due since the last response, so the next one
    /// compares everything: a hint names only what the publication changed.
    compare_all: bool,
    acked_version: Option<String>,
    last_nack: Option<Nack>,
}

/// An order-sensitive fingerprint of a request's names, keyed per process so no client can
/// choose names that collide.
fn names_fingerprint(names: &[String]) -> u64 {
    use std::hash::BuildHasher;
    static KEY: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEY.get_or_init(Default::default).hash_one(names)
}

impl SotwStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn type_url(&self) -> Option<&str> {
        self.type_url.as_deref()
    }

    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    pub fn acked_version(&self) -> Option<&str> {
        self.acked_version.as_deref()
    }

    pub fn last_nack(&self) -> Option<&Nack> {
        self.last_nack.as_ref()
    }

    /// The names the last response carried because they were new or changed.
    pub fn last_changed(&self) -> &[Arc<str>] {
        &self.last_changed
    }

    /// [`Self::last_changed`], handed over.
    pub fn take_last_changed(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.last_changed)
    }

    /// Makes the next response carry `names` again even if unchanged (Envoy finishes warming a
    /// changed cluster only on a fresh endpoint response).
    pub fn forget<'a>(&mut self, names: impl IntoIterator<Item = &'a str>) {
        if let Some((held, under)) = &mut self.sent {
            for name in names {
                if held.get(name, under.wants(name)).is_some() {
                    held.set(name.into(), None);
                    self.compare_all = true;
                }
            }
        }
    }

    /// Applies a client request. A request whose nonce is not the latest one sent is stale and
    /// ignored entirely, as the spec says; a NACK is recorded and never answered with the same
    /// content.
    pub fn handle_request(&mut self, req: &DiscoveryRequest) -> Result<Step, ProtocolError> {
        let step = self.apply_request(req)?;
        self.compare_all |= step == Step::Respond;
        Ok(step)
    }

    fn apply_request(&mut self, req: &DiscoveryRequest) -> Result<Step, ProtocolError> {
        self.check_type(&req.type_url)?;
        let first = self.last_nonce.is_none() && self.sent.is_none();
        if !req.response_nonce.is_empty() && Some(&req.response_nonce) != self.last_nonce.as_ref() {
            return Ok(Step::Wait);
        }
        let changed = self.update_subscription(&req.resource_names);
        if let Some(status) = &req.error_detail {
            self.last_nack = Some(Nack {
                nonce: req.response_nonce.clone(),
                message: status.message.clone(),
            });
            return Ok(if changed { Step::Respond } else { Step::Wait });
        }
        if !req.response_nonce.is_empty() {
            self.acked_version = Some(req.version_info.clone());
        }
        Ok(if first || changed {
            Step::Respond
        } else {
            Step::Wait
        })
    }

    fn check_type(&mut self, type_url: &str) -> Result<(), ProtocolError> {
        match &self.type_url {
            None if type_url.is_empty() => Err(ProtocolError::MissingTypeUrl),
            None => {
                self.type_url = Some(type_url.to_string());
                Ok(())
            }
            Some(t) if !type_url.is_empty() && t != type_url => {
                Err(ProtocolError::TypeUrlMismatch {
                    expected: t.clone(),
                    got: type_url.to_string(),
                })
            }
            Some(_) => Ok(()),
        }
    }

    /// For Listener and Cluster, the legacy rule: empty names mean wildcard until a name has ever
    /// been given, and `*` is the wildcard. For other types empty names mean none, and `*` is a
    /// name like any other.
    fn update_subscription(&mut self, names: &[String]) -> bool {
        let wildcard_type = self.type_url.as_deref().is_some_and(is_wildcard_type);
        let legacy_wildcard = names.is_empty() && !self.ever_named;
        self.ever_named |= !names.is_empty();
        let wildcard = wildcard_type && (legacy_wildcard || names.iter().any(|n| n == "*"));
        // Most requests are ACKs repeating the subscription: recognise that without building
        // (and interning) a new one — by one pass along the (sorted) subscription when the
        // names come sorted, else by the fingerprint of the names in their order.
        let explicit = names.iter().filter(|n| !(wildcard_type && *n == "*"));
        let same_shape = wildcard == self.subscription.wildcard
            && explicit.clone().count() == self.subscription.names.len();
        if same_shape
            && explicit
                .clone()
                .zip(&self.subscription.names)
                .all(|(n, held)| n.as_str() == &**held)
        {
            return false;
        }
        // Invariant: the fingerprint of some list of names that gives `subscription`.
        let fingerprint = names_fingerprint(names);
        if same_shape && fingerprint == self.names_fingerprint {
            return false;
        }
        self.names_fingerprint = fingerprint;
        let next = if wildcard_type {
            Subscription {
                wildcard: legacy_wildcard || names.iter().any(|n| n == "*"),
                names: names
                    .iter()
                    .filter(|n| *n != "*")
                    .map(|n| crate::intern::intern(n))
                    .collect(),
            }
        } else {
            Subscription {
                wildcard: false,
                names: names.iter().map(|n| crate::intern::intern(n)).collect(),
            }
        };
        let changed = next != *self.subscription;
        if changed {
            self.subscription = Arc::new(next);
        }
        changed
    }

    /// The response to send for `current`, or `None` when the client already has exactly this.
    /// Call after a `Step::Respond`, and whenever the server's resources change. With `hint`,
    /// the client is known to hold a state that differs from `current` only in the hinted
    /// names, and only those are compared.
    ///
    /// For the types the spec makes state-of-the-world complete (Listener and Cluster) every
    /// response carries every wanted resource, since a missing one means deleted. For the other
    /// types (routes, endpoints, secrets, ...) absence means nothing, so a response carries only
    /// what the client does not have yet: a rotation on a stream of 100 secrets sends one.
    pub fn next_response(
        &mut self,
        current: &Arc<Publication>,
        hint: Option<&[Arc<str>]>,
        versions: &VersionSource,
    ) -> Option<WireDiscoveryResponse> {
        let type_url = self.type_url.clone()?;
        let full_state = is_full_state_type(&type_url);
        let first = self.last_nonce.is_none();
        let sub = self.subscription.clone();
        let resources = &current.resources;
        let mut compared_all = false;
        let compare_all = std::mem::take(&mut self.compare_all);
        let hint = hint.filter(|_| !compare_all);
        let (changed, set_changed) = match (hint, self.sent.as_mut()) {
            // Only a client held under the subscription still in force can be hinted.
            (Some(names), Some((held, under))) if Arc::ptr_eq(under, &sub) => {
                let mut changed = Vec::new();
                let mut set_changed = false;
                for name in names.iter().filter(|n| sub.wants(n)) {
                    let has = held.get(name, true);
                    match resources.get(&**name) {
                        Some(r) if has.as_ref() != Some(&Told::Has(r.version.clone())) => {
                            held.set(r.name.clone(), Some(Told::Has(r.version.clone())));
                            changed.push(r.name.clone());
                        }
                        Some(_) => {}
                        None if has.is_some() => {
                            held.set(name.clone(), None);
                            set_changed = true;
                        }
                        None => {}
                    }
                }
                (changed, set_changed)
            }
            _ => {
                compared_all = true;
                let wanted: Vec<_> = resources.values().filter(|r| sub.wants(&r.name)).collect();
                let (changed, held_count) = match &self.sent {
                    Some((held, under)) => {
                        let changed = wanted
                            .iter()
                            .filter(|r| {
                                let has = held.get(&r.name, under.wants(&r.name));
                                has != Some(Told::Has(r.version.clone()))
                            })
                            .map(|r| r.name.clone())
                            .collect();
                        (changed, Some(held.told_names(|n| under.wants(n)).len()))
                    }
                    None => (wanted.iter().map(|r| r.name.clone()).collect(), None),
                };
                (changed, held_count != Some(wanted.len()))
            }
        };
        if compared_all {
            // The client now holds exactly what it wants of `current`.
            self.sent = Some((Ledger::default(), sub.clone()));
        }
        let (held, under) = self.sent.as_mut().expect("set above");
        held.rebase(current, |n| under.wants(n));
        let send: Vec<&Arc<str>> = if full_state {
            if changed.is_empty() && !set_changed {
                return None;
            }
            resources
                .values()
                .filter(|r| sub.wants(&r.name))
                .map(|r| &r.name)
                .collect()
        } else {
            // The first response is due even when nothing exists yet (an empty answer).
            if changed.is_empty() && !first {
                return None;
            }
            changed.iter().collect()
        };
        let version = versions.next();
        let nonce = versions.next();
        let resources = send
            .iter()
            .map(|n| resources[&***n].encoded.clone())
            .collect();
        self.last_changed = changed;
        self.last_nonce = Some(nonce.clone());
        Some(WireDiscoveryResponse {
            version_info: version,
            resources,
            type_url,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::google::rpc::Status;
    use proptest::prelude::*;

    use super::*;
    use crate::resource::{NamedResource, Resources};
    use crate::wire::decode_any;

    fn value(r: &WireDiscoveryResponse, i: usize) -> Vec<u8> {
        decode_any(&r.resources[i]).value
    }

    const T: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    fn published(pairs: &[(&str, &str)]) -> Arc<Publication> {
        Arc::new(Publication::new(res(pairs)))
    }

    fn res(pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .map(|(n, v)| {
                let body = Any {
                    type_url: T.into(),
                    value: format!("{n}:{v}").into_bytes(),
                };
                (n.to_string(), NamedResource::new(*n, *v, &body))
            })
            .collect()
    }

    use crate::types::{CLUSTER, LISTENER};

    fn req(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        req_of(T, names, version, nonce)
    }

    fn req_of(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    proptest::proptest! {
        /// However a client orders or repeats its names, the subscription is the set of them,
        /// and a request changes it exactly when that set changes.
        #[test]
        fn the_subscription_is_the_set_of_names_in_any_order(
            requests in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(vec!["a", "b", "c", "d"]), 0..5),
                1..8,
            )
        ) {
            let v = VersionSource::new(b"t");
            let current = published(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]);
            let mut s = SotwStream::new();
            let mut held: Option<BTreeSet<&str>> = None;
            let mut responded = false;
            for names in requests {
                let step = s.handle_request(&req(&names, "", "")).unwrap();
                let set: BTreeSet<&str> = names.iter().copied().collect();
                let changed = held.as_ref() != Some(&set);
                proptest::prop_assert_eq!(step == Step::Respond, !responded || changed);
                if step == Step::Respond {
                    responded |= s.next_response(&current, None, &v).is_some();
                }
                let now: BTreeSet<&str> = s.subscription().names().iter().map(|n| &**n).collect();
                proptest::prop_assert_eq!(&now, &set);
                held = Some(set);
            }
        }
    }

    #[test]
    fn first_request_gets_the_named_resources_and_an_ack_gets_nothing() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        let current = published(&[("default", "1"), ("ROOTCA", "1"), ("other", "1")]);
        assert_eq!(
            s.handle_request(&req(&["default", "ROOTCA"], "", ""))
                .unwrap(),
            Step::Respond
        );
        let r = s.next_response(&current, None, &v).unwrap();
        assert_eq!(r.resources.len(), 2);
        assert_eq!(
            s.handle_request(&req(&["default", "ROOTCA"], &r.version_info, &r.nonce))
                .unwrap(),
            Step::Wait
        );
        assert_eq!(s.acked_version(), Some(r.version_info.as_str()));
        assert!(
            s.next_response(&current, None, &v).is_none(),
            "nothing changed, nothing sent"
        );
    }

    #[test]
    fn a_change_is_pushed_with_a_new_version_and_nonce() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        s.handle_request(&req(&["default"], "", "")).unwrap();
        let r1 = s
            .next_response(&published(&[("default", "1")]), None, &v)
            .unwrap();
        let r2 = s
            .next_response(&published(&[("default", "2")]), None, &v)
            .unwrap();
        assert_ne!(r1.version_info, r2.version_info);
        assert_ne!(r1.nonce, r2.nonce);
        // An ACK for the older nonce is stale: ignored, and does not count as an ACK.
        assert_eq!(
            s.handle_request(&req(&["default"], &r1.version_info, &r1.nonce))
                .unwrap(),
            Step::Wait
        );
        assert_eq!(s.acked_version(), None);
    }

    proptest::proptest! {
        /// Whatever the sequence of subscriptions, forgets and publications (hinted successors
        /// or unrelated ones), the stream sends what a plain map of what the client holds says.
        #[test]
        fn the_ledger_sends_what_a_plain_map_of_held_versions_sends(
            full_state_type in proptest::bool::ANY,
            ops in proptest::collection::vec(
                (
                    proptest::collection::vec(proptest::sample::select(vec!["n0", "n1", "n2", "*"]), 0..3),
                    proptest::collection::vec(0u8..3, 3),
                    0u8..4,
                    proptest::bool::ANY,
                ),
                1..30,
            ),
        ) {
            let type_url = if full_state_type { crate::types::CLUSTER } else { T };
            let v = VersionSource::new(b"m");
            let mut s = SotwStream::new();
            let mut held: Option<BTreeMap<String, String>> = None;
            let mut current = Arc::new(Publication::default());
            let mut first = true;
            // The publication the stream last answered for: a successor of it may be hinted.
            let mut answered = 0;
            s.handle_request(&req_of(type_url, &[], "", "")).unwrap();
            for (names, versions, what, respond) in ops {
                match what {
                    0 => { s.handle_request(&req_of(type_url, &names, "", "")).unwrap(); }
                    1 => {
                        s.forget(names.iter().copied());
                        if let Some(h) = &mut held { names.iter().for_each(|n| { h.remove(*n); }); }
                    }
                    _ => {
                        let pairs: Vec<(String, String)> = versions.iter().enumerate()
                            .filter(|(_, v)| **v > 0)
                            .map(|(i, v)| (format!("n{i}"), v.to_string()))
                            .collect();
                        let refs: Vec<(&str, &str)> = pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                        current = if what == 2 {
                            Publication::successor(&current, res(&refs))
                        } else {
                            Arc::new(Publication::new(res(&refs)))
                        };
                    }
                }
                if !respond {
                    continue;
                }
                let hint = match &current.since {
                    Some((before, names)) if *before == answered => Some(names.clone()),
                    _ => None,
                };
                answered = current.id;
                let got = s.next_response(&current, hint.as_deref(), &v).map(|r| {
                    r.resources.iter().map(|a| String::from_utf8(decode_any(a).value).unwrap()).collect::<Vec<_>>()
                });
                // The plain map: compare every wanted resource with what the client holds.
                let sub = s.subscription();
                let wanted: BTreeMap<String, String> = current.resources.values()
                    .filter(|r| sub.wants(&r.name))
                    .map(|r| (r.name.to_string(), r.version.to_string()))
                    .collect();
                let changed: Vec<String> = wanted.iter()
                    .filter(|(n, ver)| held.as_ref().and_then(|h| h.get(*n)) != Some(*ver))
                    .map(|(n, ver)| format!("{n}:{ver}"))
                    .collect();
                let set_changed = held.as_ref().is_none_or(|h| h.len() != wanted.len());
                let expected = if full_state_type {
                    (!changed.is_empty() || set_changed)
                        .then(|| wanted.iter().map(|(n, ver)| format!("{n}:{ver}")).collect())
                } else {
                    (!changed.is_empty() || first).then_some(changed)
                };
                held = Some(wanted);
                first &= got.is_none();
                proptest::prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn a_nack_is_recorded_and_the_same_content_is_not_resent() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        s.handle_request(&req(&["default"], "", "")).unwrap();
        let current = published(&[("default", "1")]);
        let r = s.next_response(&current, None, &v).unwrap();
        let mut nack = req(&["default"], "", &r.nonce);
        nack.error_detail = Some(Status {
            code: 3,
            message: "bad cert".into(),
            details: vec![],
        });
        assert_eq!(s.handle_request(&nack).unwrap(), Step::Wait);
        assert_eq!(s.last_nack().unwrap().message, "bad cert");
        assert!(s.next_response(&current, None, &v).is_none());
        assert!(
            s.next_response(&published(&[("default", "2")]), None, &v)
                .is_some(),
            "a new version is sent"
        );
    }

    #[test]
    fn newly_named_resources_are_sent_even_if_unchanged() {
        let v = VersionSource::new(b"t");
        // Secrets: only the new one; listeners: every wanted one (absence means deleted).
        for (type_url, expected) in [(T, 1), (LISTENER, 2)] {
            let mut s = SotwStream::new();
            let current = published(&[("a", "1"), ("b", "1")]);
            s.handle_request(&req_of(type_url, &["a"], "", "")).unwrap();
            let r = s.next_response(&current, None, &v).unwrap();
            assert_eq!(
                s.handle_request(&req_of(type_url, &["a", "b"], &r.version_info, &r.nonce))
                    .unwrap(),
                Step::Respond
            );
            let names: Vec<_> = s
                .next_response(&current, None, &v)
                .unwrap()
                .resources
                .iter()
                .map(|r| String::from_utf8_lossy(&decode_any(r).value).into_owned())
                .collect();
            assert_eq!(names.len(), expected, "{type_url}: {names:?}");
            assert!(names.contains(&"b:1".to_string()));
        }
    }

    #[test]
    fn a_partial_type_sends_only_what_changed() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        s.handle_request(&req(&["a", "b", "c"], "", "")).unwrap();
        let first = s
            .next_response(&published(&[("a", "1"), ("b", "1"), ("c", "1")]), None, &v)
            .unwrap();
        assert_eq!(first.resources.len(), 3);
        let rotated = s
            .next_response(&published(&[("a", "1"), ("b", "2"), ("c", "1")]), None, &v)
            .unwrap();
        assert_eq!(rotated.resources.len(), 1);
        assert_eq!(value(&rotated, 0), b"b:2");
        assert!(
            s.next_response(&published(&[("a", "1"), ("b", "2"), ("c", "1")]), None, &v)
                .is_none()
        );
        // A resource that went away and came back unchanged is sent again.
        assert!(
            s.next_response(&published(&[("a", "1"), ("b", "2")]), None, &v)
                .is_none()
        );
        let back = s
            .next_response(&published(&[("a", "1"), ("b", "2"), ("c", "1")]), None, &v)
            .unwrap();
        assert_eq!(back.resources.len(), 1);
        assert_eq!(value(&back, 0), b"c:1");
    }

    #[test]
    fn legacy_wildcard_until_a_name_is_given() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        let current = published(&[("a", "1"), ("b", "1")]);
        s.handle_request(&req_of(LISTENER, &[], "", "")).unwrap();
        assert!(s.subscription().is_wildcard());
        let r = s.next_response(&current, None, &v).unwrap();
        assert_eq!(r.resources.len(), 2);
        s.handle_request(&req_of(LISTENER, &["a"], &r.version_info, &r.nonce))
            .unwrap();
        let r = s.next_response(&current, None, &v).unwrap();
        assert_eq!(r.resources.len(), 1);
        // Once named, an empty list unsubscribes from everything.
        s.handle_request(&req_of(LISTENER, &[], &r.version_info, &r.nonce))
            .unwrap();
        assert_eq!(
            s.next_response(&current, None, &v).unwrap().resources.len(),
            0
        );
        assert!(!s.subscription().is_wildcard());
    }

    #[test]
    fn only_listeners_and_clusters_have_a_wildcard() {
        let v = VersionSource::new(b"t");
        let current = published(&[("a", "1"), ("*", "1")]);
        // An empty first list and `*` mean nothing special for secrets (or routes, endpoints).
        let mut s = SotwStream::new();
        s.handle_request(&req(&[], "", "")).unwrap();
        assert!(!s.subscription().is_wildcard());
        assert_eq!(
            s.next_response(&current, None, &v).unwrap().resources.len(),
            0
        );
        let mut s = SotwStream::new();
        s.handle_request(&req(&["*"], "", "")).unwrap();
        let r = s.next_response(&current, None, &v).unwrap();
        assert_eq!(r.resources.len(), 1, "only the resource named `*`");
        assert_eq!(value(&r, 0), b"*:1");
        // For clusters `*` is the wildcard, alongside explicit names.
        let mut s = SotwStream::new();
        s.handle_request(&req_of(CLUSTER, &["*", "b"], "", ""))
            .unwrap();
        assert!(s.subscription().is_wildcard());
        assert_eq!(s.subscription().names().len(), 1);
        assert_eq!(
            s.next_response(&current, None, &v).unwrap().resources.len(),
            2
        );
    }

    #[test]
    fn forgotten_names_are_sent_again_unchanged() {
        let v = VersionSource::new(b"t");
        let mut s = SotwStream::new();
        let current = published(&[("a", "1"), ("b", "1")]);
        s.handle_request(&req(&["a", "b"], "", "")).unwrap();
        let r = s.next_response(&current, None, &v).unwrap();
        assert_eq!(s.last_changed(), [Arc::from("a"), Arc::from("b")]);
        assert!(s.next_response(&current, None, &v).is_none());
        s.forget(["b"]);
        let again = s.next_response(&current, None, &v).unwrap();
        assert_ne!(again.nonce, r.nonce);
        assert_eq!(value(&again, 0), b"b:1");
        assert_eq!(s.last_changed(), [Arc::from("b")]);
    }

    #[test]
    fn type_changes_are_refused() {
        let mut s = SotwStream::new();
        s.handle_request(&req(&["a", "zzz"], "", "")).unwrap();
        let mut other = req(&["a"], "", "");
        other.type_url = "type.googleapis.com/other".into();
        assert!(s.handle_request(&other).is_err());
        assert_eq!(
            SotwStream::new().handle_request(&DiscoveryRequest::default()),
            Err(ProtocolError::MissingTypeUrl)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_request_sequences_never_panic_and_nonces_never_repeat(
            steps in proptest::collection::vec((proptest::collection::vec("[a-c*]", 0..3), any::<bool>(), any::<bool>(), 0u8..3), 1..40)
        ) {
            let v = VersionSource::new(b"p");
            let mut s = SotwStream::new();
            let mut nonces = std::collections::HashSet::new();
            let mut last_nonce = String::new();
            for (names, use_last, nack, generation) in steps {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                let mut r = req(&names, "", if use_last { &last_nonce } else { "" });
                if nack { r.error_detail = Some(Status::default()); }
                let _ = s.handle_request(&r);
                let g = generation.to_string();
                if let Some(resp) = s.next_response(&published(&[("a", &g), ("b", "1")]), None, &v) {
                    prop_assert!(nonces.insert(resp.nonce.clone()));
                    for any in &resp.resources {
                        let name = String::from_utf8_lossy(&decode_any(any).value).split(':').next().unwrap().to_string();
                        prop_assert!(s.subscription().wants(&name));
                    }
                    last_nonce = resp.nonce;
                }
            }
        }
    }
}
