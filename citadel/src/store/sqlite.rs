//! The embedded store: SQLite (bundled) in WAL mode with full fsync, versioned migrations
//! checked at start, and an `entry_changes` log that lets watchers resume from a revision.
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_api::Selector;
use pki::identity::{SpiffeId, parse_spiffe_id};
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{
    Entry, EntryChange, EntryFilter, NodeRecord, NodeSvid, SpendOutcome, Store, StoreError,
    TokenState,
};

/// Schema migrations, in order; `PRAGMA user_version` is how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: entries, their change log, join tokens, nodes, and store metadata.
    "CREATE TABLE entries (
        id TEXT PRIMARY KEY,
        spiffe_id TEXT NOT NULL,
        node TEXT NOT NULL,
        selectors TEXT NOT NULL,
        ttl_seconds INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (spiffe_id, node, selectors)
     );
     CREATE INDEX entries_by_node ON entries (node, spiffe_id);
     CREATE TABLE entry_changes (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        node TEXT NOT NULL,
        entry_id TEXT NOT NULL
     );
     CREATE INDEX entry_changes_by_node ON entry_changes (node, revision);
     CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        node TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER
     );
     CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        serial TEXT NOT NULL,
        previous_serial TEXT,
        expires_at INTEGER NOT NULL,
        attested_at INTEGER NOT NULL,
        renewed_at INTEGER NOT NULL,
        agent_version TEXT NOT NULL,
        evicted_at INTEGER
     );
     CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     INSERT INTO meta (key, value) VALUES ('history_id', lower(hex(randomblob(16))));",
];

/// How many entry changes are kept for resuming watchers; older ones mean a full resend.
const CHANGE_HISTORY: i64 = 200_000;
/// How long spent or expired tokens are remembered (to answer "reused" rather than "unknown").
const TOKEN_MEMORY: Duration = Duration::from_secs(7 * 86400);

/// The SQLite store. One connection: SQLite serializes writers anyway, and every statement
/// here is an indexed lookup.
#[derive(Debug)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn time(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64)
}

/// Selectors in their canonical stored form: sorted, deduplicated, one per line.
fn selector_text(selectors: &[Selector]) -> String {
    let mut v: Vec<String> = selectors.iter().map(ToString::to_string).collect();
    v.sort();
    v.dedup();
    v.join("\n")
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db_err = |e: rusqlite::Error| StoreError::Database {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        // Created 0600 before SQLite opens it; its -wal and -shm files take the same mode.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Database {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        // FULL: a commit is on disk before citadel answers, even across power loss.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        let found: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db_err)?;
        let supported = MIGRATIONS.len() as u32;
        if found > supported {
            return Err(StoreError::NewerSchema {
                path: path.display().to_string(),
                found,
                supported,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = conn.transaction().map_err(db_err)?;
            tx.execute_batch(sql).map_err(|e| StoreError::Migration {
                path: path.display().to_string(),
                message: format!("step {}: {e}", i + 1),
            })?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)
                .map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Database {
            path: self.path.display().to_string(),
            message: e.to_string(),
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.lock().expect("store lock poisoned");
        f(&mut conn).map_err(|e| self.err(e))
    }

    /// Whether a one-time import has run (see `legacy`).
    pub(crate) fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    /// Imports entries and tokens from an older format in one transaction, marking `key` done.
    pub(crate) fn import(
        &self,
        key: &str,
        entries: &[Entry],
        tokens: &[(String, TokenState)],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            for e in entries {
                insert_entry(&tx, e)?;
            }
            for (hash, t) in tokens {
                tx.execute(
                    "INSERT OR IGNORE INTO tokens (hash, node, expires_at, used_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![hash, t.node, unix(t.expires_at), t.used_at.map(unix)],
                )?;
            }
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, unix(now).to_string()],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('legacy_cutoff', ?1)",
                [unix(now).to_string()],
            )?;
            tx.commit()
        })
    }
}

/// The revision of the newest entry change (kept by SQLite even when old rows are pruned).
fn newest_revision(c: &Connection) -> rusqlite::Result<i64> {
    c.query_row(
        "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'entry_changes'), 0)",
        [],
        |r| r.get(0),
    )
}

