//! End to end through the real gRPC API and CLI: token → node SVID → renewal → workload SVID →
//! refusals → restart → same root, and every SVID still verifies.
mod common;

use std::time::SystemTime;

use citadel_api::ca::{AttestNodeRequest, CsrRequest};
use common::*;
use pki::{Usage, verify_svid};
use tonic::Code;

const NODE: &str = "spiffe://cluster.local/citadel/node/node-1";
const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_identity_lifecycle_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let bundle = citadel.bundle();
    let root_before = std::fs::read(dir.path().join("ca/root-cert.pem")).unwrap();

    // 1. Token → node SVID, over TLS without a client certificate.
    let token = citadel.token("node-1");
    let (node_key, csr) = key_and_csr(NODE);
    let mut anon = client(&citadel.grpc, &bundle, None);
    let resp = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, NODE);
    assert_eq!(resp.bundle.as_ref().unwrap().trust_domain, "cluster.local");
    let node_svid = svid_from(&resp, node_key);
    assert_eq!(
        verify_svid(node_svid.chain(), &bundle, SystemTime::now(), Usage::Client)
            .unwrap()
            .to_string(),
        NODE
    );

    // 2. The token is spent: a second attestation is Unauthenticated.
    let (_, csr) = key_and_csr(NODE);
    let err = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: token,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // 3. Renewal over mTLS with the node SVID.
    let mut node = client(&citadel.grpc, &bundle, Some(&node_svid));
    let (renew_key, csr) = key_and_csr(NODE);
    let renewed = node
        .renew_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let renewed = svid_from(&renewed, renew_key);
    assert_ne!(renewed.serial(), node_svid.serial());

    // 4. Workload SVID for an identity an entry assigns to this node.
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        WEB,
        "--node",
        "node-1",
        "--selector",
        "unix:uid:1000",
        "--ttl",
        "30m",
    ]);
    assert!(ok, "{err}");
    let (web_key, csr) = key_and_csr(WEB);
    let web = node
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let web_svid = svid_from(&web, web_key);
    assert_eq!(web_svid.spiffe_id().to_string(), WEB);
    let left = web_svid
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs();
    assert!(
        (30 * 60 - 10..=30 * 60).contains(&left),
        "entry TTL applies: {left}s left"
    );

    // 5. A foreign identity is PermissionDenied; so is renewing someone else's.
    let (_, csr) = key_and_csr("spiffe://cluster.local/ns/default/sa/admin");
    let err = node
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let (_, csr) = key_and_csr("spiffe://cluster.local/citadel/node/node-2");
    assert_eq!(
        node.renew_svid(CsrRequest {
            csr,
            ttl_seconds: 0
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
    // Without a client certificate, renewal and minting are Unauthenticated.
    let (_, csr) = key_and_csr(NODE);
    assert_eq!(
        anon.renew_svid(CsrRequest {
            csr,
            ttl_seconds: 0
        })
        .await
        .unwrap_err()
        .code(),
        Code::Unauthenticated
    );

    // 6. Restart: same root, old and new SVIDs verify against the bundle.
    citadel.stop();
    let citadel = Citadel::start(dir.path(), &[]);
    assert_eq!(
        std::fs::read(dir.path().join("ca/root-cert.pem")).unwrap(),
        root_before
    );
    let bundle_after = citadel.bundle();
    let mut node = client(&citadel.grpc, &bundle_after, Some(&renewed));
    let (web_key, csr) = key_and_csr(WEB);
    let web_after = svid_from(
        &node
            .mint_x509_svid(CsrRequest {
                csr,
                ttl_seconds: 0,
            })
            .await
            .unwrap()
            .into_inner(),
        web_key,
    );
    for svid in [&node_svid, &renewed, &web_svid, &web_after] {
        verify_svid(
            svid.chain(),
            &bundle_after,
            SystemTime::now(),
            Usage::Server,
        )
        .unwrap();
    }
    let serials: std::collections::HashSet<_> = [&node_svid, &renewed, &web_svid, &web_after]
        .iter()
        .map(|s| s.serial().to_string())
        .collect();
    assert_eq!(serials.len(), 4, "no serial repeats across the restart");

    // Every issuance and refusal left one audit line.
    let audit = audit_lines(dir.path());
    let issued: Vec<_> = audit
        .iter()
        .filter(|l| l["outcome"] == "issued" && l["method"] != "ServerCertificate")
        .collect();
    let refused: Vec<_> = audit.iter().filter(|l| l["outcome"] == "refused").collect();
    assert_eq!(issued.len(), 4, "{audit:#?}");
    assert_eq!(refused.len(), 4, "{audit:#?}");
    assert!(issued.iter().all(|l| l["serial"].is_string()
        && l["expires_at"].is_u64()
        && l["identity"].is_string()
        && l["caller"].is_string()));
    assert!(
        refused
            .iter()
            .any(|l| l["reason"] == "unauthenticated" && l["caller"] == "anonymous")
    );
    assert!(
        refused
            .iter()
            .any(|l| l["reason"] == "permission_denied" && l["caller"] == NODE)
    );
    let text = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(!text.contains("PRIVATE KEY"));
}
