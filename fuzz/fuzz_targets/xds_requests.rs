//! Arbitrary xDS request bytes (as a client could send them) must never panic the stream state
//! machines, and responses must only carry what the stream subscribed to.
#![no_main]
use std::collections::BTreeMap;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sds::envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use sds::envoy_types::pb::google::protobuf::Any;
use sds::{DeltaStream, NamedResource, SotwStream, VersionSource};

fuzz_target!(|data: &[u8]| {
    let versions = VersionSource::new(b"fuzz");
    let current: BTreeMap<String, NamedResource> = ["default", "ROOTCA", "a"]
        .iter()
        .map(|n| (n.to_string(), NamedResource { name: n.to_string(), version: "1".into(), body: Arc::new(Any::default()) }))
        .collect();
    let mut sotw = SotwStream::new();
    let mut delta = DeltaStream::new();
    for chunk in data.split(|b| *b == 0xff) {
        if let Ok(req) = DiscoveryRequest::decode(chunk) {
            if sotw.handle_request(&req).is_ok() {
                if let Some(resp) = sotw.next_response(&current, &versions) {
                    assert!(resp.resources.len() <= current.len());
                }
            }
        }
        if let Ok(req) = DeltaDiscoveryRequest::decode(chunk) {
            if delta.handle_request(&req).is_ok() {
                let _ = delta.next_response(&current, &versions);
            }
        }
    }
});
