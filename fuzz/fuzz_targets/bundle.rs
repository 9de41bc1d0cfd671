//! Trust bundles from untrusted PEM or JWKS must never panic, and must round-trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let td = pki::identity::parse_trust_domain("example.org").unwrap();
    if let Ok(bundle) = pki::TrustBundle::from_jwks(td.clone(), text) {
        let again = pki::TrustBundle::from_jwks(td.clone(), &bundle.to_jwks().unwrap()).unwrap();
        assert_eq!(again.x509_authorities(), bundle.x509_authorities());
    }
    let _ = pki::TrustBundle::from_pem(td, text);
});
