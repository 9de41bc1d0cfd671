//! TLS contexts with the SDS naming contract shared with the node agent: the proxy's own
//! certificate is `default` and the trust bundle `ROOTCA`, both fetched from the agent's SDS
//! (the bootstrap's `sds-grpc` cluster). Upstream contexts check the server's SPIFFE ID.
use envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, TransportSocket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::google::protobuf::{BoolValue, Duration};
use sds::names::{DEFAULT, ROOTCA, SDS_CLUSTER, secret_config};

use super::any;

/// Where secrets come from: the node agent's SDS over the bootstrap's `sds-grpc` cluster,
/// waiting for the first answer as long as it takes (Istio sets 0 too).
pub fn agent_sds() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        initial_fetch_timeout: Some(Duration {
            seconds: 0,
            nanos: 0,
        }),
        config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(ApiConfigSource {
            api_type: ApiType::Grpc as i32,
            transport_api_version: ApiVersion::V3 as i32,
            set_node_on_first_message_only: true,
            grpc_services: vec![GrpcService {
                target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                    cluster_name: SDS_CLUSTER.into(),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A SAN of `san_type` that must equal `san`.
fn san_matcher(san_type: SanType, san: &str) -> SubjectAltNameMatcher {
    SubjectAltNameMatcher {
        san_type: san_type as i32,
        matcher: Some(StringMatcher {
            match_pattern: Some(MatchPattern::Exact(san.to_string())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn common(sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    let matchers = sans
        .iter()
        .map(|san| san_matcher(SanType::Uri, san))
        .collect();
    CommonTlsContext {
        tls_certificate_sds_secret_configs: vec![secret_config(DEFAULT, agent_sds())],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(secret_config(ROOTCA, agent_sds())),
                ..Default::default()
            },
        )),
        alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// mTLS to a mesh destination: our `default` certificate, `ROOTCA`, and the server must present
/// one of `sans` (the destination's SPIFFE IDs; any SPIFFE ID of the bundle when empty).
pub fn upstream_mtls(sni: &str, sans: &[String], http2: bool) -> TransportSocket {
    let alpn: &[&str] = if http2 { &["h2", "istio"] } else { &["istio"] };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common(sans, alpn)),
        sni: sni.to_string(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// Where TLS origination finds the CAs to verify a server with when the DestinationRule names
/// none: the system bundle of Debian, Ubuntu and Alpine, which Envoy reads on the proxy's host.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS origination as a DestinationRule's SIMPLE or MUTUAL says (Istio's egress TLS
/// origination). SNI is the rule's `sni`; without one, HTTP clusters take it from each request's
/// host (`auto_sni`, set with the cluster's HTTP options). The server is verified against
/// `caCertificates` (else the system bundle) and, when given, `subjectAltNames` (of any SAN
/// type, as Istio matches them), unless `insecureSkipVerify`. Only MUTUAL presents the client
/// certificate and key files. With a `credentialName` (`store`), the CA and the client
/// certificate are the store Secret's, over SDS on the ADS stream, instead of files.
pub fn upstream_origination(
    tls: &mesh::networking::ClientTlsSettings,
    http2: bool,
    store: Option<&StoreCredentials>,
) -> TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::TlsCertificate;
    use mesh::networking::ClientTlsMode;
    let file = |path: &str| {
        Some(DataSource {
            specifier: Some(Specifier::Filename(path.to_string())),
            ..Default::default()
        })
    };
    let mut common = CommonTlsContext {
        alpn_protocols: if http2 { vec!["h2".into()] } else { vec![] },
        ..Default::default()
    };
    if tls.insecure_skip_verify != Some(true) {
        let types = [
            SanType::Dns,
            SanType::Uri,
            SanType::IpAddress,
            SanType::Email,
        ];
        let sans = tls
            .subject_alt_names
            .iter()
            .flat_map(|s| types.map(|t| san_matcher(t, s)))
            .collect();
        let store_ca = store.and_then(|s| s.ca.clone());
        common.validation_context_type = Some(match store_ca {
            Some(ca) => ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: sans,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(SdsSecretConfig {
                        name: ca,
                        sds_config: Some(super::ads_source()),
                    }),
                    ..Default::default()
                },
            ),
            None => ValidationContextType::ValidationContext(CertificateValidationContext {
                trusted_ca: file(tls.ca_certificates.as_deref().unwrap_or(SYSTEM_CA_BUNDLE)),
                crl: tls.ca_crl.as_deref().and_then(file),
                match_typed_subject_alt_names: sans,
                ..Default::default()
            }),
        });
    }
    if tls.mode == ClientTlsMode::Mutual
        && let Some(cert) = store.and_then(|s| s.certificate.clone())
    {
        common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
            name: cert,
            sds_config: Some(super::ads_source()),
        }];
    } else if tls.mode == ClientTlsMode::Mutual
        && let (Some(cert), Some(key)) = (&tls.client_certificate, &tls.private_key)
    {
        common.tls_certificates = vec![TlsCertificate {
            certificate_chain: file(cert),
            private_key: file(key),
            ..Default::default()
        }];
    }
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(common),
        sni: tls.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// mTLS termination on inbound: our `default` certificate, and a client certificate from the
/// trust bundle is required.
pub fn downstream_mtls() -> TransportSocket {
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common(&[], &["h2", "http/1.1"])),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

/// A DestinationRule's `credentialName`, resolved: the SDS names of its client certificate
/// (MUTUAL) and CA certificates (none only with `insecureSkipVerify`), served on the ADS
/// stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCredentials {
    pub certificate: Option<String>,
    pub ca: Option<String>,
}

/// Where a gateway server's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCertificate {
    /// An SDS secret served by the discovery server on the same ADS stream
    /// (`kubernetes://NAME`, from a Secret in the store).
    Ads(String),
    /// Files on the gateway's host (`serverCertificate`, `privateKey`).
    Files { chain: String, key: String },
}

/// TLS termination at a gateway server (`tls.mode: SIMPLE`): its certificate, ALPN for HTTP/2
/// and HTTP/1.1, and the protocol versions and ciphers the server names; no client certificate.
pub fn downstream_simple(
    cert: &ServerCertificate,
    settings: &mesh::networking::ServerTlsSettings,
) -> TransportSocket {
    use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        TlsCertificate, TlsParameters,
    };
    let file = |path: &str| {
        Some(DataSource {
            specifier: Some(Specifier::Filename(path.into())),
            ..Default::default()
        })
    };
    let mut common = CommonTlsContext {
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        tls_params: Some(TlsParameters {
            tls_minimum_protocol_version: tls_version(settings.min_protocol_version),
            tls_maximum_protocol_version: tls_version(settings.max_protocol_version),
            cipher_suites: settings.cipher_suites.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match cert {
        ServerCertificate::Ads(name) => {
            common.tls_certificate_sds_secret_configs = vec![SdsSecretConfig {
                name: name.clone(),
                sds_config: Some(super::ads_source()),
            }]
        }
        ServerCertificate::Files { chain, key } => {
            common.tls_certificates = vec![TlsCertificate {
                certificate_chain: file(chain),
                private_key: file(key),
                ..Default::default()
            }]
        }
    }
    let ctx = DownstreamTlsContext {
        common_tls_context: Some(common),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(ConfigType::TypedConfig(any(&ctx))),
    }
}

fn tls_version(v: Option<mesh::networking::TlsProtocol>) -> i32 {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol as Envoy;
    use mesh::networking::TlsProtocol;
    (match v {
        None | Some(TlsProtocol::Auto) => Envoy::TlsAuto,
        Some(TlsProtocol::V1_0) => Envoy::TlSv10,
        Some(TlsProtocol::V1_1) => Envoy::TlSv11,
        Some(TlsProtocol::V1_2) => Envoy::TlSv12,
        Some(TlsProtocol::V1_3) => Envoy::TlSv13,
    }) as i32
}

#[cfg(test)]
mod tests {
    use mesh::networking::{ClientTlsMode, ClientTlsSettings};
    use prost::Message;

    use super::*;

    fn context(t: &TransportSocket) -> UpstreamTlsContext {
        let Some(ConfigType::TypedConfig(any)) = &t.config_type else {
            panic!("typed config")
        };
        UpstreamTlsContext::decode(any.value.as_slice()).unwrap()
    }

    fn validation(ctx: &UpstreamTlsContext) -> Option<&CertificateValidationContext> {
        match &ctx.common_tls_context.as_ref()?.validation_context_type {
            Some(ValidationContextType::ValidationContext(v)) => Some(v),
            _ => None,
        }
    }

    #[test]
    fn origination_follows_istios_client_tls_settings() {
        let simple = ClientTlsSettings {
            mode: ClientTlsMode::Simple,
            sni: Some("api.example.com".into()),
            client_certificate: Some("/c.pem".into()),
            private_key: Some("/k.pem".into()),
            ..Default::default()
        };
        let ctx = context(&upstream_origination(&simple, false, None));
        assert_eq!(ctx.sni, "api.example.com");
        let v = validation(&ctx).expect("the server is verified");
        assert!(
            v.match_typed_subject_alt_names.is_empty(),
            "an sni alone checks the chain only"
        );
        assert!(
            format!("{:?}", v.trusted_ca).contains(SYSTEM_CA_BUNDLE),
            "no caCertificates: the system bundle"
        );
        assert!(
            ctx.common_tls_context.unwrap().tls_certificates.is_empty(),
            "SIMPLE presents no client certificate"
        );

        let mutual = ClientTlsSettings {
            mode: ClientTlsMode::Mutual,
            subject_alt_names: vec!["198.18.0.9".into()],
            ca_certificates: Some("/ca.pem".into()),
            ..simple.clone()
        };
        let ctx = context(&upstream_origination(&mutual, true, None));
        let v = validation(&ctx).unwrap();
        let types: Vec<i32> = v
            .match_typed_subject_alt_names
            .iter()
            .map(|m| m.san_type)
            .collect();
        assert!(
            types.contains(&(SanType::IpAddress as i32)),
            "any SAN type, as Istio matches"
        );
        assert!(format!("{:?}", v.trusted_ca).contains("/ca.pem"));
        let common = ctx.common_tls_context.unwrap();
        assert_eq!(common.tls_certificates.len(), 1);
        assert_eq!(common.alpn_protocols, ["h2"]);

        let skip = ClientTlsSettings {
            insecure_skip_verify: Some(true),
            sni: None,
            ..simple
        };
        let ctx = context(&upstream_origination(&skip, false, None));
        assert!(
            validation(&ctx).is_none(),
            "insecureSkipVerify: no verification"
        );
        assert_eq!(ctx.sni, "", "no sni: taken from each request (auto_sni)");
    }
}
