//! Registration entries and join tokens, persisted atomically in `DATA_DIR/state/registry.json`.
//! Every change is written before it becomes visible; a failed write changes nothing.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_api::Selector;
use pki::RandomSource;
use pki::identity::{SpiffeId, TrustDomain, node_id, parse_spiffe_id};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::storage::{PRIVATE, atomic_write, private_dir};

/// Why a registry operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("invalid node name {0:?}: must be a single SPIFFE path segment")]
    InvalidNode(String),
    #[error("{0}")]
    InvalidEntry(String),
    #[error("no entry with id {0}")]
    NoSuchEntry(String),
    #[error("unknown join token")]
    UnknownToken,
    #[error("join token expired")]
    ExpiredToken,
    #[error("join token already used")]
    UsedToken,
    #[error("could not persist registry: {0}")]
    Persist(String),
}

impl RegistryError {
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::InvalidNode(_) => "invalid_node",
            RegistryError::InvalidEntry(_) => "invalid_entry",
            RegistryError::NoSuchEntry(_) => "no_such_entry",
            RegistryError::UnknownToken => "token_unknown",
            RegistryError::ExpiredToken => "token_expired",
            RegistryError::UsedToken => "token_reused",
            RegistryError::Persist(_) => "persist_failed",
        }
    }
}

/// A registration entry: `spiffe_id` may be issued to workloads on `node` that match every
/// selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub node: String,
    pub selectors: Vec<Selector>,
    pub ttl: Duration,
    pub created_at: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredEntry {
    spiffe_id: String,
    node: String,
    selectors: Vec<String>,
    ttl_seconds: u64,
    created_at_unix: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    node: String,
    expires_at_unix: u64,
    used_at_unix: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Data {
    revision: u64,
    entries: BTreeMap<String, StoredEntry>,
    /// Keyed by SHA-256 of the token, so the file never holds a usable token.
    tokens: BTreeMap<String, StoredToken>,
}

/// How long spent or expired tokens are remembered (to answer "reused" rather than "unknown").
const TOKEN_MEMORY: Duration = Duration::from_secs(7 * 86400);

/// Entries and tokens with durable storage and a revision watch for entry changes.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    trust_domain: TrustDomain,
    data: Mutex<Data>,
    revision: watch::Sender<u64>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    hex::encode(digest.as_ref())
}

impl Registry {
    pub fn open(data_dir: &Path, trust_domain: TrustDomain) -> Result<Self, RegistryError> {
        let dir = data_dir.join("state");
        private_dir(&dir).map_err(|e| RegistryError::Persist(e.to_string()))?;
        let path = dir.join("registry.json");
        let data = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::Persist(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Data::default(),
            Err(e) => return Err(RegistryError::Persist(format!("{}: {e}", path.display()))),
        };
        let revision = watch::Sender::new(data.revision);
        Ok(Self {
            path,
            trust_domain,
            data: Mutex::new(data),
            revision,
        })
    }

    /// Applies `change` to a copy, persists it, and only then makes it current.
    fn update<T>(
        &self,
        change: impl FnOnce(&mut Data) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut guard = self.data.lock().expect("registry lock poisoned");
        let mut next = guard.clone();
        let out = change(&mut next)?;
        let bytes =
            serde_json::to_vec_pretty(&next).map_err(|e| RegistryError::Persist(e.to_string()))?;
        atomic_write(&self.path, &bytes, PRIVATE)
            .map_err(|e| RegistryError::Persist(e.to_string()))?;
        let entries_changed = next.revision != guard.revision;
        *guard = next;
        if entries_changed {
            self.revision.send_replace(guard.revision);
        }
        Ok(out)
    }

    fn check_node(&self, node: &str) -> Result<(), RegistryError> {
        if node.is_empty() || node_id(&self.trust_domain, node).is_err() || node.contains('/') {
            return Err(RegistryError::InvalidNode(node.into()));
        }
        Ok(())
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
        let token = hex::encode(raw);
        let expires = now + ttl;
        self.update(|d| {
            let horizon = unix(now).saturating_sub(TOKEN_MEMORY.as_secs());
            d.tokens.retain(|_, t| t.expires_at_unix > horizon);
            d.tokens.insert(
                token_hash(&token),
                StoredToken {
                    node: node.into(),
                    expires_at_unix: unix(expires),
                    used_at_unix: None,
                },
            );
            Ok(())
        })?;
        Ok((token, expires))
    }

