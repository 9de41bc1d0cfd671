//! Follows citadel's bundle and entry watch streams, reconnecting with backoff; changes reach
//! the manager (and so every workload) as soon as citadel sends them. Entry streams resume
//! from the last revision applied, so a reconnect costs only what changed meanwhile. Both
//! streams move to the new connection as soon as the node SVID is renewed.
use std::collections::HashMap;
use std::sync::Arc;

use citadel_api::ca::{self, TrustBundleRequest, WatchEntriesRequest};
use pki::TrustDomain;
use pki::identity::parse_spiffe_id;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic::transport::Channel;

use crate::ca::{GrpcCa, request};
use crate::manager::{BackoffPolicy, Manager};
use crate::node::NodeStore;
use crate::rotation::{Backoff, unit};
use crate::state::Entry;

/// Converts one entry from citadel; `None` (logged) if malformed.
fn entry_from(e: &ca::Entry) -> Option<Entry> {
    let parsed = parse_spiffe_id(&e.spiffe_id).ok().zip(
        e.selectors
            .iter()
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<_>>>(),
    );
    if parsed.is_none() {
        tracing::warn!(entry = %e.id, "ignoring malformed entry from citadel");
    }
    let (spiffe_id, selectors) = parsed?;
    Some(Entry {
        id: e.id.clone(),
        spiffe_id,
        selectors,
        ttl_seconds: e.ttl_seconds,
    })
}

/// The node's entries as the agent holds them, kept current from full lists and deltas.
#[derive(Debug, Default)]
pub struct EntrySet {
    by_id: HashMap<String, Arc<Entry>>,
    revision: u64,
    history: String,
}

impl EntrySet {
    /// Applies one message from citadel; returns whether the entries changed.
    pub fn apply(&mut self, list: &ca::EntryList) -> bool {
        self.revision = list.revision;
        self.history.clone_from(&list.history_id);
        if !list.full && list.entries.is_empty() && list.removed_ids.is_empty() {
            return false;
        }
        if list.full {
            self.by_id.clear();
        }
        for id in &list.removed_ids {
            self.by_id.remove(id);
        }
        for e in &list.entries {
            match entry_from(e) {
                Some(entry) => self.by_id.insert(entry.id.clone(), Arc::new(entry)),
                None => self.by_id.remove(&e.id),
            };
        }
        true
    }

    /// What to resume from: the revision and history of the last message applied.
    pub fn position(&self) -> WatchEntriesRequest {
        WatchEntriesRequest {
            since_revision: self.revision,
            history_id: self.history.clone(),
        }
    }

    /// In a stable order (SPIFFE ID, then entry id): a workload's `default` is its first.
    /// Shared with the agent state, so each entry is held once.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self.by_id.values().cloned().collect();
        v.sort_by(|a, b| (a.spiffe_id.to_string(), &a.id).cmp(&(b.spiffe_id.to_string(), &b.id)));
        v
    }
}

/// The next item of `stream`, or `None` when it ended or calls moved to a new connection.
async fn next_or_moved<T>(
    stream: &mut Streaming<T>,
    moved: &mut watch::Receiver<Channel>,
) -> Option<Result<T, tonic::Status>> {
    tokio::select! {
        item = stream.next() => item,
        _ = moved.changed() => {
            tracing::debug!("node SVID renewed: re-opening the watch on a new connection");
            None
        }
    }
}

/// Follows `WatchEntries` forever.
pub async fn follow_entries(
    ca: GrpcCa,
    manager: Arc<Manager>,
    policy: BackoffPolicy,
    rng: Arc<dyn pki::RandomSource>,
) {
    let mut backoff = Backoff::new(policy.base, policy.cap);
    let mut held = EntrySet::default();
    loop {
        let mut moved = ca.subscribe();
        moved.borrow_and_update();
        let req = request(held.position());
        match ca.deadline(ca.client().watch_entries(req)).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Some(item) = next_or_moved(&mut stream, &mut moved).await {
                    match item {
                        Ok(list) => {
                            backoff.reset();
                            // An empty delta (a resumed watch with nothing new) wakes nobody.
                            if held.apply(&list) {
                                manager.set_entries(held.entries());
                            }
                        }
                        Err(status) => {
                            tracing::warn!(%status, "entry watch ended");
                            break;
                        }
                    }
                }
                if moved.has_changed().unwrap_or(false) {
                    continue;
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch entries")
            }
        }
        tokio::time::sleep(backoff.next_delay(unit(rng.as_ref()))).await;
    }
}

