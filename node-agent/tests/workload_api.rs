//! The SPIFFE Workload API against real clients: our own gRPC calls, the Rust `spiffe` crate's
//! X509Source (through rotations) and Python's `spiffe` package; plus refusals.
mod common;

use std::time::{Duration, SystemTime};

use citadel_api::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509BundlesRequest, X509svidRequest,
};
use common::*;
use pki::svid::CertInfo;
use tokio_stream::StreamExt;
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

async fn setup(dir: &std::path::Path, ttl: Duration) -> (Citadel, Agent) {
    let citadel = Citadel::start(&dir.join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    citadel
        .entry(
            WEB,
            "node-1",
            &[self_path_selector(), "unix:uid:0".into()],
            ttl,
        )
        .await;
    let token = citadel.token("node-1").await;
    let agent = Agent::start(dir, &citadel, Some(&token), &[]).await;
    (citadel, agent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x509_and_jwt_svids_and_bundles_over_the_workload_api() {
    let dir = tempfile::tempdir().unwrap();
    let (_citadel, agent) = setup(dir.path(), Duration::from_secs(3600)).await;
    let mut client = workload_client(&agent.socket);

    // Without the security header: InvalidArgument, nothing else.
    let err = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.svids.len(), 1);
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, WEB);
    assert!(!svid.x509_svid_key.is_empty() && !svid.bundle.is_empty());
    // The first DER element of the concatenated chain is the leaf (a 2-byte-length SEQUENCE).
    let leaf_len = u16::from_be_bytes([svid.x509_svid[2], svid.x509_svid[3]]) as usize + 4;
    let leaf = CertInfo::parse(&svid.x509_svid[..leaf_len]).unwrap();
    assert_eq!(leaf.uri_sans, vec![WEB.to_string()]);

    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let b = bundles.next().await.unwrap().unwrap();
    assert!(b.bundles.contains_key("spiffe://cluster.local"));

    // JWT-SVIDs: minted by citadel, validated by the agent against the bundle's JWT keys.
    let jwt = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids.len(), 1);
    assert_eq!(jwt.svids[0].spiffe_id, WEB);
    let token = jwt.svids[0].svid.clone();
    let ok = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.spiffe_id, WEB);
    assert!(ok.claims.unwrap().fields.contains_key("exp"));
    let err = client
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "other".into(),
            svid: token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(
        client
            .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
                audience: "payments".into(),
                svid: tampered
            }))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: "spiffe://cluster.local/ns/x/sa/y".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut jwt_bundles = client
        .fetch_jwt_bundles(with_header(JwtBundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let jb = jwt_bundles.next().await.unwrap().unwrap();
    let jwks: serde_json::Value =
        serde_json::from_slice(&jb.bundles["spiffe://cluster.local"]).unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["use"] == "jwt-svid")
    );

    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "citadel_agent_svids_held"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "citadel_agent_workload_api_streams") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "citadel_agent_svid_soonest_expiry_seconds") > 3000.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_crate_sees_the_svid_and_every_rotation() {
    let dir = tempfile::tempdir().unwrap();
    // 6 s SVIDs rotate at about 3 s.
    let (_citadel, agent) = setup(dir.path(), Duration::from_secs(6)).await;
    let endpoint = format!("unix://{}", agent.socket.display());
    let source = spiffe::X509Source::builder()
        .endpoint(&endpoint)
        .build()
        .await
        .expect("X509Source");
    let serial = |s: &spiffe::X509Source| {
        let svid = s.svid().unwrap();
        assert_eq!(svid.spiffe_id().to_string(), WEB);
        CertInfo::parse(svid.leaf().as_ref()).unwrap().serial
    };
    let mut seen = vec![serial(&source)];
    let mut updates = source.updated();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(15), updates.changed())
            .await
            .expect("a rotation within 15 s")
            .unwrap();
        let s = serial(&source);
        assert!(!seen.contains(&s), "each update carries a new SVID");
        seen.push(s);
    }
    source.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spiffe_fetches_the_svid_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let venv = venv();
    let python = std::fs::canonicalize(venv.join("bin/python")).unwrap();
    let citadel = Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    citadel
        .entry(
            "spiffe://cluster.local/ns/default/sa/py",
            "node-1",
            &[format!("unix:path:{}", python.display())],
            Duration::from_secs(3600),
        )
        .await;
    let agent = Agent::start(
        dir.path(),
        &citadel,
        Some(&citadel.token("node-1").await),
        &[],
    )
    .await;
    let script = r#"
