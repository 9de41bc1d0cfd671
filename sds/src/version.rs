//! Version strings that are unique per process, so a restarted server never reuses a version
//! a client already holds (the go-control-plane / Contour version-reuse bug).
use std::sync::atomic::{AtomicU64, Ordering};

/// Hands out `PREFIX-N` versions and nonces, and content versions `PREFIX-HASH`.
#[derive(Debug)]
pub struct VersionSource {
    prefix: String,
    counter: AtomicU64,
}

impl VersionSource {
    /// `instance` must differ between processes (e.g. random bytes or a start timestamp).
    pub fn new(instance: &[u8]) -> Self {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, instance);
        Self {
            prefix: hex::encode(&digest.as_ref()[..4]),
            counter: AtomicU64::new(0),
        }
    }

    /// A fresh process-unique value.
    pub fn next(&self) -> String {
        format!(
            "{}-{}",
            self.prefix,
            self.counter.fetch_add(1, Ordering::Relaxed) + 1
        )
    }

    /// A version derived from content: equal bytes give equal versions within this process.
    pub fn of_content(&self, bytes: &[u8]) -> String {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
        format!("{}-{}", self.prefix, hex::encode(&digest.as_ref()[..8]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_unique_and_prefixed_per_instance() {
        let a = VersionSource::new(b"process-a");
        let b = VersionSource::new(b"process-b");
        assert_ne!(a.next(), a.next());
        assert_ne!(a.next(), b.next());
        assert_eq!(a.of_content(b"x"), a.of_content(b"x"));
        assert_ne!(a.of_content(b"x"), b.of_content(b"x"));
    }
}