fn insert_entry(tx: &rusqlite::Transaction<'_>, e: &Entry) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO entries (id, spiffe_id, node, selectors, ttl_seconds, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            e.id,
            e.spiffe_id.to_string(),
            e.node,
            selector_text(&e.selectors),
            e.ttl.as_secs() as i64,
            unix(e.created_at)
        ],
    )?;
    tx.execute(
        "INSERT INTO entry_changes (node, entry_id) VALUES (?1, ?2)",
        params![e.node, e.id],
    )?;
    Ok(())
}

const ENTRY_COLUMNS: &str = "id, spiffe_id, node, selectors, ttl_seconds, created_at";

/// Reads an entry row; a row that no longer parses is reported, not silently skipped.
fn entry_row(r: &Row<'_>) -> rusqlite::Result<Result<Entry, StoreError>> {
    let id: String = r.get(0)?;
    let spiffe_id: String = r.get(1)?;
    let node: String = r.get(2)?;
    let selectors: String = r.get(3)?;
    let ttl: i64 = r.get(4)?;
    let created: i64 = r.get(5)?;
    Ok(parse_entry(id, &spiffe_id, node, &selectors, ttl, created))
}

fn parse_entry(
    id: String,
    spiffe_id: &str,
    node: String,
    selectors: &str,
    ttl: i64,
    created: i64,
) -> Result<Entry, StoreError> {
    let corrupt = |what: String| StoreError::Corrupt(format!("entry {id}: {what}"));
    let spiffe_id: SpiffeId = parse_spiffe_id(spiffe_id).map_err(|e| corrupt(e.to_string()))?;
    let selectors = selectors
        .lines()
        .map(str::parse)
        .collect::<Result<Vec<Selector>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(Entry {
        spiffe_id,
        node,
        selectors,
        ttl: Duration::from_secs(ttl.max(0) as u64),
        created_at: time(created),
        id,
    })
}

fn node_row(r: &Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        name: r.get(0)?,
        serial: r.get(1)?,
        previous_serial: r.get(2)?,
        expires_at: time(r.get(3)?),
        attested_at: time(r.get(4)?),
        renewed_at: time(r.get(5)?),
        agent_version: r.get(6)?,
        evicted_at: r.get::<_, Option<i64>>(7)?.map(time),
    })
}

const NODE_COLUMNS: &str =
    "name, serial, previous_serial, expires_at, attested_at, renewed_at, agent_version, evicted_at";

fn collect_entries(
    rows: impl Iterator<Item = rusqlite::Result<Result<Entry, StoreError>>>,
    err: impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Vec<Entry>, StoreError> {
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(&err)??);
    }
    Ok(out)
}

impl Store for SqliteStore {
    fn create_entries(&self, entries: &[Entry]) -> Result<u64, StoreError> {
        let mut conn = self.conn.lock().expect("store lock poisoned");
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for e in entries {
            match insert_entry(&tx, e) {
                Ok(()) => {}
                Err(rusqlite::Error::SqliteFailure(f, _))
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    return Err(StoreError::Duplicate {
                        spiffe_id: e.spiffe_id.to_string(),
                        node: e.node.clone(),
                    });
                }
                Err(other) => return Err(self.err(other)),
            }
        }
        let revision = newest_revision(&tx).map_err(|e| self.err(e))?;
        // Bounded history: watchers further behind than this get the full list.
        tx.execute(
            "DELETE FROM entry_changes WHERE revision <= ?1",
            [revision - CHANGE_HISTORY],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(revision as u64)
    }