import sys
from spiffe import WorkloadApiClient
client = WorkloadApiClient(socket_path="unix://" + sys.argv[1])
svid = client.fetch_x509_svid()
bundles = client.fetch_x509_bundles()
bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
print(str(svid.spiffe_id))
print(len(svid.cert_chain))
print(len(bundle.x509_authorities))
"#;
    let out = tokio::process::Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(script)
        .arg(&agent.socket)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        agent.log_text()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["spiffe://cluster.local/ns/default/sa/py", "2", "1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_matching_no_entry_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    citadel
        .entry(
            "spiffe://cluster.local/someone/else",
            "node-1",
            &["unix:path:/nonexistent/binary".into()],
            Duration::from_secs(3600),
        )
        .await;
    let agent = Agent::start(
        dir.path(),
        &citadel,
        Some(&citadel.token("node-1").await),
        &[],
    )
    .await;
    let mut client = workload_client(&agent.socket);
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["a".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Over SDS too: an explicit `default` request is refused, not left hanging.
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let mut sds = SecretDiscoveryServiceClient::new(
        citadel_api::channel::uds_channel(&agent.socket).unwrap(),
    );
    let req = DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
        resource_names: vec!["default".into()],
        ..Default::default()
    };
    let mut responses = sds
        .stream_secrets(tokio_stream::iter(vec![req.clone()]))
        .await
        .unwrap()
        .into_inner();
    let err = tokio::time::timeout(Duration::from_secs(20), responses.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        sds.fetch_secrets(req).await.unwrap_err().code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_and_bundle_changes_reach_workloads_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    let agent = Agent::start(
        dir.path(),
        &citadel,
        Some(&citadel.token("node-1").await),
        &[],
    )
    .await;
    let mut client = workload_client(&agent.socket);

    // Registered after the agent started: the identity arrives by watch, not by a poll.
    let started = std::time::Instant::now();
    let entry = citadel
        .entry(
            WEB,
            "node-1",
            &[self_path_selector()],
            Duration::from_secs(3600),
        )
        .await;
    // Until the entry reaches the agent, a caller has no identity and is told PermissionDenied;
    // a client retries, as the SPIFFE clients do.
    let (mut svids, first) =
        eventually(Duration::from_secs(5), "the new entry's SVID", async || {
            let mut svids = client
                .fetch_x509svid(with_header(X509svidRequest {}))
                .await
                .ok()?
                .into_inner();
            let first = svids.next().await?.ok()?;
            Some((svids, first))
        })
        .await;
    assert_eq!(first.svids[0].spiffe_id, WEB);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A new root in citadel's bundle reaches the open bundle stream.
    let mut bundles = client
        .fetch_x509_bundles(with_header(X509BundlesRequest {}))
        .await
        .unwrap()
        .into_inner();
    let before = bundles.next().await.unwrap().unwrap();
    let extra = pki::CertificateAuthority::self_signed_root(
        pki::identity::parse_trust_domain("cluster.local").unwrap(),
        pki::PrivateKey::generate(pki::KeyAlgorithm::EcdsaP256).unwrap(),
        &pki::issue::SigningCaParams {
            common_name: "next".into(),
            organization: "t".into(),
            ttl: Duration::from_secs(86400),
            path_len: None,
        },
        SystemTime::now(),
        &pki::SystemRandom,
    )
    .unwrap();
    citadel
        .add_bundle_authority(pki::pem::encode_certificate(extra.certificate()))
        .await;
    let after = tokio::time::timeout(Duration::from_secs(5), bundles.next())
        .await
        .expect("bundle pushed")
        .unwrap()
        .unwrap();
    let len =
        |r: &citadel_api::workload::X509BundlesResponse| r.bundles["spiffe://cluster.local"].len();
    assert!(
        len(&after) > len(&before),
        "the new root is in the pushed bundle"
    );
    // The X.509-SVID stream carries the new bundle too.
    let pushed = tokio::time::timeout(Duration::from_secs(5), svids.next())
        .await
        .expect("svid stream pushed")
        .unwrap()
        .unwrap();
    assert!(pushed.svids[0].bundle.len() > first.svids[0].bundle.len());

    // Deleting the entry withdraws the identity: the stream ends with PermissionDenied.
    citadel.delete_entry(&entry).await;
    let end = tokio::time::timeout(Duration::from_secs(5), svids.next())
        .await
        .expect("withdrawn")
        .unwrap()
        .unwrap_err();
    assert_eq!(end.code(), Code::PermissionDenied);
}
