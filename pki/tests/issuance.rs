//! X.509-SVID and signing-CA profiles, checked field by field with x509-parser.
mod common;

use std::time::{Duration, SystemTime};

use common::*;
use pki::identity::parse_spiffe_id;
use pki::svid::CertInfo;
use pki::{Csr, Error, KeyAlgorithm, PrivateKey, SvidParams, build_csr};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME};
use x509_parser::prelude::{FromDer, X509Certificate};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn csr(alg: KeyAlgorithm) -> Csr {
    let key = PrivateKey::generate(alg).unwrap();
    Csr::parse(&build_csr(&key, &parse_spiffe_id(WEB).unwrap()).unwrap()).unwrap()
}

fn issue(p: &Pki, alg: KeyAlgorithm, ttl: Duration, now: SystemTime) -> pki::X509Svid {
    p.intermediate
        .issue_svid(
            &csr(alg),
            &SvidParams::ttl(ttl),
            now,
            &CountingRandom::default(),
        )
        .unwrap()
}

fn with_cert<R>(der: &[u8], f: impl FnOnce(&X509Certificate<'_>) -> R) -> R {
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    f(&cert)
}

#[test]
fn svid_has_one_uri_san_marked_critical_with_an_empty_subject() {
    let p = pki("cluster.local");
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, HOUR, t0());
    with_cert(&svid.chain()[0], |c| {
        assert!(c.subject().iter().next().is_none(), "subject must be empty");
        let san = c
            .get_extension_unique(&OID_X509_EXT_SUBJECT_ALT_NAME)
            .unwrap()
            .unwrap();
        assert!(san.critical);
        let ParsedExtension::SubjectAlternativeName(names) = san.parsed_extension() else {
            panic!()
        };
        assert_eq!(names.general_names, vec![GeneralName::URI(WEB)]);
    });
    assert_eq!(svid.spiffe_id().to_string(), WEB);
}

#[test]
fn svid_is_not_a_ca() {
    let p = pki("cluster.local");
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, HOUR, t0());
    with_cert(&svid.chain()[0], |c| {
        let bc = c
            .basic_constraints()
            .unwrap()
            .expect("basicConstraints present");
        assert!(bc.critical);
        assert!(!bc.value.ca);
    });
}

#[test]
fn key_usage_is_critical_digital_signature_plus_key_encipherment_only_for_rsa() {
    let p = pki("cluster.local");
    for alg in KeyAlgorithm::ALL {
        let svid = issue(&p, alg, HOUR, t0());
        with_cert(&svid.chain()[0], |c| {
            let ku = c
                .get_extension_unique(&OID_X509_EXT_KEY_USAGE)
                .unwrap()
                .unwrap();
            assert!(ku.critical, "{alg}");
            let ParsedExtension::KeyUsage(ku) = ku.parsed_extension() else {
                panic!()
            };
            assert!(ku.digital_signature(), "{alg}");
            assert_eq!(ku.key_encipherment(), alg.is_rsa(), "{alg}");
            assert!(!ku.key_cert_sign() && !ku.crl_sign(), "{alg}");
        });
    }
}

#[test]
fn extended_key_usage_is_server_and_client_auth() {
    let p = pki("cluster.local");
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, HOUR, t0());
    with_cert(&svid.chain()[0], |c| {
        let eku = c.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!eku.any && !eku.code_signing && eku.other.is_empty());
    });
}

#[test]
fn serials_are_random_positive_and_at_least_64_bits() {
    let p = pki("cluster.local");
    let rng = pki::SystemRandom;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..50 {
        let svid = p
            .intermediate
            .issue_svid(
                &csr(KeyAlgorithm::EcdsaP256),
                &SvidParams::ttl(HOUR),
                t0(),
                &rng,
            )
            .unwrap();
        with_cert(&svid.chain()[0], |c| {
            let raw = c.raw_serial();
            assert!(raw.len() * 8 >= 64);
            assert!(raw[0] & 0x80 == 0, "serial must be positive");
            assert!(c.serial.bits() > 64);
        });
        assert!(seen.insert(svid.serial().to_string()), "serial repeated");
    }
}

#[test]
fn not_before_is_backdated_60_seconds() {
    let p = pki("cluster.local");
    let now = t0() + DAY;
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, HOUR, now);
    assert_eq!(svid.leaf().not_before, now - Duration::from_secs(60));
    assert_eq!(svid.leaf().not_after, now + HOUR);
}

#[test]
fn backdating_never_precedes_the_issuer() {
    let p = pki("cluster.local");
    let svid = issue(
        &p,
        KeyAlgorithm::EcdsaP256,
        HOUR,
        t0() + Duration::from_secs(10),
    );
    assert_eq!(svid.leaf().not_before, t0());
}

