//! Istio's validation rules for each kind (what `istioctl validate` and istiod's webhook
//! check), reported as [`Problem`]s with the field path. The rules follow
//! `istio/istio:pkg/config/validation`; messages say what is wrong and what is allowed.
mod authorization_policy;
mod common;
mod destination_rule;
mod gateway;
mod peer_authentication;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use common::{Path, Report, dns_label as is_dns_label};

use crate::error::Problem;
use crate::meta::{Object, Spec};

/// Every problem of one object, paths starting at `spec` (and `metadata`).
pub fn object(object: &Object) -> Vec<Problem> {
    let mut report = Report::default();
    common::object_name(
        &mut report,
        &Path::root().field("metadata"),
        &object.metadata,
    );
    let spec = Path::root().field("spec");
    match &object.spec {
        Spec::VirtualService(vs) => virtual_service::validate(&mut report, &spec, vs),
        Spec::DestinationRule(dr) => destination_rule::validate(&mut report, &spec, dr),
        Spec::ServiceEntry(se) => service_entry::validate(&mut report, &spec, se),
        Spec::WorkloadEntry(we) => service_entry::workload_entry(&mut report, &spec, we, true),
        Spec::Sidecar(sc) => sidecar::validate(&mut report, &spec, sc),
        Spec::PeerAuthentication(pa) => peer_authentication::validate(&mut report, &spec, pa),
        Spec::AuthorizationPolicy(ap) => authorization_policy::validate(&mut report, &spec, ap),
        Spec::Gateway(gw) => gateway::validate(&mut report, &spec, gw),
        // A Secret's payload is top-level.
        Spec::Secret(secret) => gateway::secret(&mut report, &Path::root(), secret),
    }
    report.problems
}
