//! CSR rules: each refusal the CA must make, and property tests over untrusted bytes.
mod common;

use common::td;
use pki::identity::parse_spiffe_id;
use pki::{Csr, CsrError, KeyAlgorithm, MAX_CSR_BYTES, PrivateKey, build_csr};
use proptest::prelude::*;
use rcgen::{CertificateParams, DistinguishedName, SanType};

fn csr_with_uris(uris: &[&str]) -> Vec<u8> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    params
        .subject_alt_names
        .push(SanType::DnsName("example.com".try_into().unwrap()));
    let key_pair = rcgen::KeyPair::from_pem(&key.to_pem()).unwrap();
    params.serialize_request(&key_pair).unwrap().der().to_vec()
}

fn valid_csr() -> Vec<u8> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    build_csr(
        &key,
        &parse_spiffe_id("spiffe://cluster.local/ns/default/sa/web").unwrap(),
    )
    .unwrap()
}

#[test]
fn accepts_a_csr_for_every_supported_key_algorithm() {
    let id = parse_spiffe_id("spiffe://cluster.local/ns/default/sa/web").unwrap();
    for alg in KeyAlgorithm::ALL {
        let key = PrivateKey::generate(alg).unwrap();
        let der = build_csr(&key, &id).unwrap();
        let csr =
            Csr::parse_for(&der, &td("cluster.local")).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(csr.spiffe_id(), &id);
        assert_eq!(csr.public_key_der(), key.public_key_der().as_slice());
        assert_eq!(csr.key().algorithm(), Some(alg));
    }
}

#[test]
fn accepts_pem_as_well_as_der() {
    let der = valid_csr();
    let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    assert!(Csr::parse(pem.as_bytes()).is_ok());
}

#[test]
fn rejects_zero_uri_sans() {
    assert_eq!(
        Csr::parse(&csr_with_uris(&[])).unwrap_err(),
        CsrError::UriSanCount(0)
    );
}

#[test]
fn rejects_two_uri_sans() {
    let der = csr_with_uris(&["spiffe://cluster.local/a", "spiffe://cluster.local/b"]);
    assert_eq!(Csr::parse(&der).unwrap_err(), CsrError::UriSanCount(2));
}

#[test]
fn rejects_a_uri_san_that_is_not_a_spiffe_id() {
    let der = csr_with_uris(&["https://cluster.local/a"]);
    assert!(matches!(
        Csr::parse(&der).unwrap_err(),
        CsrError::InvalidSpiffeId(_)
    ));
}

#[test]
fn rejects_another_trust_domain() {
    let der = csr_with_uris(&["spiffe://evil.org/ns/default/sa/web"]);
    assert_eq!(
        Csr::parse_for(&der, &td("cluster.local")).unwrap_err(),
        CsrError::WrongTrustDomain {
            requested: "evil.org".into(),
            expected: "cluster.local".into()
        }
    );
}

#[test]
fn rejects_rsa_keys_under_2048_bits() {
    let pem = include_bytes!("fixtures/rsa1024.csr.pem");
    assert_eq!(
        Csr::parse(pem).unwrap_err(),
        CsrError::WeakRsaKey { bits: 1024 }
    );
}

#[test]
fn rejects_unsupported_curves() {
    let pem = include_bytes!("fixtures/p521.csr.pem");
    assert!(matches!(
        Csr::parse(pem).unwrap_err(),
        CsrError::UnsupportedKey(_)
    ));
}

#[test]
fn rejects_a_bad_signature() {
    let mut der = valid_csr();
    let last = der.len() - 1;
    der[last] ^= 0x01;
    assert_eq!(Csr::parse(&der).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn rejects_a_tampered_identity_even_though_it_still_parses() {
    let der = valid_csr();
    let needle = b"sa/web";
    let at = der.windows(needle.len()).position(|w| w == needle).unwrap();
    let mut tampered = der.clone();
    tampered[at + 3..at + 6].copy_from_slice(b"adm");
    assert_eq!(Csr::parse(&tampered).unwrap_err(), CsrError::BadSignature);
}

#[test]
fn rejects_input_over_64_kib_before_parsing() {
    let big = vec![0x30u8; MAX_CSR_BYTES + 1];
    assert_eq!(
        Csr::parse(&big).unwrap_err(),
        CsrError::TooLarge {
            size: MAX_CSR_BYTES + 1,
            max: MAX_CSR_BYTES
        }
    );
    let mut padded = valid_csr();
    padded.resize(MAX_CSR_BYTES + 10, 0);
    assert!(matches!(
        Csr::parse(&padded).unwrap_err(),
        CsrError::TooLarge { .. }
    ));
}

#[test]
fn rejects_garbage_and_trailing_bytes() {
    assert!(matches!(
        Csr::parse(b"not a csr").unwrap_err(),
        CsrError::Malformed(_)
    ));
    let mut trailing = valid_csr();
    trailing.extend_from_slice(b"xx");
    assert!(matches!(
        Csr::parse(&trailing).unwrap_err(),
        CsrError::Malformed(_)
    ));
    assert!(matches!(
        Csr::parse(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap_err(),
        CsrError::Malformed(_)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Csr::parse(&bytes);
    }

    #[test]
    fn a_flipped_bit_never_yields_a_different_identity(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let der = valid_csr();
        let mut mutated = der.clone();
        let i = pos.index(mutated.len());
        mutated[i] ^= 1 << bit;
        if let Ok(csr) = Csr::parse(&mutated) {
            // Only bit flips the signature does not cover (e.g. in the outer length encoding that
            // still decodes) can survive, and then the identity must be the one that was signed.
            prop_assert_eq!(csr.spiffe_id().to_string(), "spiffe://cluster.local/ns/default/sa/web");
        }
    }
}
