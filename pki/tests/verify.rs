//! Chain verification through webpki, trust bundles in PEM and JWKS, and the rustls verifiers.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pki::identity::parse_spiffe_id;
use pki::tls::{
    PeerPolicy, SpiffeClientVerifier, SpiffeServerVerifier, SwappableCert, certified_key,
};
use pki::verify::{BundleSource, SharedBundles};
use pki::{
    Csr, KeyAlgorithm, PrivateKey, SvidParams, TrustBundle, Usage, VerifyError, X509Svid,
    build_csr, verify_svid,
};

fn svid(p: &Pki, id: &str, ttl: Duration) -> X509Svid {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = Csr::parse(&build_csr(&key, &parse_spiffe_id(id).unwrap()).unwrap()).unwrap();
    p.intermediate
        .issue_svid(
            &csr,
            &SvidParams::ttl(ttl),
            t0(),
            &CountingRandom::default(),
        )
        .unwrap()
        .with_key(key)
        .unwrap()
}

#[test]
fn a_valid_chain_returns_the_spiffe_id() {
    let p = pki("cluster.local");
    let s = svid(&p, "spiffe://cluster.local/ns/a/sa/b", HOUR);
    for usage in [Usage::Client, Usage::Server] {
        let id = verify_svid(s.chain(), &p.bundle, t0() + Duration::from_secs(5), usage).unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/a/sa/b");
    }
}

#[test]
fn expired_and_not_yet_valid_chains_fail() {
    let p = pki("cluster.local");
    let s = svid(&p, "spiffe://cluster.local/a", HOUR);
    assert_eq!(
        verify_svid(s.chain(), &p.bundle, t0() + 2 * HOUR, Usage::Client).unwrap_err(),
        VerifyError::Expired
    );
    assert_eq!(
        verify_svid(s.chain(), &p.bundle, t0() - HOUR, Usage::Client).unwrap_err(),
        VerifyError::NotYetValid
    );
}

#[test]
fn a_chain_from_another_root_fails() {
    let p = pki("cluster.local");
    let other = pki("cluster.local");
    let s = svid(&other, "spiffe://cluster.local/a", HOUR);
    assert_eq!(
        verify_svid(s.chain(), &p.bundle, t0(), Usage::Client).unwrap_err(),
        VerifyError::UnknownIssuer
    );
}

#[test]
fn a_missing_intermediate_fails() {
    let p = pki("cluster.local");
    let s = svid(&p, "spiffe://cluster.local/a", HOUR);
    assert_eq!(
        verify_svid(&s.chain()[..1], &p.bundle, t0(), Usage::Client).unwrap_err(),
        VerifyError::UnknownIssuer
    );
}

#[test]
fn an_id_of_another_trust_domain_fails_even_with_the_right_root() {
    let p = pki("example.org");
    let s = svid(&p, "spiffe://example.org/a", HOUR);
    let mut wrong = TrustBundle::new(td("cluster.local"));
    wrong
        .add_x509_authority(p.root.certificate().clone())
        .unwrap();
    assert!(matches!(
        verify_svid(s.chain(), &wrong, t0(), Usage::Client).unwrap_err(),
        VerifyError::UnknownTrustDomain(_)
    ));
}

#[test]
fn a_ca_certificate_is_not_an_svid() {
    let p = pki("cluster.local");
    let chain = vec![
        p.intermediate.certificate().clone(),
        p.root.certificate().clone(),
    ];
    assert_eq!(
        verify_svid(&chain, &p.bundle, t0(), Usage::Client).unwrap_err(),
        VerifyError::LeafIsCa
    );
    assert_eq!(
        verify_svid(&[], &p.bundle, t0(), Usage::Client).unwrap_err(),
        VerifyError::EmptyChain
    );
}

