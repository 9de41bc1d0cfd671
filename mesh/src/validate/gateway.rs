//! Gateway rules (Istio's `ValidateGateway`): servers with a named port, hosts in
//! `namespace/dnsName` form, TLS settings where the protocol needs them and only there, unique
//! port names; and what citadel's gateways cannot serve yet, refused by field.
use std::collections::BTreeSet;

use super::common::{Path, Report, dns_label, is_ip, labels, port, protocol, wildcard_domain};
use crate::networking::{Gateway, Server, ServerTlsMode, ServerTlsSettings};
use crate::secret::{Secret, TLS_TYPE};

pub(super) fn validate(report: &mut Report, path: &Path, gw: &Gateway) {
    labels(report, &path.field("selector"), &gw.selector);
    if gw.servers.is_empty() {
        report.error(
            &path.field("servers"),
            "gateway must have at least one server",
        );
    }
    let mut names = BTreeSet::new();
    for (i, s) in gw.servers.iter().enumerate() {
        let p = path.field("servers").index(i);
        server(report, &p, s);
        if let Some(sp) = &s.port
            && !sp.name.is_empty()
            && !names.insert(sp.name.as_str())
        {
            report.error(
                &p.field("port").field("name"),
                format!(
                    "port names in servers must be unique: duplicate name {}",
                    sp.name
                ),
            );
        }
    }
}

fn server(report: &mut Report, path: &Path, s: &Server) {
    if s.hosts.is_empty() {
        report.error(
            &path.field("hosts"),
            "server config must contain at least one host",
        );
    }
    for (i, h) in s.hosts.iter().enumerate() {
        report.check(&path.field("hosts").index(i), namespaced_host(h));
    }
    let Some(sp) = &s.port else {
        report.error(&path.field("port"), "port is required");
        return;
    };
    let pp = path.field("port");
    report.check(&pp.field("number"), port(sp.number));
    if sp.protocol.is_empty() {
        report.error(&pp.field("protocol"), "port protocol must be set");
    }
    report.check(&pp.field("protocol"), protocol(&sp.protocol));
    if sp.name.is_empty() {
        report.error(&pp.field("name"), "port name must be set");
    }
    let proto = sp.protocol.to_ascii_uppercase();
    let tls_protocol = matches!(proto.as_str(), "HTTPS" | "TLS");
    if !matches!(proto.as_str(), "HTTP" | "HTTP2" | "GRPC" | "HTTPS" | "TCP") {
        report.error(
            &pp.field("protocol"),
            format!(
                "{} servers are not supported by citadel's gateway yet (use HTTP, HTTP2, GRPC, HTTPS or TCP)",
                sp.protocol
            ),
        );
    }
    if let Some(b) = &s.bind
        && !is_ip(b)
    {
        report.error(
            &path.field("bind"),
            format!("{b:?} is not an IP address (citadel's gateway binds IPs only)"),
        );
    }
    if s.default_endpoint.is_some() {
        report.error(
            &path.field("defaultEndpoint"),
            "has no effect on gateways in citadel; remove it",
        );
    }
    let tp = path.field("tls");
    match &s.tls {
        None if tls_protocol => {
            report.error(&tp, "server must have TLS settings for HTTPS/TLS protocols")
        }
        None => {}
        Some(t) if !tls_protocol && t.https_redirect != Some(true) => report.error(
            &tp,
            "server cannot have TLS settings for plain text HTTP ports",
        ),
        Some(t) if tls_protocol => tls(report, &tp, t),
        Some(_) => {}
    }
}

fn tls(report: &mut Report, path: &Path, t: &ServerTlsSettings) {
    match t.mode {
        Some(ServerTlsMode::Simple) => {}
        None => report.error(&path.field("mode"), "required for HTTPS servers (SIMPLE)"),
        Some(other) => report.error(
            &path.field("mode"),
            format!("{other:?} is not supported by citadel's gateway yet (use SIMPLE)"),
        ),
    }
    if t.credential_name.is_none() {
        if t.server_certificate.as_deref().is_none_or(str::is_empty) {
            report.error(
                &path.field("serverCertificate"),
                "SIMPLE TLS requires a server certificate (or credentialName)",
            );
        }
        if t.private_key.as_deref().is_none_or(str::is_empty) {
            report.error(
                &path.field("privateKey"),
                "SIMPLE TLS requires a private key (or credentialName)",
            );
        }
    } else if let Some(name) = &t.credential_name
        && (name.is_empty() || name.contains("://"))
    {
        report.error(
            &path.field("credentialName"),
            format!("{name:?}: name a Secret in the gateway's namespace"),
        );
    }
    let unsupported = [
        ("caCertificates", t.ca_certificates.is_some()),
        ("caCrl", t.ca_crl.is_some()),
        ("caCertCredentialName", t.ca_cert_credential_name.is_some()),
        ("credentialNames", !t.credential_names.is_empty()),
        ("tlsCertificates", !t.tls_certificates.is_empty()),
        ("subjectAltNames", !t.subject_alt_names.is_empty()),
        (
            "verifyCertificateSpki",
            !t.verify_certificate_spki.is_empty(),
        ),
        (
            "verifyCertificateHash",
            !t.verify_certificate_hash.is_empty(),
        ),
    ];
    for (field, set) in unsupported {
        if set {
            report.error(
                &path.field(field),
                "client certificate settings need tls.mode MUTUAL, which citadel's gateway does not support yet",
            );
        }
    }
}

/// `namespace/dnsName` or `dnsName`; namespace `*`, `.` or a name; dnsName `*` or a domain.
fn namespaced_host(h: &str) -> Result<(), String> {
    let (ns, host) = h.split_once('/').unwrap_or(("*", h));
    if ns.is_empty() || host.is_empty() {
        return Err("namespace and dnsName in host entry cannot be empty".into());
    }
    if !matches!(ns, "*" | ".") && !dns_label(ns) {
        return Err(format!("invalid namespace value {ns:?} in gateway"));
    }
    if host == "*" {
        return Ok(());
    }
    if is_ip(host) {
        return Err(format!("{host:?}: a gateway host must be a domain name"));
    }
    wildcard_domain(host)
}

/// Secret rules, as warnings: a Secret nothing uses must not hold back the configuration, and
/// a gateway whose `credentialName` names a bad one leaves that server out (and says why).
/// Base64 `data`, the keys a `kubernetes.io/tls` Secret must have, PEM certificates.
pub(super) fn secret(report: &mut Report, path: &Path, s: &Secret) {
    for key in s.data.keys() {
        if let Err(e) = s.value(key) {
            report.warning(&path.field("data").key(key), e);
        }
    }
    if s.type_.as_deref() == Some(TLS_TYPE) {
        for key in ["tls.crt", "tls.key"] {
            if !s.data.contains_key(key) && !s.string_data.contains_key(key) {
                report.warning(
                    &path.field("data").key(key),
                    format!("required for type {TLS_TYPE}"),
                );
            }
        }
    }
    for key in ["tls.crt", "cert"] {
        if let Ok(Some(v)) = s.value(key)
            && !String::from_utf8_lossy(&v).contains("-----BEGIN CERTIFICATE-----")
        {
            report.warning(&path.field("data").key(key), "not a PEM certificate");
        }
    }
}
