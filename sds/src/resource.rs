//! Resources as a stream sees them: name, version, and the packed `Any`.
use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;

/// One resource ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: String,
    pub version: String,
    pub body: Arc<Any>,
}

/// The resources visible to one stream, by name.
pub type Resources = BTreeMap<String, NamedResource>;