#[test]
fn a_bundle_with_two_roots_verifies_both_generations() {
    let old = pki("cluster.local");
    let new = pki("cluster.local");
    let mut bundle = old.bundle.clone();
    assert!(
        bundle
            .add_x509_authority(new.root.certificate().clone())
            .unwrap()
    );
    assert!(
        !bundle
            .add_x509_authority(new.root.certificate().clone())
            .unwrap(),
        "duplicates are ignored"
    );
    for p in [&old, &new] {
        let s = svid(p, "spiffe://cluster.local/a", HOUR);
        verify_svid(s.chain(), &bundle, t0(), Usage::Client).unwrap();
    }
    assert!(bundle.remove_x509_authority(old.root.certificate()));
    let s = svid(&old, "spiffe://cluster.local/a", HOUR);
    assert!(verify_svid(s.chain(), &bundle, t0(), Usage::Client).is_err());
}

#[test]
fn bundle_round_trips_through_pem() {
    let a = pki("cluster.local");
    let b = pki("cluster.local");
    let mut bundle = a.bundle.clone();
    bundle
        .add_x509_authority(b.root.certificate().clone())
        .unwrap();
    let again = TrustBundle::from_pem(td("cluster.local"), &bundle.to_pem()).unwrap();
    assert_eq!(again.x509_authorities(), bundle.x509_authorities());
    assert!(TrustBundle::from_pem(td("cluster.local"), "").is_err());
}

#[test]
fn bundle_refuses_leaf_certificates_as_authorities() {
    let p = pki("cluster.local");
    let s = svid(&p, "spiffe://cluster.local/a", HOUR);
    let mut bundle = TrustBundle::new(td("cluster.local"));
    assert!(bundle.add_x509_authority(s.chain()[0].clone()).is_err());
}

#[test]
fn bundle_round_trips_through_the_spiffe_jwks_format() {
    let a = pki("cluster.local");
    let mut bundle = a.bundle.clone();
    bundle.set_sequence(7);
    bundle.set_refresh_hint(Some(Duration::from_secs(300)));
    for (i, alg) in KeyAlgorithm::ALL.into_iter().enumerate() {
        let key = PrivateKey::generate(alg).unwrap();
        bundle.upsert_jwt_authority(pki::JwtAuthority {
            key_id: format!("kid-{i}"),
            jwk: pki::bundle::Jwk::from_spki(&key.public_key_der()).unwrap(),
        });
    }
    let json = bundle.to_jwks().unwrap();
    let doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys[0]["use"], "x509-svid");
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["x5c"].as_array().unwrap().len(), 1);
    assert!(
        keys[1..]
            .iter()
            .all(|k| k["use"] == "jwt-svid" && k["kid"].is_string())
    );
    let again = TrustBundle::from_jwks(td("cluster.local"), &json).unwrap();
    assert_eq!(again, bundle);
}

#[test]
fn jwks_with_unknown_uses_are_skipped_and_mismatched_x5c_refused() {
    let p = pki("cluster.local");
    let json = p.bundle.to_jwks().unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&json).unwrap();
    doc["keys"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"kty": "EC", "use": "something-new"}));
    let parsed = TrustBundle::from_jwks(td("cluster.local"), &doc.to_string()).unwrap();
    assert_eq!(parsed.x509_authorities().len(), 1);
    let other = pki("cluster.local");
    let other_doc: serde_json::Value =
        serde_json::from_str(&other.bundle.to_jwks().unwrap()).unwrap();
    doc["keys"][0]["x5c"] = other_doc["keys"][0]["x5c"].clone();
    assert!(TrustBundle::from_jwks(td("cluster.local"), &doc.to_string()).is_err());
    assert!(TrustBundle::from_jwks(td("cluster.local"), "{not json").is_err());
}

// --- rustls verifiers, driven through an in-memory handshake at an injected time ---

