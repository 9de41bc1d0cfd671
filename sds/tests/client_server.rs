//! The client half against the server half, over ADS, as a proxy and the discovery server will
//! talk: subscriptions, ACKs, NACKs that keep the last good set, removal in state-of-the-world,
//! and reconnects that resend only what changed.
use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use prost::Message;
use sds::client::{DeltaClient, SotwClient};
use sds::types::{CLUSTER, ENDPOINT};
use sds::{AdsStream, DeltaAdsStream, NamedResource, Publication, Resources, Step, VersionSource};

fn cluster(name: &str, timeout_s: i64) -> NamedResource {
    let c = Cluster {
        name: name.into(),
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: timeout_s,
            nanos: 0,
        }),
        ..Default::default()
    };
    NamedResource::of_message(name, format!("{name}-{timeout_s}"), &c)
}

fn endpoints(name: &str) -> NamedResource {
    let cla = ClusterLoadAssignment {
        cluster_name: name.into(),
        ..Default::default()
    };
    NamedResource::of_message(name, "e1", &cla)
}

fn world(clusters: &[(&str, i64)]) -> HashMap<&'static str, Arc<Publication>> {
    let types: HashMap<&'static str, Resources> = HashMap::from([
        (
            CLUSTER,
            clusters
                .iter()
                .map(|(n, t)| (n.to_string(), cluster(n, *t)))
                .collect(),
        ),
        (
            ENDPOINT,
            clusters
                .iter()
                .map(|(n, _)| (n.to_string(), endpoints(n)))
                .collect(),
        ),
    ]);
    types
        .into_iter()
        .map(|(t, r)| (t, Arc::new(Publication::new(r))))
        .collect()
}

/// What a client receives: the wire response decoded with the ordinary protos.
fn received(w: sds::wire::WireDiscoveryResponse) -> DiscoveryResponse {
    DiscoveryResponse::decode(w.encode_to_vec().as_slice()).unwrap()
}

fn received_delta(w: sds::wire::WireDeltaDiscoveryResponse) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse::decode(w.encode_to_vec().as_slice()).unwrap()
}

/// A check that refuses clusters with a zero connect timeout, as a proxy refuses what it cannot honour.
fn check(_: &str, any: &envoy_types::pb::google::protobuf::Any) -> Result<(), String> {
    if any.type_url == CLUSTER {
        let c = Cluster::decode(any.value.as_slice()).map_err(|e| e.to_string())?;
        if c.connect_timeout.is_some_and(|d| d.seconds == 0) {
            return Err("connect_timeout: must be positive".into());
        }
    }
    Ok(())
}

#[test]
fn sotw_client_acks_nacks_keeps_the_last_good_set_and_sees_removals() {
    let versions = VersionSource::new(b"server");
    let mut server = AdsStream::new();
    let node = Node {
        id: "sidecar~198.18.0.2~a.default~default.svc.cluster.local".into(),
        ..Default::default()
    };
    let mut client = SotwClient::new(node.clone());

    let first = client.subscribe(CLUSTER, &[]);
    assert_eq!(
        first.node.as_ref(),
        Some(&node),
        "the node goes on the first request"
    );
    assert_eq!(server.handle_request(&first).unwrap(), Step::Respond);
    let eds = client.subscribe(ENDPOINT, &["a", "b"]);
    assert!(eds.node.is_none(), "and only on the first");
    server.handle_request(&eds).unwrap();

    let w = world(&[("a", 1), ("b", 1)]);
    for resp in server.next_responses(|t| w.get(t), &versions) {
        let (ack, update) = client.handle_response(&received(resp), check);
        assert_eq!(update.unwrap().upserted.len(), 2);
        assert_eq!(server.handle_request(&ack).unwrap(), Step::Wait);
        assert!(
            server
                .stream(&ack.type_url)
                .unwrap()
                .acked_version()
                .is_some()
        );
    }
    let good_version = client.version(CLUSTER).unwrap().to_string();

    // A cluster the client cannot honour: NACKed with the reason, the last good set kept, and
    // the server does not send the same content again.
    let bad = world(&[("a", 0), ("b", 1)]);
    let pushes = server.next_responses(|t| bad.get(t), &versions);
    assert_eq!(pushes[0].type_url, CLUSTER);
    let (nack, update) = client.handle_response(&received(pushes[0].clone()), check);
    assert!(update.unwrap_err().contains("a: connect_timeout"));
    assert_eq!(nack.version_info, good_version);
    assert!(
        nack.error_detail
            .as_ref()
            .unwrap()
            .message
            .contains("connect_timeout")
    );
    server.handle_request(&nack).unwrap();
    assert!(server.stream(CLUSTER).unwrap().last_nack().is_some());
    assert_eq!(
        client.resources(CLUSTER).unwrap()["a"],
        cluster("a", 1).any(),
        "still the last good cluster"
    );
    assert!(
        server
            .next_responses(|t| bad.get(t), &versions)
            .iter()
            .all(|r| r.type_url != CLUSTER),
        "a NACKed version is not sent again"
    );

    // A cluster missing from a complete CDS response is removed.
    let fewer = world(&[("a", 1)]);
    let pushes = server.next_responses(|t| fewer.get(t), &versions);
    let (ack, update) = client.handle_response(&received(pushes[0].clone()), check);
    assert_eq!(update.unwrap().removed, ["b"]);
    server.handle_request(&ack).unwrap();
    assert_eq!(client.resources(CLUSTER).unwrap().len(), 1);

    // Reconnect: the same subscriptions, the versions held, no stale nonces, the node again.
    let again = client.reconnect_requests();
    assert_eq!(again.len(), 2);
    assert!(again[0].node.is_some() && again[1].node.is_none());
    assert!(again.iter().all(|r| r.response_nonce.is_empty()));
    let eds_again = again.iter().find(|r| r.type_url == ENDPOINT).unwrap();
    assert_eq!(eds_again.resource_names, ["a", "b"]);
}

#[test]
fn delta_client_reconnects_with_what_it_holds_and_gets_only_changes() {
    let versions = VersionSource::new(b"server");
    let mut client = DeltaClient::new(Node::default());
    let mut server = DeltaAdsStream::new();
    server
        .handle_request(&client.subscribe(CLUSTER, &[], &[]))
        .unwrap();
    let w = world(&[("a", 1), ("b", 1)]);
    for resp in server.next_responses(|t| w.get(t), &versions) {
        let (ack, update) = client.handle_response(&received_delta(resp), check);
        assert_eq!(update.unwrap().upserted.len(), 2);
        server.handle_request(&ack).unwrap();
    }

    // The stream breaks; a new server stream, and the client says what it holds.
    let mut server = DeltaAdsStream::new();
    let requests = client.reconnect_requests();
    assert_eq!(requests[0].resource_names_subscribe, ["*"]);
    assert_eq!(requests[0].initial_resource_versions.len(), 2);
    for r in &requests {
        server.handle_request(r).unwrap();
    }
    let changed = world(&[("a", 2), ("c", 1)]);
    let pushes = server.next_responses(|t| changed.get(t), &versions);
    let resp = received_delta(pushes[0].clone());
    let names: Vec<&str> = resp.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "c"], "b is unchanged: not resent");
    assert_eq!(resp.removed_resources, ["b"]);
    let (_, update) = client.handle_response(&resp, check);
    assert_eq!(update.unwrap().removed, ["b"]);
    let held: Vec<String> = client.resources(CLUSTER).into_keys().collect();
    assert_eq!(held, ["a", "c"]);
}
