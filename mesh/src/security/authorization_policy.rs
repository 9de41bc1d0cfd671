//! `AuthorizationPolicy`: who may call a workload and how, field for field as Istio's YAML
//! writes it. [`AuthzPolicies::for_workload`] finds the policies that apply to one workload
//! (mesh-wide in the root namespace, namespace-wide, or by selector); `authz::evaluate` is the
//! reference decision.
use serde::Deserialize;

use crate::load::Config;
use crate::meta::{Kind, Object, Spec};
use crate::networking::{Labels, MatchLabelsSelector};

/// `AuthorizationPolicy.spec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicy {
    pub selector: Option<MatchLabelsSelector>,
    /// Waypoint and Gateway API attachment: refused by validation (sidecars only).
    pub target_ref: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_yaml_ng::Value>,
    /// No rules: an ALLOW policy matches nothing (so it denies everything); a DENY or AUDIT
    /// policy matches nothing (so it does nothing).
    #[serde(default)]
    pub rules: Vec<Rule>,
    #[serde(default)]
    pub action: Action,
    /// The extension provider of a CUSTOM policy.
    pub provider: Option<Provider>,
}

/// `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    #[default]
    Allow,
    Deny,
    Audit,
    /// External authorization: validated, then refused as unsupported.
    Custom,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
            Action::Custom => "custom",
        }
    }
}

/// `AuthorizationPolicy.ExtensionProvider`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

/// `Rule`: matches when every one of `from`, `to` and `when` does (each absent part matches);
/// `{}` matches every request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Any one source matches.
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    /// Any one operation matches.
    #[serde(default)]
    pub to: Vec<RuleTo>,
    /// Every condition matches.
    #[serde(default)]
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    pub source: Option<Source>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    pub operation: Option<Operation>,
}

/// `Source`: every field set must match; within a field any value does, and a `not` field
/// matches when none of its values does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Peer identities as `TRUST_DOMAIN/ns/NS/sa/SA` (the SPIFFE ID without `spiffe://`).
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    /// JWT identities: refused by validation until JWT authentication exists.
    #[serde(default)]
    pub request_principals: Vec<String>,
    #[serde(default)]
    pub not_request_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// Peer addresses or CIDRs (the connection's source address).
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    /// Client addresses as `X-Forwarded-For` reports them (else the connection's).
    #[serde(default)]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_remote_ip_blocks: Vec<String>,
}

/// `Operation`, matched like [`Source`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Operation {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
}

/// `Condition`: the attribute `key` has one of `values` and none of `not_values`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

impl Source {
    /// Whether the source names anything only an HTTP request has.
    pub fn has_http_only(&self) -> bool {
        !self.request_principals.is_empty() || !self.not_request_principals.is_empty()
    }
}

impl Operation {
    /// Whether the operation names anything only an HTTP request has.
    pub fn has_http_only(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }
}

impl Rule {
    /// Whether the rule names anything only an HTTP request has, so a TCP connection cannot
    /// be checked against all of it.
    pub fn has_http_only(&self) -> bool {
        self.from
            .iter()
            .any(|f| f.source.as_ref().is_some_and(Source::has_http_only))
            || self
                .to
                .iter()
                .any(|t| t.operation.as_ref().is_some_and(Operation::has_http_only))
            || self.when.iter().any(Condition::is_http_only)
    }
}

impl Condition {
    /// Whether the key is an HTTP request's attribute (headers, JWT claims).
    pub fn is_http_only(&self) -> bool {
        self.key.starts_with("request.")
    }
}

impl AuthorizationPolicy {
    fn selects(&self, labels: &Labels) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }
}

/// The annotation that makes a policy a dry run: evaluated and counted, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// One policy as it applies: its namespace and name (for counters and logs) and its spec.
#[derive(Debug, Clone, Copy)]
pub struct NamedPolicy<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub policy: &'a AuthorizationPolicy,
    /// `istio.io/dry-run: "true"`: decisions are counted as if enforced, and not enforced.
    pub dry_run: bool,
}

/// The AuthorizationPolicies of one configuration, ready to select for any workload.
#[derive(Debug, Clone, Default)]
pub struct AuthzPolicies<'a> {
    root_namespace: &'a str,
    /// In namespace, then name order, so what a workload gets is stable.
    policies: Vec<NamedPolicy<'a>>,
}

impl<'a> AuthzPolicies<'a> {
    pub fn new(config: &'a Config) -> Self {
        let mut policies: Vec<NamedPolicy<'a>> = config
            .of_kind(Kind::AuthorizationPolicy)
            .filter_map(|o: &'a Object| match &o.spec {
                Spec::AuthorizationPolicy(p) => Some(NamedPolicy {
                    namespace: o.metadata.namespace(),
                    name: &o.metadata.name,
                    policy: p.as_ref(),
                    dry_run: o
                        .metadata
                        .annotations
                        .get(DRY_RUN_ANNOTATION)
                        .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                }),
                _ => None,
            })
            .collect();
        policies.sort_by(|a, b| (a.namespace, a.name).cmp(&(b.namespace, b.name)));
        Self {
            root_namespace: &config.mesh.root_namespace,
            policies,
        }
    }

    /// The policies that apply to a workload in `namespace` with `labels`: those of the root
    /// namespace (mesh-wide, or by selector in every namespace) and of its own namespace
    /// (namespace-wide, or by selector). Unlike PeerAuthentication, all of them apply together.
    pub fn for_workload(&self, namespace: &str, labels: &Labels) -> Vec<NamedPolicy<'a>> {
        self.policies
            .iter()
            .filter(|p| {
                (p.namespace == self.root_namespace || p.namespace == namespace)
                    && p.policy.target_ref.is_none()
                    && p.policy.target_refs.is_empty()
                    && p.policy.selects(labels)
            })
            .copied()
            .collect()
    }
}