    /// The node a token is valid for, without spending it.
    pub fn check_token(&self, token: &str, now: SystemTime) -> Result<String, RegistryError> {
        let data = self.data.lock().expect("registry lock poisoned");
        Self::valid_token(&data, &token_hash(token), now).map(|t| t.node.clone())
    }

    fn valid_token<'a>(
        data: &'a Data,
        hash: &str,
        now: SystemTime,
    ) -> Result<&'a StoredToken, RegistryError> {
        let t = data.tokens.get(hash).ok_or(RegistryError::UnknownToken)?;
        if t.used_at_unix.is_some() {
            return Err(RegistryError::UsedToken);
        }
        if unix(now) >= t.expires_at_unix {
            return Err(RegistryError::ExpiredToken);
        }
        Ok(t)
    }

    /// Spends a token (durably) and returns its node. Exactly one caller can win.
    pub fn consume_token(&self, token: &str, now: SystemTime) -> Result<String, RegistryError> {
        let hash = token_hash(token);
        self.update(|d| {
            let node = Self::valid_token(d, &hash, now)?.node.clone();
            d.tokens.get_mut(&hash).expect("checked above").used_at_unix = Some(unix(now));
            Ok(node)
        })
    }

    pub fn create_entry(
        &self,
        spiffe_id: &str,
        node: &str,
        selectors: &[String],
        ttl: Duration,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Entry, RegistryError> {
        let id =
            parse_spiffe_id(spiffe_id).map_err(|e| RegistryError::InvalidEntry(e.to_string()))?;
        if id.trust_domain() != &self.trust_domain {
            return Err(RegistryError::InvalidEntry(format!(
                "{id} is not in trust domain {}",
                self.trust_domain
            )));
        }
        if id.path().starts_with("/citadel/") {
            return Err(RegistryError::InvalidEntry(
                "the /citadel/ path is reserved for citadel and node identities".into(),
            ));
        }
        self.check_node(node)?;
        let parsed: Vec<Selector> = selectors
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .map_err(|e: citadel_api::SelectorError| RegistryError::InvalidEntry(e.to_string()))?;
        if parsed.is_empty() {
            return Err(RegistryError::InvalidEntry(
                "an entry needs at least one selector".into(),
            ));
        }
        if ttl.is_zero() {
            return Err(RegistryError::InvalidEntry(
                "entry TTL must be positive".into(),
            ));
        }
        let mut raw = [0u8; 8];
        rng.fill(&mut raw);
        let entry_id = hex::encode(raw);
        let stored = StoredEntry {
            spiffe_id: id.to_string(),
            node: node.into(),
            selectors: parsed.iter().map(ToString::to_string).collect(),
            ttl_seconds: ttl.as_secs().max(1),
            created_at_unix: unix(now),
        };
        self.update(|d| {
            let duplicate = d.entries.values().any(|e| {
                e.spiffe_id == stored.spiffe_id
                    && e.node == stored.node
                    && sorted(&e.selectors) == sorted(&stored.selectors)
            });
            if duplicate {
                return Err(RegistryError::InvalidEntry(
                    "an identical entry already exists".into(),
                ));
            }
            d.entries.insert(entry_id.clone(), stored.clone());
            d.revision += 1;
            Ok(())
        })?;
        Ok(to_entry(&entry_id, &stored).expect("validated above"))
    }

    pub fn delete_entry(&self, entry_id: &str) -> Result<Entry, RegistryError> {
        self.update(|d| {
            let removed = d
                .entries
                .remove(entry_id)
                .ok_or_else(|| RegistryError::NoSuchEntry(entry_id.into()))?;
            d.revision += 1;
            Ok(to_entry(entry_id, &removed).expect("stored entries are valid"))
        })
    }

    /// All entries, or those of one node.
    pub fn entries(&self, node: Option<&str>) -> (Vec<Entry>, u64) {
        let data = self.data.lock().expect("registry lock poisoned");
        let list = data
            .entries
            .iter()
            .filter(|(_, e)| node.is_none_or(|n| e.node == n))
            .filter_map(|(id, e)| to_entry(id, e))
            .collect();
        (list, data.revision)
    }

    /// The entry that lets `node` hold `id`, if any.
    pub fn entry_for(&self, node: &str, id: &SpiffeId) -> Option<Entry> {
        self.entries(Some(node))
            .0
            .into_iter()
            .find(|e| &e.spiffe_id == id)
    }

    /// Whether any entry still assigns `id`.
    pub fn id_registered(&self, id: &SpiffeId) -> bool {
        self.entries(None).0.iter().any(|e| &e.spiffe_id == id)
    }

    /// A receiver that wakes on every entry change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision.subscribe()
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn to_entry(id: &str, e: &StoredEntry) -> Option<Entry> {
    Some(Entry {
        id: id.into(),
        spiffe_id: parse_spiffe_id(&e.spiffe_id).ok()?,
        node: e.node.clone(),
        selectors: e
            .selectors
            .iter()
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?,
        ttl: Duration::from_secs(e.ttl_seconds),
        created_at: UNIX_EPOCH + Duration::from_secs(e.created_at_unix),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pki::identity::parse_trust_domain;

    fn registry(dir: &Path) -> Registry {
        Registry::open(dir, parse_trust_domain("cluster.local").unwrap()).unwrap()
    }

    #[test]
    fn a_token_works_once_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (token, _) = r
            .create_token("node-1", Duration::from_secs(600), t0, &pki::SystemRandom)
            .unwrap();
        assert_eq!(r.check_token(&token, t0).unwrap(), "node-1");
        assert_eq!(r.consume_token(&token, t0).unwrap(), "node-1");
        assert_eq!(r.consume_token(&token, t0), Err(RegistryError::UsedToken));
        let (late, _) = r
            .create_token("node-2", Duration::from_secs(600), t0, &pki::SystemRandom)
            .unwrap();
        assert_eq!(
            r.check_token(&late, t0 + Duration::from_secs(600)),
            Err(RegistryError::ExpiredToken)
        );
        assert_eq!(r.check_token("nope", t0), Err(RegistryError::UnknownToken));
        // Spent state survives a restart, and the file never holds the token itself.
        let again = registry(dir.path());
        assert_eq!(
            again.consume_token(&token, t0),
            Err(RegistryError::UsedToken)
        );
        let file = std::fs::read_to_string(dir.path().join("state/registry.json")).unwrap();
        assert!(!file.contains(&token));
    }

    #[test]
    fn entries_are_validated_persisted_and_watched() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let mut rx = r.subscribe();
        let now = SystemTime::now();
        let e = r
            .create_entry(
                "spiffe://cluster.local/ns/a/sa/b",
                "n1",
                &["unix:uid:1000".into()],
                Duration::from_secs(3600),
                now,
                &pki::SystemRandom,
            )
            .unwrap();
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        for (id, node, sel) in [
            ("spiffe://other.org/ns/a/sa/b", "n1", "unix:uid:1"),
            ("spiffe://cluster.local/citadel/node/x", "n1", "unix:uid:1"),
            ("not an id", "n1", "unix:uid:1"),
            ("spiffe://cluster.local/ns/a/sa/b", "bad/node", "unix:uid:1"),
            ("spiffe://cluster.local/ns/a/sa/b", "n1", "k8s:ns:x"),
            ("spiffe://cluster.local/ns/a/sa/b", "n1", "unix:uid:1000"),
        ] {
            assert!(
                r.create_entry(
                    id,
                    node,
                    &[sel.into()],
                    Duration::from_secs(60),
                    now,
                    &pki::SystemRandom
                )
                .is_err(),
                "{id} {node} {sel}"
            );
        }
        assert!(
            !rx.has_changed().unwrap(),
            "refused changes must not wake watchers"
        );
        assert_eq!(registry(dir.path()).entries(Some("n1")).0, vec![e.clone()]);
        assert!(r.entry_for("n1", &e.spiffe_id).is_some());
        assert!(r.entry_for("n2", &e.spiffe_id).is_none());
        r.delete_entry(&e.id).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(
            r.delete_entry(&e.id),
            Err(RegistryError::NoSuchEntry(e.id.clone()))
        );
        assert!(registry(dir.path()).entries(None).0.is_empty());
    }
}
