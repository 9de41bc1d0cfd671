//! Resources as a stream sees them: name, version, and the packed `Any`, encoded once and shared
//! by every stream that sends it.
use std::collections::BTreeMap;

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;

use crate::wire::{decode_any, encode_any};

/// One resource ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub version: String,
    /// The encoded `google.protobuf.Any`; cloning it shares the bytes.
    pub encoded: Bytes,
}

impl NamedResource {
    pub fn new(name: impl Into<String>, version: impl Into<String>, any: &Any) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            encoded: encode_any(any),
        }
    }

    /// Packs `message` as an `Any` of its own type URL.
    pub fn of_message<M: prost::Name>(
        name: impl Into<String>,
        version: impl Into<String>,
        message: &M,
    ) -> Self {
        let any = Any {
            type_url: M::type_url(),
            value: prost::Message::encode_to_vec(message),
        };
        Self::new(name, version, &any)
    }

    /// The `Any` itself (a copy; the wire path never needs it).
    pub fn any(&self) -> Any {
        decode_any(&self.encoded)
    }
}

/// The resources visible to one stream, by name.
pub type Resources = BTreeMap<String, NamedResource>;
