//! Citadel's gRPC contracts and the channels that carry them: TLS with SPIFFE verification to
//! citadel's API, and plain gRPC over a Unix socket for the admin API.
#![forbid(unsafe_code)]

pub mod channel;
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
