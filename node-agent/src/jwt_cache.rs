//! JWT-SVIDs minted by citadel, reused until half their lifetime. The key includes the
//! audience, which callers choose, so the cache holds at most `capacity` tokens: when full it
//! first forgets tokens past half-life, then the ones expiring soonest.
use std::collections::HashMap;
use std::time::SystemTime;

use pki::identity::SpiffeId;

type Key = (SpiffeId, Vec<String>);

#[derive(Clone)]
struct Cached {
    token: String,
    reuse_until: SystemTime,
    expires: SystemTime,
}

/// A bounded cache of JWT-SVIDs by identity and audience. `Debug` shows only its size: the
/// tokens are bearer credentials.
pub struct JwtCache {
    capacity: usize,
    tokens: HashMap<Key, Cached>,
}

impl std::fmt::Debug for JwtCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtCache")
            .field("capacity", &self.capacity)
            .field("len", &self.tokens.len())
            .finish()
    }
}

fn key(id: &SpiffeId, audience: &[String]) -> Key {
    let mut audience = audience.to_vec();
    audience.sort();
    audience.dedup();
    (id.clone(), audience)
}

impl JwtCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tokens: HashMap::new(),
        }
    }

    /// A cached token for `id` and `audience` that is still before its half-life at `now`.
    pub fn get(&self, id: &SpiffeId, audience: &[String], now: SystemTime) -> Option<String> {
        self.tokens
            .get(&key(id, audience))
            .filter(|c| now < c.reuse_until)
            .map(|c| c.token.clone())
    }

    /// Caches a token minted at `now` that expires at `expires`.
    pub fn insert(
        &mut self,
        id: &SpiffeId,
        audience: &[String],
        token: String,
        now: SystemTime,
        expires: SystemTime,
    ) {
        let key = key(id, audience);
        if self.tokens.len() >= self.capacity && !self.tokens.contains_key(&key) {
            self.tokens.retain(|_, c| now < c.reuse_until);
            if self.tokens.len() >= self.capacity
                && let Some(soonest) = self
                    .tokens
                    .iter()
                    .min_by_key(|(_, c)| c.expires)
                    .map(|(k, _)| k.clone())
            {
                self.tokens.remove(&soonest);
            }
        }
        let half = expires.duration_since(now).unwrap_or_default() / 2;
        self.tokens.insert(
            key,
            Cached {
                token,
                reuse_until: now + half,
                expires,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn caller_chosen_audiences_cannot_grow_the_cache_past_its_capacity() {
        let id = pki::identity::parse_spiffe_id("spiffe://cluster.local/w").unwrap();
        let mut cache = JwtCache::new(100);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let exp = now + Duration::from_secs(300);
        for i in 0..10_000 {
            cache.insert(&id, &[format!("aud-{i}")], format!("t{i}"), now, exp);
        }
        assert_eq!(cache.len(), 100);
        assert_eq!(
            cache.get(&id, &["aud-9999".into()], now).as_deref(),
            Some("t9999"),
            "the newest token is kept"
        );
    }

    #[test]
    fn tokens_are_reused_until_half_life_whatever_the_audience_order() {
        let id = pki::identity::parse_spiffe_id("spiffe://cluster.local/w").unwrap();
        let mut cache = JwtCache::new(4);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let aud = vec!["b".to_string(), "a".to_string()];
        cache.insert(&id, &aud, "t".into(), now, now + Duration::from_secs(300));
        let swapped = vec!["a".to_string(), "b".to_string()];
        assert_eq!(cache.get(&id, &swapped, now).as_deref(), Some("t"));
        assert!(
            cache
                .get(&id, &aud, now + Duration::from_secs(150))
                .is_none()
        );
    }
}
