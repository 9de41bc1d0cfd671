//! The `security.istio.io` kinds, field for field as Istio's YAML writes them, and how they
//! resolve for one workload. PeerAuthentication decides what each inbound port accepts;
//! AuthorizationPolicy who may call it, and how (`authz` is the reference decision).
pub mod authorization_policy;
pub mod authz;
pub mod peer_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;

/// The API group of Istio's security kinds.
pub const SECURITY_GROUP: &str = "security.istio.io";
/// The versions Istio serves them in; the schemas are identical.
pub const SECURITY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];
