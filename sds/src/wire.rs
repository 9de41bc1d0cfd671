//! Responses as they go on the wire, with each resource's packed `Any` encoded once and shared
//! (`Bytes`) by every stream that sends it. The messages are field-for-field the wire form of
//! `DiscoveryResponse` and `DeltaDiscoveryResponse` (a repeated message field and a repeated
//! bytes field encode alike), so a client decodes them with the ordinary protos.
use bytes::Bytes;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, DiscoveryResponse};
use envoy_types::pb::google::protobuf::Any;
use std::sync::Arc;

use bytes::BufMut;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

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

/// `envoy.service.discovery.v3.Resource`, with `resource` already encoded, and its name and
/// version shared with the resource itself: a delta push to a thousand streams does not copy
/// two strings per resource per stream.
#[derive(Clone, PartialEq, Debug, Default)]
pub struct WireResource {
    pub version: Arc<str>,
    /// An encoded `google.protobuf.Any`.
    pub resource: Bytes,
    pub name: Arc<str>,
}

fn str_field_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        key_len(tag) + encoded_len_varint(s.len() as u64) + s.len()
    }
}

fn put_str_field(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(s.len() as u64, buf);
        buf.put_slice(s.as_bytes());
    }
}

// By hand only because prost derives `string` fields as `String`; the encoding is the
// generated `Resource`'s for fields 1-3 (a test checks it against the proto).
impl Message for WireResource {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        put_str_field(1, &self.version, buf);
        if !self.resource.is_empty() {
            prost::encoding::bytes::encode(2, &self.resource, buf);
        }
        put_str_field(3, &self.name, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        let mut text = String::new();
        match tag {
            1 | 3 => {
                prost::encoding::string::merge(wire_type, &mut text, buf, ctx)?;
                let text: Arc<str> = text.into();
                if tag == 1 {
                    self.version = text;
                } else {
                    self.name = text;
                }
                Ok(())
            }
            2 => prost::encoding::bytes::merge(wire_type, &mut self.resource, buf, ctx),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let resource = if self.resource.is_empty() {
            0
        } else {
            prost::encoding::bytes::encoded_len(2, &self.resource)
        };
        str_field_len(1, &self.version) + resource + str_field_len(3, &self.name)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
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
                    name: r.name.to_string(),
                    version: r.version.to_string(),
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

    proptest::proptest! {
        /// The hand-written encoding is the generated `Resource`'s, and decodes back.
        #[test]
        fn a_wire_resource_encodes_as_the_proto(
            name in "\\PC{0,30}",
            version in "[a-z0-9-]{0,20}",
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let body = Any { type_url: "type.googleapis.com/x.Y".into(), value };
            let wire = WireResource {
                version: version.as_str().into(),
                resource: encode_any(&body),
                name: name.as_str().into(),
            };
            let proto = Resource { name, version, resource: Some(body), ..Default::default() };
            proptest::prop_assert_eq!(wire.encode_to_vec(), proto.encode_to_vec());
            proptest::prop_assert_eq!(wire.encoded_len(), proto.encoded_len());
            proptest::prop_assert_eq!(WireResource::decode(proto.encode_to_vec().as_slice()).unwrap(), wire);
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
