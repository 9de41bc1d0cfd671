//! The Citadel node agent: attests itself to citadel, attests local workloads from the Unix
//! socket peer, keeps their SVIDs rotated, and serves them over Envoy SDS v3 and the SPIFFE
//! Workload API; it also forwards each sidecar's ADS stream to citadel with the sidecar's SVID.
#![forbid(unsafe_code)]

pub mod ads_proxy;
pub mod attest;
pub mod ca;
pub mod clock;
pub mod config;
pub mod error;
pub mod iptables;
pub mod jwt;
pub mod jwt_cache;
pub mod manager;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod rotation;
pub mod sds_server;
pub mod secrets;
pub mod server;
pub mod state;
pub mod sync;
pub mod workload_api;
