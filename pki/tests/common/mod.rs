//! Shared fixtures for pki's integration tests: a root, an intermediate, fixed time.
#![allow(dead_code, unreachable_pub)]
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use pki::identity::parse_trust_domain;
use pki::{
    CertificateAuthority, KeyAlgorithm, PrivateKey, RandomSource, SigningCaParams, TrustBundle,
    TrustDomain,
};

/// 2026-01-01T00:00:00Z: tests never read the wall clock unless they hand certs to openssl.
pub const T0: Duration = Duration::from_secs(1_767_225_600);

pub fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + T0
}

pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86400);

/// Deterministic bytes from a counter (xorshift), so serials differ but repeat per run.
#[derive(Debug, Default)]
pub struct CountingRandom(AtomicU64);

impl RandomSource for CountingRandom {
    fn fill(&self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let n = self.0.fetch_add(1, Ordering::Relaxed);
            let digest = mix(&n.to_be_bytes());
            chunk.copy_from_slice(&digest[..chunk.len()]);
        }
    }
}

fn mix(b: &[u8]) -> [u8; 32] {
    // A tiny non-cryptographic mix is enough for test serials.
    let mut out = [0u8; 32];
    let mut x = u64::from_be_bytes(b.try_into().unwrap()).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for o in out.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *o = x as u8;
    }
    out
}

pub fn td(s: &str) -> TrustDomain {
    parse_trust_domain(s).unwrap()
}

pub fn ca_params(cn: &str, ttl: Duration, path_len: Option<u8>) -> SigningCaParams {
    SigningCaParams {
        common_name: cn.into(),
        organization: "Citadel test".into(),
        ttl,
        path_len,
    }
}

pub struct Pki {
    pub root: CertificateAuthority,
    pub intermediate: CertificateAuthority,
    pub bundle: TrustBundle,
}

/// A root valid 10 years from `start` and an intermediate valid `int_ttl`.
pub fn pki_at(trust_domain: &str, start: SystemTime, int_ttl: Duration) -> Pki {
    let rng = CountingRandom::default();
    let td = td(trust_domain);
    let root_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let root = CertificateAuthority::self_signed_root(
        td.clone(),
        root_key,
        &ca_params("root", 3650 * DAY, Some(1)),
        start,
        &rng,
    )
    .unwrap();
    let int_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let int_cert = root
        .sign_signing_ca(
            &int_key.public_key_der(),
            &ca_params("intermediate", int_ttl, Some(0)),
            start,
            &rng,
        )
        .unwrap();
    let intermediate = CertificateAuthority::new(
        td.clone(),
        int_key,
        vec![int_cert, root.certificate().clone()],
    )
    .unwrap();
    let mut bundle = TrustBundle::new(td);
    bundle
        .add_x509_authority(root.certificate().clone())
        .unwrap();
    Pki {
        root,
        intermediate,
        bundle,
    }
}

pub fn pki(trust_domain: &str) -> Pki {
    pki_at(trust_domain, t0(), 365 * DAY)
}
