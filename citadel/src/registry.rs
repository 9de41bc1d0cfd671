//! Registration entries, join tokens and attested nodes: validation and the rules around them,
//! over a durable `Store`. Every change is committed before it becomes visible; watchers of a
//! node wake only for that node's changes (or its eviction).
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_api::Selector;
use pki::RandomSource;
use pki::identity::{SpiffeId, TrustDomain, node_id, parse_spiffe_id};
use tokio::sync::watch;

pub use crate::store::{Entry, EntryChange, EntryFilter, NodeRecord, NodeSvid};
use crate::store::{SpendOutcome, SqliteStore, Store, StoreError, legacy};

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("invalid node name {0:?}: must be a single SPIFFE path segment")]
    InvalidNode(String),
    #[error("{0}")]
    InvalidEntry(String),
    #[error("no entry with id {0}")]
    NoSuchEntry(String),
    #[error("no attested node named {0}")]
    NoSuchNode(String),
    #[error("unknown join token")]
    UnknownToken,
    #[error("join token expired")]
    ExpiredToken,
    #[error("join token already used")]
    UsedToken,
    #[error("node {0} is evicted; it needs a new join token")]
    Evicted(String),
    #[error("node {node} presented SVID {serial}, which citadel no longer accepts for it")]
    UnknownNodeSvid { node: String, serial: String },
    #[error("could not persist registry: {0}")]
    Persist(String),
}

impl From<StoreError> for RegistryError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Duplicate { .. } => RegistryError::InvalidEntry(e.to_string()),
            other => RegistryError::Persist(other.to_string()),
        }
    }
}

/// What a client asks an entry to be.
#[derive(Debug, Clone)]
pub struct EntrySpec {
    pub spiffe_id: String,
    pub node: String,
    pub selectors: Vec<String>,
    pub ttl: Duration,
}

/// What a watching node is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUpdate {
    /// Every entry of the node, replacing what it holds.
    Full { entries: Vec<Entry>, revision: u64 },
    /// What changed since the revision the node holds.
    Changes {
        changes: Vec<EntryChange>,
        revision: u64,
    },
}

/// The signal a node's watchers wait on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeSignal {
    /// Bumped on every change to the node's entries.
    pub changes: u64,
    /// Bumped on every eviction: a stream ends when this moves past the value it started
    /// with, so a node evicted and then re-attested gets working streams again.
    pub evictions: u64,
}

/// What citadel saw of a node since it started (not persisted: it changes on every call).
#[derive(Debug, Clone)]
struct Presence {
    last_seen: SystemTime,
    version: String,
}

/// A node as `node list` shows it.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub record: NodeRecord,
    pub last_seen: Option<SystemTime>,
    pub agent_version: String,
}

/// Entries, tokens and nodes with durable storage and per-node change signals.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn Store>,
    trust_domain: TrustDomain,
    signals: Mutex<HashMap<String, watch::Sender<NodeSignal>>>,
    presence: Mutex<HashMap<String, Presence>>,
    legacy_cutoff: Option<SystemTime>,
    history_id: String,
}

fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    hex::encode(digest.as_ref())
}

impl Registry {
    /// Opens the SQL store in `DATA_DIR/state/citadel.db`, importing a `registry.json` left by
    /// an older citadel first.
    pub fn open(
        data_dir: &Path,
        trust_domain: TrustDomain,
        now: SystemTime,
    ) -> Result<Self, RegistryError> {
        let dir = data_dir.join("state");
        citadel_api::fs::owned_dir(&dir, 0o700)
            .map_err(|e| RegistryError::Persist(e.to_string()))?;
        let store = SqliteStore::open(&dir.join("citadel.db"))?;
        if let Some((entries, tokens)) =
            legacy::import_registry_json(&store, &dir.join("registry.json"), now)?
        {
            tracing::info!(
                entries,
                tokens,
                "imported state/registry.json into the database"
            );
        }
        Self::with_store(Arc::new(store), trust_domain)
    }

