//! Arbitrary AuthorizationPolicy YAML and an arbitrary request: the reference decision must
//! never panic and must keep Istio's order: a matching DENY denies; otherwise, with no ALLOW
//! policy the request is allowed, and with some, exactly when one matched; dry runs and AUDIT
//! policies change nothing about `allowed`; an extra allow-all ALLOW leaves exactly the DENY
//! decisions.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use mesh::security::authz::{HttpRequest, Request, evaluate};
use mesh::security::{Action, AuthorizationPolicy, NamedPolicy, Rule};

/// What requests are made of: values Istio's examples name, so the fuzzer meets matches.
const PRINCIPALS: [&str; 4] = [
    "spiffe://cluster.local/ns/foo/sa/sleep",
    "spiffe://cluster.local/ns/bar/sa/sleep",
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
    "spiffe://other.td/ns/foo/sa/sleep",
];
const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "HEAD"];
const PATHS: [&str; 4] = ["/headers", "/ip", "/admin/x", "/api/v1/data.json"];
const HOSTS: [&str; 4] = ["httpbin.foo", "httpbin.example.com", "a.b", ""];

// Input: 12 bytes of request (source and remote IPv4, port, a flags byte, an index byte),
// then the policies' YAML. Seeds are Istio's examples behind a request header.
fuzz_target!(|data: &[u8]| {
    if data.len() < 12 {
        return;
    }
    let (head, yaml) = data.split_at(12);
    let Ok(yaml) = std::str::from_utf8(yaml) else { return };
    let source: [u8; 4] = head[0..4].try_into().unwrap();
    let remote: [u8; 4] = head[4..8].try_into().unwrap();
    let port = u16::from_be_bytes([head[8], head[9]]);
    let (flags, pick) = (head[10], head[11] as usize);
    let (objects, _) = mesh::load_str(yaml, None);
    let policies: Vec<NamedPolicy<'_>> = objects
        .iter()
        .filter_map(|o| match &o.spec {
            mesh::Spec::AuthorizationPolicy(p) => Some(NamedPolicy {
                namespace: o.metadata.namespace(),
                name: &o.metadata.name,
                policy: p,
                dry_run: o
                    .metadata
                    .annotations
                    .get(mesh::security::DRY_RUN_ANNOTATION)
                    .is_some_and(|v| v == "true"),
            }),
            _ => None,
        })
        .collect();
    let headers = [("x-token", if flags & 4 != 0 { "admin" } else { "guest" })];
    let request = Request {
        principal: (flags & 1 != 0).then(|| PRINCIPALS[pick % 4]),
        source_ip: IpAddr::V4(Ipv4Addr::from(source)),
        remote_ip: IpAddr::V4(Ipv4Addr::from(remote)),
        destination_ip: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        destination_port: port,
        sni: (flags & 8 != 0).then_some("httpbin.foo.svc.cluster.local"),
        http: (flags & 2 != 0).then(|| HttpRequest {
            host: HOSTS[(pick >> 2) % 4],
            method: METHODS[(pick >> 4) % 4],
            path: PATHS[(pick >> 6) % 4],
            headers: &headers,
        }),
    };
    let td = "cluster.local";
    let d = evaluate(&policies, td, &request);
    let any_allow = policies
        .iter()
        .any(|p| !p.dry_run && p.policy.action == Action::Allow);
    if d.denied_by.is_some() {
        assert!(!d.allowed, "{d:?}");
    } else if !any_allow {
        assert!(d.allowed, "no DENY matched and no ALLOW applies: {d:?}");
    } else {
        assert_eq!(d.allowed, !d.allowed_by.is_empty(), "one ALLOW must match: {d:?}");
    }
    let enforced: Vec<NamedPolicy<'_>> = policies.iter().filter(|p| !p.dry_run).cloned().collect();
    assert_eq!(evaluate(&enforced, td, &request), d, "dry runs decide nothing");
    let no_audit: Vec<NamedPolicy<'_>> = policies
        .iter()
        .filter(|p| p.policy.action != Action::Audit)
        .cloned()
        .collect();
    assert_eq!(evaluate(&no_audit, td, &request).allowed, d.allowed, "AUDIT decides nothing");
    let allow_all = AuthorizationPolicy {
        action: Action::Allow,
        rules: vec![Rule::default()],
        ..Default::default()
    };
    let mut with_all = policies.clone();
    with_all.push(NamedPolicy { namespace: "x", name: "allow-all", policy: &allow_all, dry_run: false });
    let e = evaluate(&with_all, td, &request);
    assert_eq!(e.allowed, d.denied_by.is_none(), "{d:?} {e:?}");
});
