//! The agent's immutable snapshot of what it holds, published over `tokio::sync::watch`: the
//! trust bundle, this node's registration entries, and one slot per identity. A rotation
//! replaces the SVID in its slot (its own `watch`), so it wakes only the streams that watch that
//! identity and copies nothing else; the snapshot itself changes only with entries or bundle.
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use citadel_api::Selector;
use pki::identity::SpiffeId;
use pki::{PrivateKey, TrustBundle, X509Svid};
use rustls_pki_types::CertificateDer;

/// A registration entry as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub selectors: Vec<Selector>,
    pub ttl_seconds: i64,
}

impl Entry {
    /// An entry applies when the workload has every one of its selectors.
    pub fn matches(&self, workload: &[Selector]) -> bool {
        self.selectors.iter().all(|s| workload.contains(s))
    }
}

/// A workload SVID as the agent serves it, and the SDS secret named by its SPIFFE ID, built once
/// for all streams. Only what serving needs is kept: the leaf, the issuing chain (shared by every
/// SVID of one issuer), serial, expiry and the key as PKCS#8 DER (the agent never signs with it).
/// PEM is built when a secret is: at 10,000 identities every copy kept per SVID costs megabytes.
/// `Debug` shows the identity and serial, never the key.
pub struct WorkloadSvid {
    id: SpiffeId,
    leaf: CertificateDer<'static>,
    issuers: Arc<[CertificateDer<'static>]>,
    serial: Box<str>,
    not_after: SystemTime,
    key_der: Box<[u8]>,
    /// The `Secret` named by the SPIFFE ID, shared by every stream that asks for it.
    pub shared: OnceLock<sds::NamedResource>,
}

impl std::fmt::Debug for WorkloadSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSvid")
            .field("spiffe_id", &self.id.to_string())
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl WorkloadSvid {
    /// Keeps what serving needs of `svid`; `None` without a key. The issuing chain comes from
    /// `issuers`, so SVIDs of one intermediate hold it once.
    pub fn new(mut svid: X509Svid, issuers: &IssuerChains) -> Option<Self> {
        let key: PrivateKey = svid.take_key()?;
        let (leaf, rest) = svid.chain().split_first()?;
        Some(Self {
            id: svid.spiffe_id().clone(),
            leaf: leaf.clone(),
            issuers: issuers.intern(rest),
            serial: svid.serial().into(),
            not_after: svid.not_after(),
            key_der: key.to_der().into_boxed_slice(),
            shared: OnceLock::new(),
        })
    }

    fn chain(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        std::iter::once(&self.leaf).chain(self.issuers.iter())
    }

    /// The chain as concatenated DER, leaf first (the Workload API's form).
    pub fn chain_der(&self) -> Vec<u8> {
        self.chain().flat_map(|c| c.iter().copied()).collect()
    }

    /// The chain as PEM, leaf first (Envoy's `certificate_chain`).
    pub fn chain_pem(&self) -> String {
        pki::pem::encode_certificates(self.chain())
    }

    /// The private key as PKCS#8 PEM (Envoy's `private_key`).
    pub fn key_pem(&self) -> String {
        pki::pem::encode_private_key(&self.key_der)
    }

    /// The private key as PKCS#8 DER.
    pub fn key_der(&self) -> Vec<u8> {
        self.key_der.to_vec()
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// The issuing chains of recent SVIDs, so that SVIDs of one intermediate share one copy. Holds a
/// few (two during a CA rotation); touched once per mint, never on a serving path.
#[derive(Debug, Default)]
pub struct IssuerChains {
    recent: std::sync::Mutex<Vec<Arc<[CertificateDer<'static>]>>>,
}

const RECENT_ISSUER_CHAINS: usize = 4;

impl IssuerChains {
    pub fn intern(&self, chain: &[CertificateDer<'static>]) -> Arc<[CertificateDer<'static>]> {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = recent.iter().find(|c| c.as_ref() == chain) {
            return known.clone();
        }
        let fresh: Arc<[CertificateDer<'static>]> = chain.into();
        if recent.len() == RECENT_ISSUER_CHAINS {
            recent.remove(0);
        }
        recent.push(fresh.clone());
        fresh
    }
}

/// Where one identity's current SVID lives; `None` until minted and after withdrawal.
pub type SvidSlot = tokio::sync::watch::Sender<Option<Arc<WorkloadSvid>>>;

/// Everything a server needs to answer a workload, at one instant (the SVIDs through their
/// slots, which move on their own).
#[derive(Debug, Clone)]
pub struct AgentState {
    pub bundle: Arc<TrustBundle>,
    /// Set once the first entry list arrived from citadel.
    pub entries: Option<Arc<Vec<Arc<Entry>>>>,
    /// One slot per identity the entries name.
    pub svids: Arc<HashMap<SpiffeId, Arc<SvidSlot>>>,
}

impl AgentState {
    pub fn new(bundle: TrustBundle) -> Self {
        Self {
            bundle: Arc::new(bundle),
            entries: None,
            svids: Arc::default(),
        }
    }

    /// The current SVID of `id`, if minted.
    pub fn svid(&self, id: &SpiffeId) -> Option<Arc<WorkloadSvid>> {
        self.svids.get(id)?.borrow().clone()
    }

    /// Every SVID currently held.
    pub fn held(&self) -> Vec<Arc<WorkloadSvid>> {
        self.svids
            .values()
            .filter_map(|slot| slot.borrow().clone())
            .collect()
    }

    /// The identities a workload with `selectors` is entitled to, in entry order, deduplicated.
    pub fn entitled(&self, selectors: &[Selector]) -> Vec<SpiffeId> {
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .flat_map(|e| e.iter())
            .filter(|e| e.matches(selectors) && seen.insert(&e.spiffe_id))
            .map(|e| e.spiffe_id.clone())
            .collect()
    }

    /// The first identity a workload with `selectors` is entitled to (its `default`).
    pub fn first_entitled(&self, selectors: &[Selector]) -> Option<&SpiffeId> {
        self.entries
            .iter()
            .flat_map(|e| e.iter())
            .find(|e| e.matches(selectors))
            .map(|e| &e.spiffe_id)
    }

    /// Whether a workload with `selectors` is entitled to `id`.
    pub fn is_entitled(&self, selectors: &[Selector], id: &SpiffeId) -> bool {
        self.entries
            .iter()
            .flat_map(|e| e.iter())
            .any(|e| &e.spiffe_id == id && e.matches(selectors))
    }

    /// What a workload gets right now.
    pub fn view(&self, selectors: &[Selector]) -> WorkloadView {
        let Some(_) = &self.entries else {
            return WorkloadView::Pending;
        };
        let entitled = self.entitled(selectors);
        if entitled.is_empty() {
            return WorkloadView::NoIdentity;
        }
        let svids: Vec<_> = entitled.iter().filter_map(|id| self.svid(id)).collect();
        if svids.is_empty() {
            WorkloadView::Pending
        } else {
            WorkloadView::Ready(svids)
        }
    }
}

/// The identity slots one stream depends on: it waits for any of them to change.
#[derive(Debug, Default)]
pub struct SlotWatch {
    watching: HashMap<SpiffeId, (Arc<SvidSlot>, SlotReceiver)>,
}

type SlotReceiver = tokio::sync::watch::Receiver<Option<Arc<WorkloadSvid>>>;

impl SlotWatch {
    /// Watches exactly `ids` (slots that do not exist are skipped: an entry change, which
    /// republishes the snapshot, brings them), each marked as seen: call it before reading the
    /// SVIDs, so a rotation in between wakes the stream again.
    pub fn watch<'a>(&mut self, state: &AgentState, ids: impl IntoIterator<Item = &'a SpiffeId>) {
        let mut next = HashMap::new();
        for id in ids {
            if next.contains_key(id) {
                continue;
            }
            let Some(slot) = state.svids.get(id) else {
                continue;
            };
            let watched = match self.watching.remove(id) {
                Some((known, rx)) if Arc::ptr_eq(&known, slot) => (known, rx),
                _ => (slot.clone(), slot.subscribe()),
            };
            next.insert(id.clone(), watched);
        }
        for (_, rx) in next.values_mut() {
            rx.mark_unchanged();
        }
        self.watching = next;
    }

    /// Resolves when one of the watched SVIDs changes; never, when nothing is watched.
    pub async fn changed(&mut self) {
        if self.watching.is_empty() {
            return std::future::pending().await;
        }
        let waits = self
            .watching
            .values_mut()
            .map(|(_, rx)| Box::pin(rx.changed()));
        let _ = futures::future::select_all(waits).await;
    }
}

/// The identities of one workload.
#[derive(Debug, Clone)]
pub enum WorkloadView {
    /// Entitled (or entries not yet known), but no SVID minted yet: wait.
    Pending,
    /// No entry matches: the workload gets nothing.
    NoIdentity,
    /// SVIDs in entry order; the first is the workload's `default`.
    Ready(Vec<Arc<WorkloadSvid>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, sels: &[&str]) -> Arc<Entry> {
        Arc::new(Entry {
            id: id.into(),
            spiffe_id: pki::identity::parse_spiffe_id(id).unwrap(),
            selectors: sels.iter().map(|s| s.parse().unwrap()).collect(),
            ttl_seconds: 60,
        })
    }

    #[test]
    fn svids_of_one_issuer_share_its_chain() {
        let chains = IssuerChains::default();
        let a = vec![CertificateDer::from(vec![1u8, 2, 3])];
        let b = vec![CertificateDer::from(vec![9u8])];
        let first = chains.intern(&a);
        assert!(Arc::ptr_eq(&first, &chains.intern(&a.clone())));
        assert!(!Arc::ptr_eq(&first, &chains.intern(&b)));
        for n in 0..RECENT_ISSUER_CHAINS as u8 {
            chains.intern(&[CertificateDer::from(vec![n, n])]);
        }
        let again = chains.intern(&a);
        assert_eq!(
            again.as_ref(),
            a.as_slice(),
            "an evicted chain is kept anew, not lost"
        );
    }

    #[test]
    fn entries_match_when_all_selectors_are_present() {
        let mut state = AgentState::new(TrustBundle::new(
            pki::identity::parse_trust_domain("cluster.local").unwrap(),
        ));
        let workload: Vec<Selector> = ["unix:uid:1000", "unix:path:/usr/bin/envoy"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert!(
            matches!(state.view(&workload), WorkloadView::Pending),
            "entries unknown yet"
        );
        state.entries = Some(Arc::new(vec![
            entry("spiffe://cluster.local/a", &["unix:uid:1000"]),
            entry("spiffe://cluster.local/b", &["unix:uid:1000", "unix:gid:5"]),
            entry(
                "spiffe://cluster.local/c",
                &["unix:uid:1000", "unix:path:/usr/bin/envoy"],
            ),
            entry("spiffe://cluster.local/a", &["unix:path:/usr/bin/envoy"]),
        ]));
        let ids: Vec<String> = state
            .entitled(&workload)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ids,
            ["spiffe://cluster.local/a", "spiffe://cluster.local/c"]
        );
        assert!(
            matches!(state.view(&workload), WorkloadView::Pending),
            "entitled but not minted"
        );
        let stranger: Vec<Selector> = vec!["unix:uid:2000".parse().unwrap()];
        assert!(matches!(state.view(&stranger), WorkloadView::NoIdentity));
    }

    #[tokio::test]
    async fn a_rotation_wakes_only_the_watchers_of_that_identity() {
        use futures::FutureExt;
        let td = pki::identity::parse_trust_domain("cluster.local").unwrap();
        let mut state = AgentState::new(TrustBundle::new(td));
        let a = pki::identity::parse_spiffe_id("spiffe://cluster.local/a").unwrap();
        let b = pki::identity::parse_spiffe_id("spiffe://cluster.local/b").unwrap();
        let slots: HashMap<_, _> = [a.clone(), b.clone()]
            .into_iter()
            .map(|id| (id, Arc::new(SvidSlot::new(None))))
            .collect();
        state.svids = Arc::new(slots);
        let mut watches_a = SlotWatch::default();
        let mut watches_b = SlotWatch::default();
        watches_a.watch(&state, [&a]);
        watches_b.watch(&state, [&b]);
        assert!(watches_a.changed().now_or_never().is_none());
        state.svids[&a].send_replace(None);
        assert!(
            watches_a.changed().now_or_never().is_some(),
            "a's watcher wakes"
        );
        assert!(
            watches_b.changed().now_or_never().is_none(),
            "b's watcher does not"
        );
        watches_a.watch(&state, [&a]);
        assert!(
            watches_a.changed().now_or_never().is_none(),
            "re-watching marks the change seen"
        );
        let mut nothing = SlotWatch::default();
        assert!(nothing.changed().now_or_never().is_none());
    }
}
