//! Incremental (delta) streams (`DeltaDiscoveryRequest`/`DeltaDiscoveryResponse`): only changed
//! resources are sent, names that do not exist go to `removed_resources`, subscription changes
//! apply even with a stale nonce, and `initial_resource_versions` is honoured on reconnect.
use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::ledger::{Ledger, Told};
use crate::resource::Publication;
use crate::types::is_wildcard_type;
use crate::version::VersionSource;
use crate::wire::{WireDeltaDiscoveryResponse, WireResource};
use crate::{Nack, ProtocolError, Step};

/// One delta stream of one type.
#[derive(Debug, Default)]
pub struct DeltaStream {
    type_url: Option<String>,
    names: BTreeSet<Arc<str>>,
    wildcard: bool,
    started: bool,
    told: Ledger,
    last_nonce: Option<String>,
    last_nack: Option<Nack>,
    last_changed: Vec<Arc<str>>,
    /// A request or a forget changed what is due since the last response, so the next one
    /// compares everything: a hint names only what the publication changed.
    compare_all: bool,
}

impl DeltaStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn type_url(&self) -> Option<&str> {
        self.type_url.as_deref()
    }

    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    pub fn subscribed(&self) -> &BTreeSet<Arc<str>> {
        &self.names
    }

    pub fn last_nack(&self) -> Option<&Nack> {
        self.last_nack.as_ref()
    }

    /// The names the last response added or changed.
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
        for name in names {
            if matches!(self.told.get(name, self.wants(name)), Some(Told::Has(_))) {
                self.told.set(name.into(), None);
                self.compare_all = true;
            }
        }
    }

    /// Applies a request. Subscription changes apply whatever the nonce says (the spec requires
    /// it for delta); ACKs and NACKs count only for the latest nonce.
    pub fn handle_request(&mut self, req: &DeltaDiscoveryRequest) -> Result<Step, ProtocolError> {
        let step = self.apply_request(req)?;
        self.compare_all |= step == Step::Respond;
        Ok(step)
    }

    fn apply_request(&mut self, req: &DeltaDiscoveryRequest) -> Result<Step, ProtocolError> {
        match &self.type_url {
            None if req.type_url.is_empty() => return Err(ProtocolError::MissingTypeUrl),
            None => self.type_url = Some(req.type_url.clone()),
            Some(t) if !req.type_url.is_empty() && *t != req.type_url => {
                return Err(ProtocolError::TypeUrlMismatch {
                    expected: t.clone(),
                    got: req.type_url.clone(),
                });
            }
            Some(_) => {}
        }
        let first = !self.started;
        self.started = true;
        // Only Listener and Cluster have a wildcard; elsewhere `*` is a name like any other.
        let wildcard_type = self.type_url.as_deref().is_some_and(is_wildcard_type);
        if first {
            for (name, version) in &req.initial_resource_versions {
                let told = Told::Has(version.as_str().into());
                self.told.set(name.as_str().into(), Some(told));
            }
            if wildcard_type
                && req.resource_names_subscribe.is_empty()
                && req.resource_names_unsubscribe.is_empty()
            {
                self.wildcard = true;
            }
        }
        let mut changed = first;
        for name in &req.resource_names_subscribe {
            if name == "*" && wildcard_type {
                changed |= !self.wildcard;
                self.set_wildcard(true);
            } else if self.names.insert(crate::intern::intern(name)) {
                // A (re)subscribed name must be (re)sent even if the client had it before,
                // unless this is the reconnect that declared what the client holds.
                if !first {
                    self.told.set(name.as_str().into(), None);
                }
                changed = true;
            } else if self.told.get(name, true).is_none() {
                changed = true;
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" && wildcard_type {
                self.set_wildcard(false);
            } else {
                self.names.remove(name.as_str());
            }
            if !self.wildcard {
                self.told.set(name.as_str().into(), None);
            }
            changed = true;
        }
        let current_nonce =
            !req.response_nonce.is_empty() && Some(&req.response_nonce) == self.last_nonce.as_ref();
        if let (true, Some(status)) = (current_nonce, &req.error_detail) {
            self.last_nack = Some(Nack {
                nonce: req.response_nonce.clone(),
                message: status.message.clone(),
            });
        }
        Ok(if changed { Step::Respond } else { Step::Wait })
    }

    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// The ledger's rule reads "wants", so it is flattened before a toggle changes that.
    fn set_wildcard(&mut self, on: bool) {
        if self.wildcard != on {
            let (names, wildcard) = (&self.names, self.wildcard);
            self.told.flatten(|n| wildcard || names.contains(n));
            self.wildcard = on;
        }
    }

    /// The changes to send for `current`, or `None` when the client is up to date. With
    /// `hint`, the client is known to be up to date with a state that differs from `current` only
    /// in the hinted names, and only those are looked at.
    pub fn next_response(
        &mut self,
        current: &Arc<Publication>,
        hint: Option<&[Arc<str>]>,
        versions: &VersionSource,
    ) -> Option<WireDeltaDiscoveryResponse> {
        let type_url = self.type_url.clone()?;
        let compare_all = std::mem::take(&mut self.compare_all);
        let hint = hint.filter(|_| !compare_all);
        let (resources, removed) = self.changes(current, hint);
        let (names, wildcard) = (&self.names, self.wildcard);
        self.told.rebase(current, |n| wildcard || names.contains(n));
        if resources.is_empty() && removed.is_empty() {
            return None;
        }
        let nonce = versions.next();
        self.last_nonce = Some(nonce.clone());
        Some(WireDeltaDiscoveryResponse {
            system_version_info: versions.next(),
            resources,
            type_url,
            removed_resources: removed,
            nonce,
        })
    }

    /// What to add and remove for `current`, recorded as told.
    fn changes(
        &mut self,
        current: &Publication,
        hint: Option<&[Arc<str>]>,
    ) -> (Vec<WireResource>, Vec<String>) {
        let current = &current.resources;
        let mut resources = Vec::new();
        let mut removed = Vec::new();
        self.last_changed = Vec::new();
        match hint {
            Some(names) => {
                let wanted: Vec<&Arc<str>> = names.iter().filter(|n| self.wants(n)).collect();
                for name in wanted {
                    match current.get(&**name) {
                        Some(r) => self.tell(r, &mut resources),
                        None => self.tell_gone(name, &mut removed),
                    }
                }
            }
            None => {
                let visible: Vec<_> = current.values().filter(|r| self.wants(&r.name)).collect();
                for r in visible {
                    self.tell(r, &mut resources);
                }
                // Explicit names that do not exist, and held names that disappeared.
                let gone: BTreeSet<Arc<str>> = self
                    .names
                    .iter()
                    .cloned()
                    .chain(self.told.told_names(|n| self.wants(n)))
                    .filter(|n| !current.contains_key(&**n) && self.wants(n))
                    .collect();
                for name in gone {
                    self.tell_gone(&name, &mut removed);
                }
            }
        }
        (resources, removed)
    }

    /// Adds `r` to the response unless the client has this version.
    fn tell(&mut self, r: &crate::NamedResource, out: &mut Vec<WireResource>) {
        if matches!(self.told.get(&r.name, true), Some(Told::Has(v)) if v == r.version) {
            return;
        }
        out.push(WireResource {
            name: r.name.clone(),
            version: r.version.clone(),
            resource: r.encoded.clone(),
        });
        let told = Told::Has(r.version.clone());
        self.told.set(r.name.clone(), Some(told));
        self.last_changed.push(r.name.clone());
    }

    /// Reports `name` removed unless the client already knows it does not exist.
    fn tell_gone(&mut self, name: &Arc<str>, out: &mut Vec<String>) {
        if self.told.get(name, true) != Some(Told::DoesNotExist) {
            self.told.set(name.clone(), Some(Told::DoesNotExist));
            out.push(name.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::resource::{NamedResource, Resources};
    use crate::types::LISTENER;

    const T: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    fn res(pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .map(|(n, v)| {
                let body = Any {
                    type_url: T.into(),
                    value: v.as_bytes().to_vec(),
                };
                (n.to_string(), NamedResource::new(*n, *v, &body))
            })
            .collect()
    }

    fn published(pairs: &[(&str, &str)]) -> Arc<Publication> {
        Arc::new(Publication::new(res(pairs)))
    }

    fn sub(add: &[&str], remove: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: T.into(),
            resource_names_subscribe: add.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: remove.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn names(r: &WireDeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| &*r.name).collect()
    }

    #[test]
    fn sends_only_what_changed_and_reports_missing_names_as_removed() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        assert_eq!(
            s.handle_request(&sub(&["default", "ROOTCA", "nope"], &[], ""))
                .unwrap(),
            Step::Respond
        );
        let r = s
            .next_response(&published(&[("default", "1"), ("ROOTCA", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["ROOTCA", "default"]);
        assert_eq!(r.removed_resources, ["nope"]);
        assert!(
            s.next_response(&published(&[("default", "1"), ("ROOTCA", "1")]), None, &v)
                .is_none()
        );
        let r = s
            .next_response(&published(&[("default", "2"), ("ROOTCA", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["default"]);
        assert!(r.removed_resources.is_empty());
        let r = s
            .next_response(&published(&[("ROOTCA", "1")]), None, &v)
            .unwrap();
        assert_eq!(r.removed_resources, ["default"]);
    }

    #[test]
    fn initial_versions_avoid_resending_on_reconnect() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        let mut first = sub(&["a", "b"], &[], "");
        first
            .initial_resource_versions
            .insert("a".into(), "1".into());
        s.handle_request(&first).unwrap();
        let r = s
            .next_response(&published(&[("a", "1"), ("b", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["b"]);
    }

    #[test]
    fn subscription_changes_apply_even_with_a_stale_nonce() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        s.handle_request(&sub(&["a"], &[], "")).unwrap();
        let current = published(&[("a", "1"), ("b", "1")]);
        let _ = s.next_response(&current, None, &v).unwrap();
        assert_eq!(
            s.handle_request(&sub(&["b"], &[], "stale-nonce")).unwrap(),
            Step::Respond
        );
        assert_eq!(names(&s.next_response(&current, None, &v).unwrap()), ["b"]);
        // Unsubscribing needs no response and stops updates for that name.
        s.handle_request(&sub(&[], &["a"], "")).unwrap();
        assert!(
            s.next_response(&published(&[("a", "2"), ("b", "1")]), None, &v)
                .is_none()
        );
    }

    #[test]
    fn wildcard_sees_every_resource_and_resubscribing_resends() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        let mut first = sub(&[], &[], "");
        first.type_url = LISTENER.into();
        s.handle_request(&first).unwrap();
        assert!(s.is_wildcard());
        let current = published(&[("a", "1"), ("b", "1")]);
        assert_eq!(
            s.next_response(&current, None, &v).unwrap().resources.len(),
            2
        );
        let mut again = sub(&["a"], &[], "");
        again.type_url = LISTENER.into();
        s.handle_request(&again).unwrap();
        assert_eq!(names(&s.next_response(&current, None, &v).unwrap()), ["a"]);
    }

    #[test]
    fn secrets_have_no_wildcard_and_forgotten_names_are_resent() {
        let v = VersionSource::new(b"d");
        let current = published(&[("a", "1"), ("*", "1")]);
        let mut s = DeltaStream::new();
        s.handle_request(&sub(&[], &[], "")).unwrap();
        assert!(!s.is_wildcard());
        assert!(
            s.next_response(&current, None, &v).is_none(),
            "nothing asked, nothing sent"
        );
        s.handle_request(&sub(&["*"], &[], "")).unwrap();
        assert!(!s.is_wildcard());
        assert_eq!(names(&s.next_response(&current, None, &v).unwrap()), ["*"]);
        s.handle_request(&sub(&["a"], &[], "")).unwrap();
        assert_eq!(names(&s.next_response(&current, None, &v).unwrap()), ["a"]);
        assert_eq!(s.last_changed(), [Arc::from("a")]);
        s.forget(["a", "never-sent"]);
        let again = s.next_response(&current, None, &v).unwrap();
        assert_eq!(names(&again), ["a"]);
        assert!(again.removed_resources.is_empty());
    }

    #[test]
    fn nacks_are_recorded_for_the_latest_nonce_only() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        s.handle_request(&sub(&["a"], &[], "")).unwrap();
        let r = s
            .next_response(&published(&[("a", "1")]), None, &v)
            .unwrap();
        let mut nack = sub(&[], &[], "old");
        nack.error_detail = Some(Default::default());
        s.handle_request(&nack).unwrap();
        assert!(s.last_nack().is_none());
        nack.response_nonce = r.nonce.clone();
        nack.error_detail = Some(envoy_types::pb::google::rpc::Status {
            code: 3,
            message: "no".into(),
            details: vec![],
        });
        s.handle_request(&nack).unwrap();
        assert_eq!(s.last_nack().unwrap().message, "no");
        assert!(
            s.next_response(&published(&[("a", "1")]), None, &v)
                .is_none(),
            "a NACKed version is not resent"
        );
    }

    /// The stream's rules over a plain map of every name told: the reference the ledger must
    /// agree with.
    #[derive(Default)]
    struct Flat {
        names: BTreeSet<String>,
        wildcard: bool,
        started: bool,
        told: std::collections::BTreeMap<String, Option<String>>,
    }

    impl Flat {
        fn wants(&self, n: &str) -> bool {
            self.wildcard || self.names.contains(n)
        }

        fn request(&mut self, add: &[&str], remove: &[&str], wildcard_type: bool) {
            let first = !self.started;
            self.started = true;
            if first && wildcard_type && add.is_empty() && remove.is_empty() {
                self.wildcard = true;
            }
            for n in add {
                if *n == "*" && wildcard_type {
                    self.wildcard = true;
                } else if self.names.insert(n.to_string()) && !first {
                    self.told.remove(*n);
                }
            }
            for n in remove {
                if *n == "*" && wildcard_type {
                    self.wildcard = false;
                } else {
                    self.names.remove(*n);
                }
                if !self.wildcard {
                    self.told.remove(*n);
                }
            }
        }

        fn forget(&mut self, names: &[&str]) {
            for n in names {
                if matches!(self.told.get(*n), Some(Some(_))) {
                    self.told.remove(*n);
                }
            }
        }

        fn respond(&mut self, current: &Resources) -> (Vec<(String, String)>, Vec<String>) {
            let mut sent = Vec::new();
            let wanted: Vec<_> = current.values().filter(|r| self.wants(&r.name)).collect();
            for r in wanted {
                let v = Some(r.version.to_string());
                if self.told.get(&*r.name) != Some(&v) {
                    self.told.insert(r.name.to_string(), v);
                    sent.push((r.name.to_string(), r.version.to_string()));
                }
            }
            let gone: BTreeSet<String> = self
                .names
                .iter()
                .chain(self.told.keys())
                .filter(|n| !current.contains_key(*n) && self.wants(n))
                .cloned()
                .collect();
            let mut removed = Vec::new();
            for n in gone {
                if self.told.get(&n) != Some(&None) {
                    self.told.insert(n.clone(), None);
                    removed.push(n);
                }
            }
            sent.sort();
            removed.sort();
            (sent, removed)
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Subscribe(Vec<usize>),
        Unsubscribe(Vec<usize>),
        Forget(Vec<usize>),
        /// Versions of n0..n4 (0: absent); `true`: as the successor of the last publication.
        Publish(Vec<u8>, bool),
    }

    const POOL: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "*"];

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let picks = || proptest::collection::vec(0..POOL.len(), 0..3);
        prop_oneof![
            picks().prop_map(Op::Subscribe),
            picks().prop_map(Op::Unsubscribe),
            picks().prop_map(Op::Forget),
            (proptest::collection::vec(0u8..3, 5), any::<bool>())
                .prop_map(|(v, s)| Op::Publish(v, s)),
        ]
    }

    proptest::proptest! {
        /// Whatever the sequence of subscriptions, forgets and publications (successors or
        /// unrelated ones), the stream sends and removes exactly what the plain map says, and
        /// after each response the ledger keeps an exception only for names told gone and
        /// names held but no longer wanted.
        #[test]
        fn the_ledger_tells_what_a_plain_map_of_every_name_tells(
            wildcard_type in proptest::bool::ANY,
            first in proptest::collection::vec(0..POOL.len(), 0..3),
            ops in proptest::collection::vec((op(), proptest::bool::ANY), 1..30),
        ) {
            let type_url = if wildcard_type { LISTENER } else { T };
            let v = VersionSource::new(b"m");
            let mut stream = DeltaStream::new();
            let mut flat = Flat::default();
            let request = |add: &[&str], remove: &[&str]| DeltaDiscoveryRequest {
                type_url: type_url.into(),
                resource_names_subscribe: add.iter().map(|s| s.to_string()).collect(),
                resource_names_unsubscribe: remove.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            let first: Vec<&str> = first.iter().map(|i| POOL[*i]).collect();
            stream.handle_request(&request(&first, &[])).unwrap();
            flat.request(&first, &[], wildcard_type);
            let mut current = Arc::new(Publication::default());
            // The publication the stream last answered for: a successor of it may be hinted.
            let mut answered = 0;
            for (op, respond) in ops {
                match op {
                    Op::Subscribe(p) | Op::Unsubscribe(p) | Op::Forget(p) if p.is_empty() => {}
                    Op::Subscribe(p) => {
                        let n: Vec<&str> = p.iter().map(|i| POOL[*i]).collect();
                        stream.handle_request(&request(&n, &[])).unwrap();
                        flat.request(&n, &[], wildcard_type);
                    }
                    Op::Unsubscribe(p) => {
                        let n: Vec<&str> = p.iter().map(|i| POOL[*i]).collect();
                        stream.handle_request(&request(&[], &n)).unwrap();
                        flat.request(&[], &n, wildcard_type);
                    }
                    Op::Forget(p) => {
                        let n: Vec<&str> = p.iter().map(|i| POOL[*i]).collect();
                        stream.forget(n.iter().copied());
                        flat.forget(&n);
                    }
                    Op::Publish(versions, successor) => {
                        let pairs: Vec<(String, String)> = versions
                            .iter()
                            .enumerate()
                            .filter(|(_, v)| **v > 0)
                            .map(|(i, v)| (format!("n{i}"), v.to_string()))
                            .collect();
                        let refs: Vec<(&str, &str)> =
                            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                        current = if successor {
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
                let got = stream.next_response(&current, hint.as_deref(), &v);
                let mut sent: Vec<(String, String)> = got
                    .iter()
                    .flat_map(|r| &r.resources)
                    .map(|r| (r.name.to_string(), r.version.to_string()))
                    .collect();
                let mut removed: Vec<String> =
                    got.iter().flat_map(|r| r.removed_resources.clone()).collect();
                sent.sort();
                removed.sort();
                proptest::prop_assert_eq!((sent, removed), flat.respond(&current.resources));
                let departures = flat
                    .told
                    .iter()
                    .filter(|(n, t)| t.is_none() || !flat.wants(n))
                    .count();
                proptest::prop_assert_eq!(stream.told.exceptions(), departures);
            }
        }
    }
}
