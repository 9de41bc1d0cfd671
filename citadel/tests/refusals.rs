//! Bad input gets the right gRPC status, an audit line, a metric, and changes nothing.
mod common;

use citadel_api::ca::{AttestNodeRequest, CsrRequest};
use common::*;
use tonic::Code;

const NODE: &str = "spiffe://cluster.local/citadel/node/n1";

fn count(metrics: &str, needle: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(needle))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attestation_refusals_leave_the_token_unspent() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let bundle = citadel.bundle();
    let mut anon = client(&citadel.grpc, &bundle, None);
    let token = citadel.token("n1");

    // Malformed CSR → InvalidArgument.
    let err = anon
        .attest_node(AttestNodeRequest {
            csr: b"garbage".to_vec(),
            join_token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // A CSR for another trust domain → InvalidArgument.
    let (_, csr) = key_and_csr("spiffe://evil.org/citadel/node/n1");
    assert_eq!(
        anon.attest_node(AttestNodeRequest {
            csr,
            join_token: token.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    // A CSR for a node the token was not made for → PermissionDenied.
    let (_, csr) = key_and_csr("spiffe://cluster.local/citadel/node/n2");
    assert_eq!(
        anon.attest_node(AttestNodeRequest {
            csr,
            join_token: token.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    // A CSR over 64 KiB is refused before parsing; a message over the transport limit never
    // reaches the handler.
    let big = vec![0u8; 65 * 1024];
    let err = anon
        .attest_node(AttestNodeRequest {
            csr: big,
            join_token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let huge = vec![0u8; 200 * 1024];
    let err = anon
        .attest_node(AttestNodeRequest {
            csr: huge,
            join_token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // Unknown token → Unauthenticated.
    let (_, csr) = key_and_csr(NODE);
    assert_eq!(
        anon.attest_node(AttestNodeRequest {
            csr,
            join_token: "0".repeat(64)
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );

    // None of that spent the token.
    let (_, csr) = key_and_csr(NODE);
    let ok = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, NODE);

    let audit = audit_lines(dir.path());
    let reasons: Vec<_> = audit
        .iter()
        .filter(|l| l["outcome"] == "refused")
        .map(|l| l["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        reasons,
        [
            "csr_malformed",
            "csr_wrong_trust_domain",
            "permission_denied",
            "csr_too_large",
            "unauthenticated"
        ]
    );

    let metrics = citadel.metrics().await;
    assert_eq!(
        count(
            &metrics,
            "citadel_svids_issued_total{method=\"AttestNode\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        count(&metrics, "citadel_svid_requests_refused_total{"),
        5,
        "{metrics}"
    );
    assert_eq!(
        count(
            &metrics,
            "citadel_svid_requests_refused_total{method=\"AttestNode\",reason=\"csr_malformed\"}"
        ),
        1,
        "{metrics}"
    );
    assert_eq!(count(&metrics, "citadel_sign_duration_seconds_count"), 1);
    let root_left = count(&metrics, "citadel_root_cert_expiry_seconds");
    assert!(root_left > 9 * 365 * 86400, "{root_left}");
    assert!(count(&metrics, "citadel_intermediate_cert_expiry_seconds") > 300 * 86400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_rejected_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let other = Citadel::start(other_dir.path(), &[]);
    // A node SVID from the other citadel (same trust domain, different root).
    let (key, csr) = key_and_csr(NODE);
    let mut other_anon = client(&other.grpc, &other.bundle(), None);
    let resp = other_anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: other.token("n1"),
        })
        .await
        .unwrap()
        .into_inner();
    let stranger = svid_from(&resp, key);
    let mut c = client(&citadel.grpc, &citadel.bundle(), Some(&stranger));
    let (_, csr) = key_and_csr(NODE);
    let err = c
        .renew_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    // The server's verifier rejects the chain during the handshake: the client sees the
    // UnknownCA alert, or (TLS 1.3 sends the client's certificate after its Finished) just the
    // connection closing or a write into it failing, depending on timing.
    let text = format!("{err:?}");
    assert!(
        text.contains("UnknownCA")
            || text.contains("connection closed")
            || text.contains("broken pipe")
            || text.contains("Connection reset"),
        "{text}"
    );
    assert!(
        audit_lines(dir.path())
            .iter()
            .all(|l| l["method"] != "RenewSvid"),
        "no request reached the CA"
    );
}

#[test]
fn cli_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["token", "create", "--node", "n1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("citadel is not running with --data-dir"),
        "{err}"
    );

    let citadel = Citadel::start(dir.path(), &[]);
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://evil.org/x",
        "--node",
        "n1",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("not in trust domain cluster.local"),
        "{err}"
    );
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://cluster.local/x",
        "--node",
        "n1",
        "--selector",
        "unix:pid:1",
    ]);
    assert!(!ok && err.contains("unknown unix selector key"), "{err}");
    let (ok, _, err) = citadel.cli(&["entry", "delete", "--id", "nope"]);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, _, err) = citadel.cli(&["token", "create", "--node", "a/b"]);
    assert!(!ok && err.contains("invalid node name"), "{err}");
    let (ok, _, err) = citadel.cli(&["token", "create", "--node", "n1", "--ttl", "soon"]);
    assert!(!ok && err.contains("--ttl"), "{err}");
    // A second server on the same data directory refuses to start.
    let out = std::process::Command::new(BIN)
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--monitoring",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
}
