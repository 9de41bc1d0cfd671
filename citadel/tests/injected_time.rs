//! citadel in-process with an injected clock: token expiry and SVID lifetimes follow the clock
//! the server is given, not the wall clock, and no test sleeps for them.
mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use citadel::authority::CaSource;
use citadel::server::{ServeConfig, admin_socket, endpoints_file, serve};
use citadel::service::TtlPolicy;
use citadel_api::admin::CreateJoinTokenRequest;
use citadel_api::admin::admin_client::AdminClient;
use citadel_api::ca::{AttestNodeRequest, CsrRequest};
use common::*;
use pki::identity::parse_trust_domain;
use pki::{KeyAlgorithm, ManualClock, TrustBundle};
use tonic::Code;

const NODE: &str = "spiffe://cluster.local/citadel/node/n1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_svid_lifetimes_follow_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(SystemTime::now());
    let config = ServeConfig {
        data_dir: dir.path().to_path_buf(),
        trust_domain: parse_trust_domain("cluster.local").unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::SelfSigned {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            root_ttl: Duration::from_secs(3650 * 86400),
            intermediate_ttl: Duration::from_secs(365 * 86400),
        },
        ttl: TtlPolicy {
            node: Duration::from_secs(600),
            max: Duration::from_secs(3600),
        },
        server_sans: vec![],
        server_cert_ttl: Duration::from_secs(86400),
        limits: Default::default(),
        config_dir: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        config,
        Arc::new(clock.clone()),
        Arc::new(pki::SystemRandom),
        async {
            let _ = stopped.await;
        },
    ));
    while !endpoints_file(dir.path()).exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(endpoints_file(dir.path())).unwrap())
            .unwrap();
    let grpc = v["grpc"].as_str().unwrap().to_string();
    let bundle = TrustBundle::from_pem(
        parse_trust_domain("cluster.local").unwrap(),
        &std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap(),
    )
    .unwrap();
    let mut admin =
        AdminClient::new(citadel_api::channel::uds_channel(admin_socket(dir.path())).unwrap());
    let token = |ttl| CreateJoinTokenRequest {
        node: "n1".into(),
        ttl_seconds: ttl,
    };

    // A 60 s token, 61 s later on citadel's clock: expired.
    let stale = admin
        .create_join_token(token(60))
        .await
        .unwrap()
        .into_inner()
        .token;
    clock.advance(Duration::from_secs(61));
    let mut anon = client(&grpc, &bundle, None);
    let (_, csr) = key_and_csr(NODE);
    let err = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: stale,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());

    // A fresh token works; the node SVID lives exactly the configured 600 s from citadel's now.
    let fresh = admin
        .create_join_token(token(60))
        .await
        .unwrap()
        .into_inner()
        .token;
    let (key, csr) = key_and_csr(NODE);
    let resp = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: fresh,
        })
        .await
        .unwrap()
        .into_inner();
    let node = svid_from(&resp, key);
    assert_eq!(
        node.not_after(),
        pki::time::system_time(pki::time::offset_date_time(clock_now(&clock)))
            + Duration::from_secs(600)
    );

    // A renewal requested for longer than the policy allows is capped.
    let mut node_client = client(&grpc, &bundle, Some(&node));
    let (key, csr) = key_and_csr(NODE);
    let renewed = svid_from(
        &node_client
            .renew_svid(CsrRequest {
                csr,
                ttl_seconds: 7200,
            })
            .await
            .unwrap()
            .into_inner(),
        key,
    );
    assert!(renewed.not_after() <= clock_now(&clock) + Duration::from_secs(600));

    // Signing fails (citadel's clock is past the intermediate's expiry): the token stays
    // unspent, and works once signing works again.
    let before = clock_now(&clock);
    clock.advance(Duration::from_secs(366 * 86400));
    let kept = admin
        .create_join_token(token(600))
        .await
        .unwrap()
        .into_inner()
        .token;
    let (_, csr) = key_and_csr(NODE);
    let err = anon
        .attest_node(AttestNodeRequest {
            csr,
            join_token: kept.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    clock.set(before);
    let (_, csr) = key_and_csr(NODE);
    anon.attest_node(AttestNodeRequest {
        csr,
        join_token: kept,
    })
    .await
    .expect("the token survived the failed signing");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

fn clock_now(clock: &ManualClock) -> SystemTime {
    use pki::Clock;
    clock.now()
}
