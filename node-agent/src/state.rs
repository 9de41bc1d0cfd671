//! The agent's immutable snapshot of what it holds, published over `tokio::sync::watch`: the
//! trust bundle, this node's registration entries, and the current SVID of each identity.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use citadel_api::Selector;
use pki::identity::SpiffeId;
use pki::{PrivateKey, TrustBundle, X509Svid};

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

/// A workload SVID with its encodings precomputed, since every push reuses them. `Debug`
/// shows the identity and serial, never the key.
pub struct WorkloadSvid {
    pub svid: X509Svid,
    pub chain_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
    pub chain_der: Vec<u8>,
}

impl std::fmt::Debug for WorkloadSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadSvid")
            .field("spiffe_id", &self.svid.spiffe_id().to_string())
            .field("serial", &self.svid.serial())
            .finish_non_exhaustive()
    }
}

impl WorkloadSvid {
    pub fn new(svid: X509Svid) -> Option<Self> {
        let key: &PrivateKey = svid.key()?;
        let key_pem = key.to_pem();
        let key_der = key.to_der();
        let chain_pem = svid.chain_pem();
        let chain_der = svid
            .chain()
            .iter()
            .flat_map(|c| c.iter().copied())
            .collect();
        Some(Self {
            svid,
            chain_pem,
            key_pem,
            key_der,
            chain_der,
        })
    }

    pub fn id(&self) -> &SpiffeId {
        self.svid.spiffe_id()
    }

    pub fn not_after(&self) -> SystemTime {
        self.svid.not_after()
    }
}

/// Everything a server needs to answer a workload, at one instant.
#[derive(Debug, Clone)]
pub struct AgentState {
    pub bundle: Arc<TrustBundle>,
    /// Set once the first entry list arrived from citadel.
    pub entries: Option<Arc<Vec<Entry>>>,
    pub svids: BTreeMap<SpiffeId, Arc<WorkloadSvid>>,
}

impl AgentState {
    pub fn new(bundle: TrustBundle) -> Self {
        Self {
            bundle: Arc::new(bundle),
            entries: None,
            svids: BTreeMap::new(),
        }
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
        let svids: Vec<_> = entitled
            .iter()
            .filter_map(|id| self.svids.get(id).cloned())
            .collect();
        if svids.is_empty() {
            WorkloadView::Pending
        } else {
            WorkloadView::Ready(svids)
        }
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

    fn entry(id: &str, sels: &[&str]) -> Entry {
        Entry {
            id: id.into(),
            spiffe_id: pki::identity::parse_spiffe_id(id).unwrap(),
            selectors: sels.iter().map(|s| s.parse().unwrap()).collect(),
            ttl_seconds: 60,
        }
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
}
