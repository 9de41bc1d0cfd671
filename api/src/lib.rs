//! Citadel's gRPC contracts and the channels that carry them: TLS with SPIFFE verification to
//! citadel's API, and plain gRPC over a Unix socket for the admin API.
#![forbid(unsafe_code)]

pub mod channel;
pub mod fs;
pub mod selector;

pub use selector::{Selector, SelectorError};

/// Generated code, nested as the proto packages are so cross-package references resolve.
#[allow(unreachable_pub, missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    pub mod citadel {
        pub mod ca {
            pub mod v1 {
                tonic::include_proto!("citadel.ca.v1");
            }
        }
        pub mod admin {
            pub mod v1 {
                tonic::include_proto!("citadel.admin.v1");
            }
        }
    }
    /// The SPIFFE Workload API has no proto package.
    pub mod spiffe_workload {
        tonic::include_proto!("_");
    }
    pub mod istio {
        pub mod v1 {
            pub mod auth {
                tonic::include_proto!("istio.v1.auth");
            }
        }
    }
}

/// The admin API on the data directory's Unix socket (`citadel.admin.v1`).
pub use proto::citadel::admin::v1 as admin;
/// The node-facing CA API (`citadel.ca.v1`).
pub use proto::citadel::ca::v1 as ca;
/// Istio's `IstioCertificateService` (`istio.v1.auth`).
pub use proto::istio::v1::auth as istio;
/// The SPIFFE Workload API (`SpiffeWorkloadAPI`).
pub use proto::spiffe_workload as workload;

/// Largest gRPC message citadel's API accepts; a CSR is at most 64 KiB, so anything much larger
/// is refused by the transport before any parsing.
pub const MAX_MESSAGE_BYTES: usize = 80 * 1024;

/// gRPC metadata key on which the node agent reports its version to citadel.
pub const AGENT_VERSION_HEADER: &str = "citadel-agent-version";

/// The node a join token names. Tokens are `NODE.SECRET` (the secret is hex), so an agent can
/// learn its node name from the token alone; `None` for a token without that form.
pub fn join_token_node(token: &str) -> Option<&str> {
    let (node, secret) = token.rsplit_once('.')?;
    (!node.is_empty() && !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(node)
}

/// A join token: a secret, so `Debug` shows only the node it is for.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct JoinToken(String);

impl JoinToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_string())
    }

    /// The token itself, to send to citadel.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The node it names, if it has the `NODE.SECRET` form.
    pub fn node(&self) -> Option<&str> {
        join_token_node(&self.0)
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JoinToken(node={:?}, <redacted>)", self.node())
    }
}

impl std::str::FromStr for JoinToken {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(s))
    }
}
