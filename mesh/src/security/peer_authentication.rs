//! `PeerAuthentication`: the mTLS mode of a workload's inbound ports, set for the mesh (root
//! namespace, no selector), a namespace (no selector) or workloads (selector), and per port.
//! [`PeerPolicies::mode`] resolves it as istiod does: workload over namespace over mesh, the
//! oldest policy of a scope wins, UNSET inherits, and PERMISSIVE is the default.
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::load::Config;
use crate::meta::{Kind, Object, Spec};
use crate::networking::{Labels, MatchLabelsSelector};

/// `PeerAuthentication.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    pub selector: Option<MatchLabelsSelector>,
    pub mtls: Option<MutualTls>,
    /// By the workload's port (the port the application listens on).
    pub port_level_mtls: Option<BTreeMap<u32, MutualTls>>,
}

/// `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the scope above.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS and plaintext, told apart per connection.
    Permissive,
    /// mTLS only, with a client certificate from the trust bundle.
    Strict,
}

impl MtlsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "unset",
            MtlsMode::Disable => "disable",
            MtlsMode::Permissive => "permissive",
            MtlsMode::Strict => "strict",
        }
    }

    /// `self`, or `parent` where `self` is UNSET.
    fn or(self, parent: MtlsMode) -> MtlsMode {
        if self == MtlsMode::Unset {
            parent
        } else {
            self
        }
    }
}

impl PeerAuthentication {
    /// Whether the policy names workloads (a selector with labels) rather than its namespace.
    pub fn is_workload_scoped(&self) -> bool {
        self.selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    }

    fn selects(&self, labels: &Labels) -> bool {
        self.selector.as_ref().is_some_and(|s| {
            !s.match_labels.is_empty()
                && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    }

    fn mode(&self) -> MtlsMode {
        self.mtls.map(|m| m.mode).unwrap_or_default()
    }
}

/// The PeerAuthentications of one configuration, oldest first, ready to resolve for any
/// workload.
#[derive(Debug, Clone, Default)]
pub struct PeerPolicies<'a> {
    root_namespace: &'a str,
    /// (namespace, policy), oldest first: by creation time (objects without one, as in file
    /// mode, count as oldest), then namespace and name, as istiod orders them.
    policies: Vec<(&'a str, &'a PeerAuthentication)>,
}

fn age_key(o: &Object) -> (&str, &str, &str) {
    (
        o.metadata.creation_timestamp.as_deref().unwrap_or(""),
        o.metadata.namespace(),
        &o.metadata.name,
    )
}

impl<'a> PeerPolicies<'a> {
    pub fn new(config: &'a Config) -> Self {
        let mut objects: Vec<&Object> = config.of_kind(Kind::PeerAuthentication).collect();
        objects.sort_by(|a, b| age_key(a).cmp(&age_key(b)));
        let policies = objects
            .into_iter()
            .filter_map(|o| match &o.spec {
                Spec::PeerAuthentication(pa) => Some((o.metadata.namespace(), pa.as_ref())),
                _ => None,
            })
            .collect();
        Self {
            root_namespace: &config.mesh.root_namespace,
            policies,
        }
    }

    /// The mode of `port` (the workload's own port) of a workload in `namespace` with `labels`:
    /// never UNSET.
    pub fn mode(&self, namespace: &str, labels: &Labels, port: u32) -> MtlsMode {
        let namespace_wide = |ns: &str| {
            self.policies
                .iter()
                .find(|(n, p)| *n == ns && !p.is_workload_scoped())
                .map(|(_, p)| p.mode())
                .unwrap_or_default()
        };
        let workload = self
            .policies
            .iter()
            .find(|(n, p)| *n == namespace && p.selects(labels))
            .map(|(_, p)| *p);
        let inherited = namespace_wide(namespace)
            .or(namespace_wide(self.root_namespace))
            .or(MtlsMode::Permissive);
        let Some(workload) = workload else {
            return inherited;
        };
        let own = workload.mode().or(inherited);
        workload
            .port_level_mtls
            .as_ref()
            .and_then(|ports| ports.get(&port))
            .map_or(own, |m| m.mode.or(own))
    }
}
