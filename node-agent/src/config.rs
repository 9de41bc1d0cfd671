//! Agent configuration: every setting can come from a TOML file (`--config`) or a flag; flags win.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use citadel_api::JoinToken;
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
    /// Single-use join token, needed only when no valid node SVID is stored. Prefer
    /// --join-token-file or the environment: argv is visible to every local user.
    #[arg(long, env = "CITADEL_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<JoinToken>,
    /// File holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// This node's name; the node ID is spiffe://TD/citadel/node/NAME. Default: the name the
    /// join token was made for, else the host name. When given, it must match the token's.
    #[arg(long)]
    pub node_name: Option<String>,
    /// Where the node SVID, its key and the last bundle are kept (default ./agent-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Unix socket for SDS and the Workload API (default /run/citadel-agent/api.sock as root,
    /// else $XDG_RUNTIME_DIR/citadel-agent/api.sock). Its directory must belong to the agent's
    /// user and not be writable by group or others.
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
    /// Deadline of each call to citadel (default 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub call_timeout: Option<Duration>,
    /// JWT-SVIDs kept for reuse; audiences are caller-chosen (default 1024).
    #[arg(long)]
    pub jwt_cache_size: Option<usize>,
    /// Concurrent HTTP/2 streams one client connection may open (default 100).
    #[arg(long)]
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    trust_domain: Option<String>,
    trust_bundle: Option<PathBuf>,
    join_token: Option<JoinToken>,
    join_token_file: Option<PathBuf>,
    node_name: Option<String>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    key_type: Option<String>,
    backoff_cap: Option<String>,
    call_timeout: Option<String>,
    jwt_cache_size: Option<usize>,
    max_concurrent_streams: Option<u32>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub server: String,
    pub trust_domain: pki::TrustDomain,
    pub trust_bundle: Option<PathBuf>,
    pub join_token: Option<JoinToken>,
    pub node_name: String,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics: SocketAddr,
    pub key_algorithm: KeyAlgorithm,
    pub backoff_cap: Duration,
    pub call_timeout: Duration,
    pub jwt_cache_size: usize,
    pub max_concurrent_streams: u32,
}

/// What the defaults depend on, passed in so resolution is testable.
#[derive(Debug, Clone)]
pub struct Environment {
    pub euid: u32,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub hostname: String,
}

impl Environment {
    /// This process's environment.
    pub fn current() -> Self {
        Self {
            euid: citadel_api::fs::effective_uid(),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into()),
        }
    }

    /// The default socket: a root-only runtime directory for root, the user's own otherwise.
    pub fn default_socket(&self) -> Result<PathBuf, AgentError> {
        match (&self.xdg_runtime_dir, self.euid) {
            (_, 0) => Ok("/run/citadel-agent/api.sock".into()),
            (Some(dir), _) => Ok(dir.join("citadel-agent/api.sock")),
            (None, _) => Err(AgentError::Config(
                "socket: XDG_RUNTIME_DIR is not set and the agent is not root; pass --socket \
                 in a directory only this user can write"
                    .into(),
            )),
        }
    }
}

impl AgentConfig {
    /// Merges flags over the config file over defaults, validating each value.
    pub fn resolve(args: RunArgs) -> Result<Self, AgentError> {
        Self::resolve_in(args, &Environment::current())
    }

