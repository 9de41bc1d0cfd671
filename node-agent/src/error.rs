//! The agent's error type; `anyhow` appears only in `main`.
use std::path::Path;

/// Why the agent could not start or do its work.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("node attestation failed: {0}")]
    Attestation(String),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn io(path: &Path, e: impl std::fmt::Display) -> Self {
        AgentError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        }
    }
}
