//! Incremental (delta) streams (`DeltaDiscoveryRequest`/`DeltaDiscoveryResponse`): only changed
//! resources are sent, names that do not exist go to `removed_resources`, subscription changes
//! apply even with a stale nonce, and `initial_resource_versions` is honoured on reconnect.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::resource::Resources;
use crate::types::is_wildcard_type;
use crate::version::VersionSource;
use crate::wire::{WireDeltaDiscoveryResponse, WireResource};
use crate::{Nack, ProtocolError, Step};

/// What the client was last told about a name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Told {
    Has(Arc<str>),
    DoesNotExist,
}

/// One delta stream of one type.
#[derive(Debug, Default)]
pub struct DeltaStream {
    type_url: Option<String>,
    names: BTreeSet<Arc<str>>,
    wildcard: bool,
    started: bool,
    told: BTreeMap<Arc<str>, Told>,
    last_nonce: Option<String>,
    last_nack: Option<Nack>,
    last_changed: Vec<Arc<str>>,
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
            if matches!(self.told.get(name), Some(Told::Has(_))) {
                self.told.remove(name);
            }
        }
    }

    /// Applies a request. Subscription changes apply whatever the nonce says (the spec requires
    /// it for delta); ACKs and NACKs count only for the latest nonce.
    pub fn handle_request(&mut self, req: &DeltaDiscoveryRequest) -> Result<Step, ProtocolError> {
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
                self.told
                    .insert(name.as_str().into(), Told::Has(version.as_str().into()));
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
                self.wildcard = true;
            } else if self.names.insert(crate::intern::intern(name)) {
                // A (re)subscribed name must be (re)sent even if the client had it before,
                // unless this is the reconnect that declared what the client holds.
                if !first {
                    self.told.remove(name.as_str());
                }
                changed = true;
            } else if !self.told.contains_key(name.as_str()) {
                changed = true;
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" && wildcard_type {
                self.wildcard = false;
            } else {
                self.names.remove(name.as_str());
            }
            if !self.wildcard {
                self.told.remove(name.as_str());
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

    /// The changes to send for `current`, or `None` when the client is up to date. With
    /// `hint`, the client is known to be up to date with a state that differs from `current` only
    /// in the hinted names, and only those are looked at.
    pub fn next_response(
        &mut self,
        current: &Resources,
        hint: Option<&[Arc<str>]>,
        versions: &VersionSource,
    ) -> Option<WireDeltaDiscoveryResponse> {
        let type_url = self.type_url.clone()?;
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
                    .chain(self.told.keys())
                    .filter(|n| !current.contains_key(&***n) && self.wants(n))
                    .cloned()
                    .collect();
                for name in gone {
                    self.tell_gone(&name, &mut removed);
                }
            }
        }
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

    /// Adds `r` to the response unless the client has this version.
    fn tell(&mut self, r: &crate::NamedResource, out: &mut Vec<WireResource>) {
        if matches!(self.told.get(&*r.name), Some(Told::Has(v)) if *v == r.version) {
            return;
        }
        out.push(WireResource {
            name: r.name.clone(),
            version: r.version.clone(),
            resource: r.encoded.clone(),
        });
        self.told
            .insert(r.name.clone(), Told::Has(r.version.clone()));
        self.last_changed.push(r.name.clone());
    }

    /// Reports `name` removed unless the client already knows it does not exist.
    fn tell_gone(&mut self, name: &Arc<str>, out: &mut Vec<String>) {
        if self.told.get(&**name) != Some(&Told::DoesNotExist) {
            self.told.insert(name.clone(), Told::DoesNotExist);
            out.push(name.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;

    use super::*;
    use crate::resource::NamedResource;
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
            .next_response(&res(&[("default", "1"), ("ROOTCA", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["ROOTCA", "default"]);
        assert_eq!(r.removed_resources, ["nope"]);
        assert!(
            s.next_response(&res(&[("default", "1"), ("ROOTCA", "1")]), None, &v)
                .is_none()
        );
        let r = s
            .next_response(&res(&[("default", "2"), ("ROOTCA", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["default"]);
        assert!(r.removed_resources.is_empty());
        let r = s.next_response(&res(&[("ROOTCA", "1")]), None, &v).unwrap();
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
            .next_response(&res(&[("a", "1"), ("b", "1")]), None, &v)
            .unwrap();
        assert_eq!(names(&r), ["b"]);
    }

    #[test]
    fn subscription_changes_apply_even_with_a_stale_nonce() {
        let v = VersionSource::new(b"d");
        let mut s = DeltaStream::new();
        s.handle_request(&sub(&["a"], &[], "")).unwrap();
        let current = res(&[("a", "1"), ("b", "1")]);
        let _ = s.next_response(&current, None, &v).unwrap();
        assert_eq!(
            s.handle_request(&sub(&["b"], &[], "stale-nonce")).unwrap(),
            Step::Respond
        );
        assert_eq!(names(&s.next_response(&current, None, &v).unwrap()), ["b"]);
        // Unsubscribing needs no response and stops updates for that name.
        s.handle_request(&sub(&[], &["a"], "")).unwrap();
        assert!(
            s.next_response(&res(&[("a", "2"), ("b", "1")]), None, &v)
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
        let current = res(&[("a", "1"), ("b", "1")]);
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
        let current = res(&[("a", "1"), ("*", "1")]);
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
        let r = s.next_response(&res(&[("a", "1")]), None, &v).unwrap();
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
            s.next_response(&res(&[("a", "1")]), None, &v).is_none(),
            "a NACKed version is not resent"
        );
    }
}
