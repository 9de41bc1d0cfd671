//! Agent configuration: every setting can come from a TOML file (`--config`) or a flag; flags win.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use pki::KeyAlgorithm;
use serde::Deserialize;

use crate::error::AgentError;

/// Flags of `node-agent run`; each may also be set in the config file under the same name
/// with underscores (`trust_bundle = "..."`).
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// citadel's gRPC address (default 127.0.0.1:15012).
    #[arg(long)]
    pub server: Option<String>,
    /// Trust domain (default cluster.local).
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// PEM bundle used to trust citadel on first contact.
    #[arg(long)]
    pub trust_bundle: Option<PathBuf>,
    /// Single-use join token, needed only when no valid node SVID is stored.
    #[arg(long)]
    pub join_token: Option<String>,
    /// This node's name (default: the host name); the node ID is spiffe://TD/citadel/node/NAME.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the node SVID, its key and the last bundle are kept (default ./agent-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Unix socket for SDS and the Workload API (default /tmp/citadel-agent/api.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Prometheus metrics address (default 127.0.0.1:15098).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Key type for workload and node keys (default ec-p256).
    #[arg(long)]
    pub key_type: Option<KeyAlgorithm>,
    /// Upper bound of the retry backoff towards citadel (default 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub backoff_cap: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    trust_domain: Option<String>,
    trust_bundle: Option<PathBuf>,
    join_token: Option<String>,
    node_name: Option<String>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    key_type: Option<String>,
    backoff_cap: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub trust_domain: pki::TrustDomain,
    pub trust_bundle: Option<PathBuf>,
    pub join_token: Option<String>,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub key_algorithm: KeyAlgorithm,
    pub backoff_cap: Duration,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl AgentConfig {
    /// Merges flags over the config file over defaults, validating each value.
    pub fn resolve(args: RunArgs) -> Result<Self, AgentError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let trust_domain = args
            .trust_domain
            .or(file.trust_domain)
            .unwrap_or_else(|| "cluster.local".into());
        let trust_domain = pki::identity::parse_trust_domain(&trust_domain)
            .map_err(|e| AgentError::Config(format!("trust_domain: {e}")))?;
        let key_algorithm = match (args.key_type, file.key_type) {
            (Some(k), _) => k,
            (None, Some(k)) => k
                .parse()
                .map_err(|e| AgentError::Config(format!("key_type: {e}")))?,
            (None, None) => KeyAlgorithm::EcdsaP256,
        };
        let backoff_cap = match (args.backoff_cap, file.backoff_cap) {
            (Some(d), _) => d,
            (None, Some(s)) => humantime::parse_duration(&s)
                .map_err(|e| AgentError::Config(format!("backoff_cap: {e}")))?,
            (None, None) => Duration::from_secs(30),
        };
        let node_name = args.node_name.or(file.node_name).unwrap_or_else(hostname);
        pki::identity::node_id(&trust_domain, &node_name)
            .map_err(|e| AgentError::Config(format!("node_name: {e}")))?;
        Ok(Self {
            server: args
                .server
                .or(file.server)
                .unwrap_or_else(|| "127.0.0.1:15012".into()),
            trust_domain,
            trust_bundle: args.trust_bundle.or(file.trust_bundle),
            join_token: args.join_token.or(file.join_token),
            node_name,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "agent-data".into()),
            socket: args
                .socket
                .or(file.socket)
                .unwrap_or_else(|| "/tmp/citadel-agent/api.sock".into()),
            metrics: args
                .metrics
                .or(file.metrics)
                .unwrap_or_else(|| "127.0.0.1:15098".parse().expect("static address")),
            key_algorithm,
            backoff_cap,
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
    toml::from_str(&text).map_err(|e| AgentError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "server = \"10.0.0.1:15012\"\ntrust_domain = \"example.org\"\nnode_name = \"n1\"\nbackoff_cap = \"5s\"\n").unwrap();
        let cfg = AgentConfig::resolve(RunArgs {
            config: Some(path.clone()),
            server: Some("127.0.0.1:1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(cfg.server, "127.0.0.1:1");
        assert_eq!(cfg.trust_domain.to_string(), "example.org");
        assert_eq!(cfg.backoff_cap, Duration::from_secs(5));
        std::fs::write(&path, "surprise = 1\n").unwrap();
        let err = AgentConfig::resolve(RunArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = AgentConfig::resolve(RunArgs {
            node_name: Some("a/b".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("node_name"), "{err}");
    }
}
