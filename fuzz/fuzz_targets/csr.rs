//! CSR parsing of untrusted bytes must never panic, and anything accepted must name a valid ID.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = pki::Csr::parse(data) {
        assert!(pki::identity::parse_spiffe_id(&csr.spiffe_id().to_string()).is_ok());
    }
});
