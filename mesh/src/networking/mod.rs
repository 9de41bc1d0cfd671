//! The `networking.istio.io` kinds, field for field as Istio's YAML writes them (camelCase;
//! unknown fields are refused so a typo never passes as "unset"). Deprecated fields Istio still
//! accepts are accepted here too. Durations use Go syntax ([`GoDuration`]).
use std::collections::BTreeMap;

use serde::Deserialize;

pub mod delegate;
pub mod destination_rule;
pub mod gateway;
pub mod service_entry;
pub mod sidecar;
pub mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;

pub use crate::GoDuration;

/// Label keys and values.
pub type Labels = BTreeMap<String, String>;

/// `WorkloadSelector` (networking.v1alpha3): which workloads a resource applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    #[serde(default)]
    pub labels: Labels,
}

/// `istio.type.v1beta1.WorkloadSelector`, as DestinationRule spells it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchLabelsSelector {
    #[serde(default)]
    pub match_labels: Labels,
}

/// A string match: at most one of the three (Istio's oneof).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    /// RE2 syntax.
    pub regex: Option<String>,
}

/// `PortSelector`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortSelector {
    #[serde(default)]
    pub number: u32,
}

/// Where traffic goes: a service host, optionally a subset and a port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Destination {
    #[serde(default)]
    pub host: String,
    pub subset: Option<String>,
    pub port: Option<PortSelector>,
}

/// `Percent`: a fraction 0.0..=100.0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Percent {
    #[serde(default)]
    pub value: f64,
}
