//! SPIFFE ID parsing must never panic, and must round-trip what it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = pki::identity::parse_spiffe_id(s) {
            assert_eq!(pki::identity::parse_spiffe_id(&id.to_string()).unwrap(), id);
        }
        let _ = pki::identity::parse_trust_domain(s);
    }
});
