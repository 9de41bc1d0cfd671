//! The registry's persistence boundary: entries, join tokens and attested nodes, with one
//! revision per entry change so watchers can resume. SQLite is the embedded default
//! (`sqlite`); a Kubernetes custom-resource store is the planned second implementation.
pub mod legacy;
pub mod sqlite;

use std::time::{Duration, SystemTime};

use citadel_api::Selector;
use pki::identity::SpiffeId;

pub use sqlite::SqliteStore;

/// A registration entry: `spiffe_id` may be issued to workloads on `node` that match every
/// selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub spiffe_id: SpiffeId,
    pub node: String,
    /// Sorted and deduplicated, so equal sets compare equal.
    pub selectors: Vec<Selector>,
    pub ttl: Duration,
    pub created_at: SystemTime,
}

/// Which entries a listing wants; every given filter must match.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub node: Option<String>,
    pub spiffe_id: Option<SpiffeId>,
    /// The entry must carry every one of these.
    pub selectors: Vec<Selector>,
}

/// A join token as stored: only its SHA-256 is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenState {
    pub node: String,
    pub expires_at: SystemTime,
    pub used_at: Option<SystemTime>,
}

/// An attested node and the SVIDs citadel accepts from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub name: String,
    /// Hex serial of the node's newest SVID.
    pub serial: String,
    /// The SVID the node renewed with: still accepted for `GRACE` after that renewal, so a
    /// reply lost in transit or a call in flight on the old connection does not fail.
    pub previous_serial: Option<String>,
    pub expires_at: SystemTime,
    pub attested_at: SystemTime,
    pub renewed_at: SystemTime,
    pub agent_version: String,
    pub evicted_at: Option<SystemTime>,
}

impl NodeRecord {
    /// How long the SVID a node renewed with stays accepted.
    pub const GRACE: Duration = Duration::from_secs(60);

    /// Whether `serial` is an SVID citadel still accepts from this node at `now`.
    pub fn accepts(&self, serial: &str, now: SystemTime) -> bool {
        self.evicted_at.is_none()
            && (self.serial == serial
                || (self.previous_serial.as_deref() == Some(serial)
                    && now < self.renewed_at + Self::GRACE))
    }
}

/// A new node SVID, as the store records it.
#[derive(Debug, Clone)]
pub struct NodeSvid {
    pub serial: String,
    pub expires_at: SystemTime,
    pub agent_version: String,
}

/// What changed for one node's entries since a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryChange {
    Upserted(Entry),
    Removed(String),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("an identical entry already exists (SPIFFE ID {spiffe_id}, node {node})")]
    Duplicate { spiffe_id: String, node: String },
    #[error("database {path}: {message}")]
    Database { path: String, message: String },
    #[error(
        "database {path} has schema version {found}, newer than this citadel supports \
         ({supported}); run a newer citadel"
    )]
    NewerSchema {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("migrating {path}: {message}")]
    Migration { path: String, message: String },
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

/// How a conditional node update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOutcome {
    Spent,
    /// Unknown, expired or already used: nothing changed.
    NotSpendable,
}

/// Durable registry state. Every method is one transaction: it happens entirely or not at all.
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Adds all entries or none; returns the new revision.
    fn create_entries(&self, entries: &[Entry]) -> Result<u64, StoreError>;
    /// Removes an entry; `None` if there is no such entry.
    fn delete_entry(&self, id: &str) -> Result<Option<(Entry, u64)>, StoreError>;
    fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, StoreError>;
    /// An entry that assigns `id` to `node` (the longest TTL when several do).
    fn entry_for(&self, node: &str, id: &SpiffeId) -> Result<Option<Entry>, StoreError>;
    /// The newest revision.
    fn revision(&self) -> Result<u64, StoreError>;
    /// The changes to `node`'s entries after `since`, and the revision they bring it to;
    /// `None` when `since` is older than the retained history or newer than the newest
    /// revision, so the caller needs the full list.
    fn node_changes(
        &self,
        node: &str,
        since: u64,
    ) -> Result<Option<(Vec<EntryChange>, u64)>, StoreError>;

    fn insert_token(
        &self,
        hash: &str,
        node: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), StoreError>;
    fn token(&self, hash: &str) -> Result<Option<TokenState>, StoreError>;
    /// Spends an unused, unexpired token and records `node` as (re)attested with `svid`, in
    /// one transaction; exactly one caller can spend a token.
    fn spend_token(
        &self,
        hash: &str,
        node: &str,
        svid: &NodeSvid,
        now: SystemTime,
    ) -> Result<SpendOutcome, StoreError>;

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError>;
    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError>;
    /// Records a renewal made with the SVID `presented`, if the node is not evicted and still
    /// accepts it (`NodeRecord::accepts`; or, with `adopt`, creates the record for a node
    /// attested before this store existed). A renewal with the previous SVID (a retry) keeps
    /// the original renewal time, so it cannot extend that SVID's grace. Returns whether it
    /// was recorded.
    fn record_renewal(
        &self,
        name: &str,
        presented: &str,
        next: &NodeSvid,
        now: SystemTime,
        adopt: bool,
    ) -> Result<bool, StoreError>;
    /// Marks a node evicted and voids its unused join tokens; `None` if there is no record
    /// (with `tombstone`, an evicted record is created instead).
    fn evict(
        &self,
        name: &str,
        now: SystemTime,
        tombstone: bool,
    ) -> Result<Option<NodeRecord>, StoreError>;
    /// A random identity of this store's history, fixed at creation: entry revisions are
    /// comparable only within one history.
    fn history_id(&self) -> Result<String, StoreError>;
    /// SVIDs issued before this instant may belong to nodes attested before the store kept
    /// node records (migrated from `registry.json`); `None` for a store that always had them.
    fn legacy_cutoff(&self) -> Result<Option<SystemTime>, StoreError>;
}
