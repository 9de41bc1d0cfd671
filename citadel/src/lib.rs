//! Citadel, the control plane: the certificate authority (keys, signing, node attestation,
//! registration entries), its gRPC APIs, admin CLI and metrics.
#![forbid(unsafe_code)]

pub mod audit;
pub mod authority;
pub mod bootstrap;
pub mod cli;
pub mod config_store;
pub mod discovery;
pub mod error;
pub mod grpc;
pub mod jwt;
pub mod metrics;
pub mod monitoring;
pub mod registry;
pub mod server;
pub mod service;
pub mod storage;
pub mod store;
pub mod tls_server;
pub mod validate;
pub mod xds;
