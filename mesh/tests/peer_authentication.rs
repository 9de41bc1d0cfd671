//! PeerAuthentication: Istio's reference examples load unchanged and resolve as istiod resolves
//! them (workload over namespace over mesh, oldest first, UNSET inherits, port-level last).
use std::collections::BTreeMap;
use std::path::Path;

use mesh::security::{MtlsMode, PeerPolicies};
use mesh::{Config, MeshConfig, load_file, load_str};

fn example(name: &str) -> Vec<mesh::Object> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/istio")
        .join(name);
    let (objects, problems) = load_file(&file);
    assert!(problems.is_empty(), "{problems:?}");
    objects
}

fn config(objects: Vec<mesh::Object>) -> Config {
    Config {
        objects: objects.into_iter().map(std::sync::Arc::new).collect(),
        mesh: MeshConfig::default(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const MESH_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn istios_examples_resolve_per_workload_and_port() {
    use MtlsMode::*;
    let finance = labels(&[("app", "finance")]);
    let other = labels(&[("app", "reviews")]);

    let c = config(example("peer-authentication-namespace-strict.yaml"));
    let p = PeerPolicies::new(&c);
    assert_eq!(p.mode("foo", &other, 9080), Strict);
    assert_eq!(p.mode("bar", &other, 9080), Permissive, "the default");

    let c = config(example("peer-authentication-finance-strict.yaml"));
    let p = PeerPolicies::new(&c);
    assert_eq!(p.mode("foo", &finance, 9080), Strict);
    assert_eq!(p.mode("foo", &other, 9080), Permissive);
    assert_eq!(
        p.mode("bar", &finance, 9080),
        Permissive,
        "a selector applies in its own namespace only"
    );

    let c = config(example(
        "peer-authentication-finance-port-8080-disable.yaml",
    ));
    let p = PeerPolicies::new(&c);
    assert_eq!(p.mode("foo", &finance, 8080), Disable);
    assert_eq!(p.mode("foo", &finance, 9080), Strict);

    // UNSET inherits the namespace, else the mesh; the port still overrides.
    let mut objects = example("peer-authentication-finance-unset-8080-disable.yaml");
    let c = config(objects.clone());
    assert_eq!(
        PeerPolicies::new(&c).mode("foo", &finance, 9080),
        Permissive
    );
    objects.extend(load_str(MESH_STRICT, None).0);
    let c = config(objects);
    let p = PeerPolicies::new(&c);
    assert_eq!(p.mode("foo", &finance, 9080), Strict);
    assert_eq!(p.mode("foo", &finance, 8080), Disable);
    assert_eq!(p.mode("bar", &other, 9080), Strict, "mesh-wide");
}

#[test]
fn the_oldest_policy_of_a_scope_wins_and_a_root_namespace_selector_is_a_workload_policy() {
    use MtlsMode::*;
    let text = "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: b-newer, namespace: foo, creationTimestamp: '2026-01-02T00:00:00Z'}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: a-older, namespace: foo, creationTimestamp: '2026-01-01T00:00:00Z'}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: only-some, namespace: istio-system}
spec: {selector: {matchLabels: {app: gw}}, mtls: {mode: DISABLE}}
";
    let (objects, problems) = load_str(text, None);
    assert!(problems.is_empty(), "{problems:?}");
    let c = config(objects);
    let p = PeerPolicies::new(&c);
    assert_eq!(p.mode("foo", &labels(&[]), 80), Strict);
    let gw = labels(&[("app", "gw")]);
    assert_eq!(p.mode("istio-system", &gw, 80), Disable);
    assert_eq!(
        p.mode("bar", &gw, 80),
        Permissive,
        "not mesh-wide: it has a selector"
    );
}

#[test]
fn invalid_policies_are_refused_with_the_field() {
    let errors = |spec: &str| -> Vec<String> {
        let text = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: p, namespace: foo}}\nspec: {spec}\n"
        );
        let (objects, problems) = load_str(&text, Some(Path::new("pa.yaml")));
        assert!(objects.is_empty(), "{spec}: loaded");
        problems.iter().map(ToString::to_string).collect()
    };
    let e = errors("{portLevelMtls: {8080: {mode: DISABLE}}}");
    assert!(
        e[0].contains("pa.yaml: PeerAuthentication foo/p: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS"),
        "{e:?}"
    );
    let e = errors("{selector: {matchLabels: {app: x}}, portLevelMtls: {0: {mode: DISABLE}}}");
    assert!(
        e[0].contains("spec.portLevelMtls[0]: port must be 1..=65535"),
        "{e:?}"
    );
    let e = errors("{mtls: {mode: STRICTER}}");
    assert!(
        e[0].contains("spec.mtls.mode: unknown variant `STRICTER`"),
        "{e:?}"
    );
    let e = errors("{mtls: {mode: STRICT}, mtlsMode: STRICT}");
    assert!(e[0].contains("unknown field `mtlsMode`"), "{e:?}");
    let text = "apiVersion: security.istio.io/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {}\n";
    let (_, problems) = load_str(text, None);
    assert!(
        problems[0]
            .to_string()
            .contains("security.istio.io serves PeerAuthentication as v1, v1beta1"),
        "{problems:?}"
    );
}
