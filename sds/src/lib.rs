//! The xDS protocol, written once: per-stream subscription state (names, wildcard for Listener
//! and Cluster only), nonces, versions sent and ACKed, NACKs, for state-of-the-world and delta
//! (incremental) streams, one type or aggregated (ADS) in make-before-break order; and the
//! client half. Sans-IO and generic over resource type: a server hands in the resources a stream
//! may see and gets back the responses to send, with each resource encoded once and shared. The
//! node agent's SDS, the discovery server, the proxy and the benchmarks use it.
#![forbid(unsafe_code)]

pub mod ads;
pub mod client;
pub mod delta;
pub mod frames;
pub mod grpc;
pub mod intern;
mod ledger;
pub mod names;
pub mod resource;
pub mod sotw;
pub mod types;
pub mod version;
pub mod wire;

pub use ads::{AdsStream, DeltaAdsStream};
pub use delta::DeltaStream;
pub use resource::{NamedResource, Publication, Resources};
pub use sotw::SotwStream;
pub use version::VersionSource;

/// Envoy's protos, re-exported so users of this crate agree on one version.
pub use envoy_types;

/// Protocol violations that end a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("request for type {got} on a stream of type {expected}")]
    TypeUrlMismatch { expected: String, got: String },
    #[error("first request on a stream must name a type_url")]
    MissingTypeUrl,
}

/// What the server should do after a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Compute and send a response now.
    Respond,
    /// Nothing to send (an ACK, a NACK, or a stale nonce).
    Wait,
}

/// The last NACK a client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub nonce: String,
    pub message: String,
}