    fn delete_entry(&self, id: &str) -> Result<Option<(Entry, u64)>, StoreError> {
        let mut conn = self.conn.lock().expect("store lock poisoned");
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let entry = tx
            .query_row(
                &format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE id = ?1"),
                [id],
                entry_row,
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        let entry = entry?;
        tx.execute("DELETE FROM entries WHERE id = ?1", [id])
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO entry_changes (node, entry_id) VALUES (?1, ?2)",
            params![entry.node, id],
        )
        .map_err(|e| self.err(e))?;
        let revision = tx.last_insert_rowid() as u64;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some((entry, revision)))
    }

    fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, StoreError> {
        let conn = self.conn.lock().expect("store lock poisoned");
        let id = filter.spiffe_id.as_ref().map(ToString::to_string);
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries
                 WHERE (?1 IS NULL OR node = ?1) AND (?2 IS NULL OR spiffe_id = ?2)
                 ORDER BY node, spiffe_id, id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![filter.node, id], entry_row)
            .map_err(|e| self.err(e))?;
        let mut entries = collect_entries(rows, |e| self.err(e))?;
        entries.retain(|e| filter.selectors.iter().all(|s| e.selectors.contains(s)));
        Ok(entries)
    }

    fn entry_for(&self, node: &str, id: &SpiffeId) -> Result<Option<Entry>, StoreError> {
        let conn = self.conn.lock().expect("store lock poisoned");
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM entries WHERE node = ?1 AND spiffe_id = ?2
                 ORDER BY ttl_seconds DESC LIMIT 1"
            ))
            .map_err(|e| self.err(e))?;
        let row = stmt
            .query_row(params![node, id.to_string()], entry_row)
            .optional()
            .map_err(|e| self.err(e))?;
        row.transpose()
    }

    fn revision(&self) -> Result<u64, StoreError> {
        self.with(|c| newest_revision(c)).map(|r| r as u64)
    }

    fn node_changes(
        &self,
        node: &str,
        since: u64,
    ) -> Result<Option<(Vec<EntryChange>, u64)>, StoreError> {
        let mut conn = self.conn.lock().expect("store lock poisoned");
        // One read transaction, so the revision matches the changes read.
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let oldest: Option<i64> = tx
            .query_row("SELECT MIN(revision) FROM entry_changes", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let newest = newest_revision(&tx).map_err(|e| self.err(e))?;
        let since = since as i64;
        let covered = since <= newest && oldest.is_none_or(|o| since >= o - 1);
        if !covered {
            return Ok(None);
        }
        let ids: Vec<String> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT entry_id, MAX(revision) AS r FROM entry_changes
                     WHERE node = ?1 AND revision > ?2 GROUP BY entry_id ORDER BY r",
                )
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![node, since], |r| r.get(0))
                .map_err(|e| self.err(e))?
                .collect::<rusqlite::Result<_>>()
                .map_err(|e| self.err(e))?
        };
        let mut changes = Vec::with_capacity(ids.len());
        {
            let mut stmt = tx
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS} FROM entries WHERE id = ?1"
                ))
                .map_err(|e| self.err(e))?;
            for id in ids {
                let row = stmt
                    .query_row([&id], entry_row)
                    .optional()
                    .map_err(|e| self.err(e))?;
                changes.push(match row {
                    Some(entry) => EntryChange::Upserted(entry?),
                    None => EntryChange::Removed(id),
                });
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Some((changes, newest as u64)))
    }

    fn insert_token(
        &self,
        hash: &str,
        node: &str,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM tokens WHERE expires_at < ?1",
                [unix(now) - TOKEN_MEMORY.as_secs() as i64],
            )?;
            tx.execute(
                "INSERT INTO tokens (hash, node, expires_at) VALUES (?1, ?2, ?3)",
                params![hash, node, unix(expires_at)],
            )?;
            tx.commit()
        })
    }

    fn token(&self, hash: &str) -> Result<Option<TokenState>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT node, expires_at, used_at FROM tokens WHERE hash = ?1",
                [hash],
                |r| {
                    Ok(TokenState {
                        node: r.get(0)?,
                        expires_at: time(r.get(1)?),
                        used_at: r.get::<_, Option<i64>>(2)?.map(time),
                    })
                },
            )
            .optional()
        })
    }

    fn spend_token(
        &self,
        hash: &str,
        node: &str,
        svid: &NodeSvid,
        now: SystemTime,
    ) -> Result<SpendOutcome, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let spent = tx.execute(
                "UPDATE tokens SET used_at = ?1
                 WHERE hash = ?2 AND node = ?3 AND used_at IS NULL AND expires_at > ?1",
                params![unix(now), hash, node],
            )?;
            if spent == 0 {
                return Ok(SpendOutcome::NotSpendable);
            }
            // A new attestation replaces the record: old SVIDs and any eviction are gone.
            tx.execute(
                "INSERT OR REPLACE INTO nodes
                   (name, serial, previous_serial, expires_at, attested_at, renewed_at,
                    agent_version, evicted_at)
                 VALUES (?1, ?2, NULL, ?3, ?4, ?4, ?5, NULL)",
                params![
                    node,
                    svid.serial,
                    unix(svid.expires_at),
                    unix(now),
                    svid.agent_version
                ],
            )?;
            tx.commit()?;
            Ok(SpendOutcome::Spent)
        })
    }

    fn node(&self, name: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"))?
                .query_row([name], node_row)
                .optional()
        })
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        self.with(|c| {
            c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY name"))?
                .query_map([], node_row)?
                .collect()
        })
    }

    fn record_renewal(
        &self,
        name: &str,
        presented: &str,
        next: &NodeSvid,
        now: SystemTime,
        adopt: bool,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if adopt {
                tx.execute(
                    "INSERT OR IGNORE INTO nodes
                       (name, serial, previous_serial, expires_at, attested_at, renewed_at,
                        agent_version, evicted_at)
                     VALUES (?1, ?2, NULL, 0, ?3, ?3, '', NULL)",
                    params![name, presented, unix(now)],
                )?;
            }
            let updated = tx.execute(
                "UPDATE nodes SET serial = ?1, previous_serial = ?2, expires_at = ?3,
                   renewed_at = CASE WHEN serial = ?2 THEN ?4 ELSE renewed_at END,
                   agent_version = ?5
                 WHERE name = ?6 AND evicted_at IS NULL
                   AND (serial = ?2 OR (previous_serial = ?2 AND renewed_at > ?4 - ?7))",
                params![
                    next.serial,
                    presented,
                    unix(next.expires_at),
                    unix(now),
                    next.agent_version,
                    name,
                    NodeRecord::GRACE.as_secs() as i64
                ],
            )?;
            tx.commit()?;
            Ok(updated == 1)
        })
    }

    fn evict(
        &self,
        name: &str,
        now: SystemTime,
        tombstone: bool,
    ) -> Result<Option<NodeRecord>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            if tombstone {
                tx.execute(
                    "INSERT OR IGNORE INTO nodes
                       (name, serial, previous_serial, expires_at, attested_at, renewed_at,
                        agent_version, evicted_at)
                     VALUES (?1, '', NULL, 0, 0, 0, '', ?2)",
                    params![name, unix(now)],
                )?;
            }
            tx.execute(
                "UPDATE nodes SET evicted_at = COALESCE(evicted_at, ?1) WHERE name = ?2",
                params![unix(now), name],
            )?;
            tx.execute(
                "UPDATE tokens SET expires_at = MIN(expires_at, ?1)
                 WHERE node = ?2 AND used_at IS NULL",
                params![unix(now), name],
            )?;
            let record = tx
                .query_row(
                    &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE name = ?1"),
                    [name],
                    node_row,
                )
                .optional()?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn history_id(&self) -> Result<String, StoreError> {
        self.meta("history_id")?
            .ok_or_else(|| StoreError::Corrupt("meta has no history_id".into()))
    }

    fn legacy_cutoff(&self) -> Result<Option<SystemTime>, StoreError> {
        Ok(self
            .meta("legacy_cutoff")?
            .and_then(|v| v.parse::<i64>().ok())
            .map(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_is_durable_before_it_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let (mode, sync): (String, i64) = store
            .with(|c| {
                Ok((
                    c.pragma_query_value(None, "journal_mode", |r| r.get(0))?,
                    c.pragma_query_value(None, "synchronous", |r| r.get(0))?,
                ))
            })
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(sync, 2, "synchronous=FULL");
        assert_eq!(store.history_id().unwrap().len(), 32);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found: 99, .. }),
            "{err}"
        );
    }
}
