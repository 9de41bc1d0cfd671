//! When to rotate and how long to back off: pure functions of time and a random draw.
use std::time::{Duration, SystemTime};

use pki::RandomSource;

/// A uniform draw in [0, 1).
pub fn unit(rng: &dyn RandomSource) -> f64 {
    let mut b = [0u8; 4];
    rng.fill(&mut b);
    f64::from(u32::from_be_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

/// Rotate at half of the lifetime, ±10 % of that half (SPIRE's rule), so a fleet issued at the
/// same moment does not renew at the same moment. `start` is when the certificate was obtained
/// (or its notBefore, if later): CAs backdate notBefore, which must not shorten the wait.
pub fn rotate_at(start: SystemTime, not_after: SystemTime, draw: f64) -> SystemTime {
    let half = not_after.duration_since(start).unwrap_or_default() / 2;
    let jitter = half.mul_f64(0.2 * draw);
    start + half.mul_f64(0.9) + jitter
}

/// Exponential backoff with full jitter in the upper half, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay: `base·2^n` capped, scaled into [50 %, 100 %] by `draw`.
    pub fn next_delay(&mut self, draw: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        exp.min(self.cap).mul_f64(0.5 + 0.5 * draw)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_at_half_life_within_ten_percent() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let na = nb + Duration::from_secs(3600);
        assert_eq!(rotate_at(nb, na, 0.0), nb + Duration::from_secs(1620));
        assert_eq!(rotate_at(nb, na, 0.5), nb + Duration::from_secs(1800));
        assert!(rotate_at(nb, na, 0.999_999) <= nb + Duration::from_secs(1980));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let full: Vec<_> = (0..7).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(
            full.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 30, 30]
        );
        b.reset();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn draws_are_in_range() {
        for _ in 0..1000 {
            let u = unit(&pki::SystemRandom);
            assert!((0.0..1.0).contains(&u));
        }
    }
}
