//! Injected randomness for serial numbers and tokens.
use std::fmt::Debug;

/// A source of cryptographically secure random bytes.
pub trait RandomSource: Send + Sync + Debug {
    fn fill(&self, dest: &mut [u8]);
}

/// The operating system's CSPRNG, through aws-lc-rs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandom;

impl RandomSource for SystemRandom {
    fn fill(&self, dest: &mut [u8]) {
        aws_lc_rs::rand::fill(dest).expect("the system CSPRNG does not fail");
    }
}

/// A 128-bit positive, non-zero certificate serial number (RFC 5280 allows up to 20 octets).
pub fn serial_number(rng: &dyn RandomSource) -> [u8; 16] {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial);
    // Clear the sign bit so the DER INTEGER stays positive, and set the next one so the
    // encoding always keeps all 16 octets: 126 random bits, well over the 64 required.
    serial[0] = (serial[0] & 0x3f) | 0x40;
    serial
}
