//! Selector parsing must never panic, and must round-trip what it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(sel) = s.parse::<citadel_api::Selector>() {
            assert_eq!(sel.to_string().parse::<citadel_api::Selector>().unwrap(), sel);
        }
    }
});
