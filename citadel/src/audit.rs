//! The audit trail: one JSON line per issuance, refusal or admin change, appended to
//! `DATA_DIR/audit.log` and mirrored to the `audit` tracing target. Never contains keys or tokens.
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One audit record.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct AuditEvent {
    /// `issued`, `refused` or `admin`.
    pub outcome: &'static str,
    pub method: &'static str,
    /// Who asked: a SPIFFE ID, `token:NODE`, `admin`, or `anonymous`.
    pub caller: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

/// Appends audit lines to a file.
#[derive(Debug)]
pub struct AuditLog {
    file: Mutex<File>,
}

impl AuditLog {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    pub fn record(&self, now: SystemTime, event: &AuditEvent) {
        let line = Line {
            ts: now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
            kind: "audit",
            event,
        };
        let mut json = serde_json::to_string(&line).expect("audit events serialize");
        tracing::info!(target: "audit", "{json}");
        json.push('\n');
        // One write call per line, on an O_APPEND file: lines never interleave.
        if let Err(e) = self
            .file
            .lock()
            .expect("audit lock poisoned")
            .write_all(json.as_bytes())
        {
            tracing::error!(error = %e, "could not write the audit log");
        }
    }
}
