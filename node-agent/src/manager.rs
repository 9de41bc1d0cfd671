//! Keeps every identity this node may hand out current: one task per identity mints a key and
//! SVID, rotates at half-life ±10 %, backs off exponentially with jitter when citadel fails, and
//! keeps serving the last SVID while it is still valid. The node SVID is renewed the same way.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pki::identity::SpiffeId;
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{Clock, KeyAlgorithm, PrivateKey, RandomSource, TrustBundle, X509Svid, build_csr};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ca::Ca;
use crate::clock::sleep_until;
use crate::metrics::Metrics;
use crate::node::NodeStore;
use crate::rotation::{Backoff, rotate_at, unit};
use crate::state::{AgentState, Entry, IssuerChains, SvidSlot, WorkloadSvid};

/// Backoff bounds for calls to citadel.
#[derive(Debug, Clone, Copy)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

/// Owns the agent state and the per-identity rotation tasks.
pub struct Manager {
    ca: Arc<dyn Ca>,
    state: watch::Sender<Arc<AgentState>>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    key_algorithm: KeyAlgorithm,
    backoff: BackoffPolicy,
    metrics: Arc<Metrics>,
    bundles: Arc<SharedBundles>,
    tasks: Mutex<HashMap<SpiffeId, JoinHandle<()>>>,
    /// Bounds the mints in flight: at start every identity is due at once, and each call holds
    /// its request buffers (about 11 KB) until citadel answers.
    mints: tokio::sync::Semaphore,
    issuers: IssuerChains,
}

/// Mints in flight towards citadel at once.
pub const MAX_CONCURRENT_MINTS: usize = 16;

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field(
                "identities",
                &self.tasks.lock().map(|t| t.len()).unwrap_or(0),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            tasks.values().for_each(JoinHandle::abort);
        }
    }
}

/// Everything a `Manager` is built from.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub key_algorithm: KeyAlgorithm,
    pub backoff: BackoffPolicy,
}

