//! ServiceEntry and WorkloadEntry rules: hosts, addresses, ports, and endpoints per resolution.
use std::collections::BTreeSet;

use super::common::{
    Path, Report, dns_label, export_to, fqdn, ip_or_cidr, is_cidr, is_ip, labels, port, protocol,
    selector_labels, wildcard_domain,
};
use crate::networking::{Resolution, ServiceEntry, WorkloadEntry};

pub(super) fn validate(report: &mut Report, path: &Path, se: &ServiceEntry) {
    if se.hosts.is_empty() {
        report.error(
            &path.field("hosts"),
            "service entry must have at least one host",
        );
    }
    for (i, host) in se.hosts.iter().enumerate() {
        let p = path.field("hosts").index(i);
        if host == "*" {
            report.error(&p, "invalid host *");
        } else {
            report.check(&p, wildcard_domain(host));
        }
    }
    for (i, a) in se.addresses.iter().enumerate() {
        let p = path.field("addresses").index(i);
        report.check(&p, ip_or_cidr(a));
        if is_cidr(a) && !matches!(se.resolution, Resolution::None | Resolution::Static) {
            report.error(
                &p,
                "CIDR addresses are allowed only for NONE/STATIC resolution types",
            );
        }
    }
    let mut names = BTreeSet::new();
    let mut numbers = BTreeSet::new();
    for (i, sp) in se.ports.iter().enumerate() {
        let p = path.field("ports").index(i);
        report.check(&p.field("number"), port(sp.number));
        if !numbers.insert(sp.number) {
            report.error(
                &p.field("number"),
                format!("port {} already defined", sp.number),
            );
        }
        if sp.name.is_empty() {
            report.error(&p.field("name"), "required");
        } else if !dns_label(&sp.name) {
            report.error(&p.field("name"), format!("invalid port name {:?}", sp.name));
        }
        if !names.insert(sp.name.as_str()) {
            report.error(
                &p.field("name"),
                format!("port name {:?} already defined", sp.name),
            );
        }
        report.check(&p.field("protocol"), protocol(&sp.protocol));
        if let Some(t) = sp.target_port {
            report.check(&p.field("targetPort"), port(t));
        }
    }
    if se.workload_selector.is_some() && !se.endpoints.is_empty() {
        report.error(path, "only one of workloadSelector or endpoints is allowed");
    }
    if let Some(sel) = &se.workload_selector {
        selector_labels(
            report,
            &path.field("workloadSelector").field("labels"),
            &sel.labels,
        );
    }
    let endpoints = path.field("endpoints");
    match se.resolution {
        Resolution::None if !se.endpoints.is_empty() => {
            report.error(
                &endpoints,
                "no endpoints should be provided for resolution type NONE",
            );
        }
        Resolution::Static => {
            for (i, e) in se.endpoints.iter().enumerate() {
                let p = endpoints.index(i);
                if !is_ip(&e.address) && !e.address.starts_with("unix://") {
                    report.error(
                        &p.field("address"),
                        format!("endpoint address {:?} is not a valid IP address", e.address),
                    );
                }
                endpoint(report, &p, e, &names);
            }
        }
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
            if se.endpoints.is_empty() {
                for (i, host) in se.hosts.iter().enumerate() {
                    if fqdn(host).is_err() {
                        report.error(
                            &path.field("hosts").index(i),
                            "hosts must be FQDN if no endpoints are provided for DNS resolution",
                        );
                    }
                }
            }
            if se.resolution == Resolution::DnsRoundRobin && se.endpoints.len() > 1 {
                report.error(
                    &endpoints,
                    "there must only be 0 or 1 endpoint for resolution mode DNS_ROUND_ROBIN",
                );
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                let p = endpoints.index(i);
                if !is_ip(&e.address) && fqdn(&e.address).is_err() {
                    report.error(
                        &p.field("address"),
                        format!(
                            "endpoint address {:?} is not a valid FQDN or an IP address",
                            e.address
                        ),
                    );
                }
                endpoint(report, &p, e, &names);
            }
        }
        Resolution::None => {}
    }
    export_to(report, &path.field("exportTo"), &se.export_to, true);
}

/// An endpoint inside a ServiceEntry: its ports must be the entry's.
fn endpoint(report: &mut Report, path: &Path, e: &WorkloadEntry, port_names: &BTreeSet<&str>) {
    workload_entry(report, path, e, false);
    for name in e.ports.keys() {
        if !port_names.contains(name.as_str()) {
            report.error(
                &path.field("ports").key(name),
                format!("endpoint port {name:?} is not defined by the service entry"),
            );
        }
    }
}

/// A WorkloadEntry's own rules; `standalone` for the WorkloadEntry kind, where the address may
/// also be a host name.
pub(super) fn workload_entry(
    report: &mut Report,
    path: &Path,
    e: &WorkloadEntry,
    standalone: bool,
) {
    let addr = path.field("address");
    if e.address.is_empty() {
        if e.network.is_empty() {
            report.error(&addr, "address is required");
        }
    } else if let Some(uds) = e.address.strip_prefix("unix://") {
        if uds.is_empty() {
            report.error(&addr, "unix address must not be empty");
        } else if !uds.starts_with('/') && !uds.starts_with('@') {
            report.error(&addr, format!("{uds} is not an absolute path to a file"));
        }
        if !e.ports.is_empty() {
            report.error(
                &path.field("ports"),
                "unix endpoints must not include ports",
            );
        }
    } else if standalone && !is_ip(&e.address) && fqdn(&e.address).is_err() {
        report.error(
            &addr,
            format!(
                "endpoint address {:?} is not a valid FQDN or an IP address",
                e.address
            ),
        );
    }
    for (name, number) in &e.ports {
        let p = path.field("ports").key(name);
        if !dns_label(name) {
            report.error(&p, format!("invalid port name {name:?}"));
        }
        report.check(&p, port(*number));
    }
    labels(report, &path.field("labels"), &e.labels);
    if !e.service_account.is_empty() && !e.service_account.split('.').all(dns_label) {
        report.error(
            &path.field("serviceAccount"),
            format!(
                "{:?} is not a valid service account name",
                e.service_account
            ),
        );
    }
}