    pub fn with_store(
        store: Arc<dyn Store>,
        trust_domain: TrustDomain,
    ) -> Result<Self, RegistryError> {
        let legacy_cutoff = store.legacy_cutoff()?;
        let history_id = store.history_id()?;
        Ok(Self {
            store,
            trust_domain,
            signals: Mutex::default(),
            presence: Mutex::default(),
            legacy_cutoff,
            history_id,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    fn check_node(&self, node: &str) -> Result<(), RegistryError> {
        if node.is_empty() || node_id(&self.trust_domain, node).is_err() || node.contains('/') {
            return Err(RegistryError::InvalidNode(node.into()));
        }
        Ok(())
    }

    fn signal(&self, node: &str, change: impl FnOnce(&mut NodeSignal)) {
        let mut signals = self.signals.lock().expect("signal lock poisoned");
        if let Some(tx) = signals.get(node) {
            tx.send_modify(change);
            if tx.receiver_count() == 0 {
                signals.remove(node);
            }
        }
    }

    /// A receiver that wakes when `node`'s entries change or the node is evicted. Subscribe
    /// before authorizing a stream, so an eviction in between is not missed.
    pub fn subscribe_node(&self, node: &str) -> watch::Receiver<NodeSignal> {
        let mut signals = self.signals.lock().expect("signal lock poisoned");
        signals.retain(|n, tx| n == node || tx.receiver_count() > 0);
        signals
            .entry(node.to_string())
            .or_insert_with(|| watch::Sender::new(NodeSignal::default()))
            .subscribe()
    }

    /// Creates a single-use join token for `node`; returns the token and its expiry.
    pub fn create_token(
        &self,
        node: &str,
        ttl: Duration,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<(String, SystemTime), RegistryError> {
        self.check_node(node)?;
        if ttl.is_zero() {
            return Err(RegistryError::InvalidEntry(
                "token TTL must be positive".into(),
            ));
        }
        let mut raw = [0u8; 32];
        rng.fill(&mut raw);
        let token = format!("{node}.{}", hex::encode(raw));
        let expires = now + ttl;
        self.store
            .insert_token(&token_hash(&token), node, expires, now)?;
        Ok((token, expires))
    }

    /// The node a token is valid for, without spending it.
    pub fn check_token(&self, token: &str, now: SystemTime) -> Result<String, RegistryError> {
        let t = self
            .store
            .token(&token_hash(token))?
            .ok_or(RegistryError::UnknownToken)?;
        if t.used_at.is_some() {
            return Err(RegistryError::UsedToken);
        }
        if now >= t.expires_at {
            return Err(RegistryError::ExpiredToken);
        }
        Ok(t.node)
    }

    /// Spends a token for the node SVID signed with it, durably and in one transaction with
    /// the node's new record. Exactly one caller can win; the others learn why they lost.
    pub fn spend_token(
        &self,
        token: &str,
        node: &str,
        svid: &NodeSvid,
        now: SystemTime,
    ) -> Result<(), RegistryError> {
        match self
            .store
            .spend_token(&token_hash(token), node, svid, now)?
        {
            SpendOutcome::Spent => {
                self.seen(node, &svid.agent_version, now);
                Ok(())
            }
            SpendOutcome::NotSpendable => Err(self
                .check_token(token, now)
                .err()
                .unwrap_or(RegistryError::UsedToken)),
        }
    }

    fn parse_spec(
        &self,
        spec: &EntrySpec,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Entry, RegistryError> {
        let id = parse_spiffe_id(&spec.spiffe_id)
            .map_err(|e| RegistryError::InvalidEntry(format!("spiffe_id: {e}")))?;
        if id.trust_domain() != &self.trust_domain {
            return Err(RegistryError::InvalidEntry(format!(
                "spiffe_id: {id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        if id.path().starts_with("/citadel/") {
            return Err(RegistryError::InvalidEntry(
                "spiffe_id: the /citadel/ path is reserved for citadel and node identities".into(),
            ));
        }
        self.check_node(&spec.node)?;
        let mut selectors: Vec<Selector> = spec
            .selectors
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: citadel_api::SelectorError| {
                RegistryError::InvalidEntry(format!("selectors: {e}"))
            })?;
        if selectors.is_empty() {
            return Err(RegistryError::InvalidEntry(
                "selectors: an entry needs at least one selector".into(),
            ));
        }
        selectors.sort_by_key(ToString::to_string);
        selectors.dedup();
        if spec.ttl.is_zero() {
            return Err(RegistryError::InvalidEntry(
                "ttl: entry TTL must be positive".into(),
            ));
        }
        let mut raw = [0u8; 8];
        rng.fill(&mut raw);
        Ok(Entry {
            id: hex::encode(raw),
            spiffe_id: id,
            node: spec.node.clone(),
            selectors,
            ttl: Duration::from_secs(spec.ttl.as_secs().max(1)),
            // Whole seconds, as stored.
            created_at: UNIX_EPOCH
                + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
        })
    }

    /// Creates every entry or none; an error names the offending entry by its position.
    pub fn create_entries(
        &self,
        specs: &[EntrySpec],
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Vec<Entry>, RegistryError> {
        let entries = specs
            .iter()
            .enumerate()
            .map(|(i, s)| {
                self.parse_spec(s, now, rng).map_err(|e| match e {
                    RegistryError::InvalidEntry(m) if specs.len() > 1 => {
                        RegistryError::InvalidEntry(format!("entries[{i}].{m}"))
                    }
                    other => other,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.store.create_entries(&entries)?;
        let mut nodes: Vec<&str> = entries.iter().map(|e| e.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        for node in nodes {
            self.signal(node, |s| s.changes += 1);
        }
        Ok(entries)
    }

    pub fn create_entry(
        &self,
        spec: EntrySpec,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Entry, RegistryError> {
        Ok(self
            .create_entries(&[spec], now, rng)?
            .pop()
            .expect("one entry created"))
    }

    pub fn delete_entry(&self, entry_id: &str) -> Result<Entry, RegistryError> {
        let (entry, _) = self
            .store
            .delete_entry(entry_id)?
            .ok_or_else(|| RegistryError::NoSuchEntry(entry_id.into()))?;
        self.signal(&entry.node, |s| s.changes += 1);
        Ok(entry)
    }

    pub fn entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, RegistryError> {
        Ok(self.store.list_entries(filter)?)
    }

    pub fn revision(&self) -> Result<u64, RegistryError> {
        Ok(self.store.revision()?)
    }

    /// The entry that lets `node` hold `id`, if any.
    pub fn entry_for(&self, node: &str, id: &SpiffeId) -> Result<Option<Entry>, RegistryError> {
        Ok(self.store.entry_for(node, id)?)
    }

    /// The identity of this registry's history; revisions from another one mean nothing here.
    pub fn history_id(&self) -> &str {
        &self.history_id
    }

    /// What a node holding `since` of history `history` needs to be current: the changes, or
    /// everything when it holds nothing (0), a revision older than the kept history, or a
    /// revision of another history (a restored or recreated database).
    pub fn node_update(
        &self,
        node: &str,
        since: u64,
        history: &str,
    ) -> Result<NodeUpdate, RegistryError> {
        if since > 0
            && history == self.history_id
            && let Some((changes, revision)) = self.store.node_changes(node, since)?
        {
            return Ok(NodeUpdate::Changes { changes, revision });
        }
        // Read the revision first: a change landing in between is re-sent, never lost.
        let revision = self.store.revision()?;
        let entries = self.store.list_entries(&EntryFilter {
            node: Some(node.into()),
            ..Default::default()
        })?;
        Ok(NodeUpdate::Full { entries, revision })
    }

    /// Whether `node` may act with the SVID `serial` (issued at `not_before`) at `now`: it
    /// must be attested, not evicted, and the SVID its newest, or the one it renewed with
    /// during the grace period after that renewal.
    pub fn authorize_node(
        &self,
        node: &str,
        serial: &str,
        not_before: SystemTime,
        now: SystemTime,
    ) -> Result<(), RegistryError> {
        match self.store.node(node)? {
            Some(r) if r.evicted_at.is_some() => Err(RegistryError::Evicted(node.into())),
            Some(r) if r.accepts(serial, now) => Ok(()),
            None if self.is_legacy(not_before) => Ok(()),
            _ => Err(RegistryError::UnknownNodeSvid {
                node: node.into(),
                serial: serial.into(),
            }),
        }
    }

    /// A node attested by an older citadel (before node records) keeps working until its
    /// first renewal here records it.
    fn is_legacy(&self, not_before: SystemTime) -> bool {
        self.legacy_cutoff.is_some_and(|cutoff| not_before < cutoff)
    }

    /// Records a node SVID renewed with `presented`; refused if the node was evicted meanwhile.
    pub fn record_renewal(
        &self,
        node: &str,
        presented: &str,
        presented_not_before: SystemTime,
        next: &NodeSvid,
        now: SystemTime,
    ) -> Result<(), RegistryError> {
        let adopt = self.is_legacy(presented_not_before);
        if self
            .store
            .record_renewal(node, presented, next, now, adopt)?
        {
            return Ok(());
        }
        // Lost a race with an eviction or another renewal: say which.
        self.authorize_node(node, presented, presented_not_before, now)?;
        Err(RegistryError::UnknownNodeSvid {
            node: node.into(),
            serial: presented.into(),
        })
    }

    /// Notes that `node` called, with its reported agent version.
    pub fn seen(&self, node: &str, version: &str, now: SystemTime) {
        let mut presence = self.presence.lock().expect("presence lock poisoned");
        match presence.get_mut(node) {
            Some(p) => {
                p.last_seen = now;
                if !version.is_empty() && p.version != version {
                    p.version = version.to_string();
                }
            }
            None => {
                presence.insert(
                    node.to_string(),
                    Presence {
                        last_seen: now,
                        version: version.to_string(),
                    },
                );
            }
        }
    }

    pub fn nodes(&self) -> Result<Vec<NodeStatus>, RegistryError> {
        let presence = self
            .presence
            .lock()
            .expect("presence lock poisoned")
            .clone();
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|record| {
                let p = presence.get(&record.name);
                NodeStatus {
                    last_seen: p.map(|p| p.last_seen),
                    agent_version: p
                        .map(|p| p.version.clone())
                        .filter(|v| !v.is_empty())
                        .unwrap_or_else(|| record.agent_version.clone()),
                    record,
                }
            })
            .collect())
    }

    /// Evicts a node: refused from its next call on, its watchers told at once, and join
    /// tokens issued for it before now are void.
    pub fn evict(&self, node: &str, now: SystemTime) -> Result<NodeRecord, RegistryError> {
        self.check_node(node)?;
        // A node attested before node records existed has none yet: record it evicted.
        let record = self
            .store
            .evict(node, now, self.legacy_cutoff.is_some())?
            .ok_or_else(|| RegistryError::NoSuchNode(node.into()))?;
        self.signal(node, |s| s.evictions += 1);
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::identity::parse_trust_domain;

    fn registry(dir: &Path) -> Registry {
        Registry::open(
            dir,
            parse_trust_domain("cluster.local").unwrap(),
            SystemTime::now(),
        )
        .unwrap()
    }

    fn spec(id: &str, node: &str, sel: &str) -> EntrySpec {
        EntrySpec {
            spiffe_id: id.into(),
            node: node.into(),
            selectors: vec![sel.into()],
            ttl: Duration::from_secs(3600),
        }
    }

    fn svid(serial: &str) -> NodeSvid {
        NodeSvid {
            serial: serial.into(),
            expires_at: SystemTime::now() + Duration::from_secs(3600),
            agent_version: "test".into(),
        }
    }

    #[test]
    fn a_token_names_its_node_works_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (token, _) = r
            .create_token("node-1", Duration::from_secs(600), t0, &pki::SystemRandom)
            .unwrap();
        assert_eq!(citadel_api::join_token_node(&token), Some("node-1"));
        assert_eq!(r.check_token(&token, t0).unwrap(), "node-1");
        r.spend_token(&token, "node-1", &svid("01"), t0).unwrap();
        assert_eq!(
            r.spend_token(&token, "node-1", &svid("02"), t0),
            Err(RegistryError::UsedToken)
        );
        let (late, _) = r
            .create_token("node-2", Duration::from_secs(600), t0, &pki::SystemRandom)
            .unwrap();
        assert_eq!(
            r.check_token(&late, t0 + Duration::from_secs(600)),
            Err(RegistryError::ExpiredToken)
        );
        assert_eq!(
            r.spend_token(&late, "node-2", &svid("03"), t0 + Duration::from_secs(600)),
            Err(RegistryError::ExpiredToken)
        );
        assert_eq!(r.check_token("nope", t0), Err(RegistryError::UnknownToken));
        // Spent state survives a restart, and the database never holds the token itself.
        drop(r);
        let again = registry(dir.path());
        assert_eq!(again.check_token(&token, t0), Err(RegistryError::UsedToken));
        for file in ["citadel.db", "citadel.db-wal"] {
            if let Ok(bytes) = std::fs::read(dir.path().join("state").join(file)) {
                let secret = token.rsplit_once('.').unwrap().1;
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{file} holds the token"
                );
            }
        }
    }

    #[test]
    fn entries_are_validated_persisted_and_signal_only_their_node() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let mut n1 = r.subscribe_node("n1");
        let n2 = r.subscribe_node("n2");
        let now = SystemTime::now();
        let e = r
            .create_entry(
                spec("spiffe://cluster.local/ns/a/sa/b", "n1", "unix:uid:1000"),
                now,
                &pki::SystemRandom,
            )
            .unwrap();
        assert!(n1.has_changed().unwrap());
        assert!(!n2.has_changed().unwrap(), "another node's change");
        n1.borrow_and_update();
        for (id, node, sel) in [
            ("spiffe://other.org/ns/a/sa/b", "n1", "unix:uid:1"),
            ("spiffe://cluster.local/citadel/node/x", "n1", "unix:uid:1"),
            ("not an id", "n1", "unix:uid:1"),
            ("spiffe://cluster.local/ns/a/sa/b", "bad/node", "unix:uid:1"),
            ("spiffe://cluster.local/ns/a/sa/b", "n1", "k8s:ns:x"),
            ("spiffe://cluster.local/ns/a/sa/b", "n1", "unix:uid:1000"),
        ] {
            assert!(
                r.create_entry(spec(id, node, sel), now, &pki::SystemRandom)
                    .is_err(),
                "{id} {node} {sel}"
            );
        }
        assert!(
            !n1.has_changed().unwrap(),
            "refused changes must not wake watchers"
        );
        let batch = r.create_entries(
            &[
                spec("spiffe://cluster.local/ns/a/sa/c", "n2", "unix:uid:1"),
                spec("spiffe://cluster.local/ns/a/sa/b", "n1", "unix:uid:1000"),
            ],
            now,
            &pki::SystemRandom,
        );
        assert!(
            matches!(&batch, Err(RegistryError::InvalidEntry(m)) if m.contains("identical")),
            "{batch:?}"
        );
        assert!(
            r.entries(&EntryFilter::default()).unwrap().len() == 1,
            "a failed batch creates nothing"
        );
        drop(r);
        let r = registry(dir.path());
        let filter = EntryFilter {
            node: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(r.entries(&filter).unwrap(), vec![e.clone()]);
        assert!(r.entry_for("n1", &e.spiffe_id).unwrap().is_some());
        assert!(r.entry_for("n2", &e.spiffe_id).unwrap().is_none());
        let before = r.revision().unwrap();
        r.delete_entry(&e.id).unwrap();
        assert_eq!(
            r.node_update("n1", before, r.history_id()).unwrap(),
            NodeUpdate::Changes {
                changes: vec![EntryChange::Removed(e.id.clone())],
                revision: before + 1
            }
        );
        assert_eq!(
            r.delete_entry(&e.id),
            Err(RegistryError::NoSuchEntry(e.id.clone()))
        );
        assert!(r.entries(&EntryFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn a_node_update_carries_only_that_nodes_changes_since_a_revision() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let now = SystemTime::now();
        let a = r
            .create_entry(
                spec("spiffe://cluster.local/a", "n1", "unix:uid:1"),
                now,
                &pki::SystemRandom,
            )
            .unwrap();
        let h = r.history_id().to_string();
        let NodeUpdate::Full { entries, revision } = r.node_update("n1", 0, &h).unwrap() else {
            panic!("0 asks for the full list");
        };
        assert_eq!(entries, vec![a.clone()]);
        r.create_entry(
            spec("spiffe://cluster.local/other", "n2", "unix:uid:1"),
            now,
            &pki::SystemRandom,
        )
        .unwrap();
        let b = r
            .create_entry(
                spec("spiffe://cluster.local/b", "n1", "unix:uid:2"),
                now,
                &pki::SystemRandom,
            )
            .unwrap();
        assert_eq!(
            r.node_update("n1", revision, &h).unwrap(),
            NodeUpdate::Changes {
                changes: vec![EntryChange::Upserted(b)],
                revision: revision + 2
            }
        );
        // A revision this database never reached, or one of another history (a restored or
        // recreated database), means a full resend.
        assert!(matches!(
            r.node_update("n1", revision + 100, &h).unwrap(),
            NodeUpdate::Full { .. }
        ));
        assert!(matches!(
            r.node_update("n1", revision, "another-history").unwrap(),
            NodeUpdate::Full { .. }
        ));
    }

    #[test]
    fn eviction_refuses_the_node_until_a_new_token() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let now = SystemTime::now();
        let (token, _) = r
            .create_token("n1", Duration::from_secs(60), now, &pki::SystemRandom)
            .unwrap();
        r.spend_token(&token, "n1", &svid("aa"), now).unwrap();
        r.authorize_node("n1", "aa", now, now).unwrap();
        assert!(matches!(
            r.authorize_node("n1", "bb", now, now),
            Err(RegistryError::UnknownNodeSvid { .. })
        ));
        r.record_renewal("n1", "aa", now, &svid("bb"), now).unwrap();
        r.authorize_node("n1", "aa", now, now).unwrap();
        r.authorize_node("n1", "bb", now, now).unwrap();
        r.record_renewal("n1", "bb", now, &svid("cc"), now).unwrap();
        assert!(
            r.authorize_node("n1", "aa", now, now).is_err(),
            "two renewals ago"
        );
        let mut watch = r.subscribe_node("n1");
        let (unused, _) = r
            .create_token("n1", Duration::from_secs(60), now, &pki::SystemRandom)
            .unwrap();
        r.evict("n1", now).unwrap();
        assert_eq!(watch.borrow_and_update().evictions, 1);
        assert!(
            r.check_token(&unused, now).is_err(),
            "a token issued before the eviction is void"
        );
        assert_eq!(
            r.authorize_node("n1", "cc", now, now),
            Err(RegistryError::Evicted("n1".into()))
        );
        assert_eq!(
            r.record_renewal("n1", "cc", now, &svid("dd"), now),
            Err(RegistryError::Evicted("n1".into()))
        );
        assert_eq!(
            r.evict("nobody", now),
            Err(RegistryError::NoSuchNode("nobody".into()))
        );
        let (fresh, _) = r
            .create_token("n1", Duration::from_secs(60), now, &pki::SystemRandom)
            .unwrap();
        r.spend_token(&fresh, "n1", &svid("ee"), now).unwrap();
        r.authorize_node("n1", "ee", now, now).unwrap();
        assert!(
            r.authorize_node("n1", "cc", now, now).is_err(),
            "SVIDs from before the eviction stay refused"
        );
    }

    #[test]
    fn the_svid_a_node_renewed_with_is_accepted_only_briefly() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let now = SystemTime::now();
        let (token, _) = r
            .create_token("n1", Duration::from_secs(60), now, &pki::SystemRandom)
            .unwrap();
        r.spend_token(&token, "n1", &svid("aa"), now).unwrap();
        r.record_renewal("n1", "aa", now, &svid("bb"), now).unwrap();
        let later = now + Duration::from_secs(30);
        r.authorize_node("n1", "aa", now, later).unwrap();
        // A retry of the renewal with the old SVID (its reply was lost) still works, but does
        // not extend the old SVID's grace.
        r.record_renewal("n1", "aa", now, &svid("cc"), later)
            .unwrap();
        let past_grace = now + NodeRecord::GRACE + Duration::from_secs(1);
        assert!(r.authorize_node("n1", "aa", now, past_grace).is_err());
        r.authorize_node("n1", "cc", now, past_grace).unwrap();
        assert!(
            r.record_renewal("n1", "aa", now, &svid("dd"), past_grace)
                .is_err(),
            "an old SVID cannot renew after the grace period"
        );
    }

    #[test]
    fn registry_json_is_imported_once_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let json = serde_json::json!({
            "revision": 3,
            "entries": {
                "00aa": {"spiffe_id": "spiffe://cluster.local/ns/a/sa/web", "node": "n1",
                         "selectors": ["unix:uid:1000"], "ttl_seconds": 600, "created_at_unix": 1_700_000_000u64},
            },
            "tokens": {
                token_hash("used"): {"node": "n1", "expires_at_unix": 4_000_000_000u64, "used_at_unix": 1_700_000_000u64},
                token_hash("fresh"): {"node": "n2", "expires_at_unix": 4_000_000_000u64, "used_at_unix": null},
            }
        });
        std::fs::write(dir.path().join("state/registry.json"), json.to_string()).unwrap();
        let cutoff = SystemTime::now();
        let r = Registry::open(
            dir.path(),
            parse_trust_domain("cluster.local").unwrap(),
            cutoff,
        )
        .unwrap();
        let entries = r.entries(&EntryFilter::default()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].id, "00aa");
        assert_eq!(entries[0].ttl, Duration::from_secs(600));
        let now = SystemTime::now();
        assert_eq!(r.check_token("used", now), Err(RegistryError::UsedToken));
        assert_eq!(r.check_token("fresh", now).unwrap(), "n2");
        assert!(dir.path().join("state/registry.json.migrated").exists());
        // An agent attested before the upgrade keeps working and is recorded at renewal.
        let before = cutoff - Duration::from_secs(10);
        r.authorize_node("n1", "legacy", before, now).unwrap();
        assert!(r.authorize_node("n1", "legacy", cutoff, now).is_err());
        r.record_renewal("n1", "legacy", before, &svid("new"), now)
            .unwrap();
        r.authorize_node("n1", "new", now, now).unwrap();
        drop(r);
        // Reopening does not import again.
        std::fs::write(dir.path().join("state/registry.json"), json.to_string()).unwrap();
        let r = registry(dir.path());
        assert_eq!(r.entries(&EntryFilter::default()).unwrap().len(), 1);
    }
}