    pub fn resolve_in(args: RunArgs, env: &Environment) -> Result<Self, AgentError> {
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
        let duration = |flag: Option<Duration>, text: Option<String>, name: &str, default| match (
            flag, text,
        ) {
            (Some(d), _) => Ok(d),
            (None, Some(s)) => humantime::parse_duration(&s)
                .map_err(|e| AgentError::Config(format!("{name}: {e}"))),
            (None, None) => Ok(default),
        };
        let backoff_cap = duration(
            args.backoff_cap,
            file.backoff_cap,
            "backoff_cap",
            Duration::from_secs(30),
        )?;
        let call_timeout = duration(
            args.call_timeout,
            file.call_timeout,
            "call_timeout",
            Duration::from_secs(10),
        )?;
        let join_token = match (
            args.join_token,
            args.join_token_file.or(file.join_token_file),
            file.join_token,
        ) {
            (Some(t), _, _) => Some(t),
            // A file removed after the first attestation is fine: restarts need no token.
            (None, Some(path), _) => match std::fs::read_to_string(&path) {
                Ok(text) => Some(JoinToken::new(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(AgentError::io(&path, e)),
            },
            (None, None, t) => t,
        };
        let token_node = join_token
            .as_ref()
            .and_then(JoinToken::node)
            .map(str::to_string);
        let node_name = match (args.node_name.or(file.node_name), token_node) {
            (Some(given), Some(from_token)) if given != from_token => {
                return Err(AgentError::Config(format!(
                    "node_name: {given:?} was given, but the join token is for node {from_token:?}"
                )));
            }
            (Some(given), _) => given,
            (None, Some(from_token)) => from_token,
            (None, None) => env.hostname.clone(),
        };
        pki::identity::node_id(&trust_domain, &node_name)
            .map_err(|e| AgentError::Config(format!("node_name: {e}")))?;
        let socket = match args.socket.or(file.socket) {
            Some(s) => s,
            None => env.default_socket()?,
        };
        Ok(Self {
            server: args
                .server
                .or(file.server)
                .unwrap_or_else(|| "127.0.0.1:15012".into()),
            trust_domain,
            trust_bundle: args.trust_bundle.or(file.trust_bundle),
            join_token,
            node_name,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "agent-data".into()),
            socket,
            metrics: args
                .metrics
                .or(file.metrics)
                .unwrap_or_else(|| "127.0.0.1:15098".parse().expect("static address")),
            key_algorithm,
            backoff_cap,
            call_timeout,
            jwt_cache_size: args.jwt_cache_size.or(file.jwt_cache_size).unwrap_or(1024),
            max_concurrent_streams: args
                .max_concurrent_streams
                .or(file.max_concurrent_streams)
                .unwrap_or(100),
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

    fn user_env() -> Environment {
        Environment {
            euid: 1000,
            xdg_runtime_dir: Some("/run/user/1000".into()),
            hostname: "host-a".into(),
        }
    }

    #[test]
    fn the_socket_defaults_to_a_private_runtime_directory() {
        let root = Environment {
            euid: 0,
            ..user_env()
        };
        let cfg = AgentConfig::resolve_in(RunArgs::default(), &root).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/run/citadel-agent/api.sock"));
        let cfg = AgentConfig::resolve_in(RunArgs::default(), &user_env()).unwrap();
        assert_eq!(
            cfg.socket,
            PathBuf::from("/run/user/1000/citadel-agent/api.sock")
        );
        let bare = Environment {
            xdg_runtime_dir: None,
            ..user_env()
        };
        let err = AgentConfig::resolve_in(RunArgs::default(), &bare).unwrap_err();
        assert!(err.to_string().contains("--socket"), "{err}");
    }

    #[test]
    fn the_node_name_comes_from_the_token_and_a_given_one_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "node-7.00ff\n").unwrap();
        let cfg = AgentConfig::resolve_in(
            RunArgs {
                join_token_file: Some(file.clone()),
                ..Default::default()
            },
            &user_env(),
        )
        .unwrap();
        assert_eq!(cfg.node_name, "node-7");
        assert_eq!(cfg.join_token.as_ref().unwrap().expose(), "node-7.00ff");
        assert!(
            !format!("{cfg:?}").contains("00ff"),
            "Debug must not show the token"
        );
        let err = AgentConfig::resolve_in(
            RunArgs {
                join_token_file: Some(file),
                node_name: Some("node-8".into()),
                ..Default::default()
            },
            &user_env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("node-7"), "{err}");
        let cfg = AgentConfig::resolve_in(RunArgs::default(), &user_env()).unwrap();
        assert_eq!(cfg.node_name, "host-a", "no token: the host name");
    }

    #[test]
    fn flags_override_the_file_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "server = \"10.0.0.1:15012\"\ntrust_domain = \"example.org\"\nnode_name = \"n1\"\nbackoff_cap = \"5s\"\n").unwrap();
        let cfg = AgentConfig::resolve_in(
            RunArgs {
                config: Some(path.clone()),
                server: Some("127.0.0.1:1".into()),
                ..Default::default()
            },
            &user_env(),
        )
        .unwrap();
        assert_eq!(cfg.server, "127.0.0.1:1");
        assert_eq!(cfg.trust_domain.to_string(), "example.org");
        assert_eq!(cfg.backoff_cap, Duration::from_secs(5));
        std::fs::write(&path, "surprise = 1\n").unwrap();
        let err = AgentConfig::resolve_in(
            RunArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            &user_env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = AgentConfig::resolve_in(
            RunArgs {
                node_name: Some("a/b".into()),
                ..Default::default()
            },
            &user_env(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("node_name"), "{err}");
    }
}
