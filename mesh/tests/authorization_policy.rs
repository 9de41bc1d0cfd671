//! AuthorizationPolicy: Istio's own examples (the authorization tasks and the reference page,
//! unchanged) load or are refused with the field named, and the reference decision gives the
//! outcomes those pages describe.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use mesh::security::authz::{Decision, HttpRequest, Request, evaluate};
use mesh::security::{AuthzPolicies, NamedPolicy};
use mesh::{Config, MeshConfig, load_file};

/// The objects of an example, which loads with no error (warnings are allowed).
fn example(name: &str) -> Vec<mesh::Object> {
    let (objects, problems) = load_file(&path(name));
    assert!(errors(&problems).is_empty(), "{name}: {problems:?}");
    objects
}

fn errors(problems: &[mesh::ConfigError]) -> Vec<&mesh::ConfigError> {
    problems
        .iter()
        .filter(|p| p.problem.severity == mesh::Severity::Error)
        .collect()
}

fn path(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/istio")
        .join(name)
}

fn config(names: &[&str]) -> Config {
    Config {
        objects: names
            .iter()
            .flat_map(|n| example(n))
            .map(std::sync::Arc::new)
            .collect(),
        mesh: MeshConfig::default(),
    }
}

fn labels(app: &str) -> BTreeMap<String, String> {
    [("app".to_string(), app.to_string())].into()
}

/// A request to a workload: `principal` the caller's SPIFFE ID, if any.
struct Call<'a> {
    principal: Option<&'a str>,
    source: &'a str,
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    port: u16,
    http: bool,
}

impl Default for Call<'_> {
    fn default() -> Self {
        Self {
            principal: Some("spiffe://cluster.local/ns/default/sa/sleep"),
            source: "10.0.0.9",
            method: "GET",
            path: "/",
            headers: &[],
            port: 8000,
            http: true,
        }
    }
}

fn decide(config: &Config, ns: &str, app: &str, call: Call<'_>) -> Decision {
    let policies: Vec<NamedPolicy<'_>> = AuthzPolicies::new(config).for_workload(ns, &labels(app));
    let ip: IpAddr = call.source.parse().unwrap();
    let request = Request {
        principal: call.principal,
        source_ip: ip,
        remote_ip: ip,
        destination_ip: "10.0.0.1".parse().unwrap(),
        destination_port: call.port,
        sni: None,
        http: call.http.then_some(HttpRequest {
            host: "svc",
            method: call.method,
            path: call.path,
            headers: call.headers,
        }),
    };
    evaluate(&policies, &config.mesh.trust_domain, &request)
}

fn allowed(config: &Config, ns: &str, app: &str, call: Call<'_>) -> bool {
    decide(config, ns, app, call).allowed
}

#[test]
fn every_istio_example_loads_or_is_refused_by_field() {
    let refused = [
        (
            "authorization-policy-ext-authz-httpbin.yaml",
            "spec.action",
            "CUSTOM",
        ),
        (
            "authorization-policy-reference-custom-ingress.yaml",
            "spec.action",
            "CUSTOM",
        ),
        (
            "authorization-policy-require-jwt.yaml",
            "spec.rules[0].from[0].source.requestPrincipals",
            "JWT",
        ),
        (
            "authorization-policy-reference-httpbin-allow.yaml",
            "spec.rules[0].when[0].key",
            "JWT",
        ),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/istio");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_str().unwrap().to_string();
        if !name.starts_with("authorization-policy-") {
            continue;
        }
        let (objects, problems) = load_file(&file);
        match refused.iter().find(|(n, _, _)| *n == name) {
            Some((_, field, word)) => {
                let text = problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                assert!(objects.is_empty(), "{name} must not load");
                assert!(
                    text.contains(&name) && text.contains(field) && text.contains(word),
                    "{name}: {text}"
                );
            }
            None => {
                assert!(errors(&problems).is_empty(), "{name}: {problems:?}");
                assert_eq!(objects.len(), 1, "{name}");
                loaded += 1;
                // Istio's warning: a DENY of HTTP attributes with no port denies TCP ports.
                let warned = problems
                    .iter()
                    .any(|p| p.problem.message.contains("denies all traffic"));
                let expected = [
                    "authorization-policy-deny-method-get.yaml",
                    "authorization-policy-deny-method-get-x-token.yaml",
                    "authorization-policy-deny-path-headers-dry-run.yaml",
                    "authorization-policy-reference-httpbin-deny-dev-post.yaml",
                ];
                assert_eq!(
                    warned,
                    expected.contains(&name.as_str()),
                    "{name}: {problems:?}"
                );
            }
        }
    }
    assert_eq!(loaded, 16, "the Istio examples that citadel enforces");
}

