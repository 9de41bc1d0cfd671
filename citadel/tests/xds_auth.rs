//! ADS on citadel's mTLS port: a proxy gets configuration only as the identity its SVID names,
//! as istiod checks node metadata against the certificate; the stream speaks ADS to the `sds`
//! client half and carries clusters before listeners.
mod common;

use std::sync::Arc;

use citadel_api::ca::CsrRequest;
use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use sds::client::SotwClient;
use sds::types::{CLUSTER, LISTENER};
use tokio_stream::StreamExt;
use tonic::Code;

const REVIEWS: &str = "spiffe://cluster.local/ns/default/sa/reviews";

fn node(sa: &str) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    Node {
        id: "sidecar~198.18.0.21~reviews-v1.default~default.svc.cluster.local".into(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s("default")),
                ("SERVICE_ACCOUNT".to_string(), s(sa)),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

fn ads(
    citadel: &Citadel,
    svid: Option<&pki::X509Svid>,
) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let bundles = Arc::new(pki::verify::SharedBundles::new([citadel.bundle()]));
    let cert = svid.map(|s| {
        Arc::new(pki::tls::SwappableCert::new(
            pki::tls::certified_key(s).unwrap(),
        ))
    });
    let cfg = citadel_api::channel::citadel_client_config(
        bundles,
        pki::identity::parse_trust_domain("cluster.local").unwrap(),
        cert,
        Arc::new(pki::SystemClock),
    )
    .unwrap();
    AggregatedDiscoveryServiceClient::new(
        citadel_api::channel::tls_channel(&citadel.grpc, Arc::new(cfg)).unwrap(),
    )
}

/// Opens a stream as `sa` and returns the first two responses' type URLs, or the refusal.
async fn first_pushes(
    citadel: &Citadel,
    svid: Option<&pki::X509Svid>,
    sa: &str,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = SotwClient::new(node(sa));
    // Envoy's order: clusters, then listeners.
    let requests = vec![
        client.subscribe(CLUSTER, &[]),
        client.subscribe(LISTENER, &[]),
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    for r in requests {
        tx.send(r).await.unwrap();
    }
    let mut stream = ads(citadel, svid)
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut types = Vec::new();
    while types.len() < 2 {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .expect("a response, not a hang")
            .expect("stream open")?;
        let (ack, update) = client.handle_response(&resp, |_, _| Ok(()));
        assert!(update.is_ok());
        tx.send(ack).await.unwrap();
        types.push(resp.type_url);
    }
    drop(tx);
    Ok(types)
}

/// An entry for the reviews identity on node n1, the node attested, and the reviews SVID it mints.
async fn reviews_svid(citadel: &Citadel) -> (pki::X509Svid, pki::X509Svid) {
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        REVIEWS,
        "--node",
        "n1",
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(ok, "{err}");
    let node_svid = attested_node(citadel).await;
    let (key, csr) = key_and_csr(REVIEWS);
    let resp = client(&citadel.grpc, &citadel.bundle(), Some(&node_svid))
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    (node_svid, svid_from(&resp, key))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_configuration_only_as_its_own_identity() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("reviews.yaml"),
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{address: 198.18.0.21, serviceAccount: reviews}]
",
    )
    .unwrap();
    let data = dir.path().join("data");
    let citadel = Citadel::start(&data, &["--config-dir", config.to_str().unwrap()]);
    let (node_svid, reviews) = reviews_svid(&citadel).await;

    // Its own identity: both types, each ACKed.
    let types = first_pushes(&citadel, Some(&reviews), "reviews")
        .await
        .unwrap();
    assert_eq!(types, [CLUSTER, LISTENER]);

    // Metadata claiming another service account than the SVID: refused.
    let err = first_pushes(&citadel, Some(&reviews), "productpage")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(
            "may not receive the configuration of spiffe://cluster.local/ns/default/sa/productpage"
        ),
        "{}",
        err.message()
    );
    // A node SVID is not a proxy identity; no certificate at all is unauthenticated.
    let err = first_pushes(&citadel, Some(&node_svid), "reviews")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = first_pushes(&citadel, None, "reviews").await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let metrics = citadel.metrics().await;
    assert!(metrics.contains("citadel_svid_requests_refused_total{method=\"StreamAggregatedResources\",reason=\"permission_denied\"} 2"), "{metrics}");
}

/// The next response on `stream`, ACKed through `client`.
async fn next_acked(
    stream: &mut tonic::Streaming<
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
    >,
    client: &mut SotwClient,
    tx: &tokio::sync::mpsc::Sender<
        envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest,
    >,
) -> envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse {
    let resp = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
        .await
        .expect("a response, not a hang")
        .expect("stream open")
        .unwrap();
    let (ack, update) = client.handle_response(&resp, |_, _| Ok(()));
    update.unwrap();
    tx.send(ack).await.unwrap();
    resp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_change_is_pushed_as_eds_alone() {
    use sds::types::{ENDPOINT, ROUTE};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh");
    std::fs::create_dir(&config).unwrap();
    let service = |address: &str, extra_port: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: 9080, name: http, protocol: HTTP}}{extra_port}]
  resolution: STATIC
  location: MESH_INTERNAL
  endpoints: [{{address: {address}, serviceAccount: reviews}}]
"
        )
    };
    // Endpoints on other hosts than the proxy (198.18.0.21): its own inbound side stays put.
    std::fs::write(config.join("reviews.yaml"), service("198.18.0.31", "")).unwrap();
    let citadel = Citadel::start(
        &dir.path().join("data"),
        &["--config-dir", config.to_str().unwrap()],
    );
    let (_, reviews) = reviews_svid(&citadel).await;

    // Subscribe as Envoy does: clusters and listeners, then the endpoints and routes they name.
    let mut sotw = SotwClient::new(node("reviews"));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(sotw.subscribe(CLUSTER, &[])).await.unwrap();
    tx.send(sotw.subscribe(LISTENER, &[])).await.unwrap();
    let mut stream = ads(&citadel, Some(&reviews))
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let eds_cluster = "outbound|9080||reviews.default.svc.cluster.local";
    for _ in 0..2 {
        next_acked(&mut stream, &mut sotw, &tx).await;
    }
    tx.send(sotw.subscribe(ENDPOINT, &[eds_cluster]))
        .await
        .unwrap();
    tx.send(sotw.subscribe(ROUTE, &["9080"])).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(next_acked(&mut stream, &mut sotw, &tx).await.type_url);
    }
    seen.sort();
    assert_eq!(seen, [ENDPOINT, ROUTE]);

    // An endpoint moves: only EDS goes out (a cluster or listener change would come first).
    std::fs::write(config.join("reviews.yaml"), service("198.18.0.32", "")).unwrap();
    let pushed = next_acked(&mut stream, &mut sotw, &tx).await;
    assert_eq!(pushed.type_url, ENDPOINT);
    assert_eq!(pushed.resources.len(), 1);
    // A new port: clusters first, so nothing else was left over from the endpoint change.
    std::fs::write(
        config.join("reviews.yaml"),
        service("198.18.0.32", ", {number: 9443, name: tls, protocol: TLS}"),
    )
    .unwrap();
    let pushed = next_acked(&mut stream, &mut sotw, &tx).await;
    assert_eq!(
        pushed.type_url, CLUSTER,
        "the endpoint change pushed more than EDS"
    );
}
