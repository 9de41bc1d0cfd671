//! The Kubernetes envelope every manifest has (`apiVersion`, `kind`, `metadata`) and the kinds
//! this crate knows, with the API versions Istio serves them in.
use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry,
};
use crate::secret::{CORE_VERSIONS, Secret};
use crate::security::{AuthorizationPolicy, PeerAuthentication, SECURITY_GROUP, SECURITY_VERSIONS};

/// The API group of Istio's traffic kinds.
pub const NETWORKING_GROUP: &str = "networking.istio.io";
/// The versions Istio serves them in; the schemas are identical.
pub const NETWORKING_VERSIONS: [&str; 3] = ["v1", "v1beta1", "v1alpha3"];

/// The kinds this crate loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ServiceEntry,
    WorkloadEntry,
    VirtualService,
    DestinationRule,
    Sidecar,
    Gateway,
    PeerAuthentication,
    AuthorizationPolicy,
    /// Kubernetes' core `v1` Secret (group `""`).
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Sidecar,
        Kind::Gateway,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::Secret,
    ];

    /// The API group that serves the kind.
    pub fn group(self) -> &'static str {
        match self {
            Kind::PeerAuthentication | Kind::AuthorizationPolicy => SECURITY_GROUP,
            Kind::Secret => "",
            _ => NETWORKING_GROUP,
        }
    }

    /// The API versions of the kind's group; the schemas are identical in each.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            SECURITY_GROUP => &SECURITY_VERSIONS,
            "" => &CORE_VERSIONS,
            _ => &NETWORKING_VERSIONS,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Sidecar => "Sidecar",
            Kind::Gateway => "Gateway",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::Secret => "Secret",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata`: what citadel reads of it. Other Kubernetes fields (uid, resourceVersion,
/// managedFields, ...) are accepted and not used, so `kubectl get -o yaml` output loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    /// Defaults to `default`, as `kubectl apply` does.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; decides precedence where Istio says "the oldest wins".
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

impl ObjectMeta {
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }
}

/// A typed spec of one of the known kinds (boxed: specs differ a lot in size).
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    ServiceEntry(Box<ServiceEntry>),
    WorkloadEntry(Box<WorkloadEntry>),
    VirtualService(Box<VirtualService>),
    DestinationRule(Box<DestinationRule>),
    Sidecar(Box<Sidecar>),
    Gateway(Box<Gateway>),
    PeerAuthentication(Box<PeerAuthentication>),
    AuthorizationPolicy(Box<AuthorizationPolicy>),
    Secret(Box<Secret>),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::ServiceEntry(_) => Kind::ServiceEntry,
            Spec::WorkloadEntry(_) => Kind::WorkloadEntry,
            Spec::VirtualService(_) => Kind::VirtualService,
            Spec::DestinationRule(_) => Kind::DestinationRule,
            Spec::Sidecar(_) => Kind::Sidecar,
            Spec::Gateway(_) => Kind::Gateway,
            Spec::PeerAuthentication(_) => Kind::PeerAuthentication,
            Spec::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Spec::Secret(_) => Kind::Secret,
        }
    }
}

/// One loaded object.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: Spec,
}

impl Object {
    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    /// `Kind namespace/name`, as problems name objects.
    pub fn describe(&self) -> String {
        format!(
            "{} {}/{}",
            self.kind(),
            self.metadata.namespace(),
            self.metadata.name
        )
    }
}
