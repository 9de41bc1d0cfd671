//! The node's own identity: stored in the data directory (SVID chain, 0600 key, last bundle) so
//! a restart needs no new join token; obtained by join-token attestation when absent or expired.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use citadel_api::ca::AttestNodeRequest;
use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::channel::{citadel_client_config, tls_channel};
use pki::identity::{TrustDomain, node_id};
use pki::verify::SharedBundles;
use pki::{Clock, KeyAlgorithm, PrivateKey, TrustBundle, X509Svid, build_csr};

use crate::error::AgentError;

const NODE_SVID: &str = "node-svid.pem";
const NODE_KEY: &str = "node-key.pem";
const BUNDLE: &str = "bundle.json";

/// Files the agent keeps in its data directory.
#[derive(Debug, Clone)]
pub struct NodeStore {
    dir: PathBuf,
    trust_domain: TrustDomain,
}

impl NodeStore {
    /// Opens the data directory: created 0700, or refused if another user could write it.
    pub fn open(dir: &Path, trust_domain: TrustDomain) -> Result<Self, AgentError> {
        citadel_api::fs::owned_dir(dir, 0o700)
            .map_err(|e| AgentError::Config(format!("data directory: {e}")))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            trust_domain,
        })
    }

    /// The stored node SVID, if present and still valid at `now`.
    pub fn load_svid(&self, now: SystemTime) -> Option<X509Svid> {
        let chain =
            pki::pem::parse_certificates(&std::fs::read_to_string(self.dir.join(NODE_SVID)).ok()?)
                .ok()?;
        let key =
            PrivateKey::from_pem(&std::fs::read_to_string(self.dir.join(NODE_KEY)).ok()?).ok()?;
        let svid = X509Svid::from_chain(chain).ok()?.with_key(key).ok()?;
        (svid.not_after() > now && svid.spiffe_id().trust_domain() == &self.trust_domain)
            .then_some(svid)
    }

    pub fn save_svid(&self, svid: &X509Svid) -> Result<(), AgentError> {
        let key = svid
            .key()
            .ok_or_else(|| AgentError::Internal("node SVID without key".into()))?;
        // Key first: a certificate on disk always has its key.
        write(&self.dir.join(NODE_KEY), key.to_pem().as_bytes(), 0o600)?;
        write(
            &self.dir.join(NODE_SVID),
            svid.chain_pem().as_bytes(),
            0o644,
        )
    }

    /// The last bundle received from citadel (it supersedes the bootstrap bundle file).
    pub fn load_bundle(&self) -> Option<TrustBundle> {
        let json = std::fs::read_to_string(self.dir.join(BUNDLE)).ok()?;
        TrustBundle::from_jwks(self.trust_domain.clone(), &json).ok()
    }

    pub fn save_bundle(&self, bundle: &TrustBundle) -> Result<(), AgentError> {
        let json = bundle
            .to_jwks()
            .map_err(|e| AgentError::Internal(e.to_string()))?;
        write(&self.dir.join(BUNDLE), json.as_bytes(), 0o644)
    }
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), AgentError> {
    citadel_api::fs::atomic_write(path, data, mode).map_err(|e| AgentError::io(path, e))
}

/// Attests this node with a join token over TLS that trusts only `bundle`.
pub async fn attest_with_token(
    server: &str,
    bundle: &TrustBundle,
    node_name: &str,
    token: &str,
    key_algorithm: KeyAlgorithm,
    clock: Arc<dyn Clock>,
    timeout: std::time::Duration,
) -> Result<X509Svid, AgentError> {
    let td = bundle.trust_domain().clone();
    let id =
        node_id(&td, node_name).map_err(|e| AgentError::Config(format!("--node-name: {e}")))?;
    let key =
        PrivateKey::generate(key_algorithm).map_err(|e| AgentError::Internal(e.to_string()))?;
    let csr = build_csr(&key, &id).map_err(|e| AgentError::Internal(e.to_string()))?;
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let config = citadel_client_config(bundles, td, None, clock)
        .map_err(|e| AgentError::Internal(e.to_string()))?;
    let channel =
        tls_channel(server, Arc::new(config)).map_err(|e| AgentError::Config(e.to_string()))?;
    let mut client = NodeCaClient::new(channel);
    let call = client.attest_node(crate::ca::request(AttestNodeRequest {
        csr,
        join_token: token.to_string(),
    }));
    let resp = tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| AgentError::Attestation(format!("citadel did not answer within {timeout:?}")))?
        .map_err(|s| AgentError::Attestation(format!("{:?}: {}", s.code(), s.message())))?
        .into_inner();
    let chain = resp.cert_chain.into_iter().map(Into::into).collect();
    X509Svid::from_chain(chain)
        .and_then(|s| s.with_key(key))
        .map_err(|e| AgentError::Attestation(e.to_string()))
}
