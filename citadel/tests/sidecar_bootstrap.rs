//! `citadel sidecar bootstrap`: the Envoy bootstrap for a WorkloadEntry carries Istio's node id
//! and metadata and only the ADS and SDS sources, and a real Envoy validates it, for both ways
//! of reaching the discovery server.
use std::process::Command;

const CONFIG: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: bookinfo}
spec: {address: 198.18.0.21, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews}
";

fn bootstrap(config_dir: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["sidecar", "bootstrap", "--config-dir"])
        .arg(config_dir)
        .args(["--agent-socket", "/run/citadel-agent/api.sock"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn envoy_validates(yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bootstrap.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(testkit::envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("OK"),
        "{text}\n{yaml}"
    );
}

#[test]
fn the_bootstrap_names_the_workload_and_envoy_accepts_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("workloads.yaml"), CONFIG).unwrap();

    let (ok, yaml, err) = bootstrap(dir.path(), &["--workload", "bookinfo/reviews-v1"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
    assert_eq!(
        v["node"]["id"],
        "sidecar~198.18.0.21~reviews-v1.bookinfo~bookinfo.svc.cluster.local"
    );
    assert_eq!(v["node"]["cluster"], "reviews.bookinfo");
    assert_eq!(v["node"]["metadata"]["SERVICE_ACCOUNT"], "bookinfo-reviews");
    assert_eq!(v["node"]["metadata"]["LABELS"]["version"], "v1");
    assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 15000);
    let clusters: Vec<&str> = v["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        clusters,
        ["sds-grpc", "xds-grpc"],
        "nothing but the ADS and SDS sources"
    );
    assert!(v["static_resources"]["listeners"].is_null());
    envoy_validates(&yaml);

    // Straight to citadel over mTLS, checking citadel's own SPIFFE ID.
    let (ok, yaml, err) = bootstrap(
        dir.path(),
        &[
            "--workload",
            "bookinfo/reviews-v1",
            "--xds",
            "198.18.0.1:15012",
            "--router",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        yaml.contains("spiffe://cluster.local/citadel/server")
            && yaml.contains("router~198.18.0.21~"),
        "{yaml}"
    );
    envoy_validates(&yaml);

    let (ok, _, err) = bootstrap(dir.path(), &["--workload", "bookinfo/ratings-v1"]);
    assert!(!ok);
    assert!(
        err.contains("no WorkloadEntry bookinfo/ratings-v1 in the configuration"),
        "{err}"
    );
}
