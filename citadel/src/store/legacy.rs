//! One-time import of the JSON registry (`state/registry.json`) that citadel used before the
//! SQL store: entries and join tokens move into the database in one transaction, then the file
//! is renamed `registry.json.migrated` and kept.
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use super::{Entry, SqliteStore, StoreError, TokenState};

const DONE_KEY: &str = "migrated_registry_json";

#[derive(Deserialize)]
struct StoredEntry {
    spiffe_id: String,
    node: String,
    selectors: Vec<String>,
    ttl_seconds: u64,
    created_at_unix: u64,
}

#[derive(Deserialize)]
struct StoredToken {
    node: String,
    expires_at_unix: u64,
    used_at_unix: Option<u64>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    entries: BTreeMap<String, StoredEntry>,
    #[serde(default)]
    tokens: BTreeMap<String, StoredToken>,
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Imports `json` into `store` unless that already happened; returns how many entries and
/// tokens were imported. A file that does not parse stops the start: nothing is lost.
pub fn import_registry_json(
    store: &SqliteStore,
    json: &Path,
    now: SystemTime,
) -> Result<Option<(usize, usize)>, StoreError> {
    let fail = |message: String| StoreError::Migration {
        path: json.display().to_string(),
        message,
    };
    if store.meta(DONE_KEY)?.is_some() {
        return Ok(None);
    }
    let bytes = match std::fs::read(json) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let data: Data = serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
    let mut entries = Vec::with_capacity(data.entries.len());
    for (id, e) in data.entries {
        let parsed = (|| {
            let spiffe_id =
                pki::identity::parse_spiffe_id(&e.spiffe_id).map_err(|x| x.to_string())?;
            let mut selectors = e
                .selectors
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<citadel_api::Selector>, _>>()
                .map_err(|x| x.to_string())?;
            selectors.sort_by_key(ToString::to_string);
            selectors.dedup();
            Ok::<_, String>(Entry {
                id: id.clone(),
                spiffe_id,
                node: e.node,
                selectors,
                ttl: Duration::from_secs(e.ttl_seconds.max(1)),
                created_at: at(e.created_at_unix),
            })
        })();
        entries.push(parsed.map_err(|m| fail(format!("entries.{id}: {m}")))?);
    }
    let tokens: Vec<(String, TokenState)> = data
        .tokens
        .into_iter()
        .map(|(hash, t)| {
            (
                hash,
                TokenState {
                    node: t.node,
                    expires_at: at(t.expires_at_unix),
                    used_at: t.used_at_unix.map(at),
                },
            )
        })
        .collect();
    let counts = (entries.len(), tokens.len());
    store.import(DONE_KEY, &entries, &tokens, now)?;
    let kept = json.with_extension("json.migrated");
    if let Err(e) = std::fs::rename(json, &kept) {
        tracing::warn!(error = %e, "imported registry.json but could not rename it");
    }
    Ok(Some(counts))
}
