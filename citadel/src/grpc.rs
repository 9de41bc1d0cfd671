//! gRPC front ends: each handler turns a request into a `CaService` call and back.
pub mod admin;
pub mod istio;
pub mod node;

use std::time::{Duration, UNIX_EPOCH};

use citadel_api::ca;
use pki::TrustBundle;
use pki::svid::CertInfo;
use tonic::Request;

use crate::registry::{Entry, EntryChange, NodeUpdate};
use crate::service::{Caller, PeerSvid, RequestContext};

/// The caller's verified SVID (the TLS verifier checked the chain at the handshake) and what
/// the agent says its version is.
pub(crate) fn context<T>(req: &Request<T>, method: &'static str) -> RequestContext {
    let caller = req
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .and_then(|leaf| CertInfo::parse(leaf.as_ref()).ok())
        .and_then(|info| {
            Some(Caller::Svid(PeerSvid {
                id: info.spiffe_id().ok()?,
                serial: info.serial,
                not_before: info.not_before,
                not_after: info.not_after,
            }))
        })
        .unwrap_or(Caller::Anonymous);
    let agent_version = req
        .metadata()
        .get(citadel_api::AGENT_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(64).collect())
        .unwrap_or_default();
    RequestContext {
        method,
        caller,
        peer: req.remote_addr(),
        agent_version,
    }
}

pub(crate) fn bundle_message(bundle: &TrustBundle) -> ca::TrustBundle {
    ca::TrustBundle {
        trust_domain: bundle.trust_domain().to_string(),
        x509_authorities: bundle
            .x509_authorities()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        jwks: bundle.to_jwks().unwrap_or_default(),
        sequence: bundle.sequence(),
    }
}

pub(crate) fn entry_message(e: &Entry) -> ca::Entry {
    ca::Entry {
        id: e.id.clone(),
        spiffe_id: e.spiffe_id.to_string(),
        node: e.node.clone(),
        selectors: e.selectors.iter().map(ToString::to_string).collect(),
        ttl_seconds: e.ttl.as_secs() as i64,
        created_at_unix: e
            .created_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64,
    }
}

/// A non-negative TTL from the wire; negative values are refused.
pub(crate) fn ttl_from(seconds: i64) -> Result<Duration, tonic::Status> {
    u64::try_from(seconds)
        .map(Duration::from_secs)
        .map_err(|_| tonic::Status::invalid_argument("ttl must not be negative"))
}

/// The wire form of a node update.
pub(crate) fn update_message(update: &NodeUpdate, history: &str) -> ca::EntryList {
    match update {
        NodeUpdate::Full { entries, revision } => ca::EntryList {
            entries: entries.iter().map(entry_message).collect(),
            revision: *revision,
            full: true,
            removed_ids: vec![],
            history_id: history.to_string(),
        },
        NodeUpdate::Changes { changes, revision } => {
            let mut msg = ca::EntryList {
                revision: *revision,
                history_id: history.to_string(),
                ..Default::default()
            };
            for change in changes {
                match change {
                    EntryChange::Upserted(e) => msg.entries.push(entry_message(e)),
                    EntryChange::Removed(id) => msg.removed_ids.push(id.clone()),
                }
            }
            msg
        }
    }
}
