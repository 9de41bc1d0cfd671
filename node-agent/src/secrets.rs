//! Builds the Envoy `Secret`s a workload may see: `default` (its first SVID), each SVID by
//! SPIFFE ID, `ROOTCA` (own bundle), `ALL` (every bundle) and the trust-domain ID — as a
//! SPIFFE certificate validator config, or plain `trusted_ca` when the Envoy opts out.
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{DataSource, TypedExtensionConfig};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::util::pack_any;
use pki::TrustBundle;
use sds::{NamedResource, Resources, VersionSource};

use crate::state::{AgentState, WorkloadView};

/// Istio's and SPIRE's name for the caller's own certificate.
pub const DEFAULT: &str = "default";
/// The caller's own trust domain bundle.
pub const ROOTCA: &str = "ROOTCA";
/// Every bundle the agent knows (own trust domain; federated ones when federation exists).
pub const ALL: &str = "ALL";
/// The validator extension Envoy offers for SPIFFE peers.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.into())),
        ..Default::default()
    })
}

fn resource(name: &str, version: String, secret: secret::Type) -> (String, NamedResource) {
    let body = pack_any(Secret {
        name: name.to_string(),
        r#type: Some(secret),
    });
    (
        name.to_string(),
        NamedResource {
            name: name.to_string(),
            version,
            body: Arc::new(body),
        },
    )
}

fn validation(bundles: &[&TrustBundle], spiffe: bool) -> secret::Type {
    let context = if spiffe {
        let trust_domains = bundles
            .iter()
            .map(|b| spiffe_cert_validator_config::TrustDomain {
                name: b.trust_domain().to_string(),
                trust_bundle: inline(b.to_pem()),
                ..Default::default()
            })
            .collect();
        let config = SpiffeCertValidatorConfig {
            trust_domains,
            ..Default::default()
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR.into(),
                typed_config: Some(pack_any(config)),
            }),
            ..Default::default()
        }
    } else {
        let pem: String = bundles.iter().map(|b| b.to_pem()).collect();
        CertificateValidationContext {
            trusted_ca: inline(pem),
            ..Default::default()
        }
    };
    secret::Type::ValidationContext(context)
}

/// The secrets visible to a workload, or why it gets none.
#[derive(Debug)]
pub enum Visible {
    /// Entitled, but its SVIDs are not minted yet (or entries not yet known): answer later.
    Pending,
    /// No registration entry matches: the workload gets nothing.
    NoIdentity,
    Ready(Resources),
}

/// All secrets of a workload with `selectors` in `state`.
pub fn visible_secrets(
    state: &AgentState,
    selectors: &[citadel_api::Selector],
    spiffe_validation: bool,
    versions: &VersionSource,
) -> Visible {
    let svids = match state.view(selectors) {
        WorkloadView::Pending => return Visible::Pending,
        WorkloadView::NoIdentity => return Visible::NoIdentity,
        WorkloadView::Ready(svids) => svids,
    };
    let mut out = Resources::new();
    for (i, w) in svids.iter().enumerate() {
        let tls = secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(w.chain_pem.clone()),
            private_key: inline(w.key_pem.clone()),
            ..Default::default()
        });
        let version = versions.of_content(w.svid.serial().as_bytes());
        if i == 0 {
            out.extend([resource(DEFAULT, version.clone(), tls.clone())]);
        }
        out.extend([resource(&w.id().to_string(), version, tls)]);
    }
    let bundle = state.bundle.as_ref();
    let bundle_version = versions.of_content(
        format!(
            "{}/{}/{spiffe_validation}",
            bundle.trust_domain(),
            bundle.sequence()
        )
        .as_bytes(),
    );
    let ctx = validation(&[bundle], spiffe_validation);
    out.extend([
        resource(ROOTCA, bundle_version.clone(), ctx.clone()),
        resource(ALL, bundle_version.clone(), ctx.clone()),
        resource(&bundle.trust_domain().id_string(), bundle_version, ctx),
    ]);
    Visible::Ready(out)
}
