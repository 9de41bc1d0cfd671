//! PeerAuthentication rules (istio/istio:pkg/config/validation `ValidatePeerAuthentication`):
//! port-level modes only for workload policies, no port 0, a well-formed selector.
use super::common::{Path, Report, selector_labels};
use crate::security::PeerAuthentication;

pub(super) fn validate(report: &mut Report, path: &Path, pa: &PeerAuthentication) {
    if let Some(sel) = &pa.selector {
        selector_labels(
            report,
            &path.field("selector").field("matchLabels"),
            &sel.match_labels,
        );
    }
    let Some(ports) = &pa.port_level_mtls else {
        return;
    };
    let p = path.field("portLevelMtls");
    if !pa.is_workload_scoped() {
        report.error(
            &p,
            "mesh/namespace peer authentication cannot have port level mTLS (portLevelMtls needs a selector with labels)",
        );
    }
    if ports.is_empty() {
        report.error(
            &p,
            "port level mTLS, if defined, must have at least one element",
        );
    }
    for port in ports.keys() {
        if *port == 0 || *port > 65535 {
            report.error(&p.key(&port.to_string()), "port must be 1..=65535");
        }
    }
}
