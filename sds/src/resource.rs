//! Resources as a stream sees them: name, version, and the packed `Any`, encoded once and shared
//! by every stream that sends it.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use envoy_types::pb::google::protobuf::Any;

use crate::wire::{decode_any, encode_any};

/// One resource ready to send. Name and version are shared with every stream that records
/// having sent it, so a stream's bookkeeping costs pointers, not copies.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    pub name: Arc<str>,
    pub version: Arc<str>,
    /// The encoded `google.protobuf.Any`; cloning it shares the bytes.
    pub encoded: Bytes,
}

impl NamedResource {
    pub fn new(name: impl Into<Arc<str>>, version: impl Into<Arc<str>>, any: &Any) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            encoded: encode_any(any),
        }
    }

    /// Packs `message` as an `Any` of its own type URL.
    pub fn of_message<M: prost::Name>(
        name: impl Into<Arc<str>>,
        version: impl Into<Arc<str>>,
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

/// One type's resources as a server published them, and what changed since the publication
/// before. Streams that hold the publication before apply only the change, instead of
/// comparing every resource; a stream that missed one compares everything.
#[derive(Debug, Default)]
pub struct Publication {
    /// Unique in the process (0 is the empty publication).
    pub id: u64,
    pub resources: Resources,
    /// The publication this one follows, and the names added, changed or removed since.
    pub since: Option<(u64, Vec<Arc<str>>)>,
}

static PUBLICATIONS: AtomicU64 = AtomicU64::new(1);

impl Publication {
    /// A publication with no known predecessor.
    pub fn new(resources: Resources) -> Self {
        Self {
            id: PUBLICATIONS.fetch_add(1, Ordering::Relaxed),
            resources,
            since: None,
        }
    }

    /// What follows `previous`: `previous` itself when nothing changed (so streams skip it at
    /// once), else a new publication that names what changed.
    pub fn successor(previous: &Arc<Publication>, resources: Resources) -> Arc<Publication> {
        let old = &previous.resources;
        let mut changed: Vec<Arc<str>> = resources
            .values()
            .filter(|r| old.get(&*r.name).is_none_or(|o| o.version != r.version))
            .map(|r| r.name.clone())
            .collect();
        changed.extend(
            old.values()
                .filter(|o| !resources.contains_key(&*o.name))
                .map(|o| o.name.clone()),
        );
        if changed.is_empty() {
            return previous.clone();
        }
        Arc::new(Self {
            since: Some((previous.id, changed)),
            ..Self::new(resources)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, &str)]) -> Resources {
        pairs
            .iter()
            .map(|(n, v)| {
                let any = Any {
                    type_url: "t".into(),
                    value: v.as_bytes().to_vec(),
                };
                (n.to_string(), NamedResource::new(*n, *v, &any))
            })
            .collect()
    }

    #[test]
    fn a_successor_names_exactly_what_changed() {
        let first = Arc::new(Publication::new(res(&[("a", "1"), ("b", "1"), ("c", "1")])));
        let same = Publication::successor(&first, res(&[("a", "1"), ("b", "1"), ("c", "1")]));
        assert!(
            Arc::ptr_eq(&first, &same),
            "nothing changed: the same publication"
        );
        let next = Publication::successor(&first, res(&[("a", "1"), ("b", "2"), ("d", "1")]));
        let (base, names) = next.since.as_ref().unwrap();
        assert_eq!(*base, first.id);
        let mut names: Vec<&str> = names.iter().map(|n| &**n).collect();
        names.sort();
        assert_eq!(names, ["b", "c", "d"]);
        assert_ne!(next.id, first.id);
    }
}
