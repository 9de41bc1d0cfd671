//! Istio's CreateCertificate, the bundle watch stream, and plug-in CA mode.
mod common;

use std::time::{Duration, SystemTime};

use citadel_api::ca::{AttestNodeRequest, TrustBundleRequest, WatchEntriesRequest};
use citadel_api::istio::IstioCertificateRequest;
use common::*;
use pki::identity::parse_trust_domain;
use pki::issue::SigningCaParams;
use pki::pem::{encode_certificate, encode_certificates, parse_certificates};
use pki::{CertificateAuthority, KeyAlgorithm, PrivateKey, TrustBundle, Usage, verify_svid};
use tokio_stream::StreamExt;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_create_certificate_follows_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let node = attested_node(&citadel).await;
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://cluster.local/ns/default/sa/web",
        "--node",
        "n1",
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(ok, "{err}");
    let mut istio = istio_client(&citadel, &node);

    let resp = istio
        .create_certificate(IstioCertificateRequest {
            csr: pem_csr("spiffe://cluster.local/ns/default/sa/web"),
            validity_duration: 600,
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Leaf first, root last, one PEM certificate per element.
    assert_eq!(resp.cert_chain.len(), 3);
    let certs: Vec<_> = resp
        .cert_chain
        .iter()
        .map(|p| parse_certificates(p).unwrap().remove(0))
        .collect();
    assert_eq!(
        encode_certificate(&certs[2]),
        std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap()
    );
    let id = verify_svid(
        &certs[..2],
        &citadel.bundle(),
        SystemTime::now(),
        Usage::Server,
    )
    .unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
    let left = pki::svid::CertInfo::parse(&certs[0])
        .unwrap()
        .not_after
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left <= Duration::from_secs(600),
        "validity_duration is honoured as an upper bound"
    );

    // The node's own identity works too (renewal), a foreign one does not.
    assert!(
        istio
            .create_certificate(IstioCertificateRequest {
                csr: pem_csr(NODE),
                validity_duration: 0,
                metadata: None
            })
            .await
            .is_ok()
    );
    let err = istio
        .create_certificate(IstioCertificateRequest {
            csr: pem_csr("spiffe://cluster.local/ns/kube-system/sa/admin"),
            validity_duration: 0,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = istio
        .create_certificate(IstioCertificateRequest {
            csr: "not pem".into(),
            validity_duration: 0,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = istio
        .create_certificate(IstioCertificateRequest {
            csr: pem_csr(NODE),
            validity_duration: -5,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_and_entry_watches_stream_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let node = attested_node(&citadel).await;
    let mut c = client(&citadel.grpc, &citadel.bundle(), Some(&node));

    let mut bundles = c
        .watch_trust_bundle(TrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = bundles.next().await.unwrap().unwrap();
    assert_eq!(first.x509_authorities.len(), 1);

    // An operator adds the next root (e.g. a rotation's new root).
    let next_root = CertificateAuthority::self_signed_root(
        parse_trust_domain("cluster.local").unwrap(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        &SigningCaParams {
            common_name: "next".into(),
            organization: "test".into(),
            ttl: Duration::from_secs(86400),
            path_len: None,
        },
        SystemTime::now(),
        &pki::SystemRandom,
    )
    .unwrap();
    let pem_path = dir.path().join("next.pem");
    std::fs::write(&pem_path, encode_certificate(next_root.certificate())).unwrap();
    let (ok, _, err) = citadel.cli(&["bundle", "add", "--pem", pem_path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let second = tokio::time::timeout(Duration::from_secs(5), bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.x509_authorities.len(), 2);
    assert_eq!(second.sequence, first.sequence + 1);
    let (_, shown, _) = citadel.cli(&["bundle", "show"]);
    assert_eq!(parse_certificates(&shown).unwrap().len(), 2);
    let (_, jwks, _) = citadel.cli(&["bundle", "show", "--format", "jwks"]);
    assert_eq!(
        TrustBundle::from_jwks(parse_trust_domain("cluster.local").unwrap(), &jwks)
            .unwrap()
            .x509_authorities()
            .len(),
        2
    );

    // The active root cannot be removed; the extra one can.
    let (ok, _, err) = citadel.cli(&[
        "bundle",
        "remove",
        "--pem",
        dir.path().join("ca/root-cert.pem").to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("cannot be removed"), "{err}");
    assert!(
        citadel
            .cli(&["bundle", "remove", "--pem", pem_path.to_str().unwrap()])
            .0
    );
    let third = tokio::time::timeout(Duration::from_secs(5), bundles.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(third.x509_authorities.len(), 1);

    // Entry watch: the node sees its entries, not other nodes'.
    let mut entries = c
        .watch_entries(WatchEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(entries.next().await.unwrap().unwrap().entries.is_empty());
    assert!(
        citadel
            .cli(&[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://cluster.local/other",
                "--node",
                "n2",
                "--selector",
                "unix:uid:1"
            ])
            .0
    );
    assert!(
        citadel
            .cli(&[
                "entry",
                "create",
                "--spiffe-id",
                "spiffe://cluster.local/mine",
                "--node",
                "n1",
                "--selector",
                "unix:uid:1"
            ])
            .0
    );
    let list = tokio::time::timeout(Duration::from_secs(5), entries.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].spiffe_id, "spiffe://cluster.local/mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plug_in_ca_in_istio_cacerts_layout_signs_svids() {
    let now = SystemTime::now();
    let td = parse_trust_domain("cluster.local").unwrap();
    let params = |cn: &str, path_len| SigningCaParams {
        common_name: cn.into(),
        organization: "Corp".into(),
        ttl: Duration::from_secs(30 * 86400),
        path_len,
    };
    let root = CertificateAuthority::self_signed_root(
        td.clone(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP384).unwrap(),
        &params("corp root", None),
        now,
        &pki::SystemRandom,
    )
    .unwrap();
    let int_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let int_cert = root
        .sign_signing_ca(
            &int_key.public_key_der(),
            &params("mesh intermediate", Some(0)),
            now,
            &pki::SystemRandom,
        )
        .unwrap();
    let cacerts = tempfile::tempdir().unwrap();
    let w = |name: &str, text: String| std::fs::write(cacerts.path().join(name), text).unwrap();
    w("root-cert.pem", encode_certificate(root.certificate()));
    w("ca-cert.pem", encode_certificate(&int_cert));
    w("ca-key.pem", int_key.to_pem());
    w(
        "cert-chain.pem",
        encode_certificates([&int_cert, root.certificate()]),
    );

    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &["--ca-dir", cacerts.path().to_str().unwrap()]);
    let mut bundle = TrustBundle::new(td);
    bundle
        .add_x509_authority(root.certificate().clone())
        .unwrap();
    let (key, csr) = key_and_csr(NODE);
    let mut anon = client(&citadel.grpc, &bundle, None);
    let resp = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: citadel.token("n1"),
        })
        .await
        .unwrap()
        .into_inner();
    let svid = svid_from(&resp, key);
    assert_eq!(&svid.chain()[1], &int_cert);
    verify_svid(svid.chain(), &bundle, SystemTime::now(), Usage::Client).unwrap();
    assert!(
        !dir.path().join("ca/ca-key.pem").exists(),
        "plug-in keys are not copied"
    );

    // A key that does not match the certificate is refused at startup, with a clear error.
    let bad = tempfile::tempdir().unwrap();
    for f in ["root-cert.pem", "ca-cert.pem", "cert-chain.pem"] {
        std::fs::copy(cacerts.path().join(f), bad.path().join(f)).unwrap();
    }
    std::fs::write(
        bad.path().join("ca-key.pem"),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256)
            .unwrap()
            .to_pem(),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args([
            "--data-dir",
            tempfile::tempdir().unwrap().path().to_str().unwrap(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--monitoring",
            "127.0.0.1:0",
            "--ca-dir",
        ])
        .arg(bad.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keys_are_private_and_the_root_survives_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    // A data directory citadel creates itself is 0700.
    let data = tmp.path().join("data");
    let dir = &data;
    let citadel = Citadel::start(dir, &[]);
    for (file, mode) in [
        ("ca/root-key.pem", 0o600),
        ("ca/ca-key.pem", 0o600),
        ("admin.sock", 0o600),
        ("audit.log", 0o600),
        ("state/citadel.db", 0o600),
        ("state/citadel.db-wal", 0o600),
    ] {
        let _ = citadel.token("n1");
        let m = std::fs::metadata(dir.as_path().join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    assert_eq!(
        std::fs::metadata(dir.as_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let keys: Vec<_> = ["ca/root-key.pem", "ca/ca-key.pem"]
        .iter()
        .map(|f| std::fs::read(dir.as_path().join(f)).unwrap())
        .collect();
    citadel.stop();
    let _again = Citadel::start(dir.as_path(), &[]);
    let after: Vec<_> = ["ca/root-key.pem", "ca/ca-key.pem"]
        .iter()
        .map(|f| std::fs::read(dir.as_path().join(f)).unwrap())
        .collect();
    assert_eq!(keys, after);
}