#[test]
fn ttl_is_capped_by_the_issuers_remaining_lifetime() {
    let p = pki_at("cluster.local", t0(), 2 * HOUR);
    let now = t0() + HOUR + Duration::from_secs(30 * 60);
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, 24 * HOUR, now);
    assert_eq!(svid.not_after(), p.intermediate.info().not_after);
    assert_eq!(svid.not_after(), t0() + 2 * HOUR);
}

#[test]
fn an_expired_issuer_refuses_to_sign() {
    let p = pki_at("cluster.local", t0(), HOUR);
    let err = p
        .intermediate
        .issue_svid(
            &csr(KeyAlgorithm::EcdsaP256),
            &SvidParams::ttl(HOUR),
            t0() + 2 * HOUR,
            &CountingRandom::default(),
        )
        .unwrap_err();
    assert!(matches!(err, Error::IssuerNotValid { .. }));
}

#[test]
fn the_ca_refuses_another_trust_domain() {
    let p = pki("example.org");
    let err = p
        .intermediate
        .issue_svid(
            &csr(KeyAlgorithm::EcdsaP256),
            &SvidParams::ttl(HOUR),
            t0(),
            &CountingRandom::default(),
        )
        .unwrap_err();
    assert!(matches!(
        err,
        Error::Csr(pki::CsrError::WrongTrustDomain { .. })
    ));
}

#[test]
fn a_zero_ttl_is_refused() {
    let p = pki("cluster.local");
    let err = p
        .intermediate
        .issue_svid(
            &csr(KeyAlgorithm::EcdsaP256),
            &SvidParams::ttl(Duration::ZERO),
            t0(),
            &CountingRandom::default(),
        )
        .unwrap_err();
    assert_eq!(err, Error::ZeroTtl);
}

#[test]
fn chain_is_leaf_then_intermediate_without_the_root() {
    let p = pki("cluster.local");
    let svid = issue(&p, KeyAlgorithm::EcdsaP256, HOUR, t0());
    assert_eq!(svid.chain().len(), 2);
    assert_eq!(&svid.chain()[1], p.intermediate.certificate());
    let from_root = p
        .root
        .issue_svid(
            &csr(KeyAlgorithm::EcdsaP256),
            &SvidParams::ttl(HOUR),
            t0(),
            &CountingRandom::default(),
        )
        .unwrap();
    assert_eq!(
        from_root.chain().len(),
        1,
        "a root-signed SVID needs no intermediate"
    );
}

#[test]
fn signing_ca_follows_the_standard() {
    let p = pki("cluster.local");
    for (cert, path_len) in [
        (p.root.certificate(), Some(1)),
        (p.intermediate.certificate(), Some(0)),
    ] {
        with_cert(cert, |c| {
            let bc = c.basic_constraints().unwrap().unwrap();
            assert!(bc.critical && bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, path_len);
            let ku = c.key_usage().unwrap().unwrap();
            assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
            assert!(!ku.value.digital_signature());
            let san = c.subject_alternative_name().unwrap().unwrap();
            assert_eq!(
                san.value.general_names,
                vec![GeneralName::URI("spiffe://cluster.local")]
            );
        });
    }
    let info = CertInfo::parse(p.intermediate.certificate()).unwrap();
    assert!(info.is_ca);
    assert!(!p.intermediate.is_root());
    assert!(p.root.is_root());
}

#[test]
fn intermediate_lifetime_is_capped_by_the_root() {
    let p = pki("cluster.local");
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let cert = p
        .root
        .sign_signing_ca(
            &key.public_key_der(),
            &ca_params("long", 100 * 365 * DAY, Some(0)),
            t0(),
            &CountingRandom::default(),
        )
        .unwrap();
    assert_eq!(
        CertInfo::parse(&cert).unwrap().not_after,
        p.root.info().not_after
    );
}

#[test]
fn a_ca_key_must_match_its_certificate() {
    let p = pki("cluster.local");
    let other = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let err = pki::CertificateAuthority::new(
        td("cluster.local"),
        other,
        vec![p.root.certificate().clone()],
    )
    .unwrap_err();
    assert_eq!(err, Error::KeyMismatch);
}

#[test]
fn dns_and_ip_sans_sit_next_to_the_uri() {
    let p = pki("cluster.local");
    let params = SvidParams {
        ttl: HOUR,
        dns_names: vec!["citadel.local".into()],
        ip_addresses: vec!["127.0.0.1".parse().unwrap()],
    };
    let svid = p
        .intermediate
        .issue_svid(
            &csr(KeyAlgorithm::EcdsaP256),
            &params,
            t0(),
            &CountingRandom::default(),
        )
        .unwrap();
    with_cert(&svid.chain()[0], |c| {
        let san = c.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 3);
    });
    assert_eq!(svid.leaf().uri_sans, vec![WEB.to_string()]);
}