impl Manager {
    pub fn new(
        ca: Arc<dyn Ca>,
        bundle: TrustBundle,
        bundles: Arc<SharedBundles>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        config: ManagerConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            ca,
            state: watch::Sender::new(Arc::new(AgentState::new(bundle))),
            clock,
            rng,
            key_algorithm: config.key_algorithm,
            backoff: config.backoff,
            metrics,
            bundles,
            tasks: Mutex::new(HashMap::new()),
            mints: tokio::sync::Semaphore::new(MAX_CONCURRENT_MINTS),
            issuers: IssuerChains::default(),
        })
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<AgentState>> {
        self.state.subscribe()
    }

    pub fn snapshot(&self) -> Arc<AgentState> {
        self.state.borrow().clone()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn ca(&self) -> &Arc<dyn Ca> {
        &self.ca
    }

    fn publish(&self, edit: impl FnOnce(&mut AgentState)) {
        self.state.send_modify(|current| {
            let mut next = (**current).clone();
            edit(&mut next);
            *current = Arc::new(next);
        });
    }

    /// A new bundle from citadel: used for verifying citadel and pushed to every workload.
    pub fn set_bundle(&self, bundle: TrustBundle) {
        self.bundles.replace(bundle.clone());
        self.publish(|s| s.bundle = Arc::new(bundle));
    }

    /// A new entry list from citadel: starts tasks (and slots) for new identities, stops those
    /// no entry names any more (their SVIDs are withdrawn at once).
    pub fn set_entries(self: &Arc<Self>, entries: Vec<Arc<Entry>>) {
        let current = self.snapshot();
        let mut slots: HashMap<SpiffeId, Arc<SvidSlot>> = HashMap::with_capacity(entries.len());
        for e in &entries {
            slots.entry(e.spiffe_id.clone()).or_insert_with(|| {
                current
                    .svids
                    .get(&e.spiffe_id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(SvidSlot::new(None)))
            });
        }
        let mut tasks = self.tasks.lock().expect("task lock poisoned");
        tasks.retain(|id, task| {
            let keep = slots.contains_key(id);
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, slot) in &slots {
            tasks.entry(id.clone()).or_insert_with(|| {
                tokio::spawn(self.clone().identity_loop(id.clone(), slot.clone()))
            });
        }
        drop(tasks);
        for (id, slot) in current.svids.iter() {
            if !slots.contains_key(id) {
                slot.send_replace(None);
            }
        }
        self.publish(|s| {
            s.svids = Arc::new(slots);
            s.entries = Some(Arc::new(entries));
        });
    }

    async fn mint(&self, id: &SpiffeId) -> Result<X509Svid, String> {
        let _permit = self.mints.acquire().await.map_err(|e| e.to_string())?;
        let key = PrivateKey::generate(self.key_algorithm).map_err(|e| e.to_string())?;
        let csr = build_csr(&key, id).map_err(|e| e.to_string())?;
        let chain = self
            .ca
            .mint_x509(csr)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        let svid = X509Svid::from_chain(chain)
            .and_then(|s| s.with_key(key))
            .map_err(|e| e.to_string())?;
        if svid.spiffe_id() != id {
            return Err(format!("citadel returned {} for {id}", svid.spiffe_id()));
        }
        Ok(svid)
    }

    async fn identity_loop(self: Arc<Self>, id: SpiffeId, slot: Arc<SvidSlot>) {
        let mut backoff = Backoff::new(self.backoff.base, self.backoff.cap);
        loop {
            // Boxed: while the task sleeps until the next rotation it holds a pointer, not the
            // whole state of a gRPC call.
            match Box::pin(self.mint(&id)).await {
                Ok(svid) => {
                    backoff.reset();
                    self.metrics.rotations.inc();
                    let obtained = self.clock.now().max(svid.leaf().not_before);
                    let at = rotate_at(obtained, svid.not_after(), unit(self.rng.as_ref()));
                    tracing::debug!(%id, serial = svid.serial(), "SVID issued");
                    if let Some(w) = WorkloadSvid::new(svid, &self.issuers) {
                        // Wakes only the streams that watch this identity.
                        slot.send_replace(Some(Arc::new(w)));
                    }
                    sleep_until(self.clock.as_ref(), at).await;
                }
                Err(e) => {
                    self.metrics.rotation_failures.inc();
                    self.withdraw_if_expired(&slot);
                    let delay = backoff.next_delay(unit(self.rng.as_ref()));
                    tracing::warn!(%id, error = %e, retry_in = ?delay, "could not obtain SVID; keeping the current one while valid");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// An expired SVID is worse than none: stop serving it.
    fn withdraw_if_expired(&self, slot: &SvidSlot) {
        let now = self.clock.now();
        let expired = slot.borrow().as_ref().is_some_and(|s| s.not_after() <= now);
        if expired {
            slot.send_replace(None);
        }
    }

    /// Renews the node SVID at half-life with backoff; each renewal is persisted, and every
    /// later call to citadel goes over a new connection that presents it.
    pub async fn node_loop(
        self: Arc<Self>,
        mut current: X509Svid,
        cert: Arc<SwappableCert>,
        store: NodeStore,
    ) {
        let mut backoff = Backoff::new(self.backoff.base, self.backoff.cap);
        let mut obtained = self.clock.now().max(current.leaf().not_before);
        loop {
            let at = rotate_at(obtained, current.not_after(), unit(self.rng.as_ref()));
            sleep_until(self.clock.as_ref(), at).await;
            loop {
                match self.renew_node(current.spiffe_id()).await {
                    Ok(next) => {
                        if let Err(e) = store.save_svid(&next) {
                            tracing::error!(error = %e, "could not persist the renewed node SVID");
                        }
                        match certified_key(&next) {
                            Ok(k) => {
                                cert.store(k);
                                self.ca.node_svid_renewed();
                            }
                            Err(e) => tracing::error!(error = %e, "renewed node SVID unusable"),
                        }
                        tracing::info!(serial = next.serial(), "node SVID renewed");
                        current = next;
                        obtained = self.clock.now().max(current.leaf().not_before);
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay(unit(self.rng.as_ref()));
                        tracing::warn!(error = %e, retry_in = ?delay, "node SVID renewal failed");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }

    async fn renew_node(&self, id: &SpiffeId) -> Result<X509Svid, String> {
        let key = PrivateKey::generate(self.key_algorithm).map_err(|e| e.to_string())?;
        let csr = build_csr(&key, id).map_err(|e| e.to_string())?;
        let chain = self
            .ca
            .renew_node(csr)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        X509Svid::from_chain(chain)
            .and_then(|s| s.with_key(key))
            .map_err(|e| e.to_string())
    }
}