#[test]
fn the_http_task_allow_nothing_then_viewers() {
    let nothing = config(&["authorization-policy-allow-nothing.yaml"]);
    assert!(!allowed(
        &nothing,
        "default",
        "productpage",
        Call::default()
    ));
    assert!(
        allowed(&nothing, "foo", "productpage", Call::default()),
        "allow-nothing is namespace-wide: other namespaces are open"
    );

    let viewers = config(&[
        "authorization-policy-allow-nothing.yaml",
        "authorization-policy-productpage-viewer.yaml",
        "authorization-policy-details-viewer.yaml",
    ]);
    assert!(allowed(&viewers, "default", "productpage", Call::default()));
    let post = Call {
        method: "POST",
        ..Default::default()
    };
    assert!(!allowed(&viewers, "default", "productpage", post));
    let from_productpage = Call {
        principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        ..Default::default()
    };
    let d = decide(&viewers, "default", "details", from_productpage);
    assert!(d.allowed);
    assert_eq!(d.allowed_by, ["default/details-viewer"]);
    assert!(
        !allowed(&viewers, "default", "details", Call::default()),
        "details admits only productpage's principal"
    );
    assert!(
        !allowed(&viewers, "default", "reviews", Call::default()),
        "no viewer for reviews yet"
    );
    let plaintext = Call {
        principal: None,
        ..Default::default()
    };
    assert!(allowed(&viewers, "default", "productpage", plaintext));
}

#[test]
fn the_deny_task_deny_beats_allow_and_not_values() {
    let get = config(&["authorization-policy-deny-method-get.yaml"]);
    let d = decide(&get, "foo", "httpbin", Call::default());
    assert_eq!(d.denied_by.as_deref(), Some("foo/deny-method-get"));
    let post = Call {
        method: "POST",
        ..Default::default()
    };
    assert!(allowed(&get, "foo", "httpbin", post));

    let token = config(&[
        "authorization-policy-deny-method-get-x-token.yaml",
        "authorization-policy-allow-path-ip.yaml",
    ]);
    let admin_ip = Call {
        path: "/ip",
        headers: &[("x-token", "admin")],
        ..Default::default()
    };
    assert!(allowed(&token, "foo", "httpbin", admin_ip));
    let other_ip = Call {
        path: "/ip",
        headers: &[("x-token", "guest")],
        ..Default::default()
    };
    assert!(
        !allowed(&token, "foo", "httpbin", other_ip),
        "denied unless x-token: admin"
    );
    let no_token = Call {
        path: "/ip",
        ..Default::default()
    };
    assert!(
        !allowed(&token, "foo", "httpbin", no_token),
        "an absent header is not `admin`"
    );
    let admin_headers = Call {
        path: "/headers",
        headers: &[("X-Token", "admin")],
        ..Default::default()
    };
    assert!(
        !allowed(&token, "foo", "httpbin", admin_headers),
        "not denied, but not allowed either: only /ip is"
    );
}

#[test]
fn the_tcp_task_ports_and_fail_closed() {
    let tcp = |port| Call {
        port,
        http: false,
        ..Default::default()
    };
    let ports = config(&["authorization-policy-tcp-policy-allow-ports.yaml"]);
    assert!(allowed(&ports, "foo", "tcp-echo", tcp(9000)));
    assert!(allowed(&ports, "foo", "tcp-echo", tcp(9001)));
    assert!(!allowed(&ports, "foo", "tcp-echo", tcp(9002)));

    let get = config(&["authorization-policy-tcp-policy-allow-get-port-9000.yaml"]);
    assert!(
        !allowed(&get, "foo", "tcp-echo", tcp(9000)),
        "an ALLOW rule naming methods cannot match a TCP connection: nothing is allowed"
    );
    let deny = config(&["authorization-policy-tcp-policy-deny-get-port-9000.yaml"]);
    assert!(
        !allowed(&deny, "foo", "tcp-echo", tcp(9000)),
        "a DENY rule naming methods denies the whole port on TCP"
    );
    assert!(allowed(&deny, "foo", "tcp-echo", tcp(9001)));
}

