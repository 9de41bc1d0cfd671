//! Certificates for tests that need a TLS server's own (not a SPIFFE workload's).
use std::time::{Duration, SystemTime};

use pki::{CertificateAuthority, KeyAlgorithm, PrivateKey, SigningCaParams, SvidParams};

/// A TLS server certificate for `host` (an ECDSA leaf of a throwaway root, with `host` as a
/// DNS SAN) as PEM, and its key.
pub fn server_credential(host: &str) -> (String, PrivateKey) {
    let now = SystemTime::now();
    let ca = CertificateAuthority::self_signed_root(
        pki::identity::parse_trust_domain("example.com").unwrap(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        &SigningCaParams {
            common_name: "test root".into(),
            organization: "test".into(),
            ttl: Duration::from_secs(3600),
            path_len: None,
        },
        now,
        &pki::SystemRandom,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let leaf = ca
        .issue_svid_for_key(
            &pki::identity::parse_spiffe_id("spiffe://example.com/server").unwrap(),
            &key.public_key_der(),
            false,
            &SvidParams {
                dns_names: vec![host.into()],
                ..SvidParams::ttl(Duration::from_secs(3600))
            },
            now,
            &pki::SystemRandom,
        )
        .unwrap();
    (pki::pem::encode_certificates(leaf.chain()), key)
}

/// PEM text as a YAML block scalar's lines under a two-space key (`  tls.crt: |`), for
/// Secrets written into test configuration.
pub fn yaml_block(pem: &str) -> String {
    pem.trim().replace('\n', "\n    ")
}
