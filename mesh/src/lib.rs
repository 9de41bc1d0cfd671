//! Istio's traffic configuration as Rust types, the one source for loading, validation and (later)
//! CRD schemas: the `networking.istio.io` kinds ServiceEntry, WorkloadEntry, VirtualService,
//! DestinationRule, Sidecar and Gateway in API versions v1, v1beta1 and v1alpha3, `security.istio.io`'s
//! PeerAuthentication and AuthorizationPolicy in v1 and v1beta1, Kubernetes' v1 Secret (what a
//! gateway's `credentialName` names), and the MeshConfig subset
//! citadel honours. Pure: no I/O beyond reading the files it is asked to load, no async.
//!
//! Loading parses Kubernetes-style multi-document YAML into typed objects; validation applies
//! Istio's rules. Every problem names the file, the object and the field path, e.g.
//! `vs.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..=100`.
#![forbid(unsafe_code)]

pub mod duration;
pub mod error;
pub mod load;
pub mod mesh_config;
pub mod meta;
pub mod networking;
pub mod secret;
pub mod security;
pub mod validate;

pub use duration::GoDuration;
pub use error::{ConfigError, Problem, Severity};
pub use load::{Config, FileCache, load_dir, load_dir_cached, load_file, load_str};
pub use mesh_config::MeshConfig;
pub use meta::{Kind, Object, ObjectMeta, Spec};
