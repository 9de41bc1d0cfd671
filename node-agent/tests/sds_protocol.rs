//! The SDS resource names and protocol variants, as a client sees them on the agent socket.
mod common;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, SpiffeCertValidatorConfig, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use prost::Message;
use tokio_stream::StreamExt;
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: SECRET.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        node,
        ..Default::default()
    }
}

fn secrets(resp: &DiscoveryResponse) -> Vec<Secret> {
    resp.resources
        .iter()
        .map(|a| Secret::decode(a.value.as_slice()).unwrap())
        .collect()
}

fn opt_out_node() -> Node {
    let flag = Value {
        kind: Some(Kind::BoolValue(true)),
    };
    Node {
        id: "envoy".into(),
        metadata: Some(Struct {
            fields: [("disable_spiffe_cert_validation".to_string(), flag)].into(),
        }),
        ..Default::default()
    }
}

async fn first_response(
    client: &mut SecretDiscoveryServiceClient<tonic::transport::Channel>,
    req: DiscoveryRequest,
) -> Result<DiscoveryResponse, tonic::Status> {
    let mut stream = client
        .stream_secrets(tokio_stream::iter(vec![req]))
        .await?
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("an answer, not a hang")
        .expect("stream item")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resource_name_and_protocol_variant() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    citadel
        .entry(
            WEB,
            "node-1",
            &[self_path_selector()],
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
    let mut client = SecretDiscoveryServiceClient::new(
        citadel_api::channel::uds_channel(&agent.socket).unwrap(),
    );

    // default + ROOTCA, with the SPIFFE validator by default.
    let resp = first_response(
        &mut client,
        request(&["default", "ROOTCA"], Some(Node::default())),
    )
    .await
    .unwrap();
    let s = secrets(&resp);
    assert_eq!(
        s.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["ROOTCA", "default"]
    );
    let Some(secret::Type::TlsCertificate(tls)) = &s[1].r#type else {
        panic!("default is a tls_certificate")
    };
    assert!(tls.certificate_chain.is_some() && tls.private_key.is_some());
    let Some(secret::Type::ValidationContext(ctx)) = &s[0].r#type else {
        panic!("ROOTCA is a validation_context")
    };
    let custom = ctx
        .custom_validator_config
        .as_ref()
        .expect("SPIFFE validator");
    assert_eq!(custom.name, "envoy.tls.cert_validator.spiffe");
    let cfg =
        SpiffeCertValidatorConfig::decode(custom.typed_config.as_ref().unwrap().value.as_slice())
            .unwrap();
    assert_eq!(cfg.trust_domains[0].name, "cluster.local");

    // Opting out through node metadata gives trusted_ca instead.
    let resp = first_response(&mut client, request(&["ROOTCA"], Some(opt_out_node())))
        .await
        .unwrap();
    let Some(secret::Type::ValidationContext(ctx)) = &secrets(&resp)[0].r#type else {
        panic!()
    };
    assert!(ctx.trusted_ca.is_some() && ctx.custom_validator_config.is_none());

    // A SPIFFE ID, the trust domain ID and ALL.
    let resp = first_response(
        &mut client,
        request(&[WEB, "spiffe://cluster.local", "ALL"], None),
    )
    .await
    .unwrap();
    assert_eq!(resp.resources.len(), 3);
    // Secrets have no wildcard (the xDS protocol gives one to listeners and clusters only): an
    // empty list names nothing, and `*` is a name nobody has.
    let resp = first_response(&mut client, request(&[], None))
        .await
        .unwrap();
    assert!(resp.resources.is_empty());
    let err = first_response(&mut client, request(&["*"], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Unknown or unauthorized names are refused, not left hanging (SPIRE's behaviour).
    let err = first_response(
        &mut client,
        request(&["default", "spiffe://cluster.local/ns/other/sa/x"], None),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // A wrong type is refused too.
    let mut wrong = request(&["default"], None);
    wrong.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    assert_eq!(
        first_response(&mut client, wrong).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // FetchSecrets (unary).
    let fetched = client
        .fetch_secrets(request(&["default"], None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(secrets(&fetched)[0].name, "default");
    assert_eq!(
        client
            .fetch_secrets(request(&["nope"], None))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    // Delta: resources plus removed_resources for names that do not exist.
    let delta = DeltaDiscoveryRequest {
        type_url: SECRET.into(),
        resource_names_subscribe: vec!["default".into(), "nope".into()],
        ..Default::default()
    };
    let mut stream = client
        .delta_secrets(tokio_stream::iter(vec![delta]))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["default"]
    );
    assert_eq!(resp.removed_resources, ["nope"]);
    assert!(!resp.resources[0].version.is_empty());

    drop(stream);

    // The stream gauge counts a connected stream, and drops when it goes away.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request(&["default"], None)).await.unwrap();
    let mut open = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(Duration::from_secs(20), open.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let streams = |text: String| metric(&text, "citadel_agent_sds_streams");
    assert_eq!(streams(agent.metrics().await), 1.0);
    drop(tx);
    drop(open);
    eventually(
        Duration::from_secs(10),
        "the SDS stream gauge to drop",
        async || (streams(agent.metrics().await) == 0.0).then_some(()),
    )
    .await;
}
