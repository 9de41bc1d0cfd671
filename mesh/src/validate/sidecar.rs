//! Sidecar rules: ingress listeners and their default endpoints, egress hosts in
//! `namespace/host` form, Unix-socket binds, and the outbound policy.
use std::collections::BTreeSet;

use super::common::{
    Path, Report, dns_label, is_ip, port, protocol, selector_labels, wildcard_domain,
};
use crate::networking::{CaptureMode, OutboundMode, Sidecar, SidecarPort};

pub(super) fn validate(report: &mut Report, path: &Path, sc: &Sidecar) {
    if let Some(sel) = &sc.workload_selector {
        selector_labels(
            report,
            &path.field("workloadSelector").field("labels"),
            &sel.labels,
        );
    }
    if sc.ingress.is_empty()
        && sc.egress.is_empty()
        && sc.outbound_traffic_policy.is_none()
        && sc.inbound_connection_pool.is_none()
    {
        report.error(path, "sidecar: empty configuration provided");
    }
    let mut bound = BTreeSet::new();
    for (i, ing) in sc.ingress.iter().enumerate() {
        let p = path.field("ingress").index(i);
        match &ing.port {
            Some(sp) => {
                sidecar_port(report, &p.field("port"), sp);
                report.check(&p.field("port").field("number"), port(sp.number));
                if !bound.insert((ing.bind.clone(), sp.number)) {
                    report.error(
                        &p.field("port"),
                        "ports on IP bound listeners must be unique",
                    );
                }
            }
            None => report.error(&p.field("port"), "port is required for ingress listeners"),
        }
        if let Some(b) = &ing.bind
            && !is_ip(b)
        {
            report.error(&p.field("bind"), format!("{b:?} is not a valid IP"));
        }
        if let Some(ep) = &ing.default_endpoint {
            report.check(&p.field("defaultEndpoint"), default_endpoint(ep));
        }
    }
    let mut catch_all = 0;
    let mut sockets = BTreeSet::new();
    let mut egress_bound = BTreeSet::new();
    for (i, eg) in sc.egress.iter().enumerate() {
        let p = path.field("egress").index(i);
        match &eg.port {
            None => {
                catch_all += 1;
                if i + 1 != sc.egress.len() {
                    report.error(&p, "the egress listener with empty port should be the last listener in the list");
                }
            }
            Some(sp) if sp.number == 0 => {
                let bind = eg.bind.as_deref().unwrap_or("");
                if !bind.starts_with("unix://") {
                    report.error(
                        &p.field("bind"),
                        "ports with 0 value must have a unix domain socket bind address",
                    );
                }
                if eg.capture_mode == CaptureMode::Iptables {
                    report.error(
                        &p.field("captureMode"),
                        "captureMode must be DEFAULT/NONE for unix domain socket listeners",
                    );
                }
                if !sockets.insert(bind.to_string()) {
                    report.error(
                        &p.field("bind"),
                        "unix domain socket values for listeners must be unique",
                    );
                }
            }
            Some(sp) => {
                sidecar_port(report, &p.field("port"), sp);
                report.check(&p.field("port").field("number"), port(sp.number));
                if let Some(b) = &eg.bind
                    && !is_ip(b)
                {
                    report.error(&p.field("bind"), format!("{b:?} is not a valid IP"));
                }
                if !egress_bound.insert((eg.bind.clone(), sp.number)) {
                    report.error(
                        &p.field("port"),
                        "ports on IP bound listeners must be unique",
                    );
                }
            }
        }
        if eg.hosts.is_empty() {
            report.error(
                &p.field("hosts"),
                "egress listener must contain at least one host",
            );
        }
        for (j, h) in eg.hosts.iter().enumerate() {
            report.check(&p.field("hosts").index(j), namespaced_host(h));
        }
    }
    if catch_all > 1 {
        report.error(
            &path.field("egress"),
            "egress can have only one listener with empty port",
        );
    }
    if let Some(otp) = &sc.outbound_traffic_policy
        && let Some(proxy) = &otp.egress_proxy
    {
        let p = path.field("outboundTrafficPolicy").field("egressProxy");
        if otp.mode != OutboundMode::AllowAny {
            report.error(
                &p,
                "egressProxy must be set only with ALLOW_ANY outbound traffic policy mode",
            );
        }
        report.check(&p.field("host"), super::common::fqdn(&proxy.host));
        if proxy.port.is_none() {
            report.error(&p.field("port"), "egressProxy port must be set");
        }
    }
}

fn sidecar_port(report: &mut Report, path: &Path, sp: &SidecarPort) {
    if !sp.name.is_empty() && !dns_label(&sp.name) {
        report.error(
            &path.field("name"),
            format!("invalid port name {:?}", sp.name),
        );
    }
    report.check(&path.field("protocol"), protocol(&sp.protocol));
    if sp.target_port.is_some() {
        report.warning(
            &path.field("targetPort"),
            "targetPort has no impact on Sidecars",
        );
    }
}

/// `127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix:///path`.
fn default_endpoint(ep: &str) -> Result<(), String> {
    if let Some(path) = ep.strip_prefix("unix://") {
        return if path.starts_with('/') || path.starts_with('@') {
            Ok(())
        } else {
            Err(format!("{path} is not an absolute path to a file"))
        };
    }
    let form = "defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:<port>, [::]:<port>, unix://filepath or unset";
    let (host, p) = ep.rsplit_once(':').ok_or_else(|| form.to_string())?;
    if !["127.0.0.1", "0.0.0.0", "[::1]", "[::]", ""].contains(&host) {
        return Err(form.into());
    }
    let n: u32 = p
        .parse()
        .map_err(|_| format!("defaultEndpoint port ({p}) is not a number"))?;
    port(n)
}

/// `namespace/dnsName`, namespace `*`, `.`, `~` or a name; dnsName `*` or a domain with a dot.
fn namespaced_host(h: &str) -> Result<(), String> {
    let (ns, host) = h
        .split_once('/')
        .ok_or("host must be of form namespace/dnsName")?;
    if ns.is_empty() || host.is_empty() {
        return Err("namespace and dnsName in host entry cannot be empty".into());
    }
    if !matches!(ns, "*" | "." | "~") && !dns_label(ns) {
        return Err(format!("invalid namespace value {ns:?} in sidecar"));
    }
    if host == "*" {
        return Ok(());
    }
    if !host.contains('.') {
        return Err(format!("{host:?}: short names (non FQDN) are not allowed"));
    }
    wildcard_domain(host)
}
