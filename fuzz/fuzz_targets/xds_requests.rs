//! Arbitrary xDS request bytes (as a client could send them) must never panic the ADS state
//! machines; every round of responses goes out in push order, and each response carries only
//! resources of its type that the stream subscribed to.
#![no_main]
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sds::envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds::envoy_types::pb::google::protobuf::Any;
use sds::types::{push_rank, CLUSTER, ENDPOINT, LISTENER, SECRET};
use sds::wire::decode_any;
use sds::{AdsStream, DeltaAdsStream, NamedResource, Resources, VersionSource};

fn world() -> HashMap<&'static str, Resources> {
    [CLUSTER, ENDPOINT, LISTENER, SECRET]
        .into_iter()
        .map(|t| {
            let resources = ["default", "a", "*"]
                .iter()
                .map(|n| {
                    let any = Any { type_url: t.into(), value: n.as_bytes().to_vec() };
                    (n.to_string(), NamedResource::new(*n, "1", &any))
                })
                .collect();
            (t, resources)
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let versions = VersionSource::new(b"fuzz");
    let world = world();
    let mut sotw = AdsStream::new();
    let mut delta = DeltaAdsStream::new();
    for chunk in data.split(|b| *b == 0xff) {
        if let Ok(req) = DiscoveryRequest::decode(chunk) {
            if sotw.handle_request(&req).is_ok() {
                let round = sotw.next_responses(|t| world.get(t), &versions);
                assert!(round.windows(2).all(|w| push_rank(&w[0].type_url) <= push_rank(&w[1].type_url)));
                for resp in &round {
                    let sub = sotw.stream(&resp.type_url).unwrap().subscription();
                    for bytes in &resp.resources {
                        let any = decode_any(bytes);
                        assert_eq!(any.type_url, resp.type_url);
                        assert!(sub.wants(std::str::from_utf8(&any.value).unwrap()));
                    }
                }
            }
        }
        if let Ok(req) = DeltaDiscoveryRequest::decode(chunk) {
            if delta.handle_request(&req).is_ok() {
                let round = delta.next_responses(|t| world.get(t), &versions);
                assert!(round.windows(2).all(|w| push_rank(&w[0].type_url) <= push_rank(&w[1].type_url)));
                for resp in &round {
                    for r in &resp.resources {
                        assert_eq!(decode_any(&r.resource).type_url, resp.type_url);
                    }
                }
            }
        }
    }
});