/// Follows `WatchTrustBundle` forever, persisting each bundle.
pub async fn follow_bundle(
    ca: GrpcCa,
    manager: Arc<Manager>,
    store: NodeStore,
    trust_domain: TrustDomain,
    policy: BackoffPolicy,
    rng: Arc<dyn pki::RandomSource>,
) {
    let mut backoff = Backoff::new(policy.base, policy.cap);
    loop {
        let mut moved = ca.subscribe();
        moved.borrow_and_update();
        match ca
            .deadline(
                ca.client()
                    .watch_trust_bundle(request(TrustBundleRequest {})),
            )
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Some(item) = next_or_moved(&mut stream, &mut moved).await {
                    let msg = match item {
                        Ok(msg) => msg,
                        Err(status) => {
                            tracing::warn!(%status, "bundle watch ended");
                            break;
                        }
                    };
                    backoff.reset();
                    apply_bundle(&manager, &store, &trust_domain, &msg);
                }
                if moved.has_changed().unwrap_or(false) {
                    continue;
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch the bundle")
            }
        }
        tokio::time::sleep(backoff.next_delay(unit(rng.as_ref()))).await;
    }
}

fn apply_bundle(
    manager: &Manager,
    store: &NodeStore,
    trust_domain: &TrustDomain,
    msg: &ca::TrustBundle,
) {
    match pki::TrustBundle::from_jwks(trust_domain.clone(), &msg.jwks) {
        Ok(bundle) if !bundle.x509_authorities().is_empty() => {
            if manager.snapshot().bundle.as_ref() != &bundle {
                if let Err(e) = store.save_bundle(&bundle) {
                    tracing::error!(error = %e, "could not persist the bundle");
                }
                tracing::info!(sequence = bundle.sequence(), "trust bundle updated");
                manager.set_bundle(bundle);
            }
        }
        Ok(_) => tracing::warn!("ignoring an empty bundle from citadel"),
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed bundle from citadel"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(id: &str, spiffe: &str) -> ca::Entry {
        ca::Entry {
            id: id.into(),
            spiffe_id: spiffe.into(),
            node: "n".into(),
            selectors: vec!["unix:uid:1".into()],
            ttl_seconds: 60,
            created_at_unix: 0,
        }
    }

    #[test]
    fn deltas_apply_over_a_full_list() {
        let mut set = EntrySet::default();
        assert!(set.apply(&ca::EntryList {
            entries: vec![
                wire("2", "spiffe://cluster.local/b"),
                wire("1", "spiffe://cluster.local/a"),
            ],
            revision: 5,
            full: true,
            removed_ids: vec![],
            history_id: "h".into(),
        }));
        assert!(set.apply(&ca::EntryList {
            entries: vec![wire("3", "spiffe://cluster.local/c")],
            revision: 7,
            full: false,
            removed_ids: vec!["1".into()],
            history_id: "h".into(),
        }));
        let ids: Vec<_> = set.entries().into_iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["2", "3"]);
        assert_eq!(set.position().since_revision, 7);
        assert_eq!(set.position().history_id, "h");
        assert!(
            !set.apply(&ca::EntryList {
                revision: 9,
                history_id: "h".into(),
                ..Default::default()
            }),
            "an empty delta changes nothing"
        );
        assert_eq!(set.position().since_revision, 9);
        set.apply(&ca::EntryList {
            entries: vec![wire("9", "spiffe://cluster.local/z")],
            revision: 8,
            full: true,
            removed_ids: vec![],
            history_id: "other".into(),
        });
        let ids: Vec<_> = set.entries().into_iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids, ["9"], "a full list replaces everything");
    }
}
