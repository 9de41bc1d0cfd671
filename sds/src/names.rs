//! The SDS naming contract, shared by the node agent (which serves these secrets) and the
//! discovery server (which refers to them in TLS contexts): Istio's `default` and `ROOTCA`, and
//! the SPIFFE certificate validator Envoy offers, or plain `trusted_ca` for an Envoy that opts
//! out through node metadata.
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::{
    ConfigSource, DataSource, Node, TypedExtensionConfig,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, SdsSecretConfig, SpiffeCertValidatorConfig,
    spiffe_cert_validator_config,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;

/// Istio's and SPIRE's name for the caller's own certificate.
pub const DEFAULT: &str = "default";
/// The caller's own trust domain bundle.
pub const ROOTCA: &str = "ROOTCA";
/// Every bundle the agent knows (own trust domain; federated ones when federation exists).
pub const ALL: &str = "ALL";
/// The validator extension Envoy offers for SPIFFE peers.
pub const SPIFFE_VALIDATOR: &str = "envoy.tls.cert_validator.spiffe";
/// The bootstrap cluster through which a sidecar reaches the node agent's SDS (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// Node metadata that asks for `trusted_ca` instead of the SPIFFE validator (SPIRE's name).
pub const DISABLE_SPIFFE_VALIDATION: &str = "disable_spiffe_cert_validation";

/// Whether an Envoy with this node wants the SPIFFE validator (the default).
pub fn wants_spiffe_validator(node: &Node) -> bool {
    let flag = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION))
        .and_then(|v| v.kind.as_ref());
    !matches!(flag, Some(Kind::BoolValue(true)))
        && !matches!(flag, Some(Kind::StringValue(s)) if s == "true")
}

/// A reference to secret `name` fetched from `source` (in a TLS context).
pub fn secret_config(name: &str, source: ConfigSource) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(source),
    }
}

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.into())),
        ..Default::default()
    })
}

/// One trust domain's bundle, as PEM roots.
#[derive(Debug, Clone)]
pub struct BundlePem<'a> {
    pub trust_domain: &'a str,
    pub roots_pem: String,
}

/// The validation context for `bundles`: the SPIFFE validator with one entry per trust domain,
/// or every root as `trusted_ca`.
pub fn validation_context(bundles: &[BundlePem<'_>], spiffe: bool) -> CertificateValidationContext {
    if !spiffe {
        let pem: String = bundles.iter().map(|b| b.roots_pem.as_str()).collect();
        return CertificateValidationContext {
            trusted_ca: inline(pem),
            ..Default::default()
        };
    }
    let trust_domains = bundles
        .iter()
        .map(|b| spiffe_cert_validator_config::TrustDomain {
            name: b.trust_domain.to_string(),
            trust_bundle: inline(b.roots_pem.clone()),
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
            typed_config: Some(pack(&config)),
        }),
        ..Default::default()
    }
}

fn pack<M: prost::Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: prost::Message::encode_to_vec(m),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use prost::Message;

    use super::*;

    #[test]
    fn node_metadata_opts_out_of_the_spiffe_validator() {
        assert!(wants_spiffe_validator(&Node::default()));
        for kind in [Kind::BoolValue(true), Kind::StringValue("true".into())] {
            let node = Node {
                metadata: Some(Struct {
                    fields: [(
                        DISABLE_SPIFFE_VALIDATION.to_string(),
                        Value { kind: Some(kind) },
                    )]
                    .into(),
                }),
                ..Default::default()
            };
            assert!(!wants_spiffe_validator(&node));
        }
    }

    #[test]
    fn spiffe_validator_lists_each_trust_domain() {
        let bundles = [
            BundlePem {
                trust_domain: "a.test",
                roots_pem: "A".into(),
            },
            BundlePem {
                trust_domain: "b.test",
                roots_pem: "B".into(),
            },
        ];
        let ctx = validation_context(&bundles, true);
        let custom = ctx.custom_validator_config.unwrap();
        assert_eq!(custom.name, SPIFFE_VALIDATOR);
        let cfg = SpiffeCertValidatorConfig::decode(custom.typed_config.unwrap().value.as_slice())
            .unwrap();
        let names: Vec<_> = cfg.trust_domains.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.test", "b.test"]);
        let plain = validation_context(&bundles, false);
        assert_eq!(
            plain.trusted_ca.unwrap().specifier,
            Some(Specifier::InlineBytes(b"AB".to_vec()))
        );
    }
}
