//! Responses as they go on the wire, with each resource's packed `Any` encoded once and shared
//! (`Bytes`) by every stream that sends it. The messages are field-for-field the wire form of
//! `DiscoveryResponse` and `DeltaDiscoveryResponse` (a repeated message field and a repeated
//! bytes field encode alike), so a client decodes them with the ordinary protos.
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// `envoy.service.discovery.v3.DiscoveryResponse`, with `resources` already encoded.
#[derive(Clone, PartialEq, Message)]
pub struct WireDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    /// Each an encoded `google.protobuf.Any`.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub resources: Vec<Bytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `envoy.service.discovery.v3.Resource`, with `resource` already encoded.
#[derive(Clone, PartialEq, Message)]
pub struct WireResource {
    #[prost(string, tag = "1")]
    pub version: String,
    /// An encoded `google.protobuf.Any`.
    #[prost(bytes = "bytes", tag = "2")]
    pub resource: Bytes,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `envoy.service.discovery.v3.DeltaDiscoveryResponse`, with each resource's `Any` already
/// encoded.
#[derive(Clone, PartialEq, Message)]
pub struct WireDeltaDiscoveryResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<WireResource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

/// Encodes `any` once, for sharing.
pub fn encode_any(any: &Any) -> Bytes {
    Bytes::from(any.encode_to_vec())
}

/// Decodes an `Any` this crate encoded (it cannot fail on bytes from `encode_any`).
pub fn decode_any(bytes: &Bytes) -> Any {
    Any::decode(bytes.clone()).expect("bytes produced by encode_any")
}

impl From<WireDiscoveryResponse> for DiscoveryResponse {
    /// For servers bound to the generated service traits (SDS); copies each resource once.
    fn from(w: WireDiscoveryResponse) -> Self {
        DiscoveryResponse {
            version_info: w.version_info,
            resources: w.resources.iter().map(decode_any).collect(),
            type_url: w.type_url,
            nonce: w.nonce,
            ..Default::default()
        }
    }
}

impl From<WireDeltaDiscoveryResponse> for DeltaDiscoveryResponse {
    /// For servers bound to the generated service traits (SDS); copies each resource once.
    fn from(w: WireDeltaDiscoveryResponse) -> Self {
        use envoy_types::pb::envoy::service::discovery::v3::Resource;
        DeltaDiscoveryResponse {
            system_version_info: w.system_version_info,
            resources: w
                .resources
                .into_iter()
                .map(|r| Resource {
                    name: r.name,
                    version: r.version,
                    resource: Some(decode_any(&r.resource)),
                    ..Default::default()
                })
                .collect(),
            type_url: w.type_url,
            nonce: w.nonce,
            removed_resources: w.removed_resources,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::Resource;

    use super::*;

    fn any(n: u8) -> Any {
        Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![n; 40],
        }
    }

    #[test]
    fn wire_responses_decode_as_the_protos() {
        let wire = WireDiscoveryResponse {
            version_info: "v1".into(),
            resources: vec![encode_any(&any(1)), encode_any(&any(2))],
            type_url: "type.googleapis.com/x.Y".into(),
            nonce: "n1".into(),
        };
        let decoded = DiscoveryResponse::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, DiscoveryResponse::from(wire));
        assert_eq!(decoded.resources, [any(1), any(2)]);

        let wire = WireDeltaDiscoveryResponse {
            system_version_info: "s".into(),
            resources: vec![WireResource {
                version: "r1".into(),
                resource: encode_any(&any(3)),
                name: "a".into(),
            }],
            type_url: "type.googleapis.com/x.Y".into(),
            nonce: "n2".into(),
            removed_resources: vec!["gone".into()],
        };
        let decoded = DeltaDiscoveryResponse::decode(wire.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, DeltaDiscoveryResponse::from(wire));
        assert_eq!(
            decoded.resources,
            [Resource {
                name: "a".into(),
                version: "r1".into(),
                resource: Some(any(3)),
                ..Default::default()
            }]
        );
        assert_eq!(decoded.removed_resources, ["gone"]);
    }
}