#[test]
fn reference_examples_deny_audit_allow_all_dry_run_and_ip_blocks() {
    let dev = config(&["authorization-policy-reference-httpbin-deny-dev-post.yaml"]);
    let from_dev = |method| Call {
        principal: Some("spiffe://cluster.local/ns/dev/sa/client"),
        method,
        ..Default::default()
    };
    assert!(!allowed(&dev, "foo", "httpbin", from_dev("POST")));
    assert!(allowed(&dev, "foo", "httpbin", from_dev("GET")));

    let all = config(&[
        "authorization-policy-reference-allow-all.yaml",
        "authorization-policy-deny-method-get.yaml",
    ]);
    let put = Call {
        method: "PUT",
        principal: None,
        ..Default::default()
    };
    assert!(
        allowed(&all, "foo", "httpbin", put),
        "`{{}}` matches everything"
    );

    let audit = config(&["authorization-policy-reference-audit.yaml"]);
    let profile = Call {
        path: "/user/profile/alice",
        ..Default::default()
    };
    let d = decide(&audit, "ns1", "myapi", profile);
    assert!(d.allowed, "AUDIT never decides");
    assert_eq!(d.audited_by, ["ns1/anyname"]);

    let dry = config(&["authorization-policy-deny-path-headers-dry-run.yaml"]);
    let policies = AuthzPolicies::new(&dry).for_workload("default", &labels("httpbin"));
    assert!(policies[0].dry_run);
    let headers = Call {
        path: "/headers",
        ..Default::default()
    };
    assert!(
        allowed(&dry, "default", "httpbin", headers),
        "a dry run enforces nothing"
    );

    let ingress = config(&["authorization-policy-ingress-ip-blocks.yaml"]);
    let from = |source| Call {
        source,
        principal: None,
        ..Default::default()
    };
    for ns in ["istio-system", "gateways"] {
        assert!(allowed(
            &ingress,
            ns,
            "istio-ingressgateway",
            from("5.6.7.8")
        ));
        assert!(allowed(
            &ingress,
            ns,
            "istio-ingressgateway",
            from("1.2.3.4")
        ));
        assert!(
            !allowed(&ingress, ns, "istio-ingressgateway", from("9.9.9.9")),
            "a root-namespace selector applies in every namespace"
        );
    }
    assert!(allowed(&ingress, "foo", "httpbin", from("9.9.9.9")));
}

#[test]
fn principals_name_the_trust_domain_or_cluster_local() {
    let text = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sleep-only, namespace: foo}
spec:
  rules:
  - from:
    - source: {principals: [cluster.local/ns/foo/sa/sleep]}
";
    let (objects, problems) = mesh::load_str(text, None);
    assert!(problems.is_empty());
    let mut c = Config {
        objects: objects.into_iter().map(std::sync::Arc::new).collect(),
        mesh: MeshConfig::default(),
    };
    c.mesh.trust_domain = "example.org".into();
    let caller = |p| Call {
        principal: Some(p),
        ..Default::default()
    };
    assert!(allowed(
        &c,
        "foo",
        "httpbin",
        caller("spiffe://example.org/ns/foo/sa/sleep")
    ));
    assert!(
        !allowed(
            &c,
            "foo",
            "httpbin",
            caller("spiffe://cluster.local/ns/foo/sa/sleep")
        ),
        "cluster.local means the mesh's own trust domain, not a foreign one of that name"
    );
}

#[test]
fn bad_policies_name_the_field() {
    let cases = [
        (
            "rules: [{from: [{}]}]",
            "spec.rules[0].from[0].source",
            "required",
        ),
        (
            "rules: [{from: [{source: {}}]}]",
            "spec.rules[0].from[0].source",
            "must not be empty",
        ),
        (
            "rules: [{to: [{operation: {ports: [\"http\"]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
            "invalid port",
        ),
        (
            "rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
            "CIDR",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
            "empty value",
        ),
        (
            "rules: [{to: [{operation: {paths: [\"/api/{*}/x\"]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
            "template",
        ),
        (
            "rules: [{when: [{key: request.time, values: [x]}]}]",
            "spec.rules[0].when[0].key",
            "unknown attribute",
        ),
        (
            "rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0]",
            "values",
        ),
        (
            "rules: [{when: [{key: destination.port, values: [\"99999\"]}]}]",
            "spec.rules[0].when[0].values[0]",
            "invalid port",
        ),
        (
            "action: DENY\nprovider: {name: x}",
            "spec.provider",
            "only allowed when action is CUSTOM",
        ),
        (
            "action: CUSTOM",
            "spec.provider",
            "required when action is CUSTOM",
        ),
        (
            "action: DENY",
            "spec.rules",
            "DENY action without `rules` is meaningless",
        ),
        (
            "targetRef: {kind: Gateway, name: gw}",
            "spec.targetRef",
            "waypoint",
        ),
        ("action: MAYBE", "spec.action", "unknown variant"),
    ];
    for (spec, field, word) in cases {
        let text = format!(
            "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: foo}}\nspec:\n  {}\n",
            spec.replace('\n', "\n  ")
        );
        let (objects, problems) = mesh::load_str(&text, Some(Path::new("ap.yaml")));
        let text = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(objects.is_empty(), "{spec} must be refused");
        assert!(
            text.contains("ap.yaml")
                && text.contains("AuthorizationPolicy foo/p")
                && text.contains(field)
                && text.contains(word),
            "{spec}: {text}"
        );
    }
}