fn handshake(
    server_svid: &X509Svid,
    client_svid: Option<&X509Svid>,
    bundles: Arc<dyn BundleSource>,
    server_policy: PeerPolicy,
    client_policy: PeerPolicy,
    optional_client: bool,
) -> Result<(), rustls::Error> {
    let provider = pki::tls::provider();
    let time = Arc::new(pki::time::RustlsTime(Arc::new(pki::ManualClock::new(
        t0() + Duration::from_secs(1),
    ))));
    let server_cfg = rustls::ServerConfig::builder_with_details(provider.clone(), time.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier::new(
            bundles.clone(),
            server_policy,
            optional_client,
        )))
        .with_cert_resolver(Arc::new(SwappableCert::new(
            certified_key(server_svid).unwrap(),
        )));
    let builder = rustls::ClientConfig::builder_with_details(provider, time)
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            bundles,
            client_policy,
        )));
    let client_cfg = match client_svid {
        Some(s) => builder
            .with_client_cert_resolver(Arc::new(SwappableCert::new(certified_key(s).unwrap()))),
        None => builder.with_no_client_auth(),
    };
    let mut server = rustls::ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_cfg), "citadel".try_into().unwrap()).unwrap();
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        server.process_new_packets()?;
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            // Let the server see the client's final flight (TLS 1.3 client auth is checked there).
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn mutual_tls_between_spiffe_peers() {
    let p = pki("cluster.local");
    let server = svid(&p, "spiffe://cluster.local/citadel/server", HOUR);
    let client = svid(&p, "spiffe://cluster.local/ns/a/sa/b", HOUR);
    let bundles: Arc<dyn BundleSource> = Arc::new(SharedBundles::new([p.bundle.clone()]));
    let tdp = || PeerPolicy::trust_domain(td("cluster.local"));
    handshake(&server, Some(&client), bundles.clone(), tdp(), tdp(), false).unwrap();

    let only_server = PeerPolicy::exact(
        td("cluster.local"),
        [parse_spiffe_id("spiffe://cluster.local/citadel/server").unwrap()],
    );
    handshake(
        &server,
        Some(&client),
        bundles.clone(),
        tdp(),
        only_server,
        false,
    )
    .unwrap();

    let only_other = PeerPolicy::exact(
        td("cluster.local"),
        [parse_spiffe_id("spiffe://cluster.local/ns/x/sa/y").unwrap()],
    );
    let err = handshake(
        &server,
        Some(&client),
        bundles.clone(),
        only_other.clone(),
        tdp(),
        false,
    )
    .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
    );
    assert!(handshake(&server, Some(&client), bundles, tdp(), only_other, false).is_err());
}

#[test]
fn client_certificates_can_be_optional_but_must_verify_when_sent() {
    let p = pki("cluster.local");
    let other = pki("cluster.local");
    let server = svid(&p, "spiffe://cluster.local/citadel/server", HOUR);
    let bundles: Arc<dyn BundleSource> = Arc::new(SharedBundles::new([p.bundle.clone()]));
    let tdp = || PeerPolicy::trust_domain(td("cluster.local"));
    handshake(&server, None, bundles.clone(), tdp(), tdp(), true).unwrap();
    assert!(handshake(&server, None, bundles.clone(), tdp(), tdp(), false).is_err());
    let stranger = svid(&other, "spiffe://cluster.local/ns/a/sa/b", HOUR);
    let err = handshake(&server, Some(&stranger), bundles, tdp(), tdp(), true).unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}

#[test]
fn a_server_of_another_trust_domain_is_refused() {
    let p = pki("example.org");
    let server = svid(&p, "spiffe://example.org/citadel/server", HOUR);
    let bundles: Arc<dyn BundleSource> = Arc::new(SharedBundles::new([p.bundle.clone()]));
    let err = handshake(
        &server,
        None,
        bundles,
        PeerPolicy::trust_domain(td("example.org")),
        PeerPolicy::trust_domain(td("cluster.local")),
        true,
    )
    .unwrap_err();
    assert_eq!(
        err,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
    );
}
