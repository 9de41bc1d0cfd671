//! Mesh-wide settings from `mesh.yaml`: the subset of Istio's MeshConfig citadel honours. Other
//! MeshConfig fields are reported as warnings (not honoured), never silently dropped.
use serde::Deserialize;

use crate::duration::GoDuration;
use crate::error::Problem;
use crate::networking::OutboundMode;
use crate::validate::{Path, Report};

/// The file name in a config directory that holds mesh settings.
pub const MESH_FILE: &str = "mesh.yaml";

/// Mesh-wide settings, with Istio's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshConfig {
    pub trust_domain: String,
    /// Where mesh-wide policy lives.
    pub root_namespace: String,
    pub outbound_traffic_policy: OutboundMode,
    /// Default connect timeout of outbound clusters.
    pub connect_timeout: GoDuration,
    /// 0 disables protocol detection timeouts.
    pub protocol_detection_timeout: GoDuration,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            outbound_traffic_policy: OutboundMode::AllowAny,
            connect_timeout: GoDuration(std::time::Duration::from_secs(10)),
            protocol_detection_timeout: GoDuration::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OutboundPolicyYaml {
    /// The proto's zero value: an explicit `{}` means REGISTRY_ONLY, as in Istio.
    #[serde(default)]
    mode: OutboundMode,
}

/// The fields honoured; the rest are collected to warn about.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshYaml {
    trust_domain: Option<String>,
    root_namespace: Option<String>,
    outbound_traffic_policy: Option<OutboundPolicyYaml>,
    connect_timeout: Option<GoDuration>,
    protocol_detection_timeout: Option<GoDuration>,
    #[serde(flatten)]
    other: std::collections::BTreeMap<String, serde_yaml_ng::Value>,
}

impl MeshConfig {
    /// Parses `mesh.yaml` text; errors and warnings carry field paths.
    pub fn parse(text: &str) -> Result<(Self, Vec<Problem>), Vec<Problem>> {
        let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text)
            .map_err(|e| vec![Problem::error("", format!("invalid YAML: {e}"))])?;
        if value.is_null() {
            return Ok((Self::default(), vec![]));
        }
        let yaml: MeshYaml = serde_path_to_error::deserialize(value)
            .map_err(|e| vec![Problem::error(e.path().to_string(), e.inner().to_string())])?;
        let mut report = Report::default();
        let mut mesh = Self::default();
        if let Some(td) = yaml.trust_domain {
            let ok = !td.is_empty()
                && td
                    .trim_end_matches('.')
                    .split('.')
                    .all(crate::validate::is_dns_label);
            if !ok {
                report.error(
                    &Path::root().field("trustDomain"),
                    format!("trust domain name {td:?} invalid"),
                );
            }
            mesh.trust_domain = td;
        }
        if let Some(ns) = yaml.root_namespace {
            if !crate::validate::is_dns_label(&ns) {
                report.error(
                    &Path::root().field("rootNamespace"),
                    format!("{ns:?} is not a valid namespace"),
                );
            }
            mesh.root_namespace = ns;
        }
        if let Some(p) = yaml.outbound_traffic_policy {
            mesh.outbound_traffic_policy = p.mode;
        }
        if let Some(t) = yaml.connect_timeout {
            let d = t.as_duration();
            if d < std::time::Duration::from_millis(1) || d > std::time::Duration::from_secs(3600) {
                report.error(
                    &Path::root().field("connectTimeout"),
                    "must be between 1ms and 1h",
                );
            }
            mesh.connect_timeout = t;
        }
        if let Some(t) = yaml.protocol_detection_timeout {
            mesh.protocol_detection_timeout = t;
        }
        for key in yaml.other.keys() {
            report.warning(&Path::root().field(key), "not honoured by citadel; ignored");
        }
        let (errors, warnings): (Vec<Problem>, Vec<Problem>) = report
            .problems
            .into_iter()
            .partition(|p| p.severity == crate::Severity::Error);
        if errors.is_empty() {
            Ok((mesh, warnings))
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let (m, w) = MeshConfig::parse("").unwrap();
        assert_eq!(m, MeshConfig::default());
        assert!(w.is_empty());
        let (m, w) = MeshConfig::parse(
            "trustDomain: example.org\noutboundTrafficPolicy:\n  mode: REGISTRY_ONLY\nconnectTimeout: 2s\nenableTracing: true\n",
        )
        .unwrap();
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(m.outbound_traffic_policy, OutboundMode::RegistryOnly);
        assert_eq!(
            m.connect_timeout.as_duration(),
            std::time::Duration::from_secs(2)
        );
        assert_eq!(w[0].path, "enableTracing");
        let (m, _) = MeshConfig::parse("outboundTrafficPolicy: {}\n").unwrap();
        assert_eq!(
            m.outbound_traffic_policy,
            OutboundMode::RegistryOnly,
            "proto zero value"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = MeshConfig::parse("outboundTrafficPolicy:\n  mode: SOMETIMES\n").unwrap_err();
        assert_eq!(e[0].path, "outboundTrafficPolicy.mode");
        let e = MeshConfig::parse("connectTimeout: 2h\n").unwrap_err();
        assert_eq!(e[0].path, "connectTimeout");
        let e = MeshConfig::parse("trustDomain: Bad_Domain\n").unwrap_err();
        assert_eq!(e[0].path, "trustDomain");
    }
}
