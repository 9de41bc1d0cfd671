//! Follows citadel's bundle and entry watch streams, reconnecting with backoff; changes reach
//! the manager (and so every workload) as soon as citadel sends them.
use std::sync::Arc;

use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{self, TrustBundleRequest, WatchEntriesRequest};
use pki::TrustDomain;
use pki::identity::parse_spiffe_id;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::manager::{BackoffPolicy, Manager};
use crate::node::NodeStore;
use crate::rotation::{Backoff, unit};
use crate::state::Entry;

/// Converts citadel's entry list, skipping (and logging) anything malformed.
pub fn entries_from(list: &ca::EntryList) -> Vec<Entry> {
    list.entries
        .iter()
        .filter_map(|e| {
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
        })
        .collect()
}

/// Follows `WatchEntries` forever.
pub async fn follow_entries(
    client: NodeCaClient<Channel>,
    manager: Arc<Manager>,
    policy: BackoffPolicy,
    rng: Arc<dyn pki::RandomSource>,
) {
    let mut backoff = Backoff::new(policy.base, policy.cap);
    loop {
        match client.clone().watch_entries(WatchEntriesRequest {}).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(list) => {
                            backoff.reset();
                            manager.set_entries(entries_from(&list));
                        }
                        Err(status) => {
                            tracing::warn!(%status, "entry watch ended");
                            break;
                        }
                    }
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
    client: NodeCaClient<Channel>,
    manager: Arc<Manager>,
    store: NodeStore,
    trust_domain: TrustDomain,
    policy: BackoffPolicy,
    rng: Arc<dyn pki::RandomSource>,
) {
    let mut backoff = Backoff::new(policy.base, policy.cap);
    loop {
        match client
            .clone()
            .watch_trust_bundle(TrustBundleRequest {})
            .await
        {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Some(item) = stream.next().await {
                    let msg = match item {
                        Ok(msg) => msg,
                        Err(status) => {
                            tracing::warn!(%status, "bundle watch ended");
                            break;
                        }
                    };
                    backoff.reset();
                    match pki::TrustBundle::from_jwks(trust_domain.clone(), &msg.jwks) {
                        Ok(bundle) if !bundle.x509_authorities().is_empty() => {
                            if manager.snapshot().bundle.as_ref() != &bundle {
                                if let Err(e) = store.save_bundle(&bundle) {
                                    tracing::error!(error = %e, "could not persist the bundle");
                                }
                                tracing::info!(
                                    sequence = bundle.sequence(),
                                    "trust bundle updated"
                                );
                                manager.set_bundle(bundle);
                            }
                        }
                        Ok(_) => tracing::warn!("ignoring an empty bundle from citadel"),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed bundle from citadel")
                        }
                    }
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot watch the bundle")
            }
        }
        tokio::time::sleep(backoff.next_delay(unit(rng.as_ref()))).await;
    }
}
